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

        def generate(self, messages, max_new_tokens, sampling=None):
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


def test_sampled_bench_is_reproducible_and_does_not_compare_outputs(tiny_llm_dir, tmp_path):
    qfile = tmp_path / "q.jsonl"
    qs = [{"question_id": f"q{i}", "category": "chat", "turns": [f"Tell me about item {i}.", "More."]} for i in range(2)]
    qfile.write_text("\n".join(json.dumps(q) for q in qs) + "\n")
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        rc = main(["bench", "--model", str(tiny_llm_dir), "--methods", "lookup,hf-plain", "--questions", str(qfile),
                   "--max-new-tokens", "10", "--dtype", "float32", "--temperature", "1.5", "--top-k", "50",
                   "--seed", "7", "--out", str(out)])
        assert rc == 0
        runs.append(out)
    s = json.loads((runs[0] / "summary.json").read_text())
    assert s["sampling"] == {"temperature": 1.5, "top_p": 1.0, "top_k": 50, "seed": 7}
    assert all(m["overall"]["greedy_match"] is None for m in s["methods"].values())
    assert "sampled (temperature 1.5" in (runs[0] / "report.md").read_text()
    turns = {}
    for out in runs:
        for method in ("plain", "lookup", "hf-plain"):
            answers = (out / "answers" / f"{method}.jsonl").read_text().splitlines()
            turns.setdefault(method, []).append(sorted((json.loads(a)["question_id"], json.loads(a)["choices"][0]["turns"])
                                                       for a in answers))
    for method, (first, second) in turns.items():
        assert first == second, method  # same seed, same samples
    # The options reach the decoder: the samples are not greedy decoding's output.
    greedy = main(["bench", "--model", str(tiny_llm_dir), "--methods", "lookup", "--questions", str(qfile),
                   "--max-new-tokens", "10", "--dtype", "float32", "--out", str(tmp_path / "g")])
    assert greedy == 0
    g = sorted((json.loads(a)["question_id"], json.loads(a)["choices"][0]["turns"])
               for a in (tmp_path / "g" / "answers" / "plain.jsonl").read_text().splitlines())
    assert g != turns["plain"][0]


def test_every_method_samples_a_turn_with_the_same_seed():
    from specdraft.bench.questions import Question
    from specdraft.bench.runner import run_methods
    from specdraft.bench.runner import TurnResult
    from specdraft.runtime.sampling import SamplingParams

    class Recorder:
        def __init__(self, name):
            self.name, self.seen = name, []

        def generate(self, messages, max_new_tokens, sampling=None):
            self.seen.append((len(messages), sampling))
            return TurnResult((1,), "a", 0.1, 1)

    qs = [Question(str(i), "c", ("x", "y")) for i in range(3)]
    a, b = Recorder("plain"), Recorder("other")
    run_methods([a, b], qs, max_new_tokens=4, repeats=2, sampling=SamplingParams(temperature=0.7, top_p=0.9, seed=1),
                warmup=False, progress=False)
    assert a.seen == b.seen and len(a.seen) == 12
    seeds = [s.seed for _, s in a.seen]
    assert len(set(seeds)) == 12  # per question, turn and repeat
    assert all(s.temperature == 0.7 and s.top_p == 0.9 for _, s in a.seen)
    c = Recorder("plain")
    run_methods([c], qs, max_new_tokens=4, repeats=2, sampling=SamplingParams(temperature=0.7, top_p=0.9, seed=2),
                warmup=False, progress=False)
    assert [s.seed for _, s in c.seen] != seeds  # another base seed, other turn seeds
    d = Recorder("plain")
    run_methods([d], qs, max_new_tokens=4, warmup=False, progress=False)
    assert all(s.greedy for _, s in d.seen)


def test_bench_concurrency_answers_the_first_turns_n_at_a_time(tiny_llm_dir, tmp_path, capsys):
    qfile = tmp_path / "q.jsonl"
    qs = [{"question_id": f"q{i}", "category": "chat", "turns": [f"Tell me about the quick brown fox number {i}."]}
          for i in range(5)]
    qfile.write_text("\n".join(json.dumps(q) for q in qs) + "\n")
    out = tmp_path / "run"
    rc = main(["bench", "--model", str(tiny_llm_dir), "--methods", "lookup", "--questions", str(qfile),
               "--max-new-tokens", "10", "--dtype", "float32", "--concurrency", "3", "--out", str(out)])
    assert rc == 0
    rows = {r["method"]: r for r in json.loads((out / "summary.json").read_text())["concurrency"]}
    assert set(rows) == {"plain", "lookup"}
    for r in rows.values():
        assert r["prompts"] == 5 and r["concurrency"] == 3 and r["same_answers"] == 5  # lossless in fp32
        assert r["alone_tokens_per_s"] > 0 and r["batch_tokens_per_s"] > 0
    assert "3 at a time" in capsys.readouterr().out
