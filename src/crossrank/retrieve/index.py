"""A persisted first-stage index: passages + BM25 + dense vectors in one directory.

Layout (``FORMAT_VERSION`` 1)::

    <dir>/manifest.json     written last: format, versions, methods, model, chunking, counts, file sizes + sha256
    <dir>/passages.jsonl    one {"id","doc_id","index","title","text"} per line, in index order
    <dir>/bm25/             bm25s arrays (.npy, saved with allow_pickle=False) + JSON vocab/params + our analyzer
    <dir>/dense.npy         (n_passages, dim) L2-normalised vectors, float32 (memory-mapped on load) or float16
    <dir>/dense.usearch     only for large indexes: the ANN graph (retrieve/ann.py; memory-mapped on load)
    <dir>/dense_keys.npy    with it: the graph's label of each row (int64, ascending)

An index without the two ANN files (every index written before they existed) loads and searches exactly as
before. ``update_index`` adds and deletes documents in place (see its docstring).

Saving is atomic: everything goes into a hidden sibling directory, each file is fsynced, the manifest is written
last, then the directory is swapped into place (``renameat2(RENAME_EXCHANGE)`` where the kernel has it, else two
renames) and the previous index deleted. A crash leaves the previous index intact and at most a hidden
``.<name>.tmp-*`` directory behind (safe to delete; the next save of that index removes it once it is an hour
old, see :func:`crossrank.files.remove_stale_temp_dirs`). ``load_index`` refuses any directory without a valid manifest.
Nothing is pickled: numpy files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from crossrank.corpus.chunking import as_passages, chunk_documents
from crossrank.corpus.loaders import load_corpus
from crossrank.errors import IndexLoadError, InputError
from crossrank.files import file_sha256, fsync_dir, fsync_file, staged_dir
from crossrank.retrieve import ann as ann_module
from crossrank.retrieve._common import REBUILD
from crossrank.retrieve.ann import ANN_MIN_PASSAGES, AnnIndex
from crossrank.retrieve.base import KINDS, METHODS, Retriever
from crossrank.retrieve.bm25 import BM25Retriever
from crossrank.retrieve.dense import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_ID,
    DenseRetriever,
    encode_passages_with_stats,
    load_bi_encoder,
    model_name_of,
)
from crossrank.retrieve.hybrid import HybridRetriever
from crossrank.retrieve.passages import PassageTable, write_passages
from crossrank.types import Document, Passage

if TYPE_CHECKING:
    from crossrank.retrieve.milvus import MilvusStore

FORMAT = "crossrank-index"
FORMAT_VERSION = 1


def _crossrank_version() -> str:
    try:
        from importlib.metadata import version

        return version("crossrank")
    except Exception:  # noqa: BLE001
        return "unknown"


# ------------------------------------------------------------------------------------------------- the index
class Index:
    """Passages plus the structures of each method. Get a searcher with ``index.retriever(kind)``."""

    def __init__(
        self,
        passages: Sequence[Passage],
        manifest: dict[str, Any],
        *,
        bm25: BM25Retriever | None = None,
        embeddings: np.ndarray | None = None,
        dense_model: Any = None,
        path: Path | None = None,
        ann: AnnIndex | None = None,
    ):
        # a saved index's passages stay on disk until a search returns them (retrieve/passages.py)
        self.passages = passages if isinstance(passages, PassageTable) else list(passages)
        self.manifest = manifest
        self.path = path
        self._bm25 = bm25
        self._embeddings = embeddings
        self._dense_model = dense_model  # a loaded model, or None: load the manifest's model lazily
        self._ann = ann
        self._dense: DenseRetriever | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Index(passages={len(self.passages)}, methods={list(self.methods)}, path={self.path})"

    def __len__(self) -> int:
        return len(self.passages)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.manifest["methods"])

    @property
    def embeddings(self) -> np.ndarray | None:
        return self._embeddings

    @property
    def ann(self) -> AnnIndex | None:
        """The dense side's ANN graph, or None (exact search)."""
        return self._ann

    # --------------------------------------------------------------------------------------------- retrievers
    def bm25(self) -> BM25Retriever:
        if self._bm25 is None:
            raise InputError(f"this index has no BM25 part (methods: {', '.join(self.methods)}); rebuild with 'bm25'")
        return self._bm25

    def dense(self, device: str | None = None, batch_size: int = 64, query_backend: str = "auto") -> DenseRetriever:
        if self._embeddings is None:
            raise InputError(f"this index has no dense part (methods: {', '.join(self.methods)}); rebuild with 'dense'")
        with self._lock:
            if (self._dense is None or (device is not None and device != self._dense.device)
                    or query_backend != self._dense.query_backend):
                model = self._dense_model if self._dense_model is not None else self.manifest["dense"]["model"]
                self._dense = DenseRetriever(
                    self.passages, model, embeddings=self._embeddings, device=device, batch_size=batch_size,
                    query_backend=query_backend, ann=self._ann,
                )
            self._dense.batch_size = batch_size
            return self._dense

    def retriever(self, kind: str = "hybrid", fusion: str = "rrf", **opts: Any) -> Retriever:
        """A ``Retriever`` over this index.

        ``kind``: "hybrid" (BM25 + dense fused), "bm25" or "dense". Options: ``device``, ``batch_size``,
        ``query_backend`` (dense; see ``DenseRetriever``);
        ``rrf_k``, ``weights``, ``depth`` (hybrid; see ``HybridRetriever``). The dense model named in the manifest is
        loaded on the first dense search, once per process."""
        dense_opts = {key: opts.pop(key) for key in ("device", "batch_size", "query_backend") if key in opts}
        hybrid_opts = {key: opts.pop(key) for key in ("rrf_k", "weights", "depth") if key in opts}
        if opts:
            raise InputError(f"unknown retriever option(s): {', '.join(sorted(opts))}")
        if kind == "bm25":
            return self.bm25()
        if kind == "dense":
            return self.dense(**dense_opts)
        if kind == "hybrid":
            return HybridRetriever([self.bm25(), self.dense(**dense_opts)], fusion=fusion, **hybrid_opts)
        raise InputError(f"unknown retriever kind {kind!r}; choose one of {', '.join(KINDS)}")

    # --------------------------------------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike, *, dense_dtype: str | None = None) -> Path:
        """Write the index atomically to ``directory`` (see the module docstring); returns the path.
        An existing crossrank index there is replaced only once the new one is complete."""
        target = Path(directory).absolute()
        _check_replaceable(target)
        with staged_dir(target) as tmp:  # readers see the old index or the new one, whole
            manifest = dict(self.manifest)
            write_passages(tmp / "passages.jsonl", self.passages)
            if self._bm25 is not None:
                self._bm25.save(tmp / "bm25")
            if self._embeddings is not None:
                dtype = np.dtype(dense_dtype or manifest["dense"].get("dtype", "float32"))
                if dtype not in (np.float32, np.float16):
                    raise InputError(f"dense_dtype must be float32 or float16, got {dtype}")
                _write_dense(tmp / "dense.npy", self._embeddings, dtype)
                manifest["dense"] = {**manifest["dense"], "dtype": dtype.name}
                if self._ann is not None:
                    self._ann.save(tmp)
            manifest["files"] = _file_table(tmp)
            _write_manifest(tmp, manifest)  # last: an index folder without its manifest is never complete
        self.manifest = manifest
        self.path = target
        return target


