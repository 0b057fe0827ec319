"""On-disk caches that make evaluation resumable and never score a (query, document) pair twice.

``ScoreCache``: one append-only JSONL file per (dataset, reranker fingerprint) under ``<out_dir>/cache/``. The first
line is a header (``{"format": "crossrank-score-cache", "reranker", "fingerprint", "dataset"}``), every further
line is ``[qid, doc_id, score]``. Lines are appended and flushed after every scored batch, so an interrupted run
loses at most one batch; a torn last line is ignored on reading. The fingerprint hashes what decides the scores (the
content of the weights, and options such as max_length/dtype/activation/calibration), so a retrained or
differently configured model gets a fresh file instead of stale scores, and a moved one keeps its cache.

``LatencyStore``: the rerank wall-clock measurements ``{K: {qid: {"ms", "retriever", "at"}}}`` of one reranker
fingerprint, in JSON, so a rerun reuses the timings instead of re-scoring pairs just to time them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from crossrank.evaluate._util import short_hash, slug, write_json

FORMAT = "crossrank-score-cache"
# info() keys that decide the scores (the model's display name does not: the weights' content stands for it)
_SCORING_INFO = ("architecture", "dtype", "max_length", "num_labels", "activation", "long_documents", "backend",
                 "calibration", "prompt_format")
_FOLDER_ATTRS = ("path", "model_path", "model_dir", "bundle_dir", "name_or_path")


def reranker_fingerprint(spec: Any, reranker: Any) -> str:
    """A short hash of what decides the scores a reranker produces: the content of its weights and the scoring
    options its ``info()`` reports (see the module docstring).

    For a spec (a bundle name, cascade, folder or cached hub id) the weights are
    :func:`crossrank.rerank.weights.weights_fingerprint`: retraining into the same folder changes the key, moving
    or copying the folder does not. Where the weights cannot be known before scoring (a URL, a caller's own
    object) the reranker's name stands in, with the object's own ``fingerprint`` attribute or the content of the
    folder it names (``path``, ``model_dir``, ...) when it has one."""
    from crossrank.rerank.base import as_reranker
    from crossrank.rerank.weights import folder_fingerprint, weights_fingerprint

    rr = as_reranker(reranker)
    try:
        info = rr.info()
    except Exception:  # noqa: BLE001 - a caller's info() that fails only loses its options from the key
        info = {}
    options = {k: info.get(k) for k in _SCORING_INFO if k in info}
    weights = weights_fingerprint(os.fspath(spec)) if isinstance(spec, (str, os.PathLike)) else None
    if weights is not None:
        return short_hash(weights, options)
    parts: list[Any] = [rr.name, options]
    own = getattr(reranker, "fingerprint", None)
    if isinstance(own, str):
        parts.append(own)
    for attr in _FOLDER_ATTRS:
        folder = getattr(reranker, attr, None)
        if isinstance(folder, (str, os.PathLike)) and Path(folder).is_dir():
            parts.append(folder_fingerprint(folder))
    return short_hash(*parts)


class ScoreCache:
    """Persistent ``(qid, doc_id) -> score`` for one reranker on one dataset (see the module docstring)."""

    def __init__(self, path: Path, *, reranker: str, fingerprint: str, dataset: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.scores: dict[tuple[str, str], float] = {}
        self.loaded = 0
        self.written = 0
        header = {"format": FORMAT, "reranker": reranker, "fingerprint": fingerprint, "dataset": dataset}
        if self.path.exists():
            self._read()
        else:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(json.dumps(header) + "\n")
        self._fh = open(self.path, "a", encoding="utf-8")

    @classmethod
    def for_reranker(cls, out_dir: Path, dataset: str, name: str, fingerprint: str) -> "ScoreCache":
        path = Path(out_dir) / "cache" / f"scores-{slug(dataset)}-{slug(name)}-{fingerprint}.jsonl"
        return cls(path, reranker=name, fingerprint=fingerprint, dataset=dataset)

    def _read(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            raw = f.read()
        torn = bool(raw) and not raw.endswith("\n")
        for line in raw.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by an interrupted write
            if isinstance(row, list) and len(row) == 3:
                self.scores[(str(row[0]), str(row[1]))] = float(row[2])
        self.loaded = len(self.scores)
        if torn:  # end the torn line so the next append starts cleanly
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n")

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.scores

    def __len__(self) -> int:
        return len(self.scores)

    def get(self, qid: str, doc_id: str) -> float | None:
        return self.scores.get((qid, doc_id))

    def missing(self, qid: str, doc_ids: Iterable[str]) -> list[str]:
        return [d for d in doc_ids if (qid, d) not in self.scores]

    def put(self, qid: str, doc_ids: Sequence[str], scores: Sequence[float]) -> None:
        lines = []
        for d, s in zip(doc_ids, scores, strict=True):
            key = (qid, d)
            if key in self.scores:
                continue
            self.scores[key] = float(s)
            lines.append(json.dumps([qid, d, float(s)]))
        if lines:
            self._fh.write("\n".join(lines) + "\n")
            self._fh.flush()
            self.written += len(lines)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "ScoreCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LatencyStore:
    """Persisted rerank timings of one reranker fingerprint: ``{str(K): {qid: {"ms", "retriever", "at"}}}``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data: dict[str, dict[str, dict[str, Any]]] = {}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    self.data = {str(k): dict(v) for k, v in loaded.items() if isinstance(v, dict)}
            except (OSError, json.JSONDecodeError):
                self.data = {}

    @classmethod
    def for_reranker(cls, out_dir: Path, dataset: str, name: str, fingerprint: str) -> "LatencyStore":
        return cls(Path(out_dir) / "cache" / f"latency-{slug(dataset)}-{slug(name)}-{fingerprint}.json")

    def get(self, k: int, qid: str) -> dict[str, Any] | None:
        return self.data.get(str(k), {}).get(qid)

    def put(self, k: int, qid: str, ms: float, retriever: str, **extra: Any) -> None:
        self.data.setdefault(str(k), {})[qid] = {
            "ms": round(float(ms), 3),
            "retriever": retriever,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **extra,
        }
        write_json(self.path, self.data)
