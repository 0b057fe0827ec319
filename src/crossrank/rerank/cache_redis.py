"""A score store in Redis, shared by replicas: ``load_reranker(..., cache="redis://host:6379/0")``.

The keys are :class:`~crossrank.rerank.cache.CachedReranker`'s (one keying rule), under
``crossrank:score:v1:`` as hex; a value is 9 bytes, the score as a little-endian double and the truncated flag
(never pickle: a shared store is input from other processes). Reads are one ``MGET``, writes one pipelined ``SET
... EX ttl`` per key.

Concurrent writers are safe without locks or transactions: a key names the model, how it was loaded, the
options, instruction, query and text, so every replica that writes it writes the same value, and the last write
wins with nothing lost. Each entry is one ``SET`` of one string, which Redis applies whole, so a reader sees an
entry completely or not at all; a value that does not decode (another program's, a future format) is a miss.

Redis down, unreachable, timing out or refusing (out of memory, read-only): the call is scored without the cache
and the failure counted (``redis_errors``); one warning per outage is logged, and Redis is not tried again until
a back-off has passed (doubling from ``backoff_s`` up to ``max_backoff_s``), so an outage costs one short
timeout, not one per request. A request never fails because Redis did.
"""

from __future__ import annotations

import logging
import math
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit

from crossrank.errors import InputError, first_line
from crossrank.rerank.cache import Entry

log = logging.getLogger("crossrank.rerank")

SCHEMES = ("redis", "rediss", "unix")
KEY_PREFIX = b"crossrank:score:v1:"  # bump the version when the value format or the keying rule changes
DEFAULT_TTL_S = 7 * 24 * 3600
DEFAULT_TIMEOUT_MS = 100.0
_VALUE = struct.Struct("<d?")
# crossrank's own query parameters, taken off the URL before redis-py sees it
_OWN_PARAMS = ("ttl_s", "timeout_ms")


@dataclass(frozen=True)
class RedisCacheSpec:
    """A checked ``--cache`` URL: what redis-py connects with (``url``, without crossrank's parameters), the
    entries' lifetime, the socket timeouts, and ``display``, the URL with any password masked (for logs and
    ``/info``)."""

    url: str = field(repr=False)  # may hold a password
    ttl_s: int = DEFAULT_TTL_S
    timeout_s: float = DEFAULT_TIMEOUT_MS / 1000.0
    display: str = ""


def parse_cache_url(url: str) -> RedisCacheSpec:
    """Check a Redis URL without connecting: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS) or
    ``unix:///path/to.sock[?db=N]``, plus ``ttl_s`` (entry lifetime, seconds; default 7 days) and ``timeout_ms``
    (connect and read timeout; default 100) and redis-py's own URL parameters. An ``InputError`` says what is
    wrong (this runs before any model loads)."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # a port that is no number, or out of range, raises here
    except ValueError as exc:
        raise InputError(f"cache: not a valid URL ({exc}): {mask_password(url)}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        given = parts.scheme + "://" if parts.scheme else mask_password(url)
        raise InputError(f"cache: unknown scheme {given!r}; use memory, none, or a redis://, rediss:// or unix:// "
                         "URL")
    if scheme == "unix":
        if not parts.path:
            raise InputError("cache: a unix:// URL names the socket's path, e.g. unix:///run/redis/redis.sock")
    else:
        if not parts.hostname:
            raise InputError(f"cache: {scheme}:// needs a host, e.g. {scheme}://localhost:6379/0")
        if parts.path not in ("", "/") and not parts.path.lstrip("/").isdigit():
            raise InputError(f"cache: the path of a {scheme}:// URL is the database number, got {parts.path!r}")
    own, passed = _split_params(parts.query)
    ttl_s = _positive(own, "ttl_s", DEFAULT_TTL_S, int)
    timeout_ms = _positive(own, "timeout_ms", DEFAULT_TIMEOUT_MS, float)
    # the URL as given, less crossrank's parameters (urlunsplit would write unix:///x as unix:/x)
    redis_url = url.split("#", 1)[0].split("?", 1)[0] + (f"?{urlencode(passed)}" if passed else "")
    _check_redis_params(redis_url)
    return RedisCacheSpec(url=redis_url, ttl_s=int(ttl_s), timeout_s=timeout_ms / 1000.0,
                          display=mask_password(url))


def _split_params(query: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    own: dict[str, str] = {}
    passed: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _OWN_PARAMS:
            own[name] = value
        elif name in URL_QUERY_ARGUMENT_PARSERS or name.startswith("ssl_") or name in ("password", "client_name"):
            passed.append((name, value))
        else:
            raise InputError(f"cache: unknown URL parameter {name!r}; crossrank's are {', '.join(_OWN_PARAMS)} "
                             "(and redis-py's own, e.g. socket_timeout, ssl_cert_reqs)")
    return own, passed


def _positive(params: Mapping[str, str], name: str, default: float, kind: type) -> float:
    if name not in params:
        return default
    try:
        value = kind(params[name])
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise InputError(f"cache: {name} must be a positive {kind.__name__}, got {params[name]!r}")
    return value


def _check_redis_params(url: str) -> None:
    """redis-py's own reading of the URL (its parameters' types), without connecting."""
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError as exc:
        raise InputError(f"cache: {exc}") from None


def mask_password(url: str) -> str:
    """``url`` with the password (in the authority or a ``password=`` parameter) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        user, _, host = authority.rpartition("@")
        if ":" in user:
            authority = f"{user.partition(':')[0]}:***@{host}"
    masked = scheme + sep + authority + slash + tail
    return _PASSWORD_PARAM.sub(r"\1***", masked)


