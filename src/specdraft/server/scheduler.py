"""One worker thread runs generations one at a time, first come first served (batch size 1 is the
engine's design). Jobs talk to the async side through an asyncio queue; a job whose client went
away is cancelled between two decoding steps (or two prefill chunks of a long prompt), and its KV
cache is freed with it."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

from ..api import LLM
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


class Scheduler:
    def __init__(self, llm: LLM, drafter: str, max_queue: int, metrics: Metrics):
        self.llm, self.drafter, self.max_queue, self.metrics = llm, drafter, max_queue, metrics
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.depth = 0  # waiting + running
        self._thread = threading.Thread(target=self._work, name="specdraft-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self.depth >= self.max_queue:
                raise QueueFull
            self.depth += 1
            self.metrics.queue_depth.set(self.depth)
        self._q.put(job)

    def close(self) -> None:
        self._q.put(None)

    def _work(self) -> None:
        while (job := self._q.get()) is not None:
            try:
                self._run(job)
            except Exception as e:  # noqa: BLE001 -- delivered to the request, which answers 500
                job.emit("error", e)
            finally:
                with self._lock:
                    self.depth -= 1
                    self.metrics.queue_depth.set(self.depth)

    def _run(self, job: Job) -> None:
        if job.cancel.is_set():
            self.metrics.cancelled.inc()
            job.emit("done", Outcome("", 0, "cancelled", {}))
            return
        stops = StopMatcher(job.stops)
        pieces: list[str] = []
        first = [True]

        def on_text(piece: str) -> None:
            out = stops.push(piece)
            if out:
                if first[0]:
                    self.metrics.ttft.observe(time.perf_counter() - job.submitted)
                    first[0] = False
                pieces.append(out)
                job.emit("text", out)

        r = self.llm.generate(job.prompt_ids, max_new_tokens=job.max_tokens, temperature=job.params.temperature,
                              top_p=job.params.top_p, top_k=job.params.top_k, seed=job.params.seed,
                              drafter=self.drafter, on_text=on_text,
                              should_stop=lambda: job.cancel.is_set() or stops.stopped,
                              reuse_prefix=self.llm.prefix.slots > 0)  # (llm.prefix.slots: the server's --prefix-cache)
        tail = stops.flush()
        if tail:
            pieces.append(tail)
            job.emit("text", tail)
        s = r.stats
        if job.cancel.is_set():
            finish = "cancelled"
            self.metrics.cancelled.inc()
        elif stops.stopped or s.stop_reason == "eos":
            finish = "stop"
        else:
            finish = "length"
        self.metrics.observe_generation(s)
        stats = {"tau": s.tau, "acceptance_rate": s.acceptance_rate, "target_forwards": s.target_forwards,
                 "drafter": r.drafter, "tokens_per_s": s.tokens_per_s, **s.extra}
        job.emit("done", Outcome("".join(pieces), s.new_tokens, finish, stats, s.cached_tokens))
