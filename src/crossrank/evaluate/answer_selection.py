"""Answer selection (WikiQA / TrecQA style): rerank each question's candidate sentences; MAP, MRR, P@1.

Input: a TSV with header ``qid  question  sentence  label`` (label 1 = a correct answer sentence); a question's rows,
in file order, are its candidate list. As is standard for these benchmarks, questions without any correct candidate
are excluded from the metrics (they are counted and reported, and not scored). The baseline is the candidate file
order. Ties in reranker scores keep file order. Scores are cached per (reranker fingerprint, qid, row) under
``out_dir/cache`` as in the BEIR sweep, and the per-question ``reranker.score`` wall clock (one call per question,
all its candidates) is stored alongside, so reruns compute nothing.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from crossrank.errors import InputError
from crossrank.evaluate._util import as_list, latency_summary, progress_bars, r6, write_json
from crossrank.evaluate.cache import LatencyStore, ScoreCache, reranker_fingerprint
from crossrank.evaluate.metrics import ranking_metrics
from crossrank.rerank.base import Reranker, as_reranker

METRICS = ("map", "mrr", "precision@1")
_NAMES = {"map": "MAP", "mrr": "MRR", "precision@1": "P@1"}


@dataclass
class Question:
    qid: str
    question: str
    sentences: list[str]
    labels: list[int]

    @property
    def has_positive(self) -> bool:
        return any(label > 0 for label in self.labels)


def load_answer_selection(tsv_path: str | os.PathLike) -> list[Question]:
    """Questions in order of first appearance, each with its candidates in file order."""
    path = Path(tsv_path)
    if not path.is_file():
        raise InputError(f"answer-selection file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not valid UTF-8") from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise InputError(f"{path} is empty")
    header = [h.strip().lower() for h in rows[0]]
    need = ("qid", "question", "sentence", "label")
    if not all(h in header for h in need):
        raise InputError(f"{path}: expected a header with columns {', '.join(need)} (tab-separated), got {rows[0]}")
    col = {h: header.index(h) for h in need}
    questions: dict[str, Question] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < len(header):
            raise InputError(f"{path}:{n}: expected {len(header)} tab-separated columns, got {len(row)}")
        qid = row[col["qid"]].strip()
        try:
            label = int(float(row[col["label"]]))
        except ValueError:
            raise InputError(f"{path}:{n}: label {row[col['label']]!r} is not a number") from None
        q = questions.get(qid)
        if q is None:
            q = questions[qid] = Question(qid=qid, question=row[col["question"]], sentences=[], labels=[])
        q.sentences.append(row[col["sentence"]])
        q.labels.append(label)
    if not questions:
        raise InputError(f"{path} has a header but no rows")
    return list(questions.values())


def _metrics(questions: Sequence[Question], orders: Mapping[str, Sequence[int]]) -> tuple[dict[str, float], dict]:
    qrels = {q.qid: {str(i): int(l > 0) for i, l in enumerate(q.labels)} for q in questions}
    ranked = {q.qid: [str(i) for i in orders[q.qid]] for q in questions}
    return ranking_metrics(qrels, ranked, METRICS)


def evaluate_answer_selection(
    tsv_path: str | os.PathLike,
    rerankers: Any = ("default",),
    *,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    reranker_options: Mapping[str, Any] | None = None,
    max_queries: int | None = None,
    write_reports: bool = True,
) -> Any:
    """Rerank each question's candidates with each reranker; MAP / MRR / P@1 against the file-order baseline.

    Returns ``EvalResults`` (``kind == "answer_selection"``); with ``out_dir`` also writes results.json, report.md
    and report.html there and caches scores."""
    from crossrank.evaluate._util import load_reranker_spec, machine_info
    from crossrank.evaluate.beir import SCHEMA_VERSION, EvalResults

    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    t_start = time.perf_counter()
    machine = machine_info()
    tsv_path = Path(tsv_path)
    all_questions = load_answer_selection(tsv_path)
    if max_queries is not None:
        all_questions = all_questions[: int(max_queries)]
    kept = [q for q in all_questions if q.has_positive]
    excluded = len(all_questions) - len(kept)
    if not kept:
        raise InputError(f"{tsv_path}: no question has a correct candidate (label 1); nothing to evaluate")
    dataset = f"{tsv_path.parent.name}-{tsv_path.stem}"
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    methods: list[dict[str, Any]] = []
    per_query: dict[str, dict[str, float]] = {}
    base_orders = {q.qid: list(range(len(q.sentences))) for q in kept}
    base_means, base_pq = _metrics(kept, base_orders)
    methods.append({"name": "file order", "reranker": None,
                    "metrics": {_NAMES[m]: r6(base_means[m]) for m in METRICS}, "latency_ms": None})
    per_query["file order"] = {q: r6(v) for q, v in base_pq["map"].items()}

    for spec in [r for r in as_list(rerankers, str, "rerankers") if not (isinstance(r, str) and r == "none")]:
        label, given = load_reranker_spec(spec, reranker_options)
        reranker = as_reranker(given)
        fp = reranker_fingerprint(spec, given)
        row, per_query[label] = _rerank_method(label, fp, reranker, kept, base_pq, out, dataset, progress)
        methods.append(row)

    summary, warnings = _dataset_summary(kept)
    data = {
        "schema_version": SCHEMA_VERSION,
        "kind": "answer_selection",
        "created": started,
        "duration_s": round(time.perf_counter() - t_start, 3),
        "dataset": {"name": dataset, "path": str(tsv_path.resolve()), "split": tsv_path.stem,
                    "n_questions": len(all_questions), "n_questions_evaluated": len(kept),
                    "n_questions_excluded_no_positive": excluded, **summary},
        "warnings": warnings,
        "settings": {"rerankers": [m["name"] for m in methods[1:]], "max_queries": max_queries,
                     "metrics_library": "ranx", "exclusion": "questions without a correct candidate are excluded"},
        "machine": machine,
        "methods": methods,
    }
    results = EvalResults(data=data, out_dir=out if out is not None else Path("."))
    if out is not None:
        write_json(out / "results.json", data)
        write_json(out / "per_query.json", {"metric": "map", "per_query": per_query})
        if write_reports:
            from crossrank.evaluate.report import write_reports as _write

            _write(results)
    return results


def _score_questions(label: str, reranker: Reranker, kept: list[Any], cache: ScoreCache | None,
                     store: LatencyStore | None, progress: bool) -> tuple[dict[str, list[float]], list[float], int]:
    """Each question's candidate scores (from the cache where it has them), the per-question latencies (cached
    ones reused) and the number of pairs scored now."""
    scores: dict[str, list[float]] = {}
    lat: list[float] = []
    computed = 0
    warmed = False
    with progress_bars(progress) as bars:
        task = bars.add_task(f"rerank {label}", total=len(kept))
        for q in kept:
            ids = [str(i) for i in range(len(q.sentences))]
            if cache is not None and not cache.missing(q.qid, ids):
                scores[q.qid] = [cache.scores[(q.qid, i)] for i in ids]
                m = store.get(0, q.qid) if store is not None else None
                if m is not None:
                    lat.append(float(m["ms"]))
            else:
                if not warmed:  # the first call's one-off costs are not a question's latency
                    reranker.score("warm up", ["warm up"])
                    warmed = True
                t0 = time.perf_counter()
                scores[q.qid] = list(reranker.score(q.question, q.sentences).scores)
                ms = (time.perf_counter() - t0) * 1000.0
                computed += len(ids)
                lat.append(ms)
                if cache is not None and store is not None:
                    cache.put(q.qid, ids, scores[q.qid])
                    store.put(0, q.qid, ms, "file", pairs=len(ids))
            bars.advance(task)
    if cache is not None:
        cache.close()
    return scores, lat, computed


def _rerank_method(label: str, fp: str, reranker: Reranker, kept: list[Any], base_pq: dict[str, dict[str, float]],
                   out: Path | None, dataset: str, progress: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """One reranker's results row (metrics, wins/losses against file order, latency) and its per-question MAP."""
    cache = ScoreCache.for_reranker(out, dataset, label, fp) if out is not None else None
    store = LatencyStore.for_reranker(out, dataset, label, fp) if out is not None else None
    scores, lat, computed = _score_questions(label, reranker, kept, cache, store, progress)
    orders = {q.qid: sorted(range(len(q.sentences)), key=lambda i, s=scores[q.qid]: (-s[i], i)) for q in kept}
    means, pq = _metrics(kept, orders)
    wins = sum(1 for q in kept if pq["map"][q.qid] > base_pq["map"][q.qid] + 1e-9)
    losses = sum(1 for q in kept if pq["map"][q.qid] < base_pq["map"][q.qid] - 1e-9)
    row = {
        "name": label, "reranker": label, "fingerprint": fp,
        "metrics": {_NAMES[m]: r6(means[m]) for m in METRICS},
        "wins": wins, "losses": losses, "ties": len(kept) - wins - losses,
        "pairs_scored": computed, "cache_file": str(cache.path) if cache is not None else None,
        "latency_ms": latency_summary(lat),
        "info": reranker.info() or None,
    }
    return row, {q: r6(v) for q, v in pq["map"].items()}


def _dataset_summary(kept: list[Any]) -> tuple[dict[str, Any], list[str]]:
    """Candidate counts and label-order shares of the evaluated questions, and the warnings they call for."""
    n_cands = [len(q.sentences) for q in kept]
    first_pos = sum(1 for q in kept if q.labels[0] > 0) / len(kept)
    sorted_by_label = sum(1 for q in kept if q.labels == sorted(q.labels, reverse=True)) / len(kept)
    warnings = []
    if sorted_by_label >= 0.95:
        warnings.append(
            f"the file lists correct candidates first in {sorted_by_label:.0%} of questions (sorted by label): the "
            "file-order baseline is not a meaningful baseline here, and rerankers whose scores tie would be "
            "helped by the file-order tie-break"
        )
    summary = {"n_pairs_evaluated": sum(n_cands), "mean_candidates": round(sum(n_cands) / len(n_cands), 2),
               "first_candidate_positive_share": r6(first_pos), "sorted_by_label_share": r6(sorted_by_label)}
    return summary, warnings
