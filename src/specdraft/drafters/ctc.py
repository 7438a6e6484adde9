"""CTC drafter: a trained draft layer emits frames over the vocabulary plus a blank; CTC decoding
turns them into candidate continuations, deduplicated into a prefix tree the target verifies.

Unlike the reference implementation, every collapsed candidate is its own path of the tree: node
positions are their depths in the collapsed sequence and the verifier reads the logits of the
nodes it verifies (the engine's tree verification), so decoding stays lossless; a candidate that
collapses to nothing (all blanks) or to a duplicate simply adds no node.
"""

from __future__ import annotations

import heapq
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import SpecdraftError
from ..verify.tree import Draft
from .base import Drafter, Needs, StepContext
from .context import DraftContext


# Draft-tree node budget. On a CPU every node is one more row of the verification forward and the
# measured optimum is small (4 nodes: 1.39x vs 1.15x at 24 for the shipped SmolLM2 CTC drafter,
# docs/BENCHMARKS.md); on an accelerator wider trees are nearly free, as in the papers.
DEFAULT_NODES_CPU = 4
DEFAULT_NODES_ACCEL = 24


def default_nodes(device: torch.device) -> int:
    return DEFAULT_NODES_CPU if device.type == "cpu" else DEFAULT_NODES_ACCEL


def in_vocab(draft: Draft, vocab: list[int] | None) -> Draft:
    """A draft over draft-vocabulary columns, in token ids (`vocab[column]`; None = identity)."""
    return Draft([vocab[t] for t in draft.tokens], draft.parents) if vocab else draft


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


def ctc_tree(logp: torch.Tensor, blank: int, max_nodes: int, *, branch: int = 4, symbols: int = 8,
             min_prob: float = 1e-3) -> tuple[Draft, list[float]]:
    """The draft tree that maximises the expected number of accepted tokens under the frames'
    own distribution: best-first over prefixes by P(the collapsed output starts with the prefix).

    That probability is Graves' CTC prefix probability: a prefix p + k is first completed at frame
    t when frames < t collapse to exactly p (ending in a blank if k repeats p's last symbol) and
    frame t emits k. It never grows along a path, so taking nodes best first always yields a tree,
    and the n best nodes are the n-node tree of largest expected acceptance (each node counts
    with the probability that verification reaches it). Per frame only the `symbols` most likely
    non-blank symbols are considered; each node offers its `branch` best children; nodes below
    `min_prob` are not drafted. Returns the draft (tokens = frame columns) and each node's
    probability."""
    F_, C = logp.shape
    y = logp.double().exp()
    yb = y[:, blank].cpu().numpy()
    y_nb = y.clone()
    y_nb[:, blank] = 0
    S = torch.unique(y_nb.topk(min(symbols, C - 1), dim=-1).indices)  # candidate symbols
    S = S[S != blank]  # (a blank can only be picked here if every other symbol underflowed to 0)
    yS = y[:, S].cpu().numpy()  # [F, |S|]: the small arrays the search works on, on the host
    sym = S.tolist()
    col = {k: j for j, k in enumerate(sym)}
    ybl = yb.tolist()  # the per-node recursion below runs on Python floats

    def children_of(prev_b: np.ndarray, prev_nb: np.ndarray, last: int) -> list[tuple[float, int]]:
        """(P(prefix + k), column of k) for the `branch` best symbols k; prev_* = gamma(p, t - 1)."""
        ext = (prev_b + prev_nb) @ yS
        if last in col:  # a repeat of the last symbol must follow a blank
            ext[col[last]] = prev_b @ yS[:, col[last]]
        best = np.argsort(-ext, kind="stable")[:branch]
        return [(float(ext[j]), sym[j]) for j in best]

    # gamma(p, t): probability that frames 0..t collapse to exactly p, ending in blank / non-blank.
    # Stored shifted: prev[t] = gamma(p, t - 1), with gamma(root, -1) = (1, 0).
    root_b = np.concatenate(([1.0], np.cumprod(yb[:-1])))
    zeros = np.zeros(F_)
    states = [(root_b, zeros, -1)]  # index 0 = root; node i = states[i + 1]
    heap = [(-v, 0, k) for v, k in children_of(root_b, zeros, -1) if v > min_prob]
    heapq.heapify(heap)
    tokens: list[int] = []
    parents: list[int] = []
    probs: list[float] = []
    while heap and len(tokens) < max_nodes:
        negv, parent_state, k = heapq.heappop(heap)
        pb, pnb, last = states[parent_state]
        yk = yS[:, col[k]].tolist()
        base = (pb + (pnb if k != last else 0.0)).tolist()
        g_b, g_nb = [0.0] * F_, [0.0] * F_  # gamma(p + k, t)
        b_prev = nb_prev = 0.0
        for t in range(F_):
            nb_t = yk[t] * (nb_prev + base[t])
            b_t = ybl[t] * (b_prev + nb_prev)
            g_b[t], g_nb[t] = b_t, nb_t
            b_prev, nb_prev = b_t, nb_t
        tokens.append(k)
        parents.append(parent_state - 1)
        probs.append(-negv)
        states.append((np.array([0.0] + g_b[:-1]), np.array([0.0] + g_nb[:-1]), k))
        for v, kk in children_of(states[-1][0], states[-1][1], k):
            if v > min_prob:
                heapq.heappush(heap, (-v, len(states) - 1, kk))
    return Draft(tokens, parents), probs


