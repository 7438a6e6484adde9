"""Drafter spec strings: kind, argument and `?key=value` options, and their errors."""

import json

import pytest

from specdraft import LLM
from specdraft.drafters import build_drafter, check_spec, parse_spec
from specdraft.errors import SpecdraftError


def ctx_for(model: str, device: str, backend: str, dtype: str = "float32"):
    """A drafter context for a model's name alone (what `recommended` reads)."""
    from pathlib import Path

    import torch

    from specdraft.drafters import DraftContext

    return DraftContext(None, None, Path(model), model, getattr(torch, dtype), torch.device(device), backend=backend)


def test_parse_spec_options_and_types():
    assert parse_spec("ctc") == ("ctc", "", {})
    assert parse_spec("lookup:5?max_ngram=4") == ("lookup", "5", {"max_ngram": 4})
    kind, arg, opts = parse_spec("draft-model:qwen2.5-coder-0.5b?confidence=0.5&max_length=6&tree=beam&x=true")
    assert (kind, arg) == ("draft-model", "qwen2.5-coder-0.5b")
    assert opts == {"confidence": 0.5, "max_length": 6, "tree": "beam", "x": True}
    assert isinstance(opts["max_length"], int) and isinstance(opts["confidence"], float)


@pytest.mark.parametrize("bad", ["ctc?max_nodes", "ctc?=3", "ctc?max nodes=3", "ctc?a=1&", "plain?x=1"])
def test_bad_options_are_clear_errors(bad):
    with pytest.raises(SpecdraftError):
        check_spec(bad)


def test_options_reach_the_drafter_and_unknown_ones_are_refused(tiny_llm_dir):
    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    d = build_drafter("lookup:7?max_ngram=2", llm.draft_context)
    assert (d.num_tokens, d.max_ngram) == (7, 2)
    assert build_drafter("lookup?max_ngram=2", llm.draft_context, max_ngram=5).max_ngram == 5  # explicit options win
    with pytest.raises(SpecdraftError, match="nodes.*not an option of lookup"):
        build_drafter("lookup?nodes=3", llm.draft_context)
    out = llm.generate("hello there", max_new_tokens=8, drafter="lookup?max_ngram=1")
    assert out.token_ids == llm.generate("hello there", max_new_tokens=8).token_ids


def test_auto_is_the_measured_recommendation_else_lookup_and_the_int8_copy(tiny_llm_dir, tmp_path, monkeypatch):
    import json
    import torch

    from specdraft import artifacts
    from specdraft.drafters import AUTO_CPU, AUTO_OTHER, recommended, runs_on_gguf

    check_spec("auto")
    for bad in ("auto:x", "auto?max_nodes=4", "lookup+auto"):
        with pytest.raises(SpecdraftError):
            check_spec(bad)
    # the shipped models: what their drafter.json says for the device type, where it says anything
    for model in ("smollm2-135m", "qwen2.5-coder-1.5b", "gemma3-270m"):
        shipped = json.loads((artifacts.ROOT / model / "drafter.json").read_text())
        cpu = ctx_for(model, "cpu", "torch")
        assert recommended(cpu) == shipped["cpu"]["drafter"]
        check_spec(recommended(cpu))
        if "cuda" not in shipped:
            assert recommended(ctx_for(model, "cuda", "torch")) == AUTO_OTHER
        # on the gguf backend only what was measured there, and only what that backend runs
        gguf = ctx_for(model, "cpu", "gguf")
        for t in (0.0, 1.0):
            entry = shipped.get("cpu/gguf")
            hot = entry and entry.get("sampled")
            want = (hot["drafter"] if hot and t >= hot["min_temperature"] else entry["drafter"]) if entry else AUTO_OTHER
            assert recommended(gguf, t) == want and runs_on_gguf(want)
    # a model with none: lookup + the int8 copy on a CPU, built and lossless
    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    assert recommended(llm.draft_context) == AUTO_CPU
    out = llm.generate("hello there hello there", max_new_tokens=12, drafter="auto")
    assert out.drafter == build_drafter(AUTO_CPU, llm.draft_context).name
    from specdraft.server.app import drafter_name  # what `serve --drafter auto` reports on /health

    assert drafter_name(llm, "auto") == out.drafter and drafter_name(llm, "plain") == "plain"
    assert out.token_ids == llm.generate("hello there hello there", max_new_tokens=12).token_ids
    # a corrupt recommendation is an error, not a silent fallback
    monkeypatch.setattr(artifacts, "ROOT", tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "drafter.json").write_text('{"cpu": {"spec": "ctc"}}')
    with pytest.raises(SpecdraftError, match="corrupt drafter recommendation"):
        recommended(ctx_for("m", "cpu", "torch"))


