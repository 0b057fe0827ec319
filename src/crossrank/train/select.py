"""After training: pick the final-ranking setting on held-out TRAIN queries (never on a test split).

Candidates are the first stage's top-K for each held-out query. Compared: the first-stage order, CE order alone,
RRF(CE, first stage) and ``w * z(CE) + (1 - w) * z(first-stage score)`` for w in 0, 0.1, ..., 1."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np

from crossrank.pipeline import Fusion, fuse
from crossrank.rerank import CrossEncoderReranker
from crossrank.rerank.calibration import sigmoid
from crossrank.train.config import TrainConfig
from crossrank.train.data import DevQuery
from crossrank.train.metrics import ndcg_at_k, order_by
from crossrank.train.scoring import score_texts

log = logging.getLogger("crossrank.train")

WEIGHTS = [round(w, 1) for w in np.arange(0.0, 1.01, 0.1)]


def _sigmoid(x: Sequence[float]) -> np.ndarray:
    """The engine's ``activation="sigmoid"`` of an uncalibrated model, applied to raw logits."""
    return np.asarray([sigmoid(float(v)) for v in x], dtype=float)


def compare_settings(dev: Sequence[DevQuery], ce_scores: Sequence[Sequence[float]], activation: str = "raw") -> dict[str, Any]:
    """nDCG@10 per setting, averaged over ``dev`` (candidates in first-stage order, CE scores aligned).

    ``activation``: what the engine returns as the CE score ("raw" logits or "sigmoid"); it changes z-scores, so
    the interpolation weights differ between the two (orders of CE alone and RRF do not)."""
    rows: dict[str, list[float]] = {"first_stage": [], "ce": [], "rrf": []}
    interp: dict[float, list[float]] = {w: [] for w in WEIGHTS}
    for q, ce in zip(dev, ce_scores, strict=True):
        ce = _sigmoid(ce) if activation == "sigmoid" else np.asarray(ce, dtype=float)
        ids = q.doc_ids
        rows["first_stage"].append(ndcg_at_k(ids, q.qrels))
        rows["ce"].append(ndcg_at_k(order_by(ids, ce), q.qrels))
        rows["rrf"].append(ndcg_at_k(order_by(ids, fuse(q.first_stage_scores, [float(x) for x in ce], "rrf")), q.qrels))
        for w in WEIGHTS:
            fused = fuse(q.first_stage_scores, [float(x) for x in ce], Fusion("interpolate", w))
            interp[w].append(ndcg_at_k(order_by(ids, fused), q.qrels))
    table = {k: round(float(np.mean(v)), 4) for k, v in rows.items()}
    table["interpolate"] = {str(w): round(float(np.mean(v)), 4) for w, v in interp.items()}
    return table


def choose(table: dict[str, Any]) -> dict[str, Any]:
    """The best setting; on a tie the simpler one (CE alone, then RRF, then the interpolation nearest 0.5)."""
    best_w = max(WEIGHTS, key=lambda w: (table["interpolate"][str(w)], -abs(w - 0.5)))
    options = [
        ("ce", table["ce"], {"fusion": "none"}),
        ("rrf", table["rrf"], {"fusion": "rrf", "rrf_k": 60}),
        ("interpolate", table["interpolate"][str(best_w)],
         {"fusion": "interpolate", "weight": best_w, "normalize": "zscore"}),
    ]
    name, score, settings = max(options, key=lambda o: o[1])  # max keeps the first on ties
    return {"name": name, "ndcg@10": score, "settings": settings}


def select_setting(engine: CrossEncoderReranker, dev: Sequence[DevQuery], k: int,
                   config: TrainConfig) -> dict[str, Any]:
    """The final-ranking setting (fusion and activation) that ``engine`` (raw logits, see
    :func:`crossrank.train.scoring.training_engine`) ranks best with on ``dev``'s top-``k`` candidates."""
    t0 = time.time()
    max_length = engine.max_length
    dev = [DevQuery(q.qid, q.query, q.doc_ids[:k], q.texts[:k], q.first_stage_scores[:k], q.qrels) for q in dev]
    ce = [score_texts(engine, q.query, q.texts) for q in dev]
    tables = {act: compare_settings(dev, ce, activation=act) for act in ("sigmoid", "raw")}
    # the engine's default activation is sigmoid; use raw logits only when that is clearly better for fusion
    picks = {act: choose(t) for act, t in tables.items()}
    activation = "raw" if picks["raw"]["ndcg@10"] > picks["sigmoid"]["ndcg@10"] + 0.002 else "sigmoid"
    table, best = tables[activation], picks[activation]
    settings = dict(best["settings"])
    settings.update({"activation": activation, "first_stage": (config.select_retriever or config.mine_retriever), "candidates": k,
                     "max_length": max_length})
    result = {"queries": len(dev), "k": k, "first_stage": (config.select_retriever or config.mine_retriever), "table": table,
              "activation": activation, "table_other_activation": tables["raw" if activation == "sigmoid" else "sigmoid"],
              "chosen": best["name"], "chosen_ndcg@10": best["ndcg@10"], "settings": settings,
              "seconds": round(time.time() - t0, 1)}
    log.info("selection on %d held-out train queries x %s top-%d: first stage %.4f, CE %.4f, RRF %.4f, "
             "interpolate (%s scores) %s -> %s (%.4f) [%.0fs]", len(dev), (config.select_retriever or config.mine_retriever), k, table["first_stage"],
             table["ce"], table["rrf"], activation, table["interpolate"], best["name"], best["ndcg@10"],
             result["seconds"])
    return result
