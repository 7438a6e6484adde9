"""Weights prepacked for oneDNN (runtime/packed.py): the values are kept bit for bit, the products
match the dense ones to rounding, a packed model decodes the same tokens, and what reads dense
weights (state_dict, the int8 copy, the batched decoder) still gets them. bfloat16 weights are
packed only on a CPU with bf16 units."""

import pytest
import torch
import torch.nn.functional as F
from conftest import product_case, tiny_decoder

from specdraft.engine import generate_ids
from specdraft.runtime import packed
from specdraft.runtime.cpu import native_bf16
from specdraft.runtime.model import linear
from specdraft.runtime.packed import PackedLinear, PackedWeight, pack_decoder
from specdraft.runtime.quant import quantize_int8
from specdraft.runtime.sampling import SamplingParams

pytestmark = pytest.mark.skipif(not packed.available(tiny_decoder()), reason="torch built without oneDNN")


@pytest.mark.parametrize("rows", [1, 2, 5, 9, 13, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_the_packed_product_is_the_dense_one(rows, bias):
    w, x, b = product_case(rows, bias)
    p = PackedWeight(w)
    assert torch.equal(p.dense(), w)  # the values are reordered, not changed
    assert p.numel() == w.numel() and p.shape == tuple(w.shape)
    exact = F.linear(x, w, b)
    y = linear(x, p, b)
    assert y.shape == exact.shape and y.dtype == torch.float32
    assert torch.allclose(y, exact, rtol=1e-5, atol=1e-5)
    # another weight gives another product: the packed weight really is this one
    assert not torch.allclose(linear(x, PackedWeight(w.flip(0)), b), exact, atol=1e-2)


def test_bf16_is_packed_only_where_the_cpu_has_bf16_units(monkeypatch):
    assert (torch.bfloat16 in packed.dtypes()) == native_bf16("cpu")
    monkeypatch.setattr(packed, "dtypes", lambda: (torch.float32,))  # a CPU without bf16 units
    with pytest.raises(ValueError, match="bfloat16"):
        PackedWeight(torch.randn(4, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="float16"):
        PackedWeight(torch.randn(4, 4, dtype=torch.float16))
    model = tiny_decoder(vocab=97, seed=1).to(torch.bfloat16)
    assert not packed.available(model) and not pack_decoder(model) and model.fast_head is None
    assert isinstance(model.layers[0].qkv, torch.nn.Linear)


bf16_units = pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no bf16 units")


@bf16_units
@pytest.mark.parametrize("rows", [1, 5, 9, 40])
def test_a_packed_bf16_product_is_the_dense_bf16_one(rows):
    w, x, b = product_case(rows, True)
    w, x, b = w.bfloat16(), x.bfloat16(), b.bfloat16()
    p = PackedWeight(w)
    assert torch.equal(p.dense(), w)
    y, exact = linear(x, p, b), F.linear(x, w, b)
    assert y.dtype == torch.bfloat16 and y.shape == exact.shape
    assert torch.allclose(y.float(), exact.float(), rtol=2e-2, atol=2e-2)
    assert not torch.allclose(linear(x, PackedWeight(w.flip(0)), b).float(), exact.float(), atol=5e-2)


@bf16_units
@pytest.mark.parametrize("family,tie", [("qwen2", False), ("llama", True), ("gemma3_text", True)])
def test_a_packed_bf16_decoder_computes_the_dense_bf16_logits(family, tie):
    dense = tiny_decoder(vocab=97, seed=3, family=family, tie=tie).to(torch.bfloat16)
    model = tiny_decoder(vocab=97, seed=3, family=family, tie=tie).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert pack_decoder(model)
    assert isinstance(model.layers[0].qkv, PackedLinear) and isinstance(model.fast_head, PackedWeight)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    tokens, pos = torch.tensor([1, 5, 9, 20, 33, 7, 2, 64, 11]), torch.arange(9)
    for n in (9, 1, 4):
        ref = dense(tokens[:n], pos[:n], dense.new_cache(16)).logits
        out = model(tokens[:n], pos[:n], model.new_cache(16)).logits
        assert out.dtype == torch.float32
        assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


def test_packed_linear_takes_any_leading_shape_and_saves_dense():
    lin = torch.nn.Linear(16, 8)
    p = PackedLinear(lin)
    x = torch.randn(3, 5, 16)
    assert torch.allclose(p(x), lin(x), rtol=1e-5, atol=1e-5)
    state = p.state_dict()
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], lin.weight)


@pytest.mark.parametrize("family,tie", [("qwen2", False), ("llama", False), ("llama", True), ("gemma3_text", True)])
def test_a_packed_decoder_computes_the_same_logits_and_keeps_its_state(family, tie):
    dense = tiny_decoder(vocab=97, seed=3, family=family, tie=tie)
    model = tiny_decoder(vocab=97, seed=3, family=family, tie=tie)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert pack_decoder(model) and not pack_decoder(model)  # packs once
    assert isinstance(model.layers[0].qkv, PackedLinear) and isinstance(model.fast_head, PackedWeight)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert (model.lm_head is None) == tie and torch.equal(model.head_weight(), dense.head_weight())
    tokens, pos = torch.tensor([1, 5, 9, 20, 33, 7, 2, 64, 11]), torch.arange(9)
    for n in (9, 1, 4):  # a prefill, then one-row and tree-sized forwards on the cache
        ref = dense(tokens[:n], pos[:n], dense.new_cache(16)).logits
        out = model(tokens[:n], pos[:n], model.new_cache(16)).logits
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4)
        assert torch.equal(out.argmax(-1), ref.argmax(-1))


