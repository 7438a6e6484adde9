"""Batched greedy generation with the `Decoder`'s weights, for building training data.

Decoding for users is batch 1 (model.py); building self-distillation data wants throughput: many
prompts answered at once. Each prompt is prefilled alone into its row of a preallocated batch KV
cache, right-aligned (left padding); each row keeps its own positions (0 at its first real token)
and a key mask hides the padding, so every decode step is one [B, 1] forward with no copies. The
hidden states of the decode steps are the ones training needs, so no second teacher-forced pass
is run (docs/BENCHMARKS.md: 1.8x faster than transformers' `generate` plus a second pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import Decoder, rms_norm


def _forward(model: Decoder, tokens: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor,
             v_cache: torch.Tensor, start: int, mask: torch.Tensor, rows: int = 1,
             layers: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """tokens, positions [B, n]; writes slots [start, start + n); mask [B, n, start + n] bool.
    Returns the final-norm hidden states of the last `rows` rows [B, rows, hidden] and, with
    `layers`, their residual states after those layers [B, rows, len(layers), hidden]."""
    cfg = model.cfg
    B, n = tokens.shape
    H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    G = H // Hkv
    end = start + n
    kinds = (False, True) if cfg.has_sliding else (False,)  # full attention, sliding window (Gemma 3)
    rope = {local: tuple(t[:, None] for t in model.rope(positions, local)) for local in kinds}  # [B, 1, n, D]
    masks = {local: mask for local in kinds}
    if cfg.has_sliding and end > cfg.sliding_window:
        # Row r's slot j holds position j - pad_r, and pad_r = slot - position of any of its new rows.
        pad = start - positions[:, :1]  # [B, 1]
        key_pos = torch.arange(end, device=mask.device)[None, :] - pad  # [B, T]
        masks[True] = mask & (positions[:, :, None] - key_pos[:, None, :] < cfg.sliding_window)
    # [B, 1, G*n, T]: query heads sharing a kv head are stacked
    masks = {k: m[:, None].repeat(1, 1, G, 1) for k, m in masks.items()}
    x = model.embed_tokens(tokens)
    taps = {}
    for i, layer in enumerate(model.layers):
        local = cfg.is_sliding(i)
        q, k, v = layer.qkv_heads(x, *rope[local])  # [B, H, n, D], [B, Hkv, n, D], [B, Hkv, n, D]
        k_cache[i, :, :, start:end] = k
        v_cache[i, :, :, start:end] = v
        a = F.scaled_dot_product_attention(q.reshape(B, Hkv, G * n, D), k_cache[i, :, :, :end],
                                           v_cache[i, :, :, :end], attn_mask=masks[local], scale=cfg.attn_scale)
        x = layer.mlp_residual(layer.attn_residual(x, a.view(B, H, n, D).transpose(1, 2).reshape(B, n, H * D)))
        if i in layers:
            taps[i] = x[:, -rows:]
    return (rms_norm(x[:, -rows:], model.norm, cfg.rms_norm_eps),
            torch.stack([taps[i] for i in layers], 2) if layers else None)


@dataclass
class BatchOutput:
    answers: list[list[int]]  # greedy continuation of each prompt, cut after its first EOS (kept)
    # [k_r + len(answer) - 1, hidden] final-norm states of the last k_r = min(keep, len(prompt))
    # prompt positions, then of every answer position but the last: row j predicts the token after it
    hidden: list[torch.Tensor]
    prompt_argmax: list[list[int]]  # the argmax at those k_r prompt positions
    layers: list[torch.Tensor]  # with `layers`: [rows of `hidden`, len(layers), hidden] residual states


@torch.inference_mode()
def greedy_batch(model: Decoder, prompts: list[list[int]], max_new_tokens: int,
                 eos_ids: frozenset[int] = frozenset(), pad_id: int = 0, keep: int = 0,
                 layers: tuple[int, ...] = ()) -> BatchOutput:
    """Greedy continuations of every prompt, and (with `keep`) the hidden states training needs:
    the final ones and (with `layers`) the residual states after those layers.

    Each prompt is prefilled on its own (no compute spent on padding), straight into its row of
    the batch's cache; the answers are then decoded for all rows at once."""
    dev = model.device
    B, P = len(prompts), max(map(len, prompts))
    pads = torch.tensor([P - len(p) for p in prompts], device=dev)
    T = P + max_new_tokens
    shape = (model.cfg.num_layers, B, model.cfg.num_kv_heads, T, model.cfg.head_dim)
    k_cache = torch.zeros(shape, dtype=model.dtype, device=dev)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.arange(T, device=dev)
    real = slots[None, :] >= pads[:, None]  # [B, T] slots that hold a real token of the row
    last = []
    prompt_h: list[torch.Tensor] = []
    prompt_l: list[torch.Tensor] = []
    prompt_argmax: list[list[int]] = []
    for r, p in enumerate(prompts):
        n, pad = len(p), P - len(p)
        mask = torch.cat((torch.zeros(n, pad, dtype=torch.bool, device=dev),
                          torch.ones(n, n, dtype=torch.bool, device=dev).tril()), 1)[None]
        x, lx = _forward(model, torch.tensor([p], device=dev), torch.arange(n, device=dev)[None],
                         k_cache[:, r:r + 1], v_cache[:, r:r + 1], pad, mask, rows=max(1, min(keep, n)),
                         layers=layers if keep else ())
        x = x[0]
        last.append(x[-1])
        if keep:
            prompt_h.append(x[-min(keep, n):])
            if layers:
                prompt_l.append(lx[0, -min(keep, n):])
            prompt_argmax.append(F.linear(prompt_h[-1], model.head_weight()).argmax(-1).tolist())
    h = torch.stack(last)
    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=dev)
    states, layer_states = [], []
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=dev)
    steps = 0
    for s in range(max_new_tokens):
        tok = F.linear(h, model.head_weight()).argmax(-1)
        out[:, s] = tok
        steps = s + 1
        done |= torch.isin(tok, eos)
        if bool(done.all()) or s + 1 == max_new_tokens:
            break
        h, lh = _forward(model, tok[:, None], (P + s - pads)[:, None], k_cache, v_cache, P + s,
                         real[:, None, :P + s + 1], layers=layers if keep else ())
        h = h[:, -1]
        if keep:
            states.append(h)
            if layers:
                layer_states.append(lh[:, -1])
    answers = []
    for row in out[:, :steps].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos_ids), len(row))
        answers.append(row[:cut])
    def per_answer(prompt_rows: list[torch.Tensor], step_rows: list[torch.Tensor], shape: tuple[int, ...]) -> list[torch.Tensor]:
        """Each row's prompt states, then its decode steps' states but the last answer token's."""
        dec = torch.stack(step_rows, 1) if step_rows else h.new_zeros(B, 0, *shape)  # [B, steps - 1, *shape]
        return [torch.cat((p, dec[r, :len(a) - 1])) for r, (p, a) in enumerate(zip(prompt_rows, answers))]

    d = h.shape[-1]
    hidden = per_answer(prompt_h, states, (d,)) if keep else []
    layer_hidden = per_answer(prompt_l, layer_states, (len(layers), d)) if keep and layers else []
    return BatchOutput(answers, hidden, prompt_argmax, layer_hidden)
