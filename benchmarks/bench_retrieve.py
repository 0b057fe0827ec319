"""First-stage and end-to-end latency on SciFact: crossrank's BM25Retriever vs raw bm25s (same index files, same
tokenisation), hybrid retrieval per query, and the whole ``Pipeline`` (hybrid K=100 -> rerank -> N=10).

* BM25: every SciFact test query, one at a time, through ``BM25Retriever.search(q, k)`` and through bm25s's own API
  on the same index directory (``bm25s.BM25.load`` + ``bm25s.tokenize(q, stopwords="en", stemmer=english)`` +
  ``retrieve``); the two are alternated per query; also raw bm25s on all queries in one batched call (its best
  case, amortised per query). Target: crossrank within 1.5x of raw bm25s per query.
* hybrid: ``index.retriever("hybrid").search(q, 100)`` per query (BM25 + dense query encoding + RRF), after one
  warm-up query, with the default query encoder (ONNX Runtime on CPU) alternated query by query with
  ``query_backend="torch"`` (sentence-transformers), the peer. Target: median < 20 ms.
* pipeline: ``Pipeline(hybrid, load_reranker(model, cache_size=0), k=100, n=10).search(q)`` on ``--pipeline-queries``
  queries (score cache off, so every call really reranks); median and p95 of total, retrieve and rerank time.

    python benchmarks/bench_retrieve.py                       # default index, bundled reranker
    python benchmarks/bench_retrieve.py --pipeline-queries 0  # first stage only

Results: ``benchmarks/results/bench_retrieve.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_rerank import SHARED, cpu_info, find_index, load_scifact, ndcg_at_10, versions  # noqa: E402


def stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000.0
    return {"n": len(xs), "median_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default=None)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--queries", type=int, default=0, help="BM25/hybrid queries (0: all SciFact test queries)")
    ap.add_argument("--model", default="default", help="reranker for the pipeline (load_reranker spec)")
    ap.add_argument("--backend", default="auto", help="reranker backend for the pipeline")
    ap.add_argument("--pipeline-queries", type=int, default=20)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default="bench_retrieve")
    args = ap.parse_args(argv)

    machine = cpu_info()
    print(f"CPU: {machine['model']} | {machine['cores']} cores | load {machine['loadavg_start']}", flush=True)
    queries, qrels = load_scifact(SHARED / "scifact")
    qids = list(queries)[: args.queries or None]
    qtexts = [queries[q] for q in qids]
    index_dir = find_index(args.index)

    from crossrank.retrieve import load_index

    t0 = time.perf_counter()
    index = load_index(index_dir)
    load_s = time.perf_counter() - t0
    report: dict[str, Any] = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine, "versions": versions(), "index": str(index_dir),
                              "index_load_s": load_s, "queries": len(qids), "k": args.k}

    # ---------------------------------------------------------------- BM25: crossrank vs raw bm25s
    import bm25s
    import Stemmer

    ours = index.bm25()
    raw = bm25s.BM25.load(str(index_dir / "bm25"), mmap=True, allow_pickle=False, load_corpus=False,
                          show_progress=False)
    stemmer = Stemmer.Stemmer("english")

    def raw_search(q: str):
        toks = bm25s.tokenize([q], stopwords="en", stemmer=stemmer, show_progress=False)
        return raw.retrieve(toks, k=args.k, show_progress=False, n_threads=1)

    ours.search(qtexts[0], args.k)
    raw_search(qtexts[0])
    t_ours, t_raw, same_top = [], [], []
    for i, q in enumerate(qtexts):
        pair = [("ours", lambda: ours.search(q, args.k)), ("raw", lambda: raw_search(q))]
        if i % 2:
            pair.reverse()
        got: dict[str, Any] = {}
        for name, fn in pair:
            t0 = time.perf_counter()
            got[name] = fn()
            (t_ours if name == "ours" else t_raw).append(time.perf_counter() - t0)
        raw_docs, raw_scores = got["raw"]
        raw_ids = [ours.passages[int(j)].id for j, s in zip(raw_docs[0][:10], raw_scores[0][:10]) if s > 0]
        same_top.append([c.id for c in got["ours"][:10]] == raw_ids)
    t0 = time.perf_counter()
    toks = bm25s.tokenize(qtexts, stopwords="en", stemmer=stemmer, show_progress=False)
    raw.retrieve(toks, k=args.k, show_progress=False, n_threads=1)
    batched = (time.perf_counter() - t0) / len(qtexts)
    bm = {"crossrank": stats(t_ours), "bm25s": stats(t_raw), "bm25s_batched_per_query_ms": batched * 1000.0,
          "top10_identical": statistics.mean(same_top)}
    bm["ratio_median"] = bm["crossrank"]["median_ms"] / bm["bm25s"]["median_ms"]
    bm["within_1.5x"] = bm["ratio_median"] <= 1.5
    report["bm25"] = bm
    print(f"BM25 per query: crossrank median {bm['crossrank']['median_ms']:.2f} ms (p95 {bm['crossrank']['p95_ms']:.2f}) "
          f"| bm25s {bm['bm25s']['median_ms']:.2f} ms (p95 {bm['bm25s']['p95_ms']:.2f}) | ratio "
          f"{bm['ratio_median']:.2f} | bm25s batched {batched * 1000:.2f} ms/query | same top-10 "
          f"{100 * bm['top10_identical']:.0f}%", flush=True)

    # ---------------------------------------------------------------- hybrid
    # the default (query_backend "auto": ONNX Runtime query encoder on CPU) against the torch query encoder,
    # alternating query by query
    torch_hybrid = index.retriever("hybrid", query_backend="torch")
    hybrid = index.retriever("hybrid")
    for h in (torch_hybrid, hybrid):
        h.search(qtexts[0], args.k)  # loads the bi-encoder / builds the query graph
    used = hybrid.retrievers[1].query_backend_used
    times: dict[str, list[float]] = {"default": [], "torch": []}
    nd = []
    for i, (qid, q) in enumerate(zip(qids, qtexts)):
        order = [("default", hybrid), ("torch", torch_hybrid)]
        for name, h in order if i % 2 else order[::-1]:
            t0 = time.perf_counter()
            cands = h.search(q, args.k)
            times[name].append(time.perf_counter() - t0)
            if name == "default":
                nd.append(ndcg_at_10([c.doc_id for c in cands], qrels.get(qid, {})))
    t_h = times["default"]
    report["hybrid"] = {**stats(t_h), "ndcg10": statistics.mean(nd), "target_median_ms": 20,
                        "within_target": float(np.median(t_h)) * 1000 < 20, "query_backend": used,
                        "torch_query_encoder": stats(times["torch"])}
    print(f"hybrid top-{args.k}: median {report['hybrid']['median_ms']:.1f} ms, p95 {report['hybrid']['p95_ms']:.1f} ms "
          f"with the {used} query encoder (torch query encoder: median "
          f"{report['hybrid']['torch_query_encoder']['median_ms']:.1f} ms) (nDCG@10 {report['hybrid']['ndcg10']:.4f} "
          f"over {len(qids)} queries)", flush=True)

    # ---------------------------------------------------------------- pipeline
    if args.pipeline_queries:
        import crossrank
        from crossrank.pipeline import Pipeline

        t0 = time.perf_counter()
        rr = crossrank.load_reranker(args.model, cache_size=0, backend=args.backend)
        setup = time.perf_counter() - t0
        info = rr.info() if hasattr(rr, "info") else {}
        pq = qids[: args.pipeline_queries]
        tot, ret, rer, nd = [], [], [], []
        with Pipeline(hybrid, rr, k=100, n=10) as pipe:
            pipe.search(queries[pq[0]])  # warm-up
            for qid in pq:
                res = pipe.search(queries[qid])
                tot.append(res.timings.total_ms / 1000)
                ret.append(res.timings.retrieve_ms / 1000)
                rer.append(res.timings.rerank_ms / 1000)
                nd.append(ndcg_at_10([h.doc_id for h in res.hits], qrels.get(qid, {})))
                if not res.reranked:
                    print(f"  warning: query {qid} not reranked ({res.reason})", flush=True)
        report["pipeline"] = {"model": info.get("model", args.model), "backend": info.get("backend"),
                              "max_length": info.get("max_length"), "setup_s": setup, "k": 100, "n": 10,
                              "total": stats(tot), "retrieve": stats(ret), "rerank": stats(rer),
                              "ndcg10": statistics.mean(nd)}
        p = report["pipeline"]
        print(f"pipeline hybrid K=100 -> {p['backend']} rerank -> N=10 on {len(pq)} queries: total median "
              f"{p['total']['median_ms']:.0f} ms, p95 {p['total']['p95_ms']:.0f} ms (retrieve median "
              f"{p['retrieve']['median_ms']:.0f} ms, rerank median {p['rerank']['median_ms']:.0f} ms), nDCG@10 "
              f"{p['ndcg10']:.4f}", flush=True)

    machine["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / f"{args.tag}.md").write_text(markdown(report), encoding="utf-8")
    print(f"wrote {out / (args.tag + '.json')} and .md", flush=True)
    return 0


def markdown(r: dict[str, Any]) -> str:
    m, b, h = r["machine"], r["bm25"], r["hybrid"]
    lines = [
        f"# Retrieval benchmark ({r['created']})", "",
        f"- CPU: {m['model']}, {m['cores']} cores; load average {m['loadavg_start'][0]:.1f} at start, "
        f"{m['loadavg_end'][0]:.1f} at end; index {r['index']} (loaded in {r['index_load_s']:.1f} s); "
        f"{r['queries']} SciFact test queries, k={r['k']}", "",
        "| what | median ms | p95 ms | note |", "|---|---|---|---|",
        f"| BM25 crossrank `BM25Retriever.search` | {b['crossrank']['median_ms']:.2f} | {b['crossrank']['p95_ms']:.2f} | "
        f"ratio vs raw bm25s {b['ratio_median']:.2f} (target <= 1.5: {b['within_1.5x']}) |",
        f"| BM25 raw bm25s tokenize + retrieve | {b['bm25s']['median_ms']:.2f} | {b['bm25s']['p95_ms']:.2f} | "
        f"batched: {b['bm25s_batched_per_query_ms']:.2f} ms/query; same top-10 {100 * b['top10_identical']:.0f}% |",
        f"| hybrid (BM25 + dense + RRF), {h.get('query_backend', '?')} query encoder | {h['median_ms']:.1f} | "
        f"{h['p95_ms']:.1f} | target median < 20 ms: {h['within_target']}; nDCG@10 {h['ndcg10']:.4f} |",
    ]
    if h.get("torch_query_encoder"):
        t = h["torch_query_encoder"]
        lines.append(f"| hybrid, torch (sentence-transformers) query encoder | {t['median_ms']:.1f} | {t['p95_ms']:.1f} | "
                     f"ratio default / torch {h['median_ms'] / t['median_ms']:.2f} |")
    p = r.get("pipeline")
    if p:
        lines += [
            f"| pipeline total (hybrid K=100 -> {p['backend']} -> N=10) | {p['total']['median_ms']:.0f} | "
            f"{p['total']['p95_ms']:.0f} | {p['total']['n']} queries, model {p['model']}, max_length {p['max_length']}, "
            f"nDCG@10 {p['ndcg10']:.4f} |",
            f"| pipeline retrieve | {p['retrieve']['median_ms']:.0f} | {p['retrieve']['p95_ms']:.0f} | |",
            f"| pipeline rerank | {p['rerank']['median_ms']:.0f} | {p['rerank']['p95_ms']:.0f} | |",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
