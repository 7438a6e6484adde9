"""Our decoder against transformers' own implementation, in float32 (max abs logits diff <= 1e-4)."""

import pytest
import torch

from specdraft.runtime.loader import load_decoder
from specdraft.runtime.model import SkipSet, rms_norm

TOL = 1e-4


def _hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@torch.inference_mode()
def hf_logits(hf, ids):
    return hf(torch.as_tensor(ids)[None]).logits[0]


def random_ids(vocab, n, seed):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def close(ours, ref) -> bool:
    """Equal within TOL, relative to the logits' scale once it passes 1 (a real model's logits on
    random tokens reach 100, where float32 rounding alone is about 1e-5 of them)."""
    return bool((ours - ref).abs().max() <= TOL * max(1.0, float(ref.abs().max())))


@torch.inference_mode()
def check_prefill_and_steps(ours, hf, n_prompt=12, n_steps=6, seed=0):
    ids = random_ids(ours.cfg.vocab_size, n_prompt + n_steps, seed)
    ref = hf_logits(hf, ids)
    cache = ours.new_cache(n_prompt + n_steps)
    out = ours(ids[:n_prompt], torch.arange(n_prompt), cache)
    cache.commit(n_prompt)
    assert close(out.logits, ref[:n_prompt])
    for t in range(n_prompt, n_prompt + n_steps):
        step = ours(ids[t:t + 1], torch.tensor([t]), cache).logits
        cache.commit(1)
        assert close(step[0], ref[t]), f"step {t}"


# A token tree under a committed prefix: node -> parent (-1 = child of the last committed token).
#        0 -> 1 -> 3
#          \-> 2 -> 4 -> 5
#   6 (second root)
PARENTS = [-1, 0, 0, 1, 2, 4, -1]


def tree_mask_and_depths(parents):
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    depth = []
    for i, p in enumerate(parents):
        mask[i, i] = True
        if p >= 0:
            mask[i] |= mask[p]
        depth.append(0 if p < 0 else depth[p] + 1)
    return mask, torch.tensor(depth)


def path_to(parents, i):
    path = []
    while i >= 0:
        path.append(i)
        i = parents[i]
    return path[::-1]


@torch.inference_mode()
def check_tree(ours, hf, n_prompt=9, seed=1):
    vocab = ours.cfg.vocab_size
    prompt = random_ids(vocab, n_prompt, seed)
    nodes = random_ids(vocab, len(PARENTS), seed + 1)
    mask, depth = tree_mask_and_depths(PARENTS)
    cache = ours.new_cache(n_prompt + len(PARENTS))
    ours(prompt, torch.arange(n_prompt), cache)
    cache.commit(n_prompt)
    tree = ours(nodes, n_prompt + depth, cache, tree_mask=mask).logits
    for i in range(len(PARENTS)):
        chain = torch.cat((prompt, nodes[path_to(PARENTS, i)]))
        ref = hf_logits(hf, chain)[-1]
        assert close(tree[i], ref), f"node {i}"
    # Accept path 0 -> 2 -> 4: compact it, then one more step must equal the chain forward.
    accepted = [0, 2, 4]
    cache.compact(accepted)
    nxt = random_ids(vocab, 1, seed + 2)
    step = ours(nxt, torch.tensor([cache.length]), cache).logits[0]
    ref = hf_logits(hf, torch.cat((prompt, nodes[accepted], nxt)))[-1]
    assert close(step, ref)


def test_tiny_parity_prefill_and_steps(tiny_dir):
    check_prefill_and_steps(load_decoder(tiny_dir), _hf(tiny_dir))


def test_tiny_parity_tree_and_compaction(tiny_dir):
    check_tree(load_decoder(tiny_dir), _hf(tiny_dir))


@torch.inference_mode()
def test_final_hidden_matches_hf_last_hidden_state(tiny_dir):
    ours, hf = load_decoder(tiny_dir), _hf(tiny_dir)
    ids = random_ids(ours.cfg.vocab_size, 10, 3)
    out = ours(ids, torch.arange(10), ours.new_cache(10), final_hidden=True, hidden_layers=(0,), logits_at=slice(-1, None))
    ref = hf(ids[None], output_hidden_states=True).hidden_states
    assert (out.final_hidden - ref[-1][0]).abs().max() <= TOL
    assert (out.layer_hidden[0] - ref[1][0]).abs().max() <= TOL  # HF's [0] is the embedding output
    assert out.logits.shape == (1, ours.cfg.vocab_size)


@torch.inference_mode()
def test_skip_set(tiny_dir):
    ours = load_decoder(tiny_dir)
    L, ids = ours.cfg.num_layers, random_ids(ours.cfg.vocab_size, 6, 4)
    full = ours(ids, torch.arange(6), ours.new_cache(6)).logits
    none = ours(ids, torch.arange(6), ours.new_cache(6), skip=SkipSet.none(L)).logits
    assert torch.equal(full, none)
    # Skipping every sublayer leaves embed -> final norm -> head.
    everything = SkipSet((True,) * L, (True,) * L)
    out = ours(ids, torch.arange(6), ours.new_cache(6), skip=everything).logits
    expect = torch.nn.functional.linear(rms_norm(ours.embed_tokens(ids), ours.norm, ours.cfg.rms_norm_eps), ours.head_weight())
    assert torch.allclose(out, expect, atol=1e-5)
    # Skipping one MLP changes the result; the skipped attention writes no KV for its layer.
    one = SkipSet((False,) * L, (True,) + (False,) * (L - 1))
    assert not torch.allclose(ours(ids, torch.arange(6), ours.new_cache(6), skip=one).logits, full)
    cache = ours.new_cache(6)
    ours(ids, torch.arange(6), cache, skip=SkipSet((True,) + (False,) * (L - 1), (False,) * L))
    assert cache.k[0].abs().sum() == 0 and cache.k[1].abs().sum() > 0


@pytest.mark.integration
def test_smollm2_parity(smollm2_dir):
    ours, hf = load_decoder(smollm2_dir), _hf(smollm2_dir)
    check_prefill_and_steps(ours, hf, n_prompt=40, n_steps=8)
    check_tree(ours, hf, n_prompt=30)
