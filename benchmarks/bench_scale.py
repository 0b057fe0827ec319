"""An N-passage index on one machine: ANN recall@100 vs exact, hybrid top-100 latency, index RSS and load time, and
bulk passage encoding vs sentence-transformers' ``encode`` (issue #23, part 1).

* corpus: the first ``--real-text`` SciFact documents (title + text, whole documents) are encoded for real with
  crossrank's bulk encoder (``retrieve/encode.py``). Past that, passages are **resampled real embeddings with
  noise**: a random real passage's vector plus Gaussian noise (``--noise``, as a fraction of the unit norm),
  re-normalised, with that passage's text (so BM25 holds N passages of real text, repeated). The report says how
  many of each.
* encoding: the same ``--encode-sample`` real texts through ``encode_bulk`` and through
  ``SentenceTransformer.encode(batch_size=64, normalize_embeddings=True)``, in the same run (passages/s, ratio,
  minimum cosine between the two).
* index: BM25 + dense, with the ANN graph (``retrieve/ann.py``) forced on whatever N is, saved with
  ``Index.save``; its size on disk.
* ANN recall@100: for every SciFact test query (encoded), the graph's top 100 vs exact search over the same matrix.
* load and search, in a fresh child process (so RSS is the index's, not the build's): ``load_index`` time (sha256
  verification included), then ``retriever("hybrid").search(q, 100)`` per query after one warm-up (median, p95),
  and the child's RSS and peak RSS.

    nice -n 10 python benchmarks/bench_scale.py --n 20000 --real-text 500 --encode-sample 300   # a small proof
    python benchmarks/bench_scale.py --n 1000000                                                 # the real run

Results: ``benchmarks/results/<tag>.json`` and ``.md`` (tag defaults to ``bench_scale_<N>``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_rerank import SHARED, cpu_info, load_scifact, versions  # noqa: E402

RECALL_RULE = 0.97  # ANN recall@100 (vs exact) that the train-query sweep must reach


def train_queries(limit: int) -> list[str]:
    """The first ``limit`` SciFact train queries (those with a train judgment), in id order."""
    return list(load_scifact(SHARED / "scifact", split="train")[0].values())[:limit]


def set_expansion(graph: Any, ef: int) -> None:
    graph.params["expansion_search"] = ef
    graph.graph.expansion_search = ef


def measure_recall(exact: Any, approx: Any, graph: Any, qvecs: np.ndarray, ef: int) -> dict[str, Any]:
    """Per query, the overlap of the graph's top 100 with exact search's; timings one query at a time."""
    set_expansion(graph, ef)
    recalls, exact_t, ann_t = [], [], []
    for q in qvecs:
        t = time.perf_counter()
        want = exact.search_vectors(q[None], 100)[0]
        exact_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        got = approx.search_vectors(q[None], 100)[0]
        ann_t.append(time.perf_counter() - t)
        recalls.append(len({c.id for c in got} & {c.id for c in want}) / 100)
    r = np.asarray(recalls)
    return {"queries": len(r), "recall_at_100_mean": round(float(r.mean()), 4), "recall_at_100_min": float(r.min()),
            "queries_below_0.5": int((r < 0.5).sum()), "exact_search": stats_ms(exact_t),
            "ann_search": stats_ms(ann_t)}


def stats_ms(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000.0
    return {"n": len(xs), "median_ms": round(float(np.median(a)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3)}


def rss_mb() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(val.split()[0]) / 1024, 1)
    return out


def child(index_dir: str, queries_file: str) -> None:
    """Load the index, search every query through hybrid top-100; print one JSON line."""
    from crossrank.retrieve import load_index

    queries = json.loads(Path(queries_file).read_text(encoding="utf-8"))
    before = rss_mb()
    t = time.perf_counter()
    index = load_index(index_dir)
    load_s = time.perf_counter() - t
    after_load = rss_mb()
    hybrid = index.retriever("hybrid")
    t = time.perf_counter()
    hybrid.search(queries[0], 100)  # loads the bi-encoder and its ONNX graph
    first_s = time.perf_counter() - t
    times = []
    for q in queries:
        t = time.perf_counter()
        hybrid.search(q, 100)
        times.append(time.perf_counter() - t)
    print(json.dumps({"load_s": round(load_s, 3), "first_search_s": round(first_s, 3), "hybrid": stats_ms(times),
                      "rss_before_mb": before, "rss_after_load_mb": after_load, "rss_after_search_mb": rss_mb(),
                      "ann": index.ann is not None}))


def corpus_texts(limit: int) -> list[tuple[str, str, str]]:
    out = []
    with open(SHARED / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out.append((str(d["_id"]), d.get("title", ""), d["text"]))
            if len(out) >= limit:
                break
    return out


BEIR_CORPORA = ("scifact", "cranfield", "nq-qed", "squad", "xquad-en")
ANSWER_TSVS = ("wikiqa/train.tsv", "wikiqa/dev.tsv", "trecqa/train.tsv", "trecqa/dev.tsv", "cqa/train.tsv",
               "selqa/train.tsv")


def shared_passages() -> list[tuple[str, str, str]]:
    """(id, title, text) of every passage-like text in ``../shared/data``: the BEIR corpora's documents and the
    answer-selection files' candidate sentences (unique texts, ids prefixed with their source). More distinct real
    passages means fewer noisy copies of each in the resampled part of a large index."""
    from crossrank.corpus import load_corpus

    out, seen = [], set()
    for name in BEIR_CORPORA:  # crossrank's own reader (it skips empty documents)
        out += [(f"{name}:{doc.id}", doc.title, doc.text) for doc in load_corpus(SHARED / name / "corpus.jsonl")]
    for rel in ANSWER_TSVS:
        with open(SHARED / rel, encoding="utf-8") as f:
            next(f)  # header: qid question sentence label (unquoted: split on tabs)
            for i, line in enumerate(f):
                sentence = line.rstrip("\n").split("\t")[2].strip()
                if sentence and sentence not in seen:
                    seen.add(sentence)
                    out.append((f"{rel.split('/')[0]}:{i}", "", sentence))
    return out


def indexed_passages(folders: list[str]) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    """(id, title, text) and the stored dense vectors of every passage of these built indexes (ids prefixed with
    the folder's name, so collections cannot collide)."""
    from crossrank.retrieve import load_index

    docs, vecs = [], []
    for folder in folders:
        index = load_index(folder)
        if index.manifest["dense"]["model"] != "default":
            raise SystemExit(f"{folder}: dense model {index.manifest['dense']['model']!r}, expected 'default'")
        name = Path(folder).name
        docs += [(f"{name}:{p.id}", p.title or "", p.text) for p in index.passages]
        vecs.append(np.asarray(index.embeddings, dtype=np.float32))
    return docs, np.concatenate(vecs)


def encoded_shared(model: Any, workdir: Path | None) -> tuple[list[tuple[str, str, str]], np.ndarray, dict]:
    """:func:`shared_passages` and their vectors from ``encode_bulk``, resumable in ``workdir/shared_real`` (a
    rerun picks up the finished shards)."""
    from crossrank.retrieve import encode_bulk

    docs = shared_passages()
    texts = [f"{title} {text}" if title else text for _, title, text in docs]
    vecs, stats = encode_bulk(model, texts, progress=True,
                              resume_dir=workdir / "shared_real" if workdir else None)
    return docs, vecs, stats


def compare_encoding(model: Any, texts: list[str], backend: str, runs: int = 1) -> dict[str, Any]:
    """Bulk encoder vs sentence-transformers on the same texts, same run, ``runs`` alternating rounds (medians)."""
    from crossrank.retrieve import encode_bulk

    encode_bulk(model, texts[:8], backend=backend)  # builds or loads the ONNX graph outside the timing
    bulk_times, st_times = [], []
    for _ in range(runs):
        t = time.perf_counter()
        bulk, stats = encode_bulk(model, texts, backend=backend)
        bulk_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
        st_times.append(time.perf_counter() - t)
    bulk_s, st_s = statistics.median(bulk_times), statistics.median(st_times)
    cos = np.sum(bulk * ref, axis=1) / np.linalg.norm(bulk, axis=1) / np.linalg.norm(ref, axis=1)
    return {"texts": len(texts), "runs": runs, "bulk_backend": stats["backend"],
            "bulk_passages_per_s": round(len(texts) / bulk_s, 1), "st_passages_per_s": round(len(texts) / st_s, 1),
            "ratio": round(st_s / bulk_s, 3), "ratios_per_run": [round(b / a, 3) for a, b in zip(bulk_times, st_times, strict=True)],
            "min_cosine": round(float(cos.min()), 7)}


def encode_only(args: argparse.Namespace) -> int:
    """``--encode-only``: the bulk-encoding row alone (no index), written as ``bench_encode[_TAG].json`` / ``.md``."""
    from crossrank.retrieve.dense import load_bi_encoder

    machine = cpu_info()
    docs = corpus_texts(args.encode_sample)
    texts = [f"{title} {text}" if title else text for _, title, text in docs]
    enc = compare_encoding(load_bi_encoder("default"), texts, args.encode_backend, runs=args.encode_runs)
    machine["loadavg_end"] = list(os.getloadavg())
    name = "bench_encode" + (f"_{args.tag}" if args.tag else "")
    out = Path(args.out)
    (out / f"{name}.json").write_text(json.dumps({"machine": machine, "encoding": enc}, indent=2) + "\n")
    (out / f"{name}.md").write_text(
        f"# Bulk encoding vs sentence-transformers ({_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')})\n\n"
        f"{machine['model']}, {machine['cores']} cores, load {machine['loadavg_start']} at start, "
        f"{machine['loadavg_end']} at end. {enc['texts']} SciFact documents (title + text), all-MiniLM-L6-v2, "
        f"medians of {enc['runs']} alternating rounds.\n\n"
        "| encode_bulk backend | passages/s | sentence-transformers `encode` passages/s | ratio (per run) | min cosine |\n"
        "|---|---|---|---|---|\n"
        f"| {enc['bulk_backend']} | {enc['bulk_passages_per_s']} | {enc['st_passages_per_s']} | "
        f"{enc['ratio']:.2f}x ({', '.join(f'{r:.2f}' for r in enc['ratios_per_run'])}) | {enc['min_cosine']} |\n"
        f"\nCommand: `python benchmarks/bench_scale.py --encode-only --encode-backend {args.encode_backend} "
        f"--encode-sample {args.encode_sample} --encode-runs {args.encode_runs}`\n")
    print(f"encoding: {enc}\nwrote {out / name}.json and .md", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="passages in the index")
    ap.add_argument("--real-text", type=int, default=5183, help="SciFact documents encoded for real (at most N)")
    ap.add_argument("--real-from", type=lambda v: v.split(","), default=None,
                    help="comma-separated built index folders whose passages and stored vectors are the real part "
                         "(instead of encoding --real-text SciFact documents)")
    ap.add_argument("--real-shared", action="store_true",
                    help="encode every passage-like text in ../shared/data for the real part (BEIR corpora and "
                         "answer sentences; cached in --workdir) instead of --real-text SciFact documents")
    ap.add_argument("--encode-sample", type=int, default=1000, help="texts for the bulk vs sentence-transformers run")
    ap.add_argument("--encode-backend", default="onnx", help="encode_bulk backend compared with sentence-transformers")
    ap.add_argument("--encode-runs", type=int, default=1, help="alternating bulk / sentence-transformers rounds")
    ap.add_argument("--encode-only", action="store_true", help="only the bulk-encoding comparison (no index)")
    ap.add_argument("--noise", type=float, default=0.3, help="resampling noise, as a fraction of the unit norm")
    ap.add_argument("--queries", type=int, default=0, help="SciFact test queries (0: all)")
    ap.add_argument("--train-queries", type=int, default=300, help="SciFact train queries that choose expansion_search")
    ap.add_argument("--ef", type=lambda v: [int(x) for x in v.split(",")], default=[128, 256, 512],
                    help="expansion_search values swept on the train queries (ascending)")
    ap.add_argument("--workdir", default=None, help="where the index is written (default: a temporary folder)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default=None)
    ap.add_argument("--child", nargs=2, metavar=("INDEX", "QUERIES"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if args.encode_only:
        return encode_only(args)

    from crossrank.retrieve import AnnIndex, BM25Retriever, DenseRetriever, Index, build_index, encode_bulk
    from crossrank.retrieve.dense import load_bi_encoder
    from crossrank.retrieve.index import _ann_manifest
    from crossrank.types import Passage

    machine = cpu_info()
    print(f"CPU: {machine['model']} | {machine['cores']} cores | load {machine['loadavg_start']}", flush=True)
    queries = list(load_scifact(SHARED / "scifact")[0].values())[: args.queries or None]
    docs = corpus_texts(min(args.real_text, args.n))
    texts = [f"{title} {text}" if title else text for _, title, text in docs]
    model = load_bi_encoder("default")
    enc = compare_encoding(model, texts[: args.encode_sample], args.encode_backend, runs=args.encode_runs)
    print(f"encoding: {enc}", flush=True)

    t = time.perf_counter()
    if args.real_from:  # real passages and their stored vectors from built indexes (same bi-encoder), not re-encoded
        docs, real_vecs = indexed_passages(args.real_from)
        real_stats = {"reused_from": args.real_from}
    elif args.real_shared:
        docs, real_vecs, real_stats = encoded_shared(model, Path(args.workdir) if args.workdir else None)
    else:
        real_vecs, real_stats = encode_bulk(model, texts)
    real_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    n_fake = args.n - len(docs)
    src = rng.integers(0, len(docs), n_fake)
    fake = real_vecs[src] + rng.standard_normal((n_fake, real_vecs.shape[1])).astype(np.float32) * (
        args.noise / np.sqrt(real_vecs.shape[1]))
    fake /= np.linalg.norm(fake, axis=1, keepdims=True)
    vectors = np.concatenate([real_vecs, fake.astype(np.float32)])
    passages = [Passage(id=i, doc_id=i, text=text, title=title) for i, title, text in docs]
    passages += [Passage(id=f"r{j}", doc_id=f"r{j}", text=docs[s][2], title=docs[s][1]) for j, s in enumerate(src)]
    print(f"corpus: {len(docs)} real passages encoded in {real_s:.1f} s, {n_fake} resampled with noise", flush=True)

    template = build_index([passages[0]], methods=("bm25", "dense"), progress=False).manifest
    t = time.perf_counter()
    bm25 = BM25Retriever(passages)
    bm25_s = time.perf_counter() - t
    t = time.perf_counter()
    graph = AnnIndex.build(vectors)
    ann_s = time.perf_counter() - t
    manifest = {**template, "counts": {"documents": len(passages), "passages": len(passages)},
                "dense": {**template["dense"], "ann": _ann_manifest(graph, ann_s), "encoding": real_stats}}
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    target = workdir / f"index-{args.n}"

    exact = DenseRetriever(passages, model=model, embeddings=vectors)
    approx = DenseRetriever(passages, model=model, embeddings=vectors, ann=graph)
    # expansion_search is chosen on SciFact *train* queries (smallest value whose mean recall@100 reaches
    # RECALL_RULE), then measured on the test queries: the test split never picks a setting
    train_vecs, _ = encode_bulk(model, train_queries(args.train_queries))
    sweep = {ef: measure_recall(exact, approx, graph, train_vecs, ef) for ef in args.ef}
    chosen = next((ef for ef in args.ef if sweep[ef]["recall_at_100_mean"] >= RECALL_RULE), args.ef[-1])
    for ef, row in sweep.items():
        print(f"ANN train ef={ef}: {row}", flush=True)
    qvecs, _ = encode_bulk(model, queries)
    recall = {**measure_recall(exact, approx, graph, qvecs, chosen), "expansion_search": chosen,
              "rule": f"smallest of {args.ef} with train mean recall@100 >= {RECALL_RULE}",
              "train_sweep": {str(ef): row for ef, row in sweep.items()}}
    print(f"ANN test at ef={chosen}: {recall}", flush=True)
    set_expansion(graph, chosen)
    manifest["dense"]["ann"]["expansion_search"] = chosen
    t = time.perf_counter()
    Index(passages, manifest, bm25=bm25, embeddings=vectors, ann=graph).save(target)
    save_s = time.perf_counter() - t
    size_mb = {f.name: round(f.stat().st_size / 2**20, 1) for f in target.iterdir() if f.is_file()}
    size_mb["bm25/"] = round(sum(f.stat().st_size for f in (target / "bm25").iterdir()) / 2**20, 1)
    print(f"index: BM25 {bm25_s:.1f} s, ANN {ann_s:.1f} s, save {save_s:.1f} s, files {size_mb}", flush=True)
    del exact, approx, graph, bm25, vectors, fake

    qfile = workdir / "queries.json"
    qfile.write_text(json.dumps(queries), encoding="utf-8")
    proc = subprocess.run([sys.executable, __file__, "--child", str(target), str(qfile)], capture_output=True,
                          text=True, check=True)
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"load + hybrid: {loaded}", flush=True)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine,
        "versions": {**versions(), "usearch": _version("usearch"), "bm25s": _version("bm25s")},
        "n_passages": args.n, "real_passages": len(docs),
        "real_source": (f"stored vectors of the built indexes {args.real_from}" if args.real_from
                        else "every passage-like text in ../shared/data (BEIR corpora, answer sentences), encoded"
                        if args.real_shared else "SciFact documents encoded for real"), "resampled_passages": n_fake, "noise": args.noise,
        "queries": len(queries), "encoding": enc, "index_files_mb": size_mb,
        "build_s": {"encode_real": round(real_s, 1), "bm25": round(bm25_s, 1), "ann": round(ann_s, 1),
                    "save": round(save_s, 1)},
        "ann": recall, "load_and_search": loaded,
    }
    tag = args.tag or f"bench_scale_{args.n}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / f"{tag}.md").write_text(markdown(report), encoding="utf-8")
    print(f"wrote {out / tag}.json and .md")
    return 0


def _version(pkg: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "-"


def markdown(r: dict[str, Any]) -> str:
    e, a, ls = r["encoding"], r["ann"], r["load_and_search"]
    m = r["machine"]
    lines = [
        f"# bench_scale: {r['n_passages']:,} passages ({r['date']})",
        "",
        f"{m['model']}, {m['cores']} cores, load at start {m['loadavg_start']}. Corpus: {r['real_passages']:,} "
        f"real passages ({r.get('real_source', 'SciFact documents encoded for real')}), {r['resampled_passages']:,} **resampled real embeddings with "
        f"noise** ({r['noise']} of the unit norm; their text is the source passage's). {r['queries']} SciFact test "
        "queries. Dense side: usearch HNSW graph (f16), candidates rescored exactly.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| ANN recall@100 vs exact (mean / min) | {a['recall_at_100_mean']:.4f} / {a['recall_at_100_min']:.2f} |",
        f"| dense search, exact (median / p95) | {a['exact_search']['median_ms']:.2f} / "
        f"{a['exact_search']['p95_ms']:.2f} ms |",
        f"| dense search, ANN (median / p95) | {a['ann_search']['median_ms']:.2f} / {a['ann_search']['p95_ms']:.2f} ms |",
        f"| hybrid top-100, text query (median / p95) | {ls['hybrid']['median_ms']:.2f} / {ls['hybrid']['p95_ms']:.2f} ms |",
        f"| load_index (sha256 verified) | {ls['load_s']:.2f} s |",
        f"| RSS after load / after searches / peak | {ls['rss_after_load_mb']['VmRSS']:.0f} / "
        f"{ls['rss_after_search_mb']['VmRSS']:.0f} / {ls['rss_after_search_mb']['VmHWM']:.0f} MiB |",
        f"| index files | {', '.join(f'{k} {v} MiB' for k, v in r['index_files_mb'].items())} |",
        f"| bulk encoding ({e['bulk_backend']}) vs sentence-transformers, {e['texts']} texts | "
        f"{e['bulk_passages_per_s']:.1f} vs {e['st_passages_per_s']:.1f} passages/s ({e['ratio']:.2f}x), "
        f"min cosine {e['min_cosine']:.6f} |",
        f"| build | {', '.join(f'{k} {v} s' for k, v in r['build_s'].items())} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