def test_auto_samples_with_the_drafter_measured_for_its_temperature(tiny_llm_dir, tmp_path, monkeypatch):
    import json
    import torch

    from specdraft import artifacts
    from specdraft.drafters import recommended
    from specdraft.server.app import drafter_name

    # the shipped models: per dtype its own entry where one was measured, else the device's; a
    # "sampled" entry from its temperature on, where one was measured
    for model in ("smollm2-135m", "qwen2.5-coder-1.5b", "gemma3-270m"):
        table = json.loads((artifacts.ROOT / model / "drafter.json").read_text())
        for dtype in ("float32", "bfloat16"):
            entry = table.get(f"cpu/{dtype}", table["cpu"])
            cpu = ctx_for(model, "cpu", "torch", dtype)
            hot = entry.get("sampled")
            for t in (0.0, 0.5, 0.7, 1.0, 1.5):
                want = hot["drafter"] if hot and t > 0 and t >= hot["min_temperature"] else entry["drafter"]
                assert recommended(cpu, t) == want
                check_spec(recommended(cpu, t))
    monkeypatch.setattr(artifacts, "ROOT", tmp_path)
    (tmp_path / tiny_llm_dir.name).mkdir()
    (tmp_path / tiny_llm_dir.name / "drafter.json").write_text(json.dumps(
        {"cpu": {"drafter": "lookup?min_ngram=2",
                 "sampled": {"drafter": "draft-model:self?quant=int8", "min_temperature": 0.9}}}))
    llm = LLM(str(tiny_llm_dir), drafter="auto", dtype="float32", progress=False)
    prompt = "hello there hello there"
    greedy = llm.generate(prompt, max_new_tokens=10)
    warm = llm.generate(prompt, max_new_tokens=10, temperature=0.7, seed=3)
    hot = llm.generate(prompt, max_new_tokens=10, temperature=1.0, seed=3)
    int8 = build_drafter("draft-model:self?quant=int8", llm.draft_context).name
    assert (greedy.drafter, warm.drafter, hot.drafter) == ("lookup?min_ngram=2", "lookup?min_ngram=2", int8)
    assert greedy.token_ids == llm.generate(prompt, max_new_tokens=10, drafter="plain").token_ids
    assert drafter_name(llm, "auto") == greedy.drafter and drafter_name(llm, "auto", temperature=1.0) == int8
    assert drafter_name(llm, "lookup", temperature=1.0) == "lookup"  # only auto depends on the temperature
    # without a "sampled" entry, sampling takes greedy's drafter; a broken one is an error
    (tmp_path / tiny_llm_dir.name / "drafter.json").write_text('{"cpu": {"drafter": "lookup?min_ngram=2"}}')
    assert recommended(llm.draft_context, 1.0) == "lookup?min_ngram=2"
    (tmp_path / tiny_llm_dir.name / "drafter.json").write_text('{"cpu": {"drafter": "lookup", "sampled": {"drafter": "ctc"}}}')
    with pytest.raises(SpecdraftError, match="corrupt drafter recommendation"):
        recommended(llm.draft_context, 1.0)


@pytest.mark.parametrize("spec", ["layerskip", "knn-ssd", "ctc", "medusa"])
def test_a_missing_shipped_artifact_names_its_recipe_and_a_spec_that_parses(tiny_llm_dir, spec):
    """A model with no shipped artifact: the error names the command that builds one and the
    drafter spec that then takes its path -- a spec that really parses (layerskip, not skipset)."""
    import re

    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    with pytest.raises(SpecdraftError, match="no shipped") as e:
        build_drafter(spec, llm.draft_context)
    suggested = re.search(r"--drafter (\S+):PATH", str(e.value)).group(1)
    assert suggested == spec
    check_spec(f"{suggested}:some/path")


