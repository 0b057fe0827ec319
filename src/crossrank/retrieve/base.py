"""The first-stage contract. Any backend (in-process BM25/dense/hybrid, or a distributed engine such as Milvus)
implements ``Retriever``; the pipeline depends on nothing else."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from crossrank.types import Candidate

# The first-stage methods an index can hold, and the retriever kinds it serves from them (hybrid first: the
# default), for the built-in index and Milvus alike; the CLI, /search and the evaluator take these names.
METHODS = ("bm25", "dense")
KIND_METHODS = {"hybrid": ("bm25", "dense"), "bm25": ("bm25",), "dense": ("dense",)}
KINDS = tuple(KIND_METHODS)


def kinds_served(methods: Sequence[str]) -> list[str]:
    """The retriever kinds an index holding ``methods`` serves, single methods first, then hybrid."""
    have = set(methods)
    return sorted((k for k, needs in KIND_METHODS.items() if have.issuperset(needs)), key=lambda k: (k == "hybrid", k))


@runtime_checkable
class Retriever(Protocol):
    """Returns the top-``k`` passages for a query, best first, ranks 1-based.

    Backends own their storage and scoring; they return ``Candidate`` objects carrying text, so the
    reranker needs no second look-up. ``search_batch`` exists so backends can vectorise many queries.
    """

    name: str

    def search(self, query: str, k: int = 100) -> list[Candidate]: ...

    def search_batch(self, queries: Sequence[str], k: int = 100) -> list[list[Candidate]]: ...
