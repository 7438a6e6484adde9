"""`specdraft bench` end to end on a tiny random model (seconds)."""

import json

from specdraft.cli import main


def test_bench_end_to_end(tiny_llm_dir, tmp_path, capsys):
    qfile = tmp_path / "q.jsonl"
    qs = [
        {"question_id": "c1", "category": "chat", "turns": ["What is the capital of France?", "And of Italy?"]},
        {"question_id": "c2", "category": "chat", "turns": ["Tell me about the quick brown fox."]},
        {"question_id": "m1", "category": "math", "turns": ["Natalia sold 48 clips in April."]},
        {"question_id": "m2", "category": "math", "turns": ["def add(a, b): return a + b"]},
        {"question_id": "x", "category": "math", "turns": ["beyond --per-category 2"]},
    ]
    qfile.write_text("\n".join(json.dumps(q) for q in qs) + "\n")
    out = tmp_path / "run"
    rc = main(["bench", "--model", str(tiny_llm_dir), "--methods", "lookup,hf-plain", "--questions", str(qfile),
               "--per-category", "2", "--max-new-tokens", "12", "--dtype", "float32", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["methods"]) == {"plain", "lookup", "hf-plain"} and s["dtype"] == "float32"
    assert isinstance(s["packed_weights"], bool)
    for m in s["methods"].values():
        assert set(m["categories"]) == {"chat", "math"} and m["overall"]["questions"] == 4
        for key in ("tau", "acceptance_rate", "tokens_per_s", "speedup", "new_tokens", "questions", "greedy_match"):
            assert key in m["overall"]
    assert s["methods"]["plain"]["overall"]["tau"] == 1.0
    assert s["methods"]["lookup"]["overall"]["greedy_match"] == 1.0  # lossless in fp32
    assert s["methods"]["hf-plain"]["overall"]["tau"] == 1.0  # one target forward per token
    answers = [json.loads(line) for line in (out / "answers" / "lookup.jsonl").read_text().splitlines()]
    c1 = next(a for a in answers if a["question_id"] == "c1")
    assert len(c1["choices"][0]["turns"]) == 2 and len(c1["choices"][0]["new_tokens"]) == 2
    assert (out / "speedup.png").stat().st_size > 1000
    assert "| lookup | math |" in (out / "report.md").read_text()
    assert "| plain | **overall** |" in capsys.readouterr().out


def test_a_failing_method_is_dropped_and_reported():
    from specdraft.bench.questions import Question
    from specdraft.bench.runner import TurnResult, run_methods

    class Fake:
        def __init__(self, name, fail_on=None):
            self.name, self.fail_on, self.calls = name, fail_on, 0

        def generate(self, messages, max_new_tokens):
            self.calls += 1
            if messages[-1]["content"] == self.fail_on:
                raise RuntimeError("boom")
            return TurnResult((1, 2), "ab", 0.1, 2)

    qs = [Question(str(i), "c", (f"q{i}",)) for i in range(4)]
    ok, bad = Fake("plain"), Fake("broken", fail_on="q2")
    failures = {}
    records = run_methods([ok, bad], qs, max_new_tokens=4, warmup=False, progress=False, failures=failures)
    assert {r.method for r in records} == {"plain"} and len(records) == 4
    assert "question 2" in failures["broken"] and "boom" in failures["broken"]
    assert bad.calls == 3  # not called again after failing
