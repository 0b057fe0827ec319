"""Which ANN library for the dense side (retrieve/ann.py): usearch vs faiss-cpu (IndexHNSWFlat) vs hnswlib, the
same HNSW settings (M=16, ef_construction=128, ef_search 128 and 256), on N clustered random-normalised 384-d
vectors (500 Gaussian centres plus noise; pure noise is the worst case for any graph) and 200 queries drawn the
same way: build time, recall@100 against exact search, single-query latency (one thread), saved size and
memory-mapped open time (usearch's ``view``).

faiss-cpu and hnswlib are not crossrank dependencies: run it in a scratch environment with
``pip install usearch faiss-cpu hnswlib numpy``.

    nice -n 10 python benchmarks/bench_ann_libs.py 50000 usearch,faiss,hnswlib

Results: printed, and ``ann_<libs>.json`` in the working directory; the choice is written up in benchmarks/results/ann_choice.md.
"""
import json
import os
import sys
import time

import numpy as np

n, d, nq, k = int(sys.argv[1]), 384, 200, 100
rng = np.random.default_rng(0)
# clustered-ish data (pure gaussian is the worst case for ANN): mixture of 500 centres + noise
centres = rng.standard_normal((500, d)).astype(np.float32)
x = centres[rng.integers(0, 500, n)] + 0.9 * rng.standard_normal((n, d)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
q = centres[rng.integers(0, 500, nq)] + 0.9 * rng.standard_normal((nq, d)).astype(np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
t = time.perf_counter(); exact = np.argsort(-(q @ x.T), axis=1)[:, :k]; print("exact batch", time.perf_counter() - t)
def recall(got):
    return float(np.mean([len(set(g[:k]) & set(e)) / k for g, e in zip(got, exact, strict=True)]))
res = {}
def timeq(fn):
    ts = []
    out = []
    for i in range(nq):
        t = time.perf_counter(); out.append(fn(q[i])); ts.append(time.perf_counter() - t)
    return out, 1000 * float(np.median(ts)), 1000 * float(np.percentile(ts, 95))
which = sys.argv[2].split(",")
M, efc = 16, 128
if "usearch" in which:
    from usearch.index import Index
    for dtype in ("f32", "f16"):
        idx = Index(ndim=d, metric="ip", dtype=dtype, connectivity=M, expansion_add=efc, expansion_search=128)
        t = time.perf_counter(); idx.add(np.arange(n), x, threads=2); bt = time.perf_counter() - t
        for ef in (128, 256):
            idx.expansion_search = ef
            out, med, p95 = timeq(lambda v, idx=idx: idx.search(v, k, threads=1).keys)
            res[f"usearch-{dtype}-ef{ef}"] = dict(build_s=bt, recall=recall(out), med_ms=med, p95_ms=p95)
            print(f"usearch-{dtype}-ef{ef}", res[f"usearch-{dtype}-ef{ef}"], flush=True)
        idx.save("u.usearch"); print("size MB", os.path.getsize("u.usearch") / 1e6)
        t = time.perf_counter(); v = Index.restore("u.usearch", view=True); print("view load s", time.perf_counter() - t)
if "faiss" in which:
    import faiss
    faiss.omp_set_num_threads(2)
    idx = faiss.IndexHNSWFlat(d, M, faiss.METRIC_INNER_PRODUCT); idx.hnsw.efConstruction = efc
    t = time.perf_counter(); idx.add(x); bt = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    for ef in (128, 256):
        idx.hnsw.efSearch = ef
        out, med, p95 = timeq(lambda v: idx.search(v[None], k)[1][0])
        res[f"faiss-ef{ef}"] = dict(build_s=bt, recall=recall(out), med_ms=med, p95_ms=p95); print(f"faiss-ef{ef}", res[f"faiss-ef{ef}"], flush=True)
if "hnswlib" in which:
    import hnswlib
    idx = hnswlib.Index(space="ip", dim=d); idx.init_index(max_elements=n, ef_construction=efc, M=M)
    idx.set_num_threads(2)
    t = time.perf_counter(); idx.add_items(x, np.arange(n)); bt = time.perf_counter() - t
    idx.set_num_threads(1)
    for ef in (128, 256):
        idx.set_ef(ef)
        out, med, p95 = timeq(lambda v: idx.knn_query(v[None], k)[0][0])
        res[f"hnswlib-ef{ef}"] = dict(build_s=bt, recall=recall(out), med_ms=med, p95_ms=p95); print(f"hnswlib-ef{ef}", res[f"hnswlib-ef{ef}"], flush=True)
json.dump(res, open(f"ann_{'_'.join(which)}.json", "w"), indent=1)