# ------------------------------------------------------------------------------------------------- build
def build_index(
    documents: Sequence[Document | Passage] | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    methods: Sequence[str] = METHODS,
    dense_model: Any = DEFAULT_MODEL,
    chunk_tokens: int | None = 200,
    chunk_overlap: int = 40,
    progress: bool = True,
    batch_size: int = 64,
    device: str | None = None,
    dense_dtype: str = "float32",
    bm25_params: dict[str, Any] | None = None,
    reuse: "Index | str | os.PathLike | None" = None,
    ann: bool | None = None,
    encode_backend: str = "auto",
) -> Index:
    """Chunk ``documents`` (a list, or a corpus path for ``load_corpus``), build the requested ``methods`` and,
    with ``out_dir``, save atomically there. Passages given as ``Passage`` objects are used as they are.

    ``dense_model``: "default" (bundled all-MiniLM-L6-v2), a local folder, a hub id, or a loaded
    SentenceTransformer. ``chunk_tokens=0``/None indexes whole documents. ``dense_dtype="float16"`` halves
    ``dense.npy`` (vectors are widened to float32 on load, so it is then held in RAM, not memory-mapped).
    ``reuse``: an earlier index (or its directory) built with the same dense model; passages whose title and
    text are unchanged take its vectors instead of being re-encoded (incremental rebuilds).
    ``ann``: give the dense side an ANN graph (True), not (False), or only from
    :data:`~crossrank.retrieve.ann.ANN_MIN_PASSAGES` passages on (None, the default).
    ``encode_backend``: how passages are encoded (:mod:`crossrank.retrieve.encode`: "auto", "onnx", "torch"); with
    ``out_dir``, finished shards of vectors are kept in a hidden ``.<name>.encode-*`` folder beside it until the
    index is saved, so a rerun after a crash resumes the encoding instead of starting over."""
    t0 = time.perf_counter()
    methods = tuple(dict.fromkeys(methods))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise InputError(f"unknown or no index method(s) {bad or list(methods)}; choose from {', '.join(METHODS)}")
    passages, chunk_tokens, chunk_overlap = _passages_of(documents, chunk_tokens, chunk_overlap)
    manifest = _new_manifest(methods, passages, chunk_tokens, chunk_overlap)
    bm25 = None
    if "bm25" in methods:
        t = time.perf_counter()
        # bm25s' bars redraw: only on a terminal (the encoder reports to logs by lines, retrieve/encode.py)
        bm25 = BM25Retriever(passages, show_progress=progress and sys.stderr.isatty(), **(bm25_params or {}))
        manifest["bm25"] = {**bm25.params, "build_s": round(time.perf_counter() - t, 3)}
    embeddings = model = resume = None
    if "dense" in methods:
        resume = _resume_dir(out_dir) if out_dir is not None else None
        embeddings, model, manifest["dense"] = _encode_dense(
            passages, dense_model, device, reuse, batch_size, progress, encode_backend, resume, dense_dtype)
    graph = None
    if embeddings is not None and (ann if ann is not None else len(passages) >= ANN_MIN_PASSAGES):
        t = time.perf_counter()
        graph = AnnIndex.build(embeddings, progress=progress)
        manifest["dense"]["ann"] = _ann_manifest(graph, time.perf_counter() - t)
    manifest["build_s"] = round(time.perf_counter() - t0, 3)
    index = Index(passages, manifest, bm25=bm25, embeddings=embeddings, dense_model=model, ann=graph)
    if out_dir is not None:
        index.save(out_dir)
        if resume is not None:
            shutil.rmtree(resume, ignore_errors=True)  # the vectors are in the index now
    return index


