"""Training of the CTC draft layer, Medusa heads and the EAGLE-3 head on self-distillation data
(train/data.py).

Samples: every answer position t whose token x_{t+1} is the base model's own greedy token (the
root the drafter will draft after). Labels: the base model's greedy continuation after the root,
the greedy tokens at t+1 .. t+L, cut after the first one the recorded text does not follow (later
ones would no longer be what greedy decoding produces) and at `max_labels`; CTC handles the
variable length. Medusa head k learns label k with cross-entropy (where it exists), as does step k
of the EAGLE-3 head unrolled over the labels before it (drafters/eagle3.py). Extra data
directories (`extra`, e.g. teacher-forced written answers) add training samples only: the
held-out conversations, and so the held-out tau, come from the main directory alone.

The base model stays frozen; only the draft module trains (AdamW, warmup + cosine, grad clip; bf16
autocast where bf16 runs natively, else fp32). Every `eval_every` steps a held-out tau estimate
decodes the drafts exactly as the drafter does and counts how deep the tree follows the base
model's greedy labels (a lower bound: labels stop where the data does). Checkpoints
(`OUT/checkpoint/`: config.json, model.safetensors, optimizer.safetensors, trainer_state.json) are
written atomically; rerunning the same command resumes from the last one. The final drafter goes to
OUT/config.json + OUT/model.safetensors.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from tqdm import tqdm

from ..drafters.ctc import ctc_draft
from ..drafters.heads import HeadConfig, init_from_base, make_module, save_module, sub_head
from ..drafters.medusa import medusa_draft
from ..errors import SpecdraftError
from ..paths import atomic_dir, portable
from ..verify.tree import Draft, follow
from .config import TrainConfig
from .data import keep_layers, load_shards, need_layers


class Samples:
    """Index arrays over the flat data: positions, labels [S, max_labels], label lengths."""

    def __init__(self, data: dict[str, torch.Tensor], max_labels: int, window: int, vocab: torch.Tensor):
        nxt, greedy, seq, target = data["next"], data["greedy"], data["seq"], data["target"]
        n = nxt.numel()
        index = torch.full((int(max(nxt.max(), greedy.max(), vocab.max())) + 1,), -1, dtype=torch.long)
        index[vocab] = torch.arange(vocab.numel())  # token id -> draft-vocabulary index
        # Label j of position t is the base model's own greedy token at t + j, valid while the
        # stored text up to t + j is the model's own greedy continuation (always, on answers the
        # model wrote itself; on written answers, only as long as they agree with the model).
        ok = target & (greedy == nxt)  # the root x_{t+1} is the model's own token
        pos = torch.nonzero(ok).flatten()
        labels = torch.zeros(pos.numel(), max_labels, dtype=torch.long)
        length = torch.zeros(pos.numel(), dtype=torch.long)
        alive = torch.ones(pos.numel(), dtype=torch.bool)
        for j in range(1, max_labels + 1):
            idx = (pos + j).clamp(max=n - 1)
            alive &= (pos + j < n) & (seq[idx] == seq[pos]) & target[idx]
            alive &= index[greedy[idx]] >= 0  # a token outside the draft vocabulary ends the labels
            labels[:, j - 1] = torch.where(alive, index[greedy[idx]], 0)
            length += alive.long()
            alive &= greedy[idx] == nxt[idx]  # the text goes on with that token: label j + 1 is valid
        keep = length > 0
        self.pos, self.labels, self.length = pos[keep], labels[keep], length[keep]
        self.data, self.window = data, window

    def __len__(self) -> int:
        return self.pos.numel()

    def split(self, every: int = 20, held_below: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out = whole conversations (seq % every == 0): no leakage through the window; with
        `held_below`, only conversations numbered below it can be held out."""
        seq = self.data["seq"][self.pos]
        held = (seq % every) == 0
        if held_below is not None:
            held &= seq < held_below
        return torch.nonzero(~held).flatten(), torch.nonzero(held).flatten()

    def batch(self, idx: torch.Tensor, future: bool = True) -> dict[str, torch.Tensor]:
        """The inputs of samples `idx`; `future` adds the hidden states behind each label (only the
        dense distillation terms need them)."""
        d = self.data
        t = self.pos[idx]
        W = self.window
        win = t[:, None] - torch.arange(W - 1, -1, -1)[None, :]  # oldest first, last = t
        valid = win >= 0
        winc = win.clamp(min=0)
        valid &= d["seq"][winc] == d["seq"][t][:, None]
        ctx_next = d["next"][winc].clone()
        ctx_next[:, -1] = d["greedy"][t]  # the root
        out = {"hidden": d["hidden"][t], "ctx_hidden": d["hidden"][winc], "ctx_next": ctx_next, "valid": valid,
               "labels": self.labels[idx], "length": self.length[idx]}
        if "layers" in d:  # [B, W, k, d] the base's states after the feature layers
            out["ctx_layers"] = d["layers"][winc]
        if future:  # [B, L, d]: the hidden state that predicted label k (masked by length)
            L = self.labels.shape[1]
            out["future"] = d["hidden"][(t[:, None] + torch.arange(1, L + 1)[None, :]).clamp(max=d["hidden"].shape[0] - 1)]
        return out


