"""Plain data shared by every stage. Knows nothing about retrieval, models or HTTP.

Data flows one way: ``Document`` -> ``Passage`` (chunked, remembers its parent) -> ``Candidate``
(first-stage hit) -> ``Hit`` (final, possibly reranked) inside a ``SearchResult`` with ``Timings``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Protocol, TypeVar

DEFAULT_N = 10  # results a search returns when none are asked for (at most k)


@dataclass(frozen=True, slots=True)
class Document:
    """A document as read from a corpus."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Passage:
    """A window of a document. ``id`` is ``doc_id`` when the document is one passage, else ``f"{doc_id}#{index}"``."""

    id: str
    doc_id: str
    text: str
    title: str = ""
    index: int = 0

    @property
    def full_text(self) -> str:
        """Title and text as the models see them."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(slots=True)
class Candidate:
    """A first-stage hit: a passage with the first-stage score and rank (1-based)."""

    id: str
    doc_id: str
    text: str
    score: float
    rank: int
    title: str = ""

    @property
    def full_text(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(slots=True)
class Hit:
    """A final result. ``rerank_score`` is None when the hit was not reranked (fallback or tail)."""

    id: str
    doc_id: str
    text: str
    title: str
    rank: int
    first_stage_rank: int
    first_stage_score: float
    rerank_score: float | None = None
    score: float | None = None  # the score the final order is sorted by (rerank, fused or first-stage)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Timings:
    """Milliseconds per stage."""

    retrieve_ms: float = 0.0
    rerank_ms: float = 0.0
    total_ms: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


@dataclass(slots=True)
class SearchResult:
    """What the pipeline returns for one query.

    ``reranked`` is False when the reranker was skipped, failed or ran out of time; ``reason`` says why.
    ``n_reranked`` counts candidates that got a rerank score (a tight deadline reranks only the head).
    """

    query: str
    hits: list[Hit]
    timings: Timings
    reranked: bool
    reason: str | None = None
    n_candidates: int = 0
    n_reranked: int = 0
    retriever: str = ""
    reranker: str | None = None
    truncated: int = 0
    cache_hits: int = 0
    below_min_score: int = 0  # reranked hits dropped for a relevance under the min_score threshold

    def to_dict(self) -> dict[str, Any]:
        """The documented ``--json`` / HTTP schema (see README, "JSON output")."""
        return {
            "query": self.query,
            "retriever": self.retriever,
            "reranker": self.reranker,
            "reranked": self.reranked,
            "reason": self.reason,
            "n_candidates": self.n_candidates,
            "n_reranked": self.n_reranked,
            "truncated": self.truncated,
            "cache_hits": self.cache_hits,
            "below_min_score": self.below_min_score,
            "timings": self.timings.to_dict(),
            "hits": [h.to_dict() for h in self.hits],
        }


class _HasDocId(Protocol):
    @property
    def doc_id(self) -> str: ...


_D = TypeVar("_D", bound=_HasDocId)


def first_per_document(items: Iterable[_D]) -> list[_D]:
    """The first item of each document, in order. Over a ranking of passages that is each document's best
    passage, so a chunked index yields one entry per document."""
    seen: set[str] = set()
    out = []
    for it in items:
        if it.doc_id not in seen:
            seen.add(it.doc_id)
            out.append(it)
    return out
