"""The held-out decision run: what a trained reranker ships with, chosen on held-out TRAINING queries only.

``python -m crossrank.train.heldout --run RUN --reranker old=default --reranker new=RUN/model ...`` reads the
training run's sources and held-out split (``RUN/config.json``: the same queries the trainer held out, by
``split_seed``), fetches each held-out BEIR query's first-stage top K from a saved index (``--index NAME=DIR``, the
hybrid first stage used at inference) and scores every candidate with every reranker through the inference engine
(raw logits, cached under ``--out`` by the content of the weights, so a model retrained into the same path is
scored again). For the last reranker (the candidate) it then

1. fits a Platt calibration on half of the held-out queries' labelled pairs and reports the expected calibration
   error (ECE) on the other half (:mod:`crossrank.rerank.calibration`);
2. chooses the "nothing here is relevant" threshold on that first half, from answerable questions with their gold
   passage against SQuAD 2.0 no-answer questions with theirs and CQA's good against bad answers, and reports its
   precision and recall on the second half;
3. chooses the final-order fusion (CE alone, RRF, or ``w * z(CE) + (1 - w) * z(first stage)``) by the mean over
   BEIR sources of held-out nDCG@10, every source weighing the same;

and compares every reranker with the first (paired per query: mean difference, 95% bootstrap interval,
wins/losses) per source. It never reads a test split. Results: ``OUT/heldout.json``, ``OUT/heldout.md`` and a
reliability plot ``OUT/reliability.png``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crossrank.errors import CrossrankError, InputError
from crossrank.evaluate.metrics import paired_bootstrap
from crossrank.files import atomic_write_text
from crossrank.rerank.calibration import (
    Calibration,
    expected_calibration_error,
    fit_platt,
    reliability,
)
from crossrank.train.config import TrainConfig
from crossrank.train.data import DevQuery, build_sources
from crossrank.train.metrics import ndcg_at_k, order_by

log = logging.getLogger("crossrank.train")

WEIGHTS = [round(w, 1) for w in np.arange(0.0, 1.01, 0.1)]
CALIBRATION_DEPTH = 20  # BEIR candidates per held-out query that enter the calibration pairs
THRESHOLDS = [round(t, 2) for t in np.arange(0.02, 0.99, 0.02)]


@dataclass
class HeldOut:
    """One source's held-out queries (candidates best first) and whether it has a first stage to fuse with."""

    name: str
    kind: str
    queries: list[DevQuery]


# ---------------------------------------------------------------------------------------------------- data


def _half(qid: str) -> int:
    """0 or 1: a fixed split of held-out queries into a fitting half and a reporting half."""
    return int(hashlib.sha256(qid.encode()).hexdigest(), 16) % 2


def held_out_sets(cfg: TrainConfig, run: Path, indexes: dict[str, str], k: int, per_source: int) -> list[HeldOut]:
    sources = build_sources(cfg, run / "data")
    out = []
    for s in sources:
        dev = s.dev[:per_source]
        if not dev:
            continue
        name = s.spec.name
        if s.spec.kind == "beir" and name in indexes:
            dev = _first_stage(dev, indexes[name], k)
        elif s.spec.kind == "beir":
            dev = [DevQuery(q.qid, q.query, q.doc_ids[:k], q.texts[:k], q.first_stage_scores[:k], q.qrels) for q in dev]
        out.append(HeldOut(name=name, kind=s.spec.kind, queries=dev))
        log.info("held-out %s: %d queries", name, len(dev))
    return out


def _first_stage(dev: list[DevQuery], index_dir: str, k: int) -> list[DevQuery]:
    """The held-out queries' candidates from the inference first stage (hybrid top-k of a saved index)."""
    from crossrank.retrieve import load_index
    from crossrank.types import first_per_document

    retriever = load_index(index_dir).retriever("hybrid")
    results = retriever.search_batch([q.query for q in dev], k=k)
    out = []
    for q, cands in zip(dev, results, strict=True):
        cands = first_per_document(cands)
        out.append(DevQuery(q.qid, q.query, [c.doc_id for c in cands], [c.full_text for c in cands],
                            [float(c.score) for c in cands], q.qrels))
    return out


