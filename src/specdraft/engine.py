"""The propose / verify loop over token ids (it knows nothing about text).

`Generation` is one sequence's loop, step by step: it hands out the target forward it needs next
(a `Segment`: a prompt chunk, or the root and a draft) and takes that forward's output. Alone,
`generate_ids` runs each segment by itself; `BatchEngine` (batch.py) runs the segments of several
generations in one forward (`Decoder.forward_many`), so sequences join and leave between steps.

Every target forward is counted, the prefill too (it yields the first token), so
tau = new tokens / target forwards is 1.0 for plain decoding and, with a drafter, the mean number
of tokens committed per target forward (accepted drafted tokens + 1).

Long because it is the loop's state machine (`Generation`: prefill, propose, verify, commit,
finish) with the prefix store it hands caches to; its steps read each other's state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import SpecdraftError
from .runtime.cache import KVCache
from .runtime.model import PREFILL_CHUNK, Decoder, ForwardOutput, Segment, run_segment
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


class Generation:
    """One sequence's generation as a state machine: `segment()` gives the target forward it needs
    next (None once finished), `consume(fwd)` takes its output. Alone or in a batch, a sequence
    goes through the same steps and computes the same drafts, verdicts and tokens.

    The prompt (less what `prefix` holds) is prefilled in chunks of `chunk` tokens; then every step
    is: propose a token tree under the last committed token, run the target once over [that token]
    + tree (tree mask, per-node positions), verify, then compact the accepted path into contiguous
    cache slots and commit. on_tokens is called with each batch of newly committed ids (streaming);
    should_stop is polled before every step and every prefill chunk but the first (a client gone)
    and ends generation early (after a cancelled prefill with no token). on_prefill(done, total) is
    called after each prompt chunk. With `prefix`, the prompt's first tokens whose keys and values
    the store holds are not prefilled again (`stats.cached_tokens`), and the store keeps this
    generation's cache for the next one.
    """

    def __init__(self, model: Decoder, prompt_ids: list[int], *, max_new_tokens: int,
                 params: SamplingParams = SamplingParams(), eos_ids: frozenset[int] = frozenset(),
                 drafter: Drafter | None = None, on_tokens: Callable[[list[int]], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, on_prefill: Callable[[int, int], None] | None = None,
                 prefix: PrefixStore | None = None, chunk: int | None = None):
        self.t0 = time.perf_counter()
        self.model = model
        self.max_new_tokens = check_lengths(len(prompt_ids), max_new_tokens, model.cfg.max_position_embeddings)
        self.prompt_ids = list(prompt_ids)
        self.params, self.eos_ids, self.drafter = params, eos_ids, drafter
        self.drafter_name = "plain" if drafter is None else drafter.name
        self.on_tokens, self.should_stop, self.on_prefill, self.prefix = on_tokens, should_stop, on_prefill, prefix
        self.chunk = chunk or PREFILL_CHUNK  # (the module's value at the call: tests set it)
        self.needs = drafter.needs if drafter is not None else Needs()
        self.stats = GenerationStats(prompt_tokens=len(prompt_ids))
        self.gen = None if params.greedy else params.generator(model.device)
        self.out: list[int] = []
        self.finished = False
        self.phase = "prefill"  # "prefill" | "decode"
        # Capacity: the prompt and every new token; each draft is clamped to fit (step.budget).
        self.capacity = len(prompt_ids) + self.max_new_tokens
        self.cache = None  # taken at the first step (`_begin`): a batch's waiting sequences hold none
        self.reused = self.filled = 0  # prompt tokens whose keys and values a PrefixStore held; in the cache
        self.old_rows = None
        self.finals: list[torch.Tensor] = []
        self.layers: dict[int, list[torch.Tensor]] = {i: [] for i in self.needs.hidden_layers}
        self.draft: Draft | None = None
        self.acceptance: float | None = None  # recent acceptance of drafted tokens (BatchEngine's rule)
        self.drafting: tuple[int, float] | None = None  # the last step's (drafted nodes, seconds drafting)
        self.error: Exception | None = None  # what ended it, if a step failed (`fail`)

    # -- the forward this sequence needs next -------------------------------------------------

    def segment(self, max_draft: int | None = None) -> Segment | None:
        """The next forward's rows for this sequence, or None when the generation has finished
        (then `result()` is ready). max_draft caps the draft's nodes (a batch's rule); None drafts
        as alone."""
        if self.finished:
            return None
        if self.phase == "prefill":
            return self._prefill_segment()
        if self.finish_if_done():
            return None
        if self.should_stop is not None and self.should_stop():
            return self._finish("cancelled")
        model, cache, step = self.model, self.cache, self.step
        tok = self.out[-1]
        step.budget = room = self.room()
        if max_draft is not None:
            step.budget = min(room, max_draft)
        draft = Draft.empty()
        self.drafting = None
        if self.drafter is not None and step.budget > 0:
            td = time.perf_counter()
            draft = self.drafter.propose(step).truncated(step.budget)
            dt = time.perf_counter() - td
            self.stats.draft_s += dt
            self.drafting = (len(draft), dt)
        elif self.drafter is not None and room > 0:  # the batch's rule said no draft this step
            td = time.perf_counter()
            self.drafter.catch_up(step)
            self.stats.draft_s += time.perf_counter() - td
        self.draft = draft
        device = model.device
        tokens = torch.tensor([tok] + draft.tokens, dtype=torch.long, device=device)
        positions = torch.tensor([0] + depths(draft.parents), device=device) + cache.length
        return Segment(tokens, positions, cache, tree_mask=None if draft.is_chain else verify_mask(draft.parents),
                       final_hidden=self.needs.final_hidden, hidden_layers=self.needs.hidden_layers)

    def room(self) -> int:
        """The most nodes the next draft may have: the root (last committed token) takes one slot,
        the tree may use the rest, but never more than the tokens still wanted (an accepted path
        longer than that is wasted work), nor more than the backend verifies exactly."""
        cache, model = self.cache, self.model
        return max(0, min(cache.capacity - cache.length - 1, self.max_new_tokens - len(self.out) - 1,
                          model.max_rows - 1 if model.max_rows else cache.capacity))

    def finish_if_done(self) -> bool:
        """End the generation if its last token is an EOS or it has all its tokens; whether it has
        ended."""
        if self.finished or self.phase != "decode":
            return self.finished
        if self.out[-1] in self.eos_ids:
            self._finish("eos")
        elif len(self.out) >= self.max_new_tokens:
            self._finish("length")
        return self.finished

    def _begin(self) -> None:
        self.t0 = time.perf_counter()
        prefix = self.prefix
        self.reused, cache, self.old_rows = (prefix.take(self.prompt_ids, self.needs) if prefix is not None
                                             else (0, None, None))
        self.cache = self.model.new_cache(self.capacity) if cache is None else cache.grown(self.capacity)
        self.stats.cached_tokens = self.filled = self.reused

    def _prefill_segment(self) -> Segment | None:
        if self.cache is None:
            self._begin()
        elif self.filled > self.reused and self.should_stop is not None and self.should_stop():
            return self._finish("cancelled")  # between two chunks of a long prompt: no token
        lo, n = self.filled, len(self.prompt_ids)
        hi = min(n, lo + self.chunk)
        start = self.cache.length
        device = self.model.device
        return Segment(torch.tensor(self.prompt_ids[lo:hi], dtype=torch.long, device=device),
                       torch.arange(start, start + hi - lo, device=device), self.cache,
                       logits_at=slice(-1, None) if hi == n else slice(0, 0), final_hidden=self.needs.final_hidden,
                       hidden_layers=self.needs.hidden_layers, prefill=True)

    # -- its output -------------------------------------------------------------------------------

    def consume(self, fwd: ForwardOutput, seconds: float = 0.0) -> None:
        """Take the forward's output for the segment `segment()` gave; `seconds`: its time."""
        if self.phase == "prefill":
            self._consume_prefill(fwd)
        else:
            self._consume_step(fwd, seconds)

    def _consume_prefill(self, fwd: ForwardOutput) -> None:
        n = len(self.prompt_ids)
        hi = min(n, self.filled + self.chunk)
        self.cache.commit(hi - self.filled)
        self.filled = hi
        if self.on_prefill is not None:
            self.on_prefill(hi, n)
        if self.needs.final_hidden:
            self.finals.append(fwd.final_hidden)
        for i in self.needs.hidden_layers:
            self.layers[i].append(fwd.layer_hidden[i])
        if hi < n:
            return
        rows = None
        if self.needs.final_hidden:
            rows = torch.cat(([self.old_rows] if self.old_rows is not None else []) + self.finals)
        layer_rows = {i: torch.cat(v) for i, v in self.layers.items()} if self.needs.hidden_layers else None
        self.finals, self.layers = [], {}
        # what the cache holds, and its states (for `prefix`)
        self.kv_ids, self.kv_rows = list(self.prompt_ids), [rows]
        self.stats.target_forwards += 1
        tok = int(next_token(fwd.logits, self.params, self.gen)[0])
        self.out.append(tok)
        self.ids = list(self.prompt_ids) + self.out
        needs = self.needs
        self.step = StepContext(ids=self.ids, budget=0, capacity=self.cache.capacity, params=self.params,
                                generator=self.gen, hidden=None if rows is None else rows[-1], rows=rows,
                                layer_rows=layer_rows, target=self.model if needs.target else None,
                                cache=self.cache if needs.target else None)
        _sync(self.model.device)
        self.stats.prefill_s = time.perf_counter() - self.t0
        self.phase = "decode"
        if self.drafter is not None:
            td = time.perf_counter()
            self.drafter.start(self.prompt_ids, self.step)
            self.stats.draft_s += time.perf_counter() - td
        if self.on_tokens is not None:
            self.on_tokens([tok])

    def _consume_step(self, fwd: ForwardOutput, seconds: float) -> None:
        tv = time.perf_counter()
        draft, stats, step = self.draft, self.stats, self.step
        tok = self.out[-1]
        n = len(draft)
        stats.target_forwards += 1
        verdict = verify(draft, fwd.logits, self.params, self.gen)
        kept = accepted_slots(verdict.path)  # the root, then the accepted nodes
        self.cache.compact(kept)
        if self.prefix is not None:
            self.kv_ids += [tok] + [draft.tokens[i] for i in verdict.path]
            if self.needs.final_hidden:
                self.kv_rows.append(fwd.final_hidden[kept])
        stats.drafted += n
        stats.accepted += len(verdict.path)
        if n:
            rate = len(verdict.path) / n
            self.acceptance = rate if self.acceptance is None else 0.7 * self.acceptance + 0.3 * rate

        new = verdict.tokens[: self.max_new_tokens - len(self.out)]
        for i, t in enumerate(new):  # plain decoding would have stopped at an EOS
            if t in self.eos_ids:
                new = new[: i + 1]
                break
        self.out.extend(new)
        self.ids.extend(new)
        if fwd.final_hidden is not None:
            step.rows = fwd.final_hidden[kept]
            if fwd.layer_hidden:
                step.layer_rows = {i: h[kept] for i, h in fwd.layer_hidden.items()}
            step.hidden = step.rows[-1]  # whose logits produced the last token
        stats.verify_s += seconds + time.perf_counter() - tv
        if self.drafter is not None:
            td = time.perf_counter()
            self.drafter.observe(draft, verdict)
            stats.draft_s += time.perf_counter() - td
        if self.on_tokens is not None:
            self.on_tokens(new)

    def _finish(self, reason: str) -> None:
        self.finished = True
        stats = self.stats
        stats.stop_reason = reason
        _sync(self.model.device)
        if self.phase == "prefill":  # cancelled between two chunks of a long prompt
            stats.wall_s = stats.prefill_s = time.perf_counter() - self.t0
            self._release()
            return None
        if self.prefix is not None and not self.needs.hidden_layers:
            self.prefix.put(self.kv_ids, self.cache, torch.cat(self.kv_rows) if self.needs.final_hidden else None)
        stats.new_tokens = len(self.out)
        stats.wall_s = time.perf_counter() - self.t0
        if self.drafter is not None:
            stats.extra.update(self.drafter.describe())
        self._release()
        return None

    def _release(self) -> None:
        """Let go of the KV cache and the drafter's state now (not when a caller's reference cycle
        is collected): a batch's next sequence takes the memory, or llama.cpp's sequence."""
        self.cache = self.step = self.draft = self.drafter = None
        self.kv_rows = self.finals = self.old_rows = None

    def cancel(self) -> None:
        """End the generation now (the caller is gone); nothing if it has ended."""
        if not self.finished:
            self._finish("cancelled")

    def fail(self, error: Exception) -> None:
        """End the generation with an error (a step of it failed; a batch goes on without it)."""
        self.error = error
        self.finished = True
        self._release()
        self.stats.stop_reason = "error"
        self.stats.new_tokens = len(self.out)
        self.stats.wall_s = time.perf_counter() - self.t0

    def result(self) -> tuple[list[int], GenerationStats]:
        return self.out, self.stats


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
    """Generate up to max_new_tokens ids after prompt_ids, alone; returns (new ids, stats). Without
    a drafter this is plain decoding. See `Generation` for the steps and the callbacks."""
    g = Generation(model, prompt_ids, max_new_tokens=max_new_tokens, params=params, eos_ids=eos_ids,
                   drafter=drafter, on_tokens=on_tokens, should_stop=should_stop, on_prefill=on_prefill,
                   prefix=prefix)
    return run_generation(model, g)


@torch.inference_mode()
def run_generation(model, g: Generation) -> tuple[list[int], GenerationStats]:
    """Run a generation alone to its end, one forward per step."""
    while (seg := g.segment()) is not None:
        t = time.perf_counter()
        fwd = run_segment(model, seg)
        g.consume(fwd, time.perf_counter() - t)
    return g.result()
