"""Scores of a model being trained, computed by the inference engine itself.

Dev nDCG during training and the fusion / activation selection after it score (query, text) pairs through
:class:`crossrank.rerank.engine.CrossEncoderReranker` built over the in-memory model: the same pair template,
the same truncation rule (document first, the query capped at half of ``max_length``) and the same logits as
``load_reranker`` on the exported checkpoint, so what selection measures is what ships. The pass runs in fp32 on
the model's weights as they are (the torch backend follows in-place updates, so one engine serves a whole run).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from crossrank.rerank import CrossEncoderReranker
from crossrank.train.data import DevQuery
from crossrank.train.metrics import ndcg_at_k, order_by


def training_engine(model: Any, tokenizer: Any, max_length: int, batch_size: int,
                    device: torch.device) -> CrossEncoderReranker:
    """The engine over ``model`` as it trains: raw logits, fp32, the torch backend (which reads the live weights).

    Building it puts the model in eval mode; :func:`score_texts` restores the mode it found on every call."""
    was_training = model.training
    engine = CrossEncoderReranker.from_model(
        model, tokenizer, name="model in training", max_length=max_length, max_batch_size=batch_size,
        dtype="fp32", device=str(device), backend="torch", activation="raw")
    model.train(was_training)
    return engine


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while scoring, and the model handed back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def score_texts(engine: CrossEncoderReranker, query: str, texts: Sequence[str]) -> list[float]:
    """Raw relevance logits for (query, text) pairs, in input order."""
    if not texts:
        return []
    with _eval_mode(engine.model):
        return [float(s) for s in engine.score(query, list(texts)).scores]


def dev_ndcg(engine: CrossEncoderReranker, dev: Sequence[DevQuery], k: int) -> float:
    """Mean nDCG@10 of the engine's order of each dev query's top-``k`` candidates (NaN without queries)."""
    vals = []
    for q in dev:
        scores = score_texts(engine, q.query, q.texts[:k])
        vals.append(ndcg_at_k(order_by(q.doc_ids[:k], scores), q.qrels, 10))
    return float(np.mean(vals)) if vals else float("nan")
