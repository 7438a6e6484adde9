"""Medusa heads (the CTC paper's baseline): K heads on the last final hidden state each predict one
later token independently; the top-k of each head combine into candidate paths (a beam over the
heads by summed log-probability), deduplicated into a prefix tree the target verifies."""

from __future__ import annotations

from pathlib import Path

import torch

from ..verify.tree import Draft
from .base import Drafter, Needs, StepContext
from .ctc import candidates_to_draft


def medusa_candidates(logp: torch.Tensor, *, topk: int = 4, beams: int = 12) -> list[tuple[list[int], float]]:
    """logp: [K, V] per-head log-probabilities -> up to `beams` paths of length K, best first."""
    top_v, top_i = logp.float().topk(min(topk, logp.shape[1]), dim=-1)
    paths: list[tuple[list[int], float]] = [([], 0.0)]
    for k in range(logp.shape[0]):
        paths = sorted(((p + [t], s + v) for p, s in paths for v, t in zip(top_v[k].tolist(), top_i[k].tolist())),
                       key=lambda x: -x[1])[:beams]
    return paths


class MedusaDrafter(Drafter):
    needs = Needs(final_hidden=True)

    def __init__(self, module, head: torch.Tensor, name: str, *, topk: int = 4, beams: int = 12, max_nodes: int = 24):
        from .heads import sub_head

        self.module, self.head = module, sub_head(module, head)
        self.vocab = module.vocab.tolist()
        self.name = f"medusa:{name}"
        self.topk, self.beams, self.max_nodes = topk, beams, max_nodes

    @torch.inference_mode()
    def propose(self, ctx: StepContext) -> Draft:
        feats = self.module.features(ctx.hidden[None].to(self.module.res[0].weight.dtype))[0]
        logp = torch.log_softmax(self.module.logits(feats, self.head).float(), -1)
        cands = medusa_candidates(logp, topk=self.topk, beams=self.beams)
        return candidates_to_draft([([self.vocab[i] for i in c], s) for c, s in cands], min(self.max_nodes, ctx.budget))

    def describe(self) -> dict:
        return {"drafter_options": {"topk": self.topk, "beams": self.beams, "max_nodes": self.max_nodes}}


def load(arg: str, llm, **options) -> MedusaDrafter:
    """`arg` is a checkpoint directory, or empty for the model's shipped one."""
    from .. import artifacts
    from .heads import load_module

    path = Path(arg) if arg else artifacts.find(llm, "medusa")
    module, _ = load_module(path, llm.model.cfg.hidden_size, llm.model.cfg.vocab_size, llm.dtype, llm.device, "medusa")
    return MedusaDrafter(module, llm.model.head_weight(), path.name, **options)
