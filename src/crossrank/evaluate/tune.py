"""Pick the configuration (first stage, reranker, fusion, K, and N where answers exist) that maximises quality
with p95 end-to-end latency within a budget, from a sweep's results.json (running the sweep first if absent).

Quality is nDCG@10, or on datasets whose queries carry gold answers the LLM answer accuracy ("contains") when an
LLM was evaluated, else answer-in-top-N. Latency is the measured total p95 (first stage + rerank) on the machine
that ran the sweep; the LLM's own latency is not included. Answer-in-top-N can only grow with N, so N is chosen
as the smallest N within ``n_tolerance`` of the best N (a longer prompt costs the LLM time and money).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crossrank.errors import InputError
from crossrank.evaluate._util import write_json


@dataclass
class Recommendation:
    retriever: str
    reranker: str
    fusion: str
    k: int
    n: int | None
    metric: str
    value: float
    latency_p95_ms: float | None
    latency_budget_ms: float
    fits: bool
    first_stage_only: bool
    explanation: str
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    results_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "search_command": self.search_command()}

    def search_command(self) -> str:
        """The recommendation as ``crossrank search`` options (``INDEX`` and the query left to fill in); the
        deadline is the budget, so a slow rerank falls back to the first stage instead of overrunning it."""
        cmd = f"crossrank search INDEX QUERY --retriever {self.retriever} --k {self.k}"
        cmd += f" --reranker {self.reranker}"
        if self.reranker != "none":
            cmd += f" --fusion {self.fusion} --deadline-ms {self.latency_budget_ms:.0f}"
        if self.n is not None:
            cmd += f" --n {self.n}"
        return cmd

    def __str__(self) -> str:
        return f"{self.explanation}\nPipeline settings: {self.search_command()}"

    def __rich__(self) -> str:
        return str(self)


def _metric_for(data: dict, metric: str | None) -> str:
    if metric:
        if metric not in ("ndcg@10", "mrr@10", "map@100", "answer_in_top_n", "llm_contains", "llm_exact"):
            raise InputError(f"unknown tuning metric {metric!r}: use ndcg@10, mrr@10, map@100, answer_in_top_n, "
                             "llm_contains or llm_exact")
        return metric
    if data["dataset"].get("has_answers"):
        if any(c.get("llm_answer_accuracy") for c in data["configs"]):
            return "llm_contains"
        return "answer_in_top_n"
    return "ndcg@10"


def _options(data: dict, metric: str) -> list[dict[str, Any]]:
    """One row per (configuration, N) with its value and latency."""
    rows = []
    for c in data["configs"]:
        total = (c["latency_ms"].get("total") or {}).get("p95")
        base = {"id": c["id"], "retriever": c["retriever"], "reranker": c["reranker"], "fusion": c["fusion"],
                "k": c["k"], "latency_p95_ms": total, "n_timed": (c["latency_ms"].get("total") or {}).get("n")}
        if metric in ("ndcg@10", "mrr@10", "map@100"):
            rows.append({**base, "n": None, "value": c["metrics"][metric]})
        elif metric == "answer_in_top_n":
            for n, v in (c.get("answer_in_top_n") or {}).items():
                if v is not None:
                    rows.append({**base, "n": int(n), "value": v})
        else:
            key = "contains" if metric == "llm_contains" else "exact"
            for n, v in (c.get("llm_answer_accuracy") or {}).items():
                rows.append({**base, "n": int(n), "value": v[key]})
    return rows


def _label(o: dict) -> str:
    s = o["retriever"] if o["reranker"] == "none" else f"{o['retriever']} → {o['reranker']}"
    if o["reranker"] != "none" and o["fusion"] != "none":
        s += f" (fusion {o['fusion']})"
    s += f", K={o['k']}"
    if o.get("n") is not None:
        s += f", N={o['n']}"
    return s


def _pick(rows: list[dict], tol: float) -> dict:
    """Best value; among rows within ``tol`` of it prefer smaller N, then lower latency, then smaller K."""
    best = max(r["value"] for r in rows)
    near = [r for r in rows if r["value"] >= best - tol - 1e-12]
    return min(near, key=lambda r: (r["n"] or 0, r["latency_p95_ms"] if r["latency_p95_ms"] is not None else 1e18,
                                    -r["value"], r["k"]))


def recommend(data: dict, latency_budget_ms: float, *, metric: str | None = None, n_tolerance: float = 0.005,
              results_path: str = "") -> Recommendation:
    """The recommendation for a sweep's results (see the module docstring)."""
    if data.get("kind") != "beir":
        raise InputError("tune works on retrieval sweeps (BEIR datasets), not on answer-selection results")
    budget = float(latency_budget_ms)
    if budget <= 0:
        raise InputError(f"latency budget must be positive, got {latency_budget_ms}")
    metric = _metric_for(data, metric)
    rows = _options(data, metric)
    if not rows:
        raise InputError(f"the sweep has no values for {metric!r}")
    tol = n_tolerance if metric not in ("ndcg@10", "mrr@10", "map@100") else 0.0
    timed = [r for r in rows if r["latency_p95_ms"] is not None]
    fits = [r for r in timed if r["latency_p95_ms"] <= budget]
    fs_rows = [r for r in rows if r["reranker"] == "none"]
    best_fs = _pick(fs_rows, tol) if fs_rows else None
    reranked = [r for r in timed if r["reranker"] != "none"]
    mname = {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "map@100": "MAP@100", "answer_in_top_n": "answer-in-top-N",
             "llm_contains": "LLM answer accuracy (contains)", "llm_exact": "LLM answer accuracy (exact)"}[metric]
    machine = data.get("machine", {})
    where = (f"measured on {machine.get('cpu_model') or machine.get('processor', '?')} with {machine.get('cpu_count', '?')} CPUs "
             f"on {data.get('created', '?')}")
    lines: list[str] = []
    if fits:
        choice = _pick(fits, tol)
        ok = True
        lines.append(f"Recommended: {_label(choice)}: {mname} {choice['value']:.3f}, total p95 "
                     f"{choice['latency_p95_ms']:.0f} ms within the {budget:.0f} ms budget ({where}).")
        if choice["reranker"] == "none":
            if reranked:
                fastest = min(reranked, key=lambda r: r["latency_p95_ms"])
                better = [r for r in reranked if r["value"] > choice["value"]]
                if better:
                    cheapest_better = min(better, key=lambda r: r["latency_p95_ms"])
                    lines.append(f"No reranked configuration that beats it fits: the cheapest one that does "
                                 f"({_label(cheapest_better)}, {mname} {cheapest_better['value']:.3f}) needs "
                                 f"p95 {cheapest_better['latency_p95_ms']:.0f} ms.")
                elif fastest["latency_p95_ms"] > budget:
                    lines.append(f"No reranked configuration fits (fastest: {_label(fastest)} at p95 "
                                 f"{fastest['latency_p95_ms']:.0f} ms).")
                else:
                    lines.append("Reranking does not improve on the first stage here.")
        elif best_fs is not None:
            lines.append(f"Best first stage alone: {_label(best_fs)} at {best_fs['value']:.3f} "
                         f"({choice['value'] - best_fs['value']:+.3f} from reranking).")
        if choice.get("n") is not None and metric == "answer_in_top_n":
            lines.append(f"N={choice['n']} is the smallest N within {n_tolerance:.3f} of the best value "
                         "(answer-in-top-N only grows with N; longer prompts cost the LLM time).")
        if choice.get("n_timed"):
            lines.append(f"Rerank latency p95 is estimated from {choice['n_timed']} timed queries.")
    else:
        if best_fs is None:
            raise InputError("the sweep holds no first-stage results to fall back on")
        choice = best_fs
        ok = False
        fastest = min(timed, key=lambda r: r["latency_p95_ms"]) if timed else None
        lines.append(f"Nothing fits the {budget:.0f} ms p95 budget ({where}); recommending the best first stage "
                     f"alone: {_label(choice)}: {mname} {choice['value']:.3f}, p95 "
                     f"{choice['latency_p95_ms']:.0f} ms." if choice["latency_p95_ms"] is not None else
                     f"Nothing fits the {budget:.0f} ms budget; recommending the best first stage alone: "
                     f"{_label(choice)}.")
        if fastest is not None:
            lines.append(f"The fastest configuration measured is {_label(fastest)} at p95 "
                         f"{fastest['latency_p95_ms']:.0f} ms: raise the budget or use faster hardware.")
    others = sorted(fits, key=lambda r: -r["value"])
    alternatives = [r for r in others if r is not choice][:5]
    return Recommendation(
        retriever=choice["retriever"], reranker=choice["reranker"], fusion=choice["fusion"], k=choice["k"],
        n=choice.get("n"), metric=metric, value=choice["value"], latency_p95_ms=choice["latency_p95_ms"],
        latency_budget_ms=budget, fits=ok, first_stage_only=choice["reranker"] == "none",
        explanation=" ".join(lines), alternatives=alternatives, results_path=results_path,
    )


