"""`--dtype auto`: float32 where bf16 products are emulated, and for small models on a CPU with
AVX512-BF16 but no AMX where bf16 weights cannot be packed for oneDNN; bfloat16 elsewhere.
Training's dtype: bf16 wherever it runs natively."""

import pytest
import torch

from specdraft.api import resolve_dtype
from specdraft.errors import SpecdraftError
from specdraft.runtime import cpu, loader


def _cpu(monkeypatch, amx, avx512_bf16):
    for cap in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # the probes' answer, not a cap on it
        monkeypatch.delenv(cap, raising=False)
    for probe, value in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
        if value is None:
            monkeypatch.delattr(torch.cpu, probe, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, probe, lambda value=value: value)


@pytest.mark.parametrize("amx,avx512_bf16,want", [
    (False, False, torch.float32),  # an AVX2-only CPU: bf16 products are emulated, fp32 is faster
    (False, True, torch.bfloat16),
    (True, False, torch.bfloat16),
    (None, None, torch.float32),  # a torch without the probes: assume nothing
])
def test_training_runs_in_bf16_only_with_native_bf16_units(monkeypatch, amx, avx512_bf16, want):
    _cpu(monkeypatch, amx, avx512_bf16)
    assert cpu.fast_dtype("cpu") == want


@pytest.mark.parametrize("cap,bf16,amx", [
    ("AVX2", False, False), ("avx512_core", False, False), ("AVX512_CORE_BF16", True, False),
    ("AVX10_1_512", True, False), ("AVX512_CORE_AMX", True, True), ("ALL", True, True), ("", True, True),
])
def test_onednn_isa_cap_takes_the_units_away(monkeypatch, cap, bf16, amx):
    """ONEDNN_MAX_CPU_ISA caps what oneDNN's kernels use; the probes follow, so that an AVX2-only
    CPU's paths (float32 decoding, no packing in bf16) run on a CPU that has the units."""
    _cpu(monkeypatch, True, True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert (cpu.native_bf16("cpu"), cpu.has_amx()) == (bf16, amx)
    assert cpu.fast_dtype("cpu") == (torch.bfloat16 if bf16 else torch.float32)


SMALL, LARGE = cpu.FLOAT32_MAX_PARAMS, cpu.FLOAT32_MAX_PARAMS + 1


@pytest.mark.parametrize("amx,avx512_bf16,params,want", [
    (False, False, LARGE, torch.float32),  # AVX2-only: float32 whatever the size
    (False, True, SMALL, torch.float32),  # AVX512-BF16 without AMX: a small model decodes as fast in float32
    (False, True, LARGE, torch.bfloat16),  # ... a large one faster in bf16
    (False, True, None, torch.bfloat16),  # size unknown: as before
    (True, True, SMALL, torch.bfloat16),  # AMX
    (None, None, SMALL, torch.float32),
])
def test_auto_decodes_in_float32_unless_bf16_pays(monkeypatch, amx, avx512_bf16, params, want):
    """Without packed bf16 (a torch without oneDNN, or SPECDRAFT_PACK=0)."""
    _cpu(monkeypatch, amx, avx512_bf16)
    monkeypatch.setenv("SPECDRAFT_PACK", "0")
    assert cpu.decode_dtype("cpu", params) == want
    assert cpu.decode_dtype(torch.device("cpu"), params) == want
    monkeypatch.setattr(loader, "count_params", lambda path, params=params: params)
    monkeypatch.setattr("specdraft.api.count_params", lambda path, params=params: params)
    assert resolve_dtype("auto", "cpu", path="some/model") == want


@pytest.mark.parametrize("amx,avx512_bf16,want", [
    (False, False, torch.float32),  # AVX2-only: bf16 is not packed there, float32
    (False, True, torch.bfloat16),  # AVX512-BF16: packed bf16 is the faster dtype, whatever the size
    (True, True, torch.bfloat16),
])
def test_auto_decodes_in_bf16_where_bf16_weights_are_packed(monkeypatch, amx, avx512_bf16, want):
    from specdraft.runtime import packed

    _cpu(monkeypatch, amx, avx512_bf16)
    monkeypatch.delenv("SPECDRAFT_PACK", raising=False)
    monkeypatch.setattr(cpu, "onednn", lambda: True)
    assert (torch.bfloat16 in packed.dtypes()) == (amx or avx512_bf16)
    for params in (SMALL, LARGE, None):
        assert cpu.decode_dtype("cpu", params) == want
    monkeypatch.setattr(cpu, "onednn", lambda: False)  # a torch without oneDNN: the size decides
    assert cpu.decode_dtype("cpu", SMALL) == (torch.bfloat16 if amx else want if not avx512_bf16 else torch.float32)


def test_count_params_reads_the_safetensors_headers(tiny_llm_dir, tmp_path):
    from specdraft.runtime.loader import load_decoder

    dec = load_decoder(tiny_llm_dir, torch.float32)
    n = loader.count_params(tiny_llm_dir)
    # the checkpoint's tensors: every weight of the decoder (ours fuses q/k/v and gate/up, same count;
    # a tied head is one tensor)
    assert n == sum(p.numel() for p in dec.parameters())
    assert loader.count_params(tmp_path) is None  # no weights: unknown


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
        monkeypatch.setattr("specdraft.api.decode_dtype", lambda device, params, want=want: want)
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


def test_llm_auto_counts_the_model_it_loads(tiny_llm_dir, monkeypatch):
    """On a CPU with AVX512-BF16 but no AMX, where bf16 is not packed, the loaded model's own size decides."""
    from specdraft.api import LLM

    _cpu(monkeypatch, False, True)
    monkeypatch.setenv("SPECDRAFT_PACK", "0")
    assert LLM(str(tiny_llm_dir), progress=False).dtype == torch.float32  # a tiny model
    monkeypatch.setattr(cpu, "FLOAT32_MAX_PARAMS", loader.count_params(tiny_llm_dir) - 1)
    assert LLM(str(tiny_llm_dir), progress=False).dtype == torch.bfloat16
