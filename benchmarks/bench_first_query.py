"""What a user's first rerank costs: a fresh process imports, loads a reranker and scores one query's hybrid
top-K SciFact candidates. Per reranker spec (``crossrank.load_reranker``) and for the peer,
``sentence_transformers.CrossEncoder`` on the exported default checkpoint, each in its own fresh process, ``--runs``
times (order rotated): import + load seconds, the first ``score`` call, a second call on the next query (warm), and
the process's peak RSS (VmHWM). Ratios are against the peer measured in the same run.

    python benchmarks/bench_first_query.py                               # default, fast vs sentence-transformers
    python benchmarks/bench_first_query.py --specs fast,fast-student>default@20 --k 100 --runs 5

Results: ``benchmarks/results/bench_first_query.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_rerank import SHARED, cpu_info, find_index, load_scifact, versions  # noqa: E402

PEER = "st:default"


def peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def child(spec: str, cands_file: str, peer_ckpt: str | None) -> None:
    """One fresh process: load ``spec``, score two queries, print one JSON line."""
    t0 = time.perf_counter()
    data = json.loads(Path(cands_file).read_text(encoding="utf-8"))
    if spec == PEER:
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(peer_ckpt, device="cpu")

        def score(q, texts):
            return model.predict([(q, t) for t in texts], show_progress_bar=False)
    else:
        import crossrank
        from crossrank.pipeline import resolve_rerank_depth

        reranker = crossrank.load_reranker(spec, cache_size=0)
        depth = resolve_rerank_depth("auto", reranker)  # fast = default@M: a pipeline scores only the top M

        def score(q, texts):
            return reranker.score(q, texts[:depth] if depth else texts).scores
    load_s = time.perf_counter() - t0
    (q1, t1), (q2, t2) = data[0], data[1]
    t0 = time.perf_counter()
    score(q1, t1)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    score(q2, t2)
    warm_s = time.perf_counter() - t0
    print(json.dumps({"spec": spec, "load_s": load_s, "first_s": first_s, "warm_s": warm_s,
                      "peak_rss_mb": peak_rss_mb()}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--specs", default="default,fast")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--index", default=None)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default="bench_first_query")
    ap.add_argument("--_child", dest="child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_cands", dest="cands", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_peer", dest="peer", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.cands, args.peer)
        return 0

    from crossrank.rerank.bundled import export_bundle
    from crossrank.retrieve import load_index

    machine = cpu_info()
    work = Path(tempfile.mkdtemp(prefix="bench-first-query-"))
    peer_ckpt = export_bundle(work / "default-checkpoint")
    queries, _ = load_scifact(SHARED / "scifact")
    index_dir = find_index(args.index)
    retriever = load_index(index_dir).retriever("hybrid")
    qids = list(queries)[:2]
    cands = [[queries[q], [c.full_text for c in retriever.search(queries[q], args.k)]] for q in qids]
    cands_file = work / "cands.json"
    cands_file.write_text(json.dumps(cands), encoding="utf-8")

    specs = [s.strip() for s in args.specs.split(",") if s.strip()] + [PEER]
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in specs}
    for run in range(args.runs):
        order = specs[run % len(specs):] + specs[: run % len(specs)]
        for spec in order:
            cmd = [sys.executable, __file__, "--_child", spec, "--_cands", str(cands_file), "--_peer", str(peer_ckpt)]
            env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t0
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.returncode or not line:
                print(f"{spec} failed: {res.stderr[-600:]}", flush=True)
                continue
            rec = {**json.loads(line[-1]), "process_s": wall}
            records[spec].append(rec)
            print(f"run {run + 1}/{args.runs} {spec:22s} load {rec['load_s']:.2f} s, first {rec['first_s'] * 1000:.0f} ms, "
                  f"warm {rec['warm_s'] * 1000:.0f} ms, peak RSS {rec['peak_rss_mb']:.0f} MB", flush=True)

    def med(spec: str, key: str) -> float:
        vals = [r[key] for r in records[spec]]
        return statistics.median(vals) if vals else float("nan")

    summary = {s: {k: med(s, k) for k in ("load_s", "first_s", "warm_s", "peak_rss_mb", "process_s")} for s in specs}
    for x in summary.values():
        x["first_query_s"] = x["load_s"] + x["first_s"]
    peer = summary[PEER]
    for x in summary.values():
        x["x_first_query_vs_peer"] = peer["first_query_s"] / x["first_query_s"]
        x["x_warm_vs_peer"] = peer["warm_s"] / x["warm_s"]
    machine["loadavg_end"] = os.getloadavg()
    report = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine,
              "versions": versions(), "k": args.k, "runs": args.runs, "index": str(index_dir), "summary": summary,
              "runs_raw": records}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [f"# First query in a fresh process ({report['created']})", "",
             f"- CPU: {machine['model']}, {machine['cores']} cores ({', '.join(machine['isa'])}); load average "
             f"{machine['loadavg_start'][0]:.1f} at start, {machine['loadavg_end'][0]:.1f} at end",
             f"- SciFact test, hybrid top-{args.k} from {index_dir}; medians of {args.runs} fresh processes each; "
             f"peer `{PEER}` = sentence-transformers CrossEncoder on the exported default checkpoint", "",
             "| reranker | import + load s | first score ms | first query s | warm score ms | peak RSS MB | "
             "x first query vs peer | x warm vs peer |", "|---|---|---|---|---|---|---|---|"]
    for s in specs:
        x = summary[s]
        lines.append(f"| {s} | {x['load_s']:.2f} | {x['first_s'] * 1000:.0f} | {x['first_query_s']:.2f} | "
                     f"{x['warm_s'] * 1000:.0f} | {x['peak_rss_mb']:.0f} | {x['x_first_query_vs_peer']:.2f} | "
                     f"{x['x_warm_vs_peer']:.2f} |")
    (out / f"{args.tag}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[-len(specs) - 2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