_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&#]*")


def encode_entry(entry: Entry) -> bytes:
    return _VALUE.pack(float(entry[0]), bool(entry[1]))


def decode_entry(raw: bytes | None) -> Entry | None:
    if raw is None or len(raw) != _VALUE.size:
        return None
    score, truncated = _VALUE.unpack(raw)
    return score, truncated


class RedisStore:
    """The :class:`~crossrank.rerank.cache.ScoreStore` in Redis (see the module docstring for the rules).

    ``backoff_s`` / ``max_backoff_s``: after a failure Redis is skipped this long, doubling per failed retry and
    reset by a success."""

    shared = True

    def __init__(self, spec: RedisCacheSpec | str, *, backoff_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.spec = parse_cache_url(spec) if isinstance(spec, str) else spec
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self._errors_types = (redis.RedisError, OSError)
        # no client-side retries: a failure falls back at once and the back-off below decides when to try again
        self._client = redis.Redis.from_url(self.spec.url, socket_connect_timeout=self.spec.timeout_s,
                                            socket_timeout=self.spec.timeout_s, retry=Retry(NoBackoff(), 0))
        self._lock = threading.Lock()
        self.errors = 0
        self._down_until = 0.0  # time.monotonic() before which Redis is not tried
        self._next_backoff = self.backoff_s
        self._down = False
        self.ping()  # say at start-up (once) whether the cache is reachable; it serves without either way

    # ------------------------------------------------------------------ the store

    def get_many(self, keys: Sequence[bytes]) -> list[Entry | None]:
        if not keys or not self._may_try():
            return [None] * len(keys)
        try:
            raw = self._client.mget([self._name(k) for k in keys])
        except self._errors_types as exc:
            self._failed(exc)
            return [None] * len(keys)
        self._succeeded()
        return [decode_entry(v) for v in raw]

    def set_many(self, entries: Mapping[bytes, Entry]) -> None:
        if not entries or not self._may_try():
            return
        try:
            pipe = self._client.pipeline(transaction=False)  # one round trip; no MULTI needed (see above)
            for k, v in entries.items():
                pipe.set(self._name(k), encode_entry(v), ex=self.spec.ttl_s)
            pipe.execute()
        except self._errors_types as exc:
            self._failed(exc)
            return
        self._succeeded()

    def stats(self) -> dict[str, Any]:
        return {"store": "redis", "url": self.spec.display, "ttl_s": self.spec.ttl_s,
                "redis_available": not self._down, "redis_errors": self.errors}

    def clear(self) -> None:
        """Delete every crossrank score in this database (every replica's)."""
        try:
            batch = []
            for name in self._client.scan_iter(match=KEY_PREFIX + b"*", count=1000):
                batch.append(name)
                if len(batch) >= 1000:
                    self._client.unlink(*batch)
                    batch.clear()
            if batch:
                self._client.unlink(*batch)
        except self._errors_types as exc:
            self._failed(exc)

    def __len__(self) -> int:
        """crossrank scores in this database (a scan: for tests and inspection, not a request path)."""
        try:
            return sum(1 for _ in self._client.scan_iter(match=KEY_PREFIX + b"*", count=1000))
        except self._errors_types as exc:
            self._failed(exc)
            return 0

    def ping(self) -> bool:
        """Whether Redis answers now (a failure counts and starts the back-off, as any other)."""
        try:
            self._client.ping()
        except self._errors_types as exc:
            self._failed(exc)
            return False
        self._succeeded()
        return True

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.spec.display!r}, ttl_s={self.spec.ttl_s})"

    # ------------------------------------------------------------------ failure and back-off

    @staticmethod
    def _name(key: bytes) -> bytes:
        return KEY_PREFIX + key.hex().encode("ascii")

    def _may_try(self) -> bool:
        return not self._down or time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            if self._down and time.monotonic() < self._down_until:
                return  # a call in flight when the outage began: its back-off is already set
            first = not self._down
            self._down = True
            self._down_until = time.monotonic() + self._next_backoff
            wait, self._next_backoff = self._next_backoff, min(self._next_backoff * 2, self.max_backoff_s)
        if first:  # one warning per outage, not one per request
            log.warning("score cache %s unavailable (%s): scoring without it, retrying in %.1f s",
                        self.spec.display, first_line(exc), wait)

    def _succeeded(self) -> None:
        if not self._down:
            return
        with self._lock:
            was_down, self._down, self._next_backoff = self._down, False, self.backoff_s
        if was_down:
            log.info("score cache %s reachable again", self.spec.display)
