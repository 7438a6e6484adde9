"""Build a `Decoder` from an HF-format directory (config.json + *.safetensors)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import SpecdraftError
from .config import ModelConfig
from .model import Decoder


def count_params(path: Path) -> int | None:
    """The number of weights in a model directory's safetensors files (read from their headers),
    or None if they cannot be read."""
    try:
        n = 0
        for f in sorted(Path(path).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as h:
                n += sum(math.prod(h.get_slice(k).get_shape()) for k in h.keys())
        return n or None
    except (SafetensorError, OSError):
        return None


class _Checkpoint:
    """Tensors of a safetensors checkpoint, read one at a time and cast on the way in, so loading
    never holds more than the final model plus one tensor (a 1.5B fp32 file loads in bf16 within
    about its bf16 size)."""

    def __init__(self, path: Path, dtype: torch.dtype):
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise SpecdraftError(f"{path} has no *.safetensors weights")
        self.dtype = dtype
        self.where: dict[str, object] = {}
        try:
            for f in files:
                h = safe_open(str(f), framework="pt")
                self.where.update((k, h) for k in h.keys())
        except (SafetensorError, OSError) as e:
            raise SpecdraftError(f"cannot read weights in {path}: {e}") from None

    def _raw(self, name: str) -> torch.Tensor:
        try:
            h = self.where[name]
        except KeyError:
            raise SpecdraftError(f"checkpoint is missing tensor {name}") from None
        try:
            return h.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise SpecdraftError(f"cannot read tensor {name}: {e}") from None

    def take(self, name: str) -> torch.Tensor:
        return self._raw(name).to(self.dtype)

    def take_cat(self, names: list[str]) -> torch.Tensor:
        """The tensors `names`, concatenated along dim 0 in the loader's dtype: each converted
        straight into its rows of the result (no converted copy of each part first)."""
        parts = [self._raw(n) for n in names]
        out = torch.empty((sum(p.shape[0] for p in parts), *parts[0].shape[1:]), dtype=self.dtype)
        row = 0
        for n, p in zip(names, parts):
            if p.shape[1:] != out.shape[1:]:
                raise SpecdraftError(f"tensor {n} has shape {list(p.shape)}, unlike {names[0]}'s {list(parts[0].shape)}")
            out[row:row + p.shape[0]].copy_(p)
            row += p.shape[0]
        return out


def hf_to_ours(ckpt: _Checkpoint, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename HF tensors to ours, fusing q/k/v and gate/up into single matmuls. Gemma's norm
    weights are offsets from 1 (it normalises with 1 + w): the 1 is added here, in float32."""
    gemma = cfg.family == "gemma3_text"

    take = ckpt.take

    def norm(name: str) -> torch.Tensor:
        # Gemma's 1 + w stays float32 in any dtype (w itself rounded to the model's dtype first),
        # exactly what its RMSNorm multiplies by.
        w = ckpt.take(name)
        return w.float() + 1.0 if gemma else w

    out = {"embed.weight": take("model.embed_tokens.weight"), "norm": norm("model.norm.weight")}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        out[f"layers.{i}.attn_norm"] = norm(p + "input_layernorm.weight")
        if gemma:  # post_attention_layernorm is the attention output's norm there, not the MLP's input norm
            out[f"layers.{i}.attn_out_norm"] = norm(p + "post_attention_layernorm.weight")
            out[f"layers.{i}.mlp_norm"] = norm(p + "pre_feedforward_layernorm.weight")
            out[f"layers.{i}.mlp_out_norm"] = norm(p + "post_feedforward_layernorm.weight")
        else:
            out[f"layers.{i}.mlp_norm"] = take(p + "post_attention_layernorm.weight")
        if cfg.qk_norm:  # Gemma 3, Qwen3
            out[f"layers.{i}.q_norm"] = norm(a + "q_norm.weight")
            out[f"layers.{i}.k_norm"] = norm(a + "k_norm.weight")
        out[f"layers.{i}.qkv.weight"] = ckpt.take_cat([a + f"{x}_proj.weight" for x in "qkv"])
        if cfg.attention_bias:
            out[f"layers.{i}.qkv.bias"] = ckpt.take_cat([a + f"{x}_proj.bias" for x in "qkv"])
        out[f"layers.{i}.o.weight"] = take(a + "o_proj.weight")
        m = p + "mlp."
        out[f"layers.{i}.gate_up.weight"] = ckpt.take_cat([m + "gate_proj.weight", m + "up_proj.weight"])
        out[f"layers.{i}.down.weight"] = take(m + "down_proj.weight")
    return out


def load_decoder(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Decoder:
    path = Path(path)
    cfg = ModelConfig.from_dir(path)
    state = hf_to_ours(_Checkpoint(path, dtype), cfg)
    with torch.device("meta"):
        model = Decoder(cfg)
    model.load_state_dict(state, assign=True, strict=True)
    model.init_rope()  # buffers built on "meta" hold no values
    return model.to(device).eval().requires_grad_(False)
