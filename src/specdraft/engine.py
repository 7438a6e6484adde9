"""The decode loop over token ids (it knows nothing about text).

Plain decoding for now: prefill, then one target forward per token. Every forward is counted
(the prefill too, since it yields the first token), so tau = new tokens / target forwards is 1.0
for plain decoding, and the same arithmetic holds once a drafter proposes several tokens a step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import SpecdraftError
from .runtime.model import Decoder
from .runtime.sampling import SamplingParams, next_token


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    target_forwards: int = 0
    drafted: int = 0  # drafted tokens offered for verification
    accepted: int = 0  # drafted tokens accepted
    stop_reason: str = ""  # "eos" | "length"
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def tau(self) -> float | None:
        return self.new_tokens / self.target_forwards if self.target_forwards else None

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else None

    @property
    def other_s(self) -> float:
        return max(0.0, self.wall_s - self.prefill_s - self.draft_s - self.verify_s)


def check_lengths(prompt_len: int, max_new_tokens: int, context: int) -> int:
    """Validate the request; return max_new_tokens clamped to what the context window holds."""
    if prompt_len == 0:
        raise SpecdraftError("the prompt is empty: give some text to continue")
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise SpecdraftError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
    if prompt_len >= context:
        raise SpecdraftError(
            f"the prompt has {prompt_len} tokens, more than the model's context window of {context}: shorten it"
        )
    return min(max_new_tokens, context - prompt_len)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate_ids(
    model: Decoder,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    params: SamplingParams = SamplingParams(),
    eos_ids: frozenset[int] = frozenset(),
    on_tokens: Callable[[list[int]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[int], GenerationStats]:
    """Generate up to max_new_tokens ids after prompt_ids; returns (new ids, stats).

    on_tokens is called with each batch of newly committed ids (for streaming); should_stop is
    polled between steps (a disconnected client, a Ctrl-C) and ends generation early.
    """
    ctx = model.cfg.max_position_embeddings
    max_new_tokens = check_lengths(len(prompt_ids), max_new_tokens, ctx)
    device = model.device
    stats = GenerationStats(prompt_tokens=len(prompt_ids))
    gen = None if params.greedy else params.generator(device)
    t0 = time.perf_counter()

    cache = model.new_cache(len(prompt_ids) + max_new_tokens)
    prompt = torch.tensor(prompt_ids, dtype=torch.long, device=device)
    logits = model(prompt, torch.arange(len(prompt_ids), device=device), cache, logits_at=slice(-1, None)).logits
    cache.commit(len(prompt_ids))
    stats.target_forwards += 1
    out: list[int] = []
    tok = next_token(logits, params, gen)
    _sync(device)
    stats.prefill_s = time.perf_counter() - t0
    while True:
        t = int(tok)
        out.append(t)
        if on_tokens is not None:
            on_tokens([t])
        if t in eos_ids:
            stats.stop_reason = "eos"
            break
        if len(out) >= max_new_tokens:
            stats.stop_reason = "length"
            break
        if should_stop is not None and should_stop():
            stats.stop_reason = "cancelled"
            break
        tv = time.perf_counter()
        pos = torch.tensor([cache.length], device=device)
        logits = model(tok.view(1), pos, cache).logits
        cache.commit(1)
        stats.target_forwards += 1
        tok = next_token(logits, params, gen)
        stats.verify_s += time.perf_counter() - tv
    _sync(device)
    stats.new_tokens = len(out)
    stats.wall_s = time.perf_counter() - t0
    return out, stats
