"""The drafter interface every drafter implements.

A drafter proposes a small frozen value -- a `Draft` (a token tree; a chain is the special case,
with optional draft probabilities) -- and may observe each verification result to adapt. It
declares what it needs from the target's forwards (hidden states). Anything it caches (a draft
model's own KV, n-gram indexes) is its own. The one exception is self-speculation: a drafter that
declares `Needs(target=True)` gets the target model and its KV cache in the step context and may
run the target (with a skip set) over the *uncommitted* slots (from `cache.length` on) while it
proposes; the verification forward overwrites those slots, and committed slots are read-only.

Life cycle per generation: `start` once after the prefill, then `propose` / `observe` per step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..runtime.sampling import SamplingParams
from ..verify.tree import Draft
from ..verify.verify import Verdict


@dataclass(frozen=True)
class Needs:
    final_hidden: bool = False  # the target's final-norm hidden states of the committed tokens
    hidden_layers: tuple[int, ...] = ()
    target: bool = False  # the target model and its cache, for drafting with the target itself


@dataclass
class StepContext:
    """What a drafter may read when proposing. `ids` ends with the root (last committed) token."""

    ids: list[int]  # prompt + every committed token; ids[-1] is the root, not yet in the target cache
    budget: int  # at most this many nodes (cache room, context window, tokens left)
    capacity: int  # the target cache's capacity; a drafter's own cache never needs more
    params: SamplingParams
    generator: torch.Generator | None
    hidden: torch.Tensor | None = None  # [hidden] target state whose logits produced ids[-1], if asked
    # [k, hidden] the final states of the k tokens the last target forward committed (the prefill:
    # every prompt token; later the old root and the accepted nodes), i.e. of positions
    # len(ids) - 1 - k .. len(ids) - 2; rows[-1] is `hidden`. Only with Needs(final_hidden=True).
    rows: torch.Tensor | None = None
    # {layer: [k, hidden]} the residual states after those layers of the same k tokens, with
    # Needs(final_hidden=True, hidden_layers=...)
    layer_rows: dict[int, torch.Tensor] | None = None
    target: object | None = None  # the target `Decoder`, with Needs(target=True)
    cache: object | None = None  # the target's `KVCache`: committed slots read-only, the rest scratch


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

    def catch_up(self, ctx: StepContext) -> None:
        """Called instead of `propose` on a step where another drafter drafts (a hybrid): keep any
        per-step state in sync (no `observe` follows). Lazily synced state needs nothing."""

    def describe(self) -> dict:
        """Extra per-generation facts for the JSON output (route taken, draft length, ...)."""
        return {}

    def prepare(self) -> None:
        """Build now whatever the drafter would otherwise build at its first generation (a
        router's route drafters): a server prepares its drafters at start, so that no request
        waits for a model to load."""

    def fork(self) -> "Drafter":
        """A drafter for one more concurrent generation: the same weights and settings, its own
        per-generation state (a batch runs one fork per sequence). `start` resets that state, so a
        shallow copy serves every drafter whose mutable state `start` replaces; a drafter that
        keeps mutable parts across generations (sub-drafters, a vocabulary) copies them."""
        return copy.copy(self)
