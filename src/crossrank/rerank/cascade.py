"""A two-stage reranker: a cheap model scores every candidate, a better one rescores only the cheap model's top M.

Spec ``"A>B@M"`` in :func:`crossrank.load_reranker`, for example ``"fast-student>default@20"``. Which M texts
B rescores (:func:`cascade_head`): A's best M by default, or with ``"A>B@M:rrf"`` the best M by reciprocal-rank
fusion of A's order with the input order (the first stage's, when the pipeline calls it), which keeps
candidates both agree on when A alone is a weak judge. ``"A@S>B@M"`` gives A a depth: the cascade recommends
``rerank_depth`` S, so pipelines and evaluations hand it only the first stage's top S (the rest follow in
first-stage order); called directly, it scores every text it is sent.

The result's scores are the second model's for the top M and the first model's for the rest, so both models
must score on the same scale: the bundled ``fast-student`` and ``default`` both return calibrated relevance
probabilities (``activation="sigmoid"`` with their own Platt calibrations), which is what makes the mixed list
comparable. The top M, among themselves, are in exactly the second model's order. Recommendations (fusion,
``min_score``) are the second model's: its scores decide the head of the ranking. The spec ``fast`` is a cascade
(``fast-student>default@M:rrf``, M chosen on held-out queries).

The degenerate cascade whose first model is the first stage itself is a depth: ``"B@M"`` (:func:`parse_depth_spec`),
B on the first stage's top M.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, NamedTuple, Sequence

from crossrank.errors import InputError
from crossrank.rerank.base import (
    InputCount,
    RankedText,
    Reranker,
    RerankScores,
    as_reranker,
    check_instruction,
    check_texts,
    rank_by_scores,
    score_by_query_within,
)

SPEC = re.compile(r"^(?P<first>[^>]+)>(?P<second>[^>@]+)@(?P<m>\d+)(:(?P<head>[a-z]+))?$")
HEADS = ("score", "rrf")
RRF_K = 60  # the usual reciprocal-rank-fusion constant (as the pipeline's rrf fusion)


class CascadeSpec(NamedTuple):
    first: str
    second: str
    top_m: int
    head: str = "score"


def parse_cascade_spec(spec: str) -> CascadeSpec | None:
    """The parts of ``"A>B@M"`` or ``"A>B@M:HEAD"``; None when ``spec`` is not a cascade spec."""
    if ">" not in spec:
        return None
    m = SPEC.match(spec.strip())
    if not m:
        raise InputError(f"cascade spec {spec!r}: write FIRST>SECOND@M[:rrf], e.g. fast-student>default@20")
    top_m = int(m["m"])
    if top_m < 1:
        raise InputError(f"cascade spec {spec!r}: M must be >= 1")
    head = m["head"] or "score"
    if head not in HEADS:
        raise InputError(f"cascade spec {spec!r}: the head rule after ':' is one of {', '.join(HEADS)}")
    return CascadeSpec(m["first"].strip(), m["second"].strip(), top_m, head)


DEPTH_SPEC = re.compile(r"^(?P<name>[^>@]+)@(?P<m>\d+)$")


def parse_depth_spec(spec: str) -> tuple[str, int] | None:
    """``(name, M)`` for ``"B@M"``: B reranks only the first stage's top M (the cascade whose first model is
    the first stage; a recommendation, ``rerank_depth``, that the pipeline and the evaluator follow); None when
    ``spec`` is not one."""
    m = DEPTH_SPEC.match(spec.strip())
    if not m:
        return None
    if int(m["m"]) < 1:
        raise InputError(f"reranker spec {spec!r}: the depth after '@' must be >= 1")
    return m["name"].strip(), int(m["m"])


class SpecModels(NamedTuple):
    """The models a reranker spec names (one, or a cascade's first and second), its M (a cascade's head or a
    depth's; None for neither) and a cascade's head rule."""

    names: tuple[str, ...]
    top_m: int | None = None
    head: str = "score"

    @property
    def cascade(self) -> bool:
        return len(self.names) == 2


def spec_models(spec: str) -> SpecModels:
    """What a reranker spec (see :func:`crossrank.rerank.load_reranker`) is made of: ``"fast"`` is what its bundle
    recommends; ``"A>B@M[:rrf]"`` a cascade; ``"B@M"`` a depth (unless a path of that name exists); a URL, a path
    or any other name itself. The loader builds from it and the evaluator fingerprints the bundles it names."""
    spec = spec.strip()
    if spec == "fast":
        from crossrank.rerank.bundled import fast_spec

        spec = fast_spec()
    if spec.lower().startswith(("http://", "https://")):
        return SpecModels((spec,))
    cascade = parse_cascade_spec(spec)
    if cascade is not None:
        return SpecModels((cascade.first, cascade.second), cascade.top_m, cascade.head)
    depth = model_depth(spec)
    return SpecModels((spec,)) if depth is None else SpecModels((depth[0],), depth[1])


def model_depth(name: str) -> tuple[str, int] | None:
    """``(name, M)`` when one model name of a spec is a depth ``"B@M"``, unless a path of that name exists."""
    return None if os.path.exists(name) else parse_depth_spec(name)


def cascade_head(first_scores: Sequence[float], top_m: int, head: str = "score") -> list[int]:
    """Indices of the ``top_m`` texts the second model rescores: the best first-model scores (``head="score"``),
    or the best reciprocal-rank fusion of the first model's rank and the input position (``"rrf"``); ties: earlier
    input first. The cascade and the held-out evaluation of cascades both pick the head here."""
    by_score = sorted(range(len(first_scores)), key=lambda i: -first_scores[i])
    if head == "score":
        return by_score[:top_m]
    if head != "rrf":
        raise InputError(f"unknown cascade head rule {head!r}: use one of {', '.join(HEADS)}")
    rank = {i: r for r, i in enumerate(by_score)}
    fused = [1.0 / (RRF_K + 1 + rank[i]) + 1.0 / (RRF_K + 1 + i) for i in range(len(first_scores))]
    return sorted(range(len(first_scores)), key=lambda i: -fused[i])[:top_m]


class CascadeReranker:
    """``first`` scores all texts; ``second`` rescores the ``top_m`` best of them (see the module docstring)."""

    def __init__(self, first: Reranker, second: Reranker, top_m: int, head: str = "score") -> None:
        if int(top_m) < 1:
            raise InputError("top_m must be >= 1")
        if head not in HEADS:
            raise InputError(f"unknown cascade head rule {head!r}: use one of {', '.join(HEADS)}")
        self.first, self.second = as_reranker(first), as_reranker(second)
        self.top_m, self.head = int(top_m), head
        # "A@S>B@M": A's own depth S is the cascade's (a pipeline hands the cascade the first stage's top S)
        from crossrank.rerank import recommendation  # the package imports this module lazily

        self.depth = recommendation(self.first).get("rerank_depth")
        first_name = first.name if self.depth is None else f"{first.name}@{self.depth}"
        self.name = f"{first_name}>{second.name}@{self.top_m}" + ("" if head == "score" else f":{head}")

    @property
    def takes_instruction(self) -> bool:
        """An instruction reaches whichever of the two models takes one."""
        return self.first.takes_instruction or self.second.takes_instruction

    def score(self, query: str, texts: Sequence[str], *, timeout_s: float | None = None,
              instruction: str | None = None) -> RerankScores:
        texts = check_texts(texts)
        check_instruction(self, instruction)
        t0 = time.monotonic()
        a = _score(self.first, query, texts, timeout_s, instruction)
        head = cascade_head(a.scores, self.top_m, self.head)
        left = None if timeout_s is None else max(1e-3, timeout_s - (time.monotonic() - t0))
        b = _score(self.second, query, [texts[i] for i in head], left, instruction)
        scores, truncated = list(a.scores), list(a.truncated or [False] * len(texts))
        for i, s, cut in zip(head, b.scores, b.truncated or [False] * len(head), strict=True):
            scores[i], truncated[i] = float(s), bool(cut)
        return RerankScores(scores=scores, truncated=truncated, cache_hits=a.cache_hits + b.cache_hits,
                            tokens=a.tokens + b.tokens)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, timeout_s: float | None = None,
                    instruction: str | None = None) -> RerankScores:
        """One cascade per distinct query (each picks its own head), all within the one ``timeout_s``."""
        return score_by_query_within(self, pairs, timeout_s=timeout_s, instruction=instruction)

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[RankedText]:
        return rank_by_scores(list(texts), self.score(query, texts).scores, top_n)

    def with_options(self, **options: Any) -> "CascadeReranker":
        """Both models under ``options``; no options: this cascade."""
        if not options:
            return self
        return CascadeReranker(self.first.with_options(**options), self.second.with_options(**options), self.top_m,
                               self.head)

    def count_inputs(self, query: str, texts: Sequence[str], instruction: str | None = None) -> InputCount | None:
        """None: what the second model runs depends on the first model's scores."""
        return None

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]] | None:
        """None: two models, two tokenizers."""
        return None

    def info(self) -> dict[str, Any]:
        second = dict(self.second.info())
        return {
            "model": self.name,
            "cascade": {"first": dict(self.first.info()), "second": second, "top_m": self.top_m, "head": self.head},
            "activation": second.get("activation"),
            "max_length": second.get("max_length"),
            "recommended": {**(second.get("recommended") or {}),
                            **({} if self.depth is None else {"rerank_depth": self.depth})},
        }

    def __repr__(self) -> str:
        return f"CascadeReranker({self.name!r})"


def _score(reranker: Reranker, query: str, texts: list[str], timeout_s: float | None,
           instruction: str | None) -> RerankScores:
    """``reranker``'s scores, with the instruction where it takes one (the cascade takes it when either does)."""
    return reranker.score(query, texts, timeout_s=timeout_s,
                          instruction=instruction if reranker.takes_instruction else None)
