"""Loading a reranker checkpoint safely: a local folder or hub id, safetensors only, no remote code unless asked,
refused with a message to act on when it is not a (complete) sequence classifier or a causal LM with a known
reranking prompt. Everything here returns fp32 modules on CPU; :mod:`crossrank.rerank.engine` places them."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossrank.errors import InputError, ModelLoadError, first_line
from crossrank.rerank.prompts import BUILTIN, PROMPT_FILE, PromptFormat, resolve_prompt_format

# The classes crossrank loads: a checkpoint whose auto_map names one of them ships its own code for it.
_LOADED_AUTO_CLASSES = ("AutoModelForSequenceClassification", "AutoModelForCausalLM")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")



def _is_offline() -> bool:
    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return True
    except Exception:  # pragma: no cover - huggingface_hub always comes with transformers
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ).lower() in ("1", "true", "yes")


def _cached_on_disk(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
        return isinstance(hit, str)
    except Exception:
        return False


def check_local_dir(path: Path) -> None:
    """Refuse files, folders that are no model, and pickle-only checkpoints, each with a message to act on."""
    if path.is_file():
        raise ModelLoadError(
            f"{path} is a file, not a model directory: pass a Hugging Face sequence-classification checkpoint "
            "directory (config.json + model.safetensors) or a hub id"
        )
    if not path.is_dir():
        raise ModelLoadError(f"{path} does not exist")
    has_safetensors = any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json"))
    if not has_safetensors:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        if pickles:
            raise ModelLoadError(
                f"{path} holds only pickle weights ({', '.join(pickles)}); crossrank loads safetensors only, "
                "because unpickling can run arbitrary code. If you trust this checkpoint, convert it once: "
                "python -c \"from transformers import AutoModelForSequenceClassification as M; "
                f"M.from_pretrained('{path}', use_safetensors=False).save_pretrained('{path}')\""
            )
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} is not a Hugging Face model directory (no config.json); pass a sequence-classification "
            "checkpoint directory or a hub id such as cross-encoder/ms-marco-MiniLM-L6-v2"
        )
    if not has_safetensors:
        raise ModelLoadError(f"{path} has a config.json but no *.safetensors weights")


def _is_sequence_classifier(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


# Keys transformers may legitimately report as missing without the model being incomplete.
BENIGN_MISSING = re.compile(r"(position_ids|token_type_ids|\.num_batches_tracked)$")


def _is_causal_lm(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForCausalLM") for a in archs)


@dataclass
class _Source:
    """Where a checkpoint is read from: ``source`` for ``from_pretrained``, its display ``name``, the loading
    kwargs, its config and (for a local folder) the folder."""

    raw: str
    source: str
    name: str
    kwargs: dict[str, Any]
    config: Any
    local_dir: Path | None


def _open_checkpoint(name_or_path: str | os.PathLike, *, local_files_only: bool, revision: str | None,
                     trust_remote_code: bool) -> _Source:
    """Resolve a local folder or hub id and read its config, or raise :class:`ModelLoadError` saying why not."""
    from transformers import AutoConfig

    raw = os.fspath(name_or_path)
    path = Path(raw).expanduser()
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    local_dir = None
    if path.exists():
        check_local_dir(path)
        source, name = str(path.resolve()), str(path.resolve())
        kwargs["local_files_only"] = True
        local_dir = path.resolve()
    else:
        looks_like_path = raw.startswith((".", "/", "~", "\\")) or "\\" in raw or raw.count("/") > 1
        if looks_like_path or not _HUB_ID.match(raw):
            raise ModelLoadError(f"{raw} does not exist (and is not a Hugging Face hub id)")
        source, name = raw, raw
        offline = local_files_only or _is_offline()
        if _cached_on_disk(raw):
            offline = True  # already downloaded: no network round trips (and no retries when offline)
        kwargs["local_files_only"] = offline
        if revision:
            kwargs["revision"] = revision
    if local_dir is not None and not trust_remote_code:
        _refuse_remote_code(_read_json(local_dir / "config.json"), raw)
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        if "trust_remote_code" in str(e):
            raise ModelLoadError(_REMOTE_CODE.format(raw=raw)) from e
        where = "the local Hugging Face cache" if kwargs.get("local_files_only") else "the Hugging Face hub"
        hint = ""
        if not kwargs.get("local_files_only") and os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0"):
            # without a network huggingface_hub retries for tens of seconds before this error: say how to skip that
            hint = " (offline? set HF_HUB_OFFLINE=1 to use only models already in the local cache, without retries)"
        raise ModelLoadError(f"cannot load a model config for {raw!r} from {where}: {first_line(e)}{hint}") from e
    if not trust_remote_code:  # a hub id (read from the cache): the same rule on the config as read
        _refuse_remote_code({"auto_map": getattr(config, "auto_map", None)}, raw)
    return _Source(raw, source, name, kwargs, config, local_dir)


_REMOTE_CODE = ("{raw} ships its own model code (its config names custom classes in auto_map); "
                "crossrank runs no remote code unless asked: pass trust_remote_code=True (CLI: "
                "--trust-remote-code) if you trust that code")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # AutoConfig reports it


def _refuse_remote_code(config: Any, raw: str) -> None:
    """A checkpoint whose ``auto_map`` names its own class for what crossrank loads (or its own config class):
    with remote code off, transformers would run a different, stock model (or refuse), so it is refused by name.
    Local folders are checked before transformers reads them."""
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if isinstance(auto_map, dict) and any(k in auto_map for k in (*_LOADED_AUTO_CLASSES, "AutoConfig")):
        raise ModelLoadError(_REMOTE_CODE.format(raw=raw))


def load_sequence_classifier(
    name_or_path: str | os.PathLike,
    *,
    allow_new_head: bool = False,
    num_labels: int | None = None,
    local_files_only: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any, str]:
    """Load ``(model, tokenizer, name)`` in fp32 on CPU, or raise :class:`ModelLoadError` saying why not.

    ``allow_new_head=True`` lets an encoder without a classifier head (e.g. a bi-encoder) get a freshly initialised
    one: what training starts from. Without it such a model is refused: its scores would be random.
    """
    src = _open_checkpoint(name_or_path, local_files_only=local_files_only, revision=revision,
                           trust_remote_code=trust_remote_code)
    return _load_classifier(src, allow_new_head=allow_new_head, num_labels=num_labels)


def load_reranker_model(
    name_or_path: str | os.PathLike,
    *,
    allow_new_head: bool = False,
    num_labels: int | None = None,
    local_files_only: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
    prompt_format: "str | dict | PromptFormat | None" = None,
) -> tuple[Any, Any, str, "PromptFormat | None"]:
    """``(model, tokenizer, name, prompt format)``: a sequence classifier (prompt format None), or a causal LM
    wrapped as a :class:`crossrank.rerank.causal.NextTokenScorer` with the prompt format it is scored with
    (:func:`crossrank.rerank.prompts.resolve_prompt_format`)."""
    src = _open_checkpoint(name_or_path, local_files_only=local_files_only, revision=revision,
                           trust_remote_code=trust_remote_code)
    if not _is_causal_lm(src.config):
        if prompt_format is not None:
            raise InputError(f"{src.raw} is a sequence classifier: prompt_format is for causal-LM rerankers")
        return (*_load_classifier(src, allow_new_head=allow_new_head, num_labels=num_labels), None)
    return _load_causal(src, prompt_format)


def _load_classifier(src: _Source, *, allow_new_head: bool, num_labels: int | None) -> tuple[Any, Any, str]:
    from transformers import AutoModelForSequenceClassification

    raw, config = src.raw, src.config
    is_classifier = _is_sequence_classifier(config)
    if not is_classifier and not allow_new_head:
        archs = getattr(config, "architectures", None) or ["(none listed)"]
        raise ModelLoadError(
            f"{raw} is not a sequence-classification (cross-encoder) model: its config lists "
            f"architectures {', '.join(archs)}. It looks like an encoder or bi-encoder without a trained "
            "classifier head; its rerank scores would be random. Use a cross-encoder such as "
            "cross-encoder/ms-marco-MiniLM-L6-v2 or BAAI/bge-reranker-base"
        )
    if num_labels is not None:
        config.num_labels = num_labels
    elif not is_classifier:
        config.num_labels = 1  # a new reranking head: one relevance logit

    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            src.source, config=config, use_safetensors=True, dtype=torch.float32, output_loading_info=True,
            **src.kwargs,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"cannot load {raw!r} as a sequence-classification model: {first_line(e)}") from e
    if not allow_new_head:
        _check_complete(raw, info)
    return model, _load_tokenizer(src), src.name


def _load_causal(src: _Source, prompt_format: Any) -> tuple[Any, Any, str, PromptFormat]:
    from transformers import AutoModelForCausalLM

    from crossrank.rerank.causal import NextTokenScorer

    tokenizer = _load_tokenizer(src)
    fmt = resolve_prompt_format(prompt_format, src.local_dir, src.name, tokenizer)
    if fmt is None:
        raise ModelLoadError(
            f"{src.raw} is a causal language model, and crossrank does not know how it scores a pair: pass "
            f"prompt_format= (CLI: --prompt-format): a built-in ({', '.join(BUILTIN)}), or a dict / JSON file of "
            f"PromptFormat fields; or put a {PROMPT_FILE} in the checkpoint"
        )
    true_id, false_id = _answer_id(tokenizer, fmt.true_token, src.raw), None
    if fmt.false_token is not None:
        false_id = _answer_id(tokenizer, fmt.false_token, src.raw)
    try:
        lm, info = AutoModelForCausalLM.from_pretrained(
            src.source, config=src.config, use_safetensors=True, dtype=torch.float32, output_loading_info=True,
            **src.kwargs,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"cannot load {src.raw!r} as a causal language model: {first_line(e)}") from e
    _check_complete(src.raw, info)
    return NextTokenScorer(lm, true_id, false_id).eval(), tokenizer, src.name, fmt


def _answer_id(tokenizer: Any, token: str, raw: str) -> int:
    """The vocabulary id of an answer token; it must be one token, as the format's authors score it."""
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ModelLoadError(f"{raw}: the answer token {token!r} is {len(ids)} tokens in its vocabulary, not one")
    return int(ids[0])


def _check_complete(raw: str, info: dict[str, Any]) -> None:
    missing = sorted(k for k in (info.get("missing_keys") or []) if not BENIGN_MISSING.search(k))
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        what = ", ".join((missing + [str(m) for m in mismatched])[:6])
        raise ModelLoadError(
            f"{raw} lacks trained weights for {what}: transformers would initialise them at random, so its "
            "scores would be meaningless. Pass a trained cross-encoder (or allow_new_head=True to train one)"
        )


def _load_tokenizer(src: _Source) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(src.source, **src.kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"cannot load the tokenizer of {src.raw!r}: {first_line(e)}") from e
