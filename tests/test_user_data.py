"""Drafters trained on the user's own prompts: the file formats, a whole run (data, training, a
drafter that loads and drafts losslessly) on a file of 200 prompts made here, and bad input
refused with its line, exit 2 and nothing written."""

import json
import random

import pytest

from specdraft.cli import main
from specdraft.data.prompts import read_prompts
from specdraft.errors import SpecdraftError

WORDS = ("add", "the", "fox", "clips", "April", "May", "Paris", "capital", "France", "Guten", "Morgen", "sold",
         "return", "quick", "brown", "lazy", "dog", "half", "many", "text")


def prompt_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def test_the_four_formats_give_prompts_and_answers(tmp_path):
    (tmp_path / "a.txt").write_text("first prompt\n\n  second prompt  \n")
    assert [(e.prompt, e.answer) for e in read_prompts(tmp_path / "a.txt")] == [("first prompt", None),
                                                                             ("second prompt", None)]
    rows = [{"prompt": "p1"}, {"prompt": "p2", "answer": "a2"}, {"prompt": "p3", "completion": "a3"},
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "u"},
                          {"role": "assistant", "content": "a4"}]},
            {"messages": [{"role": "user", "content": "only a question"}]}]
    (tmp_path / "b.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n\n")
    got = read_prompts(tmp_path / "b.jsonl")
    assert [e.answer for e in got] == [None, "a2", "a3", "a4", None]
    assert got[3].messages() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "u"}]
    assert got[4].messages() == [{"role": "user", "content": "only a question"}]
    assert got[1].where == "b.jsonl:2"
    share = [{"id": "x", "conversations": [{"from": "human", "value": "h1"}, {"from": "gpt", "value": "g1"},
                                           {"from": "human", "value": "h2"}, {"from": "gpt", "value": "g2"}]}]
    (tmp_path / "c.json").write_text(json.dumps(share))
    (c,) = read_prompts(tmp_path / "c.json")
    assert c.answer == "g2" and [m["content"] for m in c.messages()] == ["h1", "g1", "h2"]
    (tmp_path / "d.prompts").write_text(json.dumps({"prompt": "sniffed"}) + "\n")  # unknown suffix: by content
    assert read_prompts(tmp_path / "d.prompts")[0].prompt == "sniffed"


@pytest.mark.parametrize("name,text,where", [
    ("e.jsonl", '{"prompt": "ok"}\n{"prompt": "ok"}\n{"prompt": oops}\n', "e.jsonl:3"),
    ("e.jsonl", '{"prompt": "ok"}\n{"question": "no key"}\n', "e.jsonl:2"),
    ("e.jsonl", '{"prompt": "   "}\n', "e.jsonl:1"),
    ("e.jsonl", '{"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]}\n', "e.jsonl:1"),
    ("e.jsonl", '{"messages": [{"role": "assistant", "content": "an answer to nothing"}]}\n', "e.jsonl:1"),
    ("e.json", '[{"conversations": [{"from": "human", "value": "x"}]}, {"conversations": [{"from": "cat"}]}]', "e.json[1]"),
    ("e.json", '[\n{"prompt": "x"},\n{"prompt": ]}\n]', "e.json:3"),
    ("e.json", '{"prompt": "an object, not a list"}', "e.json"),
    ("e.txt", "\n  \n", "holds no prompts"),
    ("e.jsonl", "", "holds no prompts"),
])
def test_a_malformed_file_is_refused_naming_the_place(tmp_path, name, text, where):
    (tmp_path / name).write_text(text)
    with pytest.raises(SpecdraftError, match=where.replace("[", r"\[").replace("]", r"\]")):
        read_prompts(tmp_path / name)