def no_answer_pairs(beir_dir: Path, limit: int, seed: int) -> list[tuple[str, str, str]]:
    """(qid, question, paragraph) of SQuAD 2.0 no-answer questions (``qrels/noanswer.tsv``, the paragraph they
    were written against, which does not answer them); a seeded sample of ``limit``."""
    qrels = beir_dir / "qrels" / "noanswer.tsv"
    if not qrels.is_file():
        return []
    queries = _jsonl_texts(beir_dir / "queries.jsonl", title=False)
    corpus = _jsonl_texts(beir_dir / "corpus.jsonl", title=True)
    with open(qrels, encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r and r[0] != "query-id"]
    pairs = [(q, queries[q], corpus[d]) for q, d, *_ in rows if q in queries and d in corpus]
    idx = np.random.default_rng(seed).permutation(len(pairs))[:limit]
    return [pairs[i] for i in sorted(idx)]


def _jsonl_texts(path: Path, title: bool) -> dict[str, str]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                t = d.get("title") or ""
                out[str(d["_id"])] = f"{t}\n{d.get('text', '')}" if title and t else d.get("text", "")
    return out


# ---------------------------------------------------------------------------------------------------- scoring


SCORES_FORMAT = "crossrank-heldout-scores"
# Before the weights were fingerprinted a file was named LABEL-SOURCE-<12 hex of the spec and texts>: retraining into
# the same path reused its scores. Such files are never read (the key is now 16 hex); the store says they are there.
_LEGACY_NAME = re.compile(r"-[0-9a-f]{12}\.json$")
# load_reranker options that do not change a score (the rest, max_length, dtype, activation, backend, do)
_NOT_SCORING_OPTIONS = frozenset({"cache_size"})


class ScoreStore:
    """Raw logits per (reranker, source, query), cached as one JSON file per reranker and source.

    A file is keyed by what decides its scores: the content of the weights (:func:`crossrank.rerank.weights.
    weights_fingerprint`, not the spec's path), the scoring options and the (query, texts) scored. A reranker
    whose weights cannot be fingerprinted before loading (a URL) is scored every run, never cached."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "scores"
        self.dir.mkdir(parents=True, exist_ok=True)
        legacy = [f for f in self.dir.glob("*.json") if _LEGACY_NAME.search(f.name)]
        if legacy:
            log.info("ignoring %d score files in %s cached by reranker spec before weights were fingerprinted "
                     "(possibly stale): their rerankers are scored again", len(legacy), self.dir)

    def key(self, spec: str, options: dict[str, Any], items: list[tuple[str, str, list[str]]]) -> str | None:
        """The cache key of scoring ``items`` with ``spec`` under ``options``; None when the weights are unknown."""
        from crossrank.rerank.weights import weights_fingerprint

        weights = weights_fingerprint(spec)
        if weights is None:
            return None
        scoring = {k: v for k, v in sorted(options.items()) if k not in _NOT_SCORING_OPTIONS}
        return hashlib.sha256(json.dumps([weights, scoring, [(q, t) for q, _, t in items]]).encode()).hexdigest()[:16]

    def get(self, label: str, spec: str, options: dict[str, Any], source: str,
            items: list[tuple[str, str, list[str]]], engine_factory) -> dict[str, list[float]]:
        key = self.key(spec, options, items)
        if key is None and not spec.lower().startswith(("http://", "https://")):
            engine_factory()  # a hub id not downloaded yet: loading it puts its weights where they can be hashed
            key = self.key(spec, options, items)
        if key is None:
            log.info("%s (%s): weights unknown before scoring, not cached", label, spec)
            return self._score(label, source, items, engine_factory())
        path = self.dir / f"{label}-{source}-{key}.json"
        if path.is_file():
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("format") == SCORES_FORMAT and cached.get("key") == key:
                return cached["scores"]
        scores = self._score(label, source, items, engine_factory())
        atomic_write_text(path, json.dumps({"format": SCORES_FORMAT, "key": key, "spec": spec, "scores": scores}))
        return scores

    @staticmethod
    def _score(label: str, source: str, items: list[tuple[str, str, list[str]]], engine) -> dict[str, list[float]]:
        scores: dict[str, list[float]] = {}
        t0, pairs, total = time.time(), 0, sum(len(t) for _, _, t in items)
        last = t0
        for qid, query, texts in items:
            scores[qid] = list(engine.score(query, texts).scores)
            pairs += len(texts)
            if time.time() - last > 30:
                rate = pairs / (time.time() - t0)
                log.info("%s %s: %d/%d pairs, %.1f pairs/s, ETA %.0fs", label, source, pairs, total, rate,
                         (total - pairs) / max(rate, 1e-9))
                last = time.time()
        log.info("%s %s: %d pairs in %.0fs", label, source, total, time.time() - t0)
        return scores


# ---------------------------------------------------------------------------------------------------- analysis


def _ap(ranked: Sequence[str], qrels: dict[str, int]) -> float:
    hits, total = 0, 0.0
    for i, d in enumerate(ranked, start=1):
        if qrels.get(d, 0) > 0:
            hits += 1
            total += hits / i
    return total / max(1, sum(1 for g in qrels.values() if g > 0))


def _rr(ranked: Sequence[str], qrels: dict[str, int]) -> float:
    return next((1.0 / i for i, d in enumerate(ranked, start=1) if qrels.get(d, 0) > 0), 0.0)


def fusion_table(ho: HeldOut, probs: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per setting, per query nDCG@10 over the first-stage candidates (BEIR sources); the fused orders come from
    the pipeline's own :func:`crossrank.pipeline.fuse`."""
    from crossrank.pipeline import Fusion, fuse

    table: dict[str, dict[str, float]] = {"first_stage": {}, "ce": {}, "rrf": {}}
    fused = {f"{m}:{w}": Fusion(m, w) for m in ("interpolate", "confidence") for w in WEIGHTS}
    table.update({setting: {} for setting in fused})
    for q in ho.queries:
        s, ids = probs[q.qid], q.doc_ids
        table["first_stage"][q.qid] = ndcg_at_k(ids, q.qrels)
        table["ce"][q.qid] = ndcg_at_k(order_by(ids, s), q.qrels)
        table["rrf"][q.qid] = ndcg_at_k(order_by(ids, fuse(q.first_stage_scores, s, "rrf")), q.qrels)
        for setting, fusion in fused.items():
            table[setting][q.qid] = ndcg_at_k(order_by(ids, fuse(q.first_stage_scores, s, fusion)), q.qrels)
    return table