def _passages_of(documents: Any, chunk_tokens: int | None, chunk_overlap: int) -> tuple[list[Passage], int | None, int]:
    """The passages to index (documents chunked, ``Passage`` objects as given; ids checked unique) and the
    chunking actually applied (none when only passages were given)."""
    if isinstance(documents, (str, os.PathLike)):
        documents = load_corpus(documents)
    documents = list(documents)
    if not documents:
        raise InputError("cannot build an index over an empty corpus")
    if all(isinstance(d, Passage) for d in documents):
        passages, chunk_tokens, chunk_overlap = documents, None, 0
    else:
        passages = chunk_documents([d for d in documents if isinstance(d, Document)], chunk_tokens, chunk_overlap)
        passages += as_passages([d for d in documents if isinstance(d, Passage)])
    ids: set[str] = set()
    for p in passages:
        if p.id in ids:
            raise InputError(f"duplicate passage id {p.id!r}; document ids must be unique")
        ids.add(p.id)
    return passages, chunk_tokens, chunk_overlap


def _new_manifest(methods: Sequence[str], passages: list[Passage], chunk_tokens: int | None,
                  chunk_overlap: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "crossrank_version": _crossrank_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "methods": list(methods),
        "counts": {"documents": len({p.doc_id for p in passages}), "passages": len(passages)},
        "chunking": {
            "max_tokens": chunk_tokens or 0,
            "overlap": chunk_overlap if chunk_tokens else 0,
            "tokenizer": "word-regex",
        },
        "text": "title + ' ' + text",
    }


def _encode_dense(passages: list[Passage], dense_model: Any, device: str | None, reuse: Any, batch_size: int,
                  progress: bool, encode_backend: str, resume: Path | None,
                  dense_dtype: str) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """``(vectors, model, the manifest's dense section)``: the bi-encoder loaded (or taken as given) and every
    passage encoded, reusing ``reuse``'s vectors for unchanged passages and ``resume``'s finished shards."""
    t = time.perf_counter()
    if isinstance(dense_model, (str, os.PathLike)) or dense_model is None:
        name = str(dense_model) if dense_model is not None else DEFAULT_MODEL
        model = load_bi_encoder(name, device)
    else:
        model = dense_model
        name = model_name_of(model)
    if name != DEFAULT_MODEL and Path(name).expanduser().exists():
        name = str(Path(name).expanduser().resolve())
    embeddings, reused, stats = _encode_reusing(model, name, passages, reuse, batch_size, progress,
                                                encode_backend, resume)
    section = {
        "model": name,
        "model_id": DEFAULT_MODEL_ID if name == DEFAULT_MODEL else name,
        "dimension": int(embeddings.shape[1]),
        "dtype": np.dtype(dense_dtype).name,
        "normalized": True,
        "similarity": "dot",
        "max_seq_length": getattr(model, "max_seq_length", None),
        "encode_s": round(time.perf_counter() - t, 3),
        "reused_vectors": reused,
        "encoding": stats,
    }
    return embeddings, model, section


