"""An int8 copy of a decoder, for drafting only.

`quantize_int8(model)` returns a `Decoder` whose matrix products (q/k/v, o, gate/up, down and the
LM head) run through torch's dynamic int8 linear (FBGEMM / oneDNN on x86, QNNPACK on ARM): weights
quantized per output channel once, activations per call, products accumulated in int32. The
embedding, norms and rotary tables are the original tensors, shared, so the copy costs about a
quarter of the fp32 weights in memory.

Why: on a CPU a one-token step reads every weight once and is bound by memory traffic; the int8
copy reads a quarter of the bytes of fp32 and, on an AVX2 CPU, runs a one-row step 2-3x faster
(docs/archive/benchmarks-history.md). Its greedy tokens nearly always equal the full model's, so it
is a draft model that needs no training and shares the tokenizer by construction
(`--drafter draft-model:self?quant=int8`). The target that verifies stays untouched: the output
is that of plain decoding, whatever the copy proposes.

Dynamic quantized linear is CPU-only in torch; on other devices this raises a clear error. torch
marks its quantized-tensor constructors as deprecated (they still ship in the pinned version);
the warning is silenced here, where the one call that needs them is made.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from ..errors import SpecdraftError
from .model import Decoder
from .packed import PRODUCTS, dense_weight


class Int8Weight:
    """A [out, in] weight packed for torch's dynamic int8 linear; `mm(x)` is x @ W^T for [N, in]
    float32 rows (an approximation: weights to per-channel int8, each call's activations to
    uint8)."""

    def __init__(self, w):
        self.packed = torch.ops.quantized.linear_prepack(quantize_rows(dense_weight(w).detach()), None)
        self.shape = tuple(w.shape)

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range keeps FBGEMM's u8 x s8 pair sums from saturating on AVX2. The product takes
        # and gives float32; its result goes back to the rows' dtype (a bfloat16 model's copy keeps
        # bfloat16 activations, and so writes the bfloat16 KV its target's cache holds).
        y = torch.ops.quantized.linear_dynamic(x.float(), self.packed, True)
        return y if y.dtype == x.dtype else y.to(x.dtype)


def quantize_rows(w: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """`w` [out, in] (any float dtype) as a per-row qint8 tensor: scale = max |w| / 127 per row,
    zero point 0. The same values as `torch.quantize_per_channel` of the float32 weight (its
    rounding: nearest even of w x float32(1 / scale)), computed a block of rows at a time in
    parallel ops: several times faster, and no float32 copy of the whole weight."""
    scale = (torch.maximum(w.amax(1).float(), -w.amin(1).float()) / 127).clamp_min(1e-8).double()
    inv = (1.0 / scale.float())[:, None]
    q = torch.empty(w.shape, dtype=torch.int8)
    buf = torch.empty((min(chunk, w.shape[0]), *w.shape[1:]), dtype=torch.float32)  # reused: no page faults
    for i in range(0, w.shape[0], chunk):
        rows = buf[:min(chunk, w.shape[0] - i)]
        torch.mul(w[i:i + len(rows)], inv[i:i + len(rows)], out=rows)
        q[i:i + len(rows)].copy_(rows.round_().clamp_(-128, 127))  # whole numbers: the cast is exact
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch._make_per_channel_quantized_tensor(q, scale, torch.zeros(w.shape[0], dtype=torch.long), 0)


class Int8Linear(nn.Module):
    """Stands where a `nn.Linear` stood: `.weight` is an `Int8Weight`, `.bias` the float bias."""

    def __init__(self, weight: Int8Weight, bias: torch.Tensor | None):
        super().__init__()
        self.weight = weight
        self.bias = bias


def is_int8(model: Decoder) -> bool:
    """Whether `model` is an int8 copy made by `quantize_int8`."""
    return bool(model.layers) and isinstance(model.layers[0].qkv, Int8Linear)


def add_int8_head(copy: Decoder) -> None:
    """Quantize the LM head of an int8 copy made with `head=False` (idempotent)."""
    if copy.fast_head is None:
        copy.fast_head = Int8Weight(copy.head_weight())


def quantize_int8(model: Decoder, head: bool = True) -> Decoder:
    """An int8 drafting copy of `model` (on the CPU; its activations in the model's dtype, each
    product computed in int8 from float32 rows); `model` itself is not changed. `head=False`
    leaves the LM head unquantized (`fast_head` None; `add_int8_head` adds it): a drafter over a
    reduced vocabulary quantizes only its own rows, and for qwen2.5-coder-1.5b the full head is
    233 M weights, 2.3 s of prepacking."""
    if model.device.type != "cpu":
        raise SpecdraftError(f"quant=int8 runs on the CPU only (torch's dynamic int8 linear); the model is on "
                             f"{model.device.type}")
    with torch.device("meta"):
        copy = Decoder(model.cfg)
    # Embedding, norms, biases: the original's tensors, in its dtype (nothing copied), so that the
    # copy computes attention in the dtype of the KV cache it shares with the target (drafters/
    # draft_model.py, shared=True). The products' weights are quantized one at a time from the
    # original's (dense or packed), never all copied at once.
    products = {f"layers.{i}.{name}.weight" for i in range(model.cfg.num_layers) for name in PRODUCTS}
    state = {k: v for k, v in model.named_parameters() if k not in products}
    missing, unexpected = copy.load_state_dict(state, assign=True, strict=False)
    if set(missing) - products or unexpected:
        raise SpecdraftError(f"cannot copy this decoder for int8: missing {missing}, unexpected {unexpected}")
    copy.init_rope()
    # FBGEMM's prepack runs on one thread: two weights at a time on two workers, each holding one
    # weight's int8 values until packed. With `quantize_rows`, the copy of qwen2.5-coder-0.5b takes
    # 2.3 s instead of 7.5 (docs/archive/benchmarks-history.md).
    slots = [(layer, name) for layer in copy.layers for name in PRODUCTS]
    weights = [getattr(src, name).weight for src in model.layers for name in PRODUCTS]
    with ThreadPoolExecutor(max(1, min(2, torch.get_num_threads()))) as pool:
        fast_head = pool.submit(Int8Weight, model.head_weight()) if head else None
        for (layer, name), packed in zip(slots, pool.map(Int8Weight, weights)):
            setattr(layer, name, Int8Linear(packed, getattr(layer, name).bias))
        copy.fast_head = None if fast_head is None else fast_head.result()
    return copy.eval().requires_grad_(False)
