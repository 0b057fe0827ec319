"""Corpus loading (BEIR, JSONL variants, folders), error messages, chunking, BEIR datasets."""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLE_DOCS, shared_dataset
from crossrank.corpus import (
    chunk_documents,
    count_tokens,
    iter_jsonl,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
)
from crossrank.errors import InputError
from crossrank.types import Document


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ formats
def test_load_beir_corpus(small_corpus):
    docs = load_corpus(small_corpus)
    assert [d.id for d in docs] == [d["_id"] for d in SAMPLE_DOCS]
    assert docs[0].title == "Photosynthesis" and docs[0].text.startswith("Plants convert")


@pytest.mark.parametrize(
    "id_key,text_key", [("id", "contents"), ("doc_id", "body"), ("docid", "text"), ("_id", "contents")]
)
def test_load_jsonl_field_variants(tmp_path, id_key, text_key):
    path = write_jsonl(tmp_path / "c.jsonl", [{id_key: 7, text_key: "hello world", "lang": "en"}, {id_key: "b", text_key: "x"}])
    docs = load_corpus(path)
    assert [d.id for d in docs] == ["7", "b"]
    assert docs[0].text == "hello world" and docs[0].title == "" and docs[0].metadata == {"lang": "en"}


def test_load_json_array_and_blank_lines(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"id": "1", "text": "one"}]), encoding="utf-8")
    assert load_corpus(tmp_path / "a.json")[0].id == "1"
    (tmp_path / "b.jsonl").write_text('\n{"id": "1", "text": "one"}\n\n{"id": "2", "text": "two"}\n', encoding="utf-8")
    assert len(load_corpus(tmp_path / "b.jsonl")) == 2


def test_load_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.md").write_text("Intro line\n\n## Heading Two\n\nBody text.", encoding="utf-8")
    (tmp_path / "plain.txt").write_text("Just text.\n", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("skip me", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs = {d.id: d for d in load_corpus(tmp_path)}
    assert set(docs) == {"sub/notes.md", "plain.txt"}
    assert docs["sub/notes.md"].title == "Heading Two"
    assert docs["plain.txt"].title == "plain" and docs["plain.txt"].text == "Just text."


def test_beir_folder_reads_corpus_jsonl(small_corpus):
    assert len(load_corpus(small_corpus.parent)) == len(SAMPLE_DOCS)


# ------------------------------------------------------------------------------------------------ errors
def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_corpus(tmp_path / "nope.jsonl")


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="empty"):
        load_corpus(tmp_path / "e.jsonl")


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match=r"no documents found.*\.txt or \.md"):
        load_corpus(tmp_path)


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"id": "1", "text": "ok"}\n{"id": "2", "text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid UTF-8"):
        load_corpus(path)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_bytes(b"line one\nline \xff two\n")
    with pytest.raises(InputError, match=r"a\.txt:2: not valid UTF-8"):
        load_corpus(tmp_path / "dir")


def test_a_folder_where_a_file_is_expected(tmp_path):
    (tmp_path / "qrels.tsv").mkdir()
    (tmp_path / "c.jsonl").mkdir()
    with pytest.raises(InputError, match=r"expected a file but .*qrels\.tsv is a directory"):
        load_qrels(tmp_path / "qrels.tsv")
    with pytest.raises(InputError, match=r"expected a file but .*c\.jsonl is a directory"):
        list(iter_jsonl(tmp_path / "c.jsonl"))


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "1", "text": "ok"}\n{"id": "2", "text": \n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: invalid JSON"):
        load_corpus(path)


def test_missing_text_field_and_id(tmp_path):
    with pytest.raises(InputError, match=r"no text field.*text, contents, body"):
        load_corpus(write_jsonl(tmp_path / "a.jsonl", [{"id": "1", "title": "t"}]))
    with pytest.raises(InputError, match="missing document id"):
        load_corpus(write_jsonl(tmp_path / "b.jsonl", [{"text": "t"}]))


def test_duplicate_ids(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "1", "text": "a"}, {"id": "1", "text": "b"}])
    with pytest.raises(InputError, match=r"d\.jsonl:2: duplicate document id '1' \(first seen at .*:1\)"):
        load_corpus(path)


