from hypothesis import given
from hypothesis import strategies as st

from specdraft.server.stops import StopMatcher


def run(pieces, stops):
    m = StopMatcher(stops)
    out = "".join(m.push(p) for p in pieces) + m.flush()
    return out, m.stopped


def test_stop_string_split_across_pieces_is_cut_and_never_emitted():
    m = StopMatcher(["\n\nUser:"])
    emitted = [m.push(p) for p in ["Hello", " world\n", "\nUs", "er: more"]]
    assert "".join(emitted) == "Hello world" and m.stopped and m.flush() == ""
    assert not any("\n\n" in e for e in emitted)


def test_no_stops_passes_everything_through():
    assert run(["a", "bc", ""], []) == ("abc", False)


@given(st.text(alphabet="abc\n", max_size=40), st.lists(st.text(alphabet="abc\n", min_size=1, max_size=3), max_size=3),
       st.lists(st.integers(1, 5), min_size=1, max_size=20))
def test_same_result_as_cutting_the_whole_text(text, stops, sizes):
    pieces, i = [], 0
    for s in sizes * 10:
        if i >= len(text):
            break
        pieces.append(text[i:i + s])
        i += s
    pieces.append(text[i:])
    # the reference: the stop completed first (the smallest end), cut where it starts
    ends = [(text.find(s) + len(s), text.find(s)) for s in stops if s and text.find(s) >= 0]
    expect = text[:min(ends)[1]] if ends else text
    assert run(pieces, stops) == (expect, bool(ends))


def test_the_stop_completed_first_wins_however_the_text_is_split():
    for pieces in (["aca"], ["a", "c", "a"], ["ac", "a"]):
        assert run(pieces, ["c", "aca"]) == ("a", True)


def test_metrics_tau_and_acceptance_accumulate_over_requests():
    from specdraft.engine import GenerationStats
    from specdraft.server.metrics import Metrics

    m = Metrics()
    m.observe_generation(GenerationStats(prompt_tokens=5, new_tokens=10, target_forwards=4, drafted=12, accepted=6))
    m.observe_generation(GenerationStats(prompt_tokens=3, new_tokens=6, target_forwards=4, drafted=4, accepted=2))
    text = m.render().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert values["specdraft_tau"] == 16 / 8
    assert values["specdraft_acceptance_rate"] == 8 / 16
    assert values["specdraft_completion_tokens_total"] == 16 and values["specdraft_prompt_tokens_total"] == 8
