"""Prompt lookup: draft by copying what followed the latest earlier occurrence of the current n-gram.

Training-free and nearly free to run; strong where the answer repeats the input (summaries,
code edits, extraction), weak on free-form chat.
"""

from __future__ import annotations

import inspect

import numpy as np

from ..errors import SpecdraftError
from ..verify.tree import Draft
from .specs import format_spec
from .base import Drafter, StepContext


def ngram_lookup(ids: list[int] | np.ndarray, max_ngram: int = 3, min_ngram: int = 1, num_tokens: int = 10) -> list[int]:
    """Tokens that followed the most recent earlier occurrence of the longest matching suffix n-gram.

    Tries n = max_ngram down to min_ngram: the suffix ids[-n:] is searched in ids[:-1] (most
    recent match first); the up-to-num_tokens tokens after the match are the draft. [] if no match.
    """
    a = np.asarray(ids, dtype=np.int64)
    L = len(a)
    for n in range(min(max_ngram, L - 1), min_ngram - 1, -1):
        if n <= 0:
            break
        windows = np.lib.stride_tricks.sliding_window_view(a[:-1], n)  # [L-n, n]: starts 0 .. L-n-1
        hits = np.flatnonzero((windows == a[L - n:]).all(axis=1))
        for start in hits[::-1]:  # most recent first; it must leave a continuation
            follow = a[start + n: start + n + num_tokens]
            if len(follow):
                return follow.tolist()
    return []


class LookupDrafter(Drafter):
    def __init__(self, max_ngram: int = 3, num_tokens: int = 10, min_ngram: int = 1, adaptive: bool = False):
        if not 1 <= min_ngram <= max_ngram or num_tokens < 1:
            raise SpecdraftError(f"lookup needs 1 <= min_ngram <= max_ngram and at least one token "
                                 f"(min_ngram={min_ngram}, max_ngram={max_ngram}, num_tokens={num_tokens})")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.num_tokens = num_tokens
        self.adaptive = adaptive
        self.length = num_tokens
        # The name is the spec that builds this drafter: only the settings that differ from the defaults.
        default = {k: p.default for k, p in inspect.signature(LookupDrafter).parameters.items()}
        self.name = format_spec("lookup", num_tokens if num_tokens != default["num_tokens"] else "",
                                {k: getattr(self, k) for k in ("max_ngram", "min_ngram", "adaptive")
                                 if getattr(self, k) != default[k]})

    def start(self, prompt_ids, ctx) -> None:
        self.length = self.num_tokens

    def propose(self, ctx: StepContext) -> Draft:
        return Draft.chain(ngram_lookup(ctx.ids, self.max_ngram, self.min_ngram, min(self.length, ctx.budget)))

    def observe(self, draft, verdict) -> None:
        if self.adaptive and len(draft):
            if len(verdict.path) >= len(draft):
                self.length = min(self.length + 2, self.num_tokens)
            else:
                self.length = max(1, self.length - 1)

    def describe(self) -> dict:
        return {"max_ngram": self.max_ngram, "min_ngram": self.min_ngram, "num_tokens": self.num_tokens,
                "adaptive": self.adaptive}
