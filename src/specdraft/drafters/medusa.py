"""Medusa heads (the CTC paper's baseline): K heads on the last final hidden state each predict one
later token independently; the top-k of each head combine into candidate paths (a beam over the
heads by summed log-probability), deduplicated into a prefix tree the target verifies."""

from __future__ import annotations

import heapq
from pathlib import Path

import torch

from ..verify.tree import Draft
from .base import Drafter, Needs, StepContext
from .context import DraftContext
from .ctc import candidates_to_draft, default_nodes, in_vocab


def medusa_candidates(logp: torch.Tensor, *, topk: int = 4, beams: int = 12) -> list[tuple[list[int], float]]:
    """logp: [K, V] per-head log-probabilities -> up to `beams` paths of length K, best first."""
    top_v, top_i = logp.float().topk(min(topk, logp.shape[1]), dim=-1)
    paths: list[tuple[list[int], float]] = [([], 0.0)]
    for k in range(logp.shape[0]):
        paths = sorted(((p + [t], s + v) for p, s in paths for v, t in zip(top_v[k].tolist(), top_i[k].tolist())),
                       key=lambda x: -x[1])[:beams]
    return paths


def medusa_tree(logp: torch.Tensor, max_nodes: int, *, branch: int = 4, min_prob: float = 1e-3) -> tuple[Draft, list[float]]:
    """Best-first tree over the heads (head k gives depth k + 1), a node's probability being the
    product of its path's head probabilities (the heads are independent): the n-node tree of
    largest expected acceptance under the heads' own distributions, as Medusa's tree construction
    intends. Each node offers its `branch` best children. Returns the draft and node probabilities."""
    top_v, top_i = logp.double().exp().topk(min(branch, logp.shape[1]), dim=-1)
    K = logp.shape[0]
    heap = [(-float(v), -1, 0, int(t)) for v, t in zip(top_v[0], top_i[0]) if v > min_prob]
    heapq.heapify(heap)
    tokens: list[int] = []
    parents: list[int] = []
    probs: list[float] = []
    while heap and len(tokens) < max_nodes:
        negv, parent, d, t = heapq.heappop(heap)
        tokens.append(t)
        parents.append(parent)
        probs.append(-negv)
        if d + 1 < K:
            node = len(tokens) - 1
            for v, c in zip(top_v[d + 1].tolist(), top_i[d + 1].tolist()):
                if -negv * v > min_prob:
                    heapq.heappush(heap, (negv * v, node, d + 1, c))
    return Draft(tokens, parents), probs


def medusa_draft(logp: torch.Tensor, max_nodes: int, vocab: list[int] | None = None, *, tree: str = "prefix",
                 topk: int = 4, beams: int = 12) -> Draft:
    """Heads [K, Vd] -> draft tree in token ids (`vocab` maps columns). tree "prefix":
    `medusa_tree`; "beam": the union of the `beams` best full-length paths."""
    if tree == "prefix":
        return in_vocab(medusa_tree(logp, max_nodes)[0], vocab)
    return in_vocab(candidates_to_draft(medusa_candidates(logp, topk=topk, beams=beams), max_nodes), vocab)


class MedusaDrafter(Drafter):
    needs = Needs(final_hidden=True)

    def __init__(self, module, head: torch.Tensor, name: str, *, topk: int = 4, beams: int = 12, max_nodes: int | None = None,
                 tree: str = "prefix", pack: bool = False):
        from .heads import pack as pack_module, sub_head

        self.module, self.head = module, sub_head(module, head)
        self.dtype = module.res[0].weight.dtype
        if pack:  # on a CPU, as the target is packed: oneDNN's layout for the few-row products (heads.pack)
            self.head = pack_module(module, self.head)
        self.vocab = module.vocab.tolist()
        self.name = f"medusa:{name}"
        self.topk, self.beams, self.tree = topk, beams, tree
        self.max_nodes = default_nodes(head.device) if max_nodes is None else max_nodes  # benchmarks/head_nodes_sweep.py

    @torch.inference_mode()
    def propose(self, ctx: StepContext) -> Draft:
        feats = self.module.features(ctx.hidden[None].to(self.dtype))[0]
        logp = torch.log_softmax(self.module.logits(feats, self.head).float(), -1)
        return medusa_draft(logp, min(self.max_nodes, ctx.budget), self.vocab, tree=self.tree, topk=self.topk,
                            beams=self.beams)

    def describe(self) -> dict:
        return {"drafter_options": {"tree": self.tree, "topk": self.topk, "beams": self.beams,
                                    "max_nodes": self.max_nodes, "pack": not isinstance(self.head, torch.Tensor)}}


def load(arg: str, ctx: DraftContext, **options) -> MedusaDrafter:
    """`arg` is a checkpoint directory, or empty for the model's shipped one."""
    from .. import artifacts
    from .heads import load_module

    path = Path(arg) if arg else artifacts.find(ctx.name, "medusa")
    module, _ = load_module(path, ctx.model.cfg.hidden_size, ctx.model.cfg.vocab_size, ctx.dtype, ctx.device, "medusa")
    options.setdefault("pack", ctx.packed)  # packed as the target is
    return MedusaDrafter(module, ctx.model.head_weight(), path.name, **options)
