"""The int8 drafting copy (runtime/quant.py): its products approximate the float ones, the original
model is untouched and shares its embedding, and drafting with the copy is lossless."""

import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from conftest import product_case, tiny_decoder

from specdraft import SpecdraftError
from specdraft.drafters.draft_model import build as build_draft_model
from specdraft.drafters.draft_model import DraftModelDrafter
from specdraft.drafters.hybrid import HybridDrafter
from specdraft.drafters.lookup import LookupDrafter
from specdraft.engine import generate_ids
from specdraft.runtime.model import linear
from specdraft.runtime.quant import Int8Linear, Int8Weight, quantize_int8, quantize_rows


@pytest.mark.parametrize("rows", [1, 2, 5, 12, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_product_approximates_the_float_one(rows, bias):
    w, x, b = product_case(rows, bias)
    exact = F.linear(x, w, b)
    approx = linear(x, Int8Weight(w), b)
    assert approx.shape == exact.shape and approx.dtype == torch.float32
    err = (approx - exact).abs().max() / exact.abs().max()
    assert 0 < err < 0.03  # an approximation, and a close one
    # a different weight gives a far worse one: the product really uses this weight
    assert ((linear(x, Int8Weight(w.flip(0)), b) - exact).abs().max() / exact.abs().max()) > 0.3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_quantization_matches_torch_and_leaves_the_weight_alone(dtype):
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(37, 24, generator=g) * torch.rand(37, 1, generator=g) * 4).to(dtype)
    w[5] = 0  # an all-zero row
    w[7, :4] = torch.tensor([1.0, -1.0, 0.5, -0.25]).to(dtype)  # the row max and values halfway between grid points
    w[7, 4:] = 0
    before = w.clone()
    got = quantize_rows(w, chunk=8)  # several blocks of rows, the last one short
    ref_scale = (w.float().abs().amax(1) / 127).clamp_min(1e-8).double()
    want = torch.quantize_per_channel(w.float(), ref_scale, torch.zeros(37, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(got.int_repr(), want.int_repr())
    assert torch.equal(got.q_per_channel_scales(), want.q_per_channel_scales())
    assert torch.equal(w, before)  # a float32 weight is not scaled in place
    assert got.int_repr().abs().amax() == 127 and got.int_repr()[5].eq(0).all()


@pytest.mark.parametrize("family", ["qwen2", "llama", "gemma3_text"])
def test_the_copy_leaves_the_original_untouched_and_shares_its_embedding(family):
    model = tiny_decoder(vocab=97, seed=0, family=family)
    tokens, pos = torch.tensor([1, 5, 9, 20, 33, 7]), torch.arange(6)
    before = model(tokens, pos, model.new_cache(16)).logits
    q = quantize_int8(model)
    after = model(tokens, pos, model.new_cache(16)).logits
    assert torch.equal(before, after)
    assert all(isinstance(p, torch.Tensor) for p in (model.layers[0].qkv.weight, model.layers[-1].down.weight))
    assert isinstance(q.layers[0].qkv, Int8Linear) and q.fast_head is not None
    assert q.embed.weight.data_ptr() == model.embed.weight.data_ptr()
    assert q.layers[0].attn_norm.data_ptr() == model.layers[0].attn_norm.data_ptr()
    ql = q(tokens, pos, q.new_cache(16)).logits
    assert not torch.equal(ql, before)
    assert (ql - before).abs().max() < 0.2 * before.abs().max()
    assert (ql.argmax(-1) == before.argmax(-1)).float().mean() >= 0.5


def test_a_bf16_model_gets_a_bf16_copy_that_drafts_on_its_cache():
    """The copy computes in its model's dtype (each product in int8 from float32 rows, cast back), so
    that, shared, it attends over and writes the bfloat16 KV of the target's own cache."""
    model = tiny_decoder(vocab=97, seed=2).to(torch.bfloat16)
    q = quantize_int8(model)
    assert q.dtype == torch.bfloat16 and model.dtype == torch.bfloat16
    assert linear(torch.randn(3, model.cfg.hidden_size, dtype=torch.bfloat16), q.layers[0].qkv.weight).dtype == torch.bfloat16
    out = q(torch.tensor([3, 4, 5]), torch.arange(3), q.new_cache(8)).logits
    assert torch.isfinite(out).all()
    ref = model(torch.tensor([3, 4, 5]), torch.arange(3), model.new_cache(8)).logits
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.5
    prompt = random.Random(2).choices(range(97), k=6)
    for shared in (True, False):
        d = DraftModelDrafter(q, "self?quant=int8", shared=shared)
        toks, stats = generate_ids(model, prompt, max_new_tokens=24, drafter=d)
        assert len(toks) == 24 and stats.drafted > 0 and stats.accepted > 0


def test_only_the_cpu_is_supported():
    with torch.device("meta"):
        model = tiny_decoder(vocab=97, seed=0)
    with pytest.raises(SpecdraftError, match="CPU only"):
        quantize_int8(model)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("tree_width", [1, 3])
@pytest.mark.parametrize("seed", range(4))
def test_drafting_with_the_int8_copy_is_lossless(seed, tree_width, shared):
    """Own cache, or the target's (shared): greedy output equals plain decoding, drafts are accepted,
    and the drafter is reusable."""
    target = tiny_decoder(vocab=97, seed=seed, family="qwen2" if seed % 2 else "llama")
    prompt = random.Random(seed).choices(range(97), k=6)
    ref, _ = generate_ids(target, prompt, max_new_tokens=30)
    d = DraftModelDrafter(quantize_int8(target), "self?quant=int8", tree_width=tree_width, shared=shared)
    out, stats = generate_ids(target, prompt, max_new_tokens=30, drafter=d)
    assert out == ref
    assert stats.accepted > 0
    assert (d.cache is None) == shared  # shared: no cache of its own
    assert generate_ids(target, prompt[:2], max_new_tokens=12, drafter=d)[0] == \
        generate_ids(target, prompt[:2], max_new_tokens=12)[0]


@pytest.mark.parametrize("seed", range(3))
def test_shared_copy_in_a_hybrid_and_with_a_drafting_vocabulary(seed):
    """Lookup drafts some steps (the shared copy needs no catching up); a drafting vocabulary of
    half the tokens still takes in the prompt's and the text's tokens."""
    target = tiny_decoder(vocab=97, seed=seed)
    prompt = [5, 6, 7, 8, 9, 10] * 3 + random.Random(seed).choices(range(97), k=4)
    ref, _ = generate_ids(target, prompt, max_new_tokens=40)
    q = quantize_int8(target)
    keep = sorted(random.Random(seed).sample(range(97), 48))
    for d in (HybridDrafter([LookupDrafter(min_ngram=2), DraftModelDrafter(q, "self?quant=int8", shared=True)]),
              DraftModelDrafter(q, "self?quant=int8", shared=True, draft_vocab=keep)):
        out, stats = generate_ids(target, prompt, max_new_tokens=40, drafter=d)
        assert out == ref and stats.accepted > 0
    assert set(prompt) <= set(d.vocab.ids[: d.vocab.n].tolist())


@pytest.mark.parametrize("seed", range(3))
def test_branch_adds_runner_ups_only_at_uncertain_steps(seed):
    """`branch=P`: a drafted step gets siblings only when the copy's top-1 probability is below P;
    the output stays plain decoding's."""
    target = tiny_decoder(vocab=97, seed=seed)
    prompt = random.Random(seed).choices(range(97), k=6)
    ref, _ = generate_ids(target, prompt, max_new_tokens=30)
    q = quantize_int8(target)
    seen = {}
    for branch in (1.0, 0.5, 1e-9):
        d = DraftModelDrafter(q, "self?quant=int8", tree_width=3, branch=branch, confidence=0.0, shared=True)
        drafts, propose = [], d.propose
        d.propose = lambda ctx: drafts.append(propose(ctx)) or drafts[-1]
        out, _ = generate_ids(target, prompt, max_new_tokens=30, drafter=d)
        assert out == ref
        seen[branch] = sum(len(x.tokens) - len(set(x.parents)) for x in drafts)  # siblings beyond the first child
        if branch == 1.0:  # every step branches, however certain the copy is (but the last may hit the budget)
            widths = [list(Counter(x.parents).values()) for x in drafts]
            assert all(set(w[:-1]) <= {3} for w in widths), widths
    assert seen[1e-9] == 0 and seen[1.0] > 0
    # branch=1 (the default) branches even a step whose top-1 probability rounds to exactly 1
    d = DraftModelDrafter(q, "self?quant=int8", tree_width=3, confidence=0.0, shared=True)
    forward, drafts, propose = d._forward, [], d.propose
    d._forward = lambda *a, **k: forward(*a, **k) * 1e4  # same argmax, softmax saturated to 1.0
    d.propose = lambda ctx: drafts.append(propose(ctx)) or drafts[-1]
    assert generate_ids(target, prompt, max_new_tokens=30, drafter=d)[0] == ref
    assert all(set(list(Counter(x.parents).values())[:-1]) <= {3} for x in drafts)
    assert sum(len(x.tokens) - len(set(x.parents)) for x in drafts) > 0
    assert seen[0.5] <= seen[1.0]
    with pytest.raises(SpecdraftError, match="branch= is a probability"):
        DraftModelDrafter(q, "self?quant=int8", branch=0)


def test_bad_quant_options_are_refused_before_loading():
    with pytest.raises(SpecdraftError, match="quant= takes int8"):
        build_draft_model("self", None, quant="int4")
    with pytest.raises(SpecdraftError, match="add quant=int8"):
        build_draft_model("self", None)
    with pytest.raises(SpecdraftError, match="shared is not an option"):
        build_draft_model("self", None, quant="int8", shared=True)


def test_a_copy_without_its_head_drafts_a_reduced_vocabulary_and_gets_the_head_when_needed():
    from specdraft.runtime.quant import add_int8_head, is_int8

    model = tiny_decoder(vocab=97, seed=2)
    full, bare = quantize_int8(model), quantize_int8(model, head=False)
    assert is_int8(full) and is_int8(bare) and not is_int8(model) and bare.fast_head is None
    prompt = [1, 5, 9, 20, 33, 7, 5, 9]
    plain, _ = generate_ids(model, prompt, max_new_tokens=20)
    ids = list(range(0, 97, 2))
    a = DraftModelDrafter(full, "self?quant=int8", target_vocab=97, draft_vocab=ids, shared=True)
    b = DraftModelDrafter(bare, "self?quant=int8", target_vocab=97, draft_vocab=ids, shared=True)
    out_a, sa = generate_ids(model, prompt, max_new_tokens=20, drafter=a)
    out_b, sb = generate_ids(model, prompt, max_new_tokens=20, drafter=b)
    assert out_a == out_b == plain and (sa.drafted, sa.accepted) == (sb.drafted, sb.accepted)  # the same drafts
    add_int8_head(bare)
    head = bare.fast_head
    add_int8_head(bare)
    assert bare.fast_head is head  # idempotent
    x = torch.randn(3, model.cfg.hidden_size)
    assert torch.equal(linear(x, bare.fast_head), linear(x, full.fast_head))
