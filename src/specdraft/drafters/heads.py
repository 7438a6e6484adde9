"""Trained draft modules on the target's final hidden states: the CTC draft layer and Medusa heads.

Both reuse the base model's frozen embedding and LM head (passed in at call time, never stored),
so a checkpoint holds only the trained parameters: a few MB. Checkpoints are HF-style directories,
`config.json` + `model.safetensors`; the config names the base model's hidden size and vocabulary,
and loading refuses a checkpoint made for another base.

CTC draft layer, for the position t whose hidden state h_t produced the root token r = x_{t+1}:
  context c_j = W_in [emb(x_{j+1}) ; h_j] + rel[t - j]  for the last `window` positions j <= t
  frames  f_k = W_in [emb(r) ; h_t] + frame[k]           for k < frames
  one pre-norm transformer layer: frames attend to the context and to each other; then a trained
  RMSNorm, and logits [frozen LM head ; blank] over V + 1 symbols. With `layers` > 1, more such
  layers follow, each updating the frames only: they attend to the same context entries c_j
  (through their own projections), and their MLPs run on the frames' rows alone.
The frames are decoded with CTC (blanks removed, repeats merged) into the tokens after r.
With `feature_layers` (as EAGLE-3 fuses low, middle and high layers), c_j also adds
W_layers [norm(l_j^a) ; norm(l_j^b) ; ...], the base's residual states after those layers at j.

Both draft over a reduced vocabulary (the most frequent tokens of the training data, listed in the
checkpoint's `vocab` buffer), as EAGLE-3 does: the LM-head product is the dominant cost of a small
drafter, and a token outside it could only be drafted wrongly anyway; verification is unaffected.

Medusa head k (k = 1..K): ResBlock (x + SiLU(W x), W zero-initialised) on h_t, then the frozen LM
head; it predicts the token k steps after the root (x_{t+1+k}).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import SpecdraftError
from ..paths import atomic_dir, read_json


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@dataclass(frozen=True)
class HeadConfig:
    kind: str  # "ctc" | "medusa"
    base_model: str
    hidden_size: int
    vocab_size: int
    frames: int = 6  # ctc: frames per draft; medusa: number of heads
    window: int = 16  # ctc: context positions the frames attend to
    num_heads: int = 9  # ctc: attention heads
    intermediate_size: int = 1536  # ctc: MLP width
    draft_vocab: int = 0  # size of the drafting vocabulary (the buffer `vocab` lists its token ids); 0 = all
    feature_layers: tuple[int, ...] = ()  # ctc: also read the base's residual states after these layers
    layers: int = 1  # ctc: transformer layers; layers after the first update only the frames

    def __post_init__(self):
        object.__setattr__(self, "feature_layers", tuple(int(i) for i in self.feature_layers))

    def to_json(self) -> dict:
        return {"specdraft_head": asdict(self)}

    @classmethod
    def from_json(cls, d: dict, where: str) -> "HeadConfig":
        try:
            return cls(**d["specdraft_head"])
        except (KeyError, TypeError, ValueError) as e:
            raise SpecdraftError(f"{where}: not a specdraft drafter config ({e})") from None


def _block_params(m: torch.nn.Module, d: int, intermediate: int) -> None:
    """Give `m` the weights of one pre-norm transformer layer (attention, then a gated MLP)."""
    m.attn_norm = torch.nn.Parameter(torch.ones(d))
    m.qkv = torch.nn.Linear(d, 3 * d, bias=False)
    m.o = torch.nn.Linear(d, d, bias=False)
    m.mlp_norm = torch.nn.Parameter(torch.ones(d))
    m.gate_up = torch.nn.Linear(d, 2 * intermediate, bias=False)
    m.down = torch.nn.Linear(intermediate, d, bias=False)


def _frame_layer(m: torch.nn.Module, c: torch.Tensor, frames: torch.Tensor, keymask: torch.Tensor,
                 heads: int) -> torch.Tensor:
    """One layer with `m`'s weights whose queries are the frames only: c [B, W, d] context entries,
    frames [B, F, d], keymask [B, W + F] -> frames [B, F, d]. The frames attend to the context
    and to each other, then the MLP runs on the frames."""
    B, W, d = c.shape
    nf = frames.shape[1]
    h = _rms(torch.cat((c, frames), 1), m.attn_norm)
    q, k, v = m.qkv(h).view(B, W + nf, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q[:, :, W:], k, v, attn_mask=keymask[:, None, None, :])
    y = frames + m.o(a.transpose(1, 2).reshape(B, nf, d))
    gate, up = m.gate_up(_rms(y, m.mlp_norm)).chunk(2, -1)
    return y + m.down(F.silu(gate) * up)


class FrameBlock(torch.nn.Module):
    """The weights of a CTC draft module's layers after the first (`_frame_layer` runs them)."""

    def __init__(self, d: int, intermediate: int):
        super().__init__()
        _block_params(self, d, intermediate)


