"""An autoregressive feature-level head in the EAGLE-3 layout: one transformer layer over the
target's hidden states, drafting a token tree step by step.

At position p its input is the pair (embedding of token p+1, g_p): g_p is `fc` of the target's
residual states entering three of its layers (a low, a middle and a high one, EAGLE-3's
`eagle_aux_hidden_state_layer_ids`) for a committed position, and the head's own pre-norm output
of the step before for a drafted one. The layer normalises both halves, concatenates them into
its attention's q/k/v projections (so the projections read 2 x hidden), adds the attention's
output to g_p, then a gated MLP; its final norm and LM head (over a draft vocabulary) give the
next token. It keeps a KV cache of its own over every committed position, as llama.cpp's
`draft-eagle3` does.

Saved as the EAGLE-3 checkpoints that llama.cpp's `convert_hf_to_gguf.py --target-model-dir` and
vLLM read: config.json with `architectures: ["LlamaForCausalLMEagle3"]`, `draft_vocab_size`,
`eagle_aux_hidden_state_layer_ids`, and tensors `fc`, `midlayer.*`, `norm`, `lm_head`, `d2t`
(draft id -> target id offset), `t2d` (target ids in the draft vocabulary); no token embeddings:
the target's are used.

Layer ids are EAGLE-3's: the residual stream *entering* target layer i, which is specdraft's
state *after* layer i - 1 (`Needs.hidden_layers`). The default ids are EAGLE-3's, [2, L/2, L-3].

Long because the head, its checkpoint layout and its drafter are one unit: the layout is the
module's, and the drafter runs the module's pieces around its own KV cache.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import SpecdraftError
from ..paths import atomic_dir
from ..verify.tree import Draft
from .base import Drafter, Needs, StepContext
from .context import DraftContext

ARCH = "LlamaForCausalLMEagle3"


def default_layer_ids(num_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's choice of target layers: a low, the middle and a high one."""
    return (2, num_layers // 2, num_layers - 3)


@dataclass(frozen=True)
class Eagle3Config:
    base_model: str
    hidden_size: int  # the target's, and the head's
    vocab_size: int  # the target's vocabulary
    draft_vocab: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    layer_ids: tuple[int, ...]  # EAGLE-3's ids: the residual stream entering these target layers
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    window: int = 48  # training: positions of context each sample sees (decoding sees them all)
    kind: str = "eagle3"

    def __post_init__(self):
        object.__setattr__(self, "layer_ids", tuple(int(i) for i in self.layer_ids))

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """The target layers after which specdraft records the states the head reads."""
        return tuple(i - 1 for i in self.layer_ids)

    @classmethod
    def for_target(cls, base_model: str, cfg, draft_vocab: int, layer_ids=None, intermediate_size: int | None = None,
                   window: int = 48) -> "Eagle3Config":
        """A head for a target of ModelConfig `cfg`: its hidden size, attention shape and RoPE."""
        ids = tuple(layer_ids) if layer_ids else default_layer_ids(cfg.num_layers)
        if len(ids) != 3 or not all(1 <= i < cfg.num_layers for i in ids):
            raise SpecdraftError(f"an EAGLE-3 head reads three target layers among 1..{cfg.num_layers - 1}, got {list(ids)}")
        return cls(base_model=base_model, hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size,
                   draft_vocab=draft_vocab, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                   head_dim=cfg.head_dim, intermediate_size=intermediate_size or cfg.intermediate_size,
                   layer_ids=ids, rope_theta=float(cfg.rope_theta), rms_norm_eps=float(cfg.rms_norm_eps),
                   max_position_embeddings=int(cfg.max_position_embeddings), window=window)

    def to_json(self) -> dict:
        """The EAGLE-3 config.json (what llama.cpp's converter and vLLM read), with specdraft's own
        settings under `specdraft_head`."""
        return {"architectures": [ARCH], "model_type": "llama", "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size, "num_attention_heads": self.num_heads,
                "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim, "num_hidden_layers": 1,
                "vocab_size": self.vocab_size, "draft_vocab_size": self.draft_vocab, "rms_norm_eps": self.rms_norm_eps,
                "rope_theta": self.rope_theta, "max_position_embeddings": self.max_position_embeddings,
                "hidden_act": "silu", "tie_word_embeddings": False, "target_hidden_size": self.hidden_size,
                "eagle_aux_hidden_state_layer_ids": list(self.layer_ids), "torch_dtype": "bfloat16",
                "specdraft_head": asdict(self)}

    @classmethod
    def from_json(cls, d: dict, where: str) -> "Eagle3Config":
        try:
            return cls(**d["specdraft_head"])
        except (KeyError, TypeError, ValueError) as e:
            raise SpecdraftError(f"{where}: not a specdraft EAGLE-3 config ({e})") from None


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (w.float() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x [..., T, H, D] rotated at positions pos [..., T] (the half-split layout of Llama)."""
    f = pos.float()[..., None] * inv_freq  # [..., T, D/2]
    cos, sin = torch.cat((f, f), -1).cos()[..., None, :], torch.cat((f, f), -1).sin()[..., None, :]
    x1, x2 = x.float().chunk(2, -1)
    return (x.float() * cos + torch.cat((-x2, x1), -1) * sin).to(x.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q [B, Tq, H, D], k / v [B, Tk, Hkv, D], mask [B, Tq, Tk] bool (True = may attend) ->
    [B, Tq, H * D]."""
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask[:, None])
    return o.transpose(1, 2).flatten(2)


class Eagle3Head(torch.nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.cfg = cfg
        H, I, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.fc = lin(len(cfg.layer_ids) * H, H)
        self.input_norm = torch.nn.Parameter(torch.ones(H))
        self.hidden_norm = torch.nn.Parameter(torch.ones(H))
        self.q, self.k, self.v = lin(2 * H, cfg.num_heads * hd), lin(2 * H, cfg.num_kv_heads * hd), lin(2 * H, cfg.num_kv_heads * hd)
        self.o = lin(cfg.num_heads * hd, H)
        self.post_norm = torch.nn.Parameter(torch.ones(H))
        self.gate, self.up, self.down = lin(H, I), lin(H, I), lin(I, H)
        self.norm = torch.nn.Parameter(torch.ones(H))
        self.lm_head = lin(H, cfg.draft_vocab)
        self.register_buffer("vocab", torch.arange(cfg.draft_vocab))  # draft index -> token id
        self.register_buffer("inv_freq", 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2).float() / hd), persistent=False)

    # -- the layer, in pieces a KV cache can sit between ------------------------------------------
    def fuse(self, feats: torch.Tensor) -> torch.Tensor:
        """[..., 3, H] target states (entering the three layers) -> g [..., H]."""
        return self.fc(feats.flatten(-2).to(self.fc.weight.dtype))

    def project(self, emb: torch.Tensor, g: torch.Tensor, pos: torch.Tensor):
        """The attention inputs of pairs (token embedding, g) at positions `pos`: q [B, T, H, D],
        k and v [B, T, Hkv, D] (RoPE applied)."""
        c, e = self.cfg, self.cfg.rms_norm_eps
        x = torch.cat((_rms(emb.to(g.dtype), self.input_norm, e), _rms(g, self.hidden_norm, e)), -1)
        q = self.q(x).unflatten(-1, (c.num_heads, c.head_dim))
        k = self.k(x).unflatten(-1, (c.num_kv_heads, c.head_dim))
        v = self.v(x).unflatten(-1, (c.num_kv_heads, c.head_dim))
        return _rope(q, pos, self.inv_freq), _rope(k, pos, self.inv_freq), v

    def finish(self, attn: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The pre-norm output (the next drafted step's g) from the attention's output."""
        h = g + self.o(attn)
        m = _rms(h, self.post_norm, self.cfg.rms_norm_eps)
        return h + self.down(F.silu(self.gate(m)) * self.up(m))

    def logits(self, prenorm: torch.Tensor) -> torch.Tensor:
        """[..., draft_vocab] logits of the next token."""
        return self.lm_head(_rms(prenorm, self.norm, self.cfg.rms_norm_eps))

    # -- training ---------------------------------------------------------------------------------
    def unroll(self, ctx_layers: torch.Tensor, ctx_next: torch.Tensor, valid: torch.Tensor, embed: torch.Tensor,
               steps: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """[B, steps, draft_vocab] logits of the `steps` tokens after each sample's root
        (trainer.Samples): ctx_layers [B, W, 3, H] the target's states of a window ending at the
        root's position, ctx_next [B, W] the token after each (the last: the root), valid [B, W].
        Step 0 runs the window causally; step j feeds a token with the head's own output of step
        j-1 as g (EAGLE-3's training-time test) and attends to the window and the steps before it.
        The token fed is label j-1 (`labels` [B, >= steps-1], draft-vocabulary columns: training),
        or the head's own choice of step j-1 (drafting a chain: held-out tau)."""
        B, W = ctx_next.shape
        dev = ctx_next.device
        g = self.fuse(ctx_layers)
        q, k, v = self.project(F.embedding(ctx_next, embed), g, torch.arange(W, device=dev).expand(B, W))
        causal = torch.ones(W, W, dtype=torch.bool, device=dev).tril()
        mask = causal[None] & (valid[:, None, :] | torch.eye(W, dtype=torch.bool, device=dev)[None])
        out = self.finish(attend(q, k, v, mask), g)[:, -1:]  # [B, 1, H]
        logits = [self.logits(out)]
        keys, vals, keymask = k, v, valid
        for j in range(1, steps):
            col = labels[:, j - 1:j] if labels is not None else logits[-1].argmax(-1)
            q, kj, vj = self.project(F.embedding(self.vocab[col], embed), out, torch.full((B, 1), W - 1 + j, device=dev))
            keys, vals = torch.cat((keys, kj), 1), torch.cat((vals, vj), 1)
            keymask = torch.cat((keymask, torch.ones(B, 1, dtype=torch.bool, device=dev)), 1)
            out = self.finish(attend(q, keys, vals, keymask[:, None, :]), out)
            logits.append(self.logits(out))
        return torch.cat(logits, 1)

    @torch.no_grad()
    def init_from_base(self, base) -> None:
        """Start from the target: the LM head's draft-vocabulary rows and its final norm, `fc`
        passing the highest layer's state through (g starts as that state)."""
        H = self.cfg.hidden_size
        self.lm_head.weight.copy_(base.head_weight()[self.vocab].float())
        self.norm.copy_(base.norm.float())
        self.fc.weight.zero_()
        self.fc.weight[:, -H:].copy_(torch.eye(H))
        for m in (self.q, self.k, self.v, self.o, self.gate, self.up, self.down):
            torch.nn.init.normal_(m.weight, std=0.02)


# -- the EAGLE-3 checkpoint layout ----------------------------------------------------------------
NAMES = {"fc.weight": "fc.weight", "input_norm": "midlayer.input_layernorm.weight",
         "hidden_norm": "midlayer.hidden_norm.weight", "q.weight": "midlayer.self_attn.q_proj.weight",
         "k.weight": "midlayer.self_attn.k_proj.weight", "v.weight": "midlayer.self_attn.v_proj.weight",
         "o.weight": "midlayer.self_attn.o_proj.weight", "post_norm": "midlayer.post_attention_layernorm.weight",
         "gate.weight": "midlayer.mlp.gate_proj.weight", "up.weight": "midlayer.mlp.up_proj.weight",
         "down.weight": "midlayer.mlp.down_proj.weight", "norm": "norm.weight", "lm_head.weight": "lm_head.weight"}


def save_head(module: Eagle3Head, out: Path, extra: dict | None = None, dtype=torch.bfloat16) -> None:
    """The EAGLE-3 checkpoint (config.json + model.safetensors), written to a temp dir and renamed."""
    state = module.state_dict()
    tensors = {NAMES[k]: state[k].detach().to(dtype).contiguous() for k in NAMES}
    vocab = module.vocab.detach().long().cpu()
    tensors["d2t"] = (vocab - torch.arange(vocab.numel())).contiguous()  # target id = draft id + d2t[draft id]
    t2d = torch.zeros(module.cfg.vocab_size, dtype=torch.bool)
    t2d[vocab] = True
    tensors["t2d"] = t2d
    with atomic_dir(Path(out)) as tmp:
        (tmp / "model.safetensors").write_bytes(save({k: v.cpu() for k, v in tensors.items()}, metadata={"format": "pt"}))
        (tmp / "config.json").write_text(json.dumps({**module.cfg.to_json(), **(extra or {})}, indent=2))


def is_eagle3(path: Path) -> bool:
    try:
        return ARCH in json.loads((Path(path) / "config.json").read_text()).get("architectures", [])
    except (OSError, ValueError, AttributeError):
        return False


def load_head(path: Path, target_cfg, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> Eagle3Head:
    """An EAGLE-3 head made for a target of ModelConfig `target_cfg` (hidden size, vocabulary and
    layers checked)."""
    path = Path(path)
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise SpecdraftError(f"{path} is not a drafter checkpoint (no readable config.json)") from None
    if ARCH not in raw.get("architectures", []):
        raise SpecdraftError(f"{path} is not an EAGLE-3 head ({ARCH})")
    cfg = Eagle3Config.from_json(raw, str(path / "config.json"))
    if (cfg.hidden_size, cfg.vocab_size) != (target_cfg.hidden_size, target_cfg.vocab_size):
        raise SpecdraftError(
            f"{path} was trained for {cfg.base_model} (hidden {cfg.hidden_size}, vocabulary {cfg.vocab_size}); "
            f"this model has hidden {target_cfg.hidden_size}, vocabulary {target_cfg.vocab_size}: train one for it "
            "with `specdraft train eagle3`")
    if not all(1 <= i < target_cfg.num_layers for i in cfg.layer_ids):
        raise SpecdraftError(f"{path} reads layers {list(cfg.layer_ids)} of its target, and this model has "
                             f"{target_cfg.num_layers}")
    try:
        st = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise SpecdraftError(f"cannot read {path}/model.safetensors: {e}") from None
    module = Eagle3Head(cfg)
    try:
        state = {k: st[name] for k, name in NAMES.items()}
        state["vocab"] = torch.arange(cfg.draft_vocab) + st["d2t"].long()
        module.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as e:
        raise SpecdraftError(f"{path}/model.safetensors does not match its config: {str(e).splitlines()[0]}") from None
    if not all(torch.isfinite(v).all() for v in st.values() if v.is_floating_point()):
        raise SpecdraftError(f"{path}/model.safetensors holds non-finite weights")
    if not (0 <= int(module.vocab.min()) and int(module.vocab.max()) < cfg.vocab_size):
        raise SpecdraftError(f"{path}/model.safetensors maps draft tokens outside the model's vocabulary")
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


# -- drafting -------------------------------------------------------------------------------------
def best_first_tree(expand, root_logp: torch.Tensor, max_nodes: int, *, branch: int,
                    min_prob: float) -> tuple[Draft, list[float]]:
    """A draft tree of up to `max_nodes` nodes, best first by path probability (EAGLE-2's dynamic
    tree): `root_logp` [Vd] is the head's distribution after the root; `expand(i, tokens, parents)`
    gives node i's own distribution once it is taken (one head step), the tree so far in
    `tokens` / `parents`. Each node offers its `branch` most likely children; a path whose
    probability falls below `min_prob` is not drafted. Returns the draft (draft-vocabulary
    columns) and each node's path probability."""
    top_v, top_i = root_logp.float().exp().topk(min(branch, root_logp.numel()))
    heap = [(-float(p), -1, int(t)) for p, t in zip(top_v, top_i) if p > min_prob]
    heapq.heapify(heap)
    tokens: list[int] = []
    parents: list[int] = []
    probs: list[float] = []
    while heap and len(tokens) < max_nodes:
        negp, parent, t = heapq.heappop(heap)
        tokens.append(t)
        parents.append(parent)
        probs.append(-negp)
        if len(tokens) == max_nodes:
            break
        logp = expand(len(tokens) - 1, tokens, parents)
        cv, ci = logp.float().exp().topk(min(branch, logp.numel()))
        for p, c in zip(cv.tolist(), ci.tolist()):
            if -negp * p > min_prob:
                heapq.heappush(heap, (negp * p, len(tokens) - 1, c))
    return Draft(tokens, parents), probs


class Eagle3Drafter(Drafter):
    """Drafts with an EAGLE-3 head: keeps the head's KV over the committed text, drafts a tree
    best first (each taken node costs one head step of one row)."""

    def __init__(self, module: Eagle3Head, embed: torch.Tensor, name: str, *, max_nodes: int | None = None,
                 branch: int = 2, min_prob: float = 0.02):
        from .ctc import default_nodes

        self.module, self.embed, self.name = module, embed, f"eagle3:{name}"
        self.layers = module.cfg.feature_layers
        self.needs = Needs(final_hidden=True, hidden_layers=tuple(sorted(set(self.layers))))
        self.max_nodes = default_nodes(embed.device) if max_nodes is None else max_nodes
        self.branch, self.min_prob = branch, min_prob
        self.vocab = module.vocab.tolist()
        self.k = self.v = None
        self.n = 0  # committed pairs in the head's cache
        self.base = 0  # the position of the first (a drafter started mid-text sees no earlier states)
        self.last = None  # the head's pre-norm output at the root's pair
        self._seen = None

    def start(self, prompt_ids: list[int], ctx: StepContext) -> None:
        c = self.module.cfg
        shape = (1, ctx.capacity + 1, c.num_kv_heads, c.head_dim)
        dt, dev = self.module.fc.weight.dtype, self.embed.device
        self.k, self.v = torch.zeros(shape, dtype=dt, device=dev), torch.zeros(shape, dtype=dt, device=dev)
        self.n, self.base, self.last, self._seen = 0, None, None, None

    @torch.inference_mode()
    def _update(self, ctx: StepContext) -> None:
        """Run the pairs of the tokens the last target forward committed into the head's cache."""
        if ctx.rows is self._seen:
            return
        self._seen = ctx.rows
        m = self.module
        kk = ctx.rows.shape[0]
        first = len(ctx.ids) - 1 - kk  # position of the first committed row
        if self.base is None:
            self.base = first
        if first != self.base + self.n:
            raise SpecdraftError(f"the EAGLE-3 drafter lost track of the text ({self.n} pairs, rows from {first})")
        feats = torch.stack([ctx.layer_rows[i] for i in self.layers], 1)[None]  # [1, k, 3, H]
        tok = torch.tensor(ctx.ids[first + 1:], device=self.embed.device)[None]
        g = m.fuse(feats)
        pos = torch.arange(first, first + kk, device=tok.device)[None]
        q, k, v = m.project(F.embedding(tok, self.embed), g, pos)
        s = self.n  # cache slot of the first row
        self.k[:, s:s + kk], self.v[:, s:s + kk] = k, v
        n = s + kk
        mask = torch.ones(kk, n, dtype=torch.bool, device=tok.device).tril(s)[None]
        self.last = m.finish(attend(q, self.k[:, :n], self.v[:, :n], mask), g)[:, -1]  # [1, H]
        self.n = n

    def catch_up(self, ctx: StepContext) -> None:
        self._update(ctx)

    @torch.inference_mode()
    def propose(self, ctx: StepContext) -> Draft:
        self._update(ctx)
        m, n, dev = self.module, self.n, self.embed.device
        root = self.base + n - 1  # the position of the root's pair
        budget = min(self.max_nodes, ctx.budget)
        if budget <= 0:
            return Draft([], [])
        nodes: list[tuple] = []  # per taken node: its k, v, pre-norm output, depth

        def expand(i: int, tokens: list[int], parents: list[int]) -> torch.Tensor:
            # node i's pair: (its token, its parent's output), at the root's position + its depth;
            # it attends to the committed pairs, its ancestors and itself
            parent = parents[i]
            g = self.last if parent < 0 else nodes[parent][2]
            depth = 1 if parent < 0 else nodes[parent][3] + 1
            tok = torch.tensor([[self.vocab[tokens[i]]]], device=dev)
            q, k, v = m.project(F.embedding(tok, self.embed), g[:, None], torch.tensor([[root + depth]], device=dev))
            path, j = [], parent
            while j >= 0:
                path.append(j)
                j = parents[j]
            ks = torch.cat([self.k[:, :n]] + [nodes[j][0] for j in reversed(path)] + [k], 1)
            vs = torch.cat([self.v[:, :n]] + [nodes[j][1] for j in reversed(path)] + [v], 1)
            out = m.finish(attend(q, ks, vs, torch.ones(1, 1, ks.shape[1], dtype=torch.bool, device=dev)), g[:, None])
            nodes.append((k, v, out[:, 0], depth))
            return torch.log_softmax(m.logits(out[0, 0]).float(), -1)

        root_logp = torch.log_softmax(m.logits(self.last[0]).float(), -1)
        draft, _ = best_first_tree(expand, root_logp, budget, branch=self.branch, min_prob=self.min_prob)
        return Draft([self.vocab[t] for t in draft.tokens], draft.parents)

    def describe(self) -> dict:
        return {"drafter_options": {"max_nodes": self.max_nodes, "branch": self.branch, "min_prob": self.min_prob}}


def load(arg: str, ctx: DraftContext, **options) -> Eagle3Drafter:
    """`arg` is an EAGLE-3 checkpoint directory, or empty for the model's shipped one."""
    from .. import artifacts

    path = Path(arg) if arg else artifacts.find(ctx.name, "eagle3")
    module = load_head(path, ctx.model.cfg, ctx.dtype, ctx.device)
    return Eagle3Drafter(module, ctx.model.embed.weight, path.name, **options)
