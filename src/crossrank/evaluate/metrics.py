"""Ranking metrics (through ranx) and answer-string matching (SQuAD-style normalisation).

Ranked lists are passed as ``{qid: [doc_id, ...]}`` best first. They are handed to ranx with strictly decreasing
rank-derived scores, so the order evaluated is exactly the list's order (no tie-breaking surprises) and every
query of the qrels counts (a query with no results scores 0). nDCG uses linear gains (trec_eval / BEIR
convention); graded judgments (Cranfield) count as relevant when > 0 for Recall/MRR/MAP.
"""

from __future__ import annotations

import re
import string
import unicodedata
import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "map@100")
_NO_RESULT = "\x00no-result"


def _to_run(ranked: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for qid, docs in ranked.items():
        seen: dict[str, float] = {}
        n = len(docs)
        for pos, d in enumerate(docs):
            d = str(d)
            if d not in seen:  # keep the best position of a repeated id
                seen[d] = float(n - pos)
        if seen:
            run[str(qid)] = seen
    return run


def ranking_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    ranked: Mapping[str, Sequence[str]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query values of ranx ``metrics`` (e.g. ``ndcg@10``, ``recall@100``, ``mrr@10``, ``map@100``,
    ``precision@1``, ``map``, ``mrr``) of ``ranked`` against ``qrels``.

    Only the queries in ``qrels`` are evaluated; returns ``(means, {metric: {qid: value}})``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba type-safety chatter
        from ranx import Qrels, Run, evaluate

        qrels_clean = {str(q): {str(d): int(s) for d, s in rels.items()} for q, rels in qrels.items() if rels}
        if not qrels_clean:
            return {m: 0.0 for m in metrics}, {m: {} for m in metrics}
        run_dict = {q: docs for q, docs in _to_run(ranked).items() if q in qrels_clean}
        if not run_dict:
            return {m: 0.0 for m in metrics}, {m: {q: 0.0 for q in qrels_clean} for m in metrics}
        for q in qrels_clean:  # a judged query without results scores 0 (cheaper than ranx's make_comparable)
            if q not in run_dict:
                run_dict[q] = {_NO_RESULT: 0.0}
        run = Run(run_dict)
        means = evaluate(Qrels(qrels_clean), run, list(metrics))
    if isinstance(means, float) or not isinstance(means, dict):
        means = {metrics[0]: means}
    per_query = {m: {q: float(v) for q, v in run.scores[m].items()} for m in metrics}
    return {m: float(v) for m, v in means.items()}, per_query


def wins_losses_ties(
    before: Mapping[str, float], after: Mapping[str, float], eps: float = 1e-9
) -> dict[str, int]:
    """Per-query comparison of ``after`` against ``before`` (e.g. reranked vs first-stage nDCG@10)."""
    wins = losses = ties = 0
    for q, b in before.items():
        a = after.get(q, 0.0)
        if a > b + eps:
            wins += 1
        elif a < b - eps:
            losses += 1
        else:
            ties += 1
    return {"wins": wins, "losses": losses, "ties": ties}


# ------------------------------------------------------------------------------------------------ answers
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_punct(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower-case, drop punctuation (ASCII and Unicode), drop articles (a/an/the),
    collapse whitespace."""
    text = str(text).lower()
    text = "".join(" " if _is_punct(ch) else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def contains_answer(text_normalized: str, answers_normalized: Iterable[str]) -> bool:
    """True when a (normalised) gold answer occurs in the (normalised) text as whole tokens
    ("308" is not found in "1308")."""
    hay = f" {text_normalized} "
    return any(a and f" {a} " in hay for a in answers_normalized)


def answer_match(prediction: str, answers: Iterable[str]) -> dict[str, bool]:
    """``{"exact": normalised exact match, "contains": a gold answer occurs in the prediction}``."""
    pred = normalize_answer(prediction)
    golds = [normalize_answer(a) for a in answers]
    exact = any(pred == g for g in golds if g)
    return {"exact": exact, "contains": exact or contains_answer(pred, golds)}


def gold_answers(metadata: Mapping | None) -> list[str]:
    """The gold answer strings of a query's metadata (``answers``: a string or a list of strings)."""
    if not isinstance(metadata, Mapping):
        return []
    answers = metadata.get("answers")
    if answers is None:
        return []
    if isinstance(answers, str):
        answers = [answers]
    if isinstance(answers, Mapping):  # SQuAD json style {"text": [...]}
        answers = answers.get("text", [])
    return [str(a) for a in answers if str(a).strip()]


def paired_bootstrap(
    before: Mapping[str, float], after: Mapping[str, float], n_resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean of ``after - before`` over the queries of ``before`` with a 95% percentile bootstrap interval
    (queries resampled with replacement), plus wins / losses / ties: the paired comparison a quality claim needs."""
    qids = sorted(before)
    diff = np.array([after.get(q, 0.0) - before[q] for q in qids], dtype=float)
    if diff.size == 0:
        return {"mean_diff": float("nan"), "low": float("nan"), "high": float("nan"), "queries": 0,
                **wins_losses_ties(before, after)}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_resamples, diff.size))].mean(axis=1)
    return {"mean_diff": float(diff.mean()), "low": float(np.percentile(means, 2.5)),
            "high": float(np.percentile(means, 97.5)), "queries": int(diff.size), **wins_losses_ties(before, after)}
