"""The FastAPI application: /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics.

Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 bad request,
401 bad API key, 404 unknown model or route, 413 prompt too long, 429 queue full. Speculative
statistics travel in an extension field, `specdraft` (tau, acceptance_rate, target_forwards,
drafter, ...), on the response or on the final stream chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..api import LLM
from ..errors import SpecdraftError
from ..runtime.sampling import SamplingParams
from .metrics import Metrics
from .scheduler import Job, Outcome, QueueFull, Scheduler
from .schemas import ChatRequest, CompletionRequest


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


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def error_response(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                   headers: dict[str, str] | None = None):
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status,
                        headers=headers)


def drafter_name(llm: LLM, spec: str, temperature: float = 0.0) -> str:
    """The name of the drafter `spec` builds for `llm` (as responses report it), "plain" for none;
    `temperature`: the one requests sampling at it get (it matters only for `auto`)."""
    d = llm.drafter(spec, temperature=temperature)
    return "plain" if d is None else d.name


def create_app(llm: LLM, cfg: ServerConfig, engine_thread: bool = True) -> FastAPI:
    """The app; engine_thread: run the engine on a thread of its own (else the caller runs
    `app.state.scheduler.run()`, on the thread that loaded the model: server/scheduler.py)."""
    metrics = Metrics()
    for t in (0.0, 1.0):  # what a drafter builds lazily (a router's routes): now, not during a request
        d = llm.drafter(cfg.drafter, temperature=t)
        if d is not None:
            d.prepare()
    most = getattr(llm.model, "max_caches", None)
    if most is not None and cfg.max_batch + cfg.prefix_cache > most:
        raise SpecdraftError(f"{cfg.max_batch} requests at once and {cfg.prefix_cache} kept caches need "
                             f"{cfg.max_batch + cfg.prefix_cache} llama.cpp sequences; this model was loaded with "
                             f"{most}: load it with LLM(..., max_batch={cfg.max_batch}, prefix_cache={cfg.prefix_cache})")
    llm.prefix.slots = cfg.prefix_cache
    if cfg.max_batch > 1 and any(llm.drafter(cfg.drafter, temperature=t) is not None for t in (0.0, 1.0)):
        from ..batch import row_cost

        row_cost(llm.model, cfg.max_batch)  # the batch's draft-length rule reads it: measured now, not mid-request
    scheduler = Scheduler(llm, cfg.drafter, cfg.max_queue, metrics, cfg.max_batch, thread=engine_thread)
    # What the spec became (`auto` names its choices): for greedy requests, and for requests at
    # temperature 1 (the API's default).
    drafts_with = {"drafts_with": drafter_name(llm, cfg.drafter),
                   "drafts_with_at_temperature_1": drafter_name(llm, cfg.drafter, temperature=1.0)}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        scheduler.close()

    app = FastAPI(title="specdraft", version="0.1.0", lifespan=lifespan)
    app.state.scheduler, app.state.metrics, app.state.config = scheduler, metrics, cfg
    context = llm.model.cfg.max_position_embeddings
    max_prompt = min(cfg.max_prompt_tokens, context - 1)

    @app.middleware("http")
    async def _body_limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > cfg.max_body_bytes):
            metrics.requests.labels(request.url.path, "413").inc()
            return error_response(413, f"the request body is larger than {cfg.max_body_bytes} bytes",
                                  code="body_too_large")
        return await call_next(request)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        metrics.requests.labels(request.url.path, str(e.status)).inc()
        return error_response(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        metrics.requests.labels(request.url.path, "400").inc()
        err = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        msg = err.get("msg", "invalid request")
        if err.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", code="invalid_json")
        return error_response(400, f"{where}: {msg}" if where else msg, param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), "invalid_request_error" if e.status_code < 500 else "server_error")

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        metrics.requests.labels(request.url.path, "500").inc()
        return error_response(500, f"internal error: {type(e).__name__}", "server_error")

    def check_auth(request: Request) -> None:
        if cfg.api_key is None:
            return
        header = request.headers.get("authorization", "")
        if not secrets.compare_digest(header.encode(), f"Bearer {cfg.api_key}".encode()):
            raise APIError(401, "invalid API key: pass it as 'Authorization: Bearer KEY'", "authentication_error",
                           code="invalid_api_key")

    def check_common(req) -> tuple[SamplingParams, int, list[str]]:
        if req.model != cfg.model_name:
            raise APIError(404, f"model {req.model!r} is not served here; this server serves {cfg.model_name!r}",
                           param="model", code="model_not_found")
        if req.n != 1:
            raise APIError(400, "only n=1 is supported", param="n")
        max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
        if max_tokens is None:
            max_tokens = cfg.default_max_tokens
        if max_tokens < 1 or max_tokens > cfg.max_tokens_limit:
            raise APIError(400, f"max_tokens must be between 1 and {cfg.max_tokens_limit}, got {max_tokens}",
                           param="max_tokens")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4:
            raise APIError(400, "at most 4 stop sequences", param="stop")
        try:
            params = SamplingParams(temperature=1.0 if req.temperature is None else req.temperature,
                                    top_p=1.0 if req.top_p is None else req.top_p,
                                    top_k=getattr(req, "top_k", None) or 0, seed=req.seed)
        except SpecdraftError as e:
            raise APIError(400, str(e)) from None
        return params, max_tokens, stops

    def check_prompt(ids: list[int]) -> None:
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        if len(ids) > max_prompt:
            raise APIError(413, f"the prompt has {len(ids)} tokens; this server accepts at most {max_prompt}",
                           code="context_length_exceeded")

    def submit(ids, params, max_tokens, stops) -> Job:
        # Never generate past the context window (the engine would clamp; say so up front instead).
        job = Job(ids, params, min(max_tokens, context - len(ids)), stops, asyncio.get_running_loop())
        try:
            scheduler.submit(job)
        except QueueFull:
            wait = scheduler.retry_after()
            raise APIError(429, f"the server is busy ({cfg.max_queue} requests queued): retry in {wait} s",
                           "rate_limit_error", code="queue_full", headers={"Retry-After": str(wait)}) from None
        return job

    async def collect(job: Job, request: Request) -> Outcome:
        """Wait for a non-streamed job, cancelling it if the client disconnects."""
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel.set()
                continue
            if kind == "done":
                return value
            if kind == "error":
                raise value

    def stream(job: Job, make_chunk, final_chunk, endpoint: str, t0: float):
        async def events():
            try:
                head = make_chunk(None)
                if head is not None:
                    yield f"data: {json.dumps(head)}\n\n"
                while True:
                    kind, value = await job.events.get()
                    if kind == "text":
                        yield f"data: {json.dumps(make_chunk(value))}\n\n"
                    elif kind == "error":
                        yield f"data: {json.dumps({'error': {'message': str(value), 'type': 'server_error'}})}\n\n"
                        break
                    else:
                        yield f"data: {json.dumps(final_chunk(value))}\n\n"
                        break
                yield "data: [DONE]\n\n"
                metrics.requests.labels(endpoint, "200").inc()
                metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
            finally:
                job.cancel.set()  # a no-op when done; stops the generation when the client left

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def usage(job: Job, out: Outcome) -> dict:
        return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": out.completion_tokens,
                "total_tokens": len(job.prompt_ids) + out.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": out.cached_tokens}}

    def finish(out: Outcome) -> str:
        return "stop" if out.finish_reason == "cancelled" else out.finish_reason

    async def respond(job: Job, req, request: Request, endpoint: str, t0: float, id_prefix: str, *,
                      chunk_object: str, chunk_choice, final_choice, full_object: str, full_choice):
        """Answer one job as a stream of chunks or as one JSON object; the endpoints differ only in
        the shapes of their choices."""
        base = {"id": f"{id_prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": cfg.model_name}
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))

            def chunk(piece):
                choice = chunk_choice(piece)
                return None if choice is None else {**base, "object": chunk_object, "choices": [choice]}

            def final(out: Outcome):
                c = {**base, "object": chunk_object, "choices": [final_choice(out)], "specdraft": out.stats}
                if include_usage:
                    c["usage"] = usage(job, out)
                return c

            return stream(job, chunk, final, endpoint, t0)
        out = await collect(job, request)
        metrics.requests.labels(endpoint, "200").inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return {**base, "object": full_object, "choices": [full_choice(out)], "usage": usage(job, out),
                "specdraft": out.stats}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": cfg.model_name, "drafter": cfg.drafter, **drafts_with,
                "queue_depth": scheduler.depth, "max_batch": scheduler.max_batch}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render().decode(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": 0,
                                             "owned_by": "specdraft",
                                             "specdraft": {"drafter": cfg.drafter, **drafts_with}}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        check_auth(request)
        t0 = time.perf_counter()
        params, max_tokens, stops = check_common(req)
        if not req.messages:
            raise APIError(400, "messages must not be empty", param="messages")
        try:
            ids = llm.tokenizer.encode_prompt([{"role": m.role if m.role != "developer" else "system",
                                                "content": m.text()} for m in req.messages], chat=True)
        except SpecdraftError as e:
            raise APIError(400, str(e), param="messages") from None
        check_prompt(ids)
        job = submit(ids, params, max_tokens, stops)
        return await respond(
            job, req, request, "/v1/chat/completions", t0, "chatcmpl", chunk_object="chat.completion.chunk",
            chunk_choice=lambda piece: {"index": 0, "finish_reason": None,
                                        "delta": {"role": "assistant", "content": ""} if piece is None else {"content": piece}},
            final_choice=lambda out: {"index": 0, "delta": {}, "finish_reason": finish(out)},
            full_object="chat.completion",
            full_choice=lambda out: {"index": 0, "message": {"role": "assistant", "content": out.text},
                                     "finish_reason": finish(out), "logprobs": None})

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_auth(request)
        t0 = time.perf_counter()
        params, max_tokens, stops = check_common(req)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "only one prompt per request is supported", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise APIError(400, "the prompt is empty", param="prompt")
            ids = llm.tokenizer.encode_prompt(prompt, chat=False)
        else:
            vocab = llm.model.cfg.vocab_size
            if any(not 0 <= t < vocab for t in prompt):
                raise APIError(400, f"token ids must be in [0, {vocab})", param="prompt")
            ids = list(prompt)
        check_prompt(ids)
        job = submit(ids, params, max_tokens, stops)

        def choice(text: str, reason: str | None) -> dict:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}

        return await respond(
            job, req, request, "/v1/completions", t0, "cmpl", chunk_object="text_completion",
            chunk_choice=lambda piece: None if piece is None else choice(piece, None),
            final_choice=lambda out: choice("", finish(out)),
            full_object="text_completion", full_choice=lambda out: choice(out.text, finish(out)))

    return app
