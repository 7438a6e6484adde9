"""Sampling parameters and the logits -> distribution processing shared by decoding and verification."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SpecdraftError


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy; top_k 0 and top_p 1 mean off; seed None means unseeded."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise SpecdraftError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise SpecdraftError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise SpecdraftError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A per-request generator: seeded when `seed` is set, fresh entropy otherwise."""
        g = torch.Generator(device=device)
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed)
        return g


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution plain sampling draws from: temperature, then top-k, then top-p.

    logits: [N, V] float32 -> probs [N, V] float32. Same order and tie rules as HF's warpers.
    """
    x = logits / params.temperature
    V = x.shape[-1]
    if 0 < params.top_k < V:
        kth = torch.topk(x, params.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=False)
        cum = sorted_x.softmax(-1).cumsum(-1)
        remove = cum <= (1 - params.top_p)
        remove[..., -1] = False  # always keep the most likely token
        x = x.masked_fill(torch.zeros_like(remove).scatter(-1, order, remove), float("-inf"))
    return x.softmax(-1)


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of probs [N, V] -> [N] long."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Plain decoding's choice from logits [N, V] -> [N]."""
    if params.greedy:
        return logits.argmax(-1)
    return sample(target_probs(logits, params), generator)
