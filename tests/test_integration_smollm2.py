"""The real SmolLM2-135M: plain decoding, streaming, the CLI and the Python API."""

import json
import subprocess
import sys

import pytest
import torch

from specdraft import LLM
from specdraft.server.app import drafter_name

pytestmark = pytest.mark.integration

PROMPTS = {
    "chat": "Give me two tips for sleeping better.",
    "code": "Write a Python function that returns the n-th Fibonacci number.",
    "math": "A shop sells pens at 3 dollars each. How much do 7 pens cost? Explain step by step.",
}


@pytest.fixture(scope="module")
def llm32(smollm2_dir):
    return LLM(str(smollm2_dir), dtype="float32", progress=False)


@pytest.mark.parametrize("domain", sorted(PROMPTS))
def test_greedy_fp32_equals_transformers_generate(llm32, domain):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(llm32.path), dtype=torch.float32).eval()
    ids = llm32.tokenizer.encode_prompt(PROMPTS[domain])
    r = llm32.generate(ids, max_new_tokens=40)
    with torch.inference_mode():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False,
                          eos_token_id=sorted(llm32.tokenizer.eos_ids), pad_token_id=0)[0, len(ids):].tolist()
    assert r.token_ids == ref


def test_streamed_text_equals_final_text(llm32):
    pieces = []
    r = llm32.generate(PROMPTS["code"], max_new_tokens=48, on_text=pieces.append)
    assert "".join(pieces) == r.text and len(pieces) > 5
    assert "".join(llm32.stream(PROMPTS["code"], max_new_tokens=48)) == r.text


def test_chat_template_and_raw_text_differ(llm32):
    chat = llm32.tokenizer.encode_prompt("Hello")
    raw = llm32.tokenizer.encode_prompt("Hello", chat=False)
    assert len(chat) > len(raw) and llm32.tokenizer.hf.decode(raw) == "Hello"
    assert llm32.generate("Once upon a time", chat=False, max_new_tokens=5).new_tokens == 5


def test_seeded_sampling_is_reproducible(llm32):
    kw = dict(max_new_tokens=24, temperature=0.8, top_p=0.95, top_k=50, seed=11)
    assert llm32.generate(PROMPTS["chat"], **kw).token_ids == llm32.generate(PROMPTS["chat"], **kw).token_ids


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "specdraft", *args], input=stdin, capture_output=True, text=True)


def test_cli_json_output(llm32, smollm2_dir):
    r = _cli("generate", PROMPTS["math"], "--model", str(smollm2_dir), "--json", "--dtype", "float32",
             "--max-new-tokens", "24")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("text", "token_ids", "new_tokens", "target_forwards", "tau", "acceptance_rate", "tokens_per_s",
                "wall_s", "model", "drafter", "dtype", "packed_weights"):
        assert key in d
    # the CLI drafts with `auto` unless told otherwise: the output is still plain decoding's
    assert d["token_ids"] == llm32.generate(PROMPTS["math"], max_new_tokens=24).token_ids
    assert d["drafter"] == drafter_name(llm32, "auto") != "plain" and d["dtype"] == "float32"
    assert d["new_tokens"] == len(d["token_ids"]) > d["target_forwards"] and d["acceptance_rate"] is not None
    r = _cli("generate", PROMPTS["math"], "--model", str(smollm2_dir), "--json", "--dtype", "float32",
             "--max-new-tokens", "24", "--drafter", "plain")
    d = json.loads(r.stdout)
    assert d["token_ids"] == llm32.generate(PROMPTS["math"], max_new_tokens=24).token_ids
    assert d["new_tokens"] == d["target_forwards"] and d["tau"] == 1.0
    assert d["acceptance_rate"] is None and d["drafter"] == "plain"
    assert d["packed_weights"] is llm32.packed  # the CLI loads as LLM does: packed wherever this CPU can


def test_cli_streams_prompt_from_stdin(smollm2_dir):
    r = _cli("generate", "--model", str(smollm2_dir), "--max-new-tokens", "8", "--no-chat", stdin="The capital of France is")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "8 new tokens" in r.stderr and "tokens/s" in r.stderr


def test_cli_prompt_longer_than_context(smollm2_dir):
    r = _cli("generate", "--model", str(smollm2_dir), "--no-chat", "word " * 9000)
    assert r.returncode == 2 and "context window" in r.stderr and "Traceback" not in r.stderr
