"""First-stage retrieval: BM25, dense (bi-encoder) and hybrid fusion, plus atomic index persistence.

The pipeline depends only on the ``Retriever`` protocol (``retrieve/base.py``): ``name``, ``search(query, k)`` and
``search_batch(queries, k)`` returning ``Candidate`` lists (best first, ranks 1-based, text included). That is the
seam for other backends: a distributed engine is one more class implementing ``Retriever`` that owns its own
storage. Milvus is one (``retrieve/milvus.py``: ``write_store(index, "milvus:///abs/store.db")`` writes an index's
passages and vectors to Milvus Lite or a Milvus server, ``open_index(uri).retriever(kind)`` searches it).

Typical use::

    from crossrank.corpus import load_corpus
    from crossrank.retrieve import build_index, load_index

    index = build_index(load_corpus("corpus.jsonl"), "my-index")   # chunk, BM25, encode, save atomically
    retriever = load_index("my-index").retriever("hybrid")          # or "bm25" / "dense"
    candidates = retriever.search("what do mitochondria do?", k=100)
    update_index("my-index", add=new_documents, delete=["doc-7"])   # in place, atomically, no full re-encode

Large indexes (``ann.ANN_MIN_PASSAGES`` passages on) get an ANN graph for the dense side (``retrieve/ann.py``);
passages are encoded in bulk by ``retrieve/encode.py`` (length-sorted, resumable).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crossrank.retrieve.base import KINDS, METHODS, Retriever

# Loaded on first use (PEP 562), so the protocol and the kind names cost no numpy / onnxruntime / bm25s import.
_LAZY = {
    "ANN_MIN_PASSAGES": "ann", "AnnIndex": "ann", "BM25Retriever": "bm25", "DEFAULT_MODEL": "dense",
    "DenseRetriever": "dense", "load_bi_encoder": "dense", "resolve_model": "dense", "encode_bulk": "encode",
    "HybridRetriever": "hybrid", "min_max": "hybrid", "reciprocal_rank_fusion": "hybrid", "weighted_fusion": "hybrid",
    "FORMAT_VERSION": "index", "Index": "index", "build_index": "index", "load_index": "index", "open_index": "index",
    "read_manifest": "index", "MilvusStore": "milvus", "is_store_uri": "milvus", "write_store": "milvus",
    "update_index": "update",
}

if TYPE_CHECKING:
    from crossrank.retrieve.ann import ANN_MIN_PASSAGES, AnnIndex
    from crossrank.retrieve.bm25 import BM25Retriever
    from crossrank.retrieve.dense import DEFAULT_MODEL, DenseRetriever, load_bi_encoder, resolve_model
    from crossrank.retrieve.encode import encode_bulk
    from crossrank.retrieve.hybrid import HybridRetriever, min_max, reciprocal_rank_fusion, weighted_fusion
    from crossrank.retrieve.index import FORMAT_VERSION, Index, build_index, load_index, open_index, read_manifest
    from crossrank.retrieve.milvus import MilvusStore, is_store_uri, write_store
    from crossrank.retrieve.update import update_index


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ANN_MIN_PASSAGES",
    "DEFAULT_MODEL",
    "FORMAT_VERSION",
    "KINDS",
    "METHODS",
    "AnnIndex",
    "BM25Retriever",
    "DenseRetriever",
    "HybridRetriever",
    "Index",
    "MilvusStore",
    "Retriever",
    "build_index",
    "encode_bulk",
    "is_store_uri",
    "load_bi_encoder",
    "load_index",
    "min_max",
    "open_index",
    "read_manifest",
    "reciprocal_rank_fusion",
    "resolve_model",
    "update_index",
    "weighted_fusion",
    "write_store",
]
