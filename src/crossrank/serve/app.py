"""The ASGI app, wired: :func:`create_app` puts the parts together, each in its own module.

    engines.py   the reranker's server side: per-request variants, cuts, usage, wire scores
    batcher.py   the queue: dynamic batching, admission, deadlines (owns batching)
    gate.py      ASGI middleware before any parsing: metrics, Host allowlist, API key, body limit, shedding
    jobs.py      the rerank routes' shared path to the queue: limits, time budget, waiting, errors
    routes.py    the rerank routes, one per dialect (TEI, Cohere v2, Jina / Voyage / infinity on /v1)
    search.py    /search: pipelines per retriever over the batched reranker
    service.py   /health, /info, /metrics, the page at /
    errors.py    ApiError and the handlers that answer every error in its route's dialect
    openapi.py, docs.py   the OpenAPI document and /docs, /redoc
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI

from crossrank.rerank.base import LONG_DOCUMENT_MODES, takes_instruction
from crossrank.serve import routes, search, service
from crossrank.serve.batcher import BatchedReranker, DynamicBatcher
from crossrank.serve.config import ServeConfig
from crossrank.serve.docs import install_docs
from crossrank.serve.engines import Engines, engine_info
from crossrank.serve.errors import install_handlers
from crossrank.serve.gate import OPEN_PATHS, Gate
from crossrank.serve.metrics import Metrics
from crossrank.serve.openapi import install_openapi
from crossrank.serve.state import State, version

DESCRIPTION = (
    "Cross-encoder reranking over HTTP. Dialects: Hugging Face TEI (`POST /rerank`), Cohere v2 "
    "(`POST /v2/rerank`), Jina / Cohere v1, Voyage and infinity (`POST /v1/rerank`, told apart by the body; "
    "infinity also on `/rerank`). Optional `POST /search` "
    "over an index. Time budget per request: `X-Crossrank-Deadline-Ms` header or `deadline_ms` field. "
    "Pairs cut to the model's maximum length are counted in the `X-Crossrank-Truncated` header."
)


def create_app(
    reranker: Any,
    *,
    pipeline: Any = None,
    config: ServeConfig | None = None,
    index: Any = None,
    retriever: str = "hybrid",
    k: int | None = None,
    n: int | None = None,
    search_deadline_ms: float | None = None,
) -> FastAPI:
    """The crossrank HTTP service around ``reranker`` (anything with the ``Reranker`` protocol; ``score_pairs``
    is used for cross-request batching when present).

    ``/search`` is served when ``pipeline`` is given (a ``Pipeline``, or a callable that takes the server's
    batched reranker and returns one, so search traffic shares the batcher) or ``index`` is (an ``Index``:
    pipelines per retriever kind, ``retriever`` the default). Its default K and N are ``config``'s
    ``search_k`` / ``search_n``; ``k`` / ``n``, when given, replace them.
    """
    config = config or ServeConfig()
    if k is not None or n is not None:  # a copy: checked again, and the caller's config left as it was
        config = replace(config, search_k=config.search_k if k is None else k,
                         search_n=config.search_n if n is None else n)
    state = _state(reranker, config)
    if pipeline is not None or index is not None:
        batched = BatchedReranker(state.batcher, state.model_name,
                                  timeout_s=state.config.default_deadline_ms / 1000.0,
                                  info=engine_info(state.engines.base),
                                  takes_instruction=state.engines.takes_instruction)
        search_k, search_n = state.config.search_defaults()
        state.search = search.Search(pipeline, index, batched, default_retriever=retriever, k=search_k,
                                     n=search_n, deadline_ms=search_deadline_ms)
    app = FastAPI(
        title="crossrank",
        version=version(),
        description=DESCRIPTION,
        lifespan=_lifespan,
        docs_url=None,  # /docs and /redoc from packaged assets instead of a CDN: serve/docs.py
        redoc_url=None,
    )
    install_docs(app)
    _install_openapi(app, state)
    app.state.crossrank = state
    app.add_middleware(Gate, state=state)
    install_handlers(app)
    routers = [routes.router, *([search.router] if state.search is not None else []), service.router]
    for router in routers:
        app.include_router(router)
    # what the gate labels metrics with when it answers before routing (an included router keeps its routes)
    routed = [*app.routes, *(route for router in routers for route in router.routes)]
    state.route_paths = frozenset(getattr(route, "path", "") for route in routed)
    return app


def _state(reranker: Any, config: ServeConfig) -> State:
    """The reranker's server side, metrics and the batcher, from ``config``."""
    metrics = Metrics()
    engines = Engines(reranker, config.long_documents)
    batcher = DynamicBatcher(
        engines.score_pairs,
        batching=config.batching,
        batch_tokens=config.batch_tokens,
        max_batch_pairs=config.max_batch_pairs,
        step_passes=config.step_passes,
        max_queue_pairs=config.max_queue_pairs,
        max_queue_requests=config.max_queue_requests,
        batch_wait_ms=config.batch_wait_ms,
        max_length=engines.max_length,
        observer=metrics,
        tokens_per_s=config.tokens_per_s,
        admission_safety=config.admission_safety,
    )
    metrics.watch_cache(lambda: engine_info(engines.base).get("cache"))
    return State(config, engines, metrics, batcher)  # the reranker: engines.base


def _install_openapi(app: FastAPI, state: State) -> None:
    """The OpenAPI document with this server's limits, modes, retrievers and key (``openapi.py``)."""
    config, engines = state.config, state.engines
    modes = [mode for mode in LONG_DOCUMENT_MODES if engines.supports(mode)]
    fixed = state.search.fixed if state.search is not None else None
    install_openapi(
        app, api_key=bool(config.api_key), open_paths=OPEN_PATHS, max_query_chars=config.max_query_chars,
        max_documents=config.max_documents, takes_instruction=engines.takes_instruction, long_documents=modes,
        retrievers=state.search.retrievers if state.search is not None else None,
        search_instruction=(engines.takes_instruction if fixed is None
                            else takes_instruction(getattr(fixed, "reranker", None))),
        max_search_k=config.max_search_k,
    )


@asynccontextmanager
async def _lifespan(app: FastAPI):
    """Start the batcher's worker (and warm the default search pipeline up); stop both at shutdown."""
    state: State = app.state.crossrank
    state.batcher.start()
    try:
        if state.search is not None:
            await asyncio.to_thread(state.search.warm_up)
        yield
    finally:
        state.batcher.stop()
        if state.search is not None:
            state.search.close()
