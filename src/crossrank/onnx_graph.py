"""ONNX Runtime graphs of Hugging Face encoders (fp32 with the transformer optimiser, and dynamic int8), with an
on-disk graph cache. A neutral module, since retrieve and rerank never import each other: the rerank engine runs
``output="logits"`` graphs of sequence-classification models, the dense retriever's query encoder runs
``output="last_hidden_state"`` graphs of its bi-encoder's transformer (pooled in numpy).

Build, once per (weights, recipe, library versions):

1. ``torch.onnx.export`` (TorchScript exporter, opset 17) of the loaded module with eager attention (the pattern
   ORT's fusions recognise), dynamic batch and sequence axes; the weights come from the module in memory;
2. ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")``: fused Attention,
   EmbedLayerNormalization, SkipLayerNormalization, BiasGelu (falls back to the plain export if it fails);
3. for int8: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, per channel, uint8 activations);
4. a probe batch (padding included, another shape than the export's) is run through the new graph and torch fp32;
   an fp32 graph that differs by more than 1e-3 relative is refused (the engine then falls back to torch).

The result lands in ``<cache>/onnx/<model_type>-<variant>-<sha>/`` (``model.onnx`` + ``meta.json``): built in a
temporary sibling directory and renamed into place, so readers see a complete entry or none; a per-entry file lock
makes concurrent builders wait for the first instead of building twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np

from crossrank.files import fsync_tree, remove_stale_temp_dirs

log = logging.getLogger(__name__)

RECIPE = 1  # bump when export / optimise / quantise steps change: old entries are then simply not used
OPSET = 17
_LARGE = 1_500_000_000  # bytes of weights above which graphs are saved with external data (protobuf's 2 GB cap)

_sessions: dict[tuple[str, int], Any] = {}
_sessions_lock = threading.Lock()
_key_memo: dict[tuple[int, int], str] = {}


def onnx_available() -> bool:
    """True when onnxruntime and onnx are importable."""
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def cache_root() -> Path:
    env = os.environ.get("CROSSRANK_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "crossrank"


def _version(pkg: str) -> str:
    try:
        return _metadata.version(pkg)
    except _metadata.PackageNotFoundError:
        return "none"


def weights_sha256(model: Any) -> str:
    """sha256 of the model's config (minus paths and runtime settings) and every tensor (name, dtype, shape, bytes).

    Keyed by content, not by where the weights came from, so a checkpoint directory, the bundled delta and a
    module being trained all map to the graph they would export, and a changed weight can never hit a stale graph.
    """
    import torch

    cfg = model.config.to_dict()
    for k in list(cfg):
        if k.startswith("_") or k in ("transformers_version", "torch_dtype", "dtype", "name_or_path"):
            cfg.pop(k)
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


OUTPUTS = ("logits", "last_hidden_state")


def _check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"unknown graph output {output!r}; expected one of {OUTPUTS}")
    return output


def _entry_key(model: Any, input_names: list[str], quantize: bool, output: str = "logits") -> tuple[str, str]:
    import torch

    wkey = weights_sha256(model)
    recipe = {
        "recipe": RECIPE, "opset": OPSET, "inputs": list(input_names), "int8": bool(quantize),
        "torch": torch.__version__, "onnx": _version("onnx"), "onnxruntime": _version("onnxruntime"),
        "transformers": _version("transformers"), "weights": wkey,
    }
    if _check_output(output) != "logits":  # only then: keys of existing logits graphs stay valid
        recipe["output"] = output
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    mtype = str(getattr(model.config, "model_type", "model") or "model").replace("/", "_")
    return f"{mtype}-{'int8' if quantize else 'fp32'}-{key[:24]}", wkey


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except (ImportError, OSError):  # pragma: no cover - non-POSIX: build without the lock
            pass
        yield


def _complete(entry: Path) -> bool:
    return (entry / "meta.json").is_file() and (entry / "model.onnx").is_file()


def _probe_inputs(input_names: list[str], vocab: int, seed: int, batch: int, width: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lo, hi = min(1000, max(1, vocab // 4)), max(2, vocab - 1)
    ids = rng.integers(lo, hi, size=(batch, width), dtype=np.int64)
    mask = np.ones((batch, width), dtype=np.int64)
    types = np.zeros((batch, width), dtype=np.int64)
    for row in range(batch):
        n = max(3, width - row * max(1, width // (batch + 1)))  # ragged: later rows padded
        mask[row, n:] = 0
        ids[row, n:] = 0
        types[row, n // 2 : n] = 1
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {k: out[k] for k in input_names}


def _torch_output(model: Any, feeds: dict[str, np.ndarray], output: str = "logits") -> np.ndarray:
    import torch

    with torch.inference_mode():
        return getattr(model(**{k: torch.from_numpy(v) for k, v in feeds.items()}), output).float().numpy()


def _export(model: Any, path: Path, input_names: list[str], output: str = "logits") -> None:
    import torch

    feeds = _probe_inputs(input_names, int(getattr(model.config, "vocab_size", 30000)), 0, 2, 16)
    args = tuple(torch.from_numpy(feeds[k]) for k in input_names)
    dyn = {k: {0: "batch", 1: "sequence"} for k in input_names}
    dyn[output] = {0: "batch"} if output == "logits" else {0: "batch", 1: "sequence"}

    class _Wrap(torch.nn.Module):  # positional inputs in our order, one output
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *xs):
            return getattr(self.m(**dict(zip(input_names, xs, strict=True))), output)

    prev = getattr(model.config, "_attn_implementation", None)
    changed = False
    if prev not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
            changed = True
        except Exception:  # pragma: no cover - a model without eager attention: export what it has
            pass
    try:
        import warnings

        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            kwargs: dict[str, Any] = dict(
                input_names=input_names, output_names=[output], dynamic_axes=dyn, opset_version=OPSET,
                do_constant_folding=True,
            )
            try:
                torch.onnx.export(_Wrap(model).eval(), args, str(path), dynamo=False, **kwargs)
            except TypeError:  # pragma: no cover - a torch without the dynamo switch
                torch.onnx.export(_Wrap(model).eval(), args, str(path), **kwargs)
    finally:
        if changed:
            model.set_attn_implementation(prev)


def _optimize(src: Path, dst: Path, config: Any) -> dict[str, int]:
    from onnxruntime.transformers.optimizer import optimize_model

    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    opt = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
    stats = {k: int(v) for k, v in (opt.get_fused_operator_statistics() or {}).items() if v}
    opt.save_model_to_file(str(dst), use_external_data_format=src.stat().st_size > _LARGE)
    return stats


def _quantize(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
        use_external_data_format=src.stat().st_size > _LARGE,
        # the fused contrib ops (Attention, SkipLayerNormalization) defeat ONNX shape inference: their outputs are fp32
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _session(path: Path, num_threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(num_threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def build_graph(model: Any, input_names: list[str], quantize: bool, root: Path | None = None,
                output: str = "logits") -> Path:
    """The cache entry directory for ``model`` (built now if absent) whose graph returns ``output`` (``logits``
    or ``last_hidden_state``). Raises RuntimeError if it cannot be built."""
    import torch

    root = Path(root) if root is not None else cache_root()
    base = root / "onnx"
    name, wkey = _entry_key(model, input_names, quantize, output)
    entry = base / name
    if _complete(entry):
        return entry
    base.mkdir(parents=True, exist_ok=True)
    with _file_lock(base / f".{name}.lock"):
        if _complete(entry):  # another process built it while we waited
            return entry
        t0 = time.perf_counter()
        src_model = model
        if next(model.parameters()).dtype != torch.float32 or next(model.parameters()).device.type != "cpu":
            import copy

            src_model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
        src_model.eval()
        # the cache folder is ours alone: any entry's temporary folder a crashed build left goes (once old)
        remove_stale_temp_dirs(base)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=base))
        try:
            meta: dict[str, Any] = {"weights_sha256": wkey, "int8": bool(quantize), "recipe": RECIPE, "opset": OPSET,
                                    "inputs": list(input_names), "onnxruntime": _version("onnxruntime"),
                                    "onnx": _version("onnx"), "torch": torch.__version__, "output": output}
            if quantize:
                fp32_entry = build_graph(src_model, input_names, quantize=False, root=root, output=output)
                _quantize(fp32_entry / "model.onnx", tmp / "model.onnx")
                meta["from"] = fp32_entry.name
                fp32_meta = json.loads((fp32_entry / "meta.json").read_text(encoding="utf-8"))
                meta["fused"] = fp32_meta.get("fused", {})
            else:
                _export(src_model, tmp / "exported.onnx", input_names, output)
                try:
                    meta["fused"] = _optimize(tmp / "exported.onnx", tmp / "model.onnx", src_model.config)
                except Exception as e:  # an architecture the optimiser does not know: the plain graph still works
                    log.warning("ONNX transformer optimiser failed (%s); using the unoptimised graph", e)
                    meta["fused"] = {}
                    os.replace(tmp / "exported.onnx", tmp / "model.onnx")
                for f in tmp.glob("exported.onnx*"):
                    f.unlink()
            # Check the new graph on a probe batch of another shape than the export's, with padding.
            feeds = _probe_inputs(input_names, int(getattr(src_model.config, "vocab_size", 30000)), 1, 3, 23)
            ref = _torch_output(src_model, feeds, output)
            probe = _session(tmp / "model.onnx", 1)
            got = probe.run([output], _graph_feeds(probe, feeds))[0]
            err = float(np.max(np.abs(got - ref)))
            scale = float(np.max(np.abs(ref))) or 1.0
            meta["probe_max_abs_err"] = err
            if not np.all(np.isfinite(got)) or (not quantize and err > 1e-3 * max(1.0, scale)):
                raise RuntimeError(f"the exported graph disagrees with torch on a probe batch (max |diff| {err:.3g})")
            meta["build_s"] = round(time.perf_counter() - t0, 2)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            os.chmod(tmp, 0o755)
            fsync_tree(tmp)
            try:  # write-once: entries are named by content, so the first complete one stays (no swap)
                os.rename(tmp, entry)
            except OSError:
                if not _complete(entry):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("built ONNX graph %s in %.1f s", entry, time.perf_counter() - t0)
    return entry


def _graph_feeds(session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` less the inputs the exported graph does not have: the exporter drops an input the model never
    reads (token_type_ids of DeBERTa-v3-style models with type_vocab_size 0), and ONNX Runtime refuses unknown
    names."""
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in names}


