"""Reading corpora (BEIR, JSONL, folders of text files), queries and qrels; chunking documents into passages."""

from crossrank.corpus.chunking import WORDPIECES_PER_WORD, as_passages, chunk_document, chunk_documents, count_tokens
from crossrank.corpus.loaders import (
    BeirDataset,
    available_splits,
    iter_jsonl,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
)

__all__ = [
    "BeirDataset",
    "WORDPIECES_PER_WORD",
    "as_passages",
    "available_splits",
    "chunk_document",
    "chunk_documents",
    "count_tokens",
    "iter_jsonl",
    "load_beir",
    "load_corpus",
    "load_qrels",
    "load_queries",
]
