"""What a reranker spec scores with, as a content hash of the files on disk (no model is loaded).

:func:`weights_fingerprint` follows a spec the way :func:`crossrank.rerank.load_reranker` does (``fast``, cascades
``A>B@M`` and depths ``B@M`` through :func:`crossrank.rerank.cascade.spec_models`) to the folders it loads: a
bundle (``default``, ``fast``, a packed folder: its delta, config and manifest, which pins the base's sha256), a
local checkpoint, or a hub id's snapshot in the local Hugging Face cache. The hash covers the files' contents and
names relative to their folder, never the folder's path or mtimes: retraining into the same path changes it,
copying a checkpoint elsewhere does not. A score cache keyed by it is never stale and survives a move.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from crossrank.files import file_sha256

# Files that decide scores: weights, config, tokenizer (vocab.txt, merges.txt, sentencepiece .model), a bundle's
# manifest. Model cards and trainer state do not; a file kept here that does not matter costs a cache miss only.
_SCORING_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")
# (a training checkpoint's own files: crossrank.train.checkpoint.TRAINER_FILES)
_NOT_SCORING = frozenset({"state.json", "results.json", "trainer_state.json", "trainer_state.safetensors"})


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over (name, sha256) of ``folder``'s scoring files, top level only (what ``from_pretrained`` reads)."""
    d = Path(folder)
    h = hashlib.sha256()
    for f in sorted(d.iterdir(), key=lambda p: p.name):
        if f.is_file() and f.suffix in _SCORING_SUFFIXES and f.name not in _NOT_SCORING:
            # remember=True: a run asks once per source, and the weights may be gigabytes
            h.update(json.dumps([f.name, file_sha256(f, remember=True)]).encode())
    return h.hexdigest()


def model_folder(name: str) -> Path | None:
    """The folder one model name of a spec loads from: a bundle, a local checkpoint, or a hub id's cached
    snapshot; None for a URL or a hub id not downloaded yet (its weights cannot be known before loading)."""
    from crossrank.rerank.bundled import bundled_dir

    if name.lower().startswith(("http://", "https://")):
        return None
    bundle = bundled_dir(name)
    if bundle is not None:
        return bundle if bundle.is_dir() else None
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a hub id, or no huggingface_hub: unknown, as for a URL
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def weights_fingerprint(spec: str) -> str | None:
    """A sha256 naming the weights ``spec`` scores with (every model of a cascade, in order, with its M and head
    rule); None when one of them cannot be fingerprinted without loading it (a URL, an uncached hub id)."""
    from crossrank.rerank.cascade import model_depth, spec_models

    parts = spec_models(spec)
    # a cascade's first model may carry a depth ("A@S>B@M"): the folder is A's, the depth part of the shape
    depths = [model_depth(n) if parts.cascade else None for n in parts.names]
    folders = [model_folder(d[0] if d else name) for name, d in zip(parts.names, depths, strict=True)]
    if any(f is None for f in folders):
        return None
    shape = [[folder_fingerprint(f) for f in folders if f is not None], parts.top_m, parts.head]
    if any(depths):
        shape.append([d[1] if d else None for d in depths])
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()