def test_auto_takes_the_entry_measured_in_the_dtype_it_runs_in(tiny_llm_dir, tmp_path, monkeypatch):
    """A `cpu/bfloat16` entry wins over `cpu` for a model loaded in bfloat16 (a CPU with bf16 units),
    and only there (in float32 the output is plain decoding's: lossless is checked in float32)."""
    import json

    from specdraft import artifacts
    from specdraft.drafters import recommended

    monkeypatch.setattr(artifacts, "ROOT", tmp_path)
    (tmp_path / tiny_llm_dir.name).mkdir()
    (tmp_path / tiny_llm_dir.name / "drafter.json").write_text(json.dumps(
        {"cpu": {"drafter": "lookup?min_ngram=2"},
         "cpu/bfloat16": {"drafter": "draft-model:self?quant=int8",
                          "sampled": {"drafter": "lookup", "min_temperature": 0.8}}}))
    prompt = "hello there hello there"
    for dtype, greedy_pick, hot_pick in (("float32", "lookup?min_ngram=2", "lookup?min_ngram=2"),
                                         ("bfloat16", "draft-model:self?quant=int8", "lookup")):
        llm = LLM(str(tiny_llm_dir), dtype=dtype, progress=False)
        assert (recommended(llm.draft_context), recommended(llm.draft_context, 1.0)) == (greedy_pick, hot_pick)
        out = llm.generate(prompt, max_new_tokens=10, drafter="auto")
        assert out.drafter == build_drafter(greedy_pick, llm.draft_context).name
        if dtype == "float32":
            assert out.token_ids == llm.generate(prompt, max_new_tokens=10).token_ids
    (tmp_path / tiny_llm_dir.name / "drafter.json").write_text('{"cpu": {"drafter": "lookup"}, "cpu/bfloat16": {"x": 1}}')
    with pytest.raises(SpecdraftError, match="corrupt drafter recommendation"):
        recommended(llm.draft_context)


def test_a_draft_model_with_the_targets_tokenizer_file_is_accepted_without_loading_it(tiny_llm_dir, tmp_path, monkeypatch):
    import shutil

    import specdraft.text as text

    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    twin = tmp_path / "twin"
    shutil.copytree(tiny_llm_dir, twin)
    loads = []
    real = text.Tokenizer.__init__
    monkeypatch.setattr(text.Tokenizer, "__init__", lambda self, path: (loads.append(path), real(self, path))[1])
    assert text.same_vocab(twin, llm.tokenizer) and loads == []  # byte-equal tokenizer.json: not loaded
    # the same vocabulary in a file written differently: loaded and compared
    (twin / "tokenizer.json").write_text((tiny_llm_dir / "tokenizer.json").read_text() + "\n")
    assert text.same_vocab(twin, llm.tokenizer) and loads == [twin]
    # another vocabulary: refused by the draft-model drafter with the clear error
    data = json.loads((tiny_llm_dir / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    first = next(iter(vocab))
    vocab[first + "-renamed"] = vocab.pop(first)
    (twin / "tokenizer.json").write_text(json.dumps(data))
    assert not text.same_vocab(twin, llm.tokenizer)
    with pytest.raises(SpecdraftError, match="different tokenizer"):
        build_drafter(f"draft-model:{twin}", llm.draft_context)


def test_drafters_of_one_llm_share_one_draft_model(tiny_llm_dir):
    llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    a = llm.drafter("draft-model:self?quant=int8")
    b = llm.drafter("lookup+draft-model:self?quant=int8&max_length=3").parts[1]
    c = llm.drafter(f"draft-model:{tiny_llm_dir}")  # the same files, unquantized: another model
    assert a.model is b.model and c.model is not a.model and len(llm.draft_context.draft_models) == 2
    plain = llm.generate("hello there", max_new_tokens=12, drafter="plain").token_ids
    for spec in ("draft-model:self?quant=int8", "lookup+draft-model:self?quant=int8&max_length=3", f"draft-model:{tiny_llm_dir}"):
        assert llm.generate("hello there", max_new_tokens=12, drafter=spec).token_ids == plain
