"""BM25, dense, hybrid fusion and index persistence (atomic save, load, refusal of half-built indexes)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from conftest import SAMPLE_DOCS, shared_dataset
from crossrank.corpus import load_corpus
from crossrank.errors import IndexLoadError, InputError
from crossrank.onnx_graph import onnx_available
from crossrank.retrieve import (
    BM25Retriever,
    DenseRetriever,
    HybridRetriever,
    Index,
    Retriever,
    build_index,
    load_bi_encoder,
    load_index,
    min_max,
    reciprocal_rank_fusion,
    weighted_fusion,
)
from crossrank.retrieve import index as index_module
from crossrank.types import Candidate, Document

DOCS = [Document(id=d["_id"], title=d["title"], text=d["text"]) for d in SAMPLE_DOCS]


def ids(cands):
    return [c.id for c in cands]


class ListRetriever:
    """A real, tiny Retriever over fixed ranked lists (for fusion math)."""

    def __init__(self, name, ranked):
        self.name = name
        self.ranked = ranked  # list of (id, score)

    def search(self, query, k=100):
        return [Candidate(id=i, doc_id=i, text=f"text {i}", score=s, rank=r) for r, (i, s) in
                enumerate(self.ranked[:k], start=1)]

    def search_batch(self, queries, k=100):
        return [self.search(q, k) for q in queries]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One real index (BM25 + MiniLM dense) over the six sample documents, saved to disk."""
    out = tmp_path_factory.mktemp("idx") / "index"
    return build_index(DOCS, out, progress=False), out


# ------------------------------------------------------------------------------------------------ BM25
def test_bm25_finds_the_obvious_doc():
    r = BM25Retriever(DOCS)
    assert isinstance(r, Retriever) and r.name == "bm25"
    hits = r.search("volcano magma lava", k=3)
    assert hits[0].id == "d3" and hits[0].rank == 1 and hits[0].title == "Volcanoes"
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))


def test_bm25_stemming_and_no_match():
    r = BM25Retriever(DOCS)
    assert r.search("erupting volcanoes")[0].id == "d3"  # stemmed: erupt, volcano
    assert r.search("zyxwv qqq") == []  # only matching passages are returned
    assert ids(r.search_batch(["insulin", "black hole"], k=1)[1]) == ["d4"]
    with pytest.raises(InputError, match="empty"):
        r.search("   ")
    with pytest.raises(InputError):
        r.search("insulin", k=0)


# ------------------------------------------------------------------------------------------------ dense
@pytest.mark.slow
def test_dense_finds_a_paraphrase(built):
    index, _ = built
    r = index.retriever("dense")
    assert isinstance(r, DenseRetriever) and r.dimension == 384
    # no word shared with d2 ("Mitochondria produce ATP ... powerhouse of the cell")
    assert r.search("which organelle generates energy for cells", k=3)[0].id == "d2"
    assert r.search("how do green leaves turn light into sugar", k=1)[0].id == "d1"
    norms = np.linalg.norm(index.embeddings, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)


@pytest.mark.slow
def test_dense_batch_equals_single(built):
    r = built[0].retriever("dense")
    qs = ["earthquakes and mountains", "hormone controlling blood sugar"]
    batch = r.search_batch(qs, k=6)
    for q, b in zip(qs, batch, strict=True):
        single = r.search(q, k=6)
        assert ids(single) == ids(b)
        assert np.allclose([c.score for c in single], [c.score for c in b], atol=1e-5)


needs_onnx = pytest.mark.skipif(not onnx_available(), reason="onnxruntime / onnx not installed")


@needs_onnx
@pytest.mark.slow
def test_dense_queries_on_onnx_match_torch(built):
    index, _ = built
    on_onnx = index.retriever("dense", query_backend="onnx")
    on_torch = DenseRetriever(index.passages, "default", embeddings=index.embeddings, query_backend="torch")
    assert (on_onnx.query_backend_used, on_torch.query_backend_used) == ("onnx", "torch")
    qs = ["which organelle generates energy for cells", "hormone controlling blood sugar", "a" * 3000]
    got, ref = on_onnx.encode_queries(qs), on_torch.encode_queries(qs)  # the last one is truncated alike
    assert got.shape == ref.shape == (3, 384) and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-5
    for q in qs[:2]:
        a, b = on_onnx.search(q, k=6), on_torch.search(q, k=6)
        assert ids(a) == ids(b) and np.allclose([c.score for c in a], [c.score for c in b], atol=1e-5)
    assert index.retriever("dense").query_backend_used == "onnx"  # auto picks it on CPU


