"""A ``Reranker`` that calls a rerank service over HTTP: TEI ``/rerank``, Cohere ``/v2/rerank`` or Jina
``/v1/rerank`` (Voyage-style ``data`` answers are read too), including a crossrank server.

Resilience, so the pipeline can fall back instead of hanging:

* retries with jittered exponential backoff on 429, 502, 503, 504 and connection errors, honouring
  ``Retry-After`` (capped at ``timeout``);
* an optional time budget per call (``score(..., timeout_s=)``, what the pipeline passes under a deadline): each
  attempt's HTTP timeouts are cut to the time left (running out there is a
  :class:`crossrank.errors.RerankTimeout`) and no retry is waited for past it (so a caller that gave up
  stops costing a thread and a socket);
* a circuit breaker: after ``circuit_breaker_failures`` consecutive failed calls it fails fast for
  ``circuit_reset_s`` seconds, then lets one trial call through (half-open); success closes it again;
* every failure raises :class:`crossrank.errors.RerankerUnavailable` naming the URL, the status and the body.

Scores are the service's [0, 1] relevance scores (TEI is asked for ``raw_scores=false``), in input order.
"""

from __future__ import annotations

import copy
import email.utils
import json
import math
import random
import threading
import time
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

from crossrank.errors import InputError, RerankerUnavailable, RerankTimeout, check_query
from crossrank.rerank.base import (
    InputCount,
    RankedText,
    RerankScores,
    check_instruction,
    check_texts,
    rank_by_scores,
    score_by_query,
)
from crossrank.wire import RERANK_PATHS, TEI, dialect_at

APIS = ("auto", *RERANK_PATHS)
# TEI's default --max-client-batch-size is 32; Cohere recommends at most 1000 documents per call.
_DEFAULT_BATCH = {"tei": 32, "cohere": 1000, "jina": 1000}
_RECOMMENDATION_RETRY_S = 30.0  # after /info could not be reached
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_BODY_SNIPPET = 300


class CircuitBreaker:
    """Closed -> (N consecutive failures) -> open -> (reset_s later) half-open: one trial call -> closed or open."""

    def __init__(self, failures: int = 5, reset_s: float = 10.0, clock=time.monotonic) -> None:
        if failures < 1:
            raise InputError("circuit_breaker_failures must be at least 1")
        if reset_s < 0:
            raise InputError("circuit_reset_s must be >= 0")
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self.state = "closed"
        self.consecutive = 0
        self.opened_at = 0.0
        self.last_error = ""
        self._trial = False
        self._lock = threading.Lock()

    def before_call(self) -> bool:
        """Raise if calls must fail fast; True when this call is the half-open trial."""
        with self._lock:
            if self.state == "open":
                left = self.opened_at + self.reset_s - self.clock()
                if left > 0:
                    raise RerankerUnavailable(
                        f"circuit open after {self.consecutive} consecutive failures (last: {self.last_error}); "
                        f"next try in {left:.1f} s"
                    )
                self.state = "half-open"
                self._trial = False
            if self.state == "half-open":
                if self._trial:
                    raise RerankerUnavailable(f"circuit half-open: a trial call is in flight (last: {self.last_error})")
                self._trial = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.state = "closed"
            self.consecutive = 0
            self._trial = False

    def failure(self, message: str) -> None:
        with self._lock:
            self.consecutive += 1
            self.last_error = message
            if self.state == "half-open" or self.consecutive >= self.failures:
                self.state = "open"
                self.opened_at = self.clock()
            self._trial = False

    def release(self) -> None:
        """End a call that says nothing about the service (our own time budget ran out first): no failure
        counted, and a half-open trial slot is freed for the next call."""
        with self._lock:
            self._trial = False


def _resolve(url: str, api: str) -> tuple[str, str]:
    """(endpoint URL, api) from a base URL or a full endpoint URL."""
    if api not in APIS:
        raise InputError(f"api must be one of {', '.join(APIS)}, not {api!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"remote reranker URL must be http(s)://host[:port][/path], got {url!r}")
    path = parts.path.rstrip("/")
    detected = dialect_at(path)
    if api == "auto":
        api = detected or TEI
    if detected is None:
        path = path + RERANK_PATHS[api]
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, "")), api


