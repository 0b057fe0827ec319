"""What every adapter shares: turn a spec into a reranker (once), score texts, keep the best ``top_n``."""

from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType
from typing import Any, Sequence

from crossrank.errors import InputError
from crossrank.rerank.base import Reranker, as_reranker


def require(module: str, package: str, adapter: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that names the pip package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{adapter} needs {package}: pip install {package} (or pip install \"crossrank[integrations]\")"
        ) from e


def check_top_n(top_n: int | None, name: str = "top_n") -> int | None:
    """``top_n`` if it is None (keep all) or a positive int, else an InputError."""
    if top_n is None:
        return None
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise InputError(f"{name} must be a positive integer or None, not {top_n!r}")
    return top_n


class LazyReranker:
    """A reranker given as a spec (loaded with :func:`crossrank.load_reranker` on first use) or as an object."""

    def __init__(self, reranker: Any) -> None:
        if isinstance(reranker, os.PathLike):
            reranker = os.fspath(reranker)
        if isinstance(reranker, str):
            if not reranker.strip():
                raise InputError("reranker is empty: pass 'default', a model folder or an http(s) URL")
        self.spec = reranker
        self._loaded: Reranker | None = None
        if not isinstance(reranker, str):
            try:
                self._loaded = as_reranker(reranker)  # the full protocol, whatever the caller passed
            except InputError:
                raise InputError(
                    f"reranker must be a spec string or an object with .score(), not {type(reranker).__name__}"
                ) from None
        self._lock = threading.Lock()

    def get(self) -> Reranker:
        """The reranker, loading it on the first call."""
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    from crossrank.rerank import load_reranker

                    self._loaded = load_reranker(self.spec)
        return self._loaded

    @property
    def name(self) -> str:
        return self.spec if isinstance(self.spec, str) else self.get().name


def top_n_scores(
    reranker: LazyReranker, query: str, texts: Sequence[str], top_n: int | None
) -> list[tuple[int, float]]:
    """``(input index, score)`` of the best ``top_n`` texts (all when None), best first, ties in input order.

    Scores are ``reranker.score(query, texts).scores``: calibrated relevance in [0, 1] for the bundled models.
    No texts: ``[]`` without loading the model."""
    texts = list(texts)
    if not texts:
        return []
    scores = [float(s) for s in reranker.get().score(query, texts).scores]
    if len(scores) != len(texts):
        raise RuntimeError(f"reranker {reranker.name!r} returned {len(scores)} scores for {len(texts)} texts")
    order = sorted(range(len(texts)), key=lambda i: -scores[i])  # stable: ties keep input order
    return [(i, scores[i]) for i in order[:top_n]]
