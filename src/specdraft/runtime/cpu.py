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
    return has_amx() or _cpu_has("_is_avx512_bf16_supported")


def _cpu_has(probe: str) -> bool:
    """One of torch.cpu's feature probes (private but long-standing); False where torch lacks it."""
    try:
        return bool(getattr(torch.cpu, probe)())
    except (AttributeError, RuntimeError):
        return False


def has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units, Intel Sapphire Rapids and later)."""
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
