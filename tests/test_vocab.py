"""The token ranking behind a draft model's reduced drafting vocabulary (data/vocab.py)."""

import collections
import json

from specdraft.data import vocab


def test_rank_orders_by_count_then_id_and_covers_every_id():
    counts = collections.Counter({7: 5, 2: 5, 9: 1, 40: 3, -1: 9})  # 40 is outside a vocabulary of 12
    ids = vocab.rank(counts, 12)
    assert ids[:3] == [2, 7, 9]  # ties by id; 40 and -1 dropped
    assert sorted(ids) == list(range(12))
    assert ids[3:] == [t for t in range(12) if t not in (2, 7, 9)]


def test_token_ranking_counts_the_corpus_and_caches(tmp_path, monkeypatch, tiny_llm_dir):
    monkeypatch.setenv("SPECDRAFT_HOME", str(tmp_path))
    calls = []

    def fake_corpus(progress=True):
        calls.append(1)
        return ["b b b a", "a a a a a b", "c"]

    monkeypatch.setattr(vocab, "corpus", fake_corpus)
    tok = tiny_llm_dir / "tokenizer.json"
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(tok))
    size = t.get_vocab_size()
    ids = vocab.token_ranking(tok, size, progress=False)
    counts = vocab.count_tokens(t, fake_corpus())
    assert ids == vocab.rank(counts, size) and len(calls) == 2
    top = max(counts, key=lambda k: (counts[k], -k))
    assert ids[0] == top
    again = vocab.token_ranking(tok, size, progress=False)
    assert again == ids and len(calls) == 2  # from the cache
    cache = next((tmp_path / "vocab").glob("*.json"))
    cache.write_text("[1, 2")  # damaged: rebuilt
    assert vocab.token_ranking(tok, size, progress=False) == ids and len(calls) == 3
    assert json.loads(cache.read_text()) == ids
