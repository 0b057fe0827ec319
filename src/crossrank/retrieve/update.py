"""Adding and deleting documents in a saved index without a full rebuild (``crossrank index --add / --delete``).

``update_index(dir, add=docs, delete=doc_ids)`` loads the index, and writes the updated one through the same atomic
``Index.save`` (a temporary sibling folder, fsynced, then ``files.swap_into_place``): a process killed at any point
of an update leaves the previous index intact and loadable. What each part costs:

* **passages**: added documents are chunked with the index's own chunking settings (from its manifest); an added
  document whose id is already in the index replaces it (its old passages go); ``delete`` removes every passage
  of the given document ids (ids not in the index are counted, not an error: deleting twice is harmless).
* **dense**: only the added passages are encoded (resumably, see :mod:`crossrank.retrieve.encode`); the rows of
  deleted passages are dropped from the matrix; an ANN graph is loaded, has the deleted keys removed and the new
  vectors added (usearch updates its HNSW graph in place), and is saved again. An index that reaches
  :data:`~crossrank.retrieve.ann.ANN_MIN_PASSAGES` passages gets a graph built.
* **BM25**: rebuilt from the stored passages. bm25s cannot update an index in place (its scores are precomputed
  per term with the corpus-wide document frequencies and average length, which every added or deleted passage
  changes), so tokenising and indexing run again over all passages; no text is re-encoded.

One writer at a time: a lock file (``.<name>.lock`` beside the index) makes a second concurrent update wait.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from crossrank.corpus.chunking import as_passages, chunk_documents
from crossrank.errors import InputError
from crossrank.retrieve.ann import ANN_MIN_PASSAGES, AnnIndex
from crossrank.retrieve.bm25 import BM25Retriever
from crossrank.retrieve.dense import encode_passages_with_stats, load_bi_encoder
from crossrank.retrieve.index import Index, _ann_manifest, _load_ann, _resume_dir, load_index, read_manifest
from crossrank.types import Document, Passage


def read_ids(path: str | os.PathLike) -> list[str]:
    """Document ids from a file: one per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read ids from {path}: {e}") from None
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


@contextmanager
def _writer_lock(target: Path) -> Iterator[None]:
    lock = target.parent / f".{target.name}.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _chunk(add: Sequence[Document | Passage], manifest: dict[str, Any]) -> list[Passage]:
    docs = [d for d in add if isinstance(d, Document)]
    chunking = manifest.get("chunking", {})
    tokens = int(chunking.get("max_tokens") or 0) or None
    passages = chunk_documents(docs, tokens, int(chunking.get("overlap", 0)) if tokens else 0) if docs else []
    return passages + as_passages([d for d in add if isinstance(d, Passage)])


def update_index(
    directory: str | os.PathLike,
    *,
    add: Sequence[Document | Passage] = (),
    delete: Sequence[str] = (),
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = False,
    encode_backend: str = "auto",
) -> dict[str, Any]:
    """Add ``add`` (documents, chunked like the index, or passages) to and delete the documents ``delete`` from
    the index at ``directory``, atomically (see the module docstring). Returns what changed: passages and
    documents added and deleted, ids not found, the new counts and the seconds taken."""
    t0 = time.perf_counter()
    target = Path(directory).absolute()
    add, delete = list(add), [str(i) for i in delete]
    read_manifest(target)  # a missing or foreign directory fails here, before any lock file is made
    with _writer_lock(target):
        old = load_index(target)
        new_passages = _chunk(add, old.manifest)
        gone = set(delete) | {p.doc_id for p in new_passages}  # an added document replaces its old version
        keep = np.fromiter((p.doc_id not in gone for p in old.passages), dtype=bool, count=len(old.passages))
        passages = [p for p, k in zip(old.passages, keep, strict=True) if k] + new_passages
        if not passages:
            raise InputError("the update would leave the index empty; delete the index directory instead")
        _check_unique(passages)
        manifest = dict(old.manifest)
        bm25 = None
        if "bm25" in manifest["methods"]:
            params = {k: v for k, v in manifest["bm25"].items() if k != "build_s"}
            t = time.perf_counter()
            bm25 = BM25Retriever(passages, show_progress=progress and sys.stderr.isatty(), **params)
            manifest["bm25"] = {**params, "build_s": round(time.perf_counter() - t, 3)}
        embeddings = graph = None
        if "dense" in manifest["methods"]:
            embeddings, graph = _dense_update(target, old, keep, new_passages, manifest, batch_size, device,
                                              progress, encode_backend)
        existing = {p.doc_id for p in old.passages}
        change = {
            "added_passages": len(new_passages),
            "deleted_passages": int((~keep).sum()),
            "added_documents": len({p.doc_id for p in new_passages}),
            "deleted_documents": len(gone & existing),
            "ids_not_found": sorted(set(delete) - existing),
        }
        manifest["counts"] = {"documents": len({p.doc_id for p in passages}), "passages": len(passages)}
        manifest["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest["last_update"] = {k: v for k, v in change.items() if k != "ids_not_found"}
        index = Index(passages, manifest, bm25=bm25, embeddings=embeddings, ann=graph)
        index.save(target)
        shutil.rmtree(_resume_dir(target), ignore_errors=True)
    return {**change, "counts": manifest["counts"], "seconds": round(time.perf_counter() - t0, 3)}


def _dense_update(target: Path, old: Index, keep: np.ndarray, new_passages: list[Passage],
                  manifest: dict[str, Any], batch_size: int, device: str | None, progress: bool,
                  backend: str) -> tuple[np.ndarray, AnnIndex | None]:
    """The updated matrix and graph (the manifest's dense entry is updated to match)."""
    info = dict(manifest["dense"])
    new_vecs = np.empty((0, int(info["dimension"])), dtype=np.float32)
    if new_passages:
        model = load_bi_encoder(info["model"], device)
        t = time.perf_counter()
        new_vecs, stats = encode_passages_with_stats(model, new_passages, batch_size=batch_size,
                                                     show_progress=progress, backend=backend,
                                                     resume_dir=_resume_dir(target))
        info["encoding"] = stats
        info["encode_s"] = round(time.perf_counter() - t, 3)
    embeddings = np.concatenate([np.asarray(old.embeddings)[keep], new_vecs])
    graph = None
    n = embeddings.shape[0]
    if info.get("ann"):
        t = time.perf_counter()
        graph = _load_ann(target, old.manifest, view=False).updated(keep, new_vecs)
        info["ann"] = {**_ann_manifest(graph, time.perf_counter() - t), "build_s": info["ann"].get("build_s")}
    elif n >= ANN_MIN_PASSAGES:
        t = time.perf_counter()
        graph = AnnIndex.build(embeddings, progress=progress)
        info["ann"] = _ann_manifest(graph, time.perf_counter() - t)
    manifest["dense"] = info
    return embeddings, graph


def _check_unique(passages: Sequence[Passage]) -> None:
    seen: set[str] = set()
    for p in passages:
        if p.id in seen:
            raise InputError(f"duplicate passage id {p.id!r}; document ids must be unique")
        seen.add(p.id)
