"""The dense side's ANN graph (retrieve/ann.py): recall against exact search, exact rescoring, persistence with the
index (manifest sha256, memory-mapped load), the automatic size threshold, and indexes written without one."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SAMPLE_DOCS
from crossrank.errors import IndexLoadError
from crossrank.retrieve import AnnIndex, DenseRetriever, build_index, load_index
from crossrank.retrieve import index as index_module
from crossrank.types import Document, Passage

DOCS = [Document(id=d["_id"], title=d["title"], text=d["text"]) for d in SAMPLE_DOCS]


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def test_graph_recall_and_exact_rescoring():
    x, q = unit_vectors(1500, 32, 0), unit_vectors(20, 32, 1)
    passages = [Passage(id=f"p{i}", doc_id=f"p{i}", text=f"t{i}") for i in range(len(x))]
    graph = AnnIndex.build(x)
    approx = DenseRetriever(passages, model="unused", embeddings=x, ann=graph)
    got, want = approx.search_vectors(q, 20), exact_top(x, q, 20)
    recall = np.mean([len({int(c.id[1:]) for c in g} & set(w.tolist())) / 20 for g, w in zip(got, want, strict=True)])
    assert recall >= 0.95, recall
    for g in got:  # scores are the exact inner products, best first
        rows = [int(c.id[1:]) for c in g]
        assert np.allclose([c.score for c in g], x[rows] @ q[got.index(g)], atol=1e-6)
        assert [c.rank for c in g] == list(range(1, len(g) + 1))
        assert all(a.score >= b.score for a, b in zip(g, g[1:], strict=False))


def test_graph_update_removes_and_adds_keys():
    x = unit_vectors(500, 32, 2)
    graph = AnnIndex.build(x)
    keep = np.ones(500, dtype=bool)
    keep[[3, 10, 499]] = False
    extra = unit_vectors(20, 32, 3)
    new = graph.updated(keep, extra)
    assert len(new) == 517 and np.all(np.diff(new.keys) > 0) and new.keys[-1] == 519
    rows = new.candidates(extra[:1], 5)[0]
    matrix = np.concatenate([x[keep], extra])  # what the index's dense.npy holds after the update
    assert 497 in rows.tolist()  # the first added vector finds itself, at its new row
    assert np.allclose(matrix[497], extra[0])
    assert not {3, 10, 499} & set(new.graph.search(x[3], 50).keys.tolist())  # removed keys are gone


def test_save_and_memory_mapped_load(tmp_path):
    x = unit_vectors(300, 16, 4)
    graph = AnnIndex.build(x)
    graph.save(tmp_path)
    viewed = AnnIndex.load(tmp_path, graph.params, 16, view=True)
    q = unit_vectors(5, 16, 5)
    assert [r.tolist() for r in viewed.candidates(q, 10)] == [r.tolist() for r in graph.candidates(q, 10)]


@pytest.mark.slow
def test_threshold_decides_automatically(tmp_path, monkeypatch, tiny_model_dir):
    """ann=None follows ANN_MIN_PASSAGES; True/False force it (a tiny real bi-encoder: the threshold is what counts)."""
    model = str(tiny_model_dir)
    assert index_module.ANN_MIN_PASSAGES >= 10_000  # exact search is kept for small corpora
    assert build_index(DOCS, methods=("dense",), dense_model=model, progress=False).ann is None
    assert build_index(DOCS, methods=("dense",), dense_model=model, ann=True, progress=False).ann is not None
    monkeypatch.setattr(index_module, "ANN_MIN_PASSAGES", 6)
    assert build_index(DOCS, methods=("dense",), dense_model=model, progress=False).ann is not None
    assert build_index(DOCS, methods=("dense",), dense_model=model, ann=False, progress=False).ann is None
    assert build_index(DOCS[:5], methods=("dense",), dense_model=model, progress=False).ann is None


@pytest.mark.slow
def test_index_with_graph_persists_verifies_and_matches_exact(tmp_path, monkeypatch):
    exact = build_index(DOCS, tmp_path / "exact", progress=False)
    assert exact.ann is None and "ann" not in exact.manifest["dense"]  # 6 passages: below the threshold
    monkeypatch.setattr(index_module, "ANN_MIN_PASSAGES", 5)
    approx = build_index(DOCS, tmp_path / "ann", progress=False)
    monkeypatch.undo()
    info = approx.manifest["dense"]["ann"]
    assert info["library"] == "usearch" and info["file"] == "dense.usearch"
    files = approx.manifest["files"]
    assert {"dense.usearch", "dense_keys.npy"} <= set(files) and len(files["dense.usearch"]["sha256"]) == 64
    loaded = load_index(tmp_path / "ann")
    assert loaded.ann is not None and len(loaded.ann) == 6
    assert load_index(tmp_path / "exact").ann is None  # an index without a graph still loads as before
    for q in ("how do plants make food", "what causes earthquakes", "hormone regulating blood sugar"):
        a = loaded.retriever("dense").search(q, k=6)
        b = load_index(tmp_path / "exact").retriever("dense").search(q, k=6)
        assert [c.id for c in a] == [c.id for c in b]
        assert np.allclose([c.score for c in a], [c.score for c in b], atol=1e-5)
        h = loaded.retriever("hybrid").search(q, k=3)
        assert [c.id for c in h] == [c.id for c in exact.retriever("hybrid").search(q, k=3)]
    # the graph survives a re-save (float16 vectors) and is verified like every other file
    resaved = load_index(tmp_path / "ann").save(tmp_path / "f16", dense_dtype="float16")
    assert load_index(resaved).ann is not None
    data = bytearray((tmp_path / "ann" / "dense.usearch").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "ann" / "dense.usearch").write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match=r"dense\.usearch changed since the index was built"):
        load_index(tmp_path / "ann")


def test_a_graph_first_then_onnxruntime_does_not_crash_the_process():
    """usearch loaded before onnxruntime made onnxruntime's import segfault; a fresh process that builds a graph
    first and then needs the ONNX encoder (any search of a large index) must live."""
    import subprocess
    import sys

    code = ("import numpy as np; from crossrank.retrieve.ann import AnnIndex; "
            "AnnIndex.build(np.eye(8, dtype=np.float32)); import onnxruntime; print('alive')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "alive", proc.stderr[-500:]
