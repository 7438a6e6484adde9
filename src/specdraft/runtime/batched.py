"""Batched greedy generation with the `Decoder`'s weights, for building training data.

Decoding for users is batch 1 (model.py); building self-distillation data wants throughput: many
prompts answered at once. Prompts are left-padded to one width; each row has its own positions
(starting at 0 at its first real token) and a key mask that hides its padding. The KV cache is
preallocated for the whole batch, so a step costs one [B, 1] forward and no copies (transformers'
`generate` on a CPU spends most of its time elsewhere: about 4x slower here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import Decoder, apply_rope, rms_norm


def _forward(model: Decoder, tokens: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor,
             v_cache: torch.Tensor, start: int, mask: torch.Tensor) -> torch.Tensor:
    """tokens, positions [B, n]; writes slots [start, start + n); mask [B, n, start + n] bool.
    Returns the final-norm hidden state of the last row [B, hidden]."""
    cfg = model.cfg
    B, n = tokens.shape
    H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    G = H // Hkv
    end = start + n
    freqs = positions.float()[..., None] * model.inv_freq  # [B, n, D/2]
    emb = torch.cat((freqs, freqs), -1)[:, None]  # [B, 1, n, D]
    cos, sin = emb.cos().to(model.dtype), emb.sin().to(model.dtype)
    m = mask[:, None].repeat(1, 1, G, 1)  # [B, 1, G*n, T]: query heads sharing a kv head are stacked
    x = model.embed(tokens)
    for i, layer in enumerate(model.layers):
        h = rms_norm(x, layer.attn_norm, cfg.rms_norm_eps)
        q, k, v = layer.qkv(h).split((H * D, Hkv * D, Hkv * D), dim=-1)
        q = apply_rope(q.view(B, n, H, D).transpose(1, 2), cos, sin)  # [B, H, n, D]
        k_cache[i, :, :, start:end] = apply_rope(k.view(B, n, Hkv, D).transpose(1, 2), cos, sin)
        v_cache[i, :, :, start:end] = v.view(B, n, Hkv, D).transpose(1, 2)
        a = F.scaled_dot_product_attention(q.reshape(B, Hkv, G * n, D), k_cache[i, :, :, :end],
                                           v_cache[i, :, :, :end], attn_mask=m)
        x = x + layer.o(a.view(B, H, n, D).transpose(1, 2).reshape(B, n, H * D))
        h = rms_norm(x, layer.mlp_norm, cfg.rms_norm_eps)
        gate, up = layer.gate_up(h).chunk(2, dim=-1)
        x = x + layer.down(F.silu(gate) * up)
    return rms_norm(x[:, -1], model.norm, cfg.rms_norm_eps)


@torch.inference_mode()
def greedy_batch(model: Decoder, prompts: list[list[int]], max_new_tokens: int,
                 eos_ids: frozenset[int] = frozenset(), pad_id: int = 0) -> list[list[int]]:
    """Greedy continuations of every prompt (each cut after its first EOS, which is kept)."""
    dev = model.device
    B, P = len(prompts), max(map(len, prompts))
    pads = torch.tensor([P - len(p) for p in prompts], device=dev)
    ids = torch.full((B, P), pad_id, dtype=torch.long, device=dev)
    for r, p in enumerate(prompts):
        ids[r, P - len(p):] = torch.tensor(p, dtype=torch.long)
    T = P + max_new_tokens
    shape = (model.cfg.num_layers, B, model.cfg.num_kv_heads, T, model.cfg.head_dim)
    k_cache = torch.zeros(shape, dtype=model.dtype, device=dev)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.arange(T, device=dev)
    real = slots[None, :] >= pads[:, None]  # [B, T] slots that hold a real token of the row
    # Prefill: causal over real tokens; a padding row sees only itself (never an empty softmax).
    causal = slots[None, :P] <= slots[:P, None]  # [P, P]
    mask = (causal[None] & real[:, None, :P]) | torch.eye(P, dtype=torch.bool, device=dev)[None]
    positions = (slots[None, :P] - pads[:, None]).clamp(min=0)
    h = _forward(model, ids, positions, k_cache, v_cache, 0, mask)
    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=dev)
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
        h = _forward(model, tok[:, None], (P + s - pads)[:, None], k_cache, v_cache, P + s,
                     real[:, None, :P + s + 1])
    answers = []
    for row in out[:, :steps].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos_ids), len(row))
        answers.append(row[:cut])
    return answers
