"""The ASGI app: routes, dialect responses, auth / body-limit / metrics gate, error handlers.

Scores on the wire: the engine reports scores after its activation (``info()["activation"]``: "sigmoid" gives
[0, 1], "raw" gives logits). TEI's ``raw_scores=true`` answers logits, everything else answers [0, 1]
(``relevance_score`` in Cohere and Jina is a probability-like score); the server converts between the two.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, Callable, NamedTuple, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from crossrank.errors import CrossrankError, IndexLoadError, InputError, ModelLoadError, RerankerUnavailable
from crossrank.rerank.base import Reranker, RerankScores, as_reranker, check_instruction, takes_instruction
from crossrank.rerank.calibration import Calibration
from crossrank.serve import dialects as d
from crossrank.serve.batcher import (
    BatchedReranker,
    Cancelled,
    CancelScope,
    DeadlineExceeded,
    DynamicBatcher,
    JobResult,
    Overloaded,
    estimate_tokens,
)
from crossrank.serve.config import ServeConfig
from crossrank.serve.docs import DOC_PATHS, install_docs
from crossrank.serve.metrics import Metrics
from crossrank.serve.openapi import install_openapi
from crossrank.serve.page import PAGE_HTML
from crossrank.types import DEFAULT_N

log = logging.getLogger("crossrank.serve")

DEADLINE_HEADER = "x-crossrank-deadline-ms"
ARRIVED = "crossrank_arrived"  # request.state key: time.monotonic() when the request came in
TRUNCATED_HEADER = "X-Crossrank-Truncated"
OPEN_PATHS = frozenset({"/", "/health", "/openapi.json", "/favicon.ico"} | DOC_PATHS)
# Client went away: nginx's convention; nobody reads it, but metrics count it.
CLIENT_CLOSED = 499


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("crossrank")
    except Exception:
        return "0.0.0"


class ApiError(Exception):
    """An answer other than 200, rendered in the dialect of the route it happened on."""

    def __init__(self, status: int, message: str, error_type: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = headers or {}


class Usage(NamedTuple):
    """What a request used: tokens the model reads, and windows scored (one per document unless chunked)."""

    tokens: int
    windows: int

    @property
    def search_units(self) -> int:
        """Cohere's billing: 100 documents a unit, each chunk of a long document counted as one."""
        return max(1, math.ceil(self.windows / 100))


# --------------------------------------------------------------------------------------------------- engine side


