"""Prometheus metrics, one registry per app (so several apps in one process, as in tests, do not collide).

Besides crossrank's own series the registry holds what prometheus-client's default registry would (``process_*``,
``python_info``, ``python_gc_*``) and ``crossrank_build_info{version, model}``; a scrape is answered in the
Prometheus text format, or in OpenMetrics when its ``Accept`` header asks for ``application/openmetrics-text``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PAIR_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """Request counts/latency by route and status, and the batcher's queue/inference/batch-shape numbers."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # the process and runtime series a default registry carries (CPU, memory, open fds, start time, GC)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build = Info("crossrank_build", "The crossrank version and the model this server answers with",
                          registry=r)
        self.requests = Counter("crossrank_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.duration = Histogram("crossrank_request_duration_seconds", "HTTP request duration by route",
                                  ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("crossrank_queue_seconds", "Time a request waited before its first forward pass",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_time = Histogram("crossrank_inference_seconds", "Duration of one engine call (batching step)",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_pairs = Histogram("crossrank_batch_pairs", "Pairs per engine call (one batching step: one or more forward passes)", buckets=_PAIR_BUCKETS,
                                     registry=r)
        self.batch_requests = Histogram("crossrank_batch_requests", "Requests sharing one engine call",
                                        buckets=_PAIR_BUCKETS, registry=r)
        self.batch_tokens = Histogram("crossrank_batch_tokens", "Tokens run per engine call", buckets=_TOKEN_BUCKETS,
                                      registry=r)
        self.queue_depth = Gauge("crossrank_queue_depth_pairs", "Pairs waiting in the batcher queue", registry=r)
        self.queue_requests = Gauge("crossrank_queue_depth_requests", "Requests waiting in the batcher queue",
                                    registry=r)
        self.truncations = Counter("crossrank_truncated_pairs", "Pairs cut to the model's maximum length",
                                   registry=r)
        self.cache_hits = Counter("crossrank_cache_hits", "Pairs answered from the score cache", registry=r)
        self.fallbacks = Counter("crossrank_fallbacks", "Searches answered with first-stage order (rerank skipped)",
                                 registry=r)
        self.dropped = Counter("crossrank_dropped_requests",
                               "Admitted requests whose unscored work was shed, by reason: deadline (expired in "
                               "the queue, answered 504), cancelled (the client went away)",
                               ["reason"], registry=r)
        self.rejected = Counter("crossrank_rejected_requests",
                                "Requests refused at admission (answered 429), by reason: deadline (predicted to "
                                "miss it at the measured throughput), queue_full (queue bounds); *_early: the same, "
                                "refused from the headers before the body was read",
                                ["reason"], registry=r)
        self.throughput = Gauge("crossrank_throughput_tokens_per_second",
                                "The batcher's measured throughput (estimated tokens per second, weighted "
                                "moving average) that admission predicts completion times from", registry=r)
        self.pairs = Counter("crossrank_scored_pairs", "Pairs scored", registry=r)

    def watch_cache(self, stats: Callable[[], Mapping[str, Any] | None]) -> None:
        """Export a shared (Redis) score cache's health, read from ``stats`` (the reranker's ``info()["cache"]``)
        at each scrape: the cache counts its own failures, whichever request or variant met them."""
        self.registry.register(_CacheCollector(stats))

    # BatchObserver
    def on_pass(self, n_pairs: int, n_requests: int, tokens: int, seconds: float) -> None:
        self.batch_pairs.observe(n_pairs)
        self.batch_requests.observe(n_requests)
        self.batch_tokens.observe(tokens)
        self.inference_time.observe(seconds)
        self.pairs.inc(n_pairs)

    def on_queue_time(self, seconds: float) -> None:
        self.queue_time.observe(seconds)

    def on_depth(self, pairs: int, requests: int) -> None:
        self.queue_depth.set(pairs)
        self.queue_requests.set(requests)

    def on_drop(self, reason: str) -> None:
        self.dropped.labels(reason).inc()

    def on_reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def on_rate(self, tokens_per_s: float) -> None:
        self.throughput.set(tokens_per_s)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.duration.labels(route).observe(seconds)

    def set_build(self, version: str, model: str) -> None:
        """Label ``crossrank_build_info`` with the package version and the served model's name."""
        self.build.info({"version": version, "model": model})

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type for a request's ``Accept`` header: OpenMetrics when the header
        names ``application/openmetrics-text``, else the Prometheus text format (as :meth:`render`)."""
        encoder, content_type = choose_encoder(accept or "")
        if content_type.startswith(OPENMETRICS_CONTENT_TYPE.split(";")[0]):
            return encoder(self.registry), content_type
        return self.render(), self.content_type


class _CacheCollector(Collector):
    """``crossrank_cache_redis_errors_total`` (Redis operations that failed: those pairs were scored without the
    cache) and ``crossrank_cache_redis_up`` (0 while the cache is skipped after a failure); nothing for a store
    without them (the in-memory one)."""

    def __init__(self, stats: Callable[[], Mapping[str, Any] | None]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self.stats() or {}
        except Exception:  # a scrape never fails over the cache's decoration
            return
        if "redis_errors" not in stats:
            return
        yield CounterMetricFamily("crossrank_cache_redis_errors",
                                  "Score-cache (Redis) operations that failed; their pairs were scored without it",
                                  value=float(stats["redis_errors"]))
        yield GaugeMetricFamily("crossrank_cache_redis_up",
                                "1 while the Redis score cache is in use, 0 while it is skipped after a failure",
                                value=1.0 if stats.get("redis_available") else 0.0)
