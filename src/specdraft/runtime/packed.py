"""Weights prepacked for oneDNN, for the target's products on a CPU: float32, and bfloat16 where the
CPU has bf16 units.

`pack_decoder(model)` replaces, in place, the weights of a CPU decoder's products (q/k/v, o,
gate/up, down and the LM head) by `PackedWeight`s: the same values reordered once, at load, into
oneDNN's blocked layout for its inner product. The values are not changed (`dense()` gives the
original tensor back, bit for bit); only the order of the summation inside a product differs, as it
does between any two BLAS kernels.

Why: a verification forward is a few rows, and on an AVX2 CPU MKL's product of a few rows runs
far from the one-row (memory-bound) speed, even weight-major (runtime.model.linear). The
prepacked product is nearly flat in the rows: on qwen2.5-coder-1.5b a 9-row forward costs 1.5
one-row forwards instead of 3.0 (benchmarks/row_cost.py, docs/archive/benchmarks-history.md).
In bfloat16, on a CPU with AVX512-BF16 or AMX, oneDNN's packed product also reads the weights far
faster than torch's dense bf16 one: a one-row qwen2.5-coder-1.5b forward takes 111 ms instead of
212 (docs/archive/benchmarks-history.md). Without bf16 units (AVX2) bf16 weights stay dense.

The packed weights replace the dense ones (no second copy is kept). The LM head is packed beside
the dense head, which the embedding (tied heads) and the trained drafters read. Anything that
needs a layer's dense weight gets it from `dense_weight`.

On other devices, dtypes, or a torch built without oneDNN, `pack_decoder` leaves the model as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from . import cpu
from .cpu import pack_wanted as wanted  # noqa: F401 -- packed.wanted(): packing is on unless SPECDRAFT_PACK=0

# The row count oneDNN prepares the layout for. 8 rows: the measured best for a draft tree's
# verification on both shipped models, at a one-row cost within noise of the dense product.
PACK_ROWS = 8


def dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes packed here: float32, and bfloat16 on a CPU with bf16 units; none without oneDNN."""
    if not cpu.onednn():
        return ()
    return (torch.float32, torch.bfloat16) if cpu.native_bf16("cpu") else (torch.float32,)


def available(model) -> bool:
    """Whether `model` (a Decoder) can be packed here."""
    return model.device.type == "cpu" and model.dtype in dtypes()


def packable(w: torch.Tensor) -> bool:
    """Whether this weight can be packed here (2-d, on a CPU, of a dtype in `dtypes()`)."""
    return w.dim() == 2 and w.device.type == "cpu" and w.dtype in dtypes()


class PackedWeight:
    """A [out, in] weight in oneDNN's layout; `mm(x)` is x @ W^T for [N, in] rows of its dtype."""

    def __init__(self, w: torch.Tensor, rows: int = PACK_ROWS):
        w = w.detach()
        if not packable(w):
            raise ValueError(f"PackedWeight packs 2-d CPU weights of {[str(d) for d in dtypes()]} here, "
                             f"not {w.dtype} {w.device.type} {w.dim()}-d")
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), rows)
        self.shape = tuple(w.shape)
        self.min_rows = 1  # 2 for row-invariant decoding (Decoder.set_row_invariant)

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if 0 < rows < self.min_rows:
            # oneDNN takes another kernel for a single row, whose sums differ in the last bits from
            # the one every other row count shares (docs/archive/benchmarks-history.md). Row-invariant
            # decoding (Decoder.set_row_invariant) therefore runs a one-row step as two rows.
            x = x.expand(self.min_rows, -1)
        y = torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, None, "none", [], "")
        return y if y.shape[0] == rows else y[:rows]

    def dense(self) -> torch.Tensor:
        """The original [out, in] weight (a new tensor)."""
        return self.packed.to_dense()

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


class PackedLinear(nn.Module):
    """Stands where a `nn.Linear` stood: `.weight` is a `PackedWeight`, `.bias` the float bias. Its
    state_dict still holds a dense `weight`, so a packed model saves and copies like the original."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = PackedWeight(linear.weight)
        self.bias = linear.bias
        self._register_state_dict_hook(_dense_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.weight.mm(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], self.weight.shape[0])
        return y if self.bias is None else y + self.bias


def _dense_state(module: PackedLinear, state: dict, prefix: str, local_metadata) -> None:
    state[prefix + "weight"] = module.weight.dense()


def dense_weight(w) -> torch.Tensor:
    """The dense tensor of a weight that may be packed."""
    return w.dense() if isinstance(w, PackedWeight) else w


PRODUCTS = ("qkv", "o", "gate_up", "down")


def set_min_rows(model, rows: int) -> None:
    """The fewest rows each packed product of a decoder (its layers' and its LM head's) runs:
    2 for row-invariant decoding (Decoder.set_row_invariant), else 1."""
    for w in [getattr(layer, name).weight for layer in model.layers for name in PRODUCTS] + [model.fast_head]:
        if isinstance(w, PackedWeight):
            w.min_rows = rows


def pack_linears(module: nn.Module) -> None:
    """Replace, in place, every packable `nn.Linear` inside `module` by a `PackedLinear` (a
    trained drafter's layers: a few rows per step, where MKL's product is slow); modules of other
    dtypes or devices are left as they are."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and packable(child.weight):
                setattr(parent, name, PackedLinear(child))


def pack_decoder(model) -> bool:
    """Pack `model`'s products in place (see the module doc); returns whether it did. Idempotent."""
    if not available(model) or model.fast_head is not None:
        return False
    for layer in model.layers:
        for name in PRODUCTS:
            setattr(layer, name, PackedLinear(getattr(layer, name)))
    model.fast_head = PackedWeight(model.head_weight())
    return True
