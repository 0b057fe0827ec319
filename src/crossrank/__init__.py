"""crossrank: retrieve-then-rerank (BM25 + dense hybrid retrieval, cross-encoder reranking, serving, evaluation).

Importing ``crossrank`` is cheap; heavy pieces (torch, transformers) load on first use. Lazily exposed:
``crossrank.load_reranker``.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it; resolved on first attribute access (PEP 562)
_LAZY = {
    "load_reranker": "crossrank.rerank",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crossrank' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
