"""Errors on the wire: :class:`ApiError` (an answer other than 200) and the app's exception handlers, which render
every error (an ``ApiError``, a schema error, Starlette's 404 / 405, anything unexpected) in the dialect of the
route it happened on (``dialects.error_body``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from crossrank.serve import dialects as d
from crossrank.serve.batcher import Overloaded

log = logging.getLogger("crossrank.serve")

# Client went away: nginx's convention; nobody reads it, but metrics count it.
CLIENT_CLOSED = 499


class ApiError(Exception):
    """An answer other than 200, rendered in the dialect of the route it happened on."""

    def __init__(self, status: int, message: str, error_type: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = headers or {}


def overloaded(exc: Overloaded) -> ApiError:
    """The 429 of a request the batcher refused at admission (``submit``, or ``screen`` before its body was read),
    with ``Retry-After`` from the batcher's prediction."""
    return ApiError(429, f"Model is overloaded: {exc}", "overloaded", {"Retry-After": str(exc.retry_after_s)})


def install_handlers(app: FastAPI) -> None:
    """Answer every error on ``app`` in its route's dialect."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def _render(request: Request, status: int, message: str, error_type: str,
            headers: dict[str, str] | None = None) -> JSONResponse:
    dialect = d.dialect_of(request.url.path)
    return JSONResponse(d.error_body(dialect, message, error_type), status_code=status, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return _render(request, exc.status, exc.message, exc.error_type, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    dialect = d.dialect_of(request.url.path)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return _render(request, 400, "invalid JSON body", "validation")
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for j, x in enumerate(e.get("loc", ()))
                       if x != "body" and not (j == 1 and x in d.SHAPES))  # the shape's tag
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    message = "invalid request: " + "; ".join(parts)
    return _render(request, d.status_for("schema", dialect), message, "validation")


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    message = exc.detail if isinstance(exc.detail, str) else "error"
    error_type = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
    return _render(request, exc.status_code, message, error_type, getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return _render(request, 500, "internal server error", "backend")