def test_input_error_is_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_corpus(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------ chunking
def test_count_tokens():
    assert count_tokens("Hello, world! It's 2024.") == 7  # Hello , world ! It's 2024 .


def test_short_doc_is_one_passage_with_doc_id():
    doc = Document(id="d", text="short text here", title="T")
    (p,) = chunk_documents([doc], max_tokens=10, overlap=2)
    assert (p.id, p.doc_id, p.index, p.text, p.title) == ("d", "d", 0, "short text here", "T")


def test_chunking_windows_overlap_and_parents():
    words = [f"w{i}" for i in range(25)]
    doc = Document(id="doc", text=" ".join(words), title="Title")
    passages = chunk_documents([doc], max_tokens=10, overlap=3)
    assert [p.id for p in passages] == ["doc#0", "doc#1", "doc#2", "doc#3"]
    assert all(p.doc_id == "doc" and p.title == "Title" for p in passages)
    assert [p.index for p in passages] == [0, 1, 2, 3]
    toks = [p.text.split() for p in passages]
    assert toks[0] == words[0:10] and toks[1] == words[7:17] and toks[2] == words[14:24] and toks[3] == words[21:25]
    for a, b in zip(toks, toks[1:], strict=False):
        assert a[-3:] == b[:3]  # overlap
    assert all(count_tokens(p.text) <= 10 for p in passages)


def test_chunking_keeps_original_spacing_and_can_be_disabled():
    doc = Document(id="x", text="a,  b.\nc d e f g h")
    assert chunk_documents([doc], max_tokens=4, overlap=1)[0].text == "a,  b."
    for off in (0, None):
        assert [p.id for p in chunk_documents([doc], max_tokens=off)] == ["x"]


def test_chunking_bad_settings():
    with pytest.raises(InputError, match="overlap"):
        chunk_documents([Document(id="x", text="t")], max_tokens=10, overlap=10)


# ------------------------------------------------------------------------------------------------ BEIR
def make_beir(root):
    root.mkdir()
    write_jsonl(root / "corpus.jsonl", SAMPLE_DOCS)
    write_jsonl(root / "queries.jsonl", [
        {"_id": "q1", "text": "What makes ATP?", "metadata": {"answers": ["mitochondria"]}},
        {"_id": "q2", "text": "Why do volcanoes erupt?", "metadata": {}},
        {"_id": "q3", "text": "unjudged query", "metadata": {}},
    ])
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td3\t2\n", encoding="utf-8")
    return root


def test_load_beir(tmp_path):
    ds = load_beir(make_beir(tmp_path / "toy"))
    assert ds.name == "toy" and len(ds.corpus) == 6
    assert ds.queries == {"q1": "What makes ATP?", "q2": "Why do volcanoes erupt?"}
    assert ds.qrels == {"q1": {"d2": 1}, "q2": {"d3": 2}}
    assert ds.query_metadata["q1"] == {"answers": ["mitochondria"]}


def test_load_beir_missing_split_lists_available(tmp_path):
    root = make_beir(tmp_path / "toy")
    with pytest.raises(InputError, match=r"split 'dev'.*available splits: test"):
        load_beir(root, split="dev")
    with pytest.raises(InputError, match="not found"):
        load_beir(tmp_path / "nope")
    (root / "queries.jsonl").unlink()
    with pytest.raises(InputError, match="queries.jsonl is missing"):
        load_beir(root)


def test_load_queries_and_trec_qrels(tmp_path):
    root = make_beir(tmp_path / "toy")
    qs, meta = load_queries(root / "queries.jsonl", return_metadata=True)
    assert len(qs) == 3 and meta["q1"]["answers"] == ["mitochondria"]
    (tmp_path / "trec.txt").write_text("q1 0 d2 1\nq1 0 d3 0\n", encoding="utf-8")
    assert load_qrels(tmp_path / "trec.txt") == {"q1": {"d2": 1, "d3": 0}}


@pytest.mark.shared
def test_scifact_counts():
    ds = load_beir(shared_dataset("scifact"), split="test")
    assert len(ds.corpus) == 5183 and len(ds.queries) == 300
    assert sum(len(v) for v in ds.qrels.values()) == 339


# ---------------------------------------------------------------------------------------------- issue 19 items 8, 9
def test_jsonl_error_column_is_the_column_in_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "1", "text": "ok"}\n{"id": "2", "text": \n{"id": "3" "text": "x"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: invalid JSON \(Expecting value at column 21\)"):
        load_corpus(path)
    path.write_text('{"id": "3" "text": "x"}\r\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:1: invalid JSON \(Expecting ',' delimiter at column 12\)"):
        load_corpus(path)


@pytest.mark.parametrize("name, encoding", [("c.jsonl", "utf-16"), ("c.jsonl", "utf-16-le"), ("n.txt", "utf-16-be")])
def test_utf16_files_are_named_as_such(tmp_path, name, encoding):
    path = tmp_path / name
    path.write_bytes('{"id": "1", "text": "caf\u00e9"}\n{"id": "2", "text": "ok"}\n'.encode(encoding))
    with pytest.raises(InputError, match=r"this file is UTF-16; convert it to UTF-8, e\.g\. iconv -f UTF-16 -t UTF-8"):
        load_corpus(path)


def test_empty_and_nul_documents_are_skipped_with_one_warning(tmp_path, caplog):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "ok.txt").write_text("Real text.", encoding="utf-8")
    (folder / "nul.txt").write_bytes(b"\0" * 4096)
    (folder / "blank.md").write_text(" \n\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="crossrank.corpus.loaders"):
        assert [d.id for d in load_corpus(folder)] == ["ok.txt"]
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: skipped 2 empty document(s) of {folder} (no text, or only NUL bytes): blank.md, nul.txt"]
    rows = [{"id": "a", "text": ""}, {"id": "b", "text": "\u0000\u0000 "}, {"id": "c", "title": "T", "text": ""},
            {"id": "d", "text": "kept"}]
    assert [d.id for d in load_corpus(write_jsonl(tmp_path / "c.jsonl", rows))] == ["c", "d"]  # a title is content
    with pytest.raises(InputError, match=r"empty: all 2 documents have no text"):
        load_corpus(write_jsonl(tmp_path / "e.jsonl", rows[:2]))


def test_markdown_title_heading_is_not_repeated_in_the_text(tmp_path):
    (tmp_path / "git.md").write_text("# Git rebase\n\nRebase replays your commits.\n", encoding="utf-8")
    (tmp_path / "only.md").write_text("# Just a title\n", encoding="utf-8")
    docs = {d.id: d for d in load_corpus(tmp_path)}
    assert (docs["git.md"].title, docs["git.md"].text) == ("Git rebase", "Rebase replays your commits.")
    assert (docs["only.md"].title, docs["only.md"].text) == ("Just a title", "")
