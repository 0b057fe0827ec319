"""What /proc/cpuinfo says about this CPU (Linux; elsewhere nothing): one reader for the engine's and the
trainer's bf16 decisions, the bulk encoder's, and the machine line of evaluation reports."""

from __future__ import annotations

import platform


def cpuinfo_field(key: str) -> str | None:
    """The value of the first ``key`` line of /proc/cpuinfo, or None where there is none or it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``avx2``, ``amx_bf16``, ...); empty where unknown."""
    return set((cpuinfo_field("flags") or "").split())


def cpu_model() -> str | None:
    """The CPU's marketing name (``platform.processor()`` only says "x86_64" on Linux)."""
    return cpuinfo_field("model name") or platform.processor() or None


def cpu_has_fast_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AMX or AVX512-BF16); elsewhere bf16 is emulated and slow."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})