class _Engines:
    """The reranker plus per-request variants (long-document mode), and text cutting with its tokenizer."""

    def __init__(self, reranker: Any, default_mode: str | None) -> None:
        self.base: Reranker = as_reranker(reranker)
        self.info = _engine_info(self.base)
        self.activation = self.info.get("activation", "sigmoid")
        self.calibration = Calibration.parse(self.info.get("calibration"))
        self.max_length = int(self.info.get("max_length") or 512)
        self.base_mode = self.info.get("long_documents")
        self.default_mode = default_mode or self.base_mode or "truncate"
        self._variants: dict[str, Reranker] = {}
        self._lock = threading.Lock()
        # the text cutting's tokenizer: a local engine's own (a remote reranker has none: words stand in)
        self.tokenizer = getattr(self.base, "tokenizer", None)
        self.n_special = int(getattr(getattr(self.base, "template", None), "n_special", 3))
        if self.default_mode != (self.base_mode or "truncate"):
            self.get(self.default_mode)  # fail at start, not on the first request

    def supports(self, mode: str) -> bool:
        """Whether the reranker has a variant for long-document mode ``mode`` (LLM rerankers' prompts keep one)."""
        try:
            self.get(mode)
        except InputError:
            return False
        return True

    def get(self, mode: str | None) -> Reranker:
        """The reranker for long-document mode ``mode`` (None: the server's default): the reranker itself, or its
        ``with_options(long_documents=mode)`` variant, made once."""
        mode = mode or self.default_mode
        if mode == (self.base_mode or "truncate"):
            return self.base
        with self._lock:
            if mode not in self._variants:
                self._variants[mode] = self.base.with_options(long_documents=mode)
            return self._variants[mode]

    @property
    def takes_instruction(self) -> bool:
        return self.base.takes_instruction

    def score_pairs(self, pairs: Sequence[tuple[str, str]], options: dict[str, Any]) -> RerankScores:
        engine = self.get(options.get("long_documents"))
        pairs, cut = self._prepare(pairs, options)
        result = engine.score_pairs(pairs, instruction=options.get("instruction"))
        if any(cut):
            flags = result.truncated if len(result.truncated) == len(pairs) else [False] * len(pairs)
            result.truncated = [a or b for a, b in zip(flags, cut, strict=True)]
        return result

    def _prepare(self, pairs: Sequence[tuple[str, str]], options: dict[str, Any]) -> tuple[list[tuple[str, str]], list[bool]]:
        """The pairs as the engine gets them (Cohere's ``max_tokens_per_doc`` and left truncation applied
        here, before scoring), and which of them these cuts shortened."""
        pairs = list(pairs)
        cut = [False] * len(pairs)
        max_doc = options.get("max_tokens_per_doc")
        if max_doc is not None and max_doc < self.max_length:
            pairs, cut = self._cut(pairs, lambda q: max_doc, keep_end=False)
        if options.get("truncation_direction") == "left" and (options.get("long_documents") or self.default_mode) == "truncate":
            budgets: dict[str, int] = {}

            def budget(query: str) -> int:
                if query not in budgets:
                    budgets[query] = self._doc_budget(query)
                return budgets[query]

            pairs, cut2 = self._cut(pairs, budget, keep_end=True)
            cut = [a or b for a, b in zip(cut, cut2, strict=True)]
        return pairs, cut

    def usage(self, query: str, texts: Sequence[str], options: dict[str, Any], result: RerankScores) -> Usage:
        """Tokens the model reads for these pairs and the windows scored, counted whether or not a pair came from
        the score cache (a cache saves compute, not usage) and whatever else shared its batch.

        A local engine counts them itself (``count_inputs``: exactly what its ``score`` runs, no forward pass) on
        the pairs as :meth:`score_pairs` hands them over; a reranker that cannot count (a remote one) reports
        ``tokens`` only for what it ran, so cached pairs are estimated."""
        pairs, _ = self._prepare([(query, t) for t in texts], options)
        count = self.get(options.get("long_documents")).count_inputs(query, [t for _, t in pairs],
                                                                      options.get("instruction"))
        if count is not None:
            return Usage(count.tokens, count.windows)
        if result.cache_hits:  # estimate what the cache answered
            return Usage(sum(estimate_tokens(query, t, self.max_length) for t in texts), len(texts))
        return Usage(result.tokens, len(texts))

    def _doc_budget(self, query: str) -> int:
        avail = self.max_length - self.n_special
        q = len(self._token_offsets([query])[0])
        return max(1, avail - min(q, avail // 2))

    def _token_offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        tok = self.tokenizer
        if tok is not None and getattr(tok, "is_fast", False):
            enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
            return [list(map(tuple, o)) for o in enc["offset_mapping"]]
        # No fast tokenizer (e.g. a remote reranker): whitespace words stand in for tokens.
        out = []
        for t in texts:
            spans, pos = [], 0
            for w in t.split():
                start = t.index(w, pos)
                spans.append((start, start + len(w)))
                pos = start + len(w)
            out.append(spans)
        return out

    def _cut(self, pairs: list[tuple[str, str]], budget: Callable[[str], int], keep_end: bool):
        budgets = [budget(q) for q, _ in pairs]
        # Only texts that could exceed their budget need tokenising (every token covers at least one UTF-8 byte).
        idx = [i for i, (q, t) in enumerate(pairs) if len(t) > budgets[i] and len(t.encode("utf-8")) > budgets[i]]
        cut = [False] * len(pairs)
        if not idx:
            return pairs, cut
        offsets = self._token_offsets([pairs[i][1] for i in idx])
        out = list(pairs)
        for i, offs in zip(idx, offsets, strict=True):
            n = budgets[i]
            if len(offs) <= n:
                continue
            q, t = pairs[i]
            out[i] = (q, t[offs[-n][0]:] if keep_end else t[: offs[n - 1][1]])
            cut[i] = True
        return out, cut


def _engine_info(reranker: Reranker) -> dict[str, Any]:
    """``reranker.info()``, with at least ``model``."""
    info: dict[str, Any] = {}
    try:
        info = dict(reranker.info())
    except Exception:  # info is decoration; never fail start-up over it
        log.warning("reranker.info() failed", exc_info=True)
    info.setdefault("model", reranker.name)
    return info


# --------------------------------------------------------------------------------------------------- search side


class _Search:
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
        methods = set(getattr(self.index, "methods", ()))
        kinds = [k for k in ("bm25", "dense") if k in methods]
        if len(kinds) == 2:
            kinds.append("hybrid")
        return kinds

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


# --------------------------------------------------------------------------------------------------- gate


class _Gate:
    """Pure ASGI middleware: per-route metrics, bearer auth, request body limit (before any parsing)."""

    def __init__(self, app: Any, state: "_State") -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope.setdefault("state", {})[ARRIVED] = time.monotonic()  # deadlines run from here (run_job)
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
        path = scope.get("path", "")
        dialect = d.dialect_of(path)
        config = self.state.config
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if not config.host_allowed(host):  # DNS rebinding: a browser sends the attacker's name here
            message = f"Host {host[:100]!r} is not allowed; add it with --allowed-hosts (or '*' for any)"
            await _json(scope, receive, send, 400, d.error_body(dialect, message, "invalid_host"))
            return
        if config.api_key and path not in OPEN_PATHS:
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
                message = "missing API key" if not auth else "invalid API key"
                await _json(scope, receive, send, 401, d.error_body(dialect, f"{message}: send 'Authorization: "
                            "Bearer <key>'", "unauthorized"), {"WWW-Authenticate": "Bearer"})
                return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            limit = config.max_body_bytes
            headers = dict(scope.get("headers") or [])
            declared = headers.get(b"content-length")
            too_big = d.error_body(dialect, f"request body is larger than the limit of {limit} bytes",
                                   "payload_too_large")
            if declared is not None:
                try:
                    if int(declared) > limit:
                        await _json(scope, receive, send, 413, too_big, {"Connection": "close"})
                        return
                except ValueError:
                    await _json(scope, receive, send, 400, d.error_body(dialect, "bad Content-Length", "validation"))
                    return
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body = message.get("body", b"")
                size += len(body)
                if size > limit:
                    await _json(scope, receive, send, 413, too_big, {"Connection": "close"})
                    return
                chunks.append(body)
                if not message.get("more_body", False):
                    break
            replayed = False
            full = b"".join(chunks)

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": full, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


async def _json(scope, receive, send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


# --------------------------------------------------------------------------------------------------- state


class _State:
    def __init__(self, reranker: Any, config: ServeConfig, engines: _Engines, metrics: Metrics,
                 batcher: DynamicBatcher) -> None:
        self.reranker = reranker
        self.config = config
        self.engines = engines
        self.metrics = metrics
        self.batcher = batcher
        self.search: _Search | None = None
        self.route_paths: frozenset[str] = frozenset()
        self.model_name = str(engines.info.get("model") or engines.base.name)


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _until_done_or_gone(request: Request, work: asyncio.Future, timeout: float | None) -> bool:
    """Wait until ``work`` is done, the client closes the connection or ``timeout`` passes; True when the client
    went away first (the caller then cancels what it queued: ``Job.cancel`` / ``CancelScope.cancel``)."""
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    return gone in done and work not in done


def _retrieve_exception(task: asyncio.Future) -> None:
    """Done-callback for work nobody awaits any more (its client went away): read its outcome so asyncio does
    not log 'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()


def _check_query(query: str, dialect: str, config: ServeConfig) -> None:
    """The query rules every route shares (the message never echoes the query)."""
    if not query.strip():
        raise ApiError(400, "`query` cannot be empty", "empty")
    if len(query) > config.max_query_chars:
        raise ApiError(d.status_for("too_long", dialect),
                       f"query is {len(query)} characters; the limit is {config.max_query_chars}", "validation")


def _deadline_ms(request: Request, body_value: float | None, default: float) -> float:
    """The body's ``deadline_ms``, else the header's, else ``default``."""
    header = _deadline_header(request)
    if body_value is not None:
        return float(body_value)
    return header if header is not None else default


def _deadline_header(request: Request) -> float | None:
    """The ``X-Crossrank-Deadline-Ms`` header, checked whenever it is sent (a malformed one is a 400 even when the
    body's ``deadline_ms`` wins over it)."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{DEADLINE_HEADER} must be a number of milliseconds, got {raw!r}", "validation") from None
    if not (0 < value <= 3_600_000) or math.isnan(value):
        raise ApiError(400, f"{DEADLINE_HEADER} must be in (0, 3600000], got {raw!r}", "validation")
    return value


# --------------------------------------------------------------------------------------------------- app


def create_app(
    reranker: Any,
    *,
    pipeline: Any = None,
    config: ServeConfig | None = None,
    index: Any = None,
    retriever: str = "hybrid",
    k: int = 100,
    n: int = DEFAULT_N,
    search_deadline_ms: float | None = None,
) -> FastAPI:
    """The crossrank HTTP service around ``reranker`` (anything with the ``Reranker`` protocol; ``score_pairs``
    is used for cross-request batching when present).

    ``/search`` is served when ``pipeline`` is given (a ``Pipeline``, or a callable that takes the server's
    batched reranker and returns one, so search traffic shares the batcher) or ``index`` is (an ``Index``:
    pipelines per retriever kind, ``retriever`` the default, K ``k``, N ``n``).
    """
    config = config or ServeConfig()
    metrics = Metrics()
    engines = _Engines(reranker, config.long_documents)
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
    state = _State(reranker, config, engines, metrics, batcher)
    if pipeline is not None or index is not None:
        batched = BatchedReranker(batcher, state.model_name, timeout_s=config.default_deadline_ms / 1000.0,
                                  info=_engine_info(engines.base), takes_instruction=engines.takes_instruction)
        state.search = _Search(pipeline, index, batched, default_retriever=retriever, k=k, n=n,
                               deadline_ms=search_deadline_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            if state.search is not None:
                await asyncio.to_thread(state.search.warm_up)
            yield
        finally:
            batcher.stop()
            if state.search is not None:
                state.search.close()

    app = FastAPI(
        title="crossrank",
        version=_version(),
        description=(
            "Cross-encoder reranking over HTTP. Dialects: Hugging Face TEI (`POST /rerank`), Cohere v2 "
            "(`POST /v2/rerank`), Jina / Cohere v1, Voyage and infinity (`POST /v1/rerank`, told apart by the body; "
            "infinity also on `/rerank`). Optional `POST /search` "
            "over an index. Time budget per request: `X-Crossrank-Deadline-Ms` header or `deadline_ms` field. "
            "Pairs cut to the model's maximum length are counted in the `X-Crossrank-Truncated` header."
        ),
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc from packaged assets instead of a CDN: serve/docs.py
        redoc_url=None,
    )
    install_docs(app)
    modes = [mode for mode in ("truncate", "chunk") if engines.supports(mode)]
    fixed = state.search.fixed if state.search is not None else None
    install_openapi(
        app, api_key=bool(config.api_key), open_paths=OPEN_PATHS, max_query_chars=config.max_query_chars,
        max_documents=config.max_documents, takes_instruction=engines.takes_instruction, long_documents=modes,
        retrievers=state.search.retrievers if state.search is not None else None,
        search_instruction=(engines.takes_instruction if fixed is None
                            else takes_instruction(getattr(fixed, "reranker", None))),
        max_search_k=config.max_search_k,
    )
    app.state.crossrank = state
    app.add_middleware(_Gate, state=state)
    _install_handlers(app)

    # ------------------------------------------------------------------ shared rerank path
    async def run_job(request: Request, query: str, texts: list[str], *, deadline_ms: float | None,
                      options: dict[str, Any], too_long: str | None = None) -> JobResult:
        dialect = d.dialect_of(request.url.path)
        if not texts:
            raise ApiError(400, "`texts` cannot be empty" if dialect == d.TEI else "`documents` cannot be empty",
                           "empty")
        if len(texts) > config.max_documents:
            raise ApiError(d.status_for("too_many_documents", dialect),
                           f"batch size {len(texts)} > maximum allowed batch size {config.max_documents}",
                           "validation")
        _check_query(query, dialect, config)
        try:
            check_instruction(engines.base, options.get("instruction"))
        except InputError as exc:
            raise ApiError(400, str(exc), "validation") from None
        mode = options.get("long_documents")
        if mode is not None and not engines.supports(mode):
            raise ApiError(400, f"this reranker cannot switch long_documents to {mode!r}", "validation")
        options = {key: v for key, v in options.items() if v is not None}
        budget_ms = _deadline_ms(request, deadline_ms, config.default_deadline_ms)
        left_s = budget_ms / 1000.0 - (time.monotonic() - getattr(request.state, ARRIVED, time.monotonic()))
        if left_s <= 0:  # reading and parsing the body took all of it
            raise ApiError(504, f"deadline of {budget_ms:g} ms exceeded before scoring", "timeout")
        try:
            job = batcher.submit(query, texts, deadline_s=left_s, options=options)
        except Overloaded as exc:
            raise ApiError(429, f"Model is overloaded: {exc}", "overloaded", {"Retry-After": str(exc.retry_after_s)}) from exc
        except RerankerUnavailable as exc:
            raise ApiError(503, str(exc), "unavailable", {"Retry-After": "1"}) from exc
        future = asyncio.wrap_future(job.future)
        gone = await _until_done_or_gone(request, future, left_s + 0.25)
        if not future.done():
            job.cancel()
            future.cancel()
            if gone:
                raise ApiError(CLIENT_CLOSED, "client closed the request", "cancelled")
            raise ApiError(504, f"deadline of {budget_ms:g} ms exceeded", "timeout")
        try:
            result = future.result()
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
        scores = result.scores
        if any(not math.isfinite(s) for s in scores.scores):
            log.error("the model returned a non-finite score")
            raise ApiError(500, "Inference failed: the model returned a non-finite score", "backend")
        n_cut = scores.n_truncated
        if n_cut:
            metrics.truncations.inc(n_cut)
        if scores.cache_hits:
            metrics.cache_hits.inc(scores.cache_hits)
        if too_long is not None and n_cut:
            first = next(i for i, f in enumerate(scores.truncated) if f)
            more = f" (and {n_cut - 1} more)" if n_cut > 1 else ""
            raise ApiError(d.status_for("too_long", dialect),
                           f"Input validation error: input {first}{more} is longer than the model's maximum of "
                           f"{engines.max_length} tokens; {too_long}", "tokenizer")
        return result

    def timing_headers(result: JobResult, started: float) -> dict[str, str]:
        return {
            TRUNCATED_HEADER: str(result.scores.n_truncated),
            "x-compute-type": str(engines.info.get("device", "cpu")),
            "x-compute-tokens": str(result.scores.tokens),
            "x-total-time": str(int((time.perf_counter() - started) * 1000)),
            "x-queue-time": str(int(result.queue_ms)),
            "x-inference-time": str(int(result.inference_ms)),
        }

    # the engine answers calibrated relevance ("sigmoid") or logits ("raw"); the wire gets either on request
    def to_prob(s: float) -> float:
        return s if engines.activation == "sigmoid" else engines.calibration.prob(s)

    def to_raw(s: float) -> float:
        return engines.calibration.raw(s) if engines.activation == "sigmoid" else s

    def order(scores: Sequence[float], top: int | None) -> list[int]:
        idx = sorted(range(len(scores)), key=lambda i: -scores[i])
        return idx[:top] if top is not None else idx

    # ------------------------------------------------------------------ routes
    async def usage_of(query: str, texts: list[str], options: dict[str, Any], result: JobResult) -> Usage:
        options = {key: v for key, v in options.items() if v is not None}
        return await run_in_threadpool(engines.usage, query, texts, options, result.scores)

    @app.post("/rerank", tags=["rerank"], summary="Hugging Face TEI rerank (infinity requests accepted)",
              responses=d.error_responses(d.TEI, {
                  400: "Batch or query empty, malformed JSON, bad deadline header, an instruction the reranker "
                       "cannot take, or a Host that is not allowed",
                  413: "Batch size error (more than max_documents texts), or a body over max_body_bytes",
                  422: "Schema error, a query over max_query_chars, or tokenization error (input longer than the "
                       "model's maximum with truncate=false)",
                  **_RERANK_ERRORS}))
    async def rerank_tei(body: d.RootRerankRequest, request: Request) -> Response:
        """TEI's wire format: a bare array of ``{index, score, text?}``, best first. A body with ``documents``
        instead of ``texts`` is infinity's, answered as on ``/v1/rerank``."""
        if isinstance(body, d.InfinityRerankRequest):
            return await infinity(body, request)
        started = time.perf_counter()
        truncate = config.auto_truncate if body.truncate is None else body.truncate
        result = await run_job(
            request, body.query, body.texts, deadline_ms=body.deadline_ms,
            options={"long_documents": body.long_documents, "truncation_direction": body.truncation_direction
                     if body.truncation_direction == "left" else None, "instruction": body.instruction},
            too_long=None if truncate else "set truncate=true to cut it",
        )
        scores = result.scores.scores
        ranks = []
        for i in order(scores, None):
            item: dict[str, Any] = {"index": i, "score": to_raw(scores[i]) if body.raw_scores else to_prob(scores[i])}
            if body.return_text:
                item["text"] = body.texts[i]
            ranks.append(item)
        return JSONResponse(ranks, headers=timing_headers(result, started))

    @app.post("/v2/rerank", tags=["rerank"], summary="Cohere v2 rerank",
              responses=d.error_responses(d.COHERE, {
                  400: "Any invalid request (Cohere's status for schema errors, empty or too many documents, a "
                       "query over max_query_chars), malformed JSON, or a Host that is not allowed",
                  413: "A body over max_body_bytes", **_RERANK_ERRORS}))
    async def rerank_cohere(body: d.CohereRerankRequest, request: Request) -> Response:
        """Cohere's wire format: ``{id, results: [{index, relevance_score}], meta}``."""
        started = time.perf_counter()
        texts = [d.text_of(doc) for doc in body.documents]
        options = {"long_documents": body.long_documents, "max_tokens_per_doc": body.max_tokens_per_doc,
                   "instruction": body.instruction}
        result = await run_job(request, body.query, texts, deadline_ms=body.deadline_ms, options=options)
        usage = await usage_of(body.query, texts, options, result)
        scores = result.scores.scores
        return JSONResponse(
            {
                "id": str(uuid.uuid4()),
                "results": [{"index": i, "relevance_score": to_prob(scores[i])} for i in order(scores, body.top_n)],
                "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": usage.search_units}},
            },
            headers=timing_headers(result, started),
        )

    @app.post("/v1/rerank", tags=["rerank"], summary="Jina / Cohere v1, Voyage or infinity rerank (by the body)",
              responses=d.error_responses(d.JINA, {
                  400: "Documents or query empty, malformed JSON, bad deadline header, an instruction the reranker "
                       "cannot take, or a Host that is not allowed",
                  413: "More than max_documents documents, or a body over max_body_bytes",
                  422: "Schema error (one message in `detail`), a query over max_query_chars, or an input longer "
                       "than the model's maximum with Voyage's truncation=false", **_RERANK_ERRORS}))
    async def rerank_v1(body: d.V1RerankRequest, request: Request) -> Response:
        """Jina's wire format, with Cohere v1's ``id`` and ``meta``: ``{id, model, usage: {total_tokens,
        prompt_tokens}, results: [{index, relevance_score, document}], meta}``. A Voyage body (``top_k`` or
        ``truncation``) gets ``{object: "list", data, model, usage}``; an infinity body (``raw_scores``) gets
        infinity's ``{object: "rerank", results: [{index, relevance_score, document: str | null}], ...}``."""
        if isinstance(body, d.VoyageRerankRequest):
            return await voyage(body, request)
        if isinstance(body, d.InfinityRerankRequest):
            return await infinity(body, request)
        started = time.perf_counter()
        query = d.text_of(body.query)
        options = {"long_documents": body.long_documents, "instruction": body.instruction}
        result = await run_job(request, query, body.texts, deadline_ms=body.deadline_ms, options=options)
        usage = await usage_of(query, body.texts, options, result)
        scores = result.scores.scores
        results = []
        for i in order(scores, body.top_n):
            item: dict[str, Any] = {"index": i, "relevance_score": to_prob(scores[i])}
            if body.echo:
                doc = body.documents[i]
                item["document"] = {"text": doc} if isinstance(doc, str) else doc
            results.append(item)
        return JSONResponse(
            {"id": str(uuid.uuid4()), "model": body.model or state.model_name,
             "usage": {"total_tokens": usage.tokens, "prompt_tokens": usage.tokens}, "results": results,
             "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": usage.search_units}}},
            headers=timing_headers(result, started),
        )

    async def voyage(body: d.VoyageRerankRequest, request: Request) -> Response:
        started = time.perf_counter()
        options = {"long_documents": body.long_documents, "instruction": body.instruction}
        result = await run_job(request, body.query, body.documents, deadline_ms=body.deadline_ms, options=options,
                               too_long=None if body.truncation else "set truncation=true to cut it")
        usage = await usage_of(body.query, body.documents, options, result)
        scores = result.scores.scores
        data = []
        for i in order(scores, body.top_k):
            item: dict[str, Any] = {"relevance_score": to_prob(scores[i]), "index": i}
            if body.return_documents:
                item["document"] = body.documents[i]
            data.append(item)
        return JSONResponse({"object": "list", "data": data, "model": body.model or state.model_name,
                             "usage": {"total_tokens": usage.tokens}}, headers=timing_headers(result, started))

    async def infinity(body: d.InfinityRerankRequest, request: Request) -> Response:
        started = time.perf_counter()
        options = {"long_documents": body.long_documents, "instruction": body.instruction}
        result = await run_job(request, body.query, body.documents, deadline_ms=body.deadline_ms, options=options)
        usage = await usage_of(body.query, body.documents, options, result)
        scores = result.scores.scores
        results = [{"relevance_score": to_raw(scores[i]) if body.raw_scores else to_prob(scores[i]), "index": i,
                    "document": body.documents[i] if body.return_documents else None}
                   for i in order(scores, body.top_n)]
        return JSONResponse({"object": "rerank", "results": results, "model": state.model_name,
                             "usage": {"prompt_tokens": usage.tokens, "total_tokens": usage.tokens},
                             "id": f"infinity-{uuid.uuid4()}", "created": int(time.time())},
                            headers=timing_headers(result, started))

    if state.search is not None:
        search = state.search

        @app.post("/search", tags=["search"], summary="Retrieve K, rerank, return N",
                  responses=d.error_responses(d.NATIVE, {
                      400: "Empty query, n more than k (k the server's default when not given), a retriever this "
                           "index lacks, an instruction the reranker cannot take, malformed JSON, bad deadline "
                           "header, or a Host that is not allowed",
                      413: "A body over max_body_bytes",
                      422: "Schema error, k over max_search_k, or a query over max_query_chars",
                      500: "Search failed", 503: "The index or a model could not be loaded"}))
        async def search_route(body: d.SearchRequest, request: Request) -> Response:
            """``SearchResult.to_dict()``: hits with first-stage and rerank scores, timings, fallback reason."""
            _check_query(body.query, d.NATIVE, config)
            if body.k is not None and body.k > config.max_search_k:
                raise ApiError(422, f"k={body.k} is above the limit of {config.max_search_k}", "validation")
            header = _deadline_header(request)
            deadline = body.deadline_ms if body.deadline_ms is not None else header
            scope = CancelScope()  # this request's batcher jobs: shed if the client goes away (as /rerank does)

            def run_search():
                with scope.active():
                    return pipe.search(body.query, k=body.k, n=body.n, deadline_ms=deadline, rerank=body.rerank,
                                       fusion=body.fusion, min_score=body.min_score, instruction=body.instruction)

            try:
                pipe = await run_in_threadpool(search.get, body.retriever)
                work = asyncio.ensure_future(run_in_threadpool(run_search))
                if await _until_done_or_gone(request, work, None):
                    scope.cancel()
                    work.add_done_callback(_retrieve_exception)
                    raise ApiError(CLIENT_CLOSED, "client closed the request", "cancelled")
                result = work.result()
            except ApiError:
                raise
            except InputError as exc:
                raise ApiError(400, str(exc), "validation") from exc
            except (IndexLoadError, ModelLoadError, RerankerUnavailable) as exc:
                raise ApiError(503, str(exc), "unavailable") from exc
            except CrossrankError as exc:
                raise ApiError(400, str(exc), "validation") from exc
            except Exception as exc:
                log.error("search failed: %s: %s", type(exc).__name__, exc)
                raise ApiError(500, "search failed", "backend") from exc
            if body.rerank and not result.reranked:
                metrics.fallbacks.inc()
            if result.truncated:
                metrics.truncations.inc(result.truncated)
            if result.cache_hits:
                metrics.cache_hits.inc(result.cache_hits)
            return JSONResponse(result.to_dict(), headers={TRUNCATED_HEADER: str(result.truncated)})

    @app.get("/health", tags=["service"], responses=d.error_responses(d.NATIVE, {
        400: "A Host that is not allowed", 503: "The inference worker is not running"}))
    async def health() -> Response:
        if not batcher.alive:
            return JSONResponse({"error": "unhealthy: the inference worker is not running",
                                 "error_type": "unhealthy"}, status_code=503)
        pairs, requests = batcher.depth()
        backlog = batcher.backlog_s()
        return JSONResponse({"status": "ok", "queue_pairs": pairs, "queue_requests": requests,
                             "queue_seconds": None if backlog is None else round(backlog, 3)})

    @app.get("/info", tags=["service"], responses=d.error_responses(d.NATIVE, {400: "A Host that is not allowed"}))
    async def info() -> Response:
        """TEI's ``Info`` at top level (what tei-client and huggingface_hub read), plus crossrank's own fields."""
        einfo = _engine_info(engines.base)
        return JSONResponse({
            **_tei_info(state, engines, einfo),
            "model": state.model_name,
            "dtype": einfo.get("dtype"),
            "device": einfo.get("device"),
            "max_length": engines.max_length,
            "activation": engines.activation,
            "long_documents": engines.default_mode,
            "version": _version(),
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
            "engine": einfo,
        })

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text exposition format (OpenMetrics when the Accept "
                                               "header asks for application/openmetrics-text)"},
                        **d.error_responses(d.NATIVE, {400: "A Host that is not allowed"})})
    async def metrics_route(request: Request) -> Response:
        pairs, requests = batcher.depth()
        metrics.on_depth(pairs, requests)
        metrics.set_build(_version(), state.model_name)
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return HTMLResponse(PAGE_HTML)

    state.route_paths = frozenset(getattr(r, "path", "") for r in app.routes)
    return app


