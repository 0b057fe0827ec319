"""Approximate nearest-neighbour search for the dense side: an HNSW graph from usearch, rescored exactly.

Why usearch: of usearch, faiss-cpu and hnswlib, measured on 50k random-normalised 384-d vectors on this 2-core
machine (benchmarks/README.md), it matched the others' recall at a lower query latency, ships wheels, is
maintained, and is the one whose saved index can be opened memory-mapped (``Index.restore(path, view=True)``),
so loading a large index reads no vectors up front.

The graph stores half-precision copies of the vectors (``dtype="f16"``, half the size of ``dense.npy``); a search
asks it for ``max(k, expansion_search)`` candidates, then rescores them against the exact float32 rows of
``dense.npy``, so the scores and order of what it finds are those of exact search. Keys are stable row labels
(``dense_keys.npy``, ascending, one per row): deleting passages removes their keys from the graph and the rows
from the matrix without renumbering anything, and added passages get new, larger keys.

An index is given a graph automatically once it holds :data:`ANN_MIN_PASSAGES` passages; below that exact search
(one matrix product) is both exact and fast enough.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from crossrank.progress import progress_bar

ANN_MIN_PASSAGES = 100_000  # from this many passages on, "auto" builds a graph (exact search below)
ANN_FILE = "dense.usearch"
KEYS_FILE = "dense_keys.npy"
DEFAULT_PARAMS: dict[str, Any] = {
    "metric": "ip",
    "dtype": "f16",
    "connectivity": 16,
    "expansion_add": 128,
    # chosen on SciFact train queries (benchmarks/results/bench_scale_1000000.md): the smallest of 128/256/512
    # whose mean recall@100 reaches 0.97; none did at 1M, 512 did at 200k; 512 costs a few ms a query
    "expansion_search": 512,
}


def _load_onnxruntime_first() -> None:
    """Import onnxruntime before usearch. With usearch 2.26.6 (numkong 7.8.6) and onnxruntime 1.31.1, loading
    usearch's extension first makes onnxruntime's own import crash the process (SIGSEGV: ``python -c "import
    usearch.index; import onnxruntime"``), and every crossrank index queries through onnxruntime's encoder.
    The other order is fine."""
    import onnxruntime  # noqa: F401


def library_version() -> str:
    from importlib.metadata import version

    return version("usearch")


class AnnIndex:
    """An HNSW graph over a dense matrix's rows, labelled by ``keys`` (see the module docstring).

    ``AnnIndex.build(vectors)`` makes one; ``AnnIndex.load(dir, params)`` opens a saved one (memory-mapped with
    ``view=True``, read-only; ``view=False`` loads it into memory so it can be updated)."""

    def __init__(self, graph: Any, keys: np.ndarray, params: dict[str, Any], *, view: bool = False):
        self.graph = graph
        self.keys = np.asarray(keys, dtype=np.int64)
        self.params = dict(params)
        self.view = view  # memory-mapped, read-only: usearch must not be asked to change it (it would crash)

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @staticmethod
    def _new_graph(ndim: int, params: dict[str, Any]) -> Any:
        _load_onnxruntime_first()
        from usearch.index import Index as UIndex

        return UIndex(ndim=ndim, metric=params["metric"], dtype=params["dtype"],
                      connectivity=params["connectivity"], expansion_add=params["expansion_add"],
                      expansion_search=params["expansion_search"])

    @classmethod
    def build(cls, vectors: np.ndarray, params: dict[str, Any] | None = None,
              keys: np.ndarray | None = None, threads: int = 0, progress: bool = False) -> "AnnIndex":
        """A graph over ``vectors`` (rows labelled ``keys``, default ``0..n-1``); ``threads=0``: all cores;
        ``progress``: a bar or log lines (rate, ETA) while the graph grows (minutes for a million vectors)."""
        params = {**DEFAULT_PARAMS, **(params or {})}
        keys = np.arange(vectors.shape[0], dtype=np.int64) if keys is None else np.asarray(keys, dtype=np.int64)
        graph = cls._new_graph(int(vectors.shape[1]), params)
        _add(graph, keys, vectors, threads, progress_bar(len(keys), "building the ANN graph") if progress else None)
        return cls(graph, keys, params)

    @classmethod
    def load(cls, directory: str | os.PathLike, params: dict[str, Any], ndim: int, *, view: bool = True,
             ) -> "AnnIndex":
        """Open ``<directory>/dense.usearch`` and its keys; raises ``OSError``/``ValueError`` when unreadable."""
        d = Path(directory)
        keys = np.load(d / KEYS_FILE, mmap_mode=None, allow_pickle=False)
        params = {**DEFAULT_PARAMS, **params}
        graph = cls._new_graph(ndim, params)
        if view:
            graph.view(str(d / ANN_FILE))
        else:
            graph.load(str(d / ANN_FILE))
        graph.expansion_search = int(params["expansion_search"])
        if len(graph) != keys.shape[0]:
            raise ValueError(f"{ANN_FILE} holds {len(graph)} vectors but {KEYS_FILE} {keys.shape[0]} keys")
        return cls(graph, keys, params, view=view)

    def save(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        self.graph.save(str(d / ANN_FILE))
        with open(d / KEYS_FILE, "wb") as f:
            np.save(f, self.keys, allow_pickle=False)

    # ------------------------------------------------------------------------------------------------- search
    def candidates(self, qvecs: np.ndarray, k: int) -> list[np.ndarray]:
        """Per query, the row numbers of up to ``max(k, expansion_search)`` approximate neighbours (unordered)."""
        count = min(max(k, int(self.params["expansion_search"])), len(self))
        q = np.ascontiguousarray(qvecs, dtype=np.float32)
        # one query: one thread (the query encoder's threads are busy around it); a batch: all cores
        matches = self.graph.search(q, count, threads=1 if q.shape[0] == 1 else 0)
        labels = np.atleast_2d(matches.keys)
        counts = np.atleast_1d(getattr(matches, "counts", np.full(q.shape[0], labels.shape[1])))
        out = []
        for row, c in zip(labels, counts, strict=True):
            found = np.asarray(row[: int(c)], dtype=np.int64)
            out.append(np.searchsorted(self.keys, found))
        return out

    # ------------------------------------------------------------------------------------------------- updates
    def updated(self, keep: np.ndarray, new_vectors: np.ndarray | None, threads: int = 0) -> "AnnIndex":
        """This graph with the rows where ``keep`` is False removed and ``new_vectors`` appended (new keys after
        the largest so far). The graph must have been loaded with ``view=False``."""
        if self.view:
            raise ValueError("a memory-mapped graph is read-only: load it with view=False to update it")
        removed = self.keys[~keep]
        if removed.size:
            self.graph.remove(removed)
        keys = self.keys[keep]
        if new_vectors is not None and len(new_vectors):
            start = int(self.keys.max()) + 1 if self.keys.size else 0
            new_keys = np.arange(start, start + len(new_vectors), dtype=np.int64)
            _add(self.graph, new_keys, new_vectors, threads, None)
            keys = np.concatenate([keys, new_keys])
        return AnnIndex(self.graph, keys, self.params)


def _add(graph: Any, keys: np.ndarray, vectors: np.ndarray, threads: int, bar: Any) -> None:
    step = 16384  # bounds the float32 copy of a memory-mapped or float16 matrix; a progress step
    for i in range(0, len(keys), step):
        graph.add(keys[i : i + step].astype(np.uint64),
                  np.ascontiguousarray(vectors[i : i + step], dtype=np.float32), threads=threads)
        if bar is not None:
            bar.update(len(keys[i : i + step]))
    if bar is not None:
        bar.close()
