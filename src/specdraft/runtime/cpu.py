"""What this machine's CPU can do, and the dtypes that follow from it: bf16 units (AVX512-BF16,
AMX), oneDNN's packed products, the dtype training and `--dtype auto` decoding run in. The one
place these probes and that policy live (runtime/packed.py, loader.py and llamacpp.py ask here).
"""

from __future__ import annotations

import os

import torch


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matrix products run on native units here: a CUDA GPU that supports bf16, or a
    CPU with AVX512-BF16 or AMX. Without them (an AVX2-only CPU, say) torch computes bf16 products
    by converting to fp32, and their cost grows with the rows: verifying a 5-token draft costs 3.4
    plain steps on SmolLM2, and fp32 is the faster dtype for speculative decoding
    (docs/archive/benchmarks-history.md)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return has_amx() or (_cpu_has("_is_avx512_bf16_supported") and _isa_allows("AVX512_CORE_BF16"))


def _cpu_has(probe: str) -> bool:
    """One of torch.cpu's feature probes (private but long-standing); False where torch lacks it."""
    try:
        return bool(getattr(torch.cpu, probe)())
    except (AttributeError, RuntimeError):
        return False


# oneDNN's instruction sets, lowest first, as its ONEDNN_MAX_CPU_ISA setting names them (aliases
# share a rank). Only the ranks that decide bf16 units and AMX tiles matter here.
_ISA_RANK = {"SSE41": 0, "AVX": 1, "AVX2": 2, "AVX2_VNNI": 3, "AVX2_VNNI_2": 4, "AVX512_CORE": 5,
             "AVX512_CORE_VNNI": 6, "AVX512_CORE_BF16": 7, "AVX512_CORE_FP16": 8, "AVX10_1_512": 8,
             "AVX512_CORE_AMX": 9, "AVX10_1_512_AMX": 9, "AVX512_CORE_AMX_FP16": 10,
             "AVX10_1_512_AMX_FP16": 10}


def _isa_allows(isa: str) -> bool:
    """Whether oneDNN may use `isa` here: ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) caps the
    instruction sets its kernels take, and the probes follow it, so that
    `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 make test` runs an AVX2-only CPU's paths on
    any x86 CPU (`make test-avx2`). Unset, DEFAULT, ALL or a name not known here: no cap."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    if cap not in _ISA_RANK:
        return True
    return _ISA_RANK[cap] >= _ISA_RANK[isa]


def has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units, Intel Sapphire Rapids and later) and
    oneDNN may use them."""
    return amx_tiles() and _isa_allows("AVX512_CORE_AMX")


def amx_tiles() -> bool:
    """Whether the hardware has AMX tiles, whatever ONEDNN_MAX_CPU_ISA says: llama.cpp's kernels
    do not read that cap."""
    return _cpu_has("_is_amx_tile_supported")


def fast_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype training and data building run in: bf16 where it runs natively (their products have
    many rows, where bf16 units pay), else fp32. Decoding decides by `decode_dtype`."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


# Up to this many parameters, a CPU with AVX512-BF16 but no AMX decodes `auto` in float32 when its
# bf16 weights cannot be packed for oneDNN (a torch without oneDNN, or SPECDRAFT_PACK=0).
FLOAT32_MAX_PARAMS = 1_000_000_000


def decode_dtype(device: torch.device | str = "cpu", params: int | None = None) -> torch.dtype:
    """The dtype `--dtype auto` decodes a model of `params` parameters in.

    - A GPU with bf16, or a CPU with AMX: bfloat16.
    - A CPU without bf16 units (AVX2-only): float32. torch emulates bf16 products there, and their
      cost grows with the rows (docs/archive/benchmarks-history.md).
    - A CPU with AVX512-BF16 but no AMX: bfloat16, with its weights packed for oneDNN
      (runtime/packed.py). Packed bf16 forwards took 0.54-0.68 of packed float32 ones on all four
      zoo models, and every drafter ran faster in absolute terms (docs/archive/benchmarks-history.md).
      Where bf16 cannot be packed, the dense bf16 product is no faster than packed float32 on small
      models: float32 up to FLOAT32_MAX_PARAMS, else bfloat16 (also when `params` is
      unknown).
    float32 outputs are exactly plain decoding's. In bf16, verification rounds differently from
    one-row steps, and part of the answers drift from plain bf16 decoding (`--dtype float32` when
    the exact output matters more than the speed).
    """
    device = torch.device(device)
    if device.type != "cpu" or not native_bf16(device):
        return fast_dtype(device)
    if has_amx() or (pack_wanted() and onednn()):  # bf16 weights packed for oneDNN (runtime/packed.py)
        return torch.bfloat16
    if params is None or params > FLOAT32_MAX_PARAMS:
        return torch.bfloat16
    return torch.float32


def onednn() -> bool:
    """Whether this torch has oneDNN's packed inner product (runtime/packed.py)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def pack_wanted() -> bool:
    """Packing for oneDNN is on unless SPECDRAFT_PACK=0."""
    return os.environ.get("SPECDRAFT_PACK", "1") != "0"
