"""The rerank service on Ray Serve: ``crossrank serve --ray --replicas N``.

Each replica is a Ray actor that builds crossrank's own FastAPI app (``server.build_app``, from the same settings
as the plain server) and serves it through ``serve.ingress``, so the routes, dialects, error shapes, gate (Host,
API key, body limit), batching and ``/metrics`` are the same code. What differs:

- every replica is its own process with its own model, batcher (requests are batched per replica, never across),
  score cache and Prometheus registry; a request (a scrape of ``/metrics`` or ``/health`` too) lands on one
  replica, which labels its scrape with ``crossrank_replica_info{replica}``;
- Ray's HTTP proxy owns the connections, so uvicorn's connection settings (header / body timeouts, connection
  limit) do not apply; the proxy's keep-alive takes the server's ``keep_alive_s``;
- each replica reserves ``cpus / replicas`` of Ray's CPUs and runs that many intra-op threads (at least one), so
  replicas on one machine do not oversubscribe its cores.

Ray is imported lazily: ``crossrank serve`` without ``--ray`` never loads it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from crossrank.errors import CrossrankError
from crossrank.serve.config import ServeConfig, config_from_settings

log = logging.getLogger("crossrank.serve")

APP_NAME = "crossrank"
# Ray's shared-memory object store carries only request and response bodies here (no tensors), so a small one
# does; Ray's default (30% of RAM) would take memory the models need.
OBJECT_STORE_BYTES = 200 * 1024 * 1024
# Besides the rerank requests the batcher admits, room for /health, /metrics and /info while it is full: Ray
# queues requests above a replica's limit in its proxy, where crossrank's admission control cannot see them.
CONTROL_REQUESTS = 16


class RayUnavailable(CrossrankError):
    """Ray Serve is not installed, or Ray cannot start or connect."""


def import_ray() -> tuple[Any, Any]:
    """``(ray, ray.serve)``, or a :class:`RayUnavailable` saying how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise RayUnavailable(f"--ray needs Ray Serve ({exc}): pip install 'crossrank[ray]'") from None
    return ray, serve


@dataclass(frozen=True)
class ReplicaShare:
    """What one replica gets of ``cpus``: the Ray CPU reservation (may be fractional, so N replicas always fit on
    the machine) and the intra-op threads it runs (whole, at least one)."""

    num_cpus: float
    threads: int


def replica_share(cpus: float, replicas: int, node_cpus: float | None = None) -> ReplicaShare:
    """``cpus`` shared out between ``replicas``, no replica asking for more than the largest node has
    (``node_cpus``; a reservation no node can meet would never be scheduled)."""
    per = cpus / replicas
    if node_cpus:
        per = min(per, node_cpus)
    return ReplicaShare(num_cpus=per, threads=max(1, math.floor(per)))


class CrossrankReplica:
    """One replica: holds ``build_app``'s arguments, builds the app when Ray Serve asks for it (in the replica's
    process, after ``__init__``), and reports its batcher's health to Ray's health check. Not decorated here, so
    importing this module needs no Ray; :func:`application` wraps it."""

    def __init__(self, model: str, build_options: dict[str, Any]) -> None:
        self._model = model
        self._build_options = build_options
        self._app: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        from crossrank.serve.server import build_app, freeze_startup_heap

        self._app = build_app(self._model, **self._build_options)
        freeze_startup_heap()
        _label_replica(self._app)
        return self._app

    def check_health(self) -> None:
        """Ray restarts a replica whose health check raises: do so when its inference worker has died."""
        if self._app is not None and not self._app.state.crossrank.batcher.alive:
            raise RuntimeError("the inference worker is not running")


def _label_replica(app: Any) -> None:
    """``crossrank_replica_info{replica=...}`` in the replica's registry, so a scrape says which replica it saw."""
    from prometheus_client import Info
    from ray import serve

    replica = serve.get_replica_context().replica_id.unique_id
    Info("crossrank_replica", "The Ray Serve replica that answered this scrape (each keeps its own metrics)",
         registry=app.state.crossrank.metrics.registry).info({"replica": replica})


