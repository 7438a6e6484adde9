"""The FastAPI application: /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics.

Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 bad request,
401 bad API key, 404 unknown model or route, 413 prompt too long, 429 queue full. Speculative
statistics travel in an extension field, `specdraft` (tau, acceptance_rate, target_forwards,
drafter, ...), on the response or on the final stream chunk.

The pieces: state.py (what is loaded and running, built once at start), routes.py (the
endpoints, functions over that state), errors.py (the error shape and handlers), scheduler.py
(the engine thread), schemas.py (the request bodies).
"""

from __future__ import annotations

import contextlib

from fastapi import FastAPI

from ..api import LLM
from . import errors
from .routes import router
from .state import AppState, ServerConfig, drafter_name

__all__ = ["ServerConfig", "create_app", "drafter_name"]


def create_app(llm: LLM, cfg: ServerConfig, engine_thread: bool = True) -> FastAPI:
    """The app; engine_thread: run the engine on a thread of its own (else the caller runs
    `app.state.s.scheduler.run()`, on the thread that loaded the model: server/scheduler.py)."""
    s = AppState.start(llm, cfg, engine_thread)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        s.scheduler.close()

    app = FastAPI(title="specdraft", version="0.1.0", lifespan=lifespan)
    app.state.s = s
    errors.install(app)
    app.include_router(router)
    return app