def aligned_frames(labels: torch.Tensor, length: torch.Tensor, frames: int, blank: int) -> torch.Tensor:
    """[B, frames] the earliest valid CTC alignment of each label sequence: one frame per token, a
    blank between two equal tokens (else they would merge), blanks after the last token."""
    out = torch.full((labels.shape[0], frames), blank, dtype=torch.long)
    for r, (row, n) in enumerate(zip(labels.tolist(), length.tolist())):
        f, prev = 0, None
        for tok in row[:n]:
            f += tok == prev
            if f >= frames:
                break
            out[r, f] = tok
            f, prev = f + 1, tok
    return out


def tree_accept(draft: Draft, labels: list[int]) -> int:
    """How many nodes greedy verification would accept if the base model's tokens were `labels`."""
    return len(follow(draft, labels))


def head_features(module, b: dict[str, torch.Tensor], embed: torch.Tensor) -> torch.Tensor:
    """[B, F, d] features of a batch from `Samples.batch` (ctc: frames; medusa: heads). The stored
    states (bf16) enter in the base's dtype: bf16 under autocast, fp32 where training runs in fp32."""
    if module.cfg.kind == "ctc":
        layers = b.get("ctx_layers")
        return module.features(b["ctx_hidden"].to(embed.dtype), b["ctx_next"], b["valid"], embed,
                               None if layers is None else layers.to(embed.dtype))
    return module.features(b["hidden"].to(embed.dtype))


