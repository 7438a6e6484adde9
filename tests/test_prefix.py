"""Reusing the last generation's KV cache (engine.PrefixStore): a conversation's next turn
prefills only its new tokens, and decodes as a fresh prefill does, with every kind of drafter."""

import pytest
import torch
from conftest import tiny_decoder
from test_ctc_medusa import head_drafter, tiny_heads

from specdraft.drafters.base import Needs
from specdraft.drafters.draft_model import DraftModelDrafter
from specdraft.drafters.lookup import LookupDrafter
from specdraft.engine import PrefixStore, generate_ids
from specdraft.runtime.cache import KVCache
from specdraft.runtime.quant import quantize_int8
from specdraft.runtime.sampling import SamplingParams

PROMPT = [3, 17, 17, 42, 8, 3, 17, 17, 42, 9, 11]


def make(kind, model):
    if kind == "plain":
        return None
    if kind == "lookup":
        return LookupDrafter(num_tokens=4)
    if kind == "int8-self":  # drafts on the target's own cache
        return DraftModelDrafter(quantize_int8(model), "self?quant=int8", target_vocab=model.cfg.vocab_size, shared=True)
    return head_drafter(kind, tiny_heads(kind, model, seed=1), model, max_nodes=6)  # reads final hidden states


@pytest.mark.parametrize("kind", ["plain", "lookup", "int8-self", "ctc", "medusa"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_each_turn_reuses_the_last_cache_and_decodes_as_a_fresh_prefill(kind, temperature):
    model = tiny_decoder(layers=2, scale=0.2)
    d = make(kind, model)
    store = PrefixStore()
    prompt, last = PROMPT, None
    for turn in range(4):
        p = SamplingParams(temperature=temperature, seed=turn)
        out, stats = generate_ids(model, prompt, max_new_tokens=15 + 5 * turn, params=p, drafter=d, prefix=store)
        fresh, _ = generate_ids(model, prompt, max_new_tokens=15 + 5 * turn, params=p, drafter=d)
        assert out == fresh
        if temperature == 0:
            assert out == generate_ids(model, prompt, max_new_tokens=15 + 5 * turn)[0]
        if last is None:
            assert stats.cached_tokens == 0
        else:  # everything the last turn left in the cache, up to the prompt's last token
            assert last - 1 <= stats.cached_tokens <= len(prompt) - 1 and stats.cached_tokens > len(PROMPT)
        # the store holds what its cache holds: the prompt and the committed tokens
        held = len(prompt) + len(out) - 1
        assert len(store.entries) == 1
        e = store.latest
        assert e.cache.length == len(e.ids) >= held and e.ids[:held] == (prompt + out)[:held]
        assert e.cache.capacity >= len(prompt) + 15 + 5 * turn  # grown with the prompt
        needs = d.needs if d is not None else Needs()
        if needs.final_hidden:
            assert e.rows.shape[0] == len(e.ids)
            ref = model.prefill(e.ids, model.new_cache(len(e.ids)), final_hidden=True).final_hidden
            torch.testing.assert_close(e.rows, ref, rtol=1e-4, atol=1e-4)
        else:
            assert e.rows is None
        last = len(prompt) + len(out)
        prompt = prompt + out + [5, 6, 7 + turn]  # the next turn: the answer, then new tokens


@pytest.mark.parametrize("family", ["gemma3_text", "llama"])
@pytest.mark.parametrize("kind", ["plain", "int8-self", "ctc"])
def test_other_families_and_sliding_windows(family, kind):
    """Gemma 3's 5-position sliding window is crossed many times over the turns."""
    model = tiny_decoder(layers=3, scale=0.2, family=family)
    d = make(kind, model)
    store, prompt = PrefixStore(), PROMPT
    for turn in range(3):
        out, stats = generate_ids(model, prompt, max_new_tokens=12, drafter=d, prefix=store)
        assert out == generate_ids(model, prompt, max_new_tokens=12)[0]
        assert (stats.cached_tokens > 0) == (turn > 0)
        prompt = prompt + out + [4, 5]


def test_a_prompt_that_begins_otherwise_is_prefilled_in_full():
    model = tiny_decoder(layers=2, scale=0.2)
    store = PrefixStore()
    generate_ids(model, PROMPT, max_new_tokens=10, prefix=store)
    other = [9] + PROMPT
    out, stats = generate_ids(model, other, max_new_tokens=10, prefix=store)
    assert stats.cached_tokens == 0 and out == generate_ids(model, other, max_new_tokens=10)[0]
    # the same prompt again: all but its last token come from the cache
    out2, stats2 = generate_ids(model, other, max_new_tokens=10, prefix=store)
    assert stats2.cached_tokens == len(other) - 1 and out2 == out


def test_a_drafter_reading_states_the_store_lacks_prefills_in_full():
    model = tiny_decoder(layers=2, scale=0.2)
    store = PrefixStore()
    generate_ids(model, PROMPT, max_new_tokens=10, prefix=store)  # plain: no hidden states kept
    d = make("ctc", model)
    prompt = store.latest.ids + [4]
    out, stats = generate_ids(model, prompt, max_new_tokens=10, drafter=d, prefix=store)
    assert stats.cached_tokens == 0 and out == generate_ids(model, prompt, max_new_tokens=10)[0]
    assert store.latest.rows.shape[0] == len(store.latest.ids)  # kept now, for the next turn


@pytest.mark.parametrize("slots", [1, 2])
def test_alternating_conversations_each_keep_their_cache_given_two_slots(slots):
    model = tiny_decoder(layers=2, scale=0.2)
    store = PrefixStore(slots=slots)
    prompts = {"a": PROMPT, "b": [60, 61, 62, 63, 64, 65]}
    hits = []
    for turn in range(3):
        for who in "ab":
            out, stats = generate_ids(model, prompts[who], max_new_tokens=8, prefix=store)
            assert out == generate_ids(model, prompts[who], max_new_tokens=8)[0]
            hits.append(stats.cached_tokens > 0)
            prompts[who] = prompts[who] + out + [7]
            assert len(store.entries) <= slots
    # one slot: each conversation finds the other's cache and reuses nothing; two: every later turn hits
    assert hits == [False, False] + [slots == 2] * 4


def test_grown_cache_keeps_the_committed_prefix():
    model = tiny_decoder(layers=2, scale=0.2)
    c = model.new_cache(8)
    model.prefill(PROMPT[:6], c)
    g = c.grown(20)
    assert g.capacity == 20 and g.length == 6 and c.grown(8) is c
    assert torch.equal(g.k[:, :, :6], c.k[:, :, :6]) and torch.equal(g.v[:, :, :6], c.v[:, :, :6])
    assert isinstance(g, KVCache)