def test_a_file_that_is_not_utf8_or_not_there_is_refused(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00prompt")
    with pytest.raises(SpecdraftError, match="not UTF-8"):
        read_prompts(tmp_path / "bin.txt")
    with pytest.raises(SpecdraftError, match="no prompts file"):
        read_prompts(tmp_path / "missing.jsonl")


def test_a_whole_run_on_the_users_prompts_gives_a_lossless_drafter(tmp_path, tiny_llm_dir, capsys):
    """200 prompts in a file -> self-distilled data -> a CTC drafter -> `ctc:DIR` drafting
    plain greedy decoding's tokens; the teacher-forced path on the same file's answers."""
    from specdraft import LLM

    lines = prompt_lines(200)
    prompts = tmp_path / "mine.txt"
    prompts.write_text("\n".join(lines) + "\n")
    data = tmp_path / "data"
    assert main(["train", "data", "--model", str(tiny_llm_dir), "--prompts", str(prompts), "--out", str(data),
                 "--max-new-tokens", "12", "--batch-size", "50"]) == 0
    meta = json.loads((data / "data.json").read_text())
    assert meta["shards"] == 4 and meta["domains"] == {"file": 200} and len(meta["prompts_sha256"]) == 64
    assert "tokens/s" in capsys.readouterr().err  # the cost, measured on the first batch
    before = sorted(p.stat().st_mtime_ns for p in data.glob("shard-*"))
    assert main(["train", "data", "--model", str(tiny_llm_dir), "--prompts", str(prompts), "--out", str(data),
                 "--max-new-tokens", "12", "--batch-size", "50"]) == 0  # resumed: nothing redone
    assert sorted(p.stat().st_mtime_ns for p in data.glob("shard-*")) == before
    prompts.write_text("\n".join(lines[:150]) + "\n")  # another file into the same directory: refused
    assert main(["train", "data", "--model", str(tiny_llm_dir), "--prompts", str(prompts), "--out", str(data),
                 "--max-new-tokens", "12", "--batch-size", "50"]) == 2

    ctc = tmp_path / "ctc"
    assert main(["train", "ctc", "--model", str(tiny_llm_dir), "--data", str(data), "--out", str(ctc),
                 "--steps", "30", "--batch-size", "16", "--eval-every", "15"]) == 0
    assert {"config.json", "model.safetensors"} <= {p.name for p in ctc.iterdir()}

    llm = LLM(str(tiny_llm_dir), dtype="float32", backend="torch")
    for p in lines[:4]:
        plain = llm.generate(p, drafter="plain", max_new_tokens=24).token_ids
        drafted = llm.generate(p, drafter=f"ctc:{ctc}", max_new_tokens=24)
        assert drafted.token_ids == plain
        assert drafted.stats.drafted > 0

    written = tmp_path / "written.jsonl"
    written.write_text("\n".join(json.dumps({"prompt": p, "answer": q}) for p, q in zip(lines, reversed(lines))))
    assert main(["train", "data", "--model", str(tiny_llm_dir), "--prompts", str(written), "--teacher-forced",
                 "--out", str(tmp_path / "tf")]) == 0
    meta = json.loads((tmp_path / "tf" / "data.json").read_text())
    assert meta["source"] == "file-written" and meta["available"] == 200 and meta["without_answer"] == 0


def test_bad_input_exits_2_and_writes_nothing(tmp_path, tiny_llm_dir, tiny_qwen_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "fine"}\n{"prompt": 3}\n')
    out = tmp_path / "out"
    assert main(["train", "data", "--model", str(tiny_llm_dir), "--prompts", str(bad), "--out", str(out)]) == 2
    assert "bad.jsonl:3" in capsys.readouterr().err and not out.exists()

    long = tmp_path / "long.txt"
    long.write_text("a short one\n" + " ".join(["capital France Paris"] * 60) + "\n")  # > 128 positions
    assert main(["train", "data", "--model", str(tiny_llm_dir), "--prompts", str(long), "--out", str(out),
                 "--max-new-tokens", "8"]) == 2
    err = capsys.readouterr().err
    assert "long.txt:2" in err and "context of 128" in err and not out.exists()

    plain = tmp_path / "plain.txt"
    plain.write_text("no answers here\n")
    assert main(["train", "data", "--model", str(tiny_llm_dir), "--prompts", str(plain), "--teacher-forced",
                 "--out", str(out)]) == 2
    assert "no written answers" in capsys.readouterr().err and not out.exists()
    assert main(["train", "data", "--model", str(tiny_llm_dir), "--teacher-forced", "--out", str(out)]) == 2


def test_a_drafter_made_for_another_model_is_refused(tmp_path, tiny_llm_dir, capsys):
    """A CTC directory whose hidden size and vocabulary are another model's: exit 2, the reason said."""
    from specdraft.drafters.heads import HeadConfig, make_module, save_module

    cfg = HeadConfig(kind="ctc", base_model="elsewhere", hidden_size=48, vocab_size=1000, num_heads=4, intermediate_size=64)
    save_module(make_module(cfg), tmp_path / "other")
    rc = main(["generate", "hello", "--model", str(tiny_llm_dir), "--dtype", "float32", "--backend", "torch",
               "--drafter", f"ctc:{tmp_path / 'other'}", "--max-new-tokens", "4"])
    assert rc == 2
    assert "trained for elsewhere" in capsys.readouterr().err


@pytest.mark.integration
def test_a_whole_run_on_smollm2(tmp_path, smollm2_dir):
    """The same run on the real SmolLM2-135M: 200 prompts of a file, data with the EAGLE-3 head's
    layers, a CTC drafter and an EAGLE-3 head trained briefly, both drafting plain decoding's tokens."""
    from specdraft import LLM

    lines = [f"Write one sentence about the number {i} and the word {w}." for i, w in
             zip(range(200), WORDS * 10)]
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": p}]}) for p in lines))
    data = tmp_path / "data"
    assert main(["train", "data", "--model", "smollm2-135m", "--prompts", str(prompts), "--out", str(data),
                 "--max-new-tokens", "12", "--batch-size", "50", "--layers", "1,14,26"]) == 0
    assert json.loads((data / "data.json").read_text())["domains"] == {"file": 200}
    for kind in ("ctc", "eagle3"):
        assert main(["train", kind, "--model", "smollm2-135m", "--data", str(data), "--out", str(tmp_path / kind),
                     "--steps", "20", "--batch-size", "32", "--eval-every", "20"]) == 0
    llm = LLM("smollm2-135m", dtype="float32", backend="torch")
    for p in ("Tell me about owls.", lines[3]):
        plain = llm.generate(p, drafter="plain", max_new_tokens=32).token_ids
        for kind in ("ctc", "eagle3"):
            got = llm.generate(p, drafter=f"{kind}:{tmp_path / kind}", max_new_tokens=32)
            assert got.token_ids == plain and got.stats.drafted > 0, kind