def _ann_manifest(graph: AnnIndex, build_s: float) -> dict[str, Any]:
    return {"library": "usearch", "version": ann_module.library_version(), "file": ann_module.ANN_FILE,
            "keys": ann_module.KEYS_FILE, **graph.params, "build_s": round(build_s, 3)}


def _resume_dir(out_dir: str | os.PathLike) -> Path:
    """Where an encoding run for the index at ``out_dir`` keeps its finished shards (retrieve/encode.py)."""
    target = Path(out_dir).absolute()
    return target.parent / f".{target.name}.encode"


def _encode_reusing(model, name: str, passages: list[Passage], reuse, batch_size: int, progress: bool,
                    backend: str = "auto", resume: Path | None = None):
    """``(embeddings, reused, stats)`` for ``passages``, copying rows of ``reuse`` (an Index or path) for unchanged
    passages and encoding the rest (``stats``: see ``encode_bulk``)."""
    if reuse is not None and not isinstance(reuse, Index):
        reuse = load_index(reuse)
    info = reuse.manifest.get("dense", {}) if reuse is not None else {}
    if (
        reuse is None
        or reuse.embeddings is None
        or info.get("model") != name
        or info.get("max_seq_length") != getattr(model, "max_seq_length", None)
    ):
        emb, stats = encode_passages_with_stats(model, passages, batch_size=batch_size, show_progress=progress,
                                                backend=backend, resume_dir=resume)
        return emb, 0, stats
    lookup = {(p.title, p.text): i for i, p in enumerate(reuse.passages)}
    src = [lookup.get((p.title, p.text), -1) for p in passages]
    have = [i for i, s in enumerate(src) if s >= 0]
    missing = [i for i, s in enumerate(src) if s < 0]
    out = np.empty((len(passages), reuse.embeddings.shape[1]), dtype=np.float32)
    stats: dict[str, Any] = {"passages": 0, "encoded": 0}
    if have:
        out[have] = reuse.embeddings[[src[i] for i in have]]
    if missing:
        out[missing], stats = encode_passages_with_stats(
            model, [passages[i] for i in missing], batch_size=batch_size, show_progress=progress, backend=backend,
            resume_dir=resume,
        )
    return out, len(have), stats