@pytest.mark.slow
def test_dense_query_backend_errors(built):
    index, _ = built
    with pytest.raises(InputError, match="unknown query backend 'gpu'"):
        index.retriever("dense", query_backend="gpu")


@pytest.mark.slow
def test_onnx_query_encoder_refuses_what_it_cannot_mirror():
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    from crossrank.retrieve.dense import OnnxQueryEncoder

    bi = load_bi_encoder("default")
    max_pooled = SentenceTransformer(modules=[bi[0], Pooling(bi[0].get_embedding_dimension(), pooling_mode="max")])
    with pytest.raises(ValueError, match="pooling mode 'max'"):
        OnnxQueryEncoder(max_pooled)
    with pytest.raises(ValueError, match="only Transformer"):
        OnnxQueryEncoder(SentenceTransformer(modules=[bi[0]]))


@pytest.mark.slow
def test_load_bi_encoder_default_is_cached_and_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_bi_encoder("default") is load_bi_encoder("default")


# ------------------------------------------------------------------------------------------------ fusion
def test_rrf_math():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d"]], rrf_k=60)
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["c"] == pytest.approx(1 / 63)
    assert fused["d"] == pytest.approx(1 / 62)
    w = reciprocal_rank_fusion([["a"], ["a"]], rrf_k=0, weights=[2, 1])
    assert w["a"] == pytest.approx(3.0)


def test_weighted_fusion_math():
    assert min_max({"a": 10, "b": 5, "c": 0}) == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert min_max({"a": 3, "b": 3}) == {"a": 1.0, "b": 1.0}
    fused = weighted_fusion([{"a": 10, "b": 5, "c": 0}, {"b": 0.9, "d": 0.1}], weights=[0.3, 0.7])
    assert fused == pytest.approx({"a": 0.3, "b": 0.15 + 0.7, "c": 0.0, "d": 0.0})


def test_hybrid_retriever_rrf_and_depth():
    a = ListRetriever("a", [("x", 9.0), ("y", 8.0), ("z", 7.0)])
    b = ListRetriever("b", [("z", 0.9), ("y", 0.8), ("w", 0.1)])
    h = HybridRetriever([a, b], fusion="rrf", rrf_k=60)
    assert isinstance(h, Retriever)
    out = h.search("q", k=2)
    # y: 1/62 + 1/62, z: 1/63 + 1/61 (slightly more), x: 1/61, w: 1/63
    assert ids(out) == ["z", "y"] and [c.rank for c in out] == [1, 2]
    assert out[0].score == pytest.approx(1 / 63 + 1 / 61)
    assert ids(h.search("q", k=10)) == ["z", "y", "x", "w"]
    assert [ids(x) for x in h.search_batch(["q", "r"], k=2)] == [["z", "y"], ["z", "y"]]
    wh = HybridRetriever([a, b], fusion="weighted", weights=[1, 1])
    out = wh.search("q", k=4)
    # y: .5 + .875; x: 1 + 0 and z: 0 + 1 tie (both best rank 1, then by id); w: 0
    assert ids(out) == ["y", "x", "z", "w"]
    assert [c.score for c in out] == pytest.approx([1.375, 1.0, 1.0, 0.0])
    with pytest.raises(InputError, match="fusion"):
        HybridRetriever([a, b], fusion="max")


def test_hybrid_fetches_deeper_than_k():
    deep = ListRetriever("a", [(f"d{i}", 100.0 - i) for i in range(50)])
    other = ListRetriever("b", [("d40", 1.0)])
    # d40 is rank 41 in `deep`: found only because each retriever is asked for max(k, 100)
    assert "d40" in ids(HybridRetriever([deep, other]).search("q", k=1))
    assert "d40" not in ids(HybridRetriever([deep, other], depth=5).search("q", k=1))


