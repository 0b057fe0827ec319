"""Bulk passage encoding for index builds: length-sorted batches, progress, resumable shards, ONNX Runtime on CPU.

``encode_bulk(model, texts)`` returns the L2-normalised float32 vectors of
``SentenceTransformer.encode(texts, normalize_embeddings=True)``: the same up to float rounding on torch and ONNX
(the ONNX graph is checked at start-up against sentence-transformers on probe texts), within 1e-3 cosine in bf16,
computed thus:

* **backend**: ``"onnx"`` runs the transformer through the ONNX Runtime graph the dense query encoder already uses
  (:class:`crossrank.retrieve.dense.OnnxQueryEncoder`; CPU, plain transformer + mean/CLS pooling only);
  ``"torch"`` through sentence-transformers itself; ``"bf16"`` through sentence-transformers on a bfloat16 copy of
  the model (vectors returned as float32). ``"auto"`` (the default) is bf16 on CPUs with native bf16 (AMX /
  AVX512-BF16: ``hardware.cpu_has_fast_bf16``) and torch elsewhere: there bf16 measured over twice
  sentence-transformers' fp32 rate with every vector within 1e-3 cosine of it, while on AVX2-only CPUs bf16 is
  emulated and slow, and the ONNX graph was not faster than torch on long, full batches (benchmarks/bench_scale.py).
* **length-sorted batches**: texts are ordered by length (longest first, as sentence-transformers orders them), so
  a batch pads to nearly its own length, and cut into shards of ``shard_size`` passages, each encoded in batches of
  ``batch_size``.
* **progress**: with ``progress=True``, passages/s and the ETA on stderr: a bar on a terminal, a line every 30 s
  in a pipe or log (``crossrank/progress.py``); the returned stats always carry the rate.
* **resumable**: with ``resume_dir``, each shard is saved there (``shard-NNNNNN.npy``, written to a temporary
  name and renamed) as soon as it is encoded, under a ``meta.json`` naming the model and a hash of the texts. A
  rerun over the same texts and model loads the finished shards and encodes only the rest; another corpus or
  model clears the folder first. The caller deletes the folder once the vectors are safely stored.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from crossrank.errors import InputError, ModelLoadError
from crossrank.progress import progress_bar

BACKENDS = ("auto", "torch", "bf16", "onnx")
SHARD_PASSAGES = 4096  # passages per resumable shard: small enough that a crash loses little work


def _texts_key(model_id: str, texts: Sequence[str]) -> str:
    """What a resume folder's shards depend on: the model and every text, in order."""
    h = hashlib.sha256(model_id.encode("utf-8"))
    for t in texts:
        h.update(len(t).to_bytes(8, "little"))
        h.update(t.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def model_identity(model: Any) -> str:
    """A string naming a loaded bi-encoder's weights and truncation, for resume keys."""
    from crossrank.onnx_graph import weights_sha256

    try:
        weights = weights_sha256(model[0].auto_model)
    except Exception:  # noqa: BLE001 - a model without a transformer module: fall back to its name
        weights = str(getattr(model, "crossrank_model_name", type(model).__name__))
    return f"{weights}|max_seq_length={getattr(model, 'max_seq_length', None)}"


def _torch_encoder(model: Any) -> Callable[[list[str]], np.ndarray]:
    def encode(batch: list[str]) -> np.ndarray:
        emb = model.encode(batch, batch_size=len(batch), show_progress_bar=False, convert_to_numpy=True,
                           normalize_embeddings=True)
        return np.asarray(emb, dtype=np.float32)

    return encode


def _bf16_encoder(model: Any) -> Callable[[list[str]], np.ndarray]:
    import torch

    # a copy, so the caller's model (the query encoder's, say) stays fp32
    half = copy.deepcopy(model).to(torch.bfloat16)

    def encode(batch: list[str]) -> np.ndarray:
        emb = half.encode(batch, batch_size=len(batch), show_progress_bar=False, convert_to_tensor=True,
                          normalize_embeddings=False)
        # normalised in float32: in bf16 the unit norm itself is off by up to ~0.4%
        return torch.nn.functional.normalize(emb.float(), dim=1).cpu().numpy()

    return encode


def pick_encoder(model: Any, backend: str = "auto") -> tuple[str, Callable[[list[str]], np.ndarray]]:
    """``(backend_used, encode_batch)`` for ``model`` (see the module docstring for the choice)."""
    if backend not in BACKENDS:
        raise InputError(f"unknown encoding backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    on_cpu = str(getattr(model, "device", "cpu")).startswith("cpu")
    if backend == "auto":
        from crossrank.hardware import cpu_has_fast_bf16

        backend = "bf16" if on_cpu and cpu_has_fast_bf16() else "torch"
    if backend == "torch":
        return "torch", _torch_encoder(model)
    if backend == "bf16":
        return "bf16", _bf16_encoder(model)
    from crossrank.onnx_graph import onnx_available
    from crossrank.retrieve.dense import OnnxQueryEncoder

    if on_cpu and onnx_available():
        try:
            return "onnx", OnnxQueryEncoder(model).encode
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(str(e)) from e
    raise InputError("backend='onnx' needs a CPU model and onnxruntime + onnx installed")


class _ResumeDir:
    """The shard folder of one encoding run (see the module docstring)."""

    def __init__(self, path: Path, key: str, n: int, shard_size: int):
        self.path = path
        meta = {"key": key, "passages": n, "shard_size": shard_size}
        try:
            old = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != meta:  # another corpus, model or shard size: its shards are of no use
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True, exist_ok=True)
            (path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")

    def shard(self, i: int) -> Path:
        return self.path / f"shard-{i:06d}.npy"

    def load(self, i: int, rows: int) -> np.ndarray | None:
        try:
            arr = np.load(self.shard(i), allow_pickle=False)
        except (OSError, ValueError):
            return None
        return arr if arr.ndim == 2 and arr.shape[0] == rows and arr.dtype == np.float32 else None

    def save(self, i: int, arr: np.ndarray) -> None:
        tmp = self.path / f".shard-{i:06d}.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.shard(i))


def encode_bulk(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    backend: str = "auto",
    resume_dir: str | os.PathLike | None = None,
    shard_size: int = SHARD_PASSAGES,
    progress: bool = False,
    on_shard: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(vectors, stats)``: one L2-normalised float32 row per text, in the order given.

    ``stats``: ``backend``, ``passages``, ``encoded`` (this run), ``resumed`` (loaded from ``resume_dir``),
    ``seconds`` and ``passages_per_s`` (of this run's encoding). ``on_shard(done, total)`` is called after each
    shard is stored (for callers that report progress their own way)."""
    texts = list(texts)
    if batch_size < 1 or shard_size < 1:
        raise InputError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    t0 = time.perf_counter()
    n = len(texts)
    order = np.argsort(-np.fromiter((len(t) for t in texts), dtype=np.int64, count=n), kind="stable")
    shards = [order[i : i + shard_size] for i in range(0, n, shard_size)]
    store = None
    if resume_dir is not None and n:
        store = _ResumeDir(Path(resume_dir), _texts_key(model_identity(model), texts), n, shard_size)
    out = np.empty((n, _dimension(model) if n else 0), dtype=np.float32)
    todo = []
    for i, rows in enumerate(shards):  # finished shards first, so the bar's rate and ETA count only new work
        vecs = store.load(i, len(rows)) if store is not None else None
        if vecs is None:
            todo.append(i)
        else:
            out[rows] = vecs
    resumed = n - sum(len(shards[i]) for i in todo)
    encoded = 0
    used, encode = pick_encoder(model, backend) if todo else ("resumed", None)
    bar = progress_bar(n, "encoding passages", done=resumed) if progress else None
    t_enc = time.perf_counter()
    for i in todo:
        rows = shards[i]
        parts = []
        for b in range(0, len(rows), batch_size):
            parts.append(encode([texts[j] for j in rows[b : b + batch_size]]))
            if bar is not None:
                bar.update(len(parts[-1]))
        vecs = np.concatenate(parts)
        out[rows] = vecs
        encoded += len(rows)
        if store is not None:
            store.save(i, vecs)
        if on_shard is not None:
            on_shard(resumed + encoded, n)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t_enc
    stats = {"backend": used, "passages": n, "encoded": encoded, "resumed": resumed,
             "seconds": round(time.perf_counter() - t0, 3),
             "passages_per_s": round(encoded / seconds, 1) if encoded and seconds > 0 else None}
    return out, stats


def _dimension(model: Any) -> int:
    """The bi-encoder's output dimension (sentence-transformers renamed the method in 6.x)."""
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        fn = getattr(model, name, None)
        if fn is not None and fn():
            return int(fn())
    return int(_torch_encoder(model)(["probe"]).shape[1])
