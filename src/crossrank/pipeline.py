"""Retrieve K, rerank, return N: the pattern the whole package exists for.

``Pipeline`` composes any ``Retriever`` with any ``Reranker`` (local engine, remote service, cache) and owns
three promises:

* every result carries per-stage timings (retrieve / rerank / total, in ms);
* a search never fails because the reranker did: a reranker that raises, is unreachable or misses the
  deadline yields the first-stage ranking, flagged ``reranked=False`` with the reason;
* under a tight deadline it does better than all-or-nothing: it reranks the head of the candidate list that
  fits the time left (estimated from the reranker's measured throughput) and keeps first-stage order for the
  tail, reporting ``n_reranked``. A cold pipeline is warmed up first (:meth:`Pipeline.warm_up`), so its very
  first deadline-bounded query does not spend the budget on lazy loads.

The final order is the cross-encoder's (``fusion="none"``, the classic pattern) or a fusion of the
cross-encoder with the first stage: reciprocal rank fusion (``"rrf"``) or an interpolation of z-normalised
scores (``"interpolate"``, ``weight`` on the cross-encoder), or that interpolation with the weight scaled per query by
the cross-encoder's confidence (``"confidence"``: ``weight * max relevance``, so a query whose best candidate reads
relevance 0.2 keeps mostly the first-stage order). ``fusion="auto"`` (the default, and what the CLI,
the server and the evaluator use) takes the reranker's own recommendation
(:func:`crossrank.rerank.recommendation`; the bundled models ship one chosen on held-out training queries) and is
the cross-encoder's order for a reranker that recommends none. ``min_score`` drops hits whose calibrated
relevance is below it (``"auto"``: the reranker's recommended threshold), so a query with nothing relevant can
return nothing.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from crossrank.errors import InputError, RerankTimeout, check_query
from crossrank.rerank import recommendation
from crossrank.rerank.base import Reranker, RerankScores, as_reranker, check_instruction
from crossrank.retrieve.base import Retriever
from crossrank.threads import DaemonThreadPoolExecutor
from crossrank.types import DEFAULT_N, Candidate, Hit, SearchResult, Timings, first_per_document

FusionMethod = Literal["none", "rrf", "interpolate", "confidence"]
FUSION_METHODS = ("none", "rrf", "interpolate", "confidence")
Unit = Literal["passage", "document"]

RRF_K = 60
DOC_OVERSAMPLE = 4
# Share of the remaining time budget we plan to spend reranking; the rest absorbs estimation error.
_DEADLINE_SAFETY = 0.8
# warm-up: a cold call (lazy loads), then a timed call on a few pairs; two queries, so a score cache cannot answer
_WARM_QUERIES = ("crossrank warm-up", "crossrank warm-up, timed")
_WARM_PAIRS = 8
WARM_UP_TIMEOUT_S = 10.0  # the automatic warm-up's bound on each reranker call (a hung reranker)
_WARM_TEXT = "A short passage the reranker scores once while warming up, about as long as a typical one. " * 3


@dataclass(frozen=True, slots=True)
class Fusion:
    """How the final order combines cross-encoder and first-stage scores.

    ``method="none"``: cross-encoder order. ``"rrf"``: 1/(60+rank_ce) + 1/(60+rank_first). ``"interpolate"``:
    ``weight * z(ce) + (1 - weight) * z(first)``, z-normalised over the reranked candidates of one query.
    ``"confidence"``: the same with ``weight * max(ce)`` in place of ``weight`` (``max(ce)`` clipped to [0, 1]):
    where the cross-encoder's calibrated relevance says nothing among the candidates is relevant, it has no basis
    for reordering, so the first stage keeps the order. It reads the scores as relevance probabilities (the
    bundled models' calibrated scores); on raw logits it is ``"interpolate"``.
    """

    method: FusionMethod = "none"
    weight: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise InputError(f"unknown fusion {self.method!r}: use none, rrf, interpolate or confidence")
        if not 0.0 <= self.weight <= 1.0:
            raise InputError(f"fusion weight must be in [0, 1], got {self.weight}")

    @classmethod
    def parse(cls, spec: "str | Fusion | dict | None") -> "Fusion":
        """``None``/``"none"``, ``"rrf"``, ``"interpolate"``, ``"interpolate:0.7"``, ``"confidence:0.2"``, a dict
        or a Fusion."""
        if spec is None:
            return cls()
        if isinstance(spec, Fusion):
            return spec
        if isinstance(spec, dict):
            return cls(method=spec.get("method", spec.get("fusion", "none")), weight=float(spec.get("weight", 0.5)))
        method, _, weight = str(spec).partition(":")
        try:
            return cls(method=method.strip().lower(), weight=float(weight) if weight else 0.5)  # type: ignore[arg-type]
        except ValueError as exc:
            raise InputError(f"bad fusion spec {spec!r}: expected e.g. 'rrf' or 'interpolate:0.6'") from exc


def _zscore(values: Sequence[float]) -> list[float]:
    n = len(values)
    if n == 0:
        return []
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    if std == 0.0:
        return [0.0] * n
    return [(v - mean) / std for v in values]


def _ranks(values: Sequence[float]) -> list[int]:
    """1-based ranks, higher value = better rank; ties keep input order."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0] * len(values)
    for r, i in enumerate(order, start=1):
        ranks[i] = r
    return ranks


def fuse(first_stage: Sequence[float], rerank: Sequence[float], fusion: "Fusion | str | None" = None) -> list[float]:
    """Final scores for candidates given their first-stage and cross-encoder scores (same order, same length)."""
    fusion = Fusion.parse(fusion)
    if len(first_stage) != len(rerank):
        raise InputError("fuse: first-stage and rerank score lists differ in length")
    if fusion.method == "none":
        return [float(s) for s in rerank]
    if fusion.method == "rrf":
        return [
            1.0 / (RRF_K + a) + 1.0 / (RRF_K + b) for a, b in zip(_ranks(rerank), _ranks(first_stage), strict=True)
        ]
    w = fusion.weight
    if fusion.method == "confidence":
        w *= min(1.0, max(0.0, max(rerank, default=0.0)))
    return [w * a + (1.0 - w) * b for a, b in zip(_zscore(rerank), _zscore(first_stage), strict=True)]


class _Throughput:
    """Exponentially weighted pairs/second of the reranker, to size the head under a deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pairs_per_s: float | None = None

    def update(self, pairs: int, seconds: float) -> None:
        if pairs <= 0 or seconds <= 0:
            return
        rate = pairs / seconds
        with self._lock:
            self.pairs_per_s = rate if self.pairs_per_s is None else 0.7 * self.pairs_per_s + 0.3 * rate

    def cap(self, pairs_per_s_upper: float) -> None:
        """After a timeout we only know an upper bound; never keep an estimate above it."""
        with self._lock:
            if self.pairs_per_s is None or self.pairs_per_s > pairs_per_s_upper:
                self.pairs_per_s = pairs_per_s_upper


class Pipeline:
    """First stage -> cross-encoder -> top N, with timings, a deadline and fallback.

    Args:
        retriever: any ``Retriever`` (BM25, dense, hybrid, or a remote engine).
        reranker: any ``Reranker``, or ``None`` for first-stage results only.
        k: candidates fetched from the first stage and offered to the reranker.
        n: results returned.
        deadline_ms: default end-to-end time budget per search (``None``: no deadline).
        fusion: final-order fusion (``Fusion``, ``"rrf"``, ``"interpolate:0.6"``, ``"confidence:0.2"``, ``"none"``...); ``"auto"``
            (default): the reranker's recommendation, else the cross-encoder's order.
        min_score: drop reranked hits whose relevance (the reranker's score) is below this; ``"auto"``: the
            reranker's recommended threshold (none if it has none); ``None`` (default): keep every hit. Hits the
            reranker did not reach (deadline) are kept, and nothing is dropped when reranking failed.
        unit: ``"passage"`` returns passages; ``"document"`` returns one hit per document, scored by its best
            passage (max-score aggregation). In document mode K counts documents: the first stage is read
            ``DOC_OVERSAMPLE`` times deeper and up to ``passages_per_doc`` passages of each of the first K
            documents are reranked.
        workers: threads that run reranker calls under a deadline (a call that overruns keeps its thread
            until it ends, so more than one lets the next search proceed).
        instruction: default task instruction for rerankers that take one (LLM rerankers; ``None``: the
            model's own default); a reranker that takes none makes it an ``InputError``.
        rerank_depth: rerank at most the first stage's top this many of the K candidates (the rest follow in
            first-stage order); ``"auto"`` (default): the reranker's recommendation (the bundled ``fast`` has
            one), else all K; ``None``: all K.

    Cold start: retrievers and rerankers load lazily (bi-encoder, tokenizer, ONNX sessions) and have no
    throughput estimate before their first call. :meth:`warm_up` runs the retriever and the reranker once on a
    tiny input and measures the reranker's pairs/s; call it after construction (the CLI does) to keep load time
    out of the first query. The first search with a deadline on a pipeline that was never warmed or measured
    warms it up automatically before its clock starts (each reranker call bounded by ``WARM_UP_TIMEOUT_S`` or
    the deadline, whichever is longer), so it reranks what fits from the first query; that one call takes the
    cold-load time longer than its deadline, its timings exclude the warm-up (``warm_up_ms`` holds it).

    Example::

        index = crossrank.retrieve.load_index("my-index")
        pipe = Pipeline(index.retriever("hybrid"), crossrank.load_reranker("default"), k=100, n=10)
        result = pipe.search("what causes earthquakes", deadline_ms=500)
        for hit in result.hits:
            print(hit.rank, hit.score, hit.title)
    """

    def __init__(
        self,
        retriever: Retriever,
        reranker: Reranker | None = None,
        *,
        k: int = 100,
        n: int = DEFAULT_N,
        deadline_ms: float | None = None,
        fusion: "Fusion | str | dict | None" = "auto",
        min_score: "float | str | None" = None,
        unit: Unit = "passage",
        workers: int = 4,
        passages_per_doc: int = 3,
        instruction: str | None = None,
        rerank_depth: "int | str | None" = "auto",
    ) -> None:
        check_k_n(k, n)
        check_options(min_score=min_score, unit=unit, deadline_ms=deadline_ms)  # the fusion: resolve_fusion below
        reranker = as_reranker(reranker)  # the full protocol from here on, whatever the caller passed
        self.rerank_depth = resolve_rerank_depth(rerank_depth, reranker)
        self.instruction = check_instruction(reranker, instruction)
        self.retriever = retriever
        self.reranker = reranker
        self.k = k
        self.n = n
        self.deadline_ms = deadline_ms
        self.fusion = resolve_fusion(fusion, reranker)
        self.min_score = resolve_min_score(min_score, reranker)
        self.unit: Unit = unit
        self.passages_per_doc = max(1, passages_per_doc)
        self.throughput = _Throughput()
        self.warm_up_ms: float | None = None  # time the last warm_up took (None: never warmed)
        self._warm_lock = threading.Lock()
        # daemon workers: a reranker call that outlives its deadline never holds the process at exit
        self._executor = DaemonThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="crossrank-rerank")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def warm_up(self, *, timeout_s: float | None = None) -> "str | None":
        """Run the retriever and the reranker once on a tiny input, so lazy loads happen now, and measure the
        reranker's throughput (pairs/s) for the deadline logic. ``timeout_s`` bounds each reranker call.

        Returns None, or why the reranker part failed (a failing reranker is left to the searches to report).
        Retriever errors propagate. Sets ``warm_up_ms`` and ``throughput.pairs_per_s``."""
        start = time.perf_counter()
        try:
            candidates = self.retriever.search(_WARM_QUERIES[0], _WARM_PAIRS)
            return self._measure(candidates, timeout_s) if self.reranker is not None else None
        finally:
            self.warm_up_ms = (time.perf_counter() - start) * 1000.0

    def _measure(self, candidates: list[Candidate], timeout_s: float | None) -> "str | None":
        texts = [c.full_text for c in candidates] or [_WARM_TEXT] * _WARM_PAIRS
        try:
            self._score(self.reranker, _WARM_QUERIES[0], texts[:1], timeout_s)  # cold: lazy loads
            call_start = time.perf_counter()
            scores = self._score(self.reranker, _WARM_QUERIES[1], texts, timeout_s)
        except (FutureTimeout, RerankTimeout):
            return "reranker warm-up timed out" + (f" after {timeout_s:g} s" if timeout_s is not None else "")
        except Exception as exc:  # noqa: BLE001 - searches report a broken reranker with their fallback
            return f"reranker warm-up failed: {type(exc).__name__}: {exc}"
        self.throughput.update(len(texts) - scores.cache_hits, time.perf_counter() - call_start)
        return None

    def _auto_warm_up(self, deadline_ms: float) -> None:
        """Once, before the first deadline-bounded search of a pipeline with no throughput estimate."""
        with self._warm_lock:
            if self.warm_up_ms is None and self.throughput.pairs_per_s is None:
                self.warm_up(timeout_s=max(WARM_UP_TIMEOUT_S, deadline_ms / 1000.0))

    def _score(self, reranker: Reranker, query: str, texts: list[str], timeout_s: float | None,
               instruction: str | None = None):
        """``reranker.score``, bounded by ``timeout_s`` (raises ``FutureTimeout`` / ``RerankTimeout``)."""
        if timeout_s is None:
            return reranker.score(query, texts, instruction=instruction)
        # a reranker that takes the budget stops working when it runs out (instead of finishing for nobody);
        # in a copy of the caller's context: context variables (the server's per-request cancel scope) follow the
        # call onto the worker thread
        future = self._executor.submit(contextvars.copy_context().run, reranker.score, query, texts,
                                       timeout_s=timeout_s, instruction=instruction)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()
            raise

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def search(
        self,
        query: str,
        *,
        k: int | None = None,
        n: int | None = None,
        deadline_ms: float | None = None,
        fusion: "Fusion | str | dict | None" = None,
        min_score: "float | str | None" = None,
        rerank: bool = True,
        unit: Unit | None = None,
        instruction: str | None = None,
    ) -> SearchResult:
        """Run one query through the pipeline. Raises ``InputError`` only for bad input (empty query, bad k/n,
        an explicit n > k, an instruction for a reranker that takes none); without ``n``, at most ``k`` results. A deadline on a cold pipeline warms it up first
        (see the class docstring)."""
        check_query(query)
        instruction = self.instruction if instruction is None else check_instruction(self.reranker, instruction)
        k = self.k if k is None else k
        n = min(self.n, k) if n is None else n  # a small k asks for at most k results; only an explicit n > k errs
        check_k_n(k, n)
        deadline_ms = self.deadline_ms if deadline_ms is None else deadline_ms
        check_deadline_ms(deadline_ms)
        if deadline_ms is not None and rerank and self.reranker is not None:
            self._auto_warm_up(deadline_ms)
        start = time.perf_counter()
        fusion_spec = self.fusion if fusion is None else resolve_fusion(fusion, self.reranker)
        threshold = self.min_score if min_score is None else resolve_min_score(min_score, self.reranker)
        unit = self.unit if unit is None else unit

        if unit == "document":
            candidates = _document_candidates(
                self.retriever.search(query, k * DOC_OVERSAMPLE), k, self.passages_per_doc
            )
        else:
            candidates = self.retriever.search(query, k)
        retrieve_ms = (time.perf_counter() - start) * 1000.0

        reranker = self.reranker if rerank else None
        outcome = _RerankOutcome()
        if reranker is None:
            outcome.reason = "reranking disabled" if self.reranker is not None else "no reranker configured"
        elif not candidates:
            outcome.reason = "no candidates"
        else:
            outcome = self._rerank(reranker, query, candidates, start, deadline_ms, instruction)
        rerank_done = time.perf_counter()

        hits = _compose(candidates, outcome, fusion_spec)
        if unit == "document":
            hits = first_per_document(hits)
        below = 0
        if threshold is not None and outcome.scores:
            kept = [h for h in hits if h.rerank_score is None or h.rerank_score >= threshold]
            below, hits = len(hits) - len(kept), kept
        hits = hits[:n]
        for rank, hit in enumerate(hits, start=1):
            hit.rank = rank
        total_ms = (time.perf_counter() - start) * 1000.0
        return SearchResult(
            query=query,
            hits=hits,
            timings=Timings(
                retrieve_ms=retrieve_ms,
                rerank_ms=(rerank_done - start) * 1000.0 - retrieve_ms if reranker is not None else 0.0,
                total_ms=total_ms,
            ),
            reranked=outcome.n_reranked > 0,
            reason=outcome.reason,
            n_candidates=len(candidates),
            n_reranked=outcome.n_reranked,
            retriever=getattr(self.retriever, "name", type(self.retriever).__name__),
            reranker=reranker.name if reranker is not None else None,
            truncated=outcome.truncated,
            cache_hits=outcome.cache_hits,
            below_min_score=below,
        )

    def _rerank(
        self, reranker: Reranker, query: str, candidates: list[Candidate], start: float, deadline_ms: float | None,
        instruction: str | None = None,
    ) -> "_RerankOutcome":
        texts = [c.full_text for c in candidates]
        head = len(texts) if self.rerank_depth is None else min(len(texts), self.rerank_depth)
        timeout_s: float | None = None
        if deadline_ms is not None:
            remaining_s = deadline_ms / 1000.0 - (time.perf_counter() - start)
            if remaining_s <= 0:
                return _RerankOutcome(reason=f"deadline of {deadline_ms:g} ms spent before reranking")
            rate = self.throughput.pairs_per_s
            if rate is not None:
                head = min(head, int(remaining_s * _DEADLINE_SAFETY * rate))
                if head < 1:
                    return _RerankOutcome(
                        reason=f"deadline of {deadline_ms:g} ms leaves no time to rerank "
                        f"({remaining_s * 1000:.0f} ms left at ~{rate:.0f} pairs/s)"
                    )
            timeout_s = remaining_s

        call_start = time.perf_counter()
        try:
            scores = self._score(reranker, query, texts[:head], timeout_s, instruction)
        except (FutureTimeout, RerankTimeout) as exc:
            if timeout_s is None:  # the reranker's own time limit, not our deadline
                return _RerankOutcome(reason=f"reranker failed: {type(exc).__name__}: {exc}")
            self.throughput.cap(head / max(time.perf_counter() - call_start, 1e-6) * 0.5)
            return _RerankOutcome(
                reason=f"reranker timed out: deadline of {deadline_ms:g} ms reached while scoring {head} candidates"
            )
        except Exception as exc:  # noqa: BLE001 - the promise: a search never fails because the reranker did
            return _RerankOutcome(reason=f"reranker failed: {type(exc).__name__}: {exc}")
        # pairs answered from a score cache cost nothing: they must not inflate the estimate
        self.throughput.update(head - scores.cache_hits, time.perf_counter() - call_start)

        values = [float(s) for s in scores]
        if len(values) != head:
            return _RerankOutcome(reason=f"reranker returned {len(values)} scores for {head} candidates")
        outcome = _RerankOutcome(scores=values, n_reranked=head)
        if isinstance(scores, RerankScores):
            outcome.truncated = scores.n_truncated
            outcome.cache_hits = scores.cache_hits
        if head < min(len(texts), self.rerank_depth or len(texts)):
            outcome.reason = f"deadline: reranked the top {head} of {len(texts)} candidates"
        return outcome


@dataclass(slots=True)
class _RerankOutcome:
    scores: list[float] | None = None
    n_reranked: int = 0
    reason: str | None = None
    truncated: int = 0
    cache_hits: int = 0


def resolve_fusion(spec: "Fusion | str | dict | None", reranker: Reranker | None) -> Fusion:
    """A fusion spec with ``"auto"`` replaced by the reranker's recommendation (cross-encoder order if none)."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        spec = recommendation(reranker).get("fusion") if reranker is not None else None
    return Fusion.parse(spec)


def resolve_rerank_depth(spec: "int | str | None", reranker: Reranker | None) -> int | None:
    """How many of the first stage's candidates get reranked: a positive number, ``"auto"`` (the reranker's
    recommended ``rerank_depth``, or all) or None (all)."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        spec = recommendation(reranker).get("rerank_depth") if reranker is not None else None
    if spec is None:
        return None
    if isinstance(spec, bool) or not isinstance(spec, int) or spec < 1:
        raise InputError(f"rerank_depth must be a positive integer, 'auto' or None, got {spec!r}")
    return spec


def resolve_min_score(spec: "float | str | None", reranker: Reranker | None) -> float | None:
    """A relevance threshold: a number, ``"auto"`` (the reranker's recommended one, or None) or None."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec.strip().lower() == "auto":
            value = recommendation(reranker).get("min_score") if reranker is not None else None
            return None if value is None else float(value)
        try:
            spec = float(spec)
        except ValueError as exc:
            raise InputError(f"min_score must be a number or 'auto', got {spec!r}") from exc
    if isinstance(spec, bool) or not isinstance(spec, (int, float)) or not math.isfinite(spec):
        raise InputError(f"min_score must be a finite number or 'auto', got {spec!r}")
    return float(spec)


def check_deadline_ms(deadline_ms: float | None) -> None:
    """A time budget: None (none) or a positive, finite number of milliseconds."""
    if deadline_ms is None:
        return
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, (int, float)) or not math.isfinite(deadline_ms) \
            or deadline_ms <= 0:
        raise InputError(f"deadline_ms must be a positive number of milliseconds, got {deadline_ms!r}")


def check_options(*, fusion: Any = "auto", min_score: Any = None, unit: Any = "passage",
                  deadline_ms: Any = None) -> None:
    """The search options' syntax, checked without a reranker (so a command line fails before any model loads);
    :class:`Pipeline` applies the same checks, and resolves ``auto`` against the reranker afterwards."""
    if not (isinstance(fusion, str) and fusion.strip().lower() == "auto"):
        Fusion.parse(fusion)
    resolve_min_score(min_score, None)
    if unit not in ("passage", "document"):
        raise InputError(f"unit must be 'passage' or 'document', got {unit!r}")
    check_deadline_ms(deadline_ms)


def check_k_n(k: int, n: int) -> None:
    """K candidates and N results: positive integers, N no more than K (the pipeline returns at most K)."""
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    if not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if n > k:
        raise InputError(f"n={n} is more than k={k}: at most k candidates are retrieved and reranked, "
                         f"so raise k or lower n")


def _compose(candidates: list[Candidate], outcome: _RerankOutcome, fusion: Fusion) -> list[Hit]:
    """Reranked head sorted by final score, then the tail in first-stage order."""

    def hit(c: Candidate, rerank_score: float | None, score: float) -> Hit:
        return Hit(
            id=c.id,
            doc_id=c.doc_id,
            text=c.text,
            title=c.title,
            rank=0,
            first_stage_rank=c.rank,
            first_stage_score=c.score,
            rerank_score=rerank_score,
            score=score,
        )

    if not outcome.scores:
        return [hit(c, None, c.score) for c in candidates]
    m = outcome.n_reranked
    head = candidates[:m]
    final = fuse([c.score for c in head], outcome.scores, fusion)
    order = sorted(range(m), key=lambda i: -final[i])
    hits = [hit(head[i], outcome.scores[i], final[i]) for i in order]
    hits.extend(hit(c, None, c.score) for c in candidates[m:])
    return hits


def _document_candidates(passages: list[Candidate], k: int, per_doc: int) -> list[Candidate]:
    """Passages of the first ``k`` documents, at most ``per_doc`` each, in first-stage order."""
    kept: dict[str, int] = {}
    out = []
    for c in passages:
        count = kept.get(c.doc_id)
        if count is None:
            if len(kept) == k:
                continue
            count = 0
        if count < per_doc:
            kept[c.doc_id] = count + 1
            out.append(c)
    return out
