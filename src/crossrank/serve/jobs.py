"""The rerank routes' shared path, between a dialect's request and the batcher: the limits every route checks,
the request's time budget, one job submitted to the queue, waiting for it while watching the client (gone: the
job is dropped), and the batcher's outcome as an :class:`~crossrank.serve.errors.ApiError` when it is not a
result. The queue (``batcher.DynamicBatcher``) owns batching and admission; the routes own their dialect."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from fastapi import Request

from crossrank.errors import InputError, RerankerUnavailable
from crossrank.rerank.base import RerankScores, check_instruction
from crossrank.serve import dialects as d
from crossrank.serve.batcher import (
    Cancelled,
    DeadlineExceeded,
    DynamicBatcher,
    Job,
    JobResult,
    Overloaded,
    Reservation,
)
from crossrank.serve.config import ServeConfig
from crossrank.serve.errors import CLIENT_CLOSED, ApiError, overloaded
from crossrank.serve.gate import ARRIVED, RESERVED, body_bytes
from crossrank.serve.state import State, state_of

log = logging.getLogger("crossrank.serve")

DEADLINE_HEADER = d.DEADLINE_HEADER
TRUNCATED_HEADER = "X-Crossrank-Truncated"


async def run_job(request: Request, query: str, texts: list[str], *, deadline_ms: float | None,
                  options: dict[str, Any], too_long: str | None = None) -> JobResult:
    """Score ``texts`` against ``query`` through the batcher, within the request's time budget (the body's
    ``deadline_ms``, the header, or the server's default, counted from the request's arrival). ``options``: the
    engine's per-request options (None values dropped). ``too_long``: when given, a pair cut to the model's
    maximum length is an error, and this is the message's advice."""
    state = state_of(request)
    dialect = d.dialect_of(request.url.path)
    options = _checked(state, dialect, query, texts, options)
    budget_ms = deadline_ms_of(request, deadline_ms, state.config.default_deadline_ms)
    left_s = budget_ms / 1000.0 - (time.monotonic() - getattr(request.state, ARRIVED, time.monotonic()))
    if left_s <= 0:  # reading and parsing the body took all of it
        raise ApiError(504, f"deadline of {budget_ms:g} ms exceeded before scoring", "timeout")
    job = _submit(state.batcher, query, texts, left_s, options, body_bytes(request.headers.get("content-length")),
                  request.scope.get("state", {}).pop(RESERVED, None))
    result = await _outcome(request, job, left_s, budget_ms)
    _check_scores(state, result.scores, dialect, too_long)
    return result


