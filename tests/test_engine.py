"""Plain decoding on tiny random models: equal to transformers' generate, seeded, bounded."""

import pytest
import torch

from specdraft.engine import check_lengths, generate_ids
from specdraft.errors import SpecdraftError
from specdraft.runtime.loader import load_decoder
from specdraft.runtime.sampling import SamplingParams


@pytest.fixture(scope="module")
def pair(tiny_qwen_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_qwen_dir), dtype=torch.float32).eval()
    return load_decoder(tiny_qwen_dir), hf


@pytest.mark.parametrize("seed", range(5))
def test_greedy_equals_transformers_generate(pair, seed):
    ours, hf = pair
    prompt = torch.randint(4, 97, (5 + seed,), generator=torch.Generator().manual_seed(seed)).tolist()
    out, stats = generate_ids(ours, prompt, max_new_tokens=20)
    with torch.inference_mode():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(prompt):].tolist()
    assert out == ref
    assert stats.new_tokens == 20 and stats.target_forwards == 20 and stats.tau == 1.0
    assert stats.acceptance_rate is None and stats.stop_reason == "length"


def test_eos_stops_generation(pair):
    ours, _ = pair
    full, _ = generate_ids(ours, [5, 6, 7], max_new_tokens=15)
    eos = full[4]
    out, stats = generate_ids(ours, [5, 6, 7], max_new_tokens=15, eos_ids=frozenset({eos}))
    assert out == full[:full.index(eos) + 1] and stats.stop_reason == "eos"


def test_seeded_sampling_reproduces_and_streams_every_token(pair):
    ours, _ = pair
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=123)
    seen = []
    a, _ = generate_ids(ours, [5, 6, 7], max_new_tokens=30, params=p, on_tokens=seen.extend)
    b, _ = generate_ids(ours, [5, 6, 7], max_new_tokens=30, params=p)
    c, _ = generate_ids(ours, [5, 6, 7], max_new_tokens=30, params=SamplingParams(temperature=1.0, seed=124))
    assert a == b == seen
    assert a != c


def test_should_stop_cancels(pair):
    ours, _ = pair
    out, stats = generate_ids(ours, [5, 6], max_new_tokens=50, should_stop=lambda: True)
    assert len(out) == 1 and stats.stop_reason == "cancelled"


def test_length_checks():
    assert check_lengths(10, 500, 128) == 118  # clamped to the context window
    with pytest.raises(SpecdraftError, match="empty"):
        check_lengths(0, 10, 128)
    with pytest.raises(SpecdraftError, match="context window"):
        check_lengths(128, 10, 128)
    for bad in (0, -3):
        with pytest.raises(SpecdraftError, match="positive"):
            check_lengths(5, bad, 128)


def test_prompt_longer_than_context_is_refused(pair):
    ours, _ = pair
    with pytest.raises(SpecdraftError, match="context window"):
        generate_ids(ours, [5] * 200, max_new_tokens=4)