class RemoteReranker:
    """Rerank through an HTTP service.

    Args:
        url: the service's base URL (``http://host:port``: the dialect's path is added) or its endpoint URL.
        api: "tei", "cohere", "jina", or "auto" (from the URL's path; a bare base URL means TEI).
        model: sent as ``model`` (Cohere and Jina require one; default "crossrank").
        api_key: sent as ``Authorization: Bearer <key>``.
        timeout: seconds per HTTP attempt.
        retries: extra attempts after the first on 429/502/503/504 and connection errors.
        backoff: first retry delay in seconds; doubles per attempt, with jitter (x0.5-1.5).
        circuit_breaker_failures / circuit_reset_s: see :class:`CircuitBreaker`.
        max_documents_per_request: texts per HTTP call (default: 32 for TEI, 1000 otherwise); more are split.
    """

    def __init__(
        self,
        url: str,
        *,
        api: str = "auto",
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
        circuit_breaker_failures: int = 5,
        circuit_reset_s: float = 10.0,
        max_documents_per_request: int | None = None,
        name: str | None = None,
        transport: httpx.BaseTransport | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise InputError(f"unknown option(s) for a remote reranker: {', '.join(sorted(unknown))}")
        if timeout <= 0:
            raise InputError("timeout must be positive")
        if retries < 0 or backoff < 0:
            raise InputError("retries and backoff must be >= 0")
        self.endpoint, self.api = _resolve(url, api)
        self.url = url
        self.model = model or "crossrank"
        self.name = name or (f"{model}@{self.endpoint}" if model else self.endpoint)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.batch = int(max_documents_per_request or _DEFAULT_BATCH[self.api])
        if self.batch < 1:
            raise InputError("max_documents_per_request must be positive")
        self.breaker = CircuitBreaker(circuit_breaker_failures, circuit_reset_s)
        headers = {"User-Agent": "crossrank-remote", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 5.0)),
            headers=headers,
            transport=transport,
            follow_redirects=False,
        )
        self.calls = 0
        self.attempts = 0
        self._recommended: dict[str, Any] | None = None
        self._recommended_at = -math.inf

    takes_instruction = False  # the wire formats have no field for one

    # ---------------------------------------------------------------- Reranker protocol
    def score(self, query: str, texts: Sequence[str], *, timeout_s: float | None = None,
              instruction: str | None = None) -> RerankScores:
        """Scores in input order. ``timeout_s``: time budget for the whole call (every batch and retry): each
        HTTP attempt's timeouts are cut to what is left (:class:`crossrank.errors.RerankTimeout` when they run
        out, not counted against the service by the circuit breaker), and a failed attempt is not retried when the
        wait before the retry would end past it (the failure is raised, as after the last attempt). httpx
        timeouts bound each network wait, so a service that trickles bytes can overrun the budget by up to one
        of those waits. An ``instruction`` is an ``InputError``: these services take none."""
        check_instruction(self, instruction)
        return self._score(query, texts, _deadline(timeout_s))

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, timeout_s: float | None = None,
                    instruction: str | None = None) -> RerankScores:
        """One :meth:`score` per distinct query, all within the one ``timeout_s``."""
        check_instruction(self, instruction)
        deadline = _deadline(timeout_s)
        return score_by_query(lambda query, texts: self._score(query, texts, deadline), pairs)

    def with_options(self, **options: Any) -> "RemoteReranker":
        """This client with other ``retries``, ``backoff`` or ``max_documents_per_request`` (the same connection
        pool and circuit breaker: the same service); ``long_documents="truncate"`` is what the services do
        already. No options: this client."""
        allowed = ("long_documents", "retries", "backoff", "max_documents_per_request")
        unknown = set(options) - set(allowed)
        if unknown:
            raise InputError(f"a remote reranker's with_options takes {', '.join(allowed)}, not "
                             f"{', '.join(sorted(unknown))}")
        if options.get("long_documents", "truncate") != "truncate":
            raise InputError(f"a remote reranker cannot switch long_documents to {options['long_documents']!r}")
        if not options:
            return self
        variant = copy.copy(self)
        variant.retries = int(options.get("retries", self.retries))
        variant.backoff = float(options.get("backoff", self.backoff))
        variant.batch = int(options.get("max_documents_per_request", self.batch))
        if variant.retries < 0 or variant.backoff < 0 or variant.batch < 1:
            raise InputError("retries and backoff must be >= 0, max_documents_per_request positive")
        return variant

    def count_inputs(self, query: str, texts: Sequence[str], instruction: str | None = None) -> InputCount | None:
        """None: only the service knows what it runs."""
        return None

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]] | None:
        """None: the tokenizer is the service's."""
        return None

    def _score(self, query: str, texts: Sequence[str], deadline: float | None) -> RerankScores:
        check_query(query)
        texts = check_texts(texts)
        scores: list[float] = []
        tokens = 0
        for start in range(0, len(texts), self.batch):
            part, used = self._call(query, texts[start : start + self.batch], deadline)
            scores.extend(part)
            tokens += used
        # The services report how many inputs were cut, not which: no flags.
        return RerankScores(scores=scores, truncated=[False] * len(scores), tokens=tokens)

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[RankedText]:
        return rank_by_scores(list(texts), self.score(query, texts).scores, top_n)

    def info(self) -> dict[str, Any]:
        recommended = self.server_recommendation()
        return {
            **({"recommended": recommended} if recommended else {}),
            "model": self.name,
            "remote": self.endpoint,
            "api": self.api,
            "activation": "sigmoid",
            "circuit": self.breaker.state,
            "timeout_s": self.timeout,
            "retries": self.retries,
            "max_documents_per_request": self.batch,
        }

    def server_recommendation(self) -> dict[str, Any]:
        """What the service recommends around its scores, so ``fusion="auto"`` over a remote crossrank server
        orders as the server's own ``/search`` does: the ``engine.recommended`` of a crossrank server's
        ``GET /info`` when it serves calibrated relevances (activation sigmoid), else ``{}`` (another service,
        raw scores, or ``/info`` unreadable: the cross-encoder's order). Read once; a failed read is retried
        after ``_RECOMMENDATION_RETRY_S``."""
        now = time.monotonic()
        if self._recommended is None and now - self._recommended_at >= _RECOMMENDATION_RETRY_S:
            self._recommended_at = now
            self._recommended = self._read_recommendation()
        return dict(self._recommended or {})

    def _read_recommendation(self) -> dict[str, Any] | None:
        parts = urlsplit(self.endpoint)
        root = parts.path.removesuffix(RERANK_PATHS[self.api])  # a server mounted under a prefix keeps it
        url = urlunsplit((parts.scheme, parts.netloc, root + "/info", "", ""))
        try:
            resp = self._client.get(url, timeout=min(self.timeout, 2.0))
            body = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None  # unreachable now: retried later
        engine = body.get("engine") if isinstance(body, dict) else None
        if not isinstance(engine, dict) or body.get("activation") != "sigmoid":
            return {}  # not a crossrank server, or one serving raw logits: nothing to apply
        rec = engine.get("recommended")
        return dict(rec) if isinstance(rec, dict) else {}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RemoteReranker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteReranker({self.endpoint!r}, api={self.api!r}, circuit={self.breaker.state})"

    # ---------------------------------------------------------------- wire
    def _payload(self, query: str, texts: list[str]) -> dict[str, Any]:
        if self.api == "tei":
            return {"query": query, "texts": texts, "truncate": True, "raw_scores": False, "return_text": False}
        if self.api == "cohere":
            return {"model": self.model, "query": query, "documents": texts, "top_n": len(texts)}
        return {"model": self.model, "query": query, "documents": texts, "top_n": len(texts),
                "return_documents": False}

    def _parse(self, body: Any, n: int) -> list[float]:
        if self.api == "tei":
            items, key = body, "score"
        else:
            items = body.get("results", body.get("data")) if isinstance(body, dict) else None
            key = "relevance_score"
        if not isinstance(items, list):
            raise ValueError("no list of results")
        scores: list[float | None] = [None] * n
        for item in items:
            i, s = item["index"], item[key]
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
                raise ValueError(f"index {i!r} out of range")
            if not isinstance(s, (int, float)) or isinstance(s, bool):
                raise ValueError(f"score {s!r} is not a number")
            scores[i] = float(s)
        missing = [i for i, s in enumerate(scores) if s is None]
        if missing:
            raise ValueError(f"no score for {len(missing)} of {n} inputs (first: {missing[0]})")
        return scores  # type: ignore[return-value]

    def _call(self, query: str, texts: list[str], deadline: float | None = None) -> tuple[list[float], int]:
        if not texts:
            return [], 0
        if deadline is not None and deadline - time.monotonic() <= 0:
            raise RerankTimeout(f"time budget ran out before calling {self.endpoint}")
        trial = self.breaker.before_call()
        self.calls += 1
        payload = self._payload(query, texts)
        attempts = 1 if trial else self.retries + 1
        last = ""
        for attempt in range(attempts):
            delay = self.backoff * (2 ** attempt) * random.uniform(0.5, 1.5)
            self.attempts += 1
            timeout: Any = httpx.USE_CLIENT_DEFAULT
            budget_cut = False  # this attempt's timeout is our budget's, shorter than the service's own
            if deadline is not None:
                left = deadline - time.monotonic()
                if left < self.timeout:
                    timeout, budget_cut = httpx.Timeout(max(left, 0.001), connect=min(max(left, 0.001), 5.0)), True
            try:
                resp = self._client.post(self.endpoint, json=payload, timeout=timeout)
            except httpx.TransportError as exc:
                last = f"cannot reach {self.endpoint}: {type(exc).__name__}: {exc}"
                if budget_cut and isinstance(exc, httpx.TimeoutException):
                    self.breaker.release()  # our budget, not the service, decided this one
                    raise RerankTimeout(f"time budget ran out waiting for {self.endpoint} "
                                        f"(attempt {attempt + 1} of {attempts}): {last}") from None
            else:
                if resp.status_code == 200:
                    try:
                        scores = self._parse(resp.json(), len(texts))
                    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
                        message = f"{self.endpoint} answered 200 with an unreadable body ({exc}): {_snippet(resp)}"
                        self.breaker.failure(message)
                        raise RerankerUnavailable(message) from None
                    self.breaker.success()
                    return scores, _tokens(resp)
                last = f"{self.endpoint} answered {resp.status_code}: {_snippet(resp)}"
                if resp.status_code not in RETRY_STATUSES:
                    if resp.status_code >= 500:
                        self.breaker.failure(last)
                    else:
                        self.breaker.success()  # reachable and answering: the circuit is fine, the request is not
                    raise RerankerUnavailable(last)
                after = _retry_after(resp)
                if after is not None:
                    delay = min(after, self.timeout)
            if attempt + 1 < attempts:
                if deadline is not None and time.monotonic() + delay >= deadline:
                    self.breaker.failure(last)  # the service failed; the budget only stops the retries
                    raise RerankerUnavailable(f"{last}; the time budget left no room for a retry "
                                              f"(after {attempt + 1} of {attempts} attempts)")
                time.sleep(delay)
        self.breaker.failure(last)
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        raise RerankerUnavailable(f"{last}{tries}")


def _deadline(timeout_s: float | None) -> float | None:
    """``time.monotonic()`` when a ``timeout_s`` budget runs out (None: no budget)."""
    if timeout_s is not None and not timeout_s > 0:
        raise InputError(f"timeout_s must be positive, got {timeout_s}")
    return time.monotonic() + float(timeout_s) if timeout_s is not None else None


def _snippet(resp: httpx.Response) -> str:
    text = resp.text.strip().replace("\n", " ")
    return text[:_BODY_SNIPPET] + ("..." if len(text) > _BODY_SNIPPET else "") if text else "(empty body)"


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _int_header(resp: httpx.Response, name: str) -> int:
    try:
        return int(resp.headers.get(name, "0"))
    except ValueError:
        return 0


def _tokens(resp: httpx.Response) -> int:
    used = _int_header(resp, "x-compute-tokens")
    if used:
        return used
    try:
        body = resp.json()
        if isinstance(body, dict):
            usage = body.get("usage") or {}
            return int(usage.get("total_tokens") or 0)
    except Exception:
        pass
    return 0