class OnnxRunner:
    """Runs a cached ONNX graph of the model with ONNX Runtime on CPU (sessions shared within the process)."""

    def __init__(self, model: Any, *, input_names: list[str], quantize: bool, num_threads: int | None,
                 name: str = "", root: Path | None = None, output: str = "logits") -> None:
        import torch

        self.input_names = list(input_names)
        self.quantize = bool(quantize)
        self.output = _check_output(output)
        self.threads = int(num_threads or torch.get_num_threads())
        t0 = time.perf_counter()
        self.entry = build_graph(model, self.input_names, self.quantize, root, output=self.output)
        self.meta = json.loads((self.entry / "meta.json").read_text(encoding="utf-8"))
        key = (str(self.entry), self.threads)
        with _sessions_lock:
            sess = _sessions.get(key)
            if sess is None:
                sess = _sessions[key] = _session(self.entry / "model.onnx", self.threads)
        self.session = sess
        self._graph_inputs = {i.name for i in sess.get_inputs()}
        self.setup_s = time.perf_counter() - t0

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self._graph_inputs:
            feeds["token_type_ids"] = token_type_ids
        return self.session.run([self.output], feeds)[0].astype(np.float32, copy=False)

    def info(self) -> dict[str, Any]:
        return {
            "backend": "onnx-int8" if self.quantize else "onnx",
            "onnx_graph": str(self.entry),
            "onnx_fused": self.meta.get("fused", {}),
            "onnxruntime": self.meta.get("onnxruntime"),
        }
