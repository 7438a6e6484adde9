"""Plain decoding on tiny random models: equal to transformers' generate, seeded, bounded."""

import pytest
import torch

from specdraft import engine
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


@pytest.mark.parametrize("family", ["qwen2", "gemma3_text"])
@pytest.mark.parametrize("chunk", [1, 3, 7, 40])
def test_chunked_prefill_is_one_forward_over_the_prompt(family, chunk):
    """`Decoder.prefill` runs a long prompt chunk by chunk (each chunk attending to the cache so
    far, and on Gemma's sliding layers to its window only): the cache, last logits and hidden states
    are those of one forward over the whole prompt."""
    from conftest import tiny_decoder

    model = tiny_decoder(layers=3, family=family)
    ids = torch.randint(0, model.cfg.vocab_size, (23,), generator=torch.Generator().manual_seed(chunk)).tolist()
    whole = model.new_cache(40)
    one = model(torch.tensor(ids), torch.arange(23), whole, logits_at=slice(-1, None), final_hidden=True,
                hidden_layers=(0, 2))
    whole.commit(23)
    cache = model.new_cache(40)
    got = model.prefill(ids, cache, chunk=chunk, final_hidden=True, hidden_layers=(0, 2))
    assert cache.length == 23
    assert torch.allclose(got.logits, one.logits, atol=1e-4)
    assert torch.allclose(got.final_hidden, one.final_hidden, atol=1e-4)
    assert all(torch.allclose(got.layer_hidden[i], one.layer_hidden[i], atol=1e-4) for i in (0, 2))
    assert torch.allclose(cache.k[:, :, :23], whole.k[:, :, :23], atol=1e-4)
    assert torch.allclose(cache.v[:, :, :23], whole.v[:, :, :23], atol=1e-4)
    # a wrong chunk would show: the last chunk attending to nothing before it changes the logits
    cut = model.new_cache(40)
    alone = model(torch.tensor(ids[-3:]), torch.arange(20, 23), cut, logits_at=slice(-1, None))
    assert not torch.allclose(alone.logits, one.logits, atol=1e-3)


def test_generation_with_a_chunked_prompt_equals_plain(monkeypatch):
    """The engine (and a draft model with a cache of its own) prefill in chunks: with a tiny chunk,
    plain and speculative decoding give the same tokens as with the whole prompt at once."""
    from conftest import tiny_decoder
    from specdraft.drafters import draft_model as draft_module
    from specdraft.drafters.draft_model import DraftModelDrafter
    from specdraft.runtime import model as model_module

    model = tiny_decoder(layers=2)
    prompt = torch.randint(0, 97, (30,), generator=torch.Generator().manual_seed(3)).tolist()
    plain, _ = generate_ids(model, prompt, max_new_tokens=24)
    drafted, _ = generate_ids(model, prompt, max_new_tokens=24, drafter=DraftModelDrafter(tiny_decoder(layers=1), "d"))
    calls = []
    real = model_module.Decoder.prefill

    def spy(self, tokens, cache, **kw):
        calls.append(len(tokens))
        return real(self, tokens, cache, **{**kw, "chunk": 4})

    chunks = []
    real_run = model_module.Decoder._run

    def spy_run(self, segs, skip):
        chunks.extend(s.tokens.shape[0] for s in segs if s.prefill)
        return real_run(self, segs, skip)

    monkeypatch.setattr(model_module.Decoder, "prefill", spy)
    monkeypatch.setattr(model_module.Decoder, "_run", spy_run)
    monkeypatch.setattr(engine, "PREFILL_CHUNK", 4)
    monkeypatch.setattr(draft_module, "PREFILL_CHUNK", 4)
    assert generate_ids(model, prompt, max_new_tokens=24)[0] == plain
    assert chunks == [4] * 7 + [2]  # the target's prompt in chunks of 4
    assert generate_ids(model, prompt, max_new_tokens=24,
                        drafter=DraftModelDrafter(tiny_decoder(layers=1), "d"))[0] == drafted == plain
    assert calls == [30]  # the draft model's own cache: the prompt, not the root


def test_a_client_gone_during_a_long_prefill_stops_it_between_chunks(monkeypatch):
    """should_stop is polled between the prefill's chunks: a cancelled prompt stops there, with no
    token and only the chunks before it run; one that is never cancelled runs them all."""
    from conftest import tiny_decoder
    from specdraft.runtime import model as model_module

    model = tiny_decoder(layers=2)
    prompt = torch.randint(0, 97, (20,), generator=torch.Generator().manual_seed(5)).tolist()
    polls = []

    def stop_at_second_poll():
        polls.append(0)
        return len(polls) >= 2

    cache = model.new_cache(len(prompt))
    assert model.prefill(prompt, cache, chunk=6, should_stop=stop_at_second_poll) is None
    assert cache.length == 12 and len(polls) == 2  # chunks [0, 6) and [6, 12) ran, then it stopped
    polls.clear()
    fwd = model.prefill(prompt, model.new_cache(len(prompt)), chunk=6, should_stop=lambda: polls.append(0) or False)
    assert fwd is not None and len(polls) == 3  # polled before chunks 2, 3 and 4

    out, stats = generate_ids(model, prompt, max_new_tokens=8, should_stop=lambda: True)
    assert (len(out), stats.stop_reason) == (1, "cancelled")  # a prompt of one chunk: its token, then cancelled
    plain = generate_ids(model, prompt, max_new_tokens=8)[0]
    monkeypatch.setattr(engine, "PREFILL_CHUNK", 4)
    out, stats = generate_ids(model, prompt, max_new_tokens=8, should_stop=lambda: True)
    assert (out, stats.stop_reason, stats.target_forwards) == ([], "cancelled", 0)  # stopped after the first chunk
    assert generate_ids(model, prompt, max_new_tokens=8, should_stop=lambda: False)[0] == plain


def test_prefill_progress_reports_each_chunk(monkeypatch):
    """on_prefill(done, total) follows the prompt chunk by chunk, up to the whole prompt."""
    from conftest import tiny_decoder
    from specdraft.runtime import model as model_module

    model = tiny_decoder(layers=2)
    prompt = torch.randint(0, 97, (10,), generator=torch.Generator().manual_seed(6)).tolist()
    monkeypatch.setattr(engine, "PREFILL_CHUNK", 4)
    seen = []
    generate_ids(model, prompt, max_new_tokens=3, on_prefill=lambda done, total: seen.append((done, total)))
    assert seen == [(4, 10), (8, 10), (10, 10)]


def test_the_engine_keeps_verification_within_the_backends_max_rows():
    from conftest import tiny_decoder
    from test_speculative import ScriptedDrafter

    from specdraft.engine import generate_ids

    target = tiny_decoder(vocab=97, seed=0)
    prompt = [5, 6, 7]
    ref, plain = generate_ids(target, prompt, max_new_tokens=24)
    target.max_rows = 3  # the root and at most 2 drafted tokens per forward
    try:
        out, stats = generate_ids(target, prompt, max_new_tokens=24, drafter=ScriptedDrafter(prompt + ref, "right", 0, 97))
    finally:
        del target.max_rows
    assert out == ref and stats.drafted <= 2 * (stats.target_forwards - 1)
    assert stats.target_forwards == 1 + -(-(len(ref) - 1) // 3)  # every step commits 2 drafted + 1
