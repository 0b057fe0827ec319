"""The Milvus backend (retrieve/milvus.py) on Milvus Lite: write a built index to a .db store, reopen it, search it
through the Retriever protocol, and check it against the built-in index it was written from."""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLE_DOCS, assert_clean_error, run_cli
from crossrank.errors import IndexLoadError, InputError
from crossrank.pipeline import Pipeline
from crossrank.retrieve import MilvusStore, Retriever, build_index, is_store_uri, open_index, write_store
from crossrank.retrieve.milvus import DEFAULT_COLLECTION, parse_store_uri
from crossrank.types import Document

pytestmark = pytest.mark.slow  # a real Milvus Lite server per module (the marker: tests that start servers)

MORE_DOCS = [
    {"_id": "d7", "title": "Vaccines", "text": "A vaccine trains the immune system to recognise a pathogen without causing the disease."},
    {"_id": "d8", "title": "Glaciers", "text": "Glaciers form where snow accumulates faster than it melts and slowly flows downhill as ice."},
    {"_id": "d9", "title": "Sourdough", "text": "Sourdough bread rises with a starter of wild yeast and lactic acid bacteria instead of baker's yeast."},
    {"_id": "d10", "title": "Photons", "text": "Light consists of photons, massless particles that carry energy proportional to their frequency."},
    {"_id": "d11", "title": "Coral reefs", "text": "Coral reefs are built by colonies of tiny animals and bleach when warm water expels their algae."},
    {"_id": "d12", "title": "Antibiotics", "text": "Antibiotics kill bacteria or stop their growth; overuse breeds resistant strains."},
]
DOCS = [Document(id=d["_id"], title=d["title"], text=d["text"]) for d in SAMPLE_DOCS + MORE_DOCS]
QUERIES = ["volcano magma lava", "what gives cells their energy", "hormone that controls blood sugar",
           "why do corals turn white", "the and of"]  # the last one: stop words only (no BM25 terms)


def _lite_or_skip(tmp_path_factory) -> None:
    """Skip, saying why, where pymilvus or Milvus Lite cannot be imported or started here."""
    pymilvus = pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 'crossrank[milvus]')")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'crossrank[milvus]')")
    probe = tmp_path_factory.mktemp("probe") / "probe.db"
    try:
        client = pymilvus.MilvusClient(str(probe))
    except Exception as e:  # noqa: BLE001 - any start-up failure means "no Milvus Lite on this machine"
        pytest.skip(f"Milvus Lite cannot start here: {type(e).__name__}: {e}")
    client.close()
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(probe))


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> None:
    _lite_or_skip(tmp_path_factory)


@pytest.fixture(scope="module")
def built(lite, tmp_path_factory):
    """The built-in index over the twelve documents and a Milvus Lite store written from it (then closed, so each
    test reopens it from the file)."""
    index = build_index(DOCS, None, progress=False)
    uri = f"milvus://{tmp_path_factory.mktemp('milvus') / 'store.db'}"
    write_store(index, uri).close()
    return index, uri


@pytest.fixture()
def store(built):
    with MilvusStore.open(built[1]) as s:
        yield s


def ids(cands):
    return [c.id for c in cands]


def test_store_reopens_from_the_file(built, store):
    index, uri = built
    assert is_store_uri(uri) and isinstance(open_index(uri), MilvusStore)
    assert len(store) == len(index.passages) == 12
    assert store.methods == ("bm25", "dense")
    assert store.meta["dense"]["model"] == index.manifest["dense"]["model"]
    assert store.meta["bm25"]["k1"] == 0.9 and store.collection == DEFAULT_COLLECTION


@pytest.mark.parametrize("kind", ["bm25", "dense", "hybrid"])
def test_every_kind_is_a_retriever(store, kind):
    r = store.retriever(kind)
    assert isinstance(r, Retriever)
    assert isinstance(store.retriever(kind, fused_by="crossrank"), Retriever)
    assert r.name.startswith("milvus:")


@pytest.mark.parametrize(("kind", "query", "top"), [
    ("bm25", "volcano magma lava", "d3"),
    ("dense", "what gives cells their energy", "d2"),
    ("hybrid", "hormone that controls blood sugar", "d5"),
    ("hybrid", "why do corals turn white", "d11"),
])
def test_each_kind_finds_the_obvious_document(store, kind, query, top):
    cands = store.retriever(kind).search(query, k=5)
    assert cands[0].doc_id == top
    assert [c.rank for c in cands] == list(range(1, len(cands) + 1))
    assert cands[0].text == next(d.text for d in DOCS if d.id == top) and cands[0].title  # text for the reranker
    assert all(a.score >= b.score for a, b in zip(cands, cands[1:], strict=False))


def test_dense_matches_the_built_in_index(built, store):
    index, _ = built
    mine, ref = store.retriever("dense"), index.retriever("dense")
    for q in QUERIES:
        got, want = mine.search(q, k=12), ref.search(q, k=12)
        assert ids(got) == ids(want)
        assert [c.score for c in got] == pytest.approx([c.score for c in want], abs=1e-4)
    assert [ids(x) for x in mine.search_batch(QUERIES, 5)] == [ids(mine.search(q, 5)) for q in QUERIES]


