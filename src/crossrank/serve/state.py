"""What the routes, the gate and the lifespan of one app share: :class:`State`, kept as ``app.state.crossrank``
and reached from a request with :func:`state_of`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

from crossrank.serve.batcher import DynamicBatcher
from crossrank.serve.config import ServeConfig
from crossrank.serve.engines import Engines
from crossrank.serve.metrics import Metrics

if TYPE_CHECKING:
    from crossrank.serve.search import Search


class State:
    """One app's settings, reranker side, metrics, batcher and (when it serves ``/search``) its pipelines."""

    def __init__(self, config: ServeConfig, engines: Engines, metrics: Metrics, batcher: DynamicBatcher) -> None:
        self.config = config
        self.engines = engines
        self.metrics = metrics
        self.batcher = batcher
        self.search: Search | None = None
        self.route_paths: frozenset[str] = frozenset()
        self.model_name = str(engines.info.get("model") or engines.base.name)


def state_of(request: Request) -> State:
    """The state of the app serving ``request``."""
    return request.app.state.crossrank


def version() -> str:
    """crossrank's version (``/info``, ``/metrics``, the OpenAPI document); 0.0.0 when it is not installed."""
    try:
        from importlib.metadata import version

        return version("crossrank")
    except Exception:
        return "0.0.0"
