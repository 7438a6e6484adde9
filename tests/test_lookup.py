from hypothesis import given
from hypothesis import strategies as st

from specdraft.drafters.lookup import ngram_lookup
from specdraft.verify import Draft


def test_longest_suffix_match_wins_and_most_recent_occurrence():
    #        0  1  2  3  4  5  6  7  8  9  10
    ids = [1, 2, 3, 9, 1, 2, 3, 7, 8, 2, 3]
    assert ngram_lookup(ids, max_ngram=3, num_tokens=4) == [7, 8, 2, 3]  # "2 3" seen last at 5-6
    assert ngram_lookup([4, 1, 2, 5, 6, 2, 1, 2], max_ngram=2, num_tokens=2) == [5, 6]  # bigram "1 2"


def test_no_match_and_short_inputs():
    assert ngram_lookup([1, 2, 3, 4]) == []
    assert ngram_lookup([7]) == [] and ngram_lookup([]) == []
    assert ngram_lookup([3, 3], max_ngram=3, num_tokens=5) == [3]


@given(st.lists(st.integers(0, 4), min_size=2, max_size=60), st.integers(1, 4), st.integers(1, 8))
def test_draft_continues_a_real_occurrence_of_the_suffix(ids, max_ngram, k):
    out = ngram_lookup(ids, max_ngram=max_ngram, num_tokens=k)
    assert len(out) <= k
    if out:
        # some n >= 1: ids[-n:] occurs at s < len - n and ids[s+n : s+n+len(out)] == out
        L = len(ids)
        assert any(
            ids[s:s + n] == ids[L - n:] and ids[s + n:s + n + len(out)] == out
            for n in range(1, max_ngram + 1) for s in range(0, L - n)
        )
    else:
        assert ids[-1] not in ids[:-1]  # a unigram match would have produced something


def test_from_sequences_dedupes_shared_prefixes():
    d = Draft.from_sequences([[1, 2, 3], [1, 2, 4], [5], [1, 2, 3], []])
    assert d.tokens == [1, 2, 3, 4, 5] and d.parents == [-1, 0, 1, 1, -1]


def test_lookup_settings_that_can_never_match_are_refused():
    import pytest

    from specdraft.drafters.lookup import LookupDrafter
    from specdraft.errors import SpecdraftError

    for bad in ({"min_ngram": 4}, {"min_ngram": 0}, {"num_tokens": 0}, {"max_ngram": 2, "min_ngram": 3}):
        with pytest.raises(SpecdraftError, match="min_ngram <= max_ngram"):
            LookupDrafter(**bad)
    assert LookupDrafter(max_ngram=4, min_ngram=4).name == "lookup?max_ngram=4&min_ngram=4"
