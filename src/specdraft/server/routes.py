"""The endpoints, as functions over the app's state (`request.app.state.s`, server/state.py):
/health, /metrics, /v1/models, /v1/chat/completions, /v1/completions. A request is checked,
encoded, queued as a `Job` and answered as one JSON object or a stream of chunks; the two
completion endpoints differ only in the shapes of their choices."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from typing import Callable

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from ..errors import SpecdraftError
from .errors import APIError
from .scheduler import Job, Outcome, QueueFull
from .schemas import ChatRequest, CompletionRequest
from .state import AppState

router = APIRouter()
MAX_STOPS = 4


def _state(request: Request) -> AppState:
    return request.app.state.s


def check_auth(s: AppState, request: Request) -> None:
    if s.cfg.api_key is None:
        return
    header = request.headers.get("authorization", "")
    if not secrets.compare_digest(header.encode(), f"Bearer {s.cfg.api_key}".encode()):
        raise APIError(401, "invalid API key: pass it as 'Authorization: Bearer KEY'", "authentication_error",
                       code="invalid_api_key")


def check_prompt(s: AppState, ids: list[int]) -> None:
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    if len(ids) > s.max_prompt:
        raise APIError(413, f"the prompt has {len(ids)} tokens; this server accepts at most {s.max_prompt}",
                       code="context_length_exceeded")


def check(s: AppState, req) -> tuple:
    """What every completion request is checked for (model, n, max_tokens, stop, sampling), before
    its prompt is encoded: (sampling params, max_tokens, stops)."""
    cfg = s.cfg
    if req.model != cfg.model_name:
        raise APIError(404, f"model {req.model!r} is not served here; this server serves {cfg.model_name!r}",
                       param="model", code="model_not_found")
    if req.n != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    max_tokens = req.token_limit()
    if max_tokens is None:
        max_tokens = cfg.default_max_tokens
    if max_tokens < 1 or max_tokens > cfg.max_tokens_limit:
        raise APIError(400, f"max_tokens must be between 1 and {cfg.max_tokens_limit}, got {max_tokens}",
                       param="max_tokens")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"at most {MAX_STOPS} stop sequences", param="stop")
    try:
        params = req.sampling_params()
    except SpecdraftError as e:
        raise APIError(400, str(e)) from None
    return params, max_tokens, stops


def submit(s: AppState, ids: list[int], checked: tuple) -> Job:
    """Queue the request (a 429 with Retry-After when the queue is full)."""
    check_prompt(s, ids)
    params, max_tokens, stops = checked
    # Never generate past the context window (the engine would clamp; say so up front instead).
    job = Job(ids, params, min(max_tokens, s.context - len(ids)), stops, asyncio.get_running_loop())
    try:
        s.scheduler.submit(job)
    except QueueFull:
        wait = s.scheduler.retry_after()
        raise APIError(429, f"the server is busy ({s.cfg.max_queue} requests queued): retry in {wait} s",
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


def _served(s: AppState, endpoint: str, t0: float) -> None:
    s.metrics.requests.labels(endpoint, "200").inc()
    s.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)


def stream(s: AppState, job: Job, make_chunk: Callable, final_chunk: Callable, endpoint: str, t0: float):
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
            _served(s, endpoint, t0)
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


async def respond(s: AppState, job: Job, req, request: Request, endpoint: str, t0: float, id_prefix: str, *,
                  chunk_object: str, chunk_choice, final_choice, full_object: str, full_choice):
    """Answer one job as a stream of chunks or as one JSON object."""
    base = {"id": f"{id_prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": s.cfg.model_name}
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

        return stream(s, job, chunk, final, endpoint, t0)
    out = await collect(job, request)
    _served(s, endpoint, t0)
    return {**base, "object": full_object, "choices": [full_choice(out)], "usage": usage(job, out),
            "specdraft": out.stats}


@router.get("/health")
async def health(request: Request):
    s = _state(request)
    return {"status": "ok", "model": s.cfg.model_name, "drafter": s.cfg.drafter, **s.drafts_with,
            "queue_depth": s.scheduler.depth, "max_batch": s.scheduler.max_batch}


@router.get("/metrics")
async def prometheus(request: Request):
    return PlainTextResponse(_state(request).metrics.render().decode(), media_type="text/plain; version=0.0.4")


@router.get("/v1/models")
async def models(request: Request):
    s = _state(request)
    check_auth(s, request)
    return {"object": "list", "data": [{"id": s.cfg.model_name, "object": "model", "created": 0,
                                         "owned_by": "specdraft",
                                         "specdraft": {"drafter": s.cfg.drafter, **s.drafts_with}}]}


@router.post("/v1/chat/completions")
async def chat(req: ChatRequest, request: Request):
    s = _state(request)
    check_auth(s, request)
    t0 = time.perf_counter()
    checked = check(s, req)
    if not req.messages:
        raise APIError(400, "messages must not be empty", param="messages")
    try:
        ids = s.llm.tokenizer.encode_prompt([{"role": m.role if m.role != "developer" else "system",
                                              "content": m.text()} for m in req.messages], chat=True)
    except SpecdraftError as e:
        raise APIError(400, str(e), param="messages") from None
    job = submit(s, ids, checked)
    return await respond(
        s, job, req, request, "/v1/chat/completions", t0, "chatcmpl", chunk_object="chat.completion.chunk",
        chunk_choice=lambda piece: {"index": 0, "finish_reason": None,
                                    "delta": {"role": "assistant", "content": ""} if piece is None else {"content": piece}},
        final_choice=lambda out: {"index": 0, "delta": {}, "finish_reason": finish(out)},
        full_object="chat.completion",
        full_choice=lambda out: {"index": 0, "message": {"role": "assistant", "content": out.text},
                                 "finish_reason": finish(out), "logprobs": None})


def completion_ids(s: AppState, prompt) -> list[int]:
    """A completion request's prompt (text, [text] or token ids) as token ids."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise APIError(400, "only one prompt per request is supported", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise APIError(400, "the prompt is empty", param="prompt")
        return s.llm.tokenizer.encode_prompt(prompt, chat=False)
    vocab = s.llm.model.cfg.vocab_size
    if any(not 0 <= t < vocab for t in prompt):
        raise APIError(400, f"token ids must be in [0, {vocab})", param="prompt")
    return list(prompt)


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request):
    s = _state(request)
    check_auth(s, request)
    t0 = time.perf_counter()
    checked = check(s, req)
    job = submit(s, completion_ids(s, req.prompt), checked)

    def choice(text: str, reason: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}

    return await respond(
        s, job, req, request, "/v1/completions", t0, "cmpl", chunk_object="text_completion",
        chunk_choice=lambda piece: None if piece is None else choice(piece, None),
        final_choice=lambda out: choice("", finish(out)),
        full_object="text_completion", full_choice=lambda out: choice(out.text, finish(out)))
