"""ANN recall@100 against exact search on resampled real embeddings, by corpus size and resampling noise: how
much of ``bench_scale.py``'s recall is the near-duplicates its resampling makes (issue #23).

The real part is the stored vectors of built indexes (``--real-from``, as in ``bench_scale.py``); the rest are
random real vectors plus Gaussian noise (``--noise``, comma-separated: 0.3 leaves each copy at cosine ~0.96 to its
source, 1.0 at ~0.71), re-normalised. The graph is crossrank's (``retrieve/ann.py``, default parameters) and
recall is measured at expansion_search 128 and 512 on SciFact *train* queries.

    python benchmarks/bench_ann_resample.py --n 200000 --noise 0.3,1.0 --real-from IDX1,IDX2,...

One JSON line per (noise, expansion_search) on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import indexed_passages, train_queries  # noqa: E402


def recall_at_100(vectors: np.ndarray, graph, queries: np.ndarray) -> np.ndarray:
    out = []
    for q in queries:
        want = set(np.argpartition(-(vectors @ q), 100)[:100])
        rows = graph.candidates(q[None], 100)[0]
        out.append(len(want & set(rows[np.argsort(-(vectors[rows] @ q))[:100]])) / 100)
    return np.asarray(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--noise", type=lambda v: [float(x) for x in v.split(",")], default=[0.3, 1.0])
    ap.add_argument("--real-from", type=lambda v: v.split(","), required=True)
    ap.add_argument("--train-queries", type=int, default=300)
    args = ap.parse_args()

    from crossrank.retrieve import encode_bulk
    from crossrank.retrieve.ann import AnnIndex
    from crossrank.retrieve.dense import load_bi_encoder

    _, real = indexed_passages(args.real_from)
    queries, _ = encode_bulk(load_bi_encoder("default"), train_queries(args.train_queries))
    for noise in args.noise:
        rng = np.random.default_rng(0)
        src = rng.integers(0, len(real), args.n - len(real))
        fake = real[src] + rng.standard_normal((len(src), real.shape[1])).astype(np.float32) * (
            noise / np.sqrt(real.shape[1]))
        fake /= np.linalg.norm(fake, axis=1, keepdims=True)
        vectors = np.concatenate([real, fake])
        t = time.perf_counter()
        graph = AnnIndex.build(vectors)
        build_s = time.perf_counter() - t
        for ef in (128, 512):
            graph.params["expansion_search"] = ef
            graph.graph.expansion_search = ef
            r = recall_at_100(vectors, graph, queries)
            print(json.dumps({"n": args.n, "real": len(real), "noise": noise, "expansion_search": ef,
                              "build_s": round(build_s, 1), "recall_at_100_mean": round(float(r.mean()), 4),
                              "recall_at_100_min": float(r.min()), "queries_below_0.5": int((r < 0.5).sum())}),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