def application(
    model: str,
    config: ServeConfig,
    *,
    cpus: float,
    node_cpus: float | None = None,
    host: str | None = None,
    index: str | os.PathLike | None = None,
    retriever: str = "hybrid",
    reranker_options: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> Any:
    """The Ray Serve application: ``config.replicas`` copies of the app ``build_app(model, ...)`` returns.

    ``settings``: the server's settings by name (``config.SETTINGS``), passed to every replica's ``build_app``
    as given, so every setting (a shared cache's, when there is one) applies to all replicas alike; ``config``
    is what they describe (``config_from_settings``). ``cpus``: Ray's CPUs to share out between the replicas
    (``node_cpus``: the largest node's, a cap per replica)."""
    from crossrank.serve.server import is_remote

    _, serve = import_ray()
    share = replica_share(cpus, config.replicas, node_cpus)
    options = dict(reranker_options or {})
    if not is_remote(model):
        options.setdefault("num_threads", share.threads)
    build_options = {"index": index, "retriever": retriever, "host": host,
                     "reranker_options": options, **(settings or {})}
    deployment = serve.deployment(
        serve.ingress()(CrossrankReplica),
        name="crossrank",
        num_replicas=config.replicas,
        ray_actor_options={"num_cpus": share.num_cpus},
        max_ongoing_requests=config.max_queue_requests + CONTROL_REQUESTS,
        # no line per request, as the plain server (uvicorn's access_log=False); /metrics counts requests
        logging_config={"enable_access_log": False},
    )
    return deployment.bind(model, build_options)


@dataclass(frozen=True)
class RayCluster:
    """The Ray this process uses: whether it started it (``local``), its CPUs, and its largest node's."""

    local: bool
    cpus: float
    node_cpus: float


def start_ray(*, num_cpus: int | None = None, object_store_bytes: int = OBJECT_STORE_BYTES) -> RayCluster:
    """The Ray this process already has, else the cluster ``RAY_ADDRESS`` names, else a local Ray started on
    ``num_cpus`` (default: this process's cores) with no dashboard."""
    ray, _ = import_ray()
    # an offline server should not try to send Ray's usage statistics; an explicit setting wins
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # "local": this process starts the Ray it uses, and so may shut it down; not one it joins or already had
    local = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if local:
            options.update(num_cpus=num_cpus or len(os.sched_getaffinity(0)), object_store_memory=object_store_bytes)
        try:
            ray.init(**options)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError... with useful text
            raise RayUnavailable(f"cannot start Ray: {exc}") from None
    nodes = [node.get("Resources", {}).get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    return RayCluster(local, float(ray.cluster_resources().get("CPU", 1.0)), float(max(nodes, default=0.0)) or 1.0)


def deploy(app: Any, *, host: str, port: int, keep_alive_s: float) -> None:
    """Start Serve's HTTP proxy on ``host:port`` and run ``app`` at ``/``; returns once every replica is up."""
    _, serve = import_ray()
    serve.start(http_options={"host": host, "port": port, "keep_alive_timeout_s": max(1, round(keep_alive_s))})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)


def stop(local: bool) -> None:
    """Take the app down: all of Serve and Ray when this process started them, only the app on a shared
    cluster."""
    ray, serve = import_ray()
    if not ray.is_initialized():
        return
    if local:
        serve.shutdown()
        ray.shutdown()
    else:
        serve.delete(APP_NAME)


def run_ray(
    model: str = "default",
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    index: str | os.PathLike | None = None,
    retriever: str = "hybrid",
    reranker_options: dict[str, Any] | None = None,
    config: ServeConfig | None = None,
    **settings: Any,
) -> None:
    """``server.run`` on Ray Serve: serve until SIGINT or SIGTERM, then shut down what was started. ``config``:
    what ``settings`` describe, where the caller has built it (None: built here); each replica builds its own
    from ``settings``, in its own process."""
    from crossrank.serve.server import warn_exposed

    if config is None:
        config = config_from_settings(settings)  # a bad setting or key file fails before Ray starts
    import_ray()
    warn_exposed(host, config)
    cluster = start_ray()
    try:
        app = application(model, config, cpus=cluster.cpus, node_cpus=cluster.node_cpus, host=host,
                          index=index, retriever=retriever, reranker_options=reranker_options,
                          settings=settings)
        deploy(app, host=host, port=port, keep_alive_s=config.keep_alive_s)
        log.info("crossrank: serving %s on http://%s:%d with Ray Serve, %d replica(s) sharing %g CPUs",
                 model, host, port, config.replicas, cluster.cpus)
        _wait_for_signal()
    finally:
        log.info("crossrank: shutting Ray Serve down")
        stop(cluster.local)


def _wait_for_signal() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM (a container's stop), leaving the previous handlers in place after."""
    done = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
