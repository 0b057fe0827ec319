"""``POST /search``: retrieve K, rerank through the server's batcher, return N. :class:`Search` holds the pipelines
(a given one, or one per retriever kind over an index, made on first use, all sharing the batched reranker);
the route maps the pipeline's errors to statuses and sheds its queued pairs when the client goes away."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from crossrank.errors import CrossrankError, IndexLoadError, InputError, ModelLoadError, RerankerUnavailable
from crossrank.retrieve.base import kinds_served
from crossrank.serve import dialects as d
from crossrank.serve.batcher import CancelScope
from crossrank.serve.errors import CLIENT_CLOSED, ApiError
from crossrank.serve.jobs import TRUNCATED_HEADER, check_query, deadline_header, retrieve_exception, until_done_or_gone
from crossrank.serve.state import state_of

log = logging.getLogger("crossrank.serve")

router = APIRouter()


class Search:
    """``/search``: a given pipeline, a factory taking the batched reranker, or pipelines built per retriever
    kind over an index (each sharing the batcher)."""

    def __init__(self, pipeline: Any, index: Any, reranker: Any, *, default_retriever: str, k: int, n: int,
                 deadline_ms: float | None) -> None:
        self.index = index
        self.reranker = reranker
        self.default_retriever = default_retriever
        self.k, self.n, self.deadline_ms = k, n, deadline_ms
        self._pipelines: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.fixed = None
        if pipeline is not None:
            self.fixed = pipeline if hasattr(pipeline, "search") else pipeline(reranker)

    @property
    def retrievers(self) -> list[str]:
        if self.fixed is not None:
            return [str(getattr(self.fixed.retriever, "name", "default"))]
        return kinds_served(getattr(self.index, "methods", ()))

    @property
    def defaults(self) -> dict[str, Any]:
        """K and N of a search that names neither (``/info``): a given pipeline's own, else the server's
        (``ServeConfig.search_defaults``)."""
        if self.fixed is not None:
            return {"k": getattr(self.fixed, "k", None), "n": getattr(self.fixed, "n", None)}
        return {"k": self.k, "n": self.n}

    def get(self, kind: str | None) -> Any:
        if self.fixed is not None:
            name = str(getattr(self.fixed.retriever, "name", ""))
            if kind is not None and name and kind != name:
                raise InputError(f"this server searches with the {name!r} retriever only, not {kind!r}")
            return self.fixed
        kind = kind or self.default_retriever
        with self._lock:
            if kind not in self._pipelines:
                from crossrank.pipeline import Pipeline

                self._pipelines[kind] = Pipeline(self.index.retriever(kind), self.reranker, k=self.k, n=self.n,
                                                 deadline_ms=self.deadline_ms)
            return self._pipelines[kind]

    def warm_up(self) -> None:
        """One throwaway search with the default retriever, so its lazy loads (bi-encoder, ONNX query graph) happen
        at startup rather than in the first request; a failure is logged and left to that request to report."""
        try:
            self.get(None).retriever.search("warm up", k=1)
        except Exception as e:  # noqa: BLE001 - startup must not fail on what a request would report cleanly
            log.warning("search warm-up failed: %s", e)

    def close(self) -> None:
        for p in list(self._pipelines.values()) + ([self.fixed] if self.fixed is not None else []):
            close = getattr(p, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    pass


@router.post("/search", tags=["search"], summary="Retrieve K, rerank, return N",
             responses=d.error_responses(d.NATIVE, {
                 400: "Empty query, n more than k (k the server's default when not given), a retriever this "
                      "index lacks, an instruction the reranker cannot take, malformed JSON, bad deadline "
                      "header, or a Host that is not allowed",
                 413: "A body over max_body_bytes",
                 422: "Schema error, k over max_search_k, or a query over max_query_chars",
                 500: "Search failed", 503: "The index or a model could not be loaded"}))
async def search_route(body: d.SearchRequest, request: Request) -> Response:
    """``SearchResult.to_dict()``: hits with first-stage and rerank scores, timings, fallback reason."""
    state = state_of(request)
    config, metrics = state.config, state.metrics
    check_query(body.query, d.NATIVE, config)
    if body.k is not None and body.k > config.max_search_k:
        raise ApiError(422, f"k={body.k} is above the limit of {config.max_search_k}", "validation")
    header = deadline_header(request)
    deadline = body.deadline_ms if body.deadline_ms is not None else header
    scope = CancelScope()  # this request's batcher jobs: shed if the client goes away (as /rerank does)

    def run_search():
        with scope.active():
            return pipe.search(body.query, k=body.k, n=body.n, deadline_ms=deadline, rerank=body.rerank,
                               fusion=body.fusion, min_score=body.min_score, instruction=body.instruction,
                               unit=body.unit)

    try:
        pipe = await run_in_threadpool(state.search.get, body.retriever)
        work = asyncio.ensure_future(run_in_threadpool(run_search))
        if await until_done_or_gone(request, work, None):
            scope.cancel()
            work.add_done_callback(retrieve_exception)
            raise ApiError(CLIENT_CLOSED, "client closed the request", "cancelled")
        result = work.result()
    except ApiError:
        raise
    except Exception as exc:
        raise _search_error(exc) from exc
    if body.rerank and not result.reranked:
        metrics.fallbacks.inc()
    if result.truncated:
        metrics.truncations.inc(result.truncated)
    if result.cache_hits:
        metrics.cache_hits.inc(result.cache_hits)
    return JSONResponse(result.to_dict(), headers={TRUNCATED_HEADER: str(result.truncated)})


def _search_error(exc: Exception) -> ApiError:
    """What a failed search answers: the caller's mistake 400, a missing index or model 503, anything else 500."""
    if isinstance(exc, InputError):
        return ApiError(400, str(exc), "validation")
    if isinstance(exc, (IndexLoadError, ModelLoadError, RerankerUnavailable)):
        return ApiError(503, str(exc), "unavailable")
    if isinstance(exc, CrossrankError):
        return ApiError(400, str(exc), "validation")
    log.error("search failed: %s: %s", type(exc).__name__, exc)
    return ApiError(500, "search failed", "backend")
