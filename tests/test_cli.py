"""Bad input at the CLI: one line saying what to do, exit code 2, no traceback."""

import subprocess
import sys

import pytest

from specdraft.cli import main


@pytest.mark.parametrize("argv, needle", [
    (["generate", ""], "empty"),
    (["generate", "   "], "empty"),
    (["generate", "hi", "--max-new-tokens", "0"], "positive"),
    (["generate", "hi", "--max-new-tokens", "-4"], "positive"),
    (["generate", "hi", "--dtype", "float8"], "dtype"),
    (["generate", "hi", "--device", "tpu"], "device"),
    (["generate", "hi", "--device", "cuda:7"], "cuda"),
    (["generate", "hi", "--temperature", "-1"], "temperature"),
    (["generate", "hi", "--top-p", "0"], "top_p"),
    (["generate", "hi", "--model", "gpt-17"], "unknown model"),
    (["models", "pull", "gpt-17"], "unknown model"),
    (["models", "path", "gpt-17"], "unknown model"),
    (["frobnicate"], "invalid choice"),
    (["train", "data", "--layers", "2,x"], "comma-separated layer numbers"),
    (["train", "ctc", "--out", "o", "--feature-layers", "3,3"], "distinct"),
    (["train", "ctc", "--out", "o", "--feature-layers", "-1"], "distinct and >= 0"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        sys.exit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_console_script_exit_code(tmp_path):
    exe = [sys.executable, "-m", "specdraft", "generate", "hi", "--dtype", "nope"]
    r = subprocess.run(exe, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "dtype" in r.stderr


def test_prefill_bar_shows_only_for_prompts_of_several_chunks(capsys, monkeypatch):
    from specdraft.cli.generate import PrefillBar
    from specdraft.runtime import model as model_module

    monkeypatch.setattr(model_module, "PREFILL_CHUNK", 4)
    short = PrefillBar()
    short(4, 4)
    assert short.bar is None
    bar = PrefillBar()
    for done in (4, 8, 10):
        bar(done, 10)
        assert bar.bar.n == done
    assert "prompt" in capsys.readouterr().err  # on stderr, the text untouched


def _chat(tiny_llm_dir, lines, monkeypatch, capsys, *extra):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{x}\n" for x in lines)))
    rc = main(["chat", "--model", str(tiny_llm_dir), "--dtype", "float32", "--max-new-tokens", "12", *extra])
    out, err = capsys.readouterr()
    summaries = [x for x in err.splitlines() if x.startswith("[") and "new tokens" in x]
    return rc, out.splitlines(), summaries, err


def test_chat_keeps_the_conversation_and_resets_it(tiny_llm_dir, monkeypatch, capsys):
    from specdraft import LLM

    rc, answers, summaries, err = _chat(tiny_llm_dir, ["hello there", "/nope", "", "what next", "/reset", "hello there", "/exit",
                                                       "never read"], monkeypatch, capsys)
    assert rc == 0 and len(answers) == len(summaries) == 3 and "unknown command /nope" in err
    prompt_tokens = [int(s.split(" prompt tokens")[0].rsplit(" ", 1)[1]) for s in summaries]
    assert prompt_tokens[1] > prompt_tokens[0] == prompt_tokens[2]  # the history grows, /reset empties it
    cached = [int(s.split(" cached)")[0].rsplit("(", 1)[1]) for s in summaries]
    # the first turn is not prefilled again (how much of the answer is depends on its text re-encoding
    # to the ids it was generated as: with this toy tokenizer it does not)
    assert cached[0] == 0 and prompt_tokens[0] <= cached[1] < prompt_tokens[1]
    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    first = llm.generate([{"role": "user", "content": "hello there"}], max_new_tokens=12, drafter="plain")
    second = llm.generate([{"role": "user", "content": "hello there"}, {"role": "assistant", "content": first.text},
                           {"role": "user", "content": "what next"}], max_new_tokens=12, drafter="plain")
    # the chat drafts (auto) and its answers are plain decoding's, turn after turn
    assert answers == [first.text.strip(), second.text.strip(), first.text.strip()]
    assert all("plain" not in s for s in summaries)


def test_chat_ctrl_c_stops_the_answer_not_the_chat(tiny_llm_dir, monkeypatch, capsys):
    import os
    import signal

    from specdraft import api

    real = api.LLM.generate

    def interrupted(self, prompt, **kw):  # the user presses Ctrl-C as the first piece arrives
        shown = kw["on_text"]

        def on_text(piece):
            shown(piece)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, prompt, **{**kw, "on_text": on_text})

    monkeypatch.setattr(api.LLM, "generate", interrupted)
    before = signal.getsignal(signal.SIGINT)  # (ignored where the test runs in a background job)
    rc, answers, summaries, _ = _chat(tiny_llm_dir, ["hello there", "what next"], monkeypatch, capsys,
                                      "--max-new-tokens", "64", "--drafter", "plain")
    assert rc == 0 and len(summaries) == 2 and all(", stopped]" in s for s in summaries)
    assert all(int(s[1:].split(" new tokens")[0]) < 64 for s in summaries)
    assert signal.getsignal(signal.SIGINT) is before  # restored after each answer


def test_chat_refuses_a_model_without_chat_template(tiny_llm_dir, tmp_path, monkeypatch, capsys):
    import json
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_llm_dir, base)
    for f in base.glob("*.jinja"):
        f.unlink()
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    rc, answers, _, err = _chat(base, ["hello"], monkeypatch, capsys)
    assert rc == 2 and answers == [] and "no chat template" in err


def test_chat_takes_a_turn_of_several_lines_between_triple_quotes(tiny_llm_dir, monkeypatch, capsys):
    from specdraft import LLM

    rc, answers, summaries, _ = _chat(tiny_llm_dir, ['"""', "def add(a, b):", "    return a + b", '"""', '"""one line"""'],
                                      monkeypatch, capsys, "--drafter", "plain")
    assert rc == 0 and len(summaries) == 2
    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    first = [{"role": "user", "content": "def add(a, b):\n    return a + b"}]
    a = llm.generate(first, max_new_tokens=12)
    b = llm.generate(first + [{"role": "assistant", "content": a.text}, {"role": "user", "content": "one line"}],
                     max_new_tokens=12)
    assert answers == [a.text.strip(), b.text.strip()]
    assert int(summaries[0].split(" prompt tokens")[0].rsplit(" ", 1)[1]) == a.prompt_tokens


def test_chat_ctrl_c_during_the_prefill_drops_the_question(tiny_llm_dir, monkeypatch, capsys):
    import dataclasses
    import os
    import signal

    from specdraft import api

    real = api.LLM.generate
    calls = []

    def interrupted(self, prompt, **kw):  # Ctrl-C while the first question's prompt is prefilled
        calls.append(list(prompt))  # (the chat extends its list afterwards)
        if len(calls) > 1:
            return real(self, prompt, **kw)
        os.kill(os.getpid(), signal.SIGINT)
        assert kw["should_stop"]()  # the handler turned Ctrl-C into a stop request
        r = real(self, prompt, **{**kw, "on_text": None})
        return dataclasses.replace(r, text="", token_ids=[])  # what a prefill cancelled between chunks gives

    monkeypatch.setattr(api.LLM, "generate", interrupted)
    rc, answers, summaries, err = _chat(tiny_llm_dir, ["first question", "second question"], monkeypatch, capsys)
    assert rc == 0 and "question is dropped" in err and len(summaries) == 1 and len(answers) == 1
    assert calls[1] == [{"role": "user", "content": "second question"}]  # the first is not in the history


@pytest.mark.parametrize("argv, extra", [
    (["serve", "--model", "nonexistent"], "serve"),
    (["bench", "--model", "nonexistent"], "bench"),
    (["search-skip", "--model", "nonexistent", "--domain", "code", "--out", "x.json"], "train"),
])
def test_a_missing_extra_is_named_before_anything_runs(argv, extra, capsys, monkeypatch):
    from specdraft import errors

    monkeypatch.setitem(errors.EXTRAS, extra, errors.EXTRAS[extra] + ("specdraft_no_such_package",))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"pip install 'specdraft[{extra}]'" in err and "specdraft_no_such_package" in err
    assert err.count("\n") == 1
