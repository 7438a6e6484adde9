"""`--dtype auto`: bf16 only where bf16 matrix products run natively, else fp32."""

import pytest
import torch

from specdraft.api import resolve_dtype
from specdraft.errors import SpecdraftError
from specdraft.runtime import loader


@pytest.mark.parametrize("amx,avx512_bf16,want", [
    (False, False, torch.float32),  # an AVX2-only CPU: bf16 products are emulated, fp32 is faster
    (False, True, torch.bfloat16),
    (True, False, torch.bfloat16),
    (None, None, torch.float32),  # a torch without the probes: assume nothing
])
def test_auto_is_bf16_only_with_native_bf16_units(monkeypatch, amx, avx512_bf16, want):
    for probe, value in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
        if value is None:
            monkeypatch.delattr(torch.cpu, probe, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, probe, lambda value=value: value)
    assert loader.fast_dtype("cpu") == want
    assert resolve_dtype("auto", "cpu") == want
    assert resolve_dtype("auto", torch.device("cpu")) == want


def test_named_dtypes_are_kept_and_unknown_ones_refused():
    assert resolve_dtype("bfloat16") == torch.bfloat16 and resolve_dtype("float32") == torch.float32
    assert resolve_dtype(torch.float32) == torch.float32
    with pytest.raises(SpecdraftError, match="auto"):
        resolve_dtype("float8")
    with pytest.raises(SpecdraftError, match="unsupported"):
        resolve_dtype(torch.float16)


def test_llm_default_dtype_is_auto(tiny_llm_dir, monkeypatch):
    from specdraft.api import LLM

    for want in (torch.float32, torch.bfloat16):
        monkeypatch.setattr("specdraft.api.fast_dtype", lambda device, want=want: want)
        llm = LLM(str(tiny_llm_dir), progress=False)
        assert llm.dtype == want and llm.model.embed.weight.dtype == want


@pytest.mark.parametrize("rows", [1, 2, 5, 12, 13, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_weight_major_products_equal_f_linear(rows, bias):
    from specdraft.runtime.model import linear

    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, 24, generator=g), torch.randn(40, 24, generator=g)
    b = torch.randn(40, generator=g) if bias else None
    want = torch.nn.functional.linear(x, w, b)
    got = linear(x, w, b)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    # the split and view the attention applies to the qkv product work on the result
    q, k = got.split((32, 8), dim=-1)
    assert torch.equal(q.reshape(rows, 4, 8), q.view(rows, 4, 8)) and k.shape == (rows, 8)
