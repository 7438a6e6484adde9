"""Drafters on the real models, fp32 greedy: output identical to plain decoding (chat, code, math)."""

import json
import subprocess
import sys

import pytest

from specdraft import LLM, SpecdraftError

pytestmark = pytest.mark.integration

PROMPTS = {
    "chat": "Rewrite in the passive voice: the committee approved the new budget after a long debate.",
    "code": "Write a Python function that checks whether a number is prime, then show how to call it.",
    "math": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?",
}


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return LLM(str(smollm2_dir), dtype="float32", progress=False)


@pytest.mark.parametrize("domain", sorted(PROMPTS))
def test_lookup_equals_plain_on_smollm2(smol, domain):
    plain = smol.generate(PROMPTS[domain], max_new_tokens=64)
    spec = smol.generate(PROMPTS[domain], max_new_tokens=64, drafter="lookup")
    assert spec.token_ids == plain.token_ids
    assert spec.stats.target_forwards <= plain.stats.target_forwards


@pytest.mark.parametrize("domain", sorted(PROMPTS))
def test_int8_copy_of_the_target_equals_plain_on_smollm2(smol, domain):
    """draft-model:self?quant=int8 drafts with an int8 copy of SmolLM2 itself: the output is plain
    decoding's, and the copy agrees with the model often enough to be accepted."""
    plain = smol.generate(PROMPTS[domain], max_new_tokens=48)
    spec = smol.generate(PROMPTS[domain], max_new_tokens=48, drafter="draft-model:self?quant=int8")
    assert spec.token_ids == plain.token_ids
    assert spec.drafter == "draft-model:self?quant=int8"
    assert spec.stats.accepted > spec.stats.drafted / 3
    assert spec.stats.target_forwards < plain.stats.target_forwards


def test_unknown_drafter_and_tokenizer_mismatch(smol):
    with pytest.raises(SpecdraftError, match="unknown drafter"):
        smol.generate("hi", drafter="medusa-9000")
    with pytest.raises(SpecdraftError, match="different tokenizer"):
        smol.drafter("draft-model:qwen2.5-coder-0.5b")


def test_cli_json_reports_tau_and_acceptance(smollm2_dir):
    r = subprocess.run([sys.executable, "-m", "specdraft", "generate", PROMPTS["chat"], "--model", str(smollm2_dir),
                        "--drafter", "lookup", "--json", "--max-new-tokens", "32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["drafter"] == "lookup" and d["acceptance_rate"] is not None
    assert d["tau"] == pytest.approx(d["new_tokens"] / d["target_forwards"])


def test_cli_bad_drafter_spec_fails_before_loading():
    r = subprocess.run([sys.executable, "-m", "specdraft", "generate", "hi", "--drafter", "draft-model"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "draft-model needs a model" in r.stderr


@pytest.fixture(scope="module")
def qwen():
    return LLM("qwen2.5-coder-1.5b", dtype="float32", drafter="draft-model:qwen2.5-coder-0.5b", progress=False)


@pytest.mark.parametrize("domain", sorted(PROMPTS))
def test_draft_model_equals_plain_on_qwen_pair(qwen, domain):
    plain = qwen.generate(PROMPTS[domain], max_new_tokens=32, drafter="plain")
    spec = qwen.generate(PROMPTS[domain], max_new_tokens=32)
    assert spec.token_ids == plain.token_ids
    assert spec.drafter == "draft-model:qwen2.5-coder-0.5b" and spec.stats.accepted > 0


def test_draft_model_with_a_reduced_vocabulary_equals_plain_on_qwen_pair(qwen):
    """?vocab=32768: the frequent tokens plus the context's (the math prompt's name is a rare token)."""
    plain = qwen.generate(PROMPTS["math"], max_new_tokens=32, drafter="plain")
    spec = qwen.generate(PROMPTS["math"], max_new_tokens=32, drafter="draft-model:qwen2.5-coder-0.5b?vocab=32768")
    assert spec.token_ids == plain.token_ids and spec.stats.accepted > 0
    assert 32768 < spec.to_json()["drafter_info"]["draft_vocab"] < 32768 + 200
    assert spec.drafter == "draft-model:qwen2.5-coder-0.5b?vocab=32768"


SEED_DRAFTERS = ["knn-ssd", "knn-ssd:skipsets", "ctc", "medusa"]


@pytest.mark.parametrize("drafter", SEED_DRAFTERS)
@pytest.mark.parametrize("domain", sorted(PROMPTS))
def test_seed_drafters_equal_plain_on_smollm2(smol, drafter, domain):
    """The shipped knn-ssd, ctc and medusa artifacts, fp32 greedy: output identical to plain."""
    plain = smol.generate(PROMPTS[domain], max_new_tokens=48)
    spec = smol.generate(PROMPTS[domain], max_new_tokens=48, drafter=drafter)
    assert spec.token_ids == plain.token_ids
    if drafter.startswith("knn-ssd"):
        assert spec.to_json()["route"]["drafter"]


@pytest.mark.parametrize("domain", sorted(PROMPTS))
def test_layerskip_equals_plain_on_smollm2(smol, domain, tmp_path):
    from specdraft.drafters.layerskip import skipset_to_json
    from specdraft.runtime.model import SkipSet

    L = smol.model.cfg.num_layers
    skip = SkipSet(tuple(i in (4, 9, 17) for i in range(L)), tuple(i in (12, 20) for i in range(L)))
    f = tmp_path / "set.json"
    f.write_text(json.dumps(skipset_to_json(skip, "smollm2-135m")))
    plain = smol.generate(PROMPTS[domain], max_new_tokens=48)
    spec = smol.generate(PROMPTS[domain], max_new_tokens=48, drafter=f"layerskip:{f}")
    assert spec.token_ids == plain.token_ids
    assert spec.stats.accepted > 0


def test_cli_knn_route_and_bad_skipset(smollm2_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "specdraft", "generate", PROMPTS["math"], "--model", str(smollm2_dir),
                        "--drafter", "knn-ssd", "--json", "--max-new-tokens", "16"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    route = json.loads(r.stdout)["route"]
    assert set(route) >= {"domain", "nearest", "distance", "radius", "drafter", "fallback", "timed_in"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "specdraft-skipset-1", "model": "x", "num_layers": 28, "attn": [1], "mlp": []}))
    r = subprocess.run([sys.executable, "-m", "specdraft", "generate", "hi", "--model", str(smollm2_dir),
                        "--drafter", f"layerskip:{bad}"], capture_output=True, text=True)
    assert r.returncode == 2 and "28 layers" in r.stderr
