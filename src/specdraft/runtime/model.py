"""One compact decoder for the llama / mistral / qwen2 / qwen3 / gemma3_text families.

What speculative decoding needs, and HF modeling code makes awkward:
- a forward over N new tokens with explicit positions, written into a preallocated `KVCache` at
  explicit slots, with an optional attention mask among the new tokens (token trees);
- a per-sublayer skip set given per call (self-speculation skips attention and MLP blocks);
- the hidden states the caller asks for, beside the logits of the rows it asks for.

A forward's tokens are a 1-D tensor [N] of one sequence (see cache.py); `forward_many` runs
several sequences' segments in one forward (their products over every row at once, attention per
sequence: the continuous batching of batch.py). The per-layer pieces (`Layer.qkv_heads`,
`Layer.attn_residual`, `Layer.mlp_residual`) work on any leading shape and are shared with the
padded batched forward that builds training data (batched.py).

Gemma 3 differs from the llama layout in ways the config names (config.py): embeddings scaled by
sqrt(hidden), RMSNorm over each head's queries and keys, a norm on each block's output before the
residual add, a tanh-GELU MLP, and sliding-window attention (with its own RoPE base) on five
layers of six. Gemma's norm weights are stored as offsets from 1; the loader adds the 1, so one
`rms_norm` serves every family (the same float32 product Gemma computes). Qwen3 is the Qwen2
layout without q/k/v biases and with Gemma's per-head query and key norms; Mistral, Qwen2 and
Qwen3 configs may slide a window on some or all layers, which the same masks serve.

Long because it is one decoder: the layer, the forward over one or many sequences and the
prefill share the preparation of positions, masks and caches, kept in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecdraftError
from . import attention
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


# Prompt tokens per forward of `Decoder.prefill`: the mask and the activations of a chunk grow with
# chunk x context instead of context^2, and causal chunks skip the scores above the diagonal. On
# SmolLM2 an 8000-token prompt takes 30 s in chunks of 256-1024 instead of 47 s whole (docs/archive/benchmarks-history.md).
PREFILL_CHUNK = 512

# Rows up to which an fp32 product on a CPU is computed weight-major (see `linear`).
WEIGHT_MAJOR_ROWS = 12


def linear(x: torch.Tensor, w, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, w, b) for [N, in] rows. `w` may also be an int8 or a oneDNN-packed weight
    (runtime/quant.py, runtime/packed.py), which has its own product. For 2..WEIGHT_MAJOR_ROWS
    dense fp32 rows on a CPU it computes (w @ x^T)^T instead: MKL's product of a few rows with a
    transposed weight is far from its one-row speed, the weight-major one less so (SmolLM2, 5 rows:
    114 ms instead of 148; benchmarks/row_cost.py, docs/archive/benchmarks-history.md); the packed
    product is faster still (docs/archive/benchmarks-history.md). The result is a transposed view; bf16 (emulated on AVX2
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
    # Normalise in float32, as the reference implementations do, then cast back. Llama casts
    # before the weight; a float32 weight in a lower-precision model (Gemma's 1 + w, see the
    # loader) multiplies before the cast, as Gemma does.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight.dtype == torch.float32 and x.dtype != torch.float32:
        return (weight * xf).to(x.dtype)
    return weight * xf.to(x.dtype)


def rope_inv_freq(cfg: ModelConfig, local: bool = False) -> torch.Tensor:
    """RoPE inverse frequencies [head_dim / 2]; `local`: those of the sliding-window layers."""
    d = cfg.head_dim
    theta = cfg.rope_local_theta if local and cfg.rope_local_theta is not None else cfg.rope_theta
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = None if local else cfg.rope_scaling
    if s is None:
        return inv
    if s.kind == "linear":
        return inv / s.factor
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


def _linear(x: torch.Tensor, module) -> torch.Tensor:
    """`linear` over the last dim of x [..., in] (a module's weight and bias)."""
    if x.dim() == 2:  # the batch-1 decoder's rows: no reshapes (a one-row step is short)
        return linear(x, module.weight, module.bias)
    y = linear(x.reshape(-1, x.shape[-1]), module.weight, module.bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, d = cfg.hidden_size, cfg.head_dim
        self.attn_norm = nn.Parameter(torch.ones(h))
        self.qkv = nn.Linear(h, (cfg.num_heads + 2 * cfg.num_kv_heads) * d, bias=cfg.attention_bias)
        self.o = nn.Linear(cfg.num_heads * d, h, bias=False)
        self.mlp_norm = nn.Parameter(torch.ones(h))
        self.gate_up = nn.Linear(h, 2 * cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, h, bias=False)
        if cfg.qk_norm:
            self.q_norm = nn.Parameter(torch.ones(d))
            self.k_norm = nn.Parameter(torch.ones(d))
        if cfg.sandwich_norms:
            self.attn_out_norm = nn.Parameter(torch.ones(h))
            self.mlp_out_norm = nn.Parameter(torch.ones(h))

    def qkv_heads(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [..., n, hidden] -> q [..., H, n, D], k and v [..., Hkv, n, D]; RoPE applied (cos, sin
        broadcast against [..., heads, n, D])."""
        cfg = self.cfg
        H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        h = rms_norm(x, self.attn_norm, cfg.rms_norm_eps)
        q, k, v = _linear(h, self.qkv).split((H * D, Hkv * D, Hkv * D), dim=-1)
        q = q.unflatten(-1, (H, D)).transpose(-3, -2)
        k = k.unflatten(-1, (Hkv, D)).transpose(-3, -2)
        v = v.unflatten(-1, (Hkv, D)).transpose(-3, -2)
        if cfg.qk_norm:
            q, k = rms_norm(q, self.q_norm, cfg.rms_norm_eps), rms_norm(k, self.k_norm, cfg.rms_norm_eps)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attn_residual(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """x plus the output projection of the attention values a [..., n, H * D]."""
        y = _linear(a, self.o)
        if self.cfg.sandwich_norms:
            y = rms_norm(y, self.attn_out_norm, self.cfg.rms_norm_eps)
        return x + y

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        gate, up = _linear(rms_norm(x, self.mlp_norm, cfg.rms_norm_eps), self.gate_up).chunk(2, dim=-1)
        act = F.silu(gate) if cfg.activation == "silu" else F.gelu(gate, approximate="tanh")
        y = _linear(act * up, self.down)
        if cfg.sandwich_norms:
            y = rms_norm(y, self.mlp_out_norm, cfg.rms_norm_eps)
        return x + y


class Decoder(nn.Module):
    # The most rows a verification forward may have (None: any); a backend whose kernels round
    # larger batches unlike one-row steps sets it (runtime/llamacpp.py), and the engine clamps drafts.
    max_rows: int | None = None
    max_caches: int | None = None  # caches alive at once: no bound (llama.cpp's backend has one)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.register_buffer("inv_freq_local", rope_inv_freq(cfg, local=True), persistent=False)
        # The LM head's product when no `head` is given, if not the dense head: an int8 one
        # (runtime/quant.py) or a oneDNN-packed one (runtime/packed.py).
        self.fast_head = None
        # Row-invariant decoding (`set_row_invariant`): a row's result is the same in a one-row
        # step and inside a draft's verification. A runtime choice made at load, as `fast_head` is.
        self.row_invariant = False

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def set_row_invariant(self, on: bool) -> None:
        """Compute every row of a decode step as a one-row step computes it, bit for bit, so that
        speculative decoding's greedy tokens equal plain decoding's in bfloat16 too: the products
        never run one row (oneDNN's one-row kernel sums in another order: packed.py) and bf16
        decode steps on a CPU take the row-invariant attention (attention.py). float32 keeps its
        fused attention (its greedy tokens already match), as do other devices. Refused in bf16
        for heads narrower than 64, where it is not shown to hold (oneDNN's bf16 probabilities-
        times-values product then changes with the rows in about 1 call of 1000:
        docs/archive/benchmarks-history.md)."""
        if on and self.dtype == torch.bfloat16:
            if self.cfg.head_dim < 64:
                raise SpecdraftError(f"--exact covers attention heads of 64 dimensions or more in bfloat16, this model's "
                                     f"have {self.cfg.head_dim}: --dtype float32 gives plain decoding's output")
        self.row_invariant = on
        from .packed import set_min_rows

        set_min_rows(self, 2 if on else 1)

    def init_rope(self) -> None:
        """Rebuild the RoPE tables (buffers built on the "meta" device hold no values)."""
        self.inv_freq = rope_inv_freq(self.cfg)
        self.inv_freq_local = rope_inv_freq(self.cfg, local=True)

    def rope(self, positions: torch.Tensor, local: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [..., D] of `positions` [...], in the model's dtype."""
        inv = self.inv_freq_local if local else self.inv_freq
        freqs = positions.to(self.device).float()[..., None] * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens.to(self.device))
        if self.cfg.embed_scale != 1.0:
            x = x * torch.tensor(self.cfg.embed_scale).to(x.dtype)
        return x

    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.cfg, capacity, self.dtype, self.device)

    def prefill(self, tokens: list[int], cache: KVCache, *, chunk: int = PREFILL_CHUNK, final_hidden: bool = False,
                hidden_layers: tuple[int, ...] = (), should_stop: Callable[[], bool] | None = None,
                on_progress: Callable[[int], None] | None = None) -> ForwardOutput | None:
        """Run `tokens` into `cache` from its current length, `chunk` tokens per forward, and commit
        them. Each chunk attends to the cache so far, so the result is that of one forward over all
        tokens (up to the order of summation); but a 30k-token prompt never builds a 30k x 30k mask.
        Returns the logits of the last token, and final / layer hidden states of every token if asked.
        `should_stop` is polled before every chunk but the first (a client gone during a long
        prompt); when it says so, the prefill ends there and returns None. `on_progress` is called
        after every chunk with the number of tokens done (a progress bar)."""
        if chunk <= 0:
            raise ValueError(f"prefill chunk must be positive, got {chunk}")
        ids = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        n = ids.shape[0]
        finals, layers = [], {i: [] for i in hidden_layers}
        fwd = None
        for lo in range(0, n, chunk):
            if lo and should_stop is not None and should_stop():
                return None
            hi = min(n, lo + chunk)
            start = cache.length
            fwd = self(ids[lo:hi], torch.arange(start, start + hi - lo, device=self.device), cache,
                       logits_at=slice(-1, None) if hi == n else slice(0, 0), final_hidden=final_hidden,
                       hidden_layers=hidden_layers, prefill=True)
            cache.commit(hi - lo)
            if on_progress is not None:
                on_progress(hi)
            if final_hidden:
                finals.append(fwd.final_hidden)
            for i in hidden_layers:
                layers[i].append(fwd.layer_hidden[i])
        if fwd is None:
            raise ValueError("prefill needs at least one token")
        if n <= chunk:
            return fwd
        return ForwardOutput(logits=fwd.logits, final_hidden=torch.cat(finals) if final_hidden else None,
                             layer_hidden={i: torch.cat(v) for i, v in layers.items()})

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
        prefill: bool = False,  # a prompt's chunk: torch's fused attention even when row-invariant
    ) -> ForwardOutput:
        seg = Segment(tokens, positions, cache, start=start, tree_mask=tree_mask, mask=mask, logits_at=logits_at,
                      final_hidden=final_hidden, hidden_layers=hidden_layers, prefill=prefill)
        return self._run([seg], skip)[0]

    def forward_many(self, segments: list["Segment"]) -> list[ForwardOutput]:
        """One forward over several sequences' new tokens, each segment into its own cache: the
        products (q/k/v, output, MLP, LM head) run once over every segment's rows, where a decode
        step's cost lies (reading the weights); attention runs per segment, as `forward` runs it.
        Returns each segment's `ForwardOutput`, as `forward` would."""
        return self._run(list(segments), None) if segments else []

    def _prepare(self, seg: "Segment") -> "_Prepared":
        """A segment's slots, RoPE tables, masks and row-invariant plans, by layer kind."""
        cfg = self.cfg
        positions = seg.positions
        n = seg.tokens.shape[0]
        cache = seg.cache
        start = cache.length if seg.start is None else seg.start
        cache.check_fits(start, n)
        end = start + n
        G = cfg.num_heads // cfg.num_kv_heads

        # Tables and masks by layer kind: False = full attention, True = sliding window (Gemma 3).
        rope = {False: self.rope(positions)}
        mask = self.attention_mask(start, n, seg.tree_mask) if seg.mask is None else seg.mask.to(self.device, torch.bool)
        masks = {False: mask}
        first = {False: 0, True: 0}  # the first cache slot a layer of the kind attends to
        if cfg.has_sliding:
            rope[True] = self.rope(positions, local=True)
            masks[True] = mask
            W = cfg.sliding_window
            if end > W:
                # Committed slot j holds position j; the new rows sit at their given positions (a
                # slot never below its position). Slots before the lowest query position's window
                # are seen by no row: the sliding layers skip them, a long context costs them W keys.
                lo = max(0, int(positions.min()) - W + 1)
                key_pos = torch.cat((torch.arange(start, device=self.device), positions.to(self.device)))[lo:]
                near = positions.to(self.device)[:, None] - key_pos[None, :] < W
                masks[True] = near if mask is None else mask[:, lo:] & near
                first[True] = lo
        plans = {}  # by layer kind, as the masks: the row-invariant attention's calls (attention.py)
        if self.row_invariant and not seg.prefill and attention.applies(self.dtype, self.device):
            pos = positions.tolist()
            plans = {local: attention.plan(start, pos, mask, G, self.dtype, self.device, cache.k.shape[2],
                                           window=cfg.sliding_window if local else None) for local in masks}
        # Query heads that share a kv head are stacked along the query axis: [Hkv, G*N, D] against
        # [Hkv, S, D], so the cache is never expanded; the mask repeats per head. It is made additive
        # once here, where the flash kernel would convert a bool mask in every layer (and not at all
        # for the layers the row-invariant attention serves).
        masks = {k: None if m is None or plans.get(k) is not None else
                 torch.zeros(m.shape, dtype=self.dtype, device=self.device).masked_fill_(~m, float("-inf"))
                 .expand(G, *m.shape).reshape(G * m.shape[0], m.shape[1])
                 for k, m in masks.items()}
        return _Prepared(start, n, rope, masks, first, plans)

    def _run(self, segs: list["Segment"], skip: SkipSet | None) -> list[ForwardOutput]:
        cfg = self.cfg
        H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        G = H // Hkv
        preps = [self._prepare(s) for s in segs]
        one = len(segs) == 1
        bounds, at = [], 0  # each segment's rows [a, b) in the batch
        for p in preps:
            bounds.append((at, at + p.n))
            at += p.n
        if one:
            rope = preps[0].rope
            x = self.embed_tokens(segs[0].tokens)  # [N, hidden]
        else:
            rope = {k: tuple(torch.cat([p.rope[k][j] for p in preps]) for j in range(2)) for k in preps[0].rope}
            x = self.embed_tokens(torch.cat([s.tokens.to(self.device) for s in segs]))
        wanted = set().union(*(s.hidden_layers for s in segs))
        layer_hidden = {}
        for i, layer in enumerate(self.layers):
            if skip is None or not skip.attn[i]:
                local = cfg.is_sliding(i)
                q, k, v = layer.qkv_heads(x, *rope[local])  # [H, N, D], [Hkv, N, D], [Hkv, N, D]
                outs = []
                for seg, p, (a, b) in zip(segs, preps, bounds):
                    qs, ks, vs = (q, k, v) if one else (q[:, a:b], k[:, a:b], v[:, a:b])
                    cache, start, n = seg.cache, p.start, p.n
                    end = start + n
                    cache.k[i, :, start:end] = ks
                    cache.v[i, :, start:end] = vs
                    lo = p.first[local]
                    plan = p.plans.get(local)
                    if plan is not None:  # a decode step in bf16: row-invariant attention (attention.py)
                        att = attention.decode_attention(qs.reshape(Hkv, G, n, D), ks, vs, cache.k[i], cache.v[i], start,
                                                         plan, cfg.attn_scale or D ** -0.5)
                    else:
                        # With a batch axis, torch (2.13) picks its CPU flash kernel for long prompts, not the
                        # math path that builds every score (2000 tokens: 105 ms a layer, not 265).
                        att = F.scaled_dot_product_attention(qs.reshape(1, Hkv, G * n, D), cache.k[None, i, :, lo:end],
                                                             cache.v[None, i, :, lo:end], attn_mask=p.masks[local],
                                                             scale=cfg.attn_scale)
                    outs.append(att.reshape(H, n, D).transpose(0, 1).reshape(n, H * D))
                x = layer.attn_residual(x, outs[0] if one else torch.cat(outs))
            if skip is None or not skip.mlp[i]:
                x = layer.mlp_residual(x)
            if i in wanted:
                layer_hidden[i] = x
        x = rms_norm(x, self.norm, cfg.rms_norm_eps)
        head = self.head_weight() if self.fast_head is None else self.fast_head
        if one:
            s = segs[0]
            rows = x if s.logits_at is None else x[s.logits_at]
            logits = linear(rows, head).float() if rows.shape[0] else None
            return [ForwardOutput(logits=logits, final_hidden=x if s.final_hidden else None,
                                  layer_hidden={i: layer_hidden[i] for i in s.hidden_layers})]
        picked = [x[a:b] if s.logits_at is None else x[a:b][s.logits_at] for s, (a, b) in zip(segs, bounds)]
        sizes = [r.shape[0] for r in picked]
        all_logits = linear(torch.cat(picked), head).float() if sum(sizes) else None
        out, at = [], 0
        for s, (a, b), m in zip(segs, bounds, sizes):
            out.append(ForwardOutput(logits=all_logits[at:at + m] if m else None,
                                     final_hidden=x[a:b] if s.final_hidden else None,
                                     layer_hidden={i: layer_hidden[i][a:b] for i in s.hidden_layers}))
            at += m
        return out


@dataclass
class Segment:
    """One sequence's part of a `Decoder.forward_many`: `forward`'s arguments for that sequence."""

    tokens: torch.Tensor  # [N] long
    positions: torch.Tensor  # [N] long
    cache: KVCache
    start: int | None = None
    tree_mask: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    logits_at: slice | torch.Tensor | None = None
    final_hidden: bool = False
    hidden_layers: tuple[int, ...] = ()
    prefill: bool = False


def run_segment(model, seg: Segment) -> ForwardOutput:
    """`model.forward` over one segment (any backend's decoder)."""
    kw = {"start": seg.start} if seg.start is not None else {}
    if seg.tree_mask is not None:
        kw["tree_mask"] = seg.tree_mask
    return model(seg.tokens, seg.positions, seg.cache, logits_at=seg.logits_at, final_hidden=seg.final_hidden,
                 hidden_layers=seg.hidden_layers, prefill=seg.prefill, **kw)


@dataclass
class _Prepared:
    start: int
    n: int
    rope: dict
    masks: dict
    first: dict
    plans: dict
