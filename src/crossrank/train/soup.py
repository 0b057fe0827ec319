"""Weight averaging of fine-tuned checkpoints ("model soups", Wortsman et al. 2022; WiSE-FT).

Checkpoints fine-tuned from one initialisation usually lie in one basin of the loss, so the (weighted) mean of
their weights is a model too, often at least as good as the best of them and more robust out of distribution. It
costs no training: ``python -m crossrank.train.soup RUN_A/model RUN_B/model --out SOUP``. Only checkpoints of one
architecture (same ``config.json`` apart from bookkeeping keys, same tensor names and shapes) can be averaged;
everything else is refused with a clear error. The soup is written to a hidden sibling folder and swapped into
place, so ``--out`` is the previous folder or the complete new one.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Sequence

from crossrank.errors import CrossrankError, InputError

log = logging.getLogger("crossrank.train")

WEIGHTS_FILE = "model.safetensors"
# config.json keys that record how a checkpoint was saved, not what it computes
_BOOKKEEPING_KEYS = frozenset({"transformers_version", "_name_or_path", "dtype", "torch_dtype"})
_COPIED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _architecture(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{folder}: no readable config.json ({e})") from None
    return {k: v for k, v in config.items() if k not in _BOOKKEEPING_KEYS}


def _mixing_weights(n: int, weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise InputError(f"{len(weights)} weights for {n} checkpoints")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise InputError("soup weights must be >= 0 with a positive sum")
    total = float(sum(weights))
    return [w / total for w in weights]


def average_state(folders: Sequence[Path], weights: Sequence[float] | None = None) -> dict:
    """The weighted mean (weights normalised to sum 1; uniform by default) of the checkpoints' tensors, in fp32
    and cast back to each tensor's dtype. Non-float tensors (position ids) must be equal in every checkpoint."""
    import torch
    from safetensors.torch import load_file

    if len(folders) < 2:
        raise InputError("a soup needs at least two checkpoints")
    mix = _mixing_weights(len(folders), weights)
    first_arch = _architecture(folders[0])
    soup: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for i, (folder, w) in enumerate(zip(folders, mix, strict=True)):
        if _architecture(folder) != first_arch:
            raise InputError(f"{folder}: config.json differs from {folders[0]}'s: only one architecture can be averaged")
        path = folder / WEIGHTS_FILE
        if not path.is_file():
            raise InputError(f"{folder}: no {WEIGHTS_FILE} (only safetensors checkpoints are read)")
        state = load_file(str(path))
        if i and state.keys() != soup.keys():
            raise InputError(f"{folder}: its tensors differ from {folders[0]}'s by name")
        for name, t in state.items():
            dtypes.setdefault(name, t.dtype)
            if i and t.shape != soup[name].shape:
                raise InputError(f"{folder}: tensor {name} is {tuple(t.shape)}, not {tuple(soup[name].shape)}")
            if not t.is_floating_point():
                if i and not torch.equal(t, soup[name]):
                    raise InputError(f"{folder}: non-float tensor {name} differs from {folders[0]}'s")
                soup[name] = t
                continue
            soup[name] = soup[name] + w * t.float() if i else w * t.float()
    return {name: t.to(dtypes[name]).contiguous() for name, t in soup.items()}


def write_soup(folders: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None) -> Path:
    """Average ``folders`` (Hugging Face checkpoints) into the checkpoint folder ``out``: the averaged
    ``model.safetensors``, the first checkpoint's config and tokenizer files, and ``soup.json`` naming the
    ingredients and their weights. Written atomically (see the module docstring)."""
    from safetensors.torch import save_file

    from crossrank.files import file_sha256, staged_dir

    folders = [Path(f) for f in folders]
    for f in folders:
        if not f.is_dir():
            raise InputError(f"{f}: not a checkpoint folder")
    state = average_state(folders, weights)
    with staged_dir(out) as staging:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        for name in _COPIED_FILES:
            if (folders[0] / name).is_file():
                shutil.copy2(folders[0] / name, staging / name)
        recipe = {"soup": [{"checkpoint": str(f.resolve()), "weight": w,
                            "sha256": file_sha256(f / WEIGHTS_FILE)}
                           for f, w in zip(folders, _mixing_weights(len(folders), weights), strict=True)]}
        (staging / "soup.json").write_text(json.dumps(recipe, indent=2) + "\n")
    log.info("soup of %d checkpoints written to %s", len(folders), out)
    return Path(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossrank.train.soup", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="Hugging Face checkpoint folders (model.safetensors, config.json)")
    p.add_argument("--out", required=True, help="folder the averaged checkpoint is written to")
    p.add_argument("--weights", help="comma-separated mixing weights, one per checkpoint (default: uniform)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    except ValueError:
        p.error(f"--weights {args.weights!r}: not comma-separated numbers")
    try:
        print(write_soup(args.checkpoints, args.out, weights))
    except CrossrankError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
