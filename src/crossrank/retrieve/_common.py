"""Helpers shared by the in-process retrievers."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from crossrank.errors import InputError
from crossrank.types import Candidate, Passage

# the fix for a bad index, for CLI and Python users alike
REBUILD = "rebuild it with 'crossrank index CORPUS --out DIR' (Python: build_index())"


def passage_text(p: Passage) -> str:
    """What BM25 and the bi-encoder index: ``title + " " + text`` (as BEIR does)."""
    return f"{p.title} {p.text}" if p.title else p.text


def check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (argpartition, then sort only the head).
    Ties are broken by index so results are deterministic."""
    n = scores.shape[0]
    if k >= n:
        return np.lexsort((np.arange(n), -scores))
    head = np.argpartition(-scores, k - 1)[:k]
    order = np.lexsort((head, -scores[head]))
    return head[order]


def make_candidates(passages: Sequence[Passage], idx: np.ndarray, scores: np.ndarray) -> list[Candidate]:
    out = []
    for rank, (i, s) in enumerate(zip(idx.tolist(), scores.tolist(), strict=True), start=1):
        p = passages[i]
        out.append(Candidate(id=p.id, doc_id=p.doc_id, text=p.text, score=float(s), rank=rank, title=p.title))
    return out
