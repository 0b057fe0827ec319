"""The reranking contract: score (query, text) pairs jointly; rerank candidates by those scores."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Protocol, Sequence, runtime_checkable

from crossrank.errors import InputError

# How a local engine scores a document longer than its pair: cut it, score every window and keep the best, or one
# window of its query-focused sentences (crossrank.rerank.focus). The server and its dialects offer the same.
LONG_DOCUMENT_MODES = ("truncate", "chunk", "focus")


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


class InputCount(NamedTuple):
    """What scoring some pairs runs: tokens (special tokens included) and windows (sequences)."""

    tokens: int
    windows: int


@runtime_checkable
class Reranker(Protocol):
    """Anything that scores (query, text) pairs: the local cross-encoder, a remote service, a cache or a cascade
    around them, the server's batched reranker. Every implementation has every member; an object that only has
    ``score(query, texts)`` becomes one through :func:`as_reranker`.

    ``takes_instruction``: whether the model's prompt has room for a task instruction (LLM rerankers); the others
    raise ``InputError`` for one (:func:`check_instruction`)."""

    name: str
    takes_instruction: bool

    def score(self, query: str, texts: Sequence[str], *, timeout_s: float | None = None,
              instruction: str | None = None) -> RerankScores:
        """Scores in input order; higher is more relevant. ``timeout_s``: a time budget, after which the reranker
        stops working and raises ``RerankTimeout``. ``instruction``: the task description (None: the model's
        default)."""
        ...

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, timeout_s: float | None = None,
                    instruction: str | None = None) -> RerankScores:
        """Scores for (query, text) pairs of any number of queries, in input order, as :meth:`score`'s would be
        (:func:`score_by_query` where the implementation has nothing better)."""
        ...

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[RankedText]:
        """Texts sorted by score, best first, cut to ``top_n``."""
        ...

    def info(self) -> dict[str, Any]:
        """What scores: at least ``model``; ``activation``, ``max_length``, ``recommended`` where known; a local
        model also names ``special_tokens`` (how many its pair template adds to a query and a text) and
        ``id2label`` (its output labels, ``{"0": "LABEL_0"}``)."""
        ...

    def with_options(self, **options: Any) -> "Reranker":
        """The same model under other options (``long_documents="chunk"``, ...): a new reranker, this one unchanged;
        no options: this one. An option the reranker cannot take is an ``InputError``."""
        ...

    def count_inputs(self, query: str, texts: Sequence[str], instruction: str | None = None) -> InputCount | None:
        """What :meth:`score` would run for these pairs, without running it; None where the reranker cannot know
        (a remote service, a cascade whose second pass depends on the first)."""
        ...

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]] | None:
        """How the model's tokenizer splits each text: one ``(start, end)`` character span per token, no special
        tokens added (what cutting a text to a token budget needs, e.g. the server's ``max_tokens_per_doc``);
        None where the reranker has no tokenizer of its own to offer (a remote service, a cascade of two
        models)."""
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


def takes_instruction(reranker: Reranker | None) -> bool:
    """Whether ``reranker`` (None: no reranker) takes a task instruction."""
    return reranker is not None and reranker.takes_instruction is True


def check_instruction(reranker: Reranker | None, instruction: str | None) -> str | None:
    """``instruction`` checked for ``reranker``: None, or a non-empty string for a reranker that takes one (an
    instruction silently ignored would be a wrong answer, not a degraded one, so any other is an ``InputError``)."""
    if instruction is None:
        return None
    if not isinstance(instruction, str) or not instruction.strip():
        raise InputError("instruction must be a non-empty string")
    if not takes_instruction(reranker):
        if reranker is None:
            raise InputError("an instruction needs a reranker that takes one; there is no reranker, so the search "
                             "takes none")
        raise InputError(f"{reranker.name} takes no instruction (only LLM rerankers whose prompt has room for one "
                         "do; this one takes none)")
    return instruction


def score_by_query(score: Callable[[str, list[str]], RerankScores],
                   pairs: Sequence[tuple[str, str]]) -> RerankScores:
    """``score_pairs`` from ``score(query, texts)``: the pairs grouped by query, each group scored in one call, the
    results scattered back in input order (``truncated`` per pair, ``cache_hits`` and ``tokens`` summed)."""
    groups: dict[str, list[int]] = {}
    pairs = list(pairs)
    for i, p in enumerate(pairs):
        if not isinstance(p, (tuple, list)) or len(p) != 2:
            raise InputError("score_pairs takes (query, text) pairs")
        groups.setdefault(p[0], []).append(i)
    scores = [0.0] * len(pairs)
    truncated = [False] * len(pairs)
    hits = tokens = 0
    for query, idx in groups.items():
        res = score(query, [pairs[i][1] for i in idx])
        flags = res.truncated or [False] * len(idx)
        for j, i in enumerate(idx):
            scores[i], truncated[i] = float(res.scores[j]), bool(flags[j])
        hits += res.cache_hits
        tokens += res.tokens
    return RerankScores(scores=scores, truncated=truncated, cache_hits=hits, tokens=tokens)


def score_by_query_within(reranker: Any, pairs: Sequence[tuple[str, str]], *, timeout_s: float | None,
                          instruction: str | None = None) -> RerankScores:
    """:func:`score_by_query` over ``reranker.score`` with one time budget for all the queries: each query's call
    gets what is left of ``timeout_s``."""
    end = None if timeout_s is None else time.monotonic() + timeout_s
    return score_by_query(lambda query, texts: reranker.score(
        query, texts, timeout_s=None if end is None else max(1e-3, end - time.monotonic()),
        instruction=instruction), pairs)


def as_reranker(reranker: Any) -> Reranker:
    """``reranker`` itself when it is a :class:`Reranker`, else a :class:`ScoreOnlyReranker` around it (an object
    with just ``score(query, texts)``, such as a caller's own scorer); None stays None."""
    if reranker is None or isinstance(reranker, Reranker):
        return reranker
    return ScoreOnlyReranker(reranker)


class ScoreOnlyReranker:
    """The full :class:`Reranker` around an object that has ``score(query, texts)`` and maybe some of the rest
    (``score_pairs``, ``info``, ``with_options``, ``count_inputs``, ``token_spans``, a ``timeout_s`` keyword,
    ``takes_instruction``): what it has is found out once, here, so no caller probes (an object written to an
    earlier version of the protocol keeps all it had). Results that are plain lists of scores become
    :class:`RerankScores`."""

    def __init__(self, scorer: Any) -> None:
        if not callable(getattr(scorer, "score", None)):
            raise InputError(f"a reranker needs a score(query, texts) method; {type(scorer).__name__} has none")
        self.scorer = scorer
        self.name = str(getattr(scorer, "name", type(scorer).__name__))
        self.takes_instruction = getattr(scorer, "takes_instruction", False) is True
        self._timeout = _takes_keyword(scorer.score, "timeout_s")
        self._pairs = _method(scorer, "score_pairs")
        self._pairs_timeout = self._pairs is not None and _takes_keyword(self._pairs, "timeout_s")
        self._info = _method(scorer, "info")
        self._count = _method(scorer, "count_inputs")
        self._options = _method(scorer, "with_options")
        self._spans = _method(scorer, "token_spans")

    def score(self, query: str, texts: Sequence[str], *, timeout_s: float | None = None,
              instruction: str | None = None) -> RerankScores:
        """The scorer's scores; ``timeout_s`` reaches it where it takes one (elsewhere the caller bounds the
        call itself)."""
        extra: dict[str, Any] = {}
        if timeout_s is not None and self._timeout:
            extra["timeout_s"] = timeout_s
        if check_instruction(self, instruction) is not None:
            extra["instruction"] = instruction
        return _scores(self.scorer.score(query, texts, **extra))

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, timeout_s: float | None = None,
                    instruction: str | None = None) -> RerankScores:
        if self._pairs is None:
            return score_by_query(lambda q, t: self.score(q, t, timeout_s=timeout_s, instruction=instruction), pairs)
        extra: dict[str, Any] = {}
        if timeout_s is not None and self._pairs_timeout:
            extra["timeout_s"] = timeout_s
        if check_instruction(self, instruction) is not None:
            extra["instruction"] = instruction
        return _scores(self._pairs(list(pairs), **extra))

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[RankedText]:
        texts = list(texts)
        return rank_by_scores(texts, self.score(query, texts).scores, top_n)

    def info(self) -> dict[str, Any]:
        return dict(self._info()) if self._info is not None else {"model": self.name}

    def with_options(self, **options: Any) -> Reranker:
        if not options:
            return self
        if self._options is None:
            raise InputError(f"{self.name!r} takes no options ({', '.join(sorted(options))})")
        return as_reranker(self._options(**options))

    def count_inputs(self, query: str, texts: Sequence[str], instruction: str | None = None) -> InputCount | None:
        got = None if self._count is None else self._count(query, texts, instruction)
        return None if got is None else InputCount(*got)

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]] | None:
        return None if self._spans is None else self._spans(texts)

    def __repr__(self) -> str:
        return f"ScoreOnlyReranker({self.scorer!r})"


def _scores(result: Any) -> RerankScores:
    """A scorer's answer as :class:`RerankScores` (a plain sequence of scores: no flags, no counts)."""
    return result if isinstance(result, RerankScores) else RerankScores(scores=list(result))


def _method(obj: Any, name: str) -> Callable[..., Any] | None:
    """``obj``'s method ``name``, or None where it has none."""
    fn = getattr(obj, name, None)
    return fn if callable(fn) else None


def _takes_keyword(fn: Any, name: str) -> bool:
    """Whether ``fn`` takes the keyword-only parameter ``name``."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params and params[name].kind is inspect.Parameter.KEYWORD_ONLY