def head_logits(module, b: dict[str, torch.Tensor], embed: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """[B, F, C] logits of a batch (ctc: frames + blank; medusa: heads)."""
    return module.logits(head_features(module, b, embed), head)


def distill_terms(feats: torch.Tensor, logp: torch.Tensor, b: dict[str, torch.Tensor],
                  head: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense targets the stored data gives for free: the base model's final hidden state h that
    predicted label k, and its distribution softmax(head h) over the draft vocabulary.
    Returns (SmoothL1 of feature k against h, soft cross-entropy of frame / head k against the
    base's distribution), averaged over the labels that exist. Frame k is paired with label k (the
    earliest CTC alignment; later frames stay free for blanks)."""
    L = min(feats.shape[1], b["future"].shape[1])
    fut = b["future"][:, :L].float()
    mask = (torch.arange(L)[None, :] < b["length"][:, None]).float()
    n = mask.sum().clamp(min=1)
    feat = (F.smooth_l1_loss(feats[:, :L].float(), fut, reduction="none").mean(-1) * mask).sum() / n
    Vd = head.shape[0]
    with torch.no_grad():
        p = torch.softmax(F.linear(fut, head.float()), -1)
    soft = (-(p * logp[:, :L, :Vd]).sum(-1) * mask).sum() / n
    return feat, soft


@torch.no_grad()
def heldout_scores(module, samples: Samples, idx: torch.Tensor, embed: torch.Tensor, head: torch.Tensor,
                   max_nodes: int = 24, tree: str = "prefix") -> tuple[float, float]:
    """(tau, first-token rate) at the positions `idx`, from one pass of the module over them.
    tau: 1 + mean number of drafted tokens greedy verification would accept, each draft built
    exactly as the drafter builds it (`head` = the LM head's draft-vocabulary rows). First-token
    rate: how often the drafter's most probable first token (a one-node draft) is the base model's
    next token."""
    kind = module.cfg.kind
    total = right = 0
    for chunk in idx.split(256):
        b = samples.batch(chunk, future=False)
        if kind == "eagle3":  # the head's greedy chain (the drafter's tree holds it, and more)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=embed.dtype == torch.bfloat16):
                cols = module.unroll(b["ctx_layers"].to(embed.dtype), b["ctx_next"], b["valid"], embed,
                                     samples.labels.shape[1]).argmax(-1)
            right += int((cols[:, 0] == b["labels"][:, 0]).sum())
            for r in range(cols.shape[0]):
                chain = Draft(cols[r].tolist(), list(range(-1, cols.shape[1] - 1)))
                total += tree_accept(chain, b["labels"][r, : int(b["length"][r])].tolist())
            continue
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=embed.dtype == torch.bfloat16):
            logp = torch.log_softmax(head_logits(module, b, embed, head).float(), -1)
        draft_fn = ctc_draft if kind == "ctc" else medusa_draft
        for r in range(logp.shape[0]):
            total += tree_accept(draft_fn(logp[r], max_nodes, tree=tree), b["labels"][r, : int(b["length"][r])].tolist())
            first = draft_fn(logp[r], 1).tokens
            right += int(bool(first) and first[0] == int(b["labels"][r, 0]))
    n = max(1, idx.numel())
    return 1.0 + total / n, right / n


def heldout_tau(module, samples: Samples, idx: torch.Tensor, embed: torch.Tensor, head: torch.Tensor,
                max_nodes: int = 24, tree: str = "prefix") -> float:
    return heldout_scores(module, samples, idx, embed, head, max_nodes, tree)[0]


def heldout_first_token(module, samples: Samples, idx: torch.Tensor, embed: torch.Tensor, head: torch.Tensor) -> float:
    return heldout_scores(module, samples, idx, embed, head)[1]


class Trainer:
    def __init__(self, model_name: str, data_dir: Path, out: Path, cfg: TrainConfig, progress: bool = True,
                 extra: tuple[Path, ...] = ()):
        from .. import fetch
        from ..runtime.cpu import fast_dtype
        from ..runtime.loader import load_decoder

        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.data_dirs = [str(data_dir), *map(str, extra)]  # recorded with the result (the main one first)
        # bf16 autocast only where bf16 runs natively: on an AVX2-only CPU it trained 25x slower than fp32
        base = load_decoder(fetch.resolve(model_name), fast_dtype("cpu"))
        if cfg.kind == "eagle3" and not cfg.feature_layers:  # EAGLE-3's low, middle and high layers
            from ..drafters.eagle3 import default_layer_ids

            cfg.feature_layers = tuple(i - 1 for i in default_layer_ids(base.cfg.num_layers))
        stored: list[list[int]] = []  # the layers whose states each directory holds
        for d in (data_dir, *extra):
            meta = json.loads((Path(d) / "data.json").read_text()) if (Path(d) / "data.json").is_file() else {}
            if meta.get("model") not in (None, model_name):
                raise SpecdraftError(f"{d} was built from {meta['model']}, not {model_name}")
            stored.append(list(meta.get("layers", [])))
            need_layers(stored[-1], cfg.feature_layers, str(d))  # before any data is loaded

        parts = [keep_layers(load_shards(data_dir, progress), stored[0], cfg.feature_layers)]
        main_seqs = int(parts[0]["seq"].max()) + 1
        for d, layers in zip(extra, stored[1:]):  # conversation numbers continue across directories
            part = load_shards(d, progress, first_seq=int(parts[-1]["seq"].max()) + 1)
            parts.append(keep_layers(part, layers, cfg.feature_layers))
        data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if extra else parts[0]
        counts = torch.bincount(data["next"][data["target"]], minlength=base.cfg.vocab_size)
        vocab = counts.argsort(descending=True)[: min(cfg.draft_vocab, base.cfg.vocab_size)].sort().values
        self.vocab_coverage = float(counts[vocab].sum() / counts.sum())
        torch.manual_seed(cfg.seed)
        if cfg.kind == "eagle3":
            from ..drafters.eagle3 import Eagle3Config, Eagle3Head

            self.hcfg = Eagle3Config.for_target(model_name, base.cfg, int(vocab.numel()),
                                                tuple(i + 1 for i in cfg.feature_layers), cfg.intermediate_size,
                                                cfg.window)
            self.module = Eagle3Head(self.hcfg)
            self.module.vocab.copy_(vocab)
            self.module.init_from_base(base)
            self.embed, self.head = base.embed.weight, None  # the head has an LM head of its own
        else:
            self.hcfg = HeadConfig(kind=cfg.kind, base_model=model_name, hidden_size=base.cfg.hidden_size,
                                   vocab_size=base.cfg.vocab_size, draft_vocab=int(vocab.numel()),
                                   frames=cfg.frames if cfg.kind == "ctc" else cfg.max_labels, window=cfg.window,
                                   num_heads=base.cfg.num_heads, intermediate_size=cfg.intermediate_size,
                                   feature_layers=tuple(cfg.feature_layers) if cfg.kind == "ctc" else (),
                                   layers=cfg.layers if cfg.kind == "ctc" else 1)
            self.module = make_module(self.hcfg)
            self.module.vocab.copy_(vocab)
            init_from_base(self.module, base.norm)
            self.embed, self.head = base.embed.weight, sub_head(self.module, base.head_weight())
        self.samples = Samples(data, cfg.max_labels, cfg.window, vocab)
        self.train_idx, self.held_idx = self.samples.split(held_below=main_seqs)
        if len(self.train_idx) == 0 or len(self.held_idx) == 0:
            raise SpecdraftError(f"{data_dir} has too little data to train on")
        self.steps = cfg.steps or max(1, int(cfg.epochs * len(self.train_idx) / cfg.batch_size))
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        self.step, self.seconds, self.history = 0, 0.0, []

    # -- schedule, loss ----------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        warm = max(1, int(self.cfg.warmup * self.steps))
        if step < warm:
            return self.cfg.lr * (step + 1) / warm
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, self.steps - warm)))

    def loss(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.cfg.kind == "eagle3":  # label k from step k of the unrolled head, fed labels < k
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.embed.dtype == torch.bfloat16):
                logits = self.module.unroll(b["ctx_layers"].to(self.embed.dtype), b["ctx_next"], b["valid"],
                                            self.embed, b["labels"].shape[1], b["labels"])
            return self._hard_loss(torch.log_softmax(logits, -1, dtype=torch.float32), b)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.embed.dtype == torch.bfloat16):
            feats = head_features(self.module, b, self.embed)
            logits = self.module.logits(feats, self.head)
        logp = torch.log_softmax(logits, -1, dtype=torch.float32)
        extra = 0.0
        if self.cfg.feat > 0 or self.cfg.kd > 0:
            feat, soft = distill_terms(feats, logp, b, self.head)
            extra = self.cfg.feat * feat + self.cfg.kd * soft
        return self._hard_loss(logp, b) + extra

    def _hard_loss(self, logp: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.cfg.kind == "ctc":
            B, Fr, C = logp.shape
            loss = F.ctc_loss(logp.transpose(0, 1), b["labels"], torch.full((B,), Fr, dtype=torch.long), b["length"],
                              blank=C - 1, reduction="mean", zero_infinity=True)
            if self.cfg.align > 0:  # one frame per token, then blanks: a CTC alignment made likely
                tgt = aligned_frames(b["labels"], b["length"], Fr, C - 1)
                loss = loss + self.cfg.align * -logp.gather(-1, tgt[..., None]).mean()
            return loss
        K = logp.shape[1]
        mask = torch.arange(K)[None, :] < b["length"][:, None]
        nll = -logp.gather(-1, b["labels"][:, :K, None]).squeeze(-1)
        return (nll * mask).sum() / mask.sum().clamp(min=1)

    # -- held-out tau ------------------------------------------------------------------------------
    def estimate(self, max_nodes: int = 24, tree: str = "prefix") -> tuple[float, float]:
        """Held-out (tau, first-token rate) of the module as it is now."""
        self.module.eval()
        scores = heldout_scores(self.module, self.samples, self.held_idx[: self.cfg.eval_samples], self.embed,
                                self.head, max_nodes, tree)
        self.module.train()
        return scores

    # -- checkpoints -------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"step": self.step, "steps": self.steps, "seconds": self.seconds, "history": self.history,
                "train": vars(self.cfg), "samples": len(self.samples), "train_samples": int(self.train_idx.numel()),
                "heldout_samples": int(self.held_idx.numel()),
                "draft_vocab_coverage": self.vocab_coverage, "data": [portable(d) for d in self.data_dirs]}

    def save_checkpoint(self) -> None:
        ckpt = self.out / "checkpoint"
        with atomic_dir(ckpt) as tmp:
            tensors = {k: v.detach().contiguous() for k, v in self.module.state_dict().items()}
            (tmp / "model.safetensors").write_bytes(save(tensors))
            opt = {}
            names = dict(self.module.named_parameters())
            for name, p in names.items():
                st = self.opt.state.get(p, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in st:
                        opt[f"{name}.{key}"] = st[key].contiguous()
                if "step" in st:
                    opt[f"{name}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
            (tmp / "optimizer.safetensors").write_bytes(save(opt))
            (tmp / "config.json").write_text(json.dumps(self.hcfg.to_json(), indent=2))
            (tmp / "trainer_state.json").write_text(json.dumps(self._state(), indent=2))

    def try_resume(self) -> bool:
        ckpt = self.out / "checkpoint"
        if not (ckpt / "trainer_state.json").is_file():
            return False
        try:
            state = json.loads((ckpt / "trainer_state.json").read_text())
            self.module.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
            opt = load_file(str(ckpt / "optimizer.safetensors"))
        except Exception as e:
            raise SpecdraftError(f"corrupt training checkpoint {ckpt}: {e}; delete it to start over") from None
        if state.get("train", {}).get("kind") != self.cfg.kind or state.get("steps") != self.steps:
            raise SpecdraftError(f"{ckpt} belongs to another training run (kind or length differs); use a new --out")
        for name, p in self.module.named_parameters():
            if f"{name}.exp_avg" in opt:
                self.opt.state[p] = {"exp_avg": opt[f"{name}.exp_avg"], "exp_avg_sq": opt[f"{name}.exp_avg_sq"],
                                     "step": opt[f"{name}.step"].reshape(())}
        self.step, self.seconds, self.history = state["step"], state["seconds"], state["history"]
        return True

    # -- loop --------------------------------------------------------------------------------------
    def run(self) -> dict:
        resumed = self.try_resume()
        per_epoch = max(1, len(self.train_idx) // self.cfg.batch_size)
        orders: dict[int, torch.Tensor] = {}
        self.module.train()
        bar = tqdm(total=self.steps, initial=self.step, desc=f"train {self.cfg.kind}", unit="step", disable=not self.progress)
        t0, loss_ema = time.perf_counter(), None
        while self.step < self.steps:
            epoch, k = divmod(self.step, per_epoch)
            if epoch not in orders:  # the same order on resume: a fresh generator per epoch
                orders = {epoch: self.train_idx[torch.randperm(len(self.train_idx), generator=torch.Generator().manual_seed(self.cfg.seed + epoch))]}
            idx = orders[epoch][k * self.cfg.batch_size:(k + 1) * self.cfg.batch_size]
            for group in self.opt.param_groups:
                group["lr"] = self.lr_at(self.step)
            loss = self.loss(self.samples.batch(idx, future=self.cfg.feat > 0 or self.cfg.kd > 0))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.clip)
            self.opt.step()
            self.step += 1
            lv = loss.item()
            loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}", resumed=resumed)
            if self.step % self.cfg.eval_every == 0 or self.step == self.steps:
                tau, first = self.estimate()
                self.history.append({"step": self.step, "loss": loss_ema, "heldout_tau": tau,
                                     "heldout_first_token": first})
                bar.write(f"step {self.step}/{self.steps}: loss {loss_ema:.3f}, held-out tau estimate {tau:.2f}, "
                          f"first token right {first:.2f}")
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.steps:
                self.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save_checkpoint()
        bar.close()
        self.seconds += time.perf_counter() - t0
        state = self._state()
        if self.cfg.kind == "eagle3":
            from ..drafters.eagle3 import save_head

            save_head(self.module, self.out, extra={"training": state})
        else:
            save_module(self.module, self.out, extra={"training": state})
        return state
