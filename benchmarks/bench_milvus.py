"""The Milvus backend against the built-in index on SciFact: nDCG@10 and per-query search latency for bm25, dense and
hybrid (Milvus' own RRF, and crossrank's RRF over Milvus' two lists).

* The store is written from an existing crossrank index (default: the SciFact index of ``find_index``, whole
  documents): its passages and its stored dense vectors, no re-encoding (``write_store``); the write time is
  reported.
* Every SciFact test query (or ``--queries N``), one at a time, ``search(q, k)`` on each of the seven retrievers, in
  an order that rotates query by query (so a load spike on the shared CPU hits each about equally), after one
  warm-up query each. nDCG@10 is document-level, each document at its best passage (``first_per_document``), with
  crossrank's ranx metrics, as ``crossrank eval`` computes it; "same lists" counts the queries whose top-k passage
  ids equal the built-in's, in order.

    python benchmarks/bench_milvus.py                                   # Milvus Lite in a temporary folder
    python benchmarks/bench_milvus.py --store http://milvus:19530      # a Milvus server, same code

Results: ``benchmarks/results/bench_milvus.json`` and ``.md``. Target: |nDCG@10 Milvus - built-in| <= 0.005 for
each kind.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_rerank import SHARED, cpu_info, find_index, load_scifact, versions  # noqa: E402

TARGET = 0.005
KINDS = ("bm25", "dense", "hybrid")


def stats_ms(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000.0
    return {"median_ms": round(float(np.median(a)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "mean_ms": round(float(a.mean()), 2)}


def retrievers(index: Any, store: Any) -> dict[str, Any]:
    """Name -> Retriever: the built-in three, and Milvus' three plus crossrank-fused hybrid."""
    return {
        "built-in bm25": index.retriever("bm25"),
        "built-in dense": index.retriever("dense"),
        "built-in hybrid (crossrank RRF)": index.retriever("hybrid"),
        "milvus bm25": store.retriever("bm25"),
        "milvus dense": store.retriever("dense"),
        "milvus hybrid (Milvus RRFRanker)": store.retriever("hybrid", fused_by="milvus"),
        "milvus hybrid (crossrank RRF)": store.retriever("hybrid", fused_by="crossrank"),
    }


def reference_of(name: str) -> str:
    """The built-in retriever a Milvus one is compared with."""
    kind = name.split()[1]
    return {"bm25": "built-in bm25", "dense": "built-in dense"}.get(kind, "built-in hybrid (crossrank RRF)")


def run(rs: dict[str, Any], queries: dict[str, str], qids: list[str], k: int) -> tuple[dict, dict]:
    """Per retriever: query id -> candidates, and the per-query seconds."""
    lists: dict[str, dict[str, list]] = {n: {} for n in rs}
    secs: dict[str, list[float]] = {n: [] for n in rs}
    for r in rs.values():
        r.search("warm up the encoder and the store", k=10)
    names = list(rs)
    for i, q in enumerate(qids):
        for n in names[i % len(names):] + names[: i % len(names)]:
            t0 = time.perf_counter()
            cands = rs[n].search(queries[q], k=k)
            secs[n].append(time.perf_counter() - t0)
            lists[n][q] = cands
    return lists, secs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default=None, help="crossrank index of the SciFact corpus (default: find_index)")
    ap.add_argument("--store", default=None, help="store URI (default: a Milvus Lite file in a temporary folder)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--queries", type=int, default=0, help="test queries (0: all)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default="bench_milvus")
    args = ap.parse_args(argv)

    from crossrank.evaluate.metrics import ranking_metrics
    from crossrank.retrieve import load_index, write_store
    from crossrank.types import first_per_document

    machine = cpu_info()
    print(f"CPU: {machine['model']} | {machine['cores']} cores | load {machine['loadavg_start']}", flush=True)
    queries, qrels = load_scifact(SHARED / "scifact")
    qids = [q for q in queries if q in qrels][: args.queries or None]
    qrels = {q: qrels[q] for q in qids}  # --queries N: the mean over the queries run
    index_dir = Path(args.index) if args.index else find_index(None)
    index = load_index(index_dir)
    tmp = None
    if args.store is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-milvus-")
        args.store = f"milvus://{Path(tmp.name) / 'scifact.db'}"
    t0 = time.perf_counter()
    store = write_store(index, args.store)
    write_s = time.perf_counter() - t0
    print(f"wrote {len(index.passages)} passages to {args.store} in {write_s:.1f} s", flush=True)

    rs = retrievers(index, store)
    lists, secs = run(rs, queries, qids, args.k)
    rows = {}
    for n, per_q in lists.items():
        ranked = {q: [c.doc_id for c in first_per_document(cands)] for q, cands in per_q.items()}
        means, _ = ranking_metrics(qrels, ranked, ["ndcg@10"])
        rows[n] = {"ndcg@10": round(means["ndcg@10"], 4), **stats_ms(secs[n])}
    for n in rows:
        if n.startswith("milvus"):
            ref = reference_of(n)
            rows[n]["delta_ndcg@10"] = round(rows[n]["ndcg@10"] - rows[ref]["ndcg@10"], 4)
            rows[n]["same_lists"] = sum([c.id for c in lists[n][q]] == [c.id for c in lists[ref][q]] for q in qids)
            rows[n]["within_target"] = abs(rows[n]["delta_ndcg@10"]) <= TARGET
    store.close()
    report = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_milvus.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**machine, "loadavg_end": list(os.getloadavg())},
        "versions": {**versions(), **_milvus_versions()},
        "index": str(index_dir), "store": args.store if tmp is None else "milvus Lite (temporary .db)",
        "passages": len(index.passages), "queries": len(qids), "k": args.k, "write_s": round(write_s, 1),
        "target_abs_delta_ndcg@10": TARGET, "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / f"{args.tag}.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    if tmp is not None:
        tmp.cleanup()
    return 0


def _milvus_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("pymilvus", "milvus-lite"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Milvus backend vs the built-in index: SciFact test",
        "",
        f"`{r['command']}`, {r['date']}. {r['queries']} queries, k={r['k']}, {r['passages']} passages "
        f"(whole documents), store: {r['store']}, written in {r['write_s']} s from the index's own passages and "
        "vectors. nDCG@10 is document-level (best passage per document), as `crossrank eval` computes it; latency "
        "is one `search(q, k)` per query, the seven retrievers rotating query by query.",
        "",
        f"Machine: {m['model']}, {m['cores']} cores, load average {[round(x, 2) for x in m['loadavg_start']]} at the "
        f"start, {[round(x, 2) for x in m['loadavg_end']]} at the end (a shared machine: latencies are relative). "
        f"pymilvus {r['versions']['pymilvus']}, milvus-lite {r['versions']['milvus-lite']}.",
        "",
        "| retriever | nDCG@10 | vs built-in | same top-k lists | median ms | p95 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n, row in r["rows"].items():
        delta = f"{row['delta_ndcg@10']:+.4f}" if "delta_ndcg@10" in row else ""
        same = f"{row['same_lists']}/{r['queries']}" if "same_lists" in row else ""
        lines.append(f"| {n} | {row['ndcg@10']:.4f} | {delta} | {same} | {row['median_ms']:.1f} | "
                     f"{row['p95_ms']:.1f} |")
    ok = all(row.get("within_target", True) for row in r["rows"].values())
    lines += ["", f"Target |delta nDCG@10| <= {r['target_abs_delta_ndcg@10']}: {'met' if ok else 'NOT met'} for "
              "every Milvus retriever.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
