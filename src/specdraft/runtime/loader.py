"""Build a `Decoder` from an HF-format directory (config.json + *.safetensors)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import SpecdraftError
from .config import ModelConfig
from .model import Decoder


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
    from . import packed

    if has_amx() or (packed.wanted() and torch.bfloat16 in packed.dtypes()):
        return torch.bfloat16
    if params is None or params > FLOAT32_MAX_PARAMS:
        return torch.bfloat16
    return torch.float32


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
