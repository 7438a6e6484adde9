"""CTC drafter: a trained draft layer emits frames over the vocabulary plus a blank; CTC decoding
turns them into candidate continuations, deduplicated into a prefix tree the target verifies.

Unlike the reference implementation, every collapsed candidate is its own path of the tree: node
positions are their depths in the collapsed sequence and the verifier reads the logits of the
nodes it verifies (the engine's tree verification), so decoding stays lossless; a candidate that
collapses to nothing (all blanks) or to a duplicate simply adds no node.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..verify.tree import Draft
from .base import Drafter, Needs, StepContext


def ctc_candidates(logp: torch.Tensor, blank: int, *, topk: int = 4, beams: int = 12,
                   min_logp: float = -12.0) -> list[tuple[list[int], float]]:
    """CTC prefix beam search over frames.

    logp: [F, C] log-probabilities per frame (blank = column `blank`). Each beam state is a
    collapsed prefix plus the last emitted symbol (a repeat merges only with an identical last
    symbol; a blank separates repeats); alignments reaching the same state are summed. Returns
    up to `beams` distinct collapsed prefixes with their log-probabilities, best first; the empty
    prefix is dropped. `min_logp` prunes frame symbols far below a frame's best.
    """
    top_v, top_i = logp.float().topk(min(topk, logp.shape[1]), dim=-1)
    states: dict[tuple[tuple[int, ...], int], float] = {((), -1): 0.0}
    for f in range(logp.shape[0]):
        nxt: dict[tuple[tuple[int, ...], int], float] = {}
        best = float(top_v[f, 0])
        for (prefix, last), score in states.items():
            for lp, sym in zip(top_v[f].tolist(), top_i[f].tolist()):
                if lp < best + min_logp:
                    break
                if sym == blank:
                    key = (prefix, -1)
                elif sym == last:
                    key = (prefix, sym)
                else:
                    key = (prefix + (sym,), sym)
                s = score + lp
                old = nxt.get(key)
                nxt[key] = s if old is None else max(old, s) + math.log1p(math.exp(-abs(old - s)))
        states = dict(sorted(nxt.items(), key=lambda kv: -kv[1])[:beams])
    merged: dict[tuple[int, ...], float] = {}
    for (prefix, _), s in states.items():
        if prefix:
            old = merged.get(prefix)
            merged[prefix] = s if old is None else max(old, s) + math.log1p(math.exp(-abs(old - s)))
    return [(list(p), s) for p, s in sorted(merged.items(), key=lambda kv: -kv[1])]


def candidates_to_draft(cands: list[tuple[list[int], float]], max_nodes: int) -> Draft:
    """Prefix tree of the candidates, best first, cut to max_nodes (still a tree)."""
    return Draft.from_sequences([c for c, _ in cands]).truncated(max_nodes)


class CTCDrafter(Drafter):
    needs = Needs(final_hidden=True)

    def __init__(self, module, embed: torch.Tensor, head: torch.Tensor, name: str, *, topk: int = 4,
                 beams: int = 12, max_nodes: int = 24):
        self.module = module
        from .heads import sub_head

        self.embed, self.head = embed, sub_head(module, head)
        self.vocab = module.vocab.tolist()  # draft-vocabulary index -> token id
        self.name = f"ctc:{name}"
        self.topk, self.beams, self.max_nodes = topk, beams, max_nodes
        self.window = module.cfg.window
        self.hist: torch.Tensor | None = None  # [<= W, d] final hidden states of the latest positions
        self._seen: torch.Tensor | None = None

    def start(self, prompt_ids: list[int], ctx: StepContext) -> None:
        self.hist = self._seen = None

    def _update(self, ctx: StepContext) -> None:
        """Append the rows the last target forward committed (once per forward)."""
        if ctx.rows is not self._seen:
            h = ctx.rows if self.hist is None else torch.cat((self.hist, ctx.rows))
            self.hist, self._seen = h[-self.window:], ctx.rows

    @torch.inference_mode()
    def propose(self, ctx: StepContext) -> Draft:
        self._update(ctx)
        w = self.hist.shape[0]
        nxt = torch.tensor(ctx.ids[len(ctx.ids) - w:], device=self.hist.device)  # x_{j+1} for each row j
        dt = self.module.frame.dtype
        feats = self.module.features(self.hist[None].to(dt), nxt[None], torch.ones(1, w, dtype=torch.bool,
                                     device=nxt.device), self.embed)
        logp = torch.log_softmax(self.module.logits(feats[0], self.head).float(), -1)
        cands = ctc_candidates(logp, blank=logp.shape[-1] - 1, topk=self.topk, beams=self.beams)
        cands = [([self.vocab[i] for i in c], s) for c, s in cands]
        return candidates_to_draft(cands, min(self.max_nodes, ctx.budget))

    def describe(self) -> dict:
        return {"drafter_options": {"topk": self.topk, "beams": self.beams, "max_nodes": self.max_nodes}}


def load(arg: str, llm, **options) -> CTCDrafter:
    """`arg` is a checkpoint directory, or empty for the model's shipped one."""
    from .. import artifacts
    from .heads import load_module

    path = Path(arg) if arg else artifacts.find(llm, "ctc")
    module, _ = load_module(path, llm.model.cfg.hidden_size, llm.model.cfg.vocab_size, llm.dtype, llm.device, "ctc")
    return CTCDrafter(module, llm.model.embed.weight, llm.model.head_weight(), path.name, **options)
