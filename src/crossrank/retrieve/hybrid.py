"""Fusing several retrievers' ranked lists into one.

* ``fusion="rrf"``: reciprocal rank fusion (Cormack et al., 2009): ``score(d) = sum_i w_i / (rrf_k + rank_i(d))``,
  ranks 1-based, a retriever that did not return ``d`` contributes nothing. Needs no score calibration.
* ``fusion="weighted"``: each retriever's scores are min-max normalised *per query, over the list it returned*
  (best -> 1, worst returned -> 0; a list whose scores are all equal maps to 1), then
  ``score(d) = sum_i w_i * norm_i(d)``, missing documents contributing 0.

Each sub-retriever is asked for ``depth`` results (default ``max(k, 100)``) before fusing, so a passage ranked
low by one retriever but high by another still surfaces. Passages are matched by ``Candidate.id``. Ties are
broken by the best rank any retriever gave, then by id, so output is deterministic.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

from crossrank.errors import InputError, check_query
from crossrank.retrieve._common import check_k
from crossrank.retrieve.base import Retriever
from crossrank.types import Candidate

FUSIONS = ("rrf", "weighted")


def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise InputError(f"got {len(weights)} weights for {n} retrievers")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise InputError(f"weights must be >= 0 and not all zero, got {weights}")
    return weights


def reciprocal_rank_fusion(
    ranked_lists: Sequence[Sequence[str]], rrf_k: float = 60, weights: Sequence[float] | None = None
) -> dict[str, float]:
    """RRF scores ``{id: sum_i w_i / (rrf_k + rank)}`` for lists of ids, best first (rank = position + 1)."""
    if rrf_k < 0:
        raise InputError(f"rrf_k must be >= 0, got {rrf_k}")
    ws = _weights(len(ranked_lists), weights)
    fused: dict[str, float] = {}
    for w, ids in zip(ws, ranked_lists, strict=True):
        for pos, doc in enumerate(ids):
            fused[doc] = fused.get(doc, 0.0) + w / (rrf_k + pos + 1)
    return fused


def min_max(scores: Mapping[str, float]) -> dict[str, float]:
    """Min-max normalise to [0, 1]; all-equal scores map to 1."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    if hi == lo:
        return {d: 1.0 for d in scores}
    return {d: (s - lo) / (hi - lo) for d, s in scores.items()}


def weighted_fusion(
    scored_lists: Sequence[Mapping[str, float]], weights: Sequence[float] | None = None
) -> dict[str, float]:
    """``{id: sum_i w_i * minmax_i(score)}`` over per-retriever ``{id: score}`` maps."""
    ws = _weights(len(scored_lists), weights)
    fused: dict[str, float] = {}
    for w, scores in zip(ws, scored_lists, strict=True):
        for doc, s in min_max(scores).items():
            fused[doc] = fused.get(doc, 0.0) + w * s
    return fused


_POOL: ThreadPoolExecutor | None = None
_POOL_PREFIX = "crossrank-hybrid"
_POOL_LOCK = threading.Lock()


def _sub_search_pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix=_POOL_PREFIX)
        return _POOL


class HybridRetriever:
    """Fuses the results of several ``Retriever``s (typically BM25 + dense) into one ranking."""

    def __init__(
        self,
        retrievers: Sequence[Retriever],
        fusion: str = "rrf",
        rrf_k: float = 60,
        weights: Sequence[float] | None = None,
        depth: int | None = None,
        name: str | None = None,
    ):
        if not retrievers:
            raise InputError("HybridRetriever needs at least one retriever")
        if fusion not in FUSIONS:
            raise InputError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if depth is not None:
            check_k(depth)
        self.retrievers = list(retrievers)
        self.fusion = fusion
        self.rrf_k = rrf_k
        self.weights = _weights(len(self.retrievers), weights)
        self.depth = depth
        self.name = name or f"hybrid-{fusion}({'+'.join(r.name for r in self.retrievers)})"

    def _depth(self, k: int) -> int:
        return max(k, self.depth if self.depth is not None else 100)

    def fuse(self, per_retriever: Sequence[Sequence[Candidate]], k: int) -> list[Candidate]:
        """Fuse one query's lists (one per sub-retriever, in order) and keep the top ``k``."""
        if self.fusion == "rrf":
            fused = reciprocal_rank_fusion([[c.id for c in lst] for lst in per_retriever], self.rrf_k, self.weights)
        else:
            fused = weighted_fusion([{c.id: c.score for c in lst} for lst in per_retriever], self.weights)
        first: dict[str, Candidate] = {}
        best_rank: dict[str, int] = {}
        for lst in per_retriever:
            for c in lst:
                first.setdefault(c.id, c)
                best_rank[c.id] = min(best_rank.get(c.id, c.rank), c.rank)
        order = sorted(fused, key=lambda d: (-fused[d], best_rank[d], d))[:k]
        out = []
        for rank, d in enumerate(order, start=1):
            c = first[d]
            out.append(Candidate(id=c.id, doc_id=c.doc_id, text=c.text, score=fused[d], rank=rank, title=c.title))
        return out

    def search(self, query: str, k: int = 100) -> list[Candidate]:
        check_query(query)
        k = check_k(k)
        depth = self._depth(k)
        if len(self.retrievers) == 1 or threading.current_thread().name.startswith(_POOL_PREFIX):
            # one retriever, or a hybrid inside a hybrid's sub-search: sequential (waiting on the pool from one
            # of its own threads could deadlock it)
            return self.fuse([r.search(query, depth) for r in self.retrievers], k)
        # the sub-searches overlap (BM25's numpy and the query encoder's ONNX Runtime both release the GIL): the
        # first runs here, the others in a shared pool
        pool = _sub_search_pool()
        others = [pool.submit(r.search, query, depth) for r in self.retrievers[1:]]
        first = self.retrievers[0].search(query, depth)
        return self.fuse([first, *(f.result() for f in others)], k)

    def search_batch(self, queries: Sequence[str], k: int = 100) -> list[list[Candidate]]:
        k = check_k(k)
        queries = list(queries)
        depth = self._depth(k)
        per = [r.search_batch(queries, depth) for r in self.retrievers]
        return [self.fuse([lists[i] for lists in per], k) for i in range(len(queries))]
