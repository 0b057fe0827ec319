"""Small helpers shared by the evaluation modules: latency summaries, names, atomic writes, progress bars,
loading a reranker spec, the machine description."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from crossrank.errors import InputError
from crossrank.files import atomic_write_text
from crossrank.hardware import cpu_model
from crossrank.progress import LineProgress
from crossrank.rerank.base import as_reranker


def latency_summary(values_ms: Iterable[float]) -> dict[str, Any]:
    """``{"p50", "p95", "mean", "n"}`` in milliseconds (linear-interpolated percentiles); ``None``s when empty."""
    arr = np.asarray([float(v) for v in values_ms], dtype=float)
    if arr.size == 0:
        return {"p50": None, "p95": None, "mean": None, "n": 0}
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p95": round(float(np.percentile(arr, 95)), 3),
        "mean": round(float(arr.mean()), 3),
        "n": int(arr.size),
    }


def slug(name: str, max_len: int = 48) -> str:
    """A file-name-safe version of ``name``."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.")
    return (s or "x")[:max_len]


def short_hash(*parts: Any) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:10]


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def as_list(value: Any, kind: type = str, what: str = "option") -> list:
    """Accept a sequence or a comma-separated string (what a CLI hands over); convert items to ``kind``."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        items: Sequence[Any] = [v.strip() for v in str(value).split(",") if v.strip()]
    elif isinstance(value, (int, float)):
        items = [value]
    else:
        items = list(value)
    out = []
    for item in items:
        if kind is int:
            try:
                v = int(item)
            except (TypeError, ValueError):
                raise InputError(f"{what}: {item!r} is not an integer") from None
            if v < 1:
                raise InputError(f"{what}: values must be positive, got {v}")
            out.append(v)
        else:
            out.append(item if not isinstance(item, str) else item.strip())
    return out


def r6(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


class _NullProgress:
    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        pass

    def advance(self, *a: Any, **k: Any) -> None:
        pass

    def remove_task(self, *a: Any, **k: Any) -> None:
        pass

    def log(self, *a: Any, **k: Any) -> None:
        pass


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Any]:
    """A rich ``Progress`` on a terminal's stderr, plain :class:`LineProgress` lines when stderr is a file or pipe,
    or a do-nothing stand-in when ``enabled`` is False."""
    if not enabled:
        yield _NullProgress()
        return
    if not sys.stderr.isatty():
        yield LineProgress(sys.stderr)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        yield progress


def load_reranker_spec(spec: Any, options: Mapping[str, Any] | None) -> tuple[str, Any]:
    """``(label, reranker)`` for a spec: a Reranker object, "default", a model folder or a hub id (the BEIR and
    answer-selection evaluators load theirs alike)."""
    if not isinstance(spec, (str, os.PathLike)):
        # checked here (an InputError for an object that cannot score), handed back as given: its own attributes
        # (a path, a fingerprint) are what its score cache is keyed on
        return as_reranker(spec).name, spec
    from crossrank.rerank import load_reranker
    from crossrank.rerank.bundled import BUNDLED

    name = str(spec)
    # our on-disk score cache replaces the loader's in-memory one (which would also blur timings)
    reranker = load_reranker(name, **{"cache_size": 0, **dict(options or {})})

    label = name if name in BUNDLED or not Path(name).exists() else Path(name).name
    return label, reranker


def machine_info() -> dict[str, Any]:
    """The machine a run measured on (its results' ``machine``): platform, CPU, Python, load, torch threads."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        pass
    return info
