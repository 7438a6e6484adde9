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
    from specdraft import cli
    from specdraft.runtime import model as model_module

    monkeypatch.setattr(model_module, "PREFILL_CHUNK", 4)
    short = cli._PrefillBar()
    short(4, 4)
    assert short.bar is None
    bar = cli._PrefillBar()
    for done in (4, 8, 10):
        bar(done, 10)
        assert bar.bar.n == done
    assert "prompt" in capsys.readouterr().err  # on stderr, the text untouched