def tune(
    dataset_dir: str | os.PathLike,
    *,
    latency_budget_ms: float,
    out_dir: str | os.PathLike | None = None,
    split: str = "test",
    metric: str | None = None,
    n_tolerance: float = 0.005,
    run_if_missing: bool = True,
    **sweep_options: Any,
) -> Recommendation:
    """Recommend a configuration under ``latency_budget_ms`` (p95, end to end, this machine) from the sweep
    cached in ``out_dir/results.json``; without one, run ``evaluate_beir`` first (``sweep_options`` are passed on).
    Writes ``out_dir/tune.json``."""
    from crossrank.evaluate.beir import evaluate_beir

    dataset_dir = Path(dataset_dir)
    if out_dir is None:
        out_dir = default_out_dir(dataset_dir, split)
    out_dir = Path(out_dir)
    path = out_dir / "results.json"
    data = None
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if data is not None and (data.get("dataset", {}).get("name") != dataset_dir.name
                                 or data.get("dataset", {}).get("split") != split):
            data = None
    if data is None:
        if not run_if_missing:
            raise InputError(f"no sweep results for {dataset_dir.name} ({split}) in {out_dir}; run the evaluation first")
        data = evaluate_beir(dataset_dir, split=split, out_dir=out_dir, **sweep_options).data
    rec = recommend(data, latency_budget_ms, metric=metric, n_tolerance=n_tolerance, results_path=str(path))
    write_json(out_dir / "tune.json", rec.to_dict())
    return rec


def default_out_dir(dataset_path: Path, split: str | None) -> Path:
    """Where an evaluation writes by default: ``./crossrank-eval/<dataset>-<split>`` (for a TSV file: its folder
    name and file stem, e.g. ``wikiqa-dev``)."""
    dataset_path = Path(dataset_path)
    if dataset_path.is_file():
        name, split = dataset_path.parent.resolve().name, split or dataset_path.stem
    else:
        name = dataset_path.resolve().name
    return Path("crossrank-eval") / (f"{name}-{split}" if split else name)
