"""The gate: pure ASGI middleware in front of every route, before any parsing. Per-route metrics of every answer
(its own included), the Host allowlist (DNS rebinding), the bearer API key, the request body limit (a body is
read in full, and refused as soon as it is over the limit, before a route sees it), and load shedding: a rerank
request the batcher's admission would refuse anyway, judged from its headers (deadline, Content-Length), is
answered 429 before its body is read, so under overload no CPU goes into parsing what is refused. Slow clients
are the connection layer's job (``server.uvicorn_options``: header and body timeouts)."""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any, Callable

from fastapi.responses import JSONResponse

from crossrank.serve import dialects as d
from crossrank.serve.batcher import Overloaded
from crossrank.serve.docs import DOC_PATHS
from crossrank.serve.errors import ApiError, overloaded

if TYPE_CHECKING:
    from crossrank.serve.state import State

ARRIVED = "crossrank_arrived"  # request.state key: time.monotonic() when the request came in
RESERVED = "crossrank_reserved"  # request.state key: the batcher's Reservation from the screen (jobs.run_job)
OPEN_PATHS = frozenset({"/", "/health", "/openapi.json", "/favicon.ico"} | DOC_PATHS)
_BODY_METHODS = ("POST", "PUT", "PATCH")
_OVER_LIMIT = object()  # _read_body: the body went over the limit
# A refused body is read and dropped up to this much before the answer, then the connection closes: closing a
# socket with unread bytes makes the kernel reset it, and the client loses the 413 it was about to read.
DRAIN_BYTES = 64 * 1024 * 1024


class Gate:
    """Pure ASGI middleware: per-route metrics, Host check, bearer auth, request body limit."""

    def __init__(self, app: Any, state: "State") -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope.setdefault("state", {})[ARRIVED] = time.monotonic()  # deadlines run from here (jobs.run_job)
        status = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None)
            if label is None:  # answered by the gate (401, 413) before routing, or no such route
                path = scope.get("path", "")
                label = path if path in self.state.route_paths else "unmatched"
            self.state.metrics.observe_request(label, status[0], time.perf_counter() - start)

    async def _handle(self, scope: dict, receive: Callable, send: Callable) -> None:
        dialect = d.dialect_of(scope.get("path", ""))
        headers = dict(scope.get("headers") or [])
        refusal = self._refusal(scope, headers, dialect)
        if refusal is not None:
            await _json(scope, receive, send, *refusal)
        elif scope.get("method") in _BODY_METHODS:
            await self._with_body(scope, receive, send, headers, dialect)
        else:
            await self.app(scope, receive, send)

    def _refusal(self, scope: dict, headers: dict[bytes, bytes], dialect: str) -> tuple | None:
        """(status, body, headers) of a request refused for its Host or its API key, else None."""
        config = self.state.config
        host = headers.get(b"host", b"").decode("latin-1")
        if not config.host_allowed(host):  # DNS rebinding: a browser sends the attacker's name here
            message = f"Host {host[:100]!r} is not allowed; add it with --allowed-hosts (or '*' for any)"
            return 400, d.error_body(dialect, message, "invalid_host")
        if config.api_key and scope.get("path", "") not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
                message = "missing API key" if not auth else "invalid API key"
                return 401, d.error_body(dialect, f"{message}: send 'Authorization: Bearer <key>'",
                                         "unauthorized"), {"WWW-Authenticate": "Bearer"}
        return None

    async def _with_body(self, scope: dict, receive: Callable, send: Callable, headers: dict[bytes, bytes],
                         dialect: str) -> None:
        """Read the whole body within the limit (a declared Content-Length over it is refused without being kept:
        drained, see :data:`DRAIN_BYTES`), then hand the request on with the body replayed."""
        limit = self.state.config.max_body_bytes
        too_big = d.error_body(dialect, f"request body is larger than the limit of {limit} bytes", "payload_too_large")
        declared = headers.get(b"content-length")
        size = body_bytes(declared)
        if declared is not None and size is None:
            await _json(scope, receive, send, 400, d.error_body(dialect, "bad Content-Length", "validation"))
            return
        if size is not None and size > limit:
            await _drain(receive, DRAIN_BYTES)
            await _json(scope, receive, send, 413, too_big, {"Connection": "close"})
            return
        shed = self._shed(scope, headers, dialect, size)
        if shed is not None:
            # Unread: uvicorn discards the rest of the body as it arrives and keeps the connection (h11 reaches
            # the next request once the body has ended), so a keep-alive client just sends its next request.
            await _json(scope, receive, send, 429, d.error_body(dialect, shed.message, shed.error_type), shed.headers)
            return
        try:
            await self._read_and_pass(scope, receive, send, limit, too_big)
        finally:  # submitted (run_job released it then), refused or gone: its place is free either way
            self.state.batcher.release(scope["state"].pop(RESERVED, None))

    async def _read_and_pass(self, scope: dict, receive: Callable, send: Callable, limit: int, too_big: dict,
                             ) -> None:
        body = await _read_body(receive, limit)
        if body is None:  # the client went away
            return
        if body is _OVER_LIMIT:
            await _json(scope, receive, send, 413, too_big, {"Connection": "close"})
            return
        await self.app(scope, _replay(body, receive), send)

    def _shed(self, scope: dict, headers: dict[bytes, bytes], dialect: str, size: int | None) -> ApiError | None:
        """The 429 of a rerank request the batcher refuses from its headers alone (``DynamicBatcher.screen``: the
        deadline from ``X-Crossrank-Deadline-Ms`` or the server's default, the size from Content-Length), else
        None. Only the rerank routes (``/search`` falls back to first-stage order instead of refusing); a body's
        own ``deadline_ms`` is not known yet, so a body asking for longer than the header or the default should
        send the header too. A malformed header is left to the route's 400. A request let through holds a
        reservation in the batcher (``scope["state"][RESERVED]``) until the route submits it."""
        if dialect == d.NATIVE:
            return None
        raw = headers.get(d.DEADLINE_HEADER.encode())
        try:
            deadline_ms = (d.parse_deadline_header(raw.decode("latin-1")) if raw is not None
                           else self.state.config.default_deadline_ms)
        except ValueError:
            return None
        try:
            scope["state"][RESERVED] = self.state.batcher.screen(deadline_ms / 1000.0, size)
        except Overloaded as exc:
            return overloaded(exc)
        return None


def body_bytes(declared: bytes | str | None) -> int | None:
    """A Content-Length header's bytes; None when there is none or it is not a whole number >= 0."""
    if declared is None:
        return None
    try:
        size = int(declared)
    except ValueError:
        return None
    return size if size >= 0 else None


async def _read_body(receive: Callable, limit: int) -> Any:
    """The request body; None when the client disconnected first, ``_OVER_LIMIT`` once it is over ``limit`` (the
    rest then drained, see :data:`DRAIN_BYTES`)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            if message.get("more_body", False):
                await _drain(receive, DRAIN_BYTES)
            return _OVER_LIMIT
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _drain(receive: Callable, cap: int) -> None:
    """Read and drop what is left of a request body, up to ``cap`` bytes (the header and body timeouts bound
    the time a slow client can take)."""
    seen = 0
    while seen <= cap:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        seen += len(message.get("body", b""))


def _replay(body: bytes, receive: Callable) -> Callable:
    """A ``receive`` that gives the body read already, then whatever the client sends next (its disconnect)."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _json(scope, receive, send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)
