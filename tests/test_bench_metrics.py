import json

import pytest

from specdraft.bench.metrics import TurnRecord, summarize
from specdraft.bench.questions import per_category, read_questions
from specdraft.errors import SpecdraftError


def rec(method, qid, cat, new, wall, fwd, drafted=0, accepted=0, ids=(1, 2), turn=0, repeat=0):
    return TurnRecord(method, qid, cat, turn, repeat, new, wall, fwd, drafted, accepted, tuple(ids))


def test_hand_made_records_give_known_metrics():
    records = [
        rec("plain", "q1", "code", 10, 1.0, 10, ids=(1, 2, 3)),
        rec("plain", "q2", "math", 20, 4.0, 20),
        rec("spec", "q1", "code", 10, 0.5, 4, drafted=12, accepted=6, ids=(1, 2, 3)),  # 2x faster
        rec("spec", "q2", "math", 20, 1.0, 5, drafted=20, accepted=15, ids=(9,)),  # 4x faster, differs
    ]
    s = summarize(records)
    assert s["plain"]["overall"]["tau"] == 1.0 and s["plain"]["overall"]["speedup"] == 1.0
    o = s["spec"]["overall"]
    assert o["tau"] == pytest.approx(30 / 9)
    assert o["acceptance_rate"] == pytest.approx(21 / 32)
    assert o["speedup"] == pytest.approx((2 + 4) / 2)  # mean of per-question ratios
    assert o["tokens_per_s"] == pytest.approx(30 / 1.5)
    assert o["greedy_match"] == 0.5 and o["questions"] == 2 and o["new_tokens"] == 30
    assert s["spec"]["categories"]["code"]["speedup"] == pytest.approx(2.0)
    assert s["spec"]["categories"]["math"]["tau"] == pytest.approx(4.0)
    sampled = summarize(records, compare_outputs=False)
    assert sampled["spec"]["overall"]["greedy_match"] is None
    assert sampled["spec"]["overall"]["speedup"] == o["speedup"]


def test_turns_and_repeats_are_summed_per_question():
    records = [
        rec("plain", "q", "chat", 10, 1.0, 10, turn=0), rec("plain", "q", "chat", 10, 1.0, 10, turn=1),
        rec("spec", "q", "chat", 10, 0.5, 5, turn=0), rec("spec", "q", "chat", 10, 1.5, 5, turn=1),
        rec("spec", "q", "chat", 10, 0.5, 5, turn=0, repeat=1), rec("spec", "q", "chat", 10, 1.5, 5, turn=1, repeat=1),
    ]
    o = summarize(records)["spec"]["overall"]
    assert o["speedup"] == pytest.approx((40 / 4.0) / (20 / 2.0))
    assert o["tau"] == pytest.approx(2.0) and o["questions"] == 1


def write(tmp_path, lines):
    p = tmp_path / "q.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_question_file_reader(tmp_path):
    ok = [json.dumps({"question_id": i, "category": c, "turns": [f"q{i}", "more"]})
          for i, c in enumerate(["a", "a", "b", "a"])]
    qs = read_questions(write(tmp_path, ok + [""]))
    assert [q.question_id for q in qs] == ["0", "1", "2", "3"] and qs[0].turns == ("q0", "more")
    assert [q.question_id for q in per_category(qs, 1)] == ["0", "2"]


@pytest.mark.parametrize("bad, needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"question_id": 1, "category": "x", "turns": []}), "turns"),
    (json.dumps({"question_id": 1, "category": "x", "turns": ["ok", ""]}), "turns"),
    (json.dumps({"category": "x", "turns": ["hi"]}), "question_id"),
])
def test_malformed_line_is_named(tmp_path, bad, needle):
    good = json.dumps({"question_id": 0, "category": "x", "turns": ["hi"]})
    with pytest.raises(SpecdraftError, match=rf"q.jsonl:3: .*{needle}"):
        read_questions(write(tmp_path, [good, good, bad]))


def test_missing_file(tmp_path):
    with pytest.raises(SpecdraftError, match="cannot read"):
        read_questions(tmp_path / "nope.jsonl")
