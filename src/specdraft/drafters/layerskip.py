"""Self-speculative drafting: the target drafts for itself with some sublayers skipped.

The drafter runs the target over the root and its own drafted tokens with a `SkipSet`, writing
into the target cache's uncommitted slots (kept attention sublayers read the committed prefix's
full-model KV; skipped ones read and write nothing). Nothing is copied: verification overwrites
those slots with the full model's KV. Drafting stops when the draft's top-1 probability falls below
a threshold or at a maximum length; with `adaptive`, the threshold follows the measured acceptance
(Draft & Verify's rule: raise it when too many drafted tokens are rejected, lower it when nearly
all are accepted). With `tree_width` > 1 the runner-up tokens of uncertain steps become leaf
siblings, checked in the same verification forward.

Skip-set files (JSON): {"format": "specdraft-skipset-1", "model": ..., "num_layers": L,
"attn": [skipped layer indices], "mlp": [...], ...search facts}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SpecdraftError
from ..paths import read_json
from ..runtime.model import SkipSet
from ..verify.tree import Draft
from ..verify.verify import Verdict
from .base import Drafter, Needs, StepContext
from .context import DraftContext

FORMAT = "specdraft-skipset-1"


def skipset_to_json(skip: SkipSet, model: str, **facts) -> dict:
    return {"format": FORMAT, "model": model, "num_layers": len(skip.attn),
            "attn": [i for i, s in enumerate(skip.attn) if s], "mlp": [i for i, s in enumerate(skip.mlp) if s], **facts}


def skipset_from_json(d: dict, num_layers: int, where: str) -> SkipSet:
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise SpecdraftError(f"{where}: not a specdraft skip-set file (format {FORMAT})")
    if d.get("num_layers") != num_layers:
        raise SpecdraftError(f"{where}: the skip set is for a model with {d.get('num_layers')} layers "
                             f"({d.get('model')}); this model has {num_layers}")
    try:
        attn, mlp = set(map(int, d["attn"])), set(map(int, d["mlp"]))
    except (KeyError, TypeError, ValueError):
        raise SpecdraftError(f"{where}: 'attn' and 'mlp' must be lists of layer indices") from None
    if any(not 0 <= i < num_layers for i in attn | mlp):
        raise SpecdraftError(f"{where}: layer index out of range 0..{num_layers - 1}")
    return SkipSet(tuple(i in attn for i in range(num_layers)), tuple(i in mlp for i in range(num_layers)))


def read_skipset(path: str | Path, num_layers: int) -> tuple[SkipSet, dict]:
    path = Path(path)
    d = read_json(path, f"skip-set file {path} not found")
    return skipset_from_json(d, num_layers, str(path)), d


@dataclass
class Threshold:
    """The confidence threshold, adapted toward a target acceptance rate (bounded)."""

    value: float = 0.8
    adaptive: bool = True
    target: float = 0.85
    step: float = 0.02
    low: float = 0.5
    high: float = 0.95

    def update(self, drafted: int, accepted: int) -> None:
        if not self.adaptive or drafted == 0:
            return
        rate = accepted / drafted
        self.value += self.step if rate < self.target else -self.step
        self.value = min(self.high, max(self.low, self.value))


class LayerSkipDrafter(Drafter):
    needs = Needs(target=True)

    def __init__(self, skip: SkipSet, name: str, *, threshold: float = 0.8, adaptive: bool = True,
                 max_length: int = 12, tree_width: int = 1):
        self.skip, self.name = skip, f"layerskip:{name}"
        self.initial = threshold
        self.adaptive = adaptive
        self.threshold = Threshold(threshold, adaptive)
        self.max_length, self.tree_width = max_length, max(1, tree_width)
        self.main: list[int] = []

    def start(self, prompt_ids: list[int], ctx: StepContext) -> None:
        self.threshold = Threshold(self.initial, self.adaptive)

    @torch.inference_mode()
    def propose(self, ctx: StepContext) -> Draft:
        model, cache = ctx.target, ctx.cache
        base = cache.length
        tok = ctx.ids[-1]
        tokens: list[int] = []
        parents: list[int] = []
        main: list[int] = []
        limit = min(self.max_length, ctx.budget)
        # Draft slots: base + depth; extra leaves (tree) are never fed back, so the chain's slots stay
        # contiguous and the verification forward overwrites all of them.
        for depth in range(limit):
            fwd = model(torch.tensor([tok], device=model.device), torch.tensor([base + depth], device=model.device),
                        cache, start=base + depth, skip=self.skip)
            probs = torch.softmax(fwd.logits[0], -1)
            top_p, top_i = probs.topk(self.tree_width)
            if float(top_p[0]) < self.threshold.value and depth > 0:
                break
            parent = main[-1] if main else -1
            main.append(len(tokens))
            tokens.append(int(top_i[0]))
            parents.append(parent)
            for alt in top_i[1:].tolist():  # runner-ups of an uncertain step, as leaves
                if len(tokens) < ctx.budget and float(top_p[0]) < self.threshold.high:
                    tokens.append(alt)
                    parents.append(parent)
            if len(tokens) >= ctx.budget or float(top_p[0]) < self.threshold.value:
                break
            tok = tokens[main[-1]]
        self.main = main
        return Draft(tokens[: ctx.budget], parents[: ctx.budget])

    def observe(self, draft: Draft, verdict: Verdict) -> None:
        main = set(self.main)
        accepted_main = sum(1 for p in verdict.path if p in main)
        self.threshold.update(len(self.main), accepted_main)

    def describe(self) -> dict:
        return {"skipped_sublayers": self.skip.count(), "threshold": round(self.threshold.value, 3)}


def load(arg: str, ctx: DraftContext, **options) -> LayerSkipDrafter:
    """`arg` is a skip-set JSON file, or empty for the model's shipped default set."""
    from .. import artifacts

    path = Path(arg) if arg else artifacts.find(ctx.name, "skipset.json")
    skip, _ = read_skipset(path, ctx.model.cfg.num_layers)
    return LayerSkipDrafter(skip, path.stem if arg else "default", **options)
