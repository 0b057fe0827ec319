"""Server settings: limits, batching, auth. Plain data; the app and the batcher read it."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from crossrank.errors import InputError


@dataclass(slots=True)
class ServeConfig:
    """Everything the HTTP service can be told.

    Limits
      ``max_documents``: documents (texts) per rerank request; more is answered 413 (400 in the Cohere dialect).
      ``max_body_bytes``: request bodies larger than this are answered 413 before any parsing.
      ``max_queue_pairs`` / ``max_queue_requests``: the batcher's queue bound; a request that does not fit is
      answered 429 (``Retry-After`` set). A single request larger than ``max_queue_pairs`` is still admitted
      when the queue is empty, so it can never be starved.
    Batching
      ``batching``: True packs (query, document) pairs from all waiting requests into shared forward passes
      (TEI-style continuous batching); False runs each request alone, in arrival order (for comparison).
      ``batch_tokens``: padded-token budget per forward pass (``run`` gives the engine the same number).
      ``step_passes``: forward passes' worth of pairs (by estimated tokens) the worker hands the engine per step;
      the engine sorts them by length and packs the passes. ``max_batch_pairs``: hard cap on pairs per step.
      ``batch_wait_ms``: how long the worker lingers for more requests before a pass (0: never waits; requests
      that arrive while a pass runs are packed into the next one anyway).
    Deadlines
      ``default_deadline_ms``: a request's time budget when it names none (``X-Crossrank-Deadline-Ms`` header
      or ``deadline_ms`` body field). A request still queued at its deadline is dropped before inference and
      answered 504.
    Long documents
      ``long_documents``: None (whatever the engine was loaded with), "truncate" (cut to the model's maximum
      length; counted in ``X-Crossrank-Truncated`` and the ``crossrank_truncated_pairs_total`` metric) or "chunk"
      (score windows that each carry the query, keep the maximum). Requests may ask for either per call. ``auto_truncate``: what TEI's ``truncate`` means when the request leaves it out.
    Auth
      ``api_key``: when set, every route except ``/health``, ``/``, ``/docs`` and ``/openapi.json`` needs
      ``Authorization: Bearer <key>``.
    """

    model_name: str = "crossrank"
    max_documents: int = 1000
    max_body_bytes: int = 8 * 1024 * 1024
    max_query_chars: int = 10_000
    max_queue_pairs: int = 20000
    max_queue_requests: int = 512
    batching: bool = True
    batch_tokens: int = 16384
    max_batch_pairs: int = 256
    step_passes: int = 4
    batch_wait_ms: float = 0.0
    default_deadline_ms: float = 30_000.0
    long_documents: str | None = None
    auto_truncate: bool = True
    api_key: str | None = None
    max_search_k: int = 1000

    def __post_init__(self) -> None:
        positive = ("max_documents", "max_body_bytes", "max_query_chars", "max_queue_pairs", "max_queue_requests",
                    "batch_tokens", "max_batch_pairs", "step_passes", "max_search_k")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"serve option {name} must be a positive integer, got {value!r}")
        if self.batch_wait_ms < 0:
            raise InputError(f"serve option batch_wait_ms must be >= 0, got {self.batch_wait_ms!r}")
        if self.default_deadline_ms <= 0:
            raise InputError(f"serve option default_deadline_ms must be > 0, got {self.default_deadline_ms!r}")
        if self.long_documents not in (None, "truncate", "chunk"):
            raise InputError(f"long_documents must be 'truncate' or 'chunk', got {self.long_documents!r}")
        if self.api_key is not None and not self.api_key.strip():
            self.api_key = None

    @classmethod
    def from_env(cls, **overrides: Any) -> "ServeConfig":
        """Defaults, then ``CROSSRANK_API_KEY`` from the environment, then ``overrides`` (None means unset)."""
        values: dict[str, Any] = {}
        if os.environ.get("CROSSRANK_API_KEY"):
            values["api_key"] = os.environ["CROSSRANK_API_KEY"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """Settings safe to show on ``/info`` (no key)."""
        out = asdict(self)
        out["api_key"] = bool(self.api_key)
        return out