class CTCDraftLayer(torch.nn.Module):
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        if cfg.layers < 1:
            raise SpecdraftError(f"a CTC draft module needs at least one layer, got {cfg.layers}")
        self.cfg = cfg
        d = cfg.hidden_size
        self.w_in = torch.nn.Linear(2 * d, d, bias=False)
        self.rel = torch.nn.Parameter(torch.zeros(cfg.window, d))
        self.frame = torch.nn.Parameter(torch.randn(cfg.frames, d) * 0.02)
        # the first layer's weights are the module's own, made after the above (checkpoints of one
        # layer keep their tensor names, and a seed its initial draws)
        _block_params(self, d, cfg.intermediate_size)
        self.more = torch.nn.ModuleList(FrameBlock(d, cfg.intermediate_size) for _ in range(cfg.layers - 1))
        self.norm = torch.nn.Parameter(torch.ones(d))
        self.blank = torch.nn.Parameter(torch.zeros(d))
        self.blank_bias = torch.nn.Parameter(torch.zeros(()))
        self.register_buffer("vocab", torch.arange(cfg.draft_vocab or cfg.vocab_size))
        if cfg.feature_layers:  # zero-initialised: training starts from the final-state-only layer
            k = len(cfg.feature_layers)
            self.layer_norm = torch.nn.Parameter(torch.ones(k, d))
            self.w_layers = torch.nn.Linear(k * d, d, bias=False)
            torch.nn.init.zeros_(self.w_layers.weight)

    def features(self, ctx_hidden: torch.Tensor, ctx_next: torch.Tensor, valid: torch.Tensor,
                 embed: torch.Tensor, ctx_layers: torch.Tensor | None = None) -> torch.Tensor:
        """Frame features [B, F, d].

        ctx_hidden [B, W, d]: h_j for the window, oldest first, the last one being h_t;
        ctx_next [B, W]: x_{j+1} (for the last row: the root token); valid [B, W] bool;
        ctx_layers [B, W, k, d]: the residual states after `cfg.feature_layers` (only then).
        """
        B, W, d = ctx_hidden.shape
        c = self.w_in(torch.cat((F.embedding(ctx_next, embed).to(ctx_hidden.dtype), ctx_hidden), -1))
        if self.cfg.feature_layers:
            if ctx_layers is None:
                raise SpecdraftError("this CTC layer reads the base's hidden states after layers "
                                     f"{list(self.cfg.feature_layers)}, and none were given")
            c = c + self.w_layers(_rms(ctx_layers.to(c.dtype), self.layer_norm.to(c.dtype)).flatten(-2))
        c = c + self.rel[:W].flip(0).to(c.dtype)  # rel[0] belongs to the newest position
        frames = c[:, -1:, :] + self.frame.to(c.dtype)  # [B, F, d]
        keymask = torch.cat((valid, torch.ones(B, self.cfg.frames, dtype=torch.bool, device=valid.device)), 1)
        y = _frame_layer(self, c, frames, keymask, self.cfg.num_heads)
        for block in self.more:
            y = _frame_layer(block, c, y, keymask, self.cfg.num_heads)
        return _rms(y, self.norm)

    def logits(self, feats: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """[..., Vd + 1] logits: the LM head's rows of the draft vocabulary (`head` is already
        head[vocab], see `sub_head`), then the blank's (last)."""
        lm = head_product(feats, head)
        blank = (feats @ self.blank.to(feats.dtype) + self.blank_bias.to(feats.dtype))[..., None]
        return torch.cat((lm, blank), -1)


class MedusaHeads(torch.nn.Module):
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.res = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(cfg.frames))
        for lin in self.res:  # identity at start: every head begins as the base LM head
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
        self.register_buffer("vocab", torch.arange(cfg.draft_vocab or cfg.vocab_size))

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, d] final hidden states -> [B, K, d]."""
        return torch.stack([hidden + F.silu(lin(hidden)) for lin in self.res], 1)

    def logits(self, feats: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        return head_product(feats, head)


def head_product(feats: torch.Tensor, head) -> torch.Tensor:
    """feats [..., d] @ head^T: `head` is the draft vocabulary's LM-head rows, dense or packed
    for oneDNN (`pack`)."""
    if isinstance(head, torch.Tensor):
        return F.linear(feats, head.to(feats.dtype))
    return head.mm(feats.reshape(-1, feats.shape[-1])).view(*feats.shape[:-1], head.shape[0])


def sub_head(module: torch.nn.Module, head: torch.Tensor) -> torch.Tensor:
    """The base LM head's rows for the module's draft vocabulary (computed once, not per step)."""
    return head[module.vocab.to(head.device)].contiguous()


def pack(module: torch.nn.Module, head: torch.Tensor):
    """Pack a loaded drafter's products and its draft-vocabulary head rows for oneDNN, in place,
    as `LLM` packs its target on a CPU (runtime/packed.py). A drafter runs a few rows per
    step (the CTC layer 6 frames over a 48-position window), where MKL's product is far from its
    speed: on SmolLM2's CTC layer the 6-row head product takes 2.2 ms dense and 0.3 ms packed
    (docs/archive/benchmarks-history.md). Returns the head to give `logits`: packed, or `head` itself
    where packing is not available (other dtypes and devices, or a module not of the head's dtype),
    the module then left as it is."""
    from ..runtime.packed import PackedWeight, pack_linears, packable

    weights = [m.weight for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not (packable(head) and all(packable(w) and w.dtype == head.dtype for w in weights)):
        return head
    pack_linears(module)
    return PackedWeight(head)


def make_module(cfg: HeadConfig) -> torch.nn.Module:
    if cfg.kind == "ctc":
        return CTCDraftLayer(cfg)
    if cfg.kind == "medusa":
        return MedusaHeads(cfg)
    raise SpecdraftError(f"unknown drafter kind {cfg.kind!r} (ctc or medusa)")


def save_module(module: torch.nn.Module, out: Path, extra: dict | None = None, dtype=torch.bfloat16) -> None:
    """config.json + model.safetensors (bf16 by default: half the size, the precision the drafter
    runs at), written to a temp dir and renamed."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous()
                   for k, v in module.state_dict().items()}
        (tmp / "model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))
        (tmp / "config.json").write_text(json.dumps({**module.cfg.to_json(), **(extra or {})}, indent=2))


def load_module(path: Path, hidden_size: int, vocab_size: int, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu", kind: str | None = None) -> tuple[torch.nn.Module, dict]:
    """Load a checkpoint made for a base with this hidden size and vocabulary (and of this kind)."""
    path = Path(path)
    raw = read_json(path / "config.json", f"{path} is not a drafter checkpoint (no config.json)")
    cfg = HeadConfig.from_json(raw, str(path / "config.json"))
    if kind is not None and cfg.kind != kind:
        raise SpecdraftError(f"{path} holds a {cfg.kind} drafter, not a {kind} one")
    if (cfg.hidden_size, cfg.vocab_size) != (hidden_size, vocab_size):
        raise SpecdraftError(
            f"{path} was trained for {cfg.base_model} (hidden {cfg.hidden_size}, vocabulary {cfg.vocab_size}); "
            f"this model has hidden {hidden_size}, vocabulary {vocab_size}: train one for it with `specdraft train`")
    try:
        state = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise SpecdraftError(f"cannot read {path}/model.safetensors: {e}") from None
    module = make_module(cfg)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise SpecdraftError(f"{path}/model.safetensors does not match its config: {str(e).splitlines()[0]}") from None
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise SpecdraftError(f"{path}/model.safetensors holds non-finite weights")
    if module.vocab.numel() and not (0 <= int(module.vocab.min()) and int(module.vocab.max()) < vocab_size):
        raise SpecdraftError(f"{path}/model.safetensors lists draft-vocabulary ids outside the model's vocabulary")
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False), raw


def log_softmax_f32(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), -1)


def init_from_base(module: torch.nn.Module, final_norm: torch.Tensor) -> None:
    """Start the CTC layer's output norm at the base model's final norm."""
    if isinstance(module, CTCDraftLayer):
        with torch.no_grad():
            module.norm.copy_(final_norm.float())
            torch.nn.init.normal_(module.w_in.weight, std=1 / math.sqrt(2 * module.cfg.hidden_size))
