"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..engine import GenerationStats


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("specdraft_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.completion_tokens = Counter("specdraft_completion_tokens", "Generated tokens", registry=r)
        self.prompt_tokens = Counter("specdraft_prompt_tokens", "Prompt tokens", registry=r)
        self.target_forwards = Counter("specdraft_target_forwards", "Target model forwards", registry=r)
        self.drafted = Counter("specdraft_drafted_tokens", "Drafted tokens offered for verification", registry=r)
        self.accepted = Counter("specdraft_accepted_tokens", "Drafted tokens accepted", registry=r)
        self.cancelled = Counter("specdraft_cancelled", "Generations cancelled (client gone)", registry=r)
        self.queue_depth = Gauge("specdraft_queue_depth", "Requests waiting or running", registry=r)
        self.tau = Gauge("specdraft_tau", "Tokens per target forward since start", registry=r)
        self.acceptance = Gauge("specdraft_acceptance_rate", "Accepted / drafted tokens since start", registry=r)
        self.latency = Histogram("specdraft_request_latency_seconds", "Request latency", ["endpoint"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.ttft = Histogram("specdraft_time_to_first_token_seconds", "Time to first token (queue included)",
                              registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
        self.batch_size = Gauge("specdraft_batch_size", "Sequences in the last batched forward", registry=r)
        self.queue_wait = Histogram("specdraft_queue_wait_seconds", "Time a request waited for a batch slot",
                                    registry=r, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
        self.request_tau = Histogram("specdraft_request_tau", "Tokens per target forward, per request", registry=r,
                                     buckets=(1, 1.1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 6))
        self.request_acceptance = Histogram("specdraft_request_acceptance_rate",
                                            "Accepted / drafted tokens, per request that drafted", registry=r,
                                            buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
        self._tokens = self._forwards = self._drafted = self._accepted = 0

    def observe_generation(self, s: GenerationStats) -> None:
        self.completion_tokens.inc(s.new_tokens)
        self.prompt_tokens.inc(s.prompt_tokens)
        self.target_forwards.inc(s.target_forwards)
        self.drafted.inc(s.drafted)
        self.accepted.inc(s.accepted)
        self._tokens += s.new_tokens
        self._forwards += s.target_forwards
        self._drafted += s.drafted
        self._accepted += s.accepted
        if s.tau is not None:
            self.request_tau.observe(s.tau)
        if s.acceptance_rate is not None:
            self.request_acceptance.observe(s.acceptance_rate)
        if self._forwards:
            self.tau.set(self._tokens / self._forwards)
        if self._drafted:
            self.acceptance.set(self._accepted / self._drafted)

    def render(self) -> bytes:
        return generate_latest(self.registry)
