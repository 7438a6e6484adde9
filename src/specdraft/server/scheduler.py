"""One worker thread runs every request in a `BatchEngine` (batch.py): up to `max_batch` at once,
one target forward per step for all of them; the rest wait in order. Jobs talk to the async side
through an asyncio queue. A job whose client went away is cancelled at the next step (or between
two prefill chunks of a long prompt) and its slot and KV cache go to the next waiting job; a job
that fails (a bad stop string, a cache that overflows) ends alone with its error, never the batch.

Which thread runs the engine matters on a CPU: torch's and llama.cpp's OpenMP kernels ran at half
speed on a thread other than the one that had loaded the model and run its first forwards
(SmolLM2, 8 sequences: 57 instead of 128 tokens/s with torch, 75 instead of 126 with llama.cpp).
`specdraft serve` therefore runs the engine (`run`) on the main thread and the HTTP server on
another; `thread=True` (tests, embedding) runs it on a thread of its own."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

from ..api import LLM
from ..batch import BatchEngine
from ..runtime.sampling import SamplingParams
from .metrics import Metrics
from .stops import StopMatcher


class QueueFull(Exception):
    pass


@dataclass
class Job:
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    stops: list[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)

    def emit(self, kind: str, value=None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


@dataclass
class Outcome:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "cancelled"
    stats: dict
    cached_tokens: int = 0  # prompt tokens whose keys and values an earlier request left


class _Running:
    """A job's generation and its text side: detokenizer, stop strings, what was sent."""

    def __init__(self, job: Job, llm: LLM, drafter_spec: str, metrics: Metrics, reuse_prefix: bool):
        self.job, self.metrics = job, metrics
        self.stops = StopMatcher(job.stops)
        self.pieces: list[str] = []
        self.first = True
        self.gen, self.flush = llm.generation(job.prompt_ids, job.params, max_new_tokens=job.max_tokens,
                                              drafter=drafter_spec, on_text=self.text, should_stop=self.should_stop,
                                              reuse_prefix=reuse_prefix, fork=True)

    def should_stop(self) -> bool:
        return self.job.cancel.is_set() or self.stops.stopped

    def text(self, piece: str) -> None:
        out = self.stops.push(piece)
        if out:
            if self.first:
                self.metrics.ttft.observe(time.perf_counter() - self.job.submitted)
                self.first = False
            self.pieces.append(out)
            self.job.emit("text", out)

    def finish(self) -> None:
        g, job, m = self.gen, self.job, self.metrics
        if g.error is not None:
            job.emit("error", g.error)
            return
        self.flush()
        tail = self.stops.flush()
        if tail:
            self.pieces.append(tail)
            job.emit("text", tail)
        s = g.stats
        if job.cancel.is_set():
            reason = "cancelled"
            m.cancelled.inc()
        elif self.stops.stopped or s.stop_reason == "eos":
            reason = "stop"
        else:
            reason = "length"
        m.observe_generation(s)
        stats = {"tau": s.tau, "acceptance_rate": s.acceptance_rate, "target_forwards": s.target_forwards,
                 "drafter": g.drafter_name, "tokens_per_s": s.tokens_per_s, **s.extra}
        job.emit("done", Outcome("".join(self.pieces), s.new_tokens, reason, stats, s.cached_tokens))


class Scheduler:
    """Takes jobs (at most `max_queue` waiting or running) and runs them `max_batch` at a time."""

    def __init__(self, llm: LLM, drafter: str, max_queue: int, metrics: Metrics, max_batch: int = 1,
                 thread: bool = True):
        self.llm, self.drafter, self.max_queue, self.metrics = llm, drafter, max_queue, metrics
        self.engine = BatchEngine(llm.model, max_batch)
        self._running: dict[int, _Running] = {}  # by id of the generation
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.depth = 0  # waiting + running
        self.finished = 0  # requests ended, and their seconds (for Retry-After)
        self.seconds = 0.0
        if thread:
            threading.Thread(target=self.run, name="specdraft-engine", daemon=True).start()

    @property
    def max_batch(self) -> int:
        return self.engine.max_batch

    def submit(self, job: Job) -> None:
        with self._lock:
            if self.depth >= self.max_queue:
                raise QueueFull
            self.depth += 1
            self.metrics.queue_depth.set(self.depth)
        self._q.put(job)

    def retry_after(self) -> int:
        """Seconds a client turned away should wait: the queue ahead of it, at the mean request
        time so far, `max_batch` at a time (at least 1)."""
        with self._lock:
            mean = self.seconds / self.finished if self.finished else 1.0
            return max(1, round(mean * self.depth / self.max_batch))

    def close(self) -> None:
        self._q.put(None)

    def _done(self, r: _Running) -> None:
        try:
            r.finish()
        except Exception as e:  # noqa: BLE001 -- delivered to the request, which answers 500
            r.job.emit("error", e)
        with self._lock:
            self.finished += 1
            self.seconds += time.perf_counter() - r.job.submitted
        self._leave()

    def _leave(self) -> None:
        """A job is no longer waiting or running."""
        with self._lock:
            self.depth -= 1
            self.metrics.queue_depth.set(self.depth)

    def _start(self, job: Job) -> None:
        """Give a job its generation in the engine (or end it: cancelled while queued, bad input)."""
        self.metrics.queue_wait.observe(time.perf_counter() - job.submitted)
        if job.cancel.is_set():
            self.metrics.cancelled.inc()
            job.emit("done", Outcome("", 0, "cancelled", {}))
            self._leave()
            return
        try:
            r = _Running(job, self.llm, self.drafter, self.metrics, reuse_prefix=self.llm.prefix.slots > 0)
        except Exception as e:  # noqa: BLE001
            job.emit("error", e)
            self._leave()
            return
        self._running[id(r.gen)] = r
        self.engine.add(r.gen)

    def run(self) -> None:
        """The engine loop, until `close`: on the thread that calls it (see the module doc)."""
        eng = self.engine
        waiting: list[Job] = []
        while True:
            # Block for work only when there is none; otherwise take what arrived since the last step.
            try:
                while True:
                    job = self._q.get(block=not (eng.busy or waiting))
                    if job is None:
                        return
                    waiting.append(job)
            except queue.Empty:
                pass
            while waiting and len(eng.running) + len(eng.waiting) < eng.max_batch:
                self._start(waiting.pop(0))
            if not eng.busy:
                continue
            for g in eng.step():
                self._done(self._running.pop(id(g)))
            self.metrics.batch_size.set(eng.last_batch)