# ------------------------------------------------------------------------------------------------ index
@pytest.mark.slow
def test_index_roundtrip_identical_results(built):
    index, path = built
    loaded = load_index(path, verify=True)
    assert isinstance(loaded, Index) and len(loaded) == len(index) == 6
    assert list(loaded.passages) == index.passages  # read on demand from passages.jsonl
    assert isinstance(loaded.embeddings, np.memmap)
    m = loaded.manifest
    assert m["format_version"] == 1 and m["methods"] == ["bm25", "dense"]
    assert m["dense"]["model"] == "default" and m["dense"]["dimension"] == 384
    assert m["counts"] == {"documents": 6, "passages": 6} and "dense.npy" in m["files"]
    for kind in ("bm25", "dense", "hybrid"):
        for q in ("how do plants make food", "what causes earthquakes"):
            a, b = index.retriever(kind).search(q, k=5), loaded.retriever(kind).search(q, k=5)
            assert ids(a) == ids(b)
            assert np.allclose([c.score for c in a], [c.score for c in b], atol=1e-6)


@pytest.mark.slow
def test_index_has_no_pickles(built):
    _, path = built
    for f in path.rglob("*.npy"):
        np.load(f, allow_pickle=False)  # would raise on object arrays
    assert not [f for f in path.rglob("*") if f.suffix in (".pkl", ".pickle")]


@pytest.mark.slow
def test_index_options_and_errors(built, tmp_path):
    index, _ = built
    h = index.retriever("hybrid", fusion="weighted", weights=[0.5, 0.5], depth=10)
    assert isinstance(h, HybridRetriever) and h.fusion == "weighted"
    with pytest.raises(InputError, match="unknown retriever kind"):
        index.retriever("splade")
    with pytest.raises(InputError, match="unknown retriever option"):
        index.retriever("hybrid", colour="red")
    bm25_only = build_index(DOCS, tmp_path / "b", methods=("bm25",), progress=False)
    assert load_index(tmp_path / "b").retriever("bm25").search("insulin")[0].id == "d5"
    with pytest.raises(InputError, match="no dense part"):
        bm25_only.retriever("hybrid")


@pytest.mark.slow
def test_incremental_rebuild_reuses_vectors(built, tmp_path):
    index, path = built
    extra = Document(id="d7", title="Comets", text="Comets are icy bodies that grow a glowing tail near the Sun.")
    new = build_index(DOCS + [extra], tmp_path / "new", reuse=path, progress=False)
    assert new.manifest["dense"]["reused_vectors"] == 6
    assert np.array_equal(new.embeddings[:6], np.asarray(index.embeddings))
    assert new.retriever("dense").search("frozen objects orbiting close to our star", k=1)[0].id == "d7"


@pytest.mark.slow
def test_float16_vectors_halve_the_file(built, tmp_path):
    _, path = built
    out = load_index(path).save(tmp_path / "f16", dense_dtype="float16")
    loaded = load_index(out)
    assert loaded.manifest["dense"]["dtype"] == "float16" and loaded.embeddings.dtype == np.float32
    assert (out / "dense.npy").stat().st_size < 0.6 * (path / "dense.npy").stat().st_size
    q = "what causes earthquakes"
    assert ids(loaded.retriever("dense").search(q, k=3)) == ids(load_index(path).retriever("dense").search(q, k=3))