def _checked(state: State, dialect: str, query: str, texts: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """The request's limits (documents, query, instruction, long-document mode); its options without None."""
    config, engines = state.config, state.engines
    if not texts:
        raise ApiError(400, "`texts` cannot be empty" if dialect == d.TEI else "`documents` cannot be empty",
                       "empty")
    if len(texts) > config.max_documents:
        raise ApiError(d.status_for("too_many_documents", dialect),
                       f"batch size {len(texts)} > maximum allowed batch size {config.max_documents}",
                       "validation")
    check_query(query, dialect, config)
    try:
        check_instruction(engines.base, options.get("instruction"))
    except InputError as exc:
        raise ApiError(400, str(exc), "validation") from None
    mode = options.get("long_documents")
    if mode is not None and not engines.supports(mode):
        raise ApiError(400, f"this reranker cannot switch long_documents to {mode!r}", "validation")
    return {key: v for key, v in options.items() if v is not None}


def _submit(batcher: DynamicBatcher, query: str, texts: list[str], left_s: float, options: dict[str, Any],
            size: int | None, reservation: Reservation | None) -> Job:
    try:
        return batcher.submit(query, texts, deadline_s=left_s, options=options, body_bytes=size,
                              reservation=reservation)
    except Overloaded as exc:
        raise overloaded(exc) from exc
    except RerankerUnavailable as exc:
        raise ApiError(503, str(exc), "unavailable", {"Retry-After": "1"}) from exc


async def _outcome(request: Request, job: Job, left_s: float, budget_ms: float) -> JobResult:
    """The job's result, waiting at most ``left_s`` (and a little) while the client stays; the job is dropped
    when the client goes away or time runs out."""
    future = asyncio.wrap_future(job.future)
    gone = await until_done_or_gone(request, future, left_s + 0.25)
    if not future.done():
        job.cancel()
        future.cancel()
        if gone:
            raise ApiError(CLIENT_CLOSED, "client closed the request", "cancelled")
        raise ApiError(504, f"deadline of {budget_ms:g} ms exceeded", "timeout")
    try:
        return future.result()
    except DeadlineExceeded as exc:
        raise ApiError(504, f"{exc} (budget {budget_ms:g} ms)", "timeout") from exc
    except Cancelled:
        raise ApiError(CLIENT_CLOSED, "client closed the request", "cancelled") from None
    except InputError as exc:
        raise ApiError(400, str(exc), "validation") from exc
    except RerankerUnavailable as exc:
        raise ApiError(503, str(exc), "unavailable", {"Retry-After": "1"}) from exc
    except Exception:  # the batcher logged it with its traceback
        raise ApiError(500, "Inference failed", "backend") from None


def _check_scores(state: State, scores: RerankScores, dialect: str, too_long: str | None) -> None:
    """Finite scores or a 500; cuts and cache hits counted; a cut pair is an error where ``too_long`` says so."""
    if any(not math.isfinite(s) for s in scores.scores):
        log.error("the model returned a non-finite score")
        raise ApiError(500, "Inference failed: the model returned a non-finite score", "backend")
    n_cut = scores.n_truncated
    if n_cut:
        state.metrics.truncations.inc(n_cut)
    if scores.cache_hits:
        state.metrics.cache_hits.inc(scores.cache_hits)
    if too_long is not None and n_cut:
        first = next(i for i, f in enumerate(scores.truncated) if f)
        more = f" (and {n_cut - 1} more)" if n_cut > 1 else ""
        raise ApiError(d.status_for("too_long", dialect),
                       f"Input validation error: input {first}{more} is longer than the model's maximum of "
                       f"{state.engines.max_length} tokens; {too_long}", "tokenizer")


# ------------------------------------------------------------------------------- shared with /search


def check_query(query: str, dialect: str, config: ServeConfig) -> None:
    """The query rules every route shares (the message never echoes the query)."""
    if not query.strip():
        raise ApiError(400, "`query` cannot be empty", "empty")
    if len(query) > config.max_query_chars:
        raise ApiError(d.status_for("too_long", dialect),
                       f"query is {len(query)} characters; the limit is {config.max_query_chars}", "validation")


def deadline_ms_of(request: Request, body_value: float | None, default: float) -> float:
    """The body's ``deadline_ms``, else the header's, else ``default``."""
    header = deadline_header(request)
    if body_value is not None:
        return float(body_value)
    return header if header is not None else default


def deadline_header(request: Request) -> float | None:
    """The ``X-Crossrank-Deadline-Ms`` header, checked whenever it is sent (a malformed one is a 400 even when the
    body's ``deadline_ms`` wins over it)."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        return d.parse_deadline_header(raw)
    except ValueError as exc:
        raise ApiError(400, str(exc), "validation") from None


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_done_or_gone(request: Request, work: asyncio.Future, timeout: float | None) -> bool:
    """Wait until ``work`` is done, the client closes the connection or ``timeout`` passes; True when the client
    went away first (the caller then cancels what it queued: ``Job.cancel`` / ``CancelScope.cancel``)."""
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    return gone in done and work not in done


def retrieve_exception(task: asyncio.Future) -> None:
    """Done-callback for work nobody awaits any more (its client went away): read its outcome so asyncio does
    not log 'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()
