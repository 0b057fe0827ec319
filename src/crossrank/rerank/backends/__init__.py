"""Inference backends for the cross-encoder engine: what runs a padded batch of token ids through the model.

A backend is a callable ``runner(input_ids, attention_mask, token_type_ids) -> logits`` on int64 numpy arrays of
shape ``[batch, width]`` (``token_type_ids`` may be ``None``) returning float32 ``[batch, num_labels]``. The engine
does everything else (tokenising, pair templates, length-sorted packing, activation), so every backend sees exactly
the same inputs and the scores differ only by the arithmetic.

=============  ==========================================================================================
``torch``      the model as loaded, in the engine's dtype (fp32 on CPU, fp16 on CUDA, bf16 where asked)
``torch-int8`` ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` (int8 weights, fbgemm/x86)
``onnx``       ONNX Runtime, fp32, graph exported once and run through ORT's transformer optimiser (fused
               attention, SkipLayerNorm, bias-GELU, embedding LayerNorm); needs ``onnxruntime`` + ``onnx``
``onnx-int8``  the optimised graph with ORT dynamic int8 quantisation (per-channel int8 weights, per-batch u8
               activations, MLAS u8s8 kernels); fastest, but see below
``openvino``   the same optimised fp32 graph compiled by OpenVINO's CPU plugin: bf16 arithmetic on CPUs with
               native bf16 (AMX / AVX512-BF16) unless ``dtype="fp32"``, fp32 elsewhere; needs ``openvino``
``auto``       CUDA: ``torch`` (fp16). CPU with native bf16 and dtype auto: ``openvino`` (bf16) when it is
               importable, else ``torch`` in bf16. Other CPUs: ``onnx`` when onnxruntime is importable, else
               ``torch``
=============  ==========================================================================================

On native-bf16 CPUs ``openvino`` was measured against ``torch`` bf16 on the same candidates, in the same process
(``benchmarks/bench_rerank.py``; results in ``benchmarks/results/bench_openvino_amx.md``): faster, and closer to
the fp32 scores.

``auto`` off native bf16 comes from measurements on a 2-core AMD EPYC (Zen 3, AVX2 only) with the bundled
MiniLM-L6 on SciFact (``benchmarks/README.md``): ``onnx`` is faster than ``torch`` fp32 and sentence-transformers
with identical rankings, and faster than ``openvino`` fp32 for both the default and the 2-layer ``fast`` student
(``benchmarks/results/bench_openvino_avx2.md``, ``bench_student_avx2.md``); ``onnx-int8`` and ``torch-int8`` are
faster still, but both move nDCG@10 and change the top-10 order of most queries, so they are opt-in only (a
bundle may choose one for itself on held-out queries: ``cpu_backend``).

ONNX graphs are cached on disk (``$CROSSRANK_CACHE_DIR``, else ``$XDG_CACHE_HOME/crossrank``, else
``~/.cache/crossrank``) under ``onnx/``, keyed by a sha256 of the model's config and weights plus the build recipe
and library versions; each is built once (under a file lock) and written atomically. Nothing is ever unpickled:
the exported graph is protobuf and the weights come from the already loaded module.
"""

from __future__ import annotations

from typing import Any, Callable

from crossrank.onnx_graph import onnx_available
from crossrank.rerank.backends.openvino_backend import openvino_available

BACKENDS = ("auto", "torch", "torch-int8", "onnx", "onnx-int8", "openvino")
ONNX_BACKENDS = ("onnx", "onnx-int8")

Runner = Callable[..., Any]
# What ``auto`` picks on a CPU without native bf16 (measured: see benchmarks/README.md).
# int8 (either flavour) loses agreement on the bundled MiniLM-L6 cross-encoder (SciFact nDCG@10 moves by 0.02-0.09,
# no query keeps its top-10 order), so ``auto`` stays fp32; int8 is there for whoever opts in.
CPU_AUTO = "onnx"
CPU_AUTO_FP32 = "onnx"


def available_backends(device_type: str = "cpu") -> list[str]:
    """The backends that can run here, ``auto`` excluded."""
    if device_type != "cpu":
        return ["torch"]
    out = ["torch", "torch-int8"]
    if onnx_available():
        out += list(ONNX_BACKENDS)
    if openvino_available():
        out.append("openvino")
    return out


def resolve_backend(backend: str, device_type: str, *, dtype_requested: str = "auto", fast_bf16: bool = False) -> str:
    """Turn ``backend`` (possibly ``auto``) into a concrete backend, or raise ValueError saying why not.

    ``auto``: CUDA -> ``torch``; an explicit bf16/fp16 -> ``torch`` (only it runs them); a CPU with native bf16 and
    dtype ``auto`` -> ``openvino`` (bf16) when installed, else ``torch`` (bf16); an explicit ``dtype="fp32"`` -> the
    fastest fp32 backend
    (``onnx`` when onnxruntime is installed, else ``torch``); otherwise the fastest backend that keeps agreement
    (:data:`CPU_AUTO`).
    """
    backend = str(backend or "auto").lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device_type != "cpu":
            return "torch"
        if dtype_requested not in ("auto", "fp32", "float32"):
            return "torch"
        if fast_bf16 and dtype_requested == "auto":
            return "openvino" if openvino_available() else "torch"
        choice = CPU_AUTO_FP32 if dtype_requested in ("fp32", "float32") else CPU_AUTO
        if choice in ONNX_BACKENDS and not onnx_available():
            choice = "torch"
        return choice
    if backend != "torch" and device_type != "cpu":
        raise ValueError(f"backend {backend!r} runs on CPU only; use backend='torch' on {device_type}")
    if backend == "openvino" and not openvino_available():
        raise ValueError(f"backend {backend!r} needs openvino, onnxruntime and onnx: pip install openvino")
    if backend in ONNX_BACKENDS and not onnx_available():
        raise ValueError(
            f"backend {backend!r} needs onnxruntime and onnx: pip install onnxruntime onnx, "
            "or use backend='torch-int8' / 'torch'"
        )
    return backend


def make_runner(backend: str, model: Any, *, device: Any, input_names: list[str], num_threads: int | None,
                name: str = "", bf16: bool = False) -> tuple[Runner, dict[str, Any]]:
    """``(runner, info)`` for a concrete backend; ``info`` describes it (merged into the engine's ``info()``).
    ``bf16``: the ``openvino`` backend computes in bf16 (the others take their dtype from ``model``)."""
    if backend == "torch":
        from crossrank.rerank.backends.torch_backend import TorchRunner

        r = TorchRunner(model, device)
        return r, r.info()
    if backend == "torch-int8":
        from crossrank.rerank.backends.torch_backend import TorchInt8Runner

        r = TorchInt8Runner(model)
        return r, r.info()
    if backend in ONNX_BACKENDS:
        from crossrank.onnx_graph import OnnxRunner

        r = OnnxRunner(model, input_names=input_names, quantize=backend == "onnx-int8", num_threads=num_threads,
                       name=name)
        return r, r.info()
    if backend == "openvino":
        from crossrank.rerank.backends.openvino_backend import OpenVinoRunner

        r = OpenVinoRunner(model, input_names=input_names, num_threads=num_threads,
                           precision="bf16" if bf16 else "f32")
        return r, r.info()
    raise ValueError(f"not a concrete backend: {backend!r}")
