"""Continuous batching: several generations advanced by one target forward per step.

Each `Generation` (engine.py) keeps its own KV cache, drafter, draft, sampling generator and stop
conditions; a step asks every running generation for its segment (a prompt chunk, or its root
and draft), runs them all in one `forward_many` (the products read the weights once for every
row; attention runs per sequence) and hands each its rows back. Verification is the same pure
function per sequence, so a request's tokens are those it gets alone wherever the backend's
products give a row the same bits whatever the other rows (tested; docs/BENCHMARKS.md says where
they do not). A generation that finishes leaves at once and a waiting one joins at the next
step; a long prompt is prefilled a chunk per step, between the others' decoding steps.

How much to draft. Alone, a sequence drafts as it always does. In a batch, drafted rows compete
for the forward's rows, and drafting itself takes time the others wait for: `plan_drafts` gives
each sequence the draft length that maximises the batch's expected tokens per second, from each
sequence's recent acceptance rate, the row costs `RowCost` measured on this machine's backend (a
few forwards at the engine's start) and its drafter's cost `DraftCost`, fitted to the time its
recent proposals took. A sequence kept from drafting for `REPROBE_STEPS` steps drafts one node, and
that proposal's time replaces what was measured before.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from .engine import Generation, run_segment
from .runtime.model import ForwardOutput, Segment

# The acceptance rate a sequence is assumed to have before its first verified draft.
PRIOR_ACCEPTANCE = 0.5
# Sequences a server runs at once unless told (--max-batch): 8 single-row steps cost 1.1-1.2x one on
# the float backend's packed products and 2.7-4x on llama.cpp's (docs/BENCHMARKS.md).
DEFAULT_MAX_BATCH = 8
# The longest draft the batch's rule considers for a sequence (gains past it are negligible).
MAX_PLANNED = 16
# Recent proposals a drafter's cost is fitted to.
DRAFT_SAMPLES = 16
# A sequence the rule has kept from drafting this many steps drafts one node, to measure its
# drafter again (a cost measured while the machine was busy would otherwise stop it for good).
REPROBE_STEPS = 8


@dataclass(frozen=True)
class RowCost:
    """Seconds of one target forward by its number of rows, measured at `rows` and interpolated
    linearly between them (extrapolated from the last two past the end)."""

    rows: tuple[int, ...]
    seconds: tuple[float, ...]

    def __call__(self, n: int) -> float:
        r, s = self.rows, self.seconds
        if n <= r[0]:
            return s[0]
        for i in range(1, len(r)):
            if n <= r[i]:
                f = (n - r[i - 1]) / (r[i] - r[i - 1])
                return s[i - 1] + f * (s[i] - s[i - 1])
        slope = (s[-1] - s[-2]) / (r[-1] - r[-2]) if len(r) > 1 else s[-1]
        return s[-1] + (n - r[-1]) * max(slope, 0.0)


def measure_row_cost(model, sequences: int = DEFAULT_MAX_BATCH, rows: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
                     context: int = 64, repeats: int = 1) -> RowCost:
    """Time forwards of each number of `rows`, spread over up to `sequences` sequences as a batch's
    roots and drafts are (chains of `context` cached tokens each); the best of `repeats` a size."""
    gen = torch.Generator().manual_seed(0)
    vocab = min(model.cfg.vocab_size, 1000)
    most = max(rows)
    caches = []
    for _ in range(max(1, min(sequences, most))):
        c = model.new_cache(context + most)
        model.prefill(torch.randint(1, vocab, (context,), generator=gen).tolist(), c)
        caches.append(c)
    out = []
    dev = model.device
    for n in rows:
        k = min(n, len(caches))
        sizes = [n // k + (i < n % k) for i in range(k)]
        segs = [Segment(torch.randint(1, vocab, (m,), generator=gen, device=dev),
                        torch.arange(context, context + m, device=dev), caches[i]) for i, m in enumerate(sizes)]
        best = float("inf")
        for _ in range(repeats + 1):  # the first is a warm-up
            t = time.perf_counter()
            forward_many(model, segs)
            best = min(best, time.perf_counter() - t)
        out.append(best)
    return RowCost(tuple(rows), tuple(out))


def row_cost(model, sequences: int) -> RowCost:
    """`measure_row_cost` once per model and batch size (kept on the model: a server measures it
    at start, a second `generate_batch` reuses it)."""
    kept = model.__dict__.setdefault("_row_costs", {})
    if sequences not in kept:
        kept[sequences] = measure_row_cost(model, sequences)
    return kept[sequences]


def forward_many(model, segments: list[Segment]) -> list[ForwardOutput]:
    """The backend's batched forward, or one forward per segment where it has none."""
    if hasattr(model, "forward_many"):
        return model.forward_many(segments)
    return [run_segment(model, s) for s in segments]


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a step commits with a k-token chain drafted at per-token acceptance alpha:
    1 + alpha + ... + alpha^k."""
    return sum(alpha ** j for j in range(k + 1))


@dataclass(frozen=True)
class DraftCost:
    """Seconds a drafter takes to propose k nodes: `per_draft` once if k > 0, plus `per_node` each
    (a self-drafter runs the target once a node; a trained head once a draft; lookup nearly never)."""

    per_draft: float = 0.0
    per_node: float = 0.0

    def __call__(self, k: int) -> float:
        return self.per_draft + self.per_node * k if k > 0 else 0.0

    @staticmethod
    def fit(samples) -> "DraftCost":
        """The least-squares line through (nodes, seconds) samples of a drafter's proposals, both
        terms kept non-negative; all at one size: the time is put on the nodes (the dearer guess
        for smaller drafts, where a self-drafter's cost lies)."""
        pts = [(float(n), float(t)) for n, t in samples]
        if not pts:
            return DraftCost()
        m = len(pts)
        mn, mt = sum(n for n, _ in pts) / m, sum(t for _, t in pts) / m
        var = sum((n - mn) ** 2 for n, _ in pts)
        if var == 0:
            return DraftCost(0.0, mt / mn) if mn > 0 else DraftCost(mt, 0.0)
        b = sum((n - mn) * (t - mt) for n, t in pts) / var
        a = mt - b * mn
        if a < 0:
            nn = sum(n * n for n, _ in pts)
            return DraftCost(0.0, max(0.0, sum(n * t for n, t in pts) / nn))
        if b < 0:
            return DraftCost(max(0.0, mt), 0.0)
        return DraftCost(a, b)


def plan_drafts(acceptance: list[float], limits: list[int], cost: RowCost,
                drafting: list[DraftCost] | None = None) -> list[int]:
    """Draft lengths for a batch's sequences that maximise expected tokens per second: a
    sequence's k-th drafted token adds acceptance^k expected tokens, one row of the forward (the
    measured curve `cost`) and, with `drafting`, the seconds its drafter takes to propose it.
    limits: each sequence's most (its budget).

    Without drafting costs rows are added best first while the rate rises. With them (a draft's
    first node may cost more than the rest) each sequence's length is then set in turn to its best
    given the others', until none changes."""
    ks = _plan_rows(acceptance, limits, cost)
    if drafting is None or not any(d.per_draft or d.per_node for d in drafting):
        return ks
    return max((_ascend(acceptance, limits, cost, drafting, start) for start in (ks, [0] * len(ks))),
               key=lambda r: r[0])[1]


def _ascend(acceptance, limits, cost, drafting, ks) -> tuple[float, list[int]]:
    ks = list(ks)
    gain = [[0.0] + [a ** j for j in range(1, lim + 1)] for a, lim in zip(acceptance, limits)]
    for g in gain:  # expected extra tokens of k drafted: a + a^2 + ... + a^k
        for j in range(1, len(g)):
            g[j] += g[j - 1]
    b = len(ks)
    tokens = b + sum(g[k] for g, k in zip(gain, ks))
    rows = b + sum(ks)
    extra = sum(d(k) for d, k in zip(drafting, ks))
    best = tokens / (cost(rows) + extra)
    for _ in range(4 * b + 4):
        changed = False
        for i in range(b):
            k0 = ks[i]
            t0, r0, e0 = tokens - gain[i][k0], rows - k0, extra - drafting[i](k0)
            for k in range(limits[i] + 1):
                rate = (t0 + gain[i][k]) / (cost(r0 + k) + e0 + drafting[i](k))
                if rate > best + 1e-12:
                    best, ks[i], changed = rate, k, True
            k = ks[i]
            tokens, rows, extra = t0 + gain[i][k], r0 + k, e0 + drafting[i](k)
        if not changed:
            break
    return best, ks


def _plan_rows(acceptance: list[float], limits: list[int], cost: RowCost) -> list[int]:
    b = len(acceptance)
    ks = [0] * b
    gains = sorted(((a ** (j + 1), i) for i, (a, lim) in enumerate(zip(acceptance, limits)) for j in range(lim)),
                   reverse=True)  # a sequence's gains fall with j, so taking the best first keeps each prefix
    tokens = float(b)
    best_rate, best_ks, rows = tokens / cost(b), list(ks), b
    for g, i in gains:
        if g <= 0:
            break
        ks[i] += 1
        rows += 1
        tokens += g
        rate = tokens / cost(rows)
        if rate > best_rate:
            best_rate, best_ks = rate, list(ks)
    return best_ks


class BatchEngine:
    """Runs generations together, `max_batch` at most at once; the rest wait in order.

    Call `add` to queue a `Generation` and `step` to advance every running one by one forward
    (it returns the generations that finished); `run` steps until all are done."""

    def __init__(self, model, max_batch: int = 8, *, cost: RowCost | None = None, adaptive: bool = True):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.max_batch, self.adaptive = model, max_batch, adaptive
        self.cost = cost
        self.waiting: deque[Generation] = deque()
        self.running: list[Generation] = []
        self.steps = 0
        self.rows = 0  # rows of every forward so far (mean batch rows = rows / steps)
        self.last_batch = 0
        # (drafted nodes, seconds) of recent proposals: each running sequence's, and by drafter name
        self._own: dict[int, deque] = {}
        self._by_name: dict[str, deque] = {}
        self._idle: dict[int, int] = {}  # steps since a planned sequence last drafted
        self._probing: set[int] = set()

    def add(self, g: Generation) -> None:
        self.waiting.append(g)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def _caps(self, decoding: list[Generation]) -> list[int | None]:
        """Each decoding sequence's most drafted nodes this step; None: as it drafts alone. A
        request sampled with a seed always drafts as alone: the draft decides which random numbers
        verification draws, so its tokens stay those of the seed whatever the batch."""
        planned = [g for g in decoding if g.drafter is not None and (g.params.greedy or g.params.seed is None)]
        if len(self.running) <= 1 or not self.adaptive or not planned:
            return [None] * len(decoding)  # alone (as generate_ids drafts), or nothing to plan
        if self.cost is None:
            return [None] * len(decoding)  # (measured before the first sequence started: `step`)
        limits = [min(g.room(), MAX_PLANNED) for g in planned]
        alphas = [PRIOR_ACCEPTANCE if g.acceptance is None else g.acceptance for g in planned]
        caps = dict(zip(map(id, planned), plan_drafts(alphas, limits, self.cost, [self._draft_cost(g) for g in planned])))
        for g in planned:
            i = id(g)
            self._idle[i] = self._idle.get(i, 0) + 1 if caps[i] == 0 else 0
            if self._idle[i] >= REPROBE_STEPS and g.room() > 0:
                caps[i], self._idle[i] = 1, 0
                self._probing.add(i)
        return [caps.get(id(g)) for g in decoding]

    def _draft_cost(self, g: Generation) -> DraftCost:
        """The sequence's drafter's cost, fitted to its own recent proposals once it has two, before
        that to those of every sequence with a drafter of its name (zero before any)."""
        own = self._own.get(id(g))
        samples = own if own is not None and len(own) >= 2 else self._by_name.get(g.drafter.name, ())
        return DraftCost.fit(samples)

    def _note_drafting(self, g: Generation) -> None:
        if g.drafting is None or g.drafter is None:
            return
        if id(g) in self._probing:  # a fresh measurement: what was fitted before goes
            self._probing.discard(id(g))
            self._own.pop(id(g), None)
            self._by_name.pop(g.drafter.name, None)
        self._own.setdefault(id(g), deque(maxlen=DRAFT_SAMPLES)).append(g.drafting)
        self._by_name.setdefault(g.drafter.name, deque(maxlen=DRAFT_SAMPLES)).append(g.drafting)

    @torch.inference_mode()
    def step(self) -> list[Generation]:
        if (self.cost is None and self.adaptive and self.max_batch > 1 and not self.running
                and any(g.drafter is not None for g in self.waiting)):
            self.cost = row_cost(self.model, self.max_batch)  # while no sequence holds a cache
        while self.waiting and len(self.running) < self.max_batch:
            self.running.append(self.waiting.popleft())
        done: list[Generation] = []
        decoding = [g for g in self.running if g.phase == "decode" and not g.finished]
        caps = dict(zip(map(id, decoding), self._caps(decoding)))
        work: list[tuple[Generation, Segment]] = []
        for g in self.running:
            try:
                seg = g.segment(caps.get(id(g)))
            except Exception as e:  # noqa: BLE001 -- this sequence's failure (its drafter, its input), not the batch's
                g.fail(e)
                seg = None
            if seg is None:
                done.append(g)
            else:
                self._note_drafting(g)
                work.append((g, seg))
        if work:
            t = time.perf_counter()
            try:
                outs = forward_many(self.model, [s for _, s in work])
            except Exception:  # noqa: BLE001 -- find whose segment failed: each alone (uncommitted slots are scratch)
                outs = []
                for g, s in work:
                    try:
                        outs.append(run_segment(self.model, s))
                    except Exception as e:  # noqa: BLE001
                        g.fail(e)
                        outs.append(None)
            dt = time.perf_counter() - t
            self.steps += 1
            self.last_batch = len(work)
            self.rows += sum(int(s.tokens.shape[0]) for _, s in work)
            for (g, _), fwd in zip(work, outs):
                if fwd is not None:
                    try:
                        g.consume(fwd, dt)
                    except Exception as e:  # noqa: BLE001
                        g.fail(e)
                if g.error is not None or g.finish_if_done():  # failed, an EOS or its last token: leave now
                    done.append(g)
        self.running = [g for g in self.running if not g.finished]
        for g in done:
            self._own.pop(id(g), None)
            self._idle.pop(id(g), None)
            self._probing.discard(id(g))
        return done

    def run(self, on_done=None) -> None:
        while self.busy:
            for g in self.step():
                if on_done is not None:
                    on_done(g)
