"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, and the handlers
that turn every failure of a request into one (counted in the metrics by path and status)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def error_response(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status,
                        headers=headers)


def _count(request: Request, status: int) -> None:
    request.app.state.s.metrics.requests.labels(request.url.path, str(status)).inc()


async def _api_error(request: Request, e: APIError):
    _count(request, e.status)
    return error_response(e.status, e.message, e.type, e.param, e.code, e.headers)


async def _invalid(request: Request, e: RequestValidationError):
    _count(request, 400)
    err = e.errors()[0] if e.errors() else {}
    where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
    msg = err.get("msg", "invalid request")
    if err.get("type") == "json_invalid":
        return error_response(400, "the request body is not valid JSON", code="invalid_json")
    return error_response(400, f"{where}: {msg}" if where else msg, param=where or None)


async def _http(request: Request, e: StarletteHTTPException):
    return error_response(e.status_code, str(e.detail), "invalid_request_error" if e.status_code < 500 else "server_error")


async def _bug(request: Request, e: Exception):
    _count(request, 500)
    return error_response(500, f"internal error: {type(e).__name__}", "server_error")


async def body_limit(request: Request, call_next):
    """Refuse a body larger than the configured bound (413) before reading it."""
    most = request.app.state.s.cfg.max_body_bytes
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > most):
        _count(request, 413)
        return error_response(413, f"the request body is larger than {most} bytes", code="body_too_large")
    return await call_next(request)


def install(app: FastAPI) -> None:
    app.middleware("http")(body_limit)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _bug)
