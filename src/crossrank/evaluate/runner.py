"""The entry points the CLI calls: detect what kind of dataset a path is and run the right evaluation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from crossrank.errors import InputError
from crossrank.evaluate.tune import Recommendation, default_out_dir, tune

_BEIR_ONLY = ("retrievers", "ks", "ns", "fusions", "rerank_max_k", "index_dir", "latency_queries", "llm", "remeasure_latency")


def detect_dataset(path: str | os.PathLike, split: str | None = None) -> tuple[str, Path, str]:
    """``(kind, path, split)``: kind "beir" (a folder with corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or
    "answer_selection" (a TSV file, or a folder of <split>.tsv files). ``split=None`` picks "test" when present,
    else (answer selection) "dev". Raises ``InputError`` naming the available splits."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"dataset not found: {p}")
    if p.is_file():
        if p.suffix.lower() in (".tsv", ".txt"):
            return "answer_selection", p, split or p.stem
        raise InputError(f"{p}: expected a BEIR dataset folder or an answer-selection .tsv file")
    if (p / "corpus.jsonl").is_file():
        from crossrank.corpus import available_splits

        splits = available_splits(p)
        if not splits:
            raise InputError(f"{p} has a corpus.jsonl but no qrels/<split>.tsv files")
        split = split or ("test" if "test" in splits else None)
        if split not in splits:
            raise InputError(f"split {split!r} not found in {p}; available splits: {', '.join(splits)}"
                             if split else f"no default split in {p}; pick one of: {', '.join(splits)}")
        return "beir", p, split
    tsvs = sorted(f.stem for f in p.glob("*.tsv"))
    if tsvs:
        if split is None:
            split = next((s for s in ("test", "dev") if s in tsvs), None)
            if split is None:
                raise InputError(f"no test.tsv or dev.tsv in {p}; pick a split: {', '.join(tsvs)}")
        if split not in tsvs:
            raise InputError(f"split {split!r} not found in {p}; available splits: {', '.join(tsvs)}")
        return "answer_selection", p / f"{split}.tsv", split
    raise InputError(f"{p} is neither a BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/) nor an "
                     "answer-selection folder (<split>.tsv files with qid, question, sentence, label)")


def run_eval(dataset_path: str | os.PathLike, **options: Any) -> Path:
    """Evaluate a dataset and return the folder holding results.json, report.md and report.html.

    Options (lists may be given as comma-separated strings): ``split`` (None: test, else dev), ``out_dir``
    (default ./crossrank-eval/<dataset>-<split>), ``rerankers`` ("none", "default", model paths/ids), and for BEIR
    datasets ``retrievers``, ``ks``, ``ns``, ``fusions``, ``rerank_max_k``, ``index_dir``, ``max_queries``, ``latency_queries``,
    ``progress``, ``reranker_options``, ``llm``, ``remeasure_latency`` (see ``evaluate_beir``). Answer-selection
    datasets use ``rerankers``, ``max_queries``, ``progress``, ``reranker_options`` and ignore the rest."""
    options = {k: v for k, v in options.items() if v is not None}
    kind, path, split = detect_dataset(dataset_path, options.pop("split", None))
    out_dir = Path(options.pop("out_dir", None) or default_out_dir(Path(dataset_path), split))
    if kind == "beir":
        from crossrank.evaluate.beir import evaluate_beir

        evaluate_beir(path, split=split, out_dir=out_dir, **options)
    else:
        from crossrank.evaluate.answer_selection import evaluate_answer_selection

        for key in _BEIR_ONLY:
            options.pop(key, None)
        evaluate_answer_selection(path, options.pop("rerankers", ("default",)), out_dir=out_dir, **options)
    return out_dir


def run_tune(dataset_path: str | os.PathLike, *, latency_budget_ms: float, **options: Any) -> Recommendation:
    """Recommend a configuration under a p95 latency budget (see ``crossrank.evaluate.tune.tune``); reuses the
    sweep in ``out_dir`` (default ./crossrank-eval/<dataset>-<split>) or runs it with the remaining options."""
    options = {k: v for k, v in options.items() if v is not None}
    kind, path, split = detect_dataset(dataset_path, options.pop("split", None))
    if kind != "beir":
        raise InputError("tune needs a retrieval dataset (BEIR folder); answer-selection sets have no K to tune")
    out_dir = options.pop("out_dir", None) or default_out_dir(Path(dataset_path), split)
    return tune(path, latency_budget_ms=latency_budget_ms, out_dir=out_dir, split=split, **options)
