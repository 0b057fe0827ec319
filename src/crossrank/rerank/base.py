"""The reranking contract: score (query, text) pairs jointly; rerank candidates by those scores."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

from crossrank.errors import InputError


@dataclass(slots=True)
class RerankScores:
    """Scores for a list of texts, in input order, plus what happened on the way.

    Behaves like a sequence of floats (``len``, indexing, iteration), so ``list(scores)`` just works.
    ``truncated[i]`` is True when pair ``i`` was cut to fit the model's maximum length (the query is never cut
    away). ``cache_hits`` counts pairs answered from a score cache. ``tokens`` is the number of tokens run.
    """

    scores: list[float]
    truncated: list[bool] = field(default_factory=list)
    cache_hits: int = 0
    tokens: int = 0

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, i: int) -> float:
        return self.scores[i]

    def __iter__(self) -> Iterator[float]:
        return iter(self.scores)

    @property
    def n_truncated(self) -> int:
        return sum(self.truncated)


@dataclass(slots=True)
class RankedText:
    """One reranked item: its position in the input, its score, and the text."""

    index: int
    score: float
    text: str


@runtime_checkable
class Reranker(Protocol):
    """Anything that scores (query, text) pairs: the local cross-encoder, a remote service, a cache around either."""

    name: str

    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        """Scores in input order; higher is more relevant.

        Implementations may also take a keyword ``timeout_s`` (a time budget after which they stop working and
        raise ``RerankTimeout``); the pipeline passes its remaining deadline to those that do
        (:func:`accepts_timeout`). Those whose model reads a task instruction (LLM rerankers) have a true
        ``takes_instruction`` attribute and take a keyword ``instruction`` (:func:`takes_instruction`).
        Callers pass both through :func:`score_with`."""
        ...

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[RankedText]:
        """Texts sorted by score, best first, cut to ``top_n``."""
        ...


def rank_by_scores(texts: Sequence[str], scores: Sequence[float], top_n: int | None = None) -> list[RankedText]:
    """Sort ``texts`` by ``scores`` (stable on ties: earlier input wins)."""
    order = sorted(range(len(texts)), key=lambda i: -scores[i])
    if top_n is not None:
        order = order[: max(0, top_n)]
    return [RankedText(index=i, score=float(scores[i]), text=texts[i]) for i in order]


def check_texts(texts: Iterable[Any]) -> list[str]:
    """``texts`` as a list of strings; a lone string or a non-string item is an InputError."""
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not one string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InputError(f"text {i} must be a string, not {type(t).__name__}")
    return out


def takes_instruction(reranker: Any) -> bool:
    """Whether ``reranker.score`` takes an ``instruction`` (its model's prompt has room for a task description)."""
    return getattr(reranker, "takes_instruction", False) is True


def score_with(reranker: Any, query: str, texts: Sequence[str], *, timeout_s: float | None = None,
               instruction: str | None = None) -> "RerankScores":
    """``reranker.score(query, texts)`` with the optional keywords it takes: the time budget where it accepts one
    (elsewhere the caller bounds the call itself), the instruction (an ``InputError`` for a reranker that takes
    none: an instruction silently ignored would be a wrong answer, not a degraded one)."""
    extra: dict[str, Any] = {}
    if timeout_s is not None and accepts_timeout(reranker):
        extra["timeout_s"] = timeout_s
    if instruction is not None:
        if not takes_instruction(reranker):
            raise InputError(f"reranker {getattr(reranker, 'name', reranker)!r} takes no instruction "
                             "(only LLM rerankers whose prompt has one do)")
        extra["instruction"] = instruction
    return reranker.score(query, texts, **extra)


def accepts_timeout(reranker: Any) -> bool:
    """Whether ``reranker.score`` takes the optional ``timeout_s`` keyword (see :class:`Reranker`)."""
    fn = getattr(reranker, "score", None)
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "timeout_s" in params and params["timeout_s"].kind is inspect.Parameter.KEYWORD_ONLY
