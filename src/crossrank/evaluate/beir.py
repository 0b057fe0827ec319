"""The BEIR sweep: first stages x rerankers x fusions x K, with metrics, per-stage latency and answer accuracy.

Work is shared so that nothing is computed twice:

* each first stage retrieves ``max(ks)`` once per query (timed one query at a time, after a warm-up call);
  the list for K is its top-K prefix;
* each reranker scores the union of all first stages' top-``max(ks)`` candidates once per (query, document),
  through a persistent score cache (``cache.ScoreCache``), so adding a configuration or rerunning scores only
  what is new, and an interrupted run resumes;
* rerank latency is measured for real (wall clock of ``reranker.score(query, top-K texts)``) on
  ``latency_queries`` sampled queries per K. The samples of different K are disjoint when the dataset has enough
  queries and the timed calls fill the score cache, so timing costs no extra scoring; the first stage whose
  candidates are timed rotates over the retrievers. Timings are stored (``cache.LatencyStore``) and reused by
  reruns. Total latency of a configuration = its first-stage latency + rerank latency on the same sampled queries.

A reranked configuration reorders exactly the first-stage top-K (documents the first stage missed are never
credited); its Recall@K therefore equals the first stage's, reported as ``first_stage_recall@k`` (the ceiling).
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from crossrank.errors import IndexLoadError, InputError
from crossrank.evaluate._util import (
    as_list,
    latency_summary,
    load_reranker_spec,
    machine_info,
    progress_bars,
    r6,
    write_json,
)
from crossrank.evaluate.cache import LatencyStore, ScoreCache, reranker_fingerprint
from crossrank.evaluate.metrics import gold_answers, ranking_metrics, wins_losses_ties
from crossrank.rerank.base import as_reranker
from crossrank.retrieve.base import KIND_METHODS, KINDS
from crossrank.types import Candidate, first_per_document

SCHEMA_VERSION = 1
_SCORE_CHUNK = 64
_AUTO_FUSIONS = ("auto", "recommended")


# ------------------------------------------------------------------------------------------------- results
@dataclass
class EvalResults:
    """What ``evaluate_beir`` / ``evaluate_answer_selection`` return: the ``results.json`` content and its folder."""

    data: dict[str, Any]
    out_dir: Path

    @property
    def kind(self) -> str:
        return self.data["kind"]

    @property
    def configs(self) -> list[dict[str, Any]]:
        return self.data.get("configs", [])

    def config(self, retriever: str, reranker: str = "none", fusion: str = "none", k: int = 100) -> dict[str, Any]:
        for c in self.configs:
            if (c["retriever"], c["reranker"], c["fusion"], c["k"]) == (retriever, reranker, fusion, k):
                return c
        raise KeyError(f"no configuration {retriever}|{reranker}|{fusion}|{k}")

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def config_id(retriever: str, reranker: str, fusion: str, k: int) -> str:
    return f"{retriever}|{reranker}|{fusion}|{k}"


# ------------------------------------------------------------------------------------------------- helpers
def _fusion_label(f: Any) -> str:
    if f.method in ("interpolate", "confidence"):
        return f"{f.method}:{f.weight:g}"
    return f.method


def parse_fusions(specs: Any) -> list[Any]:
    """Fusion specs ("none", "rrf", "interpolate", "interpolate:0.7", "confidence:0.2", dicts, or "auto" = the
    reranker's recommended setting) -> list of ``crossrank.pipeline.Fusion`` or the string "auto"."""
    from crossrank.pipeline import Fusion

    out: list[Any] = []
    for s in as_list(specs, str, "fusions") or ["none"]:
        if isinstance(s, str) and s.strip().lower() in _AUTO_FUSIONS:
            out.append("auto")
        else:
            out.append(Fusion.parse(s))
    return out


def parse_rerank_max_k(spec: str | Mapping[str, int] | None, retrievers: Sequence[str] | None = None, *,
                       option: str = "rerank_max_k", among: str = "the retrievers") -> dict[str, int]:
    """``rerank_max_k`` (``{retriever: K}``, see :func:`evaluate_beir`) from a mapping or from the CLI's
    ``"bm25=100,dense=100"`` (``crossrank eval --rerank-max-k``), checked: every K a positive integer and, when
    ``retrievers`` is given, every name one of them. None or empty: ``{}``. ``option`` and ``among`` name the
    setting and the retrievers in the messages (the CLI's ``--rerank-max-k`` and ``--retrievers``)."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        caps: dict[str, Any] = {}
        for item in (v.strip() for v in spec.split(",")):
            if not item:
                continue
            name, sep, depth = item.partition("=")
            if not sep or not depth.strip().isdigit():
                raise InputError(f"{option} expects RETRIEVER=K pairs, got {item!r}")
            caps[name.strip()] = int(depth)
    else:
        caps = dict(spec)
    for name, cap in caps.items():
        if retrievers is not None and name not in retrievers:
            raise InputError(f"{option} names {name!r}, which is not among {among} ({', '.join(retrievers)})")
        if int(cap) < 1:
            raise InputError(f"{option} for {name} must be positive, got {cap}")
    return {name: int(cap) for name, cap in caps.items()}


def recommended_fusion(reranker: Any) -> tuple[Any, str]:
    """``(Fusion, why)``: the final order ``reranker`` recommends (:func:`crossrank.rerank.recommendation`, the
    same rule as the pipeline's ``fusion="auto"``), or the cross-encoder's order when it recommends none."""
    from crossrank.pipeline import resolve_fusion
    from crossrank.rerank import recommendation

    if "fusion" not in recommendation(reranker):
        return resolve_fusion("none", reranker), "reranker declares no recommended fusion; using none"
    return resolve_fusion("auto", reranker), "from the reranker's recommended settings"


def latency_plan(qids: Sequence[str], ks: Sequence[int], per_k: int, retrievers: Sequence[str],
                 max_k: Mapping[str, int] | None = None) -> dict[int, list[tuple[str, str]]]:
    """``{K: [(qid, retriever), ...]}``: ``per_k`` sampled queries per K (seeded; disjoint across K while the
    dataset has enough queries), the first stage whose candidates are timed rotating over ``retrievers`` (those
    reranked at this K: ``max_k`` caps a retriever's reranked depth)."""
    order = list(qids)
    random.Random(0).shuffle(order)
    plan: dict[int, list[tuple[str, str]]] = {}
    if not order or per_k <= 0 or not retrievers:
        return {k: [] for k in ks}
    pos = 0
    for k in ks:
        take = min(per_k, len(order))
        sel = [order[(pos + i) % len(order)] for i in range(take)]
        pos += take
        eligible = [r for r in retrievers if k <= (max_k or {}).get(r, k)]
        plan[k] = [(q, eligible[i % len(eligible)]) for i, q in enumerate(sel)] if eligible else []
    return plan


def rerank_prefix(candidates: Sequence[Candidate], k: int, rerank_scores: Sequence[float], fusion: Any,
                  depth: int | None = None) -> list[Candidate]:
    """The final list of a reranked configuration: the first-stage top-``k`` reordered by the fused score
    (``crossrank.pipeline.fuse``), ties kept in first-stage order. Nothing outside the top-``k`` can enter.
    With a rerank ``depth`` below ``k`` (a reranker's recommended ``rerank_depth``) only the top ``depth`` are
    reordered and the rest follow in first-stage order, as the pipeline does; ``rerank_scores`` cover those."""
    from crossrank.pipeline import fuse

    tail = list(candidates[depth:k]) if depth is not None and depth < k else []
    head = list(candidates[: k if not tail else depth])
    if not head:
        return []
    if len(rerank_scores) != len(head) or any(s is None for s in rerank_scores):
        raise RuntimeError("internal error: a candidate of the top-K has no rerank score")
    fused = fuse([c.score for c in head], [float(s) for s in rerank_scores], fusion)
    order = sorted(range(len(head)), key=lambda i: (-fused[i], i))
    return [head[i] for i in order] + tail


def write_trec_run(path: Path, lists: Mapping[str, Sequence[Candidate]], tag: str) -> None:
    """A TREC run file (``qid Q0 doc_id rank score tag``; score = K - rank + 1 so the order is explicit)."""
    lines = []
    for q, cands in lists.items():
        n = len(cands)
        for pos, c in enumerate(cands, start=1):
            lines.append(f"{q} Q0 {c.doc_id} {pos} {n - pos + 1} {tag}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")


# ------------------------------------------------------------------------------------------------- index
def _same_corpus(index: Any, corpus: Sequence[Any]) -> bool:
    """Whether a whole-document index holds exactly these documents (ids, titles and texts)."""
    have = {(p.doc_id, p.title, p.text) for p in index.passages}
    return have == {(d.id, d.title, d.text) for d in corpus}


def _say_building(n_docs: int, methods: Sequence[str], path: Path, progress: bool) -> None:
    if progress:
        print(f"building the {'+'.join(methods)} index of all {n_docs} documents into {path} (the whole corpus, "
              "even with --max-queries, for a fair ranking): this is the slow part; later runs with the same "
              "--out reuse it, and --index DIR reuses one built by 'crossrank index CORPUS --out DIR "
              "--chunk-tokens 0'", file=sys.stderr, flush=True)


def _open_index(ds: Any, out_dir: Path, index_dir: Path | None, methods: Sequence[str], progress: bool) -> tuple[Any, dict]:
    from crossrank.retrieve import build_index, load_index

    path = Path(index_dir) if index_dir is not None else out_dir / "index"
    note = ""
    index = None
    if path.exists():
        try:
            index = load_index(path)
        except IndexLoadError as e:
            if index_dir is not None:
                raise
            note = f"cached index unusable ({e}); rebuilt"
            index = None
    if index is not None:
        m = index.manifest
        have = set(index.methods)
        chunked = int(m.get("chunking", {}).get("max_tokens", 0) or 0)
        docs = int(m.get("counts", {}).get("documents", -1))
        if not set(methods) <= have:
            if index_dir is not None:
                raise InputError(
                    f"index {path} has methods {sorted(have)} but {sorted(set(methods))} are needed; "
                    "rebuild it with those methods or drop the retrievers that need them"
                )
            note = f"cached index lacked {sorted(set(methods) - have)}; rebuilt"
            index = None
        elif index_dir is None and (chunked != 0 or docs != len(ds.corpus) or not _same_corpus(index, ds.corpus)):
            note = "cached index did not match the corpus (chunking, documents or their texts); rebuilt"
            index = None
        else:
            note = note or "loaded"
    built = index is None
    t0 = time.perf_counter()
    if index is None:
        _say_building(len(ds.corpus), methods, path, progress)
        # on a terminal the encoder draws a bar; in a pipe or log it prints a line with rate and ETA now and then
        index = build_index(ds.corpus, out_dir=path, methods=tuple(methods), chunk_tokens=0, progress=progress)
    elif progress:
        print(f"reusing the index at {path}", file=sys.stderr)
        note = note or "built"
    m = index.manifest
    return index, {
        "path": str(path),
        "status": note,
        "built_s": round(time.perf_counter() - t0, 3) if built else None,
        "methods": list(index.methods),
        "chunk_tokens": int(m.get("chunking", {}).get("max_tokens", 0) or 0),
        "passages": int(m.get("counts", {}).get("passages", len(index))),
        "dense_model": (m.get("dense") or {}).get("model_id"),
    }


# ------------------------------------------------------------------------------------------------- the sweep
def evaluate_beir(
    dataset_dir: str | os.PathLike,
    *,
    split: str = "test",
    retrievers: Any = ("bm25", "dense", "hybrid"),
    rerankers: Any = ("none", "default"),
    ks: Any = (10, 20, 50, 100, 200),
    ns: Any = (5, 10, 20),
    fusions: Any = ("none",),
    rerank_max_k: str | Mapping[str, int] | None = None,
    out_dir: str | os.PathLike,
    index_dir: str | os.PathLike | None = None,
    max_queries: int | None = None,
    latency_queries: int = 30,
    progress: bool = True,
    reranker_options: Mapping[str, Any] | None = None,
    llm: Any = None,
    remeasure_latency: bool = False,
    save_runs: bool = False,
    write_reports: bool = True,
) -> EvalResults:
    """Evaluate first stages, rerankers and fusions at every K on a BEIR-layout dataset; write
    ``results.json``, ``per_query.json``, ``report.md`` and ``report.html`` into ``out_dir``.

    Args:
        retrievers: names ("bm25", "dense", "hybrid") served from an index of the corpus (whole documents, built
            once and cached in ``out_dir/index`` or read from ``index_dir``), or ``Retriever`` objects.
        rerankers: "none" (first stage alone; always reported), "default" (bundled model), a model folder or hub id
            (loaded with ``crossrank.rerank.load_reranker(spec, **reranker_options)``), or ``Reranker`` objects.
        ks: first-stage depths K (the reranker reorders the top-K). ``ns``: passages handed on (answer accuracy).
        fusions: "none" (cross-encoder order), "rrf", "interpolate[:w]" (w on the cross-encoder), "confidence[:w]"
            (w times the best relevance), "auto" (the reranker's recommended setting).
        rerank_max_k: ``{retriever: K}`` (or ``"bm25=100,dense=100"``, :func:`parse_rerank_max_k`): rerank that
            first stage only at depths up to K (its first-stage rows are still reported at every K). Scoring cost is the union of every first stage's reranked top-K, so
            capping the first stages you care less about keeps a deep sweep of the main one affordable.
        max_queries: evaluate the first M judged queries only. ``latency_queries``: rerank timing sample per K.
        llm: None (off), True (configure from the environment) or a dict (``base_url``, ``model``, ``api_key``,
            ``timeout_s``, ``concurrency``, ``ks`` (default: the largest K), ``ns`` (default: ``ns``),
            ``max_queries``) for end-to-end LLM answer accuracy on datasets whose queries carry answers.
        remeasure_latency: re-time the rerank samples even when stored timings exist.
        save_runs: also write every configuration's final lists as TREC run files in ``out_dir/runs/``.
    """
    sweep = _prepare(dataset_dir, split=split, retrievers=retrievers, rerankers=rerankers, ks=ks, ns=ns,
                     fusions=fusions, out_dir=out_dir, max_queries=max_queries, latency_queries=latency_queries,
                     progress=progress, reranker_options=reranker_options, remeasure_latency=remeasure_latency)
    stages = _first_stages(sweep, rerank_max_k, Path(index_dir) if index_dir else None)
    plan = latency_plan(sweep.qids, sweep.ks, latency_queries, stages.names, stages.caps)
    scored: list[_Scored] = []
    for spec in sweep.reranker_specs:
        scored.append(_score_reranker(sweep, stages, plan, spec, {s.label for s in scored}))
    rows = _rows(sweep, stages, plan, scored)
    answer_info = _answers(sweep, rows, llm)
    data = _results_data(sweep, stages, scored, rows, answer_info)
    return _write(sweep, data, rows, save_runs=save_runs, write_reports=write_reports)


@dataclass
class _Sweep:
    """A sweep's checked settings and the judged queries it runs on (loaded once, read by every stage)."""

    ds: Any
    dataset_dir: Path
    split: str
    out_dir: Path
    ks: list[int]
    ns: list[int]
    retriever_specs: list[Any]
    reranker_specs: list[Any]
    fusion_specs: list[Any]
    qids: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    answers: dict[str, list[str]]
    max_queries: int | None
    latency_queries: int
    progress: bool
    reranker_options: Mapping[str, Any] | None
    remeasure_latency: bool
    machine: dict[str, Any]
    started: float
    t_start: float

    @property
    def max_k(self) -> int:
        return max(self.ks)

    @property
    def has_answers(self) -> bool:
        return any(self.answers.values())


@dataclass
class _FirstStages:
    """Each first stage's top-``max(ks)`` per query (``runs``), its per-query latency in ms, its failed queries,
    the depth it is reranked to (``caps``) and the index it was served from."""

    runs: dict[str, dict[str, list[Candidate]]]
    ms: dict[str, dict[str, float]]
    failures: dict[str, int]
    caps: dict[str, int]
    index_info: dict[str, Any] | None

    @property
    def names(self) -> list[str]:
        return list(self.runs)


@dataclass
class _Scored:
    """One reranker after scoring: its scores of the union, its fusions ``(label, Fusion, note)``, its timed
    latency ``{K: {qid: ms}}``, its rerank depth and its ``rerankers`` entry of ``results.json``."""

    label: str
    scores: Mapping[tuple[str, str], float]
    fusions: list[tuple[str, Any, str]]
    latency: dict[int, dict[str, float]]
    depth: int | None
    info: dict[str, Any]


@dataclass
class _Rows:
    """Every configuration's ``results.json`` row, nDCG@10 per query and final lists, keyed by configuration id."""

    configs: list[dict[str, Any]] = field(default_factory=list)
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    lists: dict[str, dict[str, list[Candidate]]] = field(default_factory=dict)
    answer_hits: dict[str, dict[str, int | None]] = field(default_factory=dict)


def _prepare(dataset_dir: str | os.PathLike, *, split: str, retrievers: Any, rerankers: Any, ks: Any, ns: Any,
             fusions: Any, out_dir: str | os.PathLike, max_queries: int | None, latency_queries: int, progress: bool,
             reranker_options: Mapping[str, Any] | None, remeasure_latency: bool) -> _Sweep:
    """The options checked (an ``InputError`` before anything slow runs) and the dataset's judged queries."""
    from crossrank.corpus import load_beir

    started = time.time()
    t_start = time.perf_counter()
    machine = machine_info()  # the load average is taken now, before the run adds to it
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.exists():
        raise InputError(f"dataset folder not found: {dataset_dir}")
    ks = sorted(set(as_list(ks, int, "ks")))
    ns = sorted(set(as_list(ns, int, "ns")))
    if not ks:
        raise InputError("ks: give at least one K")
    if max_queries is not None and int(max_queries) < 1:
        raise InputError(f"max_queries must be positive, got {max_queries}")
    retriever_specs = as_list(retrievers, str, "retrievers")
    if not retriever_specs:
        raise InputError("give at least one retriever (bm25, dense, hybrid)")
    for r in retriever_specs:
        if isinstance(r, str) and r not in KINDS:
            raise InputError(f"unknown retriever {r!r}; choose from {', '.join(KINDS)}")
    reranker_specs = [r for r in as_list(rerankers, str, "rerankers") if not (isinstance(r, str) and r == "none")]
    fusion_specs = parse_fusions(fusions)

    ds = load_beir(dataset_dir, split)
    qids = list(ds.queries)
    if max_queries is not None:
        qids = qids[: int(max_queries)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _Sweep(
        ds=ds, dataset_dir=dataset_dir, split=split, out_dir=out_dir, ks=ks, ns=ns, retriever_specs=retriever_specs,
        reranker_specs=reranker_specs, fusion_specs=fusion_specs, qids=qids,
        queries={q: ds.queries[q] for q in qids}, qrels={q: ds.qrels[q] for q in qids},
        answers={q: gold_answers(ds.query_metadata.get(q)) for q in qids}, max_queries=max_queries,
        latency_queries=latency_queries, progress=progress, reranker_options=reranker_options,
        remeasure_latency=remeasure_latency, machine=machine, started=started, t_start=t_start)


# ---- stage 1: first-stage runs
def _first_stages(sweep: _Sweep, rerank_max_k: str | Mapping[str, int] | None,
                  index_dir: Path | None) -> _FirstStages:
    """Every first stage's top-``max(ks)`` for every query, each query timed on its own after a warm-up call."""
    retr_objs, index_info = _retrievers(sweep, index_dir)
    caps = _rerank_caps(list(retr_objs), rerank_max_k, sweep.max_k)
    stages = _FirstStages(runs={}, ms={}, failures={}, caps=caps, index_info=index_info)
    with progress_bars(sweep.progress) as bars:
        for rname, retr in retr_objs.items():
            try:
                retr.search("warm up", k=min(10, sweep.max_k))  # lazy model loads stay out of the timings
            except Exception:  # noqa: BLE001
                pass
            task = bars.add_task(f"retrieve {rname} (k={sweep.max_k})", total=len(sweep.qids))
            stages.runs[rname], stages.ms[rname], stages.failures[rname] = {}, {}, 0
            for q in sweep.qids:
                t0 = time.perf_counter()
                try:
                    cands = retr.search(sweep.queries[q], k=sweep.max_k)
                except InputError:
                    cands, stages.failures[rname] = [], stages.failures[rname] + 1
                stages.ms[rname][q] = (time.perf_counter() - t0) * 1000.0
                stages.runs[rname][q] = first_per_document(cands)
                bars.advance(task)
    return stages


def _retrievers(sweep: _Sweep, index_dir: Path | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``({name: Retriever}, index info)``: named first stages served from one index of the corpus, then the
    ``Retriever`` objects given."""
    named = [r for r in sweep.retriever_specs if isinstance(r, str)]
    index_info = None
    retr_objs: dict[str, Any] = {}
    if named:
        methods = sorted({m for r in named for m in KIND_METHODS[r]})
        index, index_info = _open_index(sweep.ds, sweep.out_dir, index_dir, methods, sweep.progress)
        for r in named:
            retr_objs[r] = index.retriever(r)
    for r in sweep.retriever_specs:
        if not isinstance(r, str):
            retr_objs[str(getattr(r, "name", type(r).__name__))] = r
    return retr_objs, index_info


def _rerank_caps(names: list[str], rerank_max_k: str | Mapping[str, int] | None, max_k: int) -> dict[str, int]:
    """``{retriever: deepest K reranked}``: ``max_k`` unless ``rerank_max_k`` caps it."""
    caps = {r: max_k for r in names}
    for r, cap in parse_rerank_max_k(rerank_max_k, names).items():
        caps[r] = min(cap, max_k)
    return caps


# ---- stage 2: scoring the union of candidates
def _score_reranker(sweep: _Sweep, stages: _FirstStages, plan: Mapping[int, list[tuple[str, str]]], spec: Any,
                    taken: set[str]) -> _Scored:
    """Load one reranker, time it on the latency sample (which fills its score cache), score the rest of the
    union of all first stages' candidates, and let it go."""
    from crossrank.pipeline import resolve_rerank_depth

    label, given = load_reranker_spec(spec, sweep.reranker_options)
    fp = reranker_fingerprint(spec, given)
    reranker = as_reranker(given)  # the full protocol from here on
    depth = resolve_rerank_depth("auto", reranker)  # the pipeline's rule: rerank at most this many
    label = _unique_label(label, taken)
    cache = ScoreCache.for_reranker(sweep.out_dir, sweep.ds.name, label, fp)
    store = LatencyStore.for_reranker(sweep.out_dir, sweep.ds.name, label, fp)
    loaded = cache.loaded
    with progress_bars(sweep.progress) as bars:
        stats = _time_sample(sweep, stages, plan, reranker, label, depth, cache, store, bars)
        total, score_s = _score_union(sweep, stages, reranker, label, depth, cache, bars)
    lat: dict[int, dict[str, float]] = {k: {} for k in sweep.ks}
    for k in sweep.ks:
        for q, _r in plan[k]:
            m = store.get(k, q)
            if m is not None:
                lat[k][q] = float(m["ms"])
    fusions = _fusions_for(reranker, sweep.fusion_specs)
    info = {
        "spec": str(spec) if isinstance(spec, (str, os.PathLike)) else label,
        "name": str(reranker.name),
        "fingerprint": fp,
        "cache_file": str(cache.path),
        "pairs_in_cache_before": loaded,
        "pairs_scored": cache.written,
        "pairs_scored_in_sweep": total,
        "sweep_scoring_s": round(score_s, 3),
        "pairs_per_s": round(total / score_s, 2) if total and score_s > 0 else None,
        "latency_ms": {str(k): latency_summary(lat[k].values()) for k in sweep.ks},
        "latency_sample": {"queries_per_k": sweep.latency_queries, **stats},
        "fusions": {lab: note for lab, _, note in fusions if note},
        "rerank_depth": depth,
        "info": reranker.info(),
    }
    return _Scored(label=label, scores=cache.scores, fusions=fusions, latency=lat, depth=depth, info=info)


def _unique_label(label: str, taken: set[str]) -> str:
    """``label``, or ``label-2``, ``label-3``, ... when an earlier reranker has it."""
    base, i = label, 2
    while label in taken:
        label = f"{base}-{i}"
        i += 1
    return label


def _time_sample(sweep: _Sweep, stages: _FirstStages, plan: Mapping[int, list[tuple[str, str]]], reranker: Any,
                 label: str, depth: int | None, cache: ScoreCache, store: LatencyStore, bars: Any) -> dict[str, int]:
    """Time ``reranker.score`` on the sampled queries of each K without a stored timing; the scores go to the
    cache, so timing costs no extra scoring. Returns the ``latency_sample`` counts."""
    stats = {"timed_calls": 0, "timings_reused": 0, "pairs_recomputed_for_timing": 0, "timed_cache_hits": 0}
    todo = [(k, q, r) for k in sweep.ks for q, r in plan[k] if sweep.remeasure_latency or store.get(k, q) is None]
    if todo:
        reranker.score("warm up", ["warm up"])  # synthetic pair: model load / first-call costs stay out
        per_k = max(len(plan[k]) for k in sweep.ks)  # the sample actually timed (fewer under --max-queries)
        task = bars.add_task(f"time {label} ({len(sweep.ks)} K x {per_k} queries)", total=len(todo))
        for k, q, r in todo:
            cands = stages.runs[r][q][: min(k, depth or k)]
            if not cands:
                bars.advance(task)
                continue
            ids = [c.id for c in cands]
            stats["pairs_recomputed_for_timing"] += len(ids) - len(cache.missing(q, ids))
            t0 = time.perf_counter()
            res = reranker.score(sweep.queries[q], [c.full_text for c in cands])
            ms = (time.perf_counter() - t0) * 1000.0
            hits = res.cache_hits
            stats["timed_calls"] += 1
            stats["timed_cache_hits"] += hits
            cache.put(q, ids, list(res))
            store.put(k, q, ms, r, pairs=len(ids), cache_hits=hits)
            bars.advance(task)
    stats["timings_reused"] = sum(len(plan[k]) for k in sweep.ks) - len(todo)
    return stats


def _score_union(sweep: _Sweep, stages: _FirstStages, reranker: Any, label: str, depth: int | None,
                 cache: ScoreCache, bars: Any) -> tuple[int, float]:
    """Score every (query, document) of the first stages' reranked candidates that the cache lacks, once;
    ``(pairs scored, seconds)``. The cache is closed afterwards (its scores stay readable)."""
    missing: dict[str, list[Candidate]] = {}
    for q in sweep.qids:
        seen: dict[str, Candidate] = {}
        for r in stages.names:
            cap = stages.caps[r]
            for c in stages.runs[r][q][: min(cap, depth or cap)]:
                seen.setdefault(c.id, c)
        need = [c for pid, c in seen.items() if (q, pid) not in cache]
        if need:
            missing[q] = need
    total = sum(len(v) for v in missing.values())
    task = bars.add_task(f"rerank {label} ({total} new pairs)", total=total)
    t_score = time.perf_counter()
    try:
        for q, need in missing.items():
            for i0 in range(0, len(need), _SCORE_CHUNK):
                chunk = need[i0 : i0 + _SCORE_CHUNK]
                res = reranker.score(sweep.queries[q], [c.full_text for c in chunk])
                cache.put(q, [c.id for c in chunk], list(res))
                bars.advance(task, len(chunk))
    finally:
        cache.close()
    return total, time.perf_counter() - t_score


def _fusions_for(reranker: Any, fusion_specs: Sequence[Any]) -> list[tuple[str, Any, str]]:
    """``(label, Fusion, note)`` per fusion asked for ("auto" resolved for this reranker), duplicates dropped."""
    out: list[tuple[str, Any, str]] = []
    for f in fusion_specs:
        if f == "auto":
            fz, why = recommended_fusion(reranker)
            item = (_fusion_label(fz), fz, f"auto: {why}")
        else:
            item = (_fusion_label(f), f, "")
        if item[0] not in {x[0] for x in out}:
            out.append(item)
    return out


# ---- stage 3: result rows
def _rows(sweep: _Sweep, stages: _FirstStages, plan: Mapping[int, list[tuple[str, str]]],
          scored: Sequence[_Scored]) -> _Rows:
    """One row per configuration: each first stage alone at every K, then every reranker x fusion x first stage
    at every K up to that first stage's cap."""
    rows = _Rows()
    fs_rows: dict[tuple[str, int], dict[str, Any]] = {}
    fs_ndcg: dict[tuple[str, int], dict[str, float]] = {}
    for r in stages.names:
        fs_lat = latency_summary(stages.ms[r].values())
        for k in sweep.ks:
            lists = {q: stages.runs[r][q][:k] for q in sweep.qids}
            latency = {"retrieve": fs_lat, "rerank": None, "total": fs_lat,
                       "retrieve_on_sample": latency_summary([stages.ms[r][q] for q, _ in plan[k]])}
            fs_rows[r, k], fs_ndcg[r, k] = _add_row(sweep, rows, (r, "none", "none", k), lists, None, None, latency)
    for s in scored:
        for flabel, fusion, _note in s.fusions:
            for r in stages.names:
                for k in sweep.ks:
                    if k > stages.caps[r]:
                        continue
                    head = min(k, s.depth or k)
                    lists = {q: rerank_prefix(stages.runs[r][q], k,
                                              [s.scores.get((q, c.id)) for c in stages.runs[r][q][:head]], fusion,
                                              s.depth) for q in sweep.qids}
                    timed = [q for q, _ in plan[k] if q in s.latency[k]]
                    base = fs_rows[r, k]
                    latency = {"retrieve": base["latency_ms"]["retrieve"],
                               "rerank": latency_summary([s.latency[k][q] for q in timed]),
                               "total": latency_summary([stages.ms[r][q] + s.latency[k][q] for q in timed]),
                               "retrieve_on_sample": base["latency_ms"]["retrieve_on_sample"]}
                    _add_row(sweep, rows, (r, s.label, flabel, k), lists, base, fs_ndcg[r, k], latency)
    return rows


def _add_row(sweep: _Sweep, rows: _Rows, key: tuple[str, str, str, int], lists: dict[str, list[Candidate]],
             base: dict[str, Any] | None, base_ndcg: Mapping[str, float] | None,
             latency: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """Add the row of configuration ``key`` = (retriever, reranker, fusion, K) with final ``lists``; ``base`` is
    its first stage's row at K (None: this is that row). Returns the row and its nDCG@10 per query."""
    r, reranker, fusion, k = key
    means, pq = ranking_metrics(sweep.qrels, {q: [c.doc_id for c in v] for q, v in lists.items()},
                                ["ndcg@10", "mrr@10", "map@100", f"recall@{k}"])
    metrics = {"ndcg@10": r6(means["ndcg@10"]), "mrr@10": r6(means["mrr@10"]), "map@100": r6(means["map@100"]),
               "recall@k": r6(means[f"recall@{k}"])}
    cid = config_id(*key)
    if base is None:
        versus: dict[str, Any] = {"first_stage_recall@k": metrics["recall@k"], "first_stage_ndcg@10": metrics["ndcg@10"],
                                  "delta_ndcg@10": 0.0, "wins": None, "losses": None, "ties": None}
    else:
        versus = {"first_stage_recall@k": base["first_stage_recall@k"],
                  "first_stage_ndcg@10": base["first_stage_ndcg@10"],
                  "delta_ndcg@10": r6(means["ndcg@10"] - base["metrics"]["ndcg@10"]),
                  **wins_losses_ties(base_ndcg or {}, pq["ndcg@10"])}
    row = {"id": cid, "retriever": r, "reranker": reranker, "fusion": fusion, "k": k, "metrics": metrics,
           **versus, "latency_ms": latency}
    rows.configs.append(row)
    rows.per_query[cid] = {q: r6(v) for q, v in pq["ndcg@10"].items()}
    rows.lists[cid] = lists
    return row, pq["ndcg@10"]


# ---- stage 4: answers
def _answers(sweep: _Sweep, rows: _Rows, llm: Any) -> dict[str, Any] | None:
    """Answer-in-top-N on every row (datasets whose queries carry answers), and LLM answer accuracy if asked."""
    if not sweep.has_answers:
        return None
    from crossrank.evaluate.answers import PassageMatcher, answer_first_hits, share_in_top_n

    matcher = PassageMatcher()
    for c in rows.configs:
        lists = rows.lists[c["id"]]
        valid = [n for n in sweep.ns if n <= c["k"]]
        passages = {q: [(x.id, x.title, x.text) for x in v] for q, v in lists.items()}
        hits = rows.answer_hits[c["id"]] = answer_first_hits(passages, sweep.answers, c["k"], matcher)
        acc = share_in_top_n(hits, valid) if valid else {}
        c["answer_in_top_n"] = {str(n): (r6(acc[n]) if n in acc else None) for n in sweep.ns}
    info: dict[str, Any] = {
        "questions_with_answers": sum(1 for q in sweep.qids if sweep.answers[q]), "ns": sweep.ns,
        "normalisation": "SQuAD v1.1 (lower-case, no punctuation, no articles, single spaces); a passage holds "
                         "the answer when the normalised answer occurs in its normalised title + text as whole "
                         "tokens"}
    if llm:
        info["llm"] = _run_llm(llm, rows.configs, rows.lists, sweep.queries, sweep.answers, sweep.ks, sweep.ns,
                               sweep.out_dir, sweep.progress)
    return info


# ---- stage 5: the report
def _results_data(sweep: _Sweep, stages: _FirstStages, scored: Sequence[_Scored], rows: _Rows,
                  answer_info: dict[str, Any] | None) -> dict[str, Any]:
    """The content of ``results.json`` (``duration_s`` is set when it is written)."""
    ds, qrels = sweep.ds, sweep.qrels
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "beir",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(sweep.started)),
        "duration_s": None,
        "dataset": {"name": ds.name, "path": str(sweep.dataset_dir.resolve()), "split": sweep.split,
                    "n_queries": len(sweep.qids), "n_queries_in_split": len(ds.queries), "n_docs": len(ds.corpus),
                    "n_judgments": sum(len(v) for v in qrels.values()), "has_answers": sweep.has_answers,
                    "graded": any(s > 1 for v in qrels.values() for s in v.values())},
        "settings": {"retrievers": stages.names, "rerankers": [s.label for s in scored],
                     "fusions": sorted({c["fusion"] for c in rows.configs}), "ks": sweep.ks, "ns": sweep.ns,
                     "rerank_max_k": stages.caps, "max_queries": sweep.max_queries,
                     "latency_queries": sweep.latency_queries, "unit": "document", "metrics_library": "ranx"},
        "machine": sweep.machine,
        "index": stages.index_info,
        "first_stage": {r: {"depth": sweep.max_k, "latency_ms": latency_summary(stages.ms[r].values()),
                            "failed_queries": stages.failures[r]} for r in stages.names},
        "rerankers": {s.label: s.info for s in scored},
        "answers": answer_info,
        "configs": rows.configs,
    }


def _write(sweep: _Sweep, data: dict[str, Any], rows: _Rows, *, save_runs: bool, write_reports: bool) -> EvalResults:
    """``results.json``, ``per_query.json``, the TREC runs if asked and the reports, into ``out_dir``."""
    out_dir = sweep.out_dir
    if save_runs:
        from crossrank.evaluate._util import slug

        for cid, lists in rows.lists.items():
            write_trec_run(out_dir / "runs" / f"{slug(cid.replace('|', '__'), 120)}.trec", lists, slug(cid, 120))
    data["duration_s"] = round(time.perf_counter() - sweep.t_start, 3)
    write_json(out_dir / "results.json", data)
    per_query: dict[str, Any] = {"metric": "ndcg@10", "per_query": rows.per_query}
    if rows.answer_hits:
        per_query["answer_first_hit"] = rows.answer_hits
    write_json(out_dir / "per_query.json", per_query)
    results = EvalResults(data=data, out_dir=out_dir)
    if write_reports:
        from crossrank.evaluate.report import write_reports as _write_reports

        _write_reports(results)
    return results


def _run_llm(llm: Any, configs: list[dict], final_lists: Mapping[str, Mapping[str, list[Candidate]]],
             queries: Mapping[str, str], answers: Mapping[str, Sequence[str]], ks: Sequence[int],
             ns: Sequence[int], out_dir: Path, progress: bool) -> dict[str, Any]:
    from crossrank.evaluate.answers import LLMAnswerCache, LLMConfig, llm_answer_accuracy, llm_cache_path

    opts = dict(llm) if isinstance(llm, Mapping) else {}
    cfg = LLMConfig.from_options(opts)
    llm_ks = sorted(set(as_list(opts.get("ks"), int, "llm ks") or [max(ks)]))
    llm_ns = sorted(set(as_list(opts.get("ns"), int, "llm ns") or list(ns)))
    qids = [q for q in queries if answers.get(q)]
    if opts.get("max_queries"):
        qids = qids[: int(opts["max_queries"])]
    requests: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {}
    for c in configs:
        if c["k"] not in llm_ks:
            continue
        for n in llm_ns:
            if n > c["k"]:
                continue
            for q in qids:
                ps = [(x.id, x.title, x.text) for x in final_lists[c["id"]][q][:n]]
                requests[f"{c['id']}#{n}#{q}"] = (q, queries[q], ps)
    cache = LLMAnswerCache(llm_cache_path(out_dir, cfg))
    unique = len({LLMAnswerCache.key(q, [p[0] for p in ps]) for q, _, ps in requests.values()})
    with progress_bars(progress) as bars:
        task = bars.add_task(f"LLM answers ({unique} distinct prompts)", total=unique)
        got = llm_answer_accuracy(requests, answers, cfg, cache=cache, on_done=lambda: bars.advance(task))
    errors = 0
    for c in configs:
        if c["k"] not in llm_ks:
            continue
        res = {}
        for n in llm_ns:
            rows = [got[f"{c['id']}#{n}#{q}"] for q in qids if f"{c['id']}#{n}#{q}" in got]
            if not rows:
                continue
            errors += sum(1 for x in rows if x["error"])
            res[str(n)] = {"exact": r6(sum(x["exact"] for x in rows) / len(rows)),
                           "contains": r6(sum(x["contains"] for x in rows) / len(rows)),
                           "errors": sum(1 for x in rows if x["error"]), "n_questions": len(rows)}
        c["llm_answer_accuracy"] = res
    return {**cfg.public(), "ks": llm_ks, "ns": llm_ns, "n_questions": len(qids), "distinct_prompts": unique,
            "request_errors": errors, "cache_file": str(cache.path)}
