"""Drafter spec strings: kind, argument and `?key=value` options, and their errors."""

import pytest

from specdraft import LLM
from specdraft.drafters import build_drafter, check_spec, parse_spec
from specdraft.errors import SpecdraftError


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
    d = build_drafter("lookup:7?max_ngram=2", llm)
    assert (d.num_tokens, d.max_ngram) == (7, 2)
    assert build_drafter("lookup?max_ngram=2", llm, max_ngram=5).max_ngram == 5  # explicit options win
    with pytest.raises(SpecdraftError, match="nodes.*not an option of lookup"):
        build_drafter("lookup?nodes=3", llm)
    out = llm.generate("hello there", max_new_tokens=8, drafter="lookup?max_ngram=1")
    assert out.token_ids == llm.generate("hello there", max_new_tokens=8).token_ids
