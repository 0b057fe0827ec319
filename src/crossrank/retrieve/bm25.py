"""BM25 with bm25s: Lucene scoring, k1=0.9, b=0.4, English stop words, Snowball English stemmer (PyStemmer).

These are Pyserini's BEIR settings (SciFact test nDCG@10 0.679 published, 0.676 measured here). Each passage is
indexed as ``title + " " + text``. Only passages sharing at least one term with the query are returned, so a
result list can be shorter than ``k``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from crossrank.errors import IndexLoadError, InputError, check_query
from crossrank.retrieve._common import REBUILD, check_k, make_candidates, passage_text, top_k
from crossrank.retrieve.passages import as_passage_sequence
from crossrank.types import Candidate, Document, Passage

DEFAULT_PARAMS = {"k1": 0.9, "b": 0.4, "method": "lucene", "stopwords": "en", "stemmer": "english"}
_SPLIT = re.compile(r"(?u)\b\w\w+\b").findall  # bm25s's default token pattern


class _Analyzer:
    """Lower-case, split, drop stop words, stem: exactly what ``bm25s.tokenize`` does, without its per-call
    progress-bar and vocabulary overhead (a query costs a few microseconds)."""

    def __init__(self, stopwords: str | None = "en", stemmer: str | None = "english"):
        from bm25s.tokenization import Tokenizer

        self.stopwords_name, self.stemmer_name = stopwords, stemmer
        # bm25s' own name -> list rule (its public Tokenizer resolves it), so both analyzers drop the same words
        self.stopwords = frozenset(Tokenizer(stopwords=stopwords).stopwords) if stopwords else frozenset()
        if stemmer:
            import Stemmer

            self._stem = Stemmer.Stemmer(stemmer).stemWords
        else:
            self._stem = None

    def __call__(self, text: str) -> list[str]:
        tokens = [t for t in _SPLIT(text.lower()) if t not in self.stopwords]
        return self._stem(tokens) if self._stem else tokens

    def corpus_ids(self, texts: Sequence[str], show_progress: bool):
        import bm25s

        stemmer = None
        if self.stemmer_name:
            import Stemmer

            stemmer = Stemmer.Stemmer(self.stemmer_name)
        return bm25s.tokenize(
            list(texts), stopwords=self.stopwords_name or [], stemmer=stemmer, return_ids=True,
            show_progress=show_progress,
        )


class BM25Retriever:
    """Sparse lexical retriever over passages (or documents, taken whole).

    ``BM25Retriever(passages)`` builds the index in memory; ``BM25Retriever.load(dir, passages)`` reads one written
    by ``save`` (bm25s's numpy/JSON files, never pickle)."""

    name = "bm25"

    def __init__(
        self,
        passages: Sequence[Passage | Document],
        *,
        k1: float = 0.9,
        b: float = 0.4,
        method: str = "lucene",
        stopwords: str | None = "en",
        stemmer: str | None = "english",
        show_progress: bool = False,
        _model=None,
    ):
        import bm25s

        self.passages = as_passage_sequence(passages)
        if not self.passages:
            raise InputError("cannot build a BM25 index over an empty corpus")
        self.params = {"k1": k1, "b": b, "method": method, "stopwords": stopwords, "stemmer": stemmer}
        self._analyze = _Analyzer(stopwords, stemmer)
        if _model is None:
            _model = bm25s.BM25(k1=k1, b=b, method=method)
            tokens = self._analyze.corpus_ids([passage_text(p) for p in self.passages], show_progress)
            _model.index(tokens, show_progress=show_progress)
        self.model = _model
        if self.model.scores["num_docs"] != len(self.passages):
            raise IndexLoadError(
                f"BM25 index holds {self.model.scores['num_docs']} passages but {len(self.passages)} were given; "
                + REBUILD
            )
        self._vocab = self.model.vocab_dict

    # ----------------------------------------------------------------------------------------- search
    def _scores(self, query: str) -> np.ndarray:
        ids = [self._vocab[t] for t in self._analyze(query) if t in self._vocab]
        if not ids:
            return np.zeros(len(self.passages), dtype=np.float32)
        return self.model.get_scores_from_ids(ids)

    def search(self, query: str, k: int = 100) -> list[Candidate]:
        check_query(query)
        k = check_k(k)
        scores = self._scores(query)
        idx = top_k(scores, k)
        idx = idx[scores[idx] > 0]
        return make_candidates(self.passages, idx, scores[idx])

    def search_batch(self, queries: Sequence[str], k: int = 100) -> list[list[Candidate]]:
        return [self.search(q, k) for q in queries]

    # ----------------------------------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> None:
        """Write bm25s's arrays (``np.save`` with ``allow_pickle=False``) and JSON vocab/params, plus our analyzer
        settings in ``crossrank_bm25.json``. Passages are stored by the caller (the ``Index``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(str(directory), corpus=None, allow_pickle=False, show_progress=False)
        (directory / "crossrank_bm25.json").write_text(json.dumps(self.params, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, passages: Sequence[Passage], *, mmap: bool = True) -> "BM25Retriever":
        import bm25s

        directory = Path(directory)
        try:
            params = json.loads((directory / "crossrank_bm25.json").read_text(encoding="utf-8"))
            model = bm25s.BM25.load(str(directory), mmap=mmap, allow_pickle=False, load_corpus=False, show_progress=False)
        except (OSError, ValueError) as e:
            raise IndexLoadError(f"cannot load the BM25 index in {directory}: {e}; " + REBUILD) from None
        return cls(passages, _model=model, **params)
