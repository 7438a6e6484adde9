"""What the server's handlers work over: the loaded model, the configuration, the scheduler that
runs requests, the metrics, and what the drafter spec became. Built once, at server start."""

from __future__ import annotations

from dataclasses import dataclass

from ..api import LLM
from ..errors import SpecdraftError
from .metrics import Metrics
from .scheduler import Scheduler


@dataclass(frozen=True)
class ServerConfig:
    model_name: str
    drafter: str = "plain"
    api_key: str | None = None
    max_prompt_tokens: int = 4096
    max_tokens_limit: int = 4096
    default_max_tokens: int = 512
    max_queue: int = 64
    max_batch: int = 1  # requests run together in one forward per step (batch.py)
    max_body_bytes: int = 4 * 1024 * 1024  # a larger request body is refused (413) before it is read
    prefix_cache: int = 4  # KV caches of recent requests kept for prompts that begin like them (0: none)


def drafter_name(llm: LLM, spec: str, temperature: float = 0.0) -> str:
    """The name of the drafter `spec` builds for `llm` (as responses report it), "plain" for none;
    `temperature`: the one requests sampling at it get (it matters only for `auto`)."""
    d = llm.drafter(spec, temperature=temperature)
    return "plain" if d is None else d.name


@dataclass
class AppState:
    llm: LLM
    cfg: ServerConfig
    scheduler: Scheduler
    metrics: Metrics
    drafts_with: dict[str, str]  # what the spec became (`auto` names its choices), greedy and at temperature 1
    context: int  # the model's context window
    max_prompt: int  # the longest prompt accepted, in tokens

    @classmethod
    def start(cls, llm: LLM, cfg: ServerConfig, engine_thread: bool = True) -> AppState:
        """Everything a request would otherwise wait for, done now: the drafters built and prepared
        (a router's routes), the batch rule's row cost measured, the scheduler started (on a thread
        of its own with engine_thread, else the caller runs `scheduler.run()`: server/scheduler.py)."""
        most = llm.model.max_caches  # a llama.cpp context's sequences; None on torch
        if most is not None and cfg.max_batch + cfg.prefix_cache > most:
            raise SpecdraftError(f"{cfg.max_batch} requests at once and {cfg.prefix_cache} kept caches need "
                                 f"{cfg.max_batch + cfg.prefix_cache} llama.cpp sequences; this model was loaded with "
                                 f"{most}: load it with LLM(..., max_batch={cfg.max_batch}, prefix_cache={cfg.prefix_cache})")
        drafters = [llm.drafter(cfg.drafter, temperature=t) for t in (0.0, 1.0)]
        for d in drafters:
            if d is not None:
                d.prepare()
        llm.prefix.slots = cfg.prefix_cache
        if cfg.max_batch > 1 and any(d is not None for d in drafters):
            from ..batch import row_cost

            row_cost(llm.model, cfg.max_batch)  # the batch's draft-length rule reads it: measured now, not mid-request
        metrics = Metrics()
        scheduler = Scheduler(llm, cfg.drafter, cfg.max_queue, metrics, cfg.max_batch, thread=engine_thread)
        context = llm.model.cfg.max_position_embeddings
        return cls(llm, cfg, scheduler, metrics,
                   {"drafts_with": drafter_name(llm, cfg.drafter),
                    "drafts_with_at_temperature_1": drafter_name(llm, cfg.drafter, temperature=1.0)},
                   context, min(cfg.max_prompt_tokens, context - 1))
