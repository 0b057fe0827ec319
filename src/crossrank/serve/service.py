"""The service routes: ``/health`` (the worker and the queue), ``/info`` (TEI's ``Info`` plus crossrank's own
fields), ``/metrics`` (Prometheus or OpenMetrics text) and the test page at ``/``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from crossrank.serve import dialects as d
from crossrank.serve.engines import engine_info
from crossrank.serve.page import PAGE_HTML
from crossrank.serve.state import State, state_of, version

router = APIRouter()

_TEI_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}


@router.get("/health", tags=["service"], responses=d.error_responses(d.NATIVE, {
    400: "A Host that is not allowed", 503: "The inference worker is not running"}))
async def health(request: Request) -> Response:
    batcher = state_of(request).batcher
    if not batcher.alive:
        return JSONResponse({"error": "unhealthy: the inference worker is not running",
                             "error_type": "unhealthy"}, status_code=503)
    pairs, requests = batcher.depth()
    backlog = batcher.backlog_s()
    return JSONResponse({"status": "ok", "queue_pairs": pairs, "queue_requests": requests,
                         "queue_seconds": None if backlog is None else round(backlog, 3)})


@router.get("/info", tags=["service"], responses=d.error_responses(d.NATIVE, {400: "A Host that is not allowed"}))
async def info(request: Request) -> Response:
    """TEI's ``Info`` at top level (what tei-client and huggingface_hub read), plus crossrank's own fields."""
    state = state_of(request)
    config, engines = state.config, state.engines
    einfo = engine_info(engines.base)
    return JSONResponse({
        **_tei_info(state, einfo),
        "model": state.model_name,
        "dtype": einfo.get("dtype"),
        "device": einfo.get("device"),
        "max_length": engines.max_length,
        "activation": engines.activation,
        "long_documents": engines.default_mode,
        "version": version(),
        "batching": "dynamic" if config.batching else "off",
        "limits": {
            "max_documents": config.max_documents,
            "max_client_batch_size": config.max_documents,
            "max_body_bytes": config.max_body_bytes,
            "max_query_chars": config.max_query_chars,
            "max_queue_pairs": config.max_queue_pairs,
            "max_queue_requests": config.max_queue_requests,
            "batch_tokens": config.batch_tokens,
            "max_batch_pairs": config.max_batch_pairs,
            "step_passes": config.step_passes,
            "default_deadline_ms": config.default_deadline_ms,
        },
        "auth": bool(config.api_key),
        "search": state.search is not None,
        "retrievers": state.search.retrievers if state.search is not None else [],
        "search_defaults": state.search.defaults if state.search is not None else None,
        "engine": einfo,
    })


def _tei_info(state: State, einfo: dict[str, Any]) -> dict[str, Any]:
    """text-embeddings-inference's ``Info`` schema (router/src/lib.rs), for a reranker."""
    config, engines = state.config, state.engines
    id2label = {str(k): str(v) for k, v in (einfo.get("id2label") or {0: "LABEL_0"}).items()}
    dtype = str(einfo.get("dtype") or "float32")
    return {
        "model_id": state.model_name,
        "model_sha": None,
        "model_dtype": _TEI_DTYPES.get(dtype, dtype),
        "model_type": {"reranker": {"id2label": id2label, "label2id": {v: int(k) for k, v in id2label.items()}}},
        "max_concurrent_requests": config.max_queue_requests,
        "max_input_length": engines.max_length,
        "max_batch_tokens": config.batch_tokens,
        "max_batch_requests": config.max_batch_pairs,  # pairs per step bound requests per batch
        "max_client_batch_size": config.max_documents,
        "auto_truncate": config.auto_truncate,
        "tokenization_workers": 1,  # the inference worker tokenises
        "sha": None,
        "docker_label": None,
    }


@router.get("/metrics", tags=["service"], response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text exposition format (OpenMetrics when the Accept "
                                              "header asks for application/openmetrics-text)"},
                       **d.error_responses(d.NATIVE, {400: "A Host that is not allowed"})})
async def metrics_route(request: Request) -> Response:
    state = state_of(request)
    pairs, requests = state.batcher.depth()
    state.metrics.on_depth(pairs, requests)
    state.metrics.set_build(version(), state.model_name)
    body, content_type = state.metrics.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)


@router.get("/", include_in_schema=False)
async def page() -> Response:
    return HTMLResponse(PAGE_HTML)
