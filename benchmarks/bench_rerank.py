"""Side-by-side benchmark of cross-encoder inference on this CPU: crossrank's backends vs sentence-transformers vs a
plain transformers loop, all on the SAME checkpoint, the same candidates and the same max sequence length.

For SciFact test queries (``../shared/data/scifact``) the candidates are each query's hybrid top-K from a crossrank
index (``--index``; default ``/work/train-runs/scifact-index`` or ``/tmp/scifact-index``). For each K every backend
scores every query's candidates; the backend order rotates from query to query and run to run, so load changes on
a shared machine hit all backends alike. Reported per (backend, K): median and p95 latency per query, pairs/s, the
ratio against ``sentence_transformers.CrossEncoder.predict`` with its defaults (the reference), and useful
throughput in TFLOP/s (FLOPs from the model config and the real, unpadded token counts:
``L * (n * (8 h^2 + 4 h i) + 4 n^2 h) + 2 h^2`` per pair of n tokens) against the CPU's fp32 FMA peak
(cores x 2 FMA pipes x 8 fp32 lanes (AVX2) x 2 FLOP x the clock /proc/cpuinfo reports; with AVX-512 16 lanes);
bf16 on AMX tiles runs above that fp32 yardstick, so its share can exceed 100%.
Agreement: nDCG@10 on the timed K=100 queries (plus ``--agreement-queries`` more, scored once) of each backend vs
crossrank's torch fp32, and the share of queries whose top-10 order is identical to it.
``--rss`` additionally runs each crossrank backend in a fresh process on K=1000 candidates of >= 512 tokens and
reports peak RSS (``resource.getrusage``) above the loaded model.

    python benchmarks/bench_rerank.py                                # bundled default, K=20,100,1000
    python benchmarks/bench_rerank.py --k 20 100 --queries 10 --runs 2 --backends torch,onnx-int8,st,hf
    python benchmarks/bench_rerank.py --rss --k 100 --queries 5      # plus the K=1000 x 512-token memory run
    python benchmarks/bench_rerank.py --k 100 --backends onnx,st --rerankers fast,fast-student>default@20 --tag bench_fast
    python benchmarks/bench_rerank.py --k 100 --backends st --rerankers "fast,default@15|max_length=128|long_documents=focus"

Results: ``benchmarks/results/bench_rerank.json`` and ``.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("CROSSRANK_SHARED_DATA", REPO.parent / "shared" / "data"))
INDEX_CANDIDATES = [Path("/work/train-runs/scifact-index"), Path("/tmp/scifact-index")]
CROSSRANK_BACKENDS = ("torch", "torch-int8", "onnx", "onnx-int8", "openvino")
ALL_BACKENDS = CROSSRANK_BACKENDS + ("st", "hf")
REFERENCE = "st"  # ratios are against sentence-transformers
AGREE_REF = "torch"  # agreement is against crossrank fp32 torch


# --------------------------------------------------------------------------------------------------- machine


def cpu_info() -> dict[str, Any]:
    model, mhz, flags = "unknown", [], set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "model name" and model == "unknown":
                model = val.strip()
            elif key == "cpu MHz":
                mhz.append(float(val))
            elif key == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ghz = (statistics.mean(mhz) / 1000.0) if mhz else float("nan")
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma_pipes = 2
    per_core = fma_pipes * lanes * 2  # FLOP/cycle/core: 2 FMA pipes x lanes x (mul + add)
    return {
        "model": model,
        "cores": cores,
        "clock_ghz": round(ghz, 3),
        "isa": sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_bf16",
                                                "amx_int8", "avx512_bf16")),
        "fp32_flop_per_cycle_per_core": per_core,
        "fp32_peak_tflops": round(cores * per_core * ghz * 1e9 / 1e12, 4) if mhz else None,
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for p in ("torch", "transformers", "sentence-transformers", "onnxruntime", "onnx", "tokenizers", "numpy"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "-"
    return out


def flops_per_pair(cfg: Any, n: int) -> float:
    h, i, L = int(cfg.hidden_size), int(cfg.intermediate_size), int(cfg.num_hidden_layers)
    return L * (n * (8 * h * h + 4 * h * i) + 4 * n * n * h) + 2 * h * h


# --------------------------------------------------------------------------------------------------- data


def find_index(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    for p in INDEX_CANDIDATES:
        if (p / "manifest.json").is_file():
            return p
    sys.exit(
        "no SciFact index found: build one with\n  python -c \"from crossrank.corpus import load_corpus; "
        "from crossrank.retrieve import build_index; build_index(load_corpus('../shared/data/scifact/corpus.jsonl'), "
        "'/tmp/scifact-index', chunk_tokens=0)\"\nor pass --index DIR"
    )


def load_scifact(data: Path, split: str = "test") -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    queries = {}
    for line in (data / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            queries[str(q["_id"])] = q["text"]
    qrels: dict[str, dict[str, int]] = {}
    for i, line in enumerate((data / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()):
        parts = line.split("\t")
        if i == 0 and not parts[-1].strip().lstrip("-").isdigit():
            continue
        if len(parts) >= 3 and int(parts[2]) > 0:
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    judged = {qid: queries[qid] for qid in sorted(qrels, key=lambda x: int(x) if x.isdigit() else x) if qid in queries}
    return judged, qrels


def ndcg_at_10(ranked_doc_ids: list[str], rel: dict[str, int]) -> float:
    """nDCG@10 with linear gains (what pytrec_eval / BEIR report); duplicates of a document count once."""
    seen, dcg = set(), 0.0
    for d in ranked_doc_ids:
        if len(seen) >= 10:
            break
        if d in seen:
            continue
        seen.add(d)
        dcg += rel.get(d, 0) / math.log2(len(seen) + 1)
    ideal = sorted(rel.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


# --------------------------------------------------------------------------------------------------- model


def prepare_model(spec: str, max_length: int | None, workdir: Path) -> tuple[Path, dict[str, Any], str]:
    """``(checkpoint_dir, engine_options, label)``: a plain HF checkpoint all backends load, plus the settings."""
    from crossrank.rerank.bundled import ENGINE_SETTINGS, bundle_available, bundle_name, export_bundle, read_manifest

    if spec == "default":
        if not bundle_available():
            sys.exit("the bundled default model is not in this build; pass --model DIR_OR_HUB_ID")
        out = export_bundle(workdir / "default-checkpoint")
        settings = {k: v for k, v in read_manifest().get("settings", {}).items() if k in ENGINE_SETTINGS}
        label = f"default ({bundle_name()})"
    else:
        out = Path(spec) if Path(spec).exists() else spec
        settings, label = {}, str(spec)
    opts = {k: v for k, v in settings.items() if k in ("max_length",)}
    if max_length:
        opts["max_length"] = max_length
    return Path(out) if not isinstance(out, str) else out, opts, label


class Scorer:
    name: str
    setup_s: float = 0.0

    def score(self, query: str, texts: list[str]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class CrossrankScorer(Scorer):
    def __init__(self, ckpt, backend: str, max_length: int, threads: int | None):
        from crossrank.rerank.engine import CrossEncoderReranker

        t0 = time.perf_counter()
        self.engine = CrossEncoderReranker(ckpt, backend=backend, max_length=max_length, activation="raw",
                                           num_threads=threads)
        self.setup_s = time.perf_counter() - t0
        self.name = backend
        if self.engine.backend != backend:
            raise RuntimeError(f"asked for {backend}, got {self.engine.backend}")

    def score(self, query, texts):
        return np.asarray(self.engine.score(query, texts).scores, dtype=np.float64)


class STScorer(Scorer):
    """sentence-transformers CrossEncoder with its defaults (batch 32, its activation), max_length set to ours."""

    name = "st"

    def __init__(self, ckpt, max_length: int):
        from sentence_transformers import CrossEncoder

        t0 = time.perf_counter()
        self.model = CrossEncoder(str(ckpt), max_length=max_length, device="cpu")
        self.setup_s = time.perf_counter() - t0

    def score(self, query, texts):
        return np.asarray(self.model.predict([(query, t) for t in texts], show_progress_bar=False), dtype=np.float64)


class HFScorer(Scorer):
    """A plain transformers loop: fp32, fixed batch 32, input order, tokenizer(q, d) truncation."""

    name = "hf"

    def __init__(self, ckpt, max_length: int, batch_size: int = 32):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        t0 = time.perf_counter()
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(str(ckpt))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(ckpt), dtype=torch.float32).eval()
        self.max_length, self.bs = max_length, batch_size
        self.setup_s = time.perf_counter() - t0

    def score(self, query, texts):
        out = []
        for i in range(0, len(texts), self.bs):
            chunk = texts[i : i + self.bs]
            enc = self.tok([query] * len(chunk), chunk, padding=True, truncation=True, max_length=self.max_length,
                           return_tensors="pt")
            with self.torch.inference_mode():
                logits = self.model(**enc).logits.float()
            out.append((logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]).numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


class SpecScorer(Scorer):
    """Any reranker spec through ``crossrank.load_reranker`` with its own recommended settings (``fast``, a cascade
    such as ``fast-student>default@20``): the speed-first models, timed against the same peers on the same candidates."""

    def __init__(self, spec: str, threads: int | None):
        """``spec`` may carry engine options after ``|``: ``default@15|max_length=128|long_documents=focus``."""
        import crossrank

        name, *pairs = spec.split("|")
        opts: dict[str, Any] = {"num_threads": threads} if threads else {}
        for kv in pairs:
            key, _, value = kv.partition("=")
            opts[key.strip()] = int(value) if value.strip().isdigit() else value.strip()
        t0 = time.perf_counter()
        self.reranker = crossrank.load_reranker(name, cache_size=0, **opts)
        self.setup_s = time.perf_counter() - t0
        self.name = spec

    def score(self, query, texts):
        """Scores in input order. A spec with a recommended ``rerank_depth`` (``fast`` = ``default@M``) scores
        only that many, as a pipeline does; the rest rank after them in input (first-stage) order."""
        from crossrank.pipeline import resolve_rerank_depth

        depth = resolve_rerank_depth("auto", self.reranker) or len(texts)
        head = np.asarray(self.reranker.score(query, texts[:depth]).scores, dtype=np.float64)
        if depth >= len(texts):
            return head
        tail = (head.min() if head.size else 0.0) - 1.0 - np.arange(len(texts) - depth) * 1e-6
        return np.concatenate([head, tail])


def make_scorer(name: str, ckpt, max_length: int, threads: int | None) -> Scorer:
    if name in CROSSRANK_BACKENDS:
        return CrossrankScorer(ckpt, name, max_length, threads)
    if name == "st":
        return STScorer(ckpt, max_length)
    if name == "hf":
        return HFScorer(ckpt, max_length)
    raise SystemExit(f"unknown backend {name!r}: use {', '.join(ALL_BACKENDS)}")


# --------------------------------------------------------------------------------------------------- RSS child


def long_texts(corpus: Path, k: int, min_words: int) -> list[str]:
    docs = []
    for line in corpus.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            docs.append(f"{d.get('title', '')} {d.get('text', '')}".strip())
    out, j = [], 0
    for _ in range(k):
        words: list[str] = []
        while len(words) < min_words:
            words += docs[j % len(docs)].split()
            j += 1
        out.append(" ".join(words))
    return out


def rss_child(args) -> None:
    """Run in a fresh process: load one backend, score K long candidates once, print a JSON line."""
    import torch

    def peak_mb() -> float:
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork + execve, so a child started by a 2 GB parent
        # would report the parent's peak (what an earlier version of this benchmark measured)
        try:
            with open("/proc/self/status", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    texts = long_texts(SHARED / "scifact" / "corpus.jsonl", args.rss_k, 600)
    query = "Vitamin D deficiency is associated with an increased risk of cardiovascular disease."
    before = peak_mb()
    scorer = make_scorer(args.rss_child, args.ckpt, 512, args.threads)
    loaded = peak_mb()
    t0 = time.perf_counter()
    scorer.engine._encode_docs(texts)  # what tokenising costs on its own (the engine does it again below)
    tokenize_s = time.perf_counter() - t0
    c0, t0 = time.process_time(), time.perf_counter()
    s = scorer.engine.score(query, texts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({
        "backend": args.rss_child, "k": len(texts), "max_length": 512, "tokens": s.tokens,
        "tokens_per_pair": s.tokens / len(texts), "rss_before_load_mb": round(before, 1),
        "rss_after_load_mb": round(loaded, 1), "peak_rss_mb": round(peak_mb(), 1),
        "peak_above_loaded_mb": round(peak_mb() - loaded, 1), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "tokenize_s": round(tokenize_s, 3), "tokenize_share": round(tokenize_s / wall, 4),
        "batch_tokens": scorer.engine.batch_tokens, "threads": torch.get_num_threads(),
    }))


def run_rss(args, ckpt, backends) -> list[dict[str, Any]]:
    out = []
    for b in backends:
        if b not in CROSSRANK_BACKENDS:
            continue
        cmd = [sys.executable, __file__, "--_rss-child", b, "--_ckpt", str(ckpt), "--rss-k", str(args.rss_k)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print(f"[rss] {b}: K={args.rss_k} x 512 tokens in a fresh process ...", flush=True)
        res = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        if res.returncode or not line:
            print(f"[rss] {b} failed: {res.stderr[-800:]}", flush=True)
            out.append({"backend": b, "error": res.stderr[-400:]})
            continue
        rec = json.loads(line[-1])
        print(f"[rss] {b}: peak {rec['peak_rss_mb']:.0f} MB ({rec['peak_above_loaded_mb']:+.0f} MB above loaded), "
              f"{rec['wall_s']:.1f} s", flush=True)
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------------- main


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p)) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="'default' (the bundled model) or a checkpoint dir / hub id")
    ap.add_argument("--k", type=int, nargs="+", default=[20, 100, 1000])
    ap.add_argument("--queries", type=int, default=10, help="timed queries per K (K>=1000 uses --k1000-queries)")
    ap.add_argument("--k1000-queries", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="timed runs over the queries (K>=1000: 1)")
    ap.add_argument("--backends", default=",".join(ALL_BACKENDS))
    ap.add_argument("--rerankers", default="",
                    help="also time these reranker specs as they load by default, e.g. fast,fast-student>default@20 "
                         "(ratios against sentence-transformers on --model); engine options may follow a spec after "
                         "'|', e.g. 'default@15|max_length=128'")
    ap.add_argument("--agreement-queries", type=int, default=0, help="extra K=100 queries scored once for nDCG")
    ap.add_argument("--max-length", type=int, default=None, help="default: the model's recommended / engine's")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--index", default=None)
    ap.add_argument("--rss", action="store_true", help="also measure peak RSS at K=--rss-k x 512 tokens")
    ap.add_argument("--rss-k", type=int, default=1000)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default="bench_rerank")
    ap.add_argument("--_rss-child", dest="rss_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_ckpt", dest="ckpt", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.rss_child:
        rss_child(args)
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    machine = cpu_info()
    print(f"CPU: {machine['model']} | {machine['cores']} cores @ {machine['clock_ghz']} GHz | ISA {machine['isa']} | "
          f"fp32 FMA peak {machine['fp32_peak_tflops']} TFLOP/s ({machine['cores']} x "
          f"{machine['fp32_flop_per_cycle_per_core']} FLOP/cycle x {machine['clock_ghz']} GHz) | "
          f"torch threads {torch.get_num_threads()} | load {machine['loadavg_start']}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-rerank-"))
    ckpt, opts, label = prepare_model(args.model, args.max_length, work)
    from transformers import AutoConfig

    from crossrank.rerank.engine import CrossEncoderReranker

    cfg = AutoConfig.from_pretrained(str(ckpt))
    probe = CrossEncoderReranker(ckpt, backend="torch", **opts)  # resolves max_length like the engine does
    max_length = probe.max_length
    print(f"model: {label} | max_length {max_length} | {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}",
          flush=True)

    queries, qrels = load_scifact(SHARED / "scifact")
    index_dir = find_index(args.index)
    from crossrank.retrieve import load_index

    retriever = load_index(index_dir).retriever("hybrid")
    small_ks = [k for k in args.k if k < 1000]
    big_ks = [k for k in args.k if k >= 1000]
    n_needed = max(args.queries + args.agreement_queries, args.k1000_queries)
    qids = list(queries)[:n_needed]
    kmax = max(args.k)
    t0 = time.perf_counter()
    cands = {qid: retriever.search(queries[qid], kmax) for qid in qids}
    print(f"hybrid top-{kmax} for {len(qids)} queries from {index_dir} in {time.perf_counter() - t0:.1f} s", flush=True)

    def texts_for(qid: str, k: int) -> tuple[list[str], list[str]]:
        cs = cands[qid][:k]
        return [c.full_text for c in cs], [c.doc_id for c in cs]

    # token counts (what the engine feeds; all backends see the same truncation budget)
    def useful_flops(query: str, texts: list[str]) -> tuple[int, float]:
        q, _ = probe._prepare_query(query)
        docs = probe._encode_docs(texts)
        ns = [min(len(q) + len(d) + probe.template.n_special, max_length) for d in docs]
        return sum(ns), float(sum(flops_per_pair(cfg, n) for n in ns))

    scorers: dict[str, Scorer] = {}
    for b in backends:
        print(f"loading {b} ...", flush=True)
        scorers[b] = make_scorer(b, ckpt, max_length, args.threads)
        print(f"  {b}: ready in {scorers[b].setup_s:.1f} s", flush=True)
    specs = [x.strip() for x in args.rerankers.split(",") if x.strip()]
    for spec in specs:
        print(f"loading {spec} ...", flush=True)
        scorers[spec] = SpecScorer(spec, args.threads)
        print(f"  {spec}: ready in {scorers[spec].setup_s:.1f} s", flush=True)
    backends = backends + specs  # timed and compared like the backends (FLOP/s only for --model's checkpoint)


    results: dict[str, Any] = {"latency": {}, "agreement": {}, "setup_s": {b: round(s.setup_s, 2) for b, s in scorers.items()}}
    rows = []
    agree_scores: dict[str, dict[str, np.ndarray]] = {b: {} for b in backends}
    for k in small_ks + big_ks:
        nq = args.k1000_queries if k >= 1000 else args.queries
        runs = 1 if k >= 1000 else args.runs
        kq = qids[:nq]
        lat = {b: [] for b in backends}
        cpu = {b: [] for b in backends}
        tokens = flops = 0.0
        warm_texts, _ = texts_for(kq[0], min(k, 8))
        for b in backends:  # warm-up (first-call allocations, lazy inits)
            scorers[b].score(queries[kq[0]], warm_texts)
        print(f"K={k}: {len(kq)} queries x {runs} runs, load {os.getloadavg()[0]:.1f}", flush=True)
        for run in range(runs):
            for qi, qid in enumerate(kq):
                texts, doc_ids = texts_for(qid, k)
                if run == 0:
                    t, f = useful_flops(queries[qid], texts)
                    tokens += t
                    flops += f
                order = backends[(qi + run) % len(backends):] + backends[: (qi + run) % len(backends)]
                for b in order:
                    c0, t0 = time.process_time(), time.perf_counter()
                    s = scorers[b].score(queries[qid], texts)
                    lat[b].append(time.perf_counter() - t0)
                    cpu[b].append(time.process_time() - c0)
                    if run == 0 and k == 100:
                        agree_scores[b][qid] = s
                done = sum(len(v) for v in lat.values())
                print(f"  run {run + 1}/{runs} query {qi + 1}/{len(kq)} ({done} calls)", flush=True)
        n_pairs = [len(texts_for(q, k)[0]) for q in kq]
        pairs_per_query = statistics.mean(n_pairs)
        flops_per_query = flops / len(kq)
        tokens_per_query = tokens / len(kq)
        ref_med = statistics.median(lat[REFERENCE]) if REFERENCE in lat else None
        for b in backends:
            med = statistics.median(lat[b])
            rec = {
                "backend": b, "k": k, "queries": len(kq), "runs": runs, "calls": len(lat[b]),
                "pairs_per_query": pairs_per_query, "tokens_per_query": tokens_per_query,
                "median_s": med, "p95_s": pct(lat[b], 95), "cpu_median_s": statistics.median(cpu[b]),
                "pairs_per_s": pairs_per_query / med,
                "tflops": flops_per_query / med / 1e12 if b not in specs else None,
                "peak_fraction": (flops_per_query / med / 1e12) / machine["fp32_peak_tflops"]
                if machine["fp32_peak_tflops"] and b not in specs else None,
                "speedup_vs_st": (ref_med / med) if ref_med else None,
            }
            rows.append(rec)
            results["latency"].setdefault(str(k), {})[b] = rec
            print(f"  {b:10s} median {med * 1000:8.1f} ms  p95 {rec['p95_s'] * 1000:8.1f} ms  "
                  f"{rec['pairs_per_s']:7.1f} pairs/s  {(rec['tflops'] or float('nan')) * 1000:6.1f} GFLOP/s  "
                  f"x{rec['speedup_vs_st'] or float('nan'):.2f} vs st", flush=True)

    # extra agreement-only queries at K=100
    extra = qids[args.queries : args.queries + args.agreement_queries] if 100 in args.k else []
    for qi, qid in enumerate(extra):
        texts, _ = texts_for(qid, 100)
        for b in backends:
            agree_scores[b][qid] = scorers[b].score(queries[qid], texts)
        if (qi + 1) % 10 == 0:
            print(f"  agreement: {qi + 1}/{len(extra)} extra queries", flush=True)

    if agree_scores.get(AGREE_REF):
        aq = list(agree_scores[AGREE_REF])
        ref_first = {qid: texts_for(qid, 100)[1] for qid in aq}
        first_stage = statistics.mean(ndcg_at_10(ref_first[qid], qrels.get(qid, {})) for qid in aq)
        ref_nd = None
        results["agreement"]["queries"] = len(aq)
        results["agreement"]["k"] = 100
        results["agreement"]["first_stage_ndcg10"] = first_stage
        for b in [AGREE_REF] + [x for x in backends if x != AGREE_REF]:
            nds, same = [], []
            for qid in aq:
                ids = ref_first[qid]
                s = agree_scores[b][qid]
                order = [ids[i] for i in np.argsort(-s, kind="stable")]
                nds.append(ndcg_at_10(order, qrels.get(qid, {})))
                r = agree_scores[AGREE_REF][qid]
                same.append(list(np.argsort(-s, kind="stable")[:10]) == list(np.argsort(-r, kind="stable")[:10]))
            nd = statistics.mean(nds)
            if b == AGREE_REF:
                ref_nd = nd
            results["agreement"][b] = {"ndcg10": nd, "delta_vs_torch_fp32": nd - ref_nd,
                                       "top10_identical": statistics.mean(same), "within_0.005": abs(nd - ref_nd) <= 0.005}
            print(f"agreement {b:10s} nDCG@10 {nd:.4f} ({nd - ref_nd:+.4f} vs torch fp32)  "
                  f"top-10 order identical on {100 * statistics.mean(same):.0f}% of {len(aq)} queries", flush=True)

    if args.rss:
        results["rss"] = run_rss(args, ckpt, backends)

    machine["loadavg_end"] = os.getloadavg()
    report = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine,
              "versions": versions(), "model": label, "max_length": max_length, "index": str(index_dir),
              "args": {k: v for k, v in vars(args).items() if k not in ("rss_child", "ckpt")}, **results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / f"{args.tag}.md").write_text(markdown(report, backends), encoding="utf-8")
    print(f"wrote {out / (args.tag + '.json')} and .md", flush=True)
    return 0


def markdown(r: dict[str, Any], backends: list[str]) -> str:
    m = r["machine"]
    lines = [
        f"# Rerank inference benchmark ({r['created']})", "",
        f"- CPU: {m['model']}, {m['cores']} cores at {m['clock_ghz']} GHz ({', '.join(m['isa'])}); fp32 FMA peak "
        f"assumed {m['fp32_peak_tflops']} TFLOP/s = {m['cores']} cores x {m['fp32_flop_per_cycle_per_core']} "
        f"FLOP/cycle x clock; load average {m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end",
        f"- model: {r['model']}, max_length {r['max_length']}; candidates: SciFact test, hybrid top-K from {r['index']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        "- setup (load + any ONNX build) s: " + ", ".join(f"{b} {s}" for b, s in r["setup_s"].items()),
        "",
        "| K | backend | queries x runs | median ms | p95 ms | pairs/s | x vs ST | GFLOP/s | % of fp32 peak | cpu s (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, per in r["latency"].items():
        for b in backends:
            x = per.get(b)
            if not x:
                continue
            lines.append(
                f"| {k} | {b} | {x['queries']} x {x['runs']} | {x['median_s'] * 1000:.0f} | {x['p95_s'] * 1000:.0f} | "
                f"{x['pairs_per_s']:.1f} | {x['speedup_vs_st'] or float('nan'):.2f} | "
                f"{(x['tflops'] or float('nan')) * 1000:.1f} | "
                f"{100 * (x['peak_fraction'] or float('nan')):.1f} | {x['cpu_median_s']:.2f} |")
    a = r.get("agreement") or {}
    if a.get("queries"):
        lines += ["", f"Agreement on {a['queries']} SciFact test queries x K={a['k']} (first stage nDCG@10 "
                      f"{a['first_stage_ndcg10']:.4f}); reference: crossrank torch fp32", "",
                  "| backend | nDCG@10 | delta | within 0.005 | top-10 order identical |", "|---|---|---|---|---|"]
        for b in backends:
            if b in a:
                x = a[b]
                lines.append(f"| {b} | {x['ndcg10']:.4f} | {x['delta_vs_torch_fp32']:+.4f} | {x['within_0.005']} | "
                             f"{100 * x['top10_identical']:.0f}% |")
    if r.get("rss"):
        lines += ["", "Peak RSS, K candidates x 512 tokens, one backend per fresh process", "",
                  "| backend | K | tokens | RSS loaded MB | peak RSS MB | peak above loaded MB | wall s | batch_tokens |",
                  "|---|---|---|---|---|---|---|---|"]
        for x in r["rss"]:
            if "error" in x:
                lines.append(f"| {x['backend']} | failed | | | | | | |")
                continue
            lines.append(f"| {x['backend']} | {x['k']} | {x['tokens']} | {x['rss_after_load_mb']:.0f} | "
                         f"{x['peak_rss_mb']:.0f} | {x['peak_above_loaded_mb']:.0f} | {x['wall_s']:.1f} | "
                         f"{x['batch_tokens']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
