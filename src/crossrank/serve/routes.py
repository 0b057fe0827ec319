"""The rerank routes, one per dialect's path: TEI (``POST /rerank``, which also takes infinity's bodies), Cohere v2
(``POST /v2/rerank``) and the shared ``POST /v1/rerank`` (Jina / Cohere v1, Voyage or infinity, told apart by the
body: ``dialects.shape_v1``). Each reads its dialect's request (``dialects``), scores through the shared path
(``jobs.run_job``, the batcher behind it) and answers in its dialect's response shape."""

from __future__ import annotations

import time
import uuid
from typing import Any, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from crossrank.serve import dialects as d
from crossrank.serve.batcher import JobResult
from crossrank.serve.engines import Engines, Usage
from crossrank.serve.jobs import TRUNCATED_HEADER, run_job
from crossrank.serve.state import state_of
from crossrank.wire import RERANK_PATHS

router = APIRouter()

# Statuses every rerank route answers alike (bodies in the route's dialect). 499 (client went away) is not here:
# nobody is left to read it; it is only counted in the metrics.
RERANK_ERRORS = {
    429: "Overloaded: the queue is full, or the request cannot be scored before its deadline (Retry-After)",
    500: "Inference failed",
    503: "The reranker is unavailable (Retry-After)",
    504: "Deadline exceeded before the request was scored",
}


def order(scores: Sequence[float], top: int | None) -> list[int]:
    """Indices best first, the first ``top`` of them (all when None)."""
    idx = sorted(range(len(scores)), key=lambda i: -scores[i])
    return idx[:top] if top is not None else idx


def timing_headers(engines: Engines, result: JobResult, started: float) -> dict[str, str]:
    """TEI's response headers (compute type, tokens, total / queue / inference milliseconds) and the cut pairs."""
    return {
        TRUNCATED_HEADER: str(result.scores.n_truncated),
        "x-compute-type": str(engines.info.get("device", "cpu")),
        "x-compute-tokens": str(result.scores.tokens),
        "x-total-time": str(int((time.perf_counter() - started) * 1000)),
        "x-queue-time": str(int(result.queue_ms)),
        "x-inference-time": str(int(result.inference_ms)),
    }


async def usage_of(engines: Engines, query: str, texts: list[str], options: dict[str, Any],
                   result: JobResult) -> Usage:
    options = {key: v for key, v in options.items() if v is not None}
    return await run_in_threadpool(engines.usage, query, texts, options, result.scores)


@router.post(RERANK_PATHS[d.TEI], tags=["rerank"], summary="Hugging Face TEI rerank (infinity requests accepted)",
             responses=d.error_responses(d.TEI, {
                 400: "Batch or query empty, malformed JSON, bad deadline header, an instruction the reranker "
                      "cannot take, or a Host that is not allowed",
                 413: "Batch size error (more than max_documents texts), or a body over max_body_bytes",
                 422: "Schema error, a query over max_query_chars, or tokenization error (input longer than the "
                      "model's maximum with truncate=false)",
                 **RERANK_ERRORS}))
async def rerank_tei(body: d.RootRerankRequest, request: Request) -> Response:
    """TEI's wire format: a bare array of ``{index, score, text?}``, best first. A body with ``documents``
    instead of ``texts`` is infinity's, answered as on ``/v1/rerank``."""
    if isinstance(body, d.InfinityRerankRequest):
        return await infinity(body, request)
    started = time.perf_counter()
    state = state_of(request)
    engines = state.engines
    truncate = state.config.auto_truncate if body.truncate is None else body.truncate
    result = await run_job(
        request, body.query, body.texts, deadline_ms=body.deadline_ms,
        options={"long_documents": body.long_documents, "truncation_direction": body.truncation_direction
                 if body.truncation_direction == "left" else None, "instruction": body.instruction},
        too_long=None if truncate else "set truncate=true to cut it",
    )
    scores = result.scores.scores
    ranks = []
    for i in order(scores, None):
        item: dict[str, Any] = {"index": i, "score": engines.to_raw(scores[i]) if body.raw_scores
                                else engines.to_prob(scores[i])}
        if body.return_text:
            item["text"] = body.texts[i]
        ranks.append(item)
    return JSONResponse(ranks, headers=timing_headers(engines, result, started))


@router.post(RERANK_PATHS[d.COHERE], tags=["rerank"], summary="Cohere v2 rerank",
             responses=d.error_responses(d.COHERE, {
                 400: "Any invalid request (Cohere's status for schema errors, empty or too many documents, a "
                      "query over max_query_chars), malformed JSON, or a Host that is not allowed",
                 413: "A body over max_body_bytes", **RERANK_ERRORS}))