def test_load_refuses_missing_or_half_built(tmp_path):
    with pytest.raises(IndexLoadError, match="does not exist"):
        load_index(tmp_path / "nothing")
    half = tmp_path / "half"
    half.mkdir()
    (half / "passages.jsonl").write_text("{}\n", encoding="utf-8")
    with pytest.raises(IndexLoadError, match="no manifest.json.*rebuild"):
        load_index(half)
    (half / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(IndexLoadError, match="corrupt"):
        load_index(half)


@pytest.mark.slow
def test_load_detects_damaged_files(built, tmp_path):
    index, _ = built
    path = index.save(tmp_path / "copy")
    with open(path / "dense.npy", "ab") as f:
        f.write(b"junk")
    with pytest.raises(IndexLoadError, match="dense.npy has the wrong size"):
        load_index(path)


def test_crash_mid_build_keeps_previous_index(tmp_path, monkeypatch):
    target = tmp_path / "idx"
    # 1. a crash during the very first build leaves nothing loadable
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash after data files were written")

    monkeypatch.setattr(index_module, "_write_manifest", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        build_index(DOCS, target, methods=("bm25",), progress=False)
    assert not target.exists()
    assert os.listdir(tmp_path) == []  # temporary directory cleaned up
    monkeypatch.undo()

    # 2. a good index, then a crashing rebuild over it: the good one stays intact and loadable
    build_index(DOCS[:3], target, methods=("bm25",), progress=False)
    before = {f.name: f.read_bytes() for f in target.rglob("*") if f.is_file()}
    monkeypatch.setattr(index_module, "_write_manifest", crash)
    with pytest.raises(RuntimeError):
        build_index(DOCS, target, methods=("bm25",), progress=False)
    monkeypatch.undo()
    assert {f.name: f.read_bytes() for f in target.rglob("*") if f.is_file()} == before
    assert len(load_index(target)) == 3
    assert sorted(os.listdir(tmp_path)) == ["idx"]

    # 3. a successful rebuild replaces it
    build_index(DOCS, target, methods=("bm25",), progress=False)
    assert len(load_index(target)) == 6 and sorted(os.listdir(tmp_path)) == ["idx"]


def test_save_removes_what_crashed_saves_left(tmp_path):
    """Issue 18 item 8: the hidden ``.idx.tmp-*`` of a crashed save goes on the next save once an hour old;
    a concurrent writer's fresh one and other names stay."""
    old = time.time() - 7200
    stale = tmp_path / ".idx.tmp-4242-deadbeef"
    fresh = tmp_path / ".idx.tmp-4343-cafebabe"
    other = tmp_path / ".data.tmp-1-abcd"
    for d in (stale, fresh, other):
        d.mkdir()
        (d / "passages.jsonl").write_text("{}\n", encoding="utf-8")
    for d in (stale, other):
        os.utime(d / "passages.jsonl", (old, old))
        os.utime(d, (old, old))
    build_index(DOCS[:3], tmp_path / "idx", methods=("bm25",), progress=False)
    assert sorted(os.listdir(tmp_path)) == sorted([".data.tmp-1-abcd", ".idx.tmp-4343-cafebabe", "idx"])


def test_save_refuses_to_clobber_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("precious", encoding="utf-8")
    with pytest.raises(InputError, match="refusing to overwrite"):
        build_index(DOCS, tmp_path, methods=("bm25",), progress=False)
    assert (tmp_path / "mine.txt").read_text(encoding="utf-8") == "precious"


def test_build_from_path_with_chunking(tmp_path):
    long = {"_id": "long", "title": "Long", "text": " ".join(f"word{i}" for i in range(50))}
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in SAMPLE_DOCS + [long]), encoding="utf-8")
    index = build_index(path, methods=("bm25",), chunk_tokens=30, chunk_overlap=5, progress=False)
    assert index.manifest["counts"] == {"documents": 7, "passages": 8}  # long: words 0-29, 25-49
    hit = index.retriever("bm25").search("word45", k=1)[0]
    assert (hit.id, hit.doc_id) == ("long#1", "long")
    assert len(load_corpus(path)) == 7


# ------------------------------------------------------------------------------------------------ SciFact
@pytest.mark.shared
@pytest.mark.slow
def test_scifact_bm25_ndcg():
    from ranx import Qrels, Run, evaluate

    from crossrank.corpus import load_beir

    ds = load_beir(shared_dataset("scifact"), split="test")
    r = BM25Retriever(ds.corpus)
    qids = list(ds.queries)
    results = r.search_batch([ds.queries[q] for q in qids], k=100)
    run = {q: {c.doc_id: c.score for c in res} for q, res in zip(qids, results, strict=True)}
    ndcg = evaluate(Qrels(ds.qrels), Run(run), "ndcg@10")
    assert abs(ndcg - 0.679) <= 0.01, ndcg


def test_load_detects_bytes_overwritten_without_a_size_change(tmp_path):
    """Issue 19 item 9: same sizes, different bytes: the manifest's sha256 is checked on every load."""
    path = tmp_path / "idx"
    build_index(DOCS, path, methods=("bm25",), chunk_tokens=0, progress=False)
    load_index(path)  # intact: loads
    data = (path / "passages.jsonl").read_bytes()
    (path / "passages.jsonl").write_bytes(data.replace(b"Volcanoes", b"Volcanoez"))
    assert len((path / "passages.jsonl").read_bytes()) == len(data)
    with pytest.raises(IndexLoadError, match=r"passages\.jsonl changed since the index was built.*'crossrank index "
                                             r"CORPUS --out DIR' \(Python: build_index\(\)\)"):
        load_index(path)
    assert len(load_index(path, verify=False)) == len(DOCS)  # the opt-out still loads
