"""The drafter interface every drafter implements.

A drafter proposes a small frozen value -- a `Draft` (a token tree; a chain is the special case,
with optional draft probabilities) -- and may observe each verification result to adapt. It
declares what it needs from the target's forwards (hidden states). It never touches the
target's KV cache: anything it caches (a draft model's own KV, n-gram indexes) is its own.

Life cycle per generation: `start` once after the prefill, then `propose` / `observe` per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..runtime.sampling import SamplingParams
from ..verify.tree import Draft
from ..verify.verify import Verdict


@dataclass(frozen=True)
class Needs:
    final_hidden: bool = False  # the target's final-norm hidden state of the last committed token
    hidden_layers: tuple[int, ...] = ()


@dataclass
class StepContext:
    """What a drafter may read when proposing. `ids` ends with the root (last committed) token."""

    ids: list[int]  # prompt + every committed token; ids[-1] is the root, not yet in the target cache
    budget: int  # at most this many nodes (cache room, context window, tokens left)
    capacity: int  # the target cache's capacity; a drafter's own cache never needs more
    params: SamplingParams
    generator: torch.Generator | None
    hidden: torch.Tensor | None = None  # [hidden] target state whose logits produced ids[-1], if asked


class Drafter:
    """Base class; subclasses override `propose` and optionally `start` / `observe`."""

    name = "drafter"
    needs = Needs()

    def start(self, prompt_ids: list[int], ctx: StepContext) -> None:
        """Called once per generation, after the target's prefill."""

    def propose(self, ctx: StepContext) -> Draft:
        raise NotImplementedError

    def observe(self, draft: Draft, verdict: Verdict) -> None:
        """Called after each verification (adapt draft length, thresholds, own caches)."""

    def describe(self) -> dict:
        """Extra per-generation facts for the JSON output (route taken, draft length, ...)."""
        return {}