def test_bm25_ranks_as_the_built_in_bm25(built, store):
    """crossrank's analyzer feeds Milvus' BM25 (stemming, stop words): same passages in the same order, scores the
    built-in's times k1 + 1 (Milvus' classic BM25 form)."""
    index, _ = built
    mine, ref = store.retriever("bm25"), index.retriever("bm25")
    for q in QUERIES:
        got, want = mine.search(q, k=12), ref.search(q, k=12)
        assert ids(got) == ids(want), q
        assert [c.score for c in got] == pytest.approx([1.9 * c.score for c in want], rel=1e-4)
    assert mine.search("the and of", k=5) == []  # only stop words: nothing matches, as in the built-in


def test_hybrid_both_fusions_match_the_built_in_hybrid(built, store):
    index, _ = built
    ref = index.retriever("hybrid")
    for fused_by in ("milvus", "crossrank"):
        mine = store.retriever("hybrid", fused_by=fused_by)
        for q in QUERIES:
            got, want = mine.search(q, k=12), ref.search(q, k=12)  # every document: no tie at a cut-off
            assert {c.id: round(c.score, 6) for c in got} == {c.id: round(c.score, 6) for c in want}, (fused_by, q)
    assert store.retriever("hybrid", "weighted", fused_by="crossrank").search("volcano", 3)[0].doc_id == "d3"


def test_pipeline_runs_on_the_milvus_retriever(store):
    with Pipeline(store.retriever("hybrid"), None, k=10, n=3, unit="document") as pipe:
        result = pipe.search("volcano magma lava")
    assert result.retriever == "milvus:hybrid-rrf(bm25+dense)"
    assert [h.doc_id for h in result.hits][:1] == ["d3"] and len(result.hits) == 3


def test_rewriting_replaces_the_collection(built, tmp_path):
    index, _ = built
    uri = f"milvus://{tmp_path / 'again.db'}?collection=docs"
    write_store(index, uri).close()
    small = build_index(DOCS[:3], None, methods=("bm25",), progress=False)
    with write_store(small, uri) as s:
        assert len(s) == 3 and s.methods == ("bm25",)
        assert s.client.list_collections() == ["docs"]  # the build's temporary collection is gone
        with pytest.raises(InputError, match="no dense part"):
            s.retriever("dense")


def test_uri_forms_and_bad_uris(tmp_path):
    lite = parse_store_uri("milvus:///abs/x.db?collection=c1")
    assert (lite.uri, lite.collection, lite.lite) == ("/abs/x.db", "c1", True)
    server = parse_store_uri("milvus://db.example:19530")
    assert (server.uri, server.lite) == ("http://db.example:19530", False)
    assert parse_store_uri("https://h:443").uri == "https://h:443" and parse_store_uri("rel.db").lite
    assert not is_store_uri(tmp_path)
    for bad in ("ftp://x", "milvus://", "milvus:///abs/not-a-db", "x.db?collection=1bad", "x.db?color=red"):
        with pytest.raises(InputError):
            parse_store_uri(bad)


def test_unreachable_or_missing_stores_are_one_line_errors(built, tmp_path):
    with pytest.raises(IndexLoadError, match="no Milvus Lite store"):
        MilvusStore.open(tmp_path / "missing.db")
    with pytest.raises(IndexLoadError, match="cannot open the Milvus server"):
        MilvusStore.open("http://127.0.0.1:1", timeout_s=2)
    with pytest.raises(IndexLoadError, match="no collection 'other'"):
        MilvusStore.open(built[1] + "?collection=other")


def test_bad_options_are_input_errors(store):
    with pytest.raises(InputError, match="weighted"):
        store.retriever("hybrid", "weighted")
    with pytest.raises(InputError, match="unknown retriever kind"):
        store.retriever("splade")
    with pytest.raises(InputError, match="largest limit"):
        store.retriever("bm25").search("volcano", k=20000)


@pytest.mark.slow
def test_cli_index_and_search_a_milvus_store(tmp_path, lite):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in SAMPLE_DOCS + MORE_DOCS), encoding="utf-8")
    uri = f"milvus://{tmp_path / 'cli.db'}"
    proc = run_cli("index", str(corpus), "--store", uri, "--methods", "bm25")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("search", uri, "volcano magma", "--retriever", "bm25", "--reranker", "none", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["retriever"] == "milvus:bm25" and result["hits"][0]["doc_id"] == "d3"
    down = run_cli("search", "http://127.0.0.1:1", "q", "--reranker", "none")
    assert_clean_error(down, "milvus server")
    assert len(down.stderr.splitlines()) == 1, down.stderr  # pymilvus' own error logging stays out of it
    assert_clean_error(run_cli("index", str(corpus), "--store", "ftp://x"), "not a milvus store uri")
    assert_clean_error(run_cli("index", str(corpus)), "--out dir", "--store uri")
