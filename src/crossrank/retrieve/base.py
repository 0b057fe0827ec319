"""The first-stage contract. Any backend (in-process BM25/dense/hybrid, or a distributed engine such as Milvus)
implements ``Retriever``; the pipeline depends on nothing else."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from crossrank.types import Candidate


@runtime_checkable
class Retriever(Protocol):
    """Returns the top-``k`` passages for a query, best first, ranks 1-based.

    Backends own their storage and scoring; they return ``Candidate`` objects carrying text, so the
    reranker needs no second look-up. ``search_batch`` exists so backends can vectorise many queries.
    """

    name: str

    def search(self, query: str, k: int = 100) -> list[Candidate]: ...

    def search_batch(self, queries: Sequence[str], k: int = 100) -> list[list[Candidate]]: ...
