"""Server settings: limits, batching, auth. Plain data; the app and the batcher read it.

:class:`ServeConfig` is the one definition of what the server can be told and its defaults; :data:`SETTINGS` is
the part of it the command lines take (``crossrank serve`` and ``python -m crossrank.serve`` make their options
from it, ``server.run`` takes the same names) with each option's help, and :func:`config_from_settings` turns
those options into a ``ServeConfig``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from crossrank.errors import InputError
from crossrank.rerank.base import LONG_DOCUMENT_MODES


@dataclass(slots=True)
class ServeConfig:
    """Everything the HTTP service can be told.

    Limits
      ``max_documents``: documents (texts) per rerank request; more is answered 413 (400 in the Cohere dialect).
      ``max_body_bytes``: request bodies larger than this are answered 413 before any parsing.
      ``max_queue_pairs`` / ``max_queue_requests``: the batcher's queue bound; a request that does not fit is
      answered 429 (``Retry-After`` set). A single request larger than ``max_queue_pairs`` is still admitted
      when the queue is empty, so it can never be starved.
    Admission (the batcher's rule: ``batcher.DynamicBatcher``)
      A request the measured throughput predicts cannot be scored before its deadline, given the work queued
      ahead of it, is answered 429 at once (``error_type`` "overloaded", ``Retry-After`` from the prediction)
      rather than queued to expire; the queue runs earliest deadline first, a short request allowed ahead of a
      longer one that has the slack. Counted in ``crossrank_rejected_requests_total{reason}``.
      ``tokens_per_s``: a throughput prior (estimated tokens per second, e.g. from a benchmark of this model on
      this machine) so admission predicts from the first request; None (default): everything is admitted until
      the worker has timed a step. Measurements take over either way.
      The same rule screens a rerank request before its body is read (``DynamicBatcher.screen``, from the gate),
      with the deadline its headers give (``X-Crossrank-Deadline-Ms``, else ``default_deadline_ms``: a body's
      ``deadline_ms`` is not known yet, so a client asking for a longer one sends the header too) and its size
      from Content-Length; what cannot fit is answered 429 unread (reasons ``deadline_early``,
      ``queue_full_early``), so under overload no CPU goes into parsing what is refused.
      ``admission_safety``: the share of the measured throughput admission counts on (1.0: exactly as measured).
      Under overload the worker shares the CPU with parsing and refusing requests, so it runs slower than it was
      measured running; the headroom keeps admitted requests inside their deadlines.
      A request's deadline runs from its arrival (before its body is read), as the client's clock does.
      ``inference_nice``: how many nice steps below the event loop's thread the model's threads run (Linux; 0:
      level, the default), so that with every core busy scoring, the loop answers a 429 or ``/health`` sooner;
      it slows the worker under contention, which admission's measured throughput does not expect.
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
      answered 504 (what is left of a partly scored one too); one whose client went away is dropped at once
      (``/search`` included). Counted in ``crossrank_dropped_requests_total{reason}``.
    Long documents
      ``long_documents``: None (whatever the engine was loaded with), "truncate" (cut to the model's maximum
      length; counted in ``X-Crossrank-Truncated`` and the ``crossrank_truncated_pairs_total`` metric), "chunk"
      (score windows that each carry the query, keep the maximum) or "focus" (one window: the first sentence and
      the sentences sharing the most query terms). Requests may ask for any of them per call. ``auto_truncate``: what TEI's ``truncate`` means when the request leaves it out.
    Search (``/search``, served over an index)
      ``search_k``: the first-stage candidates K of a search that names no ``k``. ``search_n``: the results N of
      one that names no ``n``; None (default): 10, or K when K is smaller. A request's own ``k`` is bounded by
      ``max_search_k`` (422 above it); these defaults, the server's own choice, are not.
    Auth
      ``api_key``: when set, every route except ``/health``, ``/``, ``/docs`` and ``/openapi.json`` needs
      ``Authorization: Bearer <key>``. ``from_env`` also takes it from ``CROSSRANK_API_KEY`` or a file.
      ``allowed_hosts``: Host header names accepted besides the loopback names (``LOOPBACK_HOSTS``); any other
      Host is answered 400 (DNS rebinding). ``"*"`` accepts any. ``run`` adds the address it binds.
    Score cache
      ``cache``: None or "memory" (an in-process LRU), "none", or a ``redis://host:6379/0`` URL (``rediss://``,
      ``unix://``; ``?ttl_s=``, ``?timeout_ms=``): one cache that every replica naming it shares, so a (query,
      document) pair is scored once across them; while Redis is down requests are scored without it
      (``crossrank_cache_redis_errors_total``). Checked here, before the model loads; kept out of ``repr`` (a
      URL may hold a password).
    Connections (passed to uvicorn by ``server.uvicorn_options``)
      ``header_timeout_s`` / ``body_timeout_s``: a request's headers, then its body, must arrive within this long,
      or the connection is closed. ``keep_alive_s``: idle time before a kept-alive connection is closed.
      ``max_connections``: open connections; a request beyond them is answered 503. ``max_header_bytes``:
      request line plus headers. Behind Ray Serve (``ray``) its HTTP proxy owns the connections, so these five do
      not apply there; everything above does, per replica.
    Replicas (``serve/ray_deploy.py``)
      ``ray``: serve on Ray Serve instead of one uvicorn process (needs ``pip install crossrank[ray]``).
      ``replicas``: copies of the app behind Ray's proxy, each its own process with its own model, batcher, score
      cache and metrics; more than one needs ``ray`` (plain servers are replicated by running several behind a
      load balancer: ``deploy/``).
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
    search_k: int = 100
    search_n: int | None = None
    allowed_hosts: tuple[str, ...] = ()
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int = 768
    max_header_bytes: int = 16 * 1024
    tokens_per_s: float | None = None
    admission_safety: float = 0.8
    inference_nice: int = 0  # measured: 5 sped up 429s ~15% but let 504s back (overload.md)
    cache: str | None = field(default=None, repr=False)
    ray: bool = False
    replicas: int = 1

    def __post_init__(self) -> None:
        positive = ("max_documents", "max_body_bytes", "max_query_chars", "max_queue_pairs", "max_queue_requests",
                    "batch_tokens", "max_batch_pairs", "step_passes", "max_search_k", "max_connections",
                    "max_header_bytes", "replicas")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"serve option {name} must be a positive integer, got {value!r}")
        self.search_defaults()  # K and N by the pipeline's rule (its messages name k and n, as the options do)
        if self.batch_wait_ms < 0:
            raise InputError(f"serve option batch_wait_ms must be >= 0, got {self.batch_wait_ms!r}")
        rate = self.tokens_per_s
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0):
            raise InputError(f"serve option tokens_per_s must be > 0, got {self.tokens_per_s!r}")
        if not 0 <= self.inference_nice <= 19:
            raise InputError(f"serve option inference_nice must be in 0..19, got {self.inference_nice!r}")
        if not 0 < self.admission_safety <= 1:
            raise InputError(f"serve option admission_safety must be in (0, 1], got {self.admission_safety!r}")
        if self.default_deadline_ms <= 0:
            raise InputError(f"serve option default_deadline_ms must be > 0, got {self.default_deadline_ms!r}")
        if self.long_documents is not None and self.long_documents not in LONG_DOCUMENT_MODES:
            raise InputError(f"long_documents must be one of {', '.join(LONG_DOCUMENT_MODES)}, "
                             f"got {self.long_documents!r}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"serve option {name} must be > 0, got {getattr(self, name)!r}")
        if self.replicas > 1 and not self.ray:
            raise InputError(f"{self.replicas} replicas need --ray (Ray Serve); plain servers are replicated by "
                             "running several behind a load balancer (deploy/k8s)")
        if self.api_key is not None and not self.api_key.strip():
            self.api_key = None
        self.allowed_hosts = parse_hosts(self.allowed_hosts)
        if self.cache is not None:
            from crossrank.rerank import check_cache  # the loader's own rule (no connection, no model)

            self.cache = self.cache.strip() or None
            check_cache(self.cache)

    @classmethod
    def from_env(cls, api_key_file: str | os.PathLike | None = None, **overrides: Any) -> "ServeConfig":
        """Defaults, then ``CROSSRANK_API_KEY``, ``CROSSRANK_ALLOWED_HOSTS`` (comma-separated) and
        ``CROSSRANK_CACHE`` from the environment, then ``overrides`` (None means unset). ``api_key_file``: read the
        key from this file (so it is not in ``ps``); giving it and ``api_key`` both is an error."""
        values: dict[str, Any] = {}
        if os.environ.get("CROSSRANK_API_KEY"):
            values["api_key"] = os.environ["CROSSRANK_API_KEY"]
        if os.environ.get("CROSSRANK_ALLOWED_HOSTS"):
            values["allowed_hosts"] = os.environ["CROSSRANK_ALLOWED_HOSTS"]
        if os.environ.get("CROSSRANK_CACHE"):  # a Redis URL with a password stays out of `ps` this way
            values["cache"] = os.environ["CROSSRANK_CACHE"]
        if api_key_file is not None:
            if overrides.get("api_key") is not None:
                raise InputError("give the API key or an API key file, not both")
            values["api_key"] = read_key_file(api_key_file)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def search_defaults(self) -> tuple[int, int]:
        """``(K, N)`` of a ``/search`` that names neither (``search_n`` None: ``min(DEFAULT_N, K)``), checked by
        the pipeline's own rule (``pipeline.check_k_n``)."""
        from crossrank.pipeline import DEFAULT_N, check_k_n  # the pipeline's N default and rule

        n = min(DEFAULT_N, self.search_k) if self.search_n is None else self.search_n
        check_k_n(self.search_k, n)
        return self.search_k, n

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request with this Host header may be served (one without any may not)."""
        if "*" in self.allowed_hosts:
            return True
        return bool(host) and normalize_host(host) in LOOPBACK_HOSTS + self.allowed_hosts

    def allow_bound(self, host: str) -> None:
        """Also accept the address the server binds (not a wildcard one, which stands for every address)."""
        if host not in WILDCARD_HOSTS:
            self.allowed_hosts = parse_hosts((*self.allowed_hosts, host))


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def normalize_host(name: str) -> str:
    """A Host header or allowlist entry as compared: lower case, no port, no trailing dot, IPv6 in brackets."""
    name = name.strip().lower()
    if name.startswith("["):
        return name[: name.find("]") + 1] if "]" in name else name
    if name.count(":") > 1:  # a bare IPv6 address
        return f"[{name}]"
    return name.partition(":")[0].rstrip(".")


def parse_hosts(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """``"a.example, b"`` or a sequence -> normalized names; ``"*"`` stays ``"*"``."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return tuple(dict.fromkeys("*" if h.strip() == "*" else normalize_host(h) for h in items if h.strip()))


def read_key_file(path: str | os.PathLike) -> str:
    """The API key in ``path`` (surrounding whitespace dropped); an empty or unreadable file is an error."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the API key file {path}: {exc}") from None
    if not key:
        raise InputError(f"the API key file {path} is empty")
    return key


_FIELD_DEFAULT = object()  # Setting.default: the ServeConfig field's own default


@dataclass(frozen=True)
class Setting:
    """One server setting as the command lines take it: the option ``--<name>`` (``server.run``'s keyword
    ``name``), its help, and the :class:`ServeConfig` field it sets (None: an option that is not a field)."""

    name: str
    help: str
    field: str | None = None
    default: Any = _FIELD_DEFAULT  # the option's default: the field's unless given (None: unset, the field's applies)
    type: type | None = None  # None: the default's type
    envvar: str | None = None
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.default is _FIELD_DEFAULT:
            if self.field is None:
                raise TypeError(f"setting {self.name!r} is no ServeConfig field: give it a default")
            object.__setattr__(self, "default", _FIELDS[self.field].default)
        if self.type is None:
            object.__setattr__(self, "type", type(self.default))

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


_FIELDS = {f.name: f for f in fields(ServeConfig)}
# What ``crossrank serve`` and ``python -m crossrank.serve`` take, in their help's order.
SETTINGS: tuple[Setting, ...] = (
    Setting("api_key", "Require 'Authorization: Bearer KEY'.", field="api_key", type=str,
            envvar="CROSSRANK_API_KEY"),
    Setting("api_key_file", "Read the API key from this file (keeps it out of 'ps').", default=None, type=str),
    Setting("allowed_hosts", "Comma-separated Host names accepted besides loopback; '*' for any.",
            field="allowed_hosts", default=None, type=str, envvar="CROSSRANK_ALLOWED_HOSTS"),
    Setting("max_documents", "Most documents per request.", field="max_documents"),
    Setting("max_body_bytes", "Largest request body.", field="max_body_bytes"),
    Setting("max_queue_pairs", "Pairs waiting before requests get 429.", field="max_queue_pairs"),
    Setting("max_queue_requests", "Requests waiting before requests get 429.", field="max_queue_requests"),
    Setting("batch_wait_ms", "Wait this long for more requests before a forward pass.", field="batch_wait_ms"),
    Setting("batch_tokens", "Token budget per forward pass.", field="batch_tokens"),
    Setting("max_batch_pairs", "Most pairs the worker hands the engine per step.", field="max_batch_pairs"),
    Setting("inference_nice", "Run the model's threads this many nice steps below the event loop (0: level).",
            field="inference_nice"),
    Setting("dynamic_batching", "Batch concurrent requests together (off: each alone, for comparison).",
            field="batching"),
    Setting("cache", "Score cache: memory (default), none, or redis://HOST:PORT/DB (shared by replicas; "
            "?ttl_s=, ?timeout_ms=).", field="cache", type=str, envvar="CROSSRANK_CACHE"),
    # how a local model is loaded, and so what the server does by default (a remote reranker keeps its own)
    Setting("long_documents", "truncate, chunk (max-score over windows) or focus (query-focused sentences).",
            default="truncate", choices=LONG_DOCUMENT_MODES),
    Setting("k", "Default K for /search.", field="search_k"),
    Setting("n", "Default N for /search (default: 10, or K when K is smaller).", field="search_n", type=int),
    # unset: the field's 30 s for requests, and no deadline for /search's pipeline (server.build_app)
    Setting("deadline_ms", "Default per-request deadline (30000 ms when unset).", field="default_deadline_ms",
            default=None, type=float),
    Setting("ray", "Serve on Ray Serve (pip install crossrank[ray]); RAY_ADDRESS names a running cluster.",
            field="ray"),
    Setting("replicas", "Copies of the server behind Ray Serve's proxy, each with its own batcher (needs --ray).",
            field="replicas"),
)
SETTING_NAMES = frozenset(s.name for s in SETTINGS)


def resolve_settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting by name: ``given``'s value, else the option's default; a name not in :data:`SETTINGS` is a
    ``TypeError`` (as an unknown keyword argument is), a value outside a setting's ``choices`` (``long_documents``)
    an ``InputError``."""
    unknown = sorted(set(given) - SETTING_NAMES)
    if unknown:
        raise TypeError(f"unknown serve setting(s): {', '.join(unknown)}; known: {', '.join(sorted(SETTING_NAMES))}")
    values = {s.name: given.get(s.name, s.default) for s in SETTINGS}
    for s in SETTINGS:
        if s.choices is not None and values[s.name] not in s.choices:
            raise InputError(f"{s.flag} must be {' or '.join(map(repr, s.choices))}, got {values[s.name]!r} "
                             f"(serve setting {s.name})")
    return values


def config_from_settings(given: Mapping[str, Any]) -> ServeConfig:
    """The :class:`ServeConfig` that settings by name (:data:`SETTINGS`; None or missing: the default) describe,
    with the environment's key and hosts where those are not given (:meth:`ServeConfig.from_env`)."""
    values = resolve_settings(given)
    overrides = {s.field: values[s.name] for s in SETTINGS if s.field is not None}
    return ServeConfig.from_env(api_key_file=values["api_key_file"], **overrides)
