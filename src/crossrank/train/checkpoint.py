"""Resumable training checkpoints without pickle: ``checkpoints/last`` holds everything ``--resume`` needs.

Layout of a checkpoint folder::

    model.safetensors, config.json, tokenizer files   the model (Hugging Face format, loadable as it is)
    trainer_state.safetensors                         optimizer moments and random generator states (tensors)
    trainer_state.json                                the rest of the optimizer, scheduler, scaler and RNG state
    state.json                                        step, dev curve, timings (the run's progress)

A checkpoint is a user's file like any other: nothing in it is unpickled (``torch.load`` is never called), so a
folder from elsewhere can at worst fail to resume, never run code. Folders are written whole or not at all
(:func:`crossrank.files.staged_dir`), so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossrank.errors import InputError, ModelLoadError
from crossrank.files import staged_dir

TENSORS_FILE = "trainer_state.safetensors"
JSON_FILE = "trainer_state.json"
STATE_FILE = "state.json"
LEGACY_PICKLE_FILE = "trainer_state.pt"  # written by crossrank before checkpoints left pickle; refused
TRAINER_FILES = frozenset({TENSORS_FILE, JSON_FILE, STATE_FILE, LEGACY_PICKLE_FILE})
FORMAT = 1


def save_model(model, tokenizer, path: Path) -> None:
    """Write model and tokenizer alone (a Hugging Face folder, safetensors) to ``path`` atomically."""
    with staged_dir(path) as tmp:
        _write_model(model, tokenizer, tmp)


def save_checkpoint(path: Path, model, tokenizer, optimizer, scheduler, scaler, state: dict[str, Any]) -> None:
    """Write model, tokenizer, trainer state and ``state`` to ``path`` atomically."""
    from safetensors.torch import save_file

    tensors, meta = _trainer_state(optimizer, scheduler, scaler)
    with staged_dir(path) as tmp:
        _write_model(model, tokenizer, tmp)
        save_file(tensors, str(tmp / TENSORS_FILE))
        (tmp / JSON_FILE).write_text(json.dumps(meta), encoding="utf-8")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler, scaler and RNG from ``path``; returns its ``state``."""
    from safetensors.torch import load_file

    if not (path / TENSORS_FILE).is_file():
        if (path / LEGACY_PICKLE_FILE).is_file():
            raise InputError(f"{path} was saved by an older crossrank in pickle format, which is never loaded; "
                             "train into a new --output (or delete the folder) to start afresh")
        raise InputError(f"{path} is no training checkpoint: {TENSORS_FILE} is missing")
    weights = load_file(str(path / "model.safetensors"))
    missing, _ = model.load_state_dict(weights, strict=False)
    real_missing = [k for k in missing if not k.endswith("position_ids")]
    if real_missing:
        raise ModelLoadError(f"checkpoint {path} lacks weights: {real_missing[:5]}")
    try:
        meta = json.loads((path / JSON_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
        _restore(load_file(str(path / TENSORS_FILE)), meta, optimizer, scheduler, scaler)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise InputError(f"cannot resume from {path}: its trainer state is unreadable ({e})") from e
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------- encoding


def _write_model(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _trainer_state(optimizer, scheduler, scaler) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split the trainer's state into named tensors and a JSON document."""
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_key, dtype=np.uint32).astype(np.int64))
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for i, s in enumerate(cuda):
        tensors[f"rng.cuda.{i}"] = s
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "format": FORMAT,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)],
                "python": [py_version, list(py_state), py_gauss], "cuda_devices": len(cuda)},
    }
    return tensors, meta


def _restore(tensors: dict[str, torch.Tensor], meta: dict[str, Any], optimizer, scheduler, scaler) -> None:
    """The inverse of :func:`_trainer_state`."""
    o = meta["optimizer"]
    state: dict[int, dict[str, Any]] = {int(idx): dict(values) for idx, values in o["scalars"].items()}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": o["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    rng = meta["rng"]
    torch.set_rng_state(tensors["rng.torch"])
    name, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = rng["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if rng.get("cuda_devices") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(rng["cuda_devices"])])