def candidates_to_draft(cands: list[tuple[list[int], float]], max_nodes: int) -> Draft:
    """Prefix tree of the candidates, best first, cut to max_nodes (still a tree)."""
    return Draft.from_sequences([c for c, _ in cands]).truncated(max_nodes)


class CTCDrafter(Drafter):
    needs = Needs(final_hidden=True)

    def __init__(self, module, embed: torch.Tensor, head: torch.Tensor, name: str, *, topk: int = 4,
                 beams: int = 12, max_nodes: int | None = None, tree: str = "prefix", pack: bool = False):
        self.module = module
        from .heads import pack as pack_module, sub_head

        self.embed, self.head = embed, sub_head(module, head)
        if pack:  # on a CPU, as the target is packed: oneDNN's layout for the few-row products (heads.pack)
            self.head = pack_module(module, self.head)
        self.vocab = module.vocab.tolist()  # draft-vocabulary index -> token id
        self.name = f"ctc:{name}"
        self.topk, self.beams, self.tree = topk, beams, tree
        self.max_nodes = default_nodes(head.device) if max_nodes is None else max_nodes  # benchmarks/head_nodes_sweep.py
        self.window = module.cfg.window
        self.layers = module.cfg.feature_layers
        self.needs = Needs(final_hidden=True, hidden_layers=self.layers)
        self.hist: torch.Tensor | None = None  # [<= W, d] final hidden states of the latest positions
        self.hist_layers: torch.Tensor | None = None  # [<= W, k, d] their states after the feature layers
        self._seen: torch.Tensor | None = None

    def start(self, prompt_ids: list[int], ctx: StepContext) -> None:
        self.hist = self.hist_layers = self._seen = None

    def _update(self, ctx: StepContext) -> None:
        """Append the rows the last target forward committed (once per forward)."""
        if ctx.rows is not self._seen:
            self.hist, self._seen = self._append(self.hist, ctx.rows), ctx.rows
            if self.layers:
                self.hist_layers = self._append(self.hist_layers, torch.stack([ctx.layer_rows[i] for i in self.layers], 1))

    def _append(self, window: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        """The last `self.window` rows of window + rows."""
        return (rows if window is None else torch.cat((window, rows)))[-self.window:]

    def catch_up(self, ctx: StepContext) -> None:
        self._update(ctx)

    @torch.inference_mode()
    def propose(self, ctx: StepContext) -> Draft:
        self._update(ctx)
        w = self.hist.shape[0]
        nxt = torch.tensor(ctx.ids[len(ctx.ids) - w:], device=self.hist.device)  # x_{j+1} for each row j
        dt = self.module.frame.dtype
        feats = self.module.features(self.hist[None].to(dt), nxt[None], torch.ones(1, w, dtype=torch.bool,
                                     device=nxt.device), self.embed,
                                     None if self.hist_layers is None else self.hist_layers[None])
        logp = torch.log_softmax(self.module.logits(feats[0], self.head).float(), -1)
        return ctc_draft(logp, min(self.max_nodes, ctx.budget), self.vocab, tree=self.tree, topk=self.topk,
                         beams=self.beams)

    def describe(self) -> dict:
        return {"drafter_options": {"tree": self.tree, "topk": self.topk, "beams": self.beams,
                                    "max_nodes": self.max_nodes, "pack": not isinstance(self.head, torch.Tensor)}}


def ctc_draft(logp: torch.Tensor, max_nodes: int, vocab: list[int] | None = None, *, tree: str = "prefix",
              topk: int = 4, beams: int = 12) -> Draft:
    """Frames [F, Vd + 1] (blank last) -> draft tree in token ids (`vocab` maps frame columns).
    tree "prefix": `ctc_tree` (best-first by prefix probability); "beam": the union of the prefix
    beam search's best collapsed candidates."""
    blank = logp.shape[-1] - 1
    if tree == "prefix":
        return in_vocab(ctc_tree(logp, blank, max_nodes)[0], vocab)
    return in_vocab(candidates_to_draft(ctc_candidates(logp, blank=blank, topk=topk, beams=beams), max_nodes), vocab)


def load(arg: str, ctx: DraftContext, **options) -> CTCDrafter:
    """`arg` is a checkpoint directory, or empty for the model's shipped one."""
    from .. import artifacts
    from .heads import load_module

    path = Path(arg) if arg else artifacts.find(ctx.name, "ctc")
    module, _ = load_module(path, ctx.model.cfg.hidden_size, ctx.model.cfg.vocab_size, ctx.dtype, ctx.device, "ctc")
    if bad := [i for i in module.cfg.feature_layers if not 0 <= i < ctx.model.cfg.num_layers]:
        raise SpecdraftError(f"{path} reads layers {bad} of its base, and this model has {ctx.model.cfg.num_layers}")
    options.setdefault("pack", ctx.packed)  # packed as the target is
    return CTCDrafter(module, ctx.model.embed.weight, ctx.model.head_weight(), path.name, **options)
