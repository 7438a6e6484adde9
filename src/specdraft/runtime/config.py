"""Model configuration, read from a checkpoint's config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecdraftError

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")


def check_family(family: str, where: str) -> None:
    if family not in SUPPORTED_FAMILIES:
        raise SpecdraftError(
            f"{where}: model family {family!r} is not supported by the specdraft runtime "
            f"(supported: {', '.join(SUPPORTED_FAMILIES)})"
        )


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling; `None` on the config means plain RoPE. `linear` divides every
    frequency by `factor` (Gemma 3's global layers); `llama3` slows the long wavelengths only."""

    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 1.0
    original_max_position_embeddings: int = 0
    kind: str = "llama3"


def _rope(params: dict, where: str) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) of one rope-parameters dict (transformers 4.x `rope_scaling` or 5.x `rope_parameters`)."""
    kind = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", 10000.0))
    if kind in ("default", None):
        return theta, None
    if kind == "llama3":
        return theta, RopeScaling(float(params["factor"]), float(params["low_freq_factor"]),
                                  float(params["high_freq_factor"]), int(params["original_max_position_embeddings"]))
    if kind == "linear":
        return theta, RopeScaling(float(params["factor"]), kind="linear")
    raise SpecdraftError(f"{where}: rope scaling {kind!r} is not supported")


def _sliding(d: dict, layers: int, default: list[bool]) -> tuple[bool, ...]:
    """Which layers slide: the config's `layer_types` if it lists them, else `default`."""
    types = d.get("layer_types")
    if types is None:
        return tuple(default)
    if len(types) != layers:
        raise SpecdraftError(f"config.json: {len(types)} layer_types for {layers} layers")
    return tuple(t == "sliding_attention" for t in types)


def _sliding_layers(d: dict, family: str, layers: int) -> tuple[int, tuple[bool, ...]]:
    """(window, which layers slide) of a llama-layout config, as transformers reads it: Mistral's
    `sliding_window` covers every layer; Qwen2 / Qwen3 slide only with `use_sliding_window`, on the
    layers `layer_types` marks (older configs: the layers from `max_window_layers` on)."""
    window = d.get("sliding_window")
    if family == "mistral" and window:
        return int(window), (True,) * layers
    if family in ("qwen2", "qwen3") and d.get("use_sliding_window") and window:
        return int(window), _sliding(d, layers, [i >= d.get("max_window_layers", layers) for i in range(layers)])
    return 0, ()


@dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # bias on q, k, v projections (qwen2: yes)
    rope_scaling: RopeScaling | None = None
    # Gemma 3 (gemma3_text; Qwen3 has its q/k norms, Mistral and Qwen2 / Qwen3 may have sliding
    # windows); the defaults are the llama / qwen2 / mistral layout.
    activation: str = "silu"  # of the gated MLP: "silu" or "gelu_tanh"
    embed_scale: float = 1.0  # the token embeddings are multiplied by this (Gemma: sqrt(hidden))
    attn_scale: float | None = None  # softmax scale of attention; None = 1/sqrt(head_dim)
    qk_norm: bool = False  # RMSNorm over each head's queries and keys, before RoPE
    sandwich_norms: bool = False  # RMSNorm also on each block's output, before the residual add
    sliding_window: int = 0  # > 0: the layers marked in `sliding_layers` see only this many positions
    sliding_layers: tuple[bool, ...] = ()
    rope_local_theta: float | None = None  # RoPE base of the sliding layers, if not rope_theta (no scaling)

    @property
    def has_sliding(self) -> bool:
        return self.sliding_window > 0 and any(self.sliding_layers)

    def is_sliding(self, layer: int) -> bool:
        return self.has_sliding and self.sliding_layers[layer]

    @classmethod
    def from_hf(cls, d: dict) -> "ModelConfig":
        family = d.get("model_type", "?")
        check_family(family, "config.json")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        gemma = family == "gemma3_text"
        local_theta = None
        if gemma and "full_attention" in rope:  # transformers 5.x: one dict per layer type
            theta, scaling = _rope(rope["full_attention"], "config.json")
            local = rope.get("sliding_attention")
            if local:
                local_theta, local_scaling = _rope(local, "config.json")
                if local_scaling is not None:
                    raise SpecdraftError("config.json: rope scaling on the sliding-window layers is not supported")
        else:
            theta, scaling = _rope({"rope_theta": d.get("rope_theta", 10000.0), **rope}, "config.json")
            if gemma:
                local_theta = float(d.get("rope_local_base_freq", 10000.0))
        n_heads = d["num_attention_heads"]
        layers = d["num_hidden_layers"]
        extra = {}
        if gemma:
            for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
                if d.get(cap) is not None:
                    raise SpecdraftError(f"config.json: {cap} is not supported")
            if d.get("use_bidirectional_attention"):
                raise SpecdraftError("config.json: bidirectional attention is not supported")
            act = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
            if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
                raise SpecdraftError(f"config.json: activation {act!r} is not supported")
            sliding = _sliding(d, layers, [(i + 1) % d.get("sliding_window_pattern", 6) != 0 for i in range(layers)])
            extra = dict(activation="gelu_tanh", embed_scale=float(d["hidden_size"]) ** 0.5,
                         attn_scale=float(d.get("query_pre_attn_scalar", d.get("head_dim", 256))) ** -0.5,
                         qk_norm=True, sandwich_norms=True, sliding_window=int(d.get("sliding_window") or 0),
                         sliding_layers=sliding, rope_local_theta=local_theta)
        else:
            if d.get("hidden_act", "silu") != "silu":
                raise SpecdraftError(f"config.json: activation {d.get('hidden_act')!r} is not supported")
            if d.get("mlp_bias"):
                raise SpecdraftError("config.json: biases on the MLP (mlp_bias) are not supported")
            if d.get("attention_bias") and family in ("llama", "qwen3"):  # there o_proj has one too
                raise SpecdraftError(f"config.json: attention_bias on a {family} model (a biased output "
                                     "projection) is not supported")
            window, sliding = _sliding_layers(d, family, layers)
            extra = dict(qk_norm=family == "qwen3", sliding_window=window, sliding_layers=sliding)
        return cls(
            family=family,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=layers,
            num_heads=n_heads,
            num_kv_heads=d.get("num_key_value_heads") or n_heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // n_heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", gemma)),
            attention_bias=bool(d.get("attention_bias", family == "qwen2")),
            rope_scaling=scaling,
            **extra,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> "ModelConfig":
        p = Path(path) / "config.json"
        try:
            return cls.from_hf(json.loads(p.read_text()))
        except (OSError, ValueError, KeyError) as e:
            raise SpecdraftError(f"cannot read model config {p}: {e}") from None