# Statuses every rerank route answers alike (bodies in the route's dialect). 499 (client went away) is not here:
# nobody is left to read it; it is only counted in the metrics.
_RERANK_ERRORS = {
    429: "Overloaded: the queue is full, or the request cannot be scored before its deadline (Retry-After)",
    500: "Inference failed",
    503: "The reranker is unavailable (Retry-After)",
    504: "Deadline exceeded before the request was scored",
}

_TEI_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}


def _tei_info(state: _State, engines: _Engines, einfo: dict[str, Any]) -> dict[str, Any]:
    """text-embeddings-inference's ``Info`` schema (router/src/lib.rs), for a reranker."""
    config = state.config
    id2label = getattr(getattr(getattr(engines.base, "model", None), "config", None), "id2label", None)
    id2label = {str(k): str(v) for k, v in (id2label or {0: "LABEL_0"}).items()}
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


def _install_handlers(app: FastAPI) -> None:
    def render(request: Request, status: int, message: str, error_type: str,
               headers: dict[str, str] | None = None) -> JSONResponse:
        dialect = d.dialect_of(request.url.path)
        return JSONResponse(d.error_body(dialect, message, error_type), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return render(request, exc.status, exc.message, exc.error_type, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        dialect = d.dialect_of(request.url.path)
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return render(request, 400, "invalid JSON body", "validation")
        parts = []
        for e in errors[:5]:
            loc = ".".join(str(x) for j, x in enumerate(e.get("loc", ()))
                           if x != "body" and not (j == 1 and x in d.SHAPES))  # the shape's tag
            parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
        message = "invalid request: " + "; ".join(parts)
        return render(request, d.status_for("schema", dialect), message, "validation")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        error_type = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        return render(request, exc.status_code, message, error_type, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return render(request, 500, "internal server error", "backend")