# ------------------------------------------------------------------------------------------------- load
def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated manifest of an index directory, or ``IndexLoadError`` saying how to fix it."""
    d = Path(directory)
    if not d.exists():
        raise IndexLoadError(f"no index at {d}: the directory does not exist; build one with 'crossrank index "
                             "CORPUS --out DIR' (Python: build_index())")
    if not d.is_dir():
        raise IndexLoadError(f"{d} is a file, not an index directory")
    mpath = d / "manifest.json"
    if not mpath.is_file():
        raise IndexLoadError(
            f"{d} has no manifest.json: it is not a complete crossrank index (an interrupted build leaves none); "
            + REBUILD
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexLoadError(f"{mpath} is unreadable or corrupt ({e}); " + REBUILD) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexLoadError(f"{mpath} is not a crossrank index manifest; " + REBUILD)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise IndexLoadError(
            f"{d} has index format {version!r}, this crossrank reads format {FORMAT_VERSION}; "
            + REBUILD + " (or upgrade crossrank)"
        )
    for key in ("methods", "counts", "files"):
        if key not in manifest:
            raise IndexLoadError(f"{mpath} lacks {key!r}; " + REBUILD)
    return manifest


def load_index(directory: str | os.PathLike, *, mmap: bool = True, verify: bool = True) -> Index:
    """Open an index written by ``build_index``/``Index.save``. No re-encoding: ``dense.npy`` and the BM25 arrays
    are memory-mapped (``mmap=True``). Every file's size and (``verify=True``, the default) sha256 are checked
    against the manifest, once per load. The dense model is loaded lazily, on the first dense search."""
    d = Path(directory).absolute()
    manifest = read_manifest(d)
    _check_files(d, manifest["files"], verify)
    passages = PassageTable(d / "passages.jsonl", in_memory=not mmap)
    if len(passages) != manifest["counts"]["passages"]:
        raise IndexLoadError(f"index {d}: passages.jsonl holds {len(passages)} passages, manifest says "
                             f"{manifest['counts']['passages']}; " + REBUILD)
    bm25 = BM25Retriever.load(d / "bm25", passages, mmap=mmap) if "bm25" in manifest["methods"] else None
    embeddings = None
    if "dense" in manifest["methods"]:
        try:
            embeddings = np.load(d / "dense.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise IndexLoadError(f"cannot read {d / 'dense.npy'} ({e}); " + REBUILD) from None
        if embeddings.shape != (len(passages), manifest["dense"]["dimension"]):
            raise IndexLoadError(f"{d / 'dense.npy'} has shape {embeddings.shape}, expected "
                                 f"({len(passages)}, {manifest['dense']['dimension']}); " + REBUILD)
        if embeddings.dtype != np.float32:
            embeddings = np.asarray(embeddings, dtype=np.float32)
    graph = _load_ann(d, manifest, view=mmap) if embeddings is not None else None
    return Index(passages, manifest, bm25=bm25, embeddings=embeddings, path=d, ann=graph)


def open_index(location: str | os.PathLike, **load_opts: Any) -> "Index | MilvusStore":
    """What ``crossrank search`` opens: a Milvus store for a store URI (``milvus://...``, ``http(s)://...``,
    ``*.db``; :mod:`crossrank.retrieve.milvus`), else the index directory (``load_index(location, **load_opts)``).
    Both give their searchers through ``.retriever(kind, fusion, **opts)``."""
    from crossrank.retrieve.milvus import MilvusStore, is_store_uri

    if is_store_uri(location):
        return MilvusStore.open(location)
    return load_index(location, **load_opts)


def _load_ann(d: Path, manifest: dict[str, Any], *, view: bool) -> AnnIndex | None:
    """The index's ANN graph (memory-mapped with ``view``), or None for an index without one."""
    info = manifest.get("dense", {}).get("ann")
    if not info:
        return None
    params = {key: info[key] for key in ann_module.DEFAULT_PARAMS if key in info}
    try:
        graph = AnnIndex.load(d, params, int(manifest["dense"]["dimension"]), view=view)
    except ImportError:
        raise IndexLoadError(f"index {d} has an ANN graph ({ann_module.ANN_FILE}) but usearch is not installed; "
                             "pip install usearch") from None
    except (OSError, ValueError, RuntimeError) as e:
        raise IndexLoadError(f"cannot read the ANN graph of {d} ({e}); " + REBUILD) from None
    if len(graph) != manifest["counts"]["passages"]:
        raise IndexLoadError(f"index {d}: the ANN graph holds {len(graph)} vectors, manifest says "
                             f"{manifest['counts']['passages']}; " + REBUILD)
    return graph


# ------------------------------------------------------------------------------------------------- file helpers
def _check_files(d: Path, files: dict[str, dict[str, Any]], verify: bool) -> None:
    """Every file of the manifest present with its size and (``verify``) sha256; hashed in parallel, largest
    first (hashlib releases the GIL), since hashing a large index is most of what opening it costs."""
    from concurrent.futures import ThreadPoolExecutor

    order = sorted(files.items(), key=lambda kv: -int(kv[1].get("bytes") or 0))
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for done in [pool.submit(_check_file, d, rel, info, verify) for rel, info in order]:
            done.result()  # the first damaged file's IndexLoadError, in size order


def _check_file(d: Path, rel: str, info: dict[str, Any], verify: bool) -> None:
    """``IndexLoadError`` naming ``rel`` when it is missing, or its size or sha256 differs from the manifest's."""
    f = d / rel
    if not f.is_file():
        raise IndexLoadError(f"index {d} is incomplete: {rel} is missing; " + REBUILD)
    if f.stat().st_size != info.get("bytes"):
        raise IndexLoadError(f"index {d} is damaged: {rel} has the wrong size; " + REBUILD)
    if verify and file_sha256(f) != info.get("sha256"):
        raise IndexLoadError(f"index {d} is damaged: {rel} changed since the index was built (sha256 differs "
                             "from the manifest's); " + REBUILD)


def _write_dense(path: Path, embeddings: np.ndarray, dtype: np.dtype) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(embeddings, dtype=dtype), allow_pickle=False)


def _file_table(root: Path) -> dict[str, dict[str, Any]]:
    table = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        fsync_file(f)
        table[f.relative_to(root).as_posix()] = {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
    for sub in sorted(p for p in root.rglob("*") if p.is_dir()):
        fsync_dir(sub)
    return table


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    path = root / "manifest.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _check_replaceable(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise InputError(f"cannot write an index to {target}: it is a file")
    if not any(target.iterdir()):
        return
    try:
        ok = json.loads((target / "manifest.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise InputError(
            f"refusing to overwrite {target}: it exists, is not empty and is not a crossrank index; "
            "choose another directory or remove it"
        )