def selection_metrics(ho: HeldOut, scores: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Answer-selection sources: per query MAP and MRR of the CE order."""
    out: dict[str, dict[str, float]] = {"map": {}, "mrr": {}}
    for q in ho.queries:
        ranked = order_by(q.doc_ids, scores[q.qid])
        out["map"][q.qid], out["mrr"][q.qid] = _ap(ranked, q.qrels), _rr(ranked, q.qrels)
    return out


def calibration_pairs(sets: list[HeldOut], scores: dict[str, dict[str, list[float]]]) -> dict[int, dict[str, list]]:
    """Labelled (logit, relevant) pairs of held-out queries, split into halves 0 (fit) and 1 (report)."""
    halves: dict[int, dict[str, list]] = {h: {"logits": [], "labels": [], "source": []} for h in (0, 1)}
    for ho in sets:
        depth = CALIBRATION_DEPTH if ho.kind == "beir" else None
        for q in ho.queries:
            h = halves[_half(q.qid)]
            for d, x in list(zip(q.doc_ids, scores[ho.name][q.qid], strict=True))[:depth]:
                h["logits"].append(x)
                h["labels"].append(int(q.qrels.get(d, 0) > 0))
                h["source"].append(ho.name)
    return halves


def choose_threshold(pos: list[float], neg: list[float]) -> float:
    """The calibrated relevance cut with the best balanced accuracy (answerable kept, unanswerable dropped)."""
    p, n = np.asarray(pos), np.asarray(neg)
    return max(THRESHOLDS, key=lambda t: ((p >= t).mean() + (n < t).mean(), -abs(t - 0.5)))


def threshold_report(t: float, pos: list[float], neg: list[float]) -> dict[str, float]:
    p, n = np.asarray(pos), np.asarray(neg)
    kept_pos, kept_neg = int((p >= t).sum()), int((n >= t).sum())
    return {"threshold": t, "relevant_pairs": int(p.size), "not_relevant_pairs": int(n.size),
            "recall": kept_pos / max(1, p.size), "precision": kept_pos / max(1, kept_pos + kept_neg),
            "rejected_not_relevant": 1.0 - kept_neg / max(1, n.size)}


def choose_fusion(tables: dict[str, dict[str, dict[str, float]]]) -> tuple[str, dict[str, float]]:
    """The setting with the best mean over sources of held-out nDCG@10; ties go to the simpler setting (the order
    below: CE, RRF, interpolation, confidence-scaled interpolation)."""
    settings = ["ce", "rrf"] + [f"{m}:{w}" for m in ("interpolate", "confidence") for w in WEIGHTS if w > 0]
    macro = {s: float(np.mean([np.mean(list(t[s].values())) for t in tables.values()])) for s in settings}
    best = max(settings, key=lambda s: (round(macro[s], 4), -settings.index(s)))
    return best, macro


def fusion_spec(setting: str) -> dict[str, Any]:
    if setting == "ce":
        return {"fusion": "none"}
    if setting == "rrf":
        return {"fusion": "rrf"}
    method, _, weight = setting.partition(":")
    return {"fusion": method, "weight": float(weight), "normalize": "zscore"}


# ---------------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    from crossrank.rerank import load_reranker

    run_dir, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
    indexes = dict(kv.split("=", 1) for kv in args.index)
    rerankers = [tuple(kv.split("=", 1)) for kv in args.reranker]
    if len(rerankers) < 1:
        raise InputError("give at least one --reranker LABEL=SPEC (the last one is the candidate)")
    sets = held_out_sets(cfg, run_dir, indexes, args.k, args.per_source)
    squad = next((Path(s.path) for s in cfg.sources if Path(s.path).name == "squad"), None)
    noans = no_answer_pairs(squad, args.noanswer, cfg.split_seed) if squad else []
    store = ScoreStore(out)

    raw: dict[str, dict[str, dict[str, list[float]]]] = {}
    for label, spec in rerankers:
        opts = {"activation": "raw", "cache_size": 0, "dtype": "fp32"}
        if label in args.max_length:
            opts["max_length"] = args.max_length[label]
        if label in getattr(args, "backend", {}):
            opts["backend"] = args.backend[label]
            opts.pop("dtype")  # int8 backends take the engine's default dtype
        factory = _memo(lambda spec=spec, opts=opts: load_reranker(spec, **opts))
        raw[label] = {}
        for ho in sets:
            items = [(q.qid, q.query, q.texts) for q in ho.queries]
            raw[label][ho.name] = store.get(label, spec, opts, ho.name, items, factory)
        if noans:
            raw[label]["squad-noanswer"] = store.get(label, spec, opts, "squad-noanswer",
                                                     [(q, query, [p]) for q, query, p in noans], factory)

    report: dict[str, Any] = {"run": str(run_dir), "k": args.k, "per_source": args.per_source,
                              "sources": {ho.name: len(ho.queries) for ho in sets}, "rerankers": dict(rerankers)}
    cand, base = rerankers[-1][0], rerankers[0][0]
    report["calibration"] = _calibrate(sets, raw[cand], out)
    cals = {cand: Calibration.parse(report["calibration"]["fitted"])}
    if getattr(args, "baseline_calibration", None):  # the baseline's own fit (its heldout.json): its shipped scale
        fitted = json.loads(Path(args.baseline_calibration).read_text(encoding="utf-8"))["calibration"]["fitted"]
        cals.setdefault(base, Calibration.parse(fitted))
    probs = {label: {src: {q: [cals[label].prob(x) for x in v] for q, v in per.items()} if label in cals else per
                     for src, per in raw[label].items()} for label in raw}
    report["threshold"] = _threshold(sets, probs[cand], noans)
    tables = {label: {ho.name: fusion_table(ho, probs[label][ho.name]) for ho in sets if ho.kind == "beir"}
              for label in raw}
    best, macro = choose_fusion(tables[cand])
    report["fusion"] = {"chosen": best, "settings": fusion_spec(best), "macro_ndcg@10": macro,
                        "per_source": {src: {s: float(np.mean(list(v.values()))) for s, v in t.items()}
                                       for src, t in tables[cand].items()}}
    report["comparison"] = _compare(sets, rerankers, tables, probs, args.baseline_fusion, best)
    if getattr(args, "cascade", None) and len(rerankers) > 1:
        report["cascade"] = cascade_report(sets, probs[cand], probs[base], args.cascade,
                                           args.baseline_fusion or best, tables[base], f"{cand}>{base}",
                                           getattr(args, "cascade_heads", None) or ("score",),
                                           getattr(args, "cascade_depths", None) or (None,))
    (out / "heldout.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "heldout.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def _memo(factory):
    made: list[Any] = []

    def get():
        if not made:
            made.append(factory())
        return made[0]

    return get


def _calibrate(sets: list[HeldOut], scores: dict[str, dict[str, list[float]]], out: Path) -> dict[str, Any]:
    halves = calibration_pairs(sets, scores)
    fit, rep = halves[0], halves[1]
    cal = fit_platt(fit["logits"], fit["labels"])
    plain = [Calibration().prob(x) for x in rep["logits"]]
    fitted = [cal.prob(x) for x in rep["logits"]]
    per_source = {}
    for src in sorted(set(rep["source"])):
        m = [i for i, s in enumerate(rep["source"]) if s == src]
        per_source[src] = {"pairs": len(m), "ece": expected_calibration_error([fitted[i] for i in m],
                                                                               [rep["labels"][i] for i in m])}
    _plot_reliability(plain, fitted, rep["labels"], out / "reliability.png")
    return {"fitted": cal.to_dict(), "fit_pairs": len(fit["logits"]), "report_pairs": len(rep["logits"]),
            "ece_plain_sigmoid": expected_calibration_error(plain, rep["labels"]),
            "ece_calibrated": expected_calibration_error(fitted, rep["labels"]),
            "ece_per_source": per_source, "reliability": reliability(fitted, rep["labels"])}


def _plot_reliability(plain: list[float], fitted: list[float], labels: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for name, p in (("plain sigmoid", plain), ("calibrated", fitted)):
        rows = reliability(p, labels)
        ax.plot([r["mean_score"] for r in rows], [r["relevant_share"] for r in rows], marker="o",
                label=f"{name} (ECE {expected_calibration_error(p, labels):.3f})")
    ax.set_xlabel("predicted relevance")
    ax.set_ylabel("share of pairs relevant")
    ax.set_title("held-out pairs (reporting half)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _threshold(sets: list[HeldOut], probs: dict[str, dict[str, list[float]]],
               noans: list[tuple[str, str, str]]) -> dict[str, Any]:
    """Fit on half 0, report on half 1: relevant = gold passages of held-out answerable SQuAD questions and CQA
    good answers; not relevant = SQuAD 2.0 no-answer paragraphs and CQA bad answers."""
    groups: dict[str, dict[int, tuple[list[float], list[float]]]] = {}
    by_name = {ho.name: ho for ho in sets}
    if "squad" in by_name and noans:
        g = groups.setdefault("squad", {0: ([], []), 1: ([], [])})
        for q in by_name["squad"].queries:
            for d, p in zip(q.doc_ids, probs["squad"][q.qid], strict=True):
                if q.qrels.get(d, 0) > 0:
                    g[_half(q.qid)][0].append(p)
        for qid, _, _ in noans:
            g[_half(qid)][1].append(probs["squad-noanswer"][qid][0])
    for name in ("cqa-train",):
        if name in by_name:
            g = groups.setdefault(name, {0: ([], []), 1: ([], [])})
            for q in by_name[name].queries:
                for d, p in zip(q.doc_ids, probs[name][q.qid], strict=True):
                    g[_half(q.qid)][0 if q.qrels.get(d, 0) > 0 else 1].append(p)
    if not groups:
        return {}
    pos = [p for g in groups.values() for p in g[0][0]]
    neg = [p for g in groups.values() for p in g[0][1]]
    t = choose_threshold(pos, neg)
    return {"chosen": t, "fit": threshold_report(t, pos, neg),
            "report": {name: threshold_report(t, g[1][0], g[1][1]) for name, g in groups.items()}}


def _compare(sets, rerankers, tables, probs, baseline_fusion: str | None, chosen: str) -> dict[str, Any]:
    """Every reranker against the first, per source: CE alone, each one's recommended setting, and MAP for the
    answer-selection sources."""
    base = rerankers[0][0]
    rec = {label: chosen for label, _ in rerankers}
    if baseline_fusion:
        rec[base] = baseline_fusion
    out: dict[str, Any] = {}
    for label, _ in rerankers[1:]:
        rows = {}
        for ho in sets:
            if ho.kind == "beir":
                b, a = tables[base][ho.name], tables[label][ho.name]
                rows[ho.name] = {
                    "first_stage": float(np.mean(list(b["first_stage"].values()))),
                    "ce": {"before": _mean(b["ce"]), "after": _mean(a["ce"]), **paired_bootstrap(b["ce"], a["ce"])},
                    "recommended": {"before": _mean(b[rec[base]]), "after": _mean(a[rec[label]]),
                                    "before_setting": rec[base], "after_setting": rec[label],
                                    **paired_bootstrap(b[rec[base]], a[rec[label]])},
                    "recommended_vs_first_stage": paired_bootstrap(a["first_stage"], a[rec[label]]),
                }
            else:
                b = selection_metrics(ho, probs[base][ho.name])["map"]
                a = selection_metrics(ho, probs[label][ho.name])["map"]
                rows[ho.name] = {"map": {"before": _mean(b), "after": _mean(a), **paired_bootstrap(b, a)}}
        out[f"{label} vs {base}"] = rows
    return out


def cascade_scores(first: dict[str, list[float]], second: dict[str, list[float]], m: int,
                   head: str = "score") -> dict[str, list[float]]:
    """Per query: the first model's scores with its head of ``m`` (:func:`crossrank.rerank.cascade.cascade_head`)
    replaced by the second model's (both calibrated, so the mixed list is on one scale), as
    :class:`crossrank.rerank.cascade.CascadeReranker` scores."""
    from crossrank.rerank.cascade import cascade_head

    out = {}
    for qid, a in first.items():
        mixed = list(a)
        for i in cascade_head(a, m, head):
            mixed[i] = second[qid][i]
        out[qid] = mixed
    return out


def _depth(ho: HeldOut, m: int) -> HeldOut:
    """``ho`` with each query's candidates cut to the first stage's top ``m``: reranking at depth M (the pipeline
    puts the rest after them in first-stage order, which nDCG@10 does not see for M >= 10)."""
    qs = [DevQuery(q.qid, q.query, q.doc_ids[:m], q.texts[:m], q.first_stage_scores[:m], q.qrels) for q in ho.queries]
    return HeldOut(ho.name, ho.kind, qs)


CASCADE_HEADS = ("score", "rrf", "order")


def cascade_report(sets, first, second, ms: Sequence[int], fusion: str, second_tables, label: str,
                   heads: Sequence[str] = ("score",), depths: Sequence[int | None] = (None,)) -> dict[str, Any]:
    """For each head rule, first-model depth and M: the held-out nDCG@10 under ``fusion`` (BEIR sources; macro
    mean, and paired against the second model alone on all candidates with the same fusion) and CE MAP on the
    answer-selection sources. Head rules: ``score`` and ``rrf`` are the cascade's
    (:func:`crossrank.rerank.cascade.cascade_head`); ``order`` is no first model at all: the second reranks the
    first stage's top M. A depth S (``None``: all candidates) is the cascade on the first stage's top S only, the
    rest after them in first-stage order (``A@S>B@M``, as a pipeline reranks at a depth)."""
    out: dict[str, Any] = {"fusion": fusion, "second_alone_macro": None, "by_head": {}}
    beir = [ho for ho in sets if ho.kind == "beir"]
    out["second_alone_macro"] = float(np.mean([_mean(second_tables[ho.name][fusion]) for ho in beir]))
    a, b = label.split(">", 1)
    for head in heads:
        for depth in depths if head != "order" else (None,):
            by_m = out["by_head"].setdefault(head if depth is None else f"{head}, first {depth}", {})
            for m in ms:
                rows = {ho.name: _cascade_row(ho, first[ho.name], second[ho.name], m, head, fusion,
                                              second_tables.get(ho.name), depth) for ho in sets}
                macro = float(np.mean([rows[ho.name]["ndcg@10"] for ho in beir]))
                name = (f"{a}@{depth}" if depth else a) + f">{b}@{m}" + ("" if head == "score" else f":{head}")
                by_m[str(m)] = {"label": name if head != "order" else f"{b} at depth {m}",
                                "macro_ndcg@10": macro, "vs_second_alone": macro - out["second_alone_macro"],
                                "per_source": rows}
    return out


def _cascade_row(ho: HeldOut, first, second, m: int, head: str, fusion: str, second_table,
                 depth: int | None = None) -> dict[str, Any]:
    if head == "order" or depth is not None:
        if ho.kind != "beir":  # no first stage to take a top M (or S) of
            return {"map": float("nan")}
        cut = m if head == "order" else depth
        ho = _depth(ho, cut)
        first = {q: s[:cut] for q, s in first.items()}
        second = {q: s[:cut] for q, s in second.items()}
    if head == "order":
        mixed = second
    else:
        mixed = cascade_scores(first, second, m, head)
    if ho.kind != "beir":
        return {"map": _mean(selection_metrics(ho, mixed)["map"])}
    t = fusion_table(ho, mixed)[fusion]
    return {"ndcg@10": _mean(t), **paired_bootstrap(second_table[fusion], t)}


def _mean(d: dict[str, float]) -> float:
    return float(np.mean(list(d.values()))) if d else float("nan")


def render_markdown(r: dict[str, Any]) -> str:
    cal, th, fu = r["calibration"], r.get("threshold", {}), r["fusion"]
    lines = [f"# Held-out decision run ({r['run']})", "",
             f"Held-out training queries per source: {r['sources']}; BEIR candidates: first-stage top {r['k']}.", "",
             "## Calibration", "",
             f"Platt scale {cal['fitted']['scale']:.4f}, shift {cal['fitted']['shift']:.4f}, fitted on "
             f"{cal['fit_pairs']} pairs; on the other {cal['report_pairs']}: ECE {cal['ece_calibrated']:.4f} "
             f"(plain sigmoid {cal['ece_plain_sigmoid']:.4f}).", ""]
    lines += [f"- {src}: {v['pairs']} pairs, ECE {v['ece']:.4f}" for src, v in cal["ece_per_source"].items()]
    if th:
        lines += ["", "## Relevance threshold", "", f"Chosen on the fitting half: {th['chosen']}.", "",
                  "| reporting half | relevant pairs | not relevant | recall | precision | not-relevant rejected |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {n} | {v['relevant_pairs']} | {v['not_relevant_pairs']} | {v['recall']:.3f} | "
                  f"{v['precision']:.3f} | {v['rejected_not_relevant']:.3f} |" for n, v in th["report"].items()]
    lines += ["", "## Fusion (candidate, mean over BEIR sources of held-out nDCG@10)", "",
              f"Chosen: **{fu['chosen']}** ({fu['macro_ndcg@10'][fu['chosen']]:.4f}).", "",
              "| source | first stage | CE | RRF | " + " | ".join(f"z {w}" for w in WEIGHTS[1:]) + " |",
              "|---" * (4 + len(WEIGHTS) - 1) + "|"]
    for src, t in fu["per_source"].items():
        lines.append(f"| {src} | {t['first_stage']:.4f} | {t['ce']:.4f} | {t['rrf']:.4f} | "
                     + " | ".join(f"{t[f'interpolate:{w}']:.4f}" for w in WEIGHTS[1:]) + " |")
    lines += ["", "Confidence-scaled (`confidence:w`: weight w times the query's best calibrated relevance):", "",
              "| source | " + " | ".join(f"conf {w}" for w in WEIGHTS[1:]) + " |", "|---" * len(WEIGHTS) + "|"]
    for src, t in fu["per_source"].items():
        lines.append(f"| {src} | " + " | ".join(f"{t[f'confidence:{w}']:.4f}" for w in WEIGHTS[1:]) + " |")
    lines += ["", "## Paired comparisons (mean difference, 95% bootstrap interval, wins/losses)", ""]
    for name, rows in r["comparison"].items():
        lines += [f"### {name}", "", "| source | measure | before | after | diff | interval | won/lost |",
                  "|---|---|---|---|---|---|---|"]
        for src, row in rows.items():
            for measure in ("ce", "recommended", "map"):
                if measure in row:
                    v = row[measure]
                    lines.append(f"| {src} | {measure} | {v['before']:.4f} | {v['after']:.4f} | "
                                 f"{v['mean_diff']:+.4f} | {v['low']:+.4f}..{v['high']:+.4f} | "
                                 f"{v['wins']}/{v['losses']} |")
            if "recommended_vs_first_stage" in row:
                v = row["recommended_vs_first_stage"]
                lines.append(f"| {src} | recommended - first stage ({row['first_stage']:.4f}) | | | "
                             f"{v['mean_diff']:+.4f} | {v['low']:+.4f}..{v['high']:+.4f} | {v['wins']}/{v['losses']} |")
        lines.append("")
    cas = r.get("cascade")
    if cas:
        lines += ["## Cascade (a head of M rescored by the baseline)", "",
                  f"Fusion {cas['fusion']}; the baseline alone: macro nDCG@10 {cas['second_alone_macro']:.4f}. "
                  "Head rules: score (the candidate's top M), rrf (the candidate's order fused with the first "
                  "stage's), order (no candidate: the baseline reranks the first stage's top M).", "",
                  "| head | M | macro nDCG@10 | vs baseline alone | per source (nDCG@10 or MAP) |",
                  "|---|---|---|---|---|"]
        for head, by_m in cas["by_head"].items():
            for m, row in by_m.items():
                per = ", ".join(f"{src} {v.get('ndcg@10', v.get('map')):.4f}"
                                for src, v in row["per_source"].items())
                lines.append(f"| {head} | {m} | {row['macro_ndcg@10']:.4f} | {row['vs_second_alone']:+.4f} | {per} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossrank.train.heldout", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="training run folder (its config.json names sources and split)")
    p.add_argument("--reranker", action="append", default=[], metavar="LABEL=SPEC",
                   help="reranker to score with (repeatable; the first is the baseline, the last the candidate)")
    p.add_argument("--index", action="append", default=[], metavar="SOURCE=DIR",
                   help="saved index of a BEIR source's corpus: its hybrid top-K are the candidates")
    p.add_argument("--max-length", action="append", default=[], metavar="LABEL=N", help="tokens per pair")
    p.add_argument("--backend", action="append", default=[], metavar="LABEL=NAME",
                   help="inference backend of a reranker, e.g. fast8=onnx-int8 (default: the fp32 one auto picks)")
    p.add_argument("--k", type=int, default=50, help="first-stage candidates per BEIR query (default: 50)")
    p.add_argument("--per-source", type=int, default=120, help="held-out queries per source (default: 120)")
    p.add_argument("--noanswer", type=int, default=600, help="SQuAD 2.0 no-answer questions sampled (default: 600)")
    p.add_argument("--baseline-fusion", default=None,
                   help="the baseline's own recommended setting, e.g. interpolate:0.3 (default: the chosen one)")
    p.add_argument("--baseline-calibration", default=None, metavar="HELDOUT_JSON",
                   help="the baseline's own fitted calibration (the heldout.json of its decision run): its scores "
                        "are then compared, and fused, on its shipped probability scale")
    p.add_argument("--cascade", default=None, metavar="M,M,...",
                   help="also score the cascade CANDIDATE>BASELINE@M for these M (the candidate's top M rescored "
                        "by the baseline, --baseline-fusion applied); needs --baseline-calibration")
    p.add_argument("--cascade-heads", default="score", metavar="HEAD,...",
                   help=f"head rules to score the cascades with: {', '.join(CASCADE_HEADS)} (default: score)")
    p.add_argument("--cascade-depths", default=None, metavar="S,S,...",
                   help="also score each cascade with the candidate on the first stage's top S only (the rest "
                        "after them in first-stage order); 'all' is every candidate (default: all)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    args.cascade_heads = [h.strip() for h in args.cascade_heads.split(",") if h.strip()]
    bad = [h for h in args.cascade_heads if h not in CASCADE_HEADS]
    if bad:
        p.error(f"unknown --cascade-heads {', '.join(bad)}: use {', '.join(CASCADE_HEADS)}")
    if args.cascade and not args.baseline_calibration:
        p.error("--cascade needs --baseline-calibration (both models' scores must be calibrated to be mixed)")
    args.cascade = [int(m) for m in args.cascade.split(",")] if args.cascade else None
    try:
        args.cascade_depths = [None if d.strip() == "all" else int(d) for d in (args.cascade_depths or "all").split(",")]
    except ValueError:
        p.error(f"--cascade-depths takes numbers or 'all', not {args.cascade_depths!r}")
    if any(d is not None and d < 1 for d in args.cascade_depths):
        p.error("--cascade-depths must be >= 1")
    args.max_length = {k: int(v) for k, v in (kv.split("=", 1) for kv in args.max_length)}
    args.backend = dict(kv.split("=", 1) for kv in args.backend)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        run(args)
    except CrossrankError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(Path(args.out) / "heldout.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
