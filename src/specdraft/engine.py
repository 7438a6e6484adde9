"""The propose / verify loop over token ids (it knows nothing about text).

Every target forward is counted, the prefill too (it yields the first token), so
tau = new tokens / target forwards is 1.0 for plain decoding and, with a drafter, the mean number
of tokens committed per target forward (accepted drafted tokens + 1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import SpecdraftError
from .runtime.cache import KVCache
from .runtime.model import Decoder
from .drafters.base import Drafter, Needs, StepContext
from .runtime.sampling import SamplingParams, next_token
from .verify.tree import Draft, accepted_slots, depths, verify_mask
from .verify.verify import verify


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    target_forwards: int = 0
    drafted: int = 0  # drafted tokens offered for verification
    accepted: int = 0  # drafted tokens accepted
    stop_reason: str = ""  # "eos" | "length"
    cached_tokens: int = 0  # prompt tokens whose keys and values came from a PrefixStore
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


@dataclass
class PrefixEntry:
    """A generation's KV cache, the ids whose keys and values it holds (the prompt, then every
    committed token but the last), and their final hidden states when the drafter read them."""
    ids: list[int]
    cache: KVCache
    rows: torch.Tensor | None = None


class PrefixStore:
    """What generations leave for the next ones: the caches of the last `slots` of them, most
    recent last. A prompt that begins with some of an entry's ids (a conversation's next turn)
    prefills only the rest; it takes the entry it shares the longest beginning with, and its own
    generation's entry replaces it. With several slots, conversations that alternate (a server's
    clients) each keep theirs; the least recently used entry goes first."""

    def __init__(self, slots: int = 1):
        self.slots = slots
        self.entries: list[PrefixEntry] = []

    @property
    def latest(self) -> PrefixEntry | None:
        return self.entries[-1] if self.entries else None

    def clear(self) -> None:
        self.entries = []

    def put(self, ids: list[int], cache: KVCache, rows: torch.Tensor | None) -> None:
        self.entries.append(PrefixEntry(ids, cache, rows))
        del self.entries[:max(0, len(self.entries) - self.slots)]

    def take(self, prompt_ids: list[int], needs: Needs) -> tuple[int, KVCache | None, torch.Tensor | None]:
        """(tokens reused, their cache, their final hidden states) for `prompt_ids`, out of the
        entry that shares the most with it (removed from the store); (0, None, None) when no entry
        can be reused. At least the prompt's last token is always prefilled again (its logits give
        the first new token)."""
        if needs.hidden_layers:
            return 0, None, None
        best, n = None, 0
        for e in self.entries:
            if needs.final_hidden and e.rows is None:
                continue
            k = 0
            for a, b in zip(e.ids, prompt_ids[:-1]):
                if a != b:
                    break
                k += 1
            if k > n:
                best, n = e, k
        if best is None:
            return 0, None, None
        self.entries.remove(best)
        best.cache.truncate(n)
        return n, best.cache, None if best.rows is None else best.rows[:n]


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
    drafter: Drafter | None = None,
    on_tokens: Callable[[list[int]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_prefill: Callable[[int, int], None] | None = None,
    prefix: PrefixStore | None = None,
) -> tuple[list[int], GenerationStats]:
    """Generate up to max_new_tokens ids after prompt_ids; returns (new ids, stats).

    Without a drafter this is plain decoding. With one, every step is: propose a token tree under
    the last committed token, run the target once over [that token] + tree (tree mask, per-node
    positions), verify, then compact the accepted path into contiguous cache slots and commit.
    on_tokens is called with each batch of newly committed ids (streaming); should_stop is polled
    between steps, and between the prefill's chunks of a long prompt (a disconnected client), and
    ends generation early (after a cancelled prefill with no token). on_prefill(done, total) is
    called after each chunk of the prompt's prefill (`Decoder.prefill`). With `prefix`, the
    prompt's first tokens whose keys and values the store holds are not prefilled again
    (`stats.cached_tokens`), and the store keeps this generation's cache for the next one.
    """
    ctx_window = model.cfg.max_position_embeddings
    max_new_tokens = check_lengths(len(prompt_ids), max_new_tokens, ctx_window)
    device = model.device
    needs = drafter.needs if drafter is not None else Needs()
    stats = GenerationStats(prompt_tokens=len(prompt_ids))
    gen = None if params.greedy else params.generator(device)
    t0 = time.perf_counter()

    # Capacity: the prompt and every new token; each draft is clamped to fit (step.budget).
    capacity = len(prompt_ids) + max_new_tokens
    reused, cache, old_rows = prefix.take(prompt_ids, needs) if prefix is not None else (0, None, None)
    cache = model.new_cache(capacity) if cache is None else cache.grown(capacity)
    stats.cached_tokens = reused
    fwd = model.prefill(prompt_ids[reused:], cache, final_hidden=needs.final_hidden, hidden_layers=needs.hidden_layers,
                        should_stop=should_stop,
                        on_progress=None if on_prefill is None else lambda done: on_prefill(reused + done, len(prompt_ids)))
    if fwd is None:  # cancelled between two chunks of a long prompt
        stats.stop_reason = "cancelled"
        stats.wall_s = stats.prefill_s = time.perf_counter() - t0
        return [], stats
    if old_rows is not None:  # the drafter sees the whole prompt's states, as after a full prefill
        fwd.final_hidden = torch.cat((old_rows, fwd.final_hidden))
    kv_ids, kv_rows = list(prompt_ids), [fwd.final_hidden]  # what the cache holds, and its states (for `prefix`)
    stats.target_forwards += 1
    tok = int(next_token(fwd.logits, params, gen)[0])
    out: list[int] = [tok]
    ids = list(prompt_ids) + out
    step = StepContext(ids=ids, budget=0, capacity=cache.capacity, params=params, generator=gen,
                       hidden=None if fwd.final_hidden is None else fwd.final_hidden[-1], rows=fwd.final_hidden,
                       layer_rows=fwd.layer_hidden or None,
                       target=model if needs.target else None, cache=cache if needs.target else None)
    _sync(device)
    stats.prefill_s = time.perf_counter() - t0
    if drafter is not None:
        td = time.perf_counter()
        drafter.start(prompt_ids, step)
        stats.draft_s += time.perf_counter() - td
    if on_tokens is not None:
        on_tokens([tok])

    while True:
        if tok in eos_ids:
            stats.stop_reason = "eos"
            break
        if len(out) >= max_new_tokens:
            stats.stop_reason = "length"
            break
        if should_stop is not None and should_stop():
            stats.stop_reason = "cancelled"
            break
        # The root (last committed token) takes one slot; the tree may use the rest, but never
        # more than the tokens still wanted (an accepted path longer than that is wasted work).
        step.budget = max(0, min(cache.capacity - cache.length - 1, max_new_tokens - len(out) - 1,
                                 model.max_rows - 1 if model.max_rows else cache.capacity))
        draft = Draft.empty()
        if drafter is not None and step.budget > 0:
            td = time.perf_counter()
            draft = drafter.propose(step).truncated(step.budget)
            stats.draft_s += time.perf_counter() - td
        tv = time.perf_counter()
        n = len(draft)
        tokens = torch.tensor([tok] + draft.tokens, dtype=torch.long, device=device)
        positions = torch.tensor([0] + depths(draft.parents), device=device) + cache.length
        fwd = model(tokens, positions, cache, tree_mask=None if draft.is_chain else verify_mask(draft.parents),
                    final_hidden=needs.final_hidden, hidden_layers=needs.hidden_layers)
        stats.target_forwards += 1
        verdict = verify(draft, fwd.logits, params, gen)
        kept = accepted_slots(verdict.path)  # the root, then the accepted nodes
        cache.compact(kept)
        if prefix is not None:
            kv_ids += [tok] + [draft.tokens[i] for i in verdict.path]
            if needs.final_hidden:
                kv_rows.append(fwd.final_hidden[kept])
        stats.verify_s += time.perf_counter() - tv
        stats.drafted += n
        stats.accepted += len(verdict.path)

        new = verdict.tokens[: max_new_tokens - len(out)]
        for i, t in enumerate(new):  # plain decoding would have stopped at an EOS
            if t in eos_ids:
                new = new[: i + 1]
                break
        tok = new[-1]
        out.extend(new)
        ids.extend(new)
        if fwd.final_hidden is not None:
            step.rows = fwd.final_hidden[kept]
            if fwd.layer_hidden:
                step.layer_rows = {i: h[kept] for i, h in fwd.layer_hidden.items()}
            step.hidden = step.rows[-1]  # whose logits produced the last token
        if drafter is not None:
            td = time.perf_counter()
            drafter.observe(draft, verdict)
            stats.draft_s += time.perf_counter() - td
        if on_tokens is not None:
            on_tokens(new)
    _sync(device)
    if prefix is not None and not needs.hidden_layers:
        prefix.put(kv_ids, cache, torch.cat(kv_rows) if needs.final_hidden else None)
    stats.new_tokens = len(out)
    stats.wall_s = time.perf_counter() - t0
    if drafter is not None:
        stats.extra.update(drafter.describe())
    return out, stats
