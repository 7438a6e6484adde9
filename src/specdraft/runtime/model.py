"""One compact decoder for the llama / qwen2 / mistral families.

What speculative decoding needs, and HF modeling code makes awkward:
- a forward over N new tokens with explicit positions, written into a preallocated `KVCache` at
  explicit slots, with an optional attention mask among the new tokens (token trees);
- a per-sublayer skip set given per call (self-speculation skips attention and MLP blocks);
- the hidden states the caller asks for, beside the logits of the rows it asks for.

Batch size is 1 by design: tokens are a 1-D tensor [N]; see cache.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .config import ModelConfig


@dataclass(frozen=True)
class SkipSet:
    """Which sublayers to skip: attn[i] / mlp[i] True means layer i's block is an identity."""

    attn: tuple[bool, ...]
    mlp: tuple[bool, ...]

    @classmethod
    def none(cls, num_layers: int) -> "SkipSet":
        return cls((False,) * num_layers, (False,) * num_layers)

    def count(self) -> int:
        return sum(self.attn) + sum(self.mlp)


@dataclass
class ForwardOutput:
    logits: torch.Tensor | None  # [M, V] float32, the rows selected by `logits_at`
    final_hidden: torch.Tensor | None  # [N, hidden] after the final norm, if asked
    layer_hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # layer i -> [N, hidden] residual after it


# Rows up to which an fp32 product on a CPU is computed weight-major (see `linear`).
WEIGHT_MAJOR_ROWS = 12


def linear(x: torch.Tensor, w, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, w, b) for [N, in] rows. `w` may also be an int8 or a oneDNN-packed weight
    (runtime/quant.py, runtime/packed.py), which has its own product. For 2..WEIGHT_MAJOR_ROWS
    dense fp32 rows on a CPU it computes (w @ x^T)^T instead: MKL's product of a few rows with a
    transposed weight is far from its one-row speed, the weight-major one less so (SmolLM2, 5 rows:
    114 ms instead of 148; benchmarks/row_cost.py, docs/BENCHMARKS.md session 10); the packed
    product is faster still (session 14). The result is a transposed view; bf16 (emulated on AVX2
    CPUs) only gets slower this way."""
    if not isinstance(w, torch.Tensor):
        y = w.mm(x)
        return y if b is None else y + b
    n = x.shape[0]
    if 1 < n <= WEIGHT_MAJOR_ROWS and x.dim() == 2 and x.dtype == torch.float32 and x.device.type == "cpu":
        y = torch.mm(w, x.t()).t()
        return y if b is None else y + b
    return F.linear(x, w, b)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Normalise in float32, as the reference implementations do, then cast back.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = cfg.rope_scaling
    if s is None:
        return inv
    # Llama-3: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * torch.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [H, N, D]; cos, sin: [N, D] (halves layout: rotate (x1, x2) -> (-x2, x1))
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.attn_norm = nn.Parameter(torch.ones(h))
        self.qkv = nn.Linear(h, (cfg.num_heads + 2 * cfg.num_kv_heads) * d, bias=cfg.attention_bias)
        self.o = nn.Linear(cfg.num_heads * d, h, bias=False)
        self.mlp_norm = nn.Parameter(torch.ones(h))
        self.gate_up = nn.Linear(h, 2 * cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, h, bias=False)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        # The LM head's product when no `head` is given, if not the dense head: an int8 one
        # (runtime/quant.py) or a oneDNN-packed one (runtime/packed.py).
        self.fast_head = None

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.cfg, capacity, self.dtype, self.device)

    def attention_mask(self, start: int, n: int, tree_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Bool [N, start + N] mask (True = may attend), or None when every slot is visible."""
        if n == 1 and tree_mask is None:
            return None
        block = tree_mask if tree_mask is not None else torch.ones(n, n, dtype=torch.bool, device=self.device).tril_()
        prefix = torch.ones(n, start, dtype=torch.bool, device=self.device)
        return torch.cat((prefix, block.to(self.device, torch.bool)), dim=1)

    def forward(
        self,
        tokens: torch.Tensor,  # [N] long
        positions: torch.Tensor,  # [N] long
        cache: KVCache,
        *,
        start: int | None = None,  # first slot to write; default cache.length
        tree_mask: torch.Tensor | None = None,  # [N, N] bool among new tokens; default causal
        mask: torch.Tensor | None = None,  # [N, start + N] bool over all slots; overrides tree_mask
        skip: SkipSet | None = None,
        logits_at: slice | torch.Tensor | None = None,  # rows to compute logits for; None = all
        final_hidden: bool = False,
        hidden_layers: tuple[int, ...] = (),
        head: torch.Tensor | None = None,  # [V', hidden] rows of the LM head to use; default all
    ) -> ForwardOutput:
        cfg = self.cfg
        n = tokens.shape[0]
        start = cache.length if start is None else start
        cache.check_fits(start, n)
        end = start + n
        H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        G = H // Hkv

        freqs = positions.to(self.device).float()[:, None] * self.inv_freq[None, :]  # [N, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        mask = self.attention_mask(start, n, tree_mask) if mask is None else mask.to(self.device, torch.bool)
        if mask is not None and G > 1:
            # Query heads that share a kv head are stacked along the query axis: [Hkv, G*N, D]
            # against [Hkv, S, D], so the cache is never expanded; the mask repeats per head.
            mask = mask.repeat(G, 1)

        x = self.embed(tokens.to(self.device))  # [N, hidden]
        layer_hidden = {}
        for i, layer in enumerate(self.layers):
            if skip is None or not skip.attn[i]:
                h = rms_norm(x, layer.attn_norm, cfg.rms_norm_eps)
                q, k, v = linear(h, layer.qkv.weight, layer.qkv.bias).split((H * D, Hkv * D, Hkv * D), dim=-1)
                q = apply_rope(q.view(n, H, D).transpose(0, 1), cos, sin)  # [H, N, D]
                k = apply_rope(k.view(n, Hkv, D).transpose(0, 1), cos, sin)  # [Hkv, N, D]
                cache.k[i, :, start:end] = k
                cache.v[i, :, start:end] = v.view(n, Hkv, D).transpose(0, 1)
                q = q.reshape(Hkv, G * n, D)
                a = F.scaled_dot_product_attention(q, cache.k[i, :, :end], cache.v[i, :, :end], attn_mask=mask)
                a = a.view(H, n, D).transpose(0, 1).reshape(n, H * D)
                x = x + linear(a, layer.o.weight)
            if skip is None or not skip.mlp[i]:
                h = rms_norm(x, layer.mlp_norm, cfg.rms_norm_eps)
                gate, up = linear(h, layer.gate_up.weight).chunk(2, dim=-1)
                x = x + linear(F.silu(gate) * up, layer.down.weight)
            if i in hidden_layers:
                layer_hidden[i] = x
        x = rms_norm(x, self.norm, cfg.rms_norm_eps)
        rows = x if logits_at is None else x[logits_at]
        if head is None:
            head = self.head_weight() if self.fast_head is None else self.fast_head
        logits = linear(rows, head).float() if rows.shape[0] else None
        return ForwardOutput(logits=logits, final_hidden=x if final_hidden else None, layer_hidden=layer_hidden)
