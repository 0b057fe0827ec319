"""Incremental index updates (retrieve/update.py, ``crossrank index --add / --delete``): results equal a fresh build
over the same documents, an added document replaces its old version, and a process killed (SIGKILL, a real
subprocess) at any point of an update leaves the previous index intact and loadable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import SAMPLE_DOCS, run_cli
from crossrank.errors import InputError
from crossrank.retrieve import build_index, load_index, update_index
from crossrank.types import Document

DOCS = [Document(id=d["_id"], title=d["title"], text=d["text"]) for d in SAMPLE_DOCS]
QUERIES = ("how do plants make food", "what causes earthquakes", "hormone regulating blood sugar", "lava and ash")


def write_corpus(path, docs) -> None:
    path.write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs),
                    encoding="utf-8")


def results(index, kind):
    r = index.retriever(kind)
    return [[(c.id, round(c.score, 5)) for c in r.search(q, k=6)] for q in QUERIES]


def snapshot(path):
    return {f.relative_to(path).as_posix(): f.read_bytes() for f in path.rglob("*") if f.is_file()}


def test_bm25_add_delete_equals_a_fresh_build(tmp_path):
    target = tmp_path / "idx"
    build_index(DOCS[:4], target, methods=("bm25",), progress=False)
    change = update_index(target, add=DOCS[4:], delete=["d1", "nope"])
    assert change["added_passages"] == 2 and change["deleted_passages"] == 1
    assert change["ids_not_found"] == ["nope"] and change["counts"] == {"documents": 5, "passages": 5}
    updated = load_index(target)
    fresh = build_index(DOCS[1:], tmp_path / "fresh", methods=("bm25",), progress=False)
    assert [p.id for p in updated.passages] == ["d2", "d3", "d4", "d5", "d6"]
    assert results(updated, "bm25") == results(fresh, "bm25")
    assert updated.manifest["last_update"]["deleted_documents"] == 1
    # deleting again is harmless; an added document with a known id replaces the old one
    update_index(target, delete=["d1"])
    new_d3 = Document(id="d3", title="Volcanoes", text="Geysers spout hot water heated by magma below.")
    update_index(target, add=[new_d3])
    again = load_index(target)
    assert len(again) == 5 and [p.text for p in again.passages if p.doc_id == "d3"] == [new_d3.text]
    assert again.retriever("bm25").search("geysers", k=1)[0].id == "d3"
    with pytest.raises(InputError, match="empty"):
        update_index(target, delete=[d.id for d in DOCS])
    assert len(load_index(target)) == 5


@pytest.mark.slow
def test_dense_and_graph_update_equal_a_fresh_build(tmp_path, tiny_model_dir, monkeypatch):
    """The added passages alone are encoded; the graph is updated in place and finds what exact search finds."""
    model = str(tiny_model_dir)
    target = tmp_path / "idx"
    build_index(DOCS[:4], target, dense_model=model, ann=True, progress=False)
    old_rows = np.asarray(load_index(target).embeddings)[1:].copy()
    change = update_index(target, add=DOCS[4:], delete=["d1"])
    updated = load_index(target)
    assert change["counts"]["passages"] == 5 and updated.manifest["dense"]["encoding"]["encoded"] == 2
    assert np.array_equal(np.asarray(updated.embeddings)[:3], old_rows)  # kept rows are not re-encoded
    assert updated.ann is not None and updated.ann.keys.tolist() == [1, 2, 3, 4, 5]
    fresh = build_index(DOCS[1:], tmp_path / "fresh", dense_model=model, ann=False, progress=False)
    for kind in ("dense", "hybrid"):
        got, want = results(updated, kind), results(fresh, kind)
        assert [[i for i, _ in r] for r in got] == [[i for i, _ in r] for r in want]
        assert np.allclose([[s for _, s in r] for r in got], [[s for _, s in r] for r in want], atol=1e-4)
    # crossing the threshold builds a graph for an index that had none
    monkeypatch.setattr("crossrank.retrieve.update.ANN_MIN_PASSAGES", 6)
    update_index(tmp_path / "fresh", add=[DOCS[0]])
    assert load_index(tmp_path / "fresh").ann is not None


@pytest.mark.slow
def test_cli_add_and_delete(tmp_path):
    target = tmp_path / "idx"
    corpus, extra, ids = tmp_path / "c.jsonl", tmp_path / "extra.jsonl", tmp_path / "ids.txt"
    write_corpus(corpus, DOCS[:3])
    write_corpus(extra, DOCS[3:])
    ids.write_text("# stale documents\nd2\n\nmissing\n", encoding="utf-8")
    assert run_cli("index", str(corpus), "--out", str(target), "--methods", "bm25").returncode == 0
    proc = run_cli("index", "--out", str(target), "--add", str(extra), "--delete", str(ids))
    assert proc.returncode == 0, proc.stderr
    assert "+3 / -1 passages" in proc.stderr and "1 ids to delete were not in the index" in proc.stderr
    assert [p.id for p in load_index(target).passages] == ["d1", "d3", "d4", "d5", "d6"]
    both = run_cli("index", str(corpus), "--out", str(target), "--add", str(extra))
    assert both.returncode == 2 and "not both" in both.stderr
    none = run_cli("index", "--out", str(target))
    assert none.returncode == 2 and "missing CORPUS" in none.stderr


# A real process running the real CLI update, SIGKILLed from inside at one point of the write (no cleanup runs:
# no except, no finally, no atexit). Each kill point wraps the function named and dies in the middle of it.
KILLER = textwrap.dedent('''
    import os, signal, sys
    import crossrank.retrieve.index as ix
    point = sys.argv[1]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "passages":  # half of passages.jsonl written
        real = ix.write_passages
        def half(path, passages):
            real(path, passages[: len(passages) // 2])
            die()
        ix.write_passages = half
    elif point == "dense":  # dense.npy half written
        def half_dense(path, embeddings, dtype):
            with open(path, "wb") as f:
                f.write(b"\\x93NUMPY" + b"\\0" * 100)
                f.flush()
            die()
        ix._write_dense = half_dense
    elif point == "manifest":  # every data file written, the manifest not yet
        ix._write_manifest = lambda root, manifest: die()
    elif point == "swap":  # the complete new index on disk, killed just before the swap
        import crossrank.files
        crossrank.files.swap_into_place = lambda tmp, target: die()  # what staged_dir swaps with
    from crossrank.cli import main
    sys.exit(main(sys.argv[2:]))
''')


@pytest.mark.slow
@pytest.mark.parametrize("point", ["passages", "dense", "manifest", "swap"])
def test_kill_mid_update_keeps_the_old_index(tmp_path, tiny_model_dir, point):
    target = tmp_path / "idx"
    methods = ("bm25", "dense") if point == "dense" else ("bm25",)
    build_index(DOCS[:3], target, methods=methods, dense_model=str(tiny_model_dir), progress=False)
    before = snapshot(target)
    extra, ids = tmp_path / "extra.jsonl", tmp_path / "ids.txt"
    write_corpus(extra, DOCS[3:])
    ids.write_text("d1\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-c", KILLER, point, "index", "--out", str(target), "--add", str(extra),
                           "--delete", str(ids)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    assert snapshot(target) == before  # byte for byte
    assert [p.id for p in load_index(target).passages] == ["d1", "d2", "d3"]
    left = [n for n in os.listdir(tmp_path) if n.startswith(".idx.tmp-")]
    assert len(left) == 1  # the killed writer's folder; the next save removes it once stale
    update_index(target, add=DOCS[3:], delete=["d1"])  # and the same update then goes through
    assert [p.id for p in load_index(target).passages] == ["d2", "d3", "d4", "d5", "d6"]

