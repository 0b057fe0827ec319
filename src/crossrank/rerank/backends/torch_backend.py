"""PyTorch backends: the model as loaded (any device and dtype), and dynamic int8 quantisation on CPU."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import torch


class TorchRunner:
    """Runs the module itself: fp32 / bf16 on CPU, fp16 (or any dtype) on CUDA."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = torch.device(device)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None) -> np.ndarray:
        inputs = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask)}
        if token_type_ids is not None:
            inputs["token_type_ids"] = torch.from_numpy(token_type_ids)
        if self.device.type != "cpu":
            inputs = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in inputs.items()}
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        return logits.float().cpu().numpy()

    def info(self) -> dict[str, Any]:
        return {"backend": "torch", "attention": getattr(self.model.config, "_attn_implementation", None)}


def quantize_linear_int8(model: Any) -> Any:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantised to int8 (weights per tensor, activations
    quantised per batch at run time). The original module is left untouched (the engine still shares it)."""
    from torch.ao.quantization import quantize_dynamic

    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine not in ("x86", "fbgemm") and "x86" in engines:
        torch.backends.quantized.engine = "x86"
    clone = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        return quantize_dynamic(clone, {torch.nn.Linear}, dtype=torch.qint8)


class TorchInt8Runner(TorchRunner):
    def __init__(self, model: Any) -> None:
        super().__init__(quantize_linear_int8(model), torch.device("cpu"))

    def info(self) -> dict[str, Any]:
        return {"backend": "torch-int8", "quantized_engine": torch.backends.quantized.engine}