def test_the_int8_copy_of_a_packed_model_is_the_copy_of_the_dense_one():
    dense = tiny_decoder(vocab=97, seed=4)
    model = tiny_decoder(vocab=97, seed=4)
    pack_decoder(model)
    tokens, pos = torch.tensor([3, 8, 1, 40, 2]), torch.arange(5)
    qd, qp = quantize_int8(dense), quantize_int8(model)
    assert torch.equal(qp(tokens, pos, qp.new_cache(8)).logits, qd(tokens, pos, qd.new_cache(8)).logits)
    assert qp.embed.weight.data_ptr() == model.embed.weight.data_ptr()


def test_greedy_decoding_on_a_packed_model_is_plain_decoding():
    dense = tiny_decoder(vocab=97, seed=5, layers=3)
    model = tiny_decoder(vocab=97, seed=5, layers=3)
    pack_decoder(model)
    prompt = [5, 17, 3, 88, 41, 9]
    greedy = SamplingParams(temperature=0.0)
    ref, _ = generate_ids(dense, prompt, max_new_tokens=24, params=greedy, eos_ids=frozenset())
    out, _ = generate_ids(model, prompt, max_new_tokens=24, params=greedy, eos_ids=frozenset())
    assert out == ref


def test_llm_packs_float32_unless_told_not_to(tiny_llm_dir, monkeypatch):
    from specdraft import LLM

    packed_llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    dense_llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False, pack=False)
    monkeypatch.setenv("SPECDRAFT_PACK", "0")
    env_llm = LLM(str(tiny_llm_dir), dtype="float32", progress=False)
    assert packed_llm.packed and isinstance(packed_llm.model.layers[0].gate_up, PackedLinear)
    assert not dense_llm.packed and not env_llm.packed
    assert isinstance(env_llm.model.layers[0].gate_up, torch.nn.Linear)
    a = packed_llm.generate("hello there", max_new_tokens=16, drafter="lookup")
    b = dense_llm.generate("hello there", max_new_tokens=16, drafter=None)
    assert a.token_ids == b.token_ids
    assert a.to_json()["packed_weights"] is True and b.to_json()["packed_weights"] is False


def test_llm_packs_bf16_where_the_cpu_has_bf16_units(tiny_llm_dir, monkeypatch):
    from specdraft import LLM

    llm = LLM(str(tiny_llm_dir), dtype="bfloat16", progress=False)
    want = torch.bfloat16 in packed.dtypes()
    assert llm.packed == want and isinstance(llm.model.layers[0].down, PackedLinear) == want
    out = llm.generate("hello there", max_new_tokens=8, drafter="lookup")
    assert len(out.token_ids) > 0 and out.to_json()["packed_weights"] is want and out.to_json()["dtype"] == "bfloat16"
    monkeypatch.setattr(packed, "dtypes", lambda: (torch.float32,))  # a CPU without bf16 units
    dense = LLM(str(tiny_llm_dir), dtype="bfloat16", progress=False)
    assert not dense.packed and isinstance(dense.model.layers[0].down, torch.nn.Linear)
