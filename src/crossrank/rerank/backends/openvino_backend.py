"""OpenVINO Runtime on CPU: the engine's cached ONNX graph (``crossrank.onnx_graph``), compiled by OpenVINO's CPU
plugin, in bf16 where the CPU has native bf16 (AMX / AVX512-BF16) and fp32 elsewhere.

The graph is the one the ``onnx`` backend runs (built once per weights, cached on disk, checked against torch),
read with ``openvino.Core.read_model``: OpenVINO's ONNX front end reads ONNX Runtime's fused transformer ops. The
model converter (``openvino.convert_model``) is never called: it sends usage telemetry unless the user opted out,
and the runtime does not.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from typing import Any

import numpy as np

PRECISIONS = ("bf16", "f32")

_compiled: dict[tuple[str, int, str], Any] = {}
_compiled_lock = threading.Lock()


def openvino_available() -> bool:
    """True when OpenVINO and the ONNX graph builder's libraries are importable."""
    from crossrank.onnx_graph import onnx_available

    return importlib.util.find_spec("openvino") is not None and onnx_available()


def _compile(path: str, threads: int, precision: str) -> Any:
    import openvino as ov

    key = (path, threads, precision)
    with _compiled_lock:
        compiled = _compiled.get(key)
        if compiled is None:
            core = ov.Core()
            config = {
                "INFERENCE_PRECISION_HINT": precision,
                "PERFORMANCE_HINT": "LATENCY",  # one stream: the engine sends one batch at a time
                "NUM_STREAMS": "1",
                "INFERENCE_NUM_THREADS": str(threads),
            }
            compiled = _compiled[key] = core.compile_model(core.read_model(path), "CPU", config)
        return compiled


class OpenVinoRunner:
    """Runs the model's cached ONNX graph with OpenVINO's CPU plugin; one inference request per runner (the engine
    calls its runner under its own lock), compiled models shared within the process."""

    def __init__(self, model: Any, *, input_names: list[str], num_threads: int | None, precision: str) -> None:
        import torch

        from crossrank.onnx_graph import build_graph

        if precision not in PRECISIONS:
            raise ValueError(f"unknown OpenVINO precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        t0 = time.perf_counter()
        self.precision = precision
        self.threads = int(num_threads or torch.get_num_threads())
        self.entry = build_graph(model, list(input_names), quantize=False)
        compiled = _compile(str(self.entry / "model.onnx"), self.threads, precision)
        self._inputs = {i.get_any_name() for i in compiled.inputs}
        self._request = compiled.create_infer_request()
        self.setup_s = time.perf_counter() - t0

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = token_type_ids if token_type_ids is not None else np.zeros_like(input_ids)
        self._request.infer(feeds)
        # the request reuses its output buffer on the next call: copy
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32)

    def info(self) -> dict[str, Any]:
        import openvino as ov

        return {"backend": "openvino", "inference_precision": self.precision, "onnx_graph": str(self.entry),
                "openvino": ov.__version__}