async def rerank_cohere(body: d.CohereRerankRequest, request: Request) -> Response:
    """Cohere's wire format: ``{id, results: [{index, relevance_score}], meta}``."""
    started = time.perf_counter()
    engines = state_of(request).engines
    texts = [d.text_of(doc) for doc in body.documents]
    options = {"long_documents": body.long_documents, "max_tokens_per_doc": body.max_tokens_per_doc,
               "instruction": body.instruction}
    result = await run_job(request, body.query, texts, deadline_ms=body.deadline_ms, options=options)
    usage = await usage_of(engines, body.query, texts, options, result)
    scores = result.scores.scores
    return JSONResponse(
        {
            "id": str(uuid.uuid4()),
            "results": [{"index": i, "relevance_score": engines.to_prob(scores[i])}
                        for i in order(scores, body.top_n)],
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": usage.search_units}},
        },
        headers=timing_headers(engines, result, started),
    )


@router.post(RERANK_PATHS[d.JINA], tags=["rerank"], summary="Jina / Cohere v1, Voyage or infinity rerank (by the body)",
             responses=d.error_responses(d.JINA, {
                 400: "Documents or query empty, malformed JSON, bad deadline header, an instruction the reranker "
                      "cannot take, or a Host that is not allowed",
                 413: "More than max_documents documents, or a body over max_body_bytes",
                 422: "Schema error (one message in `detail`), a query over max_query_chars, or an input longer "
                      "than the model's maximum with Voyage's truncation=false", **RERANK_ERRORS}))
async def rerank_v1(body: d.V1RerankRequest, request: Request) -> Response:
    """Jina's wire format, with Cohere v1's ``id`` and ``meta``: ``{id, model, usage: {total_tokens,
    prompt_tokens}, results: [{index, relevance_score, document}], meta}``. A Voyage body (``top_k`` or
    ``truncation``) gets ``{object: "list", data, model, usage}``; an infinity body (``raw_scores``) gets
    infinity's ``{object: "rerank", results: [{index, relevance_score, document: str | null}], ...}``."""
    if isinstance(body, d.VoyageRerankRequest):
        return await voyage(body, request)
    if isinstance(body, d.InfinityRerankRequest):
        return await infinity(body, request)
    return await jina(body, request)


async def jina(body: d.JinaRerankRequest, request: Request) -> Response:
    """``/v1/rerank`` for a Jina / Cohere v1 body."""
    started = time.perf_counter()
    state = state_of(request)
    engines = state.engines
    query = d.text_of(body.query)
    options = {"long_documents": body.long_documents, "instruction": body.instruction}
    result = await run_job(request, query, body.texts, deadline_ms=body.deadline_ms, options=options)
    usage = await usage_of(engines, query, body.texts, options, result)
    scores = result.scores.scores
    results = []
    for i in order(scores, body.top_n):
        item: dict[str, Any] = {"index": i, "relevance_score": engines.to_prob(scores[i])}
        if body.echo:
            doc = body.documents[i]
            item["document"] = {"text": doc} if isinstance(doc, str) else doc
        results.append(item)
    return JSONResponse(
        {"id": str(uuid.uuid4()), "model": body.model or state.model_name,
         "usage": {"total_tokens": usage.tokens, "prompt_tokens": usage.tokens}, "results": results,
         "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": usage.search_units}}},
        headers=timing_headers(engines, result, started),
    )


async def voyage(body: d.VoyageRerankRequest, request: Request) -> Response:
    """``/v1/rerank`` for a Voyage body."""
    started = time.perf_counter()
    state = state_of(request)
    engines = state.engines
    options = {"long_documents": body.long_documents, "instruction": body.instruction}
    result = await run_job(request, body.query, body.documents, deadline_ms=body.deadline_ms, options=options,
                           too_long=None if body.truncation else "set truncation=true to cut it")
    usage = await usage_of(engines, body.query, body.documents, options, result)
    scores = result.scores.scores
    data = []
    for i in order(scores, body.top_k):
        item: dict[str, Any] = {"relevance_score": engines.to_prob(scores[i]), "index": i}
        if body.return_documents:
            item["document"] = body.documents[i]
        data.append(item)
    return JSONResponse({"object": "list", "data": data, "model": body.model or state.model_name,
                         "usage": {"total_tokens": usage.tokens}}, headers=timing_headers(engines, result, started))


async def infinity(body: d.InfinityRerankRequest, request: Request) -> Response:
    """``/v1/rerank`` or ``/rerank`` for an infinity body."""
    started = time.perf_counter()
    state = state_of(request)
    engines = state.engines
    options = {"long_documents": body.long_documents, "instruction": body.instruction}
    result = await run_job(request, body.query, body.documents, deadline_ms=body.deadline_ms, options=options)
    usage = await usage_of(engines, body.query, body.documents, options, result)
    scores = result.scores.scores
    results = [{"relevance_score": engines.to_raw(scores[i]) if body.raw_scores else engines.to_prob(scores[i]),
                "index": i, "document": body.documents[i] if body.return_documents else None}
               for i in order(scores, body.top_n)]
    return JSONResponse({"object": "rerank", "results": results, "model": state.model_name,
                         "usage": {"prompt_tokens": usage.tokens, "total_tokens": usage.tokens},
                         "id": f"infinity-{uuid.uuid4()}", "created": int(time.time())},
                        headers=timing_headers(engines, result, started))
