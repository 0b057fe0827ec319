"""Where and in what precision a reranker runs: device and dtype resolution (``auto`` picks by hardware)."""

from __future__ import annotations

import torch

from crossrank.errors import InputError
from crossrank.hardware import cpu_has_fast_bf16

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def dtype_name(dtype: str | torch.dtype) -> str:
    """The short name (fp32, bf16, fp16, auto, or as given) of a dtype or any of its spellings."""
    if isinstance(dtype, torch.dtype):
        return DTYPE_NAMES.get(dtype, str(dtype))
    return _DTYPE_ALIASES.get(str(dtype), str(dtype))


def resolve_device(device: str = "auto") -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {device!r}: use auto, cpu or cuda") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """``auto``: fp16 on CUDA, bf16 on CPUs with native bf16 (AMX / AVX512-BF16), fp32 otherwise."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise InputError(f"unsupported dtype {dtype}: use fp32, bf16 or fp16")
        return dtype
    key = dtype_name(dtype)
    if key == "auto":
        device = device or resolve_device("auto")
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if key not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use auto, fp32, bf16 or fp16")
    return DTYPES[key]
