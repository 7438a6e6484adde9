"""A preallocated KV cache that changes length only through explicit calls.

One cache holds one sequence; a batch of sequences is a list of caches, each written by its own
segment of `Decoder.forward_many` (batch.py). Slots [0, length) hold the committed prefix. A forward writes its N new tokens at
slots [start, start + N) with start >= length (default: start = length) and attends to every slot
before them, but never changes `length`: the caller commits, truncates or compacts afterwards.
Rolling back a rejected draft is therefore free -- the next forward simply overwrites it.
"""

from __future__ import annotations

import torch

from ..errors import SpecdraftError
from .attention import slots_for
from .config import ModelConfig


class CacheLength:
    """The committed length of a cache and its capacity, changed only by explicit calls: what every
    backend's cache shares (this module's tensors, runtime/llamacpp.py's llama.cpp sequence)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.length = 0

    def room(self) -> int:
        """Slots still free after the committed prefix."""
        return self.capacity - self.length

    def check_fits(self, start: int, n: int) -> None:
        if start < self.length or start + n > self.capacity:
            raise SpecdraftError(
                f"KV cache overflow: writing {n} tokens at slot {start} (committed {self.length}, "
                f"capacity {self.capacity})"
            )

    def commit(self, n: int) -> None:
        """Accept the n tokens written right after the committed prefix."""
        if n < 0 or self.length + n > self.capacity:
            raise ValueError(f"cannot commit {n} tokens at length {self.length} / {self.capacity}")
        self.length += n

    def truncate(self, length: int) -> None:
        """Forget everything from slot `length` on."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate to {length} (length {self.length})")
        self.length = length


class KVCache(CacheLength):
    def __init__(self, cfg: ModelConfig, capacity: int, dtype: torch.dtype, device: torch.device | str = "cpu"):
        super().__init__(capacity)
        # [L, H_kv, T, D]; T = capacity rounded up to whole blocks of the row-invariant attention
        shape = (cfg.num_layers, cfg.num_kv_heads, slots_for(capacity), cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def compact(self, offsets: torch.Tensor | list[int]) -> None:
        """Move the accepted nodes of a verified tree into contiguous slots and commit them.

        offsets: [n] slot offsets relative to `length` of the accepted path, in path order
        (strictly increasing, since a node is always written after its parent).
        """
        offsets = torch.as_tensor(offsets, dtype=torch.long, device=self.k.device)
        n = offsets.numel()
        if n == 0:
            return
        src = offsets + self.length
        dst = torch.arange(self.length, self.length + n, device=self.k.device)
        if not torch.equal(src, dst):  # a chain needs no copy
            self.k[:, :, dst] = self.k[:, :, src]
            self.v[:, :, dst] = self.v[:, :, src]
        self.commit(n)

    def grown(self, capacity: int) -> "KVCache":
        """A cache of `capacity` slots holding this one's committed prefix (this one if it is big
        enough already)."""
        if capacity <= self.capacity:
            return self
        L, H, _, D = self.k.shape
        out = KVCache.__new__(KVCache)
        out.k = torch.zeros((L, H, slots_for(capacity), D), dtype=self.k.dtype, device=self.k.device)
        out.v = torch.zeros_like(out.k)
        out.k[:, :, :self.length] = self.k[:, :, :self.length]
        out.v[:, :, :self.length] = self.v[:, :, :self.length]
        out.capacity, out.length = capacity, self.length
        return out
