"""Evaluation: does reranking help on this data, at what K and N, and at what latency?

Entry points:

* ``run_eval(dataset_path, **options) -> Path``: detects the dataset kind (BEIR folder, or answer-selection
  folder/TSV) and runs ``evaluate_beir`` or ``evaluate_answer_selection``; returns the output folder.
* ``run_tune(dataset_path, latency_budget_ms=..., **options) -> Recommendation``: see ``tune``.
* ``evaluate_beir(dataset_dir, split=..., retrievers=..., rerankers=..., ks=..., ns=..., fusions=..., out_dir=...)``:
  the sweep (first stages x rerankers x fusions x K), metrics (ranx: nDCG@10, Recall@K, MRR@10, MAP@100),
  wins/losses, per-stage latency, answer-in-top-N and optional LLM answer accuracy.
* ``parse_rerank_max_k("bm25=100,dense=100", retrievers)``: ``rerank_max_k`` as the CLI's ``--rerank-max-k``
  gives it (``evaluate_beir`` and ``run_eval`` take the string too), checked.
* ``evaluate_answer_selection(tsv_path, rerankers)``: MAP / MRR / P@1 against the file order.
* ``tune(dataset_dir, latency_budget_ms=...)``: best configuration within a p95 latency budget.

Outputs in ``out_dir``: ``results.json``, ``per_query.json``, ``report.md``, ``report.html`` (self-contained),
``cache/`` (reranker scores, timings, LLM replies: reruns compute nothing twice), ``index/`` (BEIR corpus index),
``tune.json`` (after tuning).

"""

from crossrank.evaluate.answer_selection import evaluate_answer_selection, load_answer_selection
from crossrank.evaluate.answers import LLMConfig, answer_in_top_n, build_messages
from crossrank.evaluate.beir import EvalResults, evaluate_beir, latency_plan, parse_rerank_max_k
from crossrank.evaluate.metrics import answer_match, normalize_answer, ranking_metrics, wins_losses_ties
from crossrank.evaluate.runner import detect_dataset, run_eval, run_tune
from crossrank.evaluate.schema import SCHEMA_DOC
from crossrank.evaluate.tune import Recommendation, recommend, tune

__doc__ = (__doc__ or "") + "\n" + SCHEMA_DOC

__all__ = [
    "EvalResults",
    "LLMConfig",
    "Recommendation",
    "SCHEMA_DOC",
    "answer_in_top_n",
    "answer_match",
    "build_messages",
    "detect_dataset",
    "evaluate_answer_selection",
    "evaluate_beir",
    "latency_plan",
    "load_answer_selection",
    "normalize_answer",
    "parse_rerank_max_k",
    "ranking_metrics",
    "recommend",
    "run_eval",
    "run_tune",
    "tune",
    "wins_losses_ties",
]
