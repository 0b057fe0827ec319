"""Small, dependency-free per-query ranking metrics for dev evaluation and setting selection (fusions are the
pipeline's own :func:`crossrank.pipeline.fuse`)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence


def ndcg_at_k(ranked_doc_ids: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k with exponential gain (2^rel - 1), ideal from all judged documents (not only retrieved ones)."""
    dcg = sum((2 ** qrels.get(d, 0) - 1) / math.log2(i + 2) for i, d in enumerate(ranked_doc_ids[:k]))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def order_by(doc_ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Doc ids sorted by score, best first; ties keep the input (first-stage) order."""
    idx = sorted(range(len(doc_ids)), key=lambda i: (-float(scores[i]), i))
    return [doc_ids[i] for i in idx]
