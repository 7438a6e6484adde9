import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specdraft.errors import SpecdraftError
from specdraft.runtime.sampling import SamplingParams, next_token, sample, target_probs


def hf_probs(logits, p: SamplingParams):
    from transformers.generation.logits_process import (
        LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    procs = LogitsProcessorList([TemperatureLogitsWarper(p.temperature)])
    if p.top_k:
        procs.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1:
        procs.append(TopPLogitsWarper(p.top_p))
    return procs(None, logits.clone()).softmax(-1)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    temperature=st.floats(0.1, 3.0),
    top_k=st.integers(0, 40),
    top_p=st.floats(0.05, 1.0),
)
def test_target_probs_equal_transformers_warpers(seed, temperature, top_k, top_p):
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(seed)) * 3
    p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    ours = target_probs(logits, p)
    assert torch.allclose(ours, hf_probs(logits, p), atol=1e-6)
    assert torch.allclose(ours.sum(-1), torch.ones(3))
    if top_k:
        assert ((ours > 0).sum(-1) <= top_k).all()


def test_greedy_is_argmax_and_needs_no_generator():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 4.9, 0.0]])
    assert next_token(logits, SamplingParams(), None).tolist() == [1, 0]


def test_seeded_sampling_is_deterministic_and_seed_dependent():
    probs = torch.full((1, 1000), 1 / 1000)

    def draw(seed):
        g = SamplingParams(temperature=1.0, seed=seed).generator()
        return [int(sample(probs, g)) for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_sampling_follows_the_distribution():
    probs = torch.tensor([[0.7, 0.2, 0.1]])
    g = SamplingParams(temperature=1.0, seed=0).generator()
    draws = torch.multinomial(probs.expand(20000, 3), 1, generator=g).flatten()
    freq = torch.bincount(draws, minlength=3) / 20000
    assert torch.allclose(freq, probs[0], atol=0.015)


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-0.5), dict(temperature=float("nan")), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
])
def test_out_of_range_parameters_are_refused(kwargs):
    with pytest.raises(SpecdraftError):
        SamplingParams(**kwargs)
