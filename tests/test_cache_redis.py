"""The shared score cache in Redis (issue 23): two replicas over one real redis-server, keys that must not
collide, concurrent writers, Redis killed, hung and restarted, the TTL, the URL checks, and the server with
``--cache redis://...`` answering TEI's /rerank. Each module gets its own redis-server on a free loopback port
(no persistence); without the ``redis-server`` binary these tests skip, saying so (``.ci/run`` installs it)."""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import SilentServer, assert_clean_error, run_cli
from crossrank.errors import InputError
from crossrank.rerank import load_reranker
from crossrank.rerank.base import RerankScores, rank_by_scores
from crossrank.rerank.cache import CachedReranker
from crossrank.rerank.cache_redis import KEY_PREFIX, RedisStore, decode_entry, parse_cache_url
from test_serve import DOCS, QUERY, _metric

QUERIES = ["what do plants make from sunlight", "how do volcanoes erupt", "what does insulin do"]
TEXTS = [f"passage {i}: " + " ".join(f"w{(i * 7 + j) % 31}" for j in range(i % 9 + 3)) for i in range(40)]


class RedisServer:
    """A real redis-server on 127.0.0.1 in ``workdir``, nothing persisted; ``stop`` kills it (SIGKILL, as a crash
    would) and ``start`` brings it back on the same port, empty."""

    def __init__(self, binary: str, workdir: Path, password: str | None = None) -> None:
        self.binary, self.workdir, self.password = binary, workdir, password
        with socket.socket() as s:  # a free port (another process could take it before the server does: rare)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0, **params) -> str:
        auth = f":{self.password}@" if self.password else ""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"redis://{auth}127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2)

    def start(self) -> "RedisServer":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return self
            except Exception as exc:
                if self.proc.poll() is not None or time.monotonic() > until:
                    log = self.workdir / "redis.log"
                    raise RuntimeError("redis-server did not start: " + (log.read_text() if log.exists() else "")) from exc
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs the redis-server binary (Debian package redis-server; .ci/run installs it)")
    return binary


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(_redis_binary(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def redis_url(redis_server) -> str:
    """The module's Redis, emptied for this test."""
    redis_server.client().flushall()
    return redis_server.url()


@pytest.fixture()
def own_redis(tmp_path):
    """A redis-server of this test's own, for tests that kill it."""
    server = RedisServer(_redis_binary(), tmp_path).start()
    yield server
    server.stop()


class Counting:
    """A tiny real Reranker: a deterministic score from a digest of (instruction, long-document mode, query,
    text), recording every pair it is asked to score (thread-safe); texts over ``max_length`` characters count
    as truncated."""

    takes_instruction = True

    def __init__(self, name: str = "counting", max_length: int = 40) -> None:
        self.name, self.max_length, self.mode = name, max_length, "truncate"
        self.pairs: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _one(self, query: str, text: str, instruction: str | None) -> float:
        h = hashlib.sha256(f"{instruction}|{self.mode}|{query}|{text[: self.max_length]}".encode()).digest()
        return int.from_bytes(h[:8], "little") / 2.0**64

    def score(self, query, texts, *, timeout_s=None, instruction=None) -> RerankScores:
        return self.score_pairs([(query, t) for t in texts], instruction=instruction)

    def score_pairs(self, pairs, *, timeout_s=None, instruction=None) -> RerankScores:
        pairs = [tuple(p) for p in pairs]
        with self._lock:
            self.pairs += pairs
        return RerankScores(scores=[self._one(q, t, instruction) for q, t in pairs],
                            truncated=[len(t) > self.max_length for _, t in pairs],
                            tokens=sum(len(q) + len(t) for q, t in pairs))

    def rerank(self, query, texts, top_n=None):
        return rank_by_scores(list(texts), self.score(query, texts).scores, top_n)

    def info(self):
        return {"model": self.name, "activation": "sigmoid", "max_length": self.max_length,
                "long_documents": self.mode}

    def with_options(self, **options):
        if not options:
            return self
        variant = copy.copy(self)
        variant.mode, variant.pairs, variant._lock = options["long_documents"], [], threading.Lock()
        return variant

    def count_inputs(self, query, texts, instruction=None):
        return None

    def token_spans(self, texts):
        return None


def replica(url: str, inner: Counting | None = None, **store_options) -> CachedReranker:
    """One "replica": its own engine and its own connection to the shared Redis."""
    return CachedReranker(inner or Counting(), store=RedisStore(url, **store_options))


# ------------------------------------------------------------------------------------------ sharing


def test_second_replica_answers_from_the_cache(redis_url):
    a, b = replica(redis_url), replica(redis_url)
    want = Counting().score(QUERIES[0], TEXTS[:10])
    first = a.score(QUERIES[0], TEXTS[:10])
    assert first.cache_hits == 0 and len(a.inner.pairs) == 10 and first.tokens > 0
    second = b.score(QUERIES[0], TEXTS[:10])
    assert b.inner.pairs == []  # the second replica's engine ran nothing
    assert second.cache_hits == 10 and second.tokens == 0
    assert second.scores == first.scores == want.scores  # exact: a double round-trips
    assert second.truncated == first.truncated == want.truncated and any(want.truncated)
    assert b.stats()["hits"] == 10 and b.stats()["misses"] == 0 and b.stats()["redis_errors"] == 0
    # mixed queries, a duplicate, half of them known: only the new ones are scored, once each
    pairs = [(QUERIES[0], TEXTS[0]), (QUERIES[1], TEXTS[0]), (QUERIES[0], TEXTS[1]), (QUERIES[1], TEXTS[0])]
    got = b.score_pairs(pairs)
    assert got.cache_hits == 2 and b.inner.pairs == [(QUERIES[1], TEXTS[0])]
    assert got.scores == Counting().score_pairs(pairs).scores
    assert len(b.store) == 11


def test_real_engine_through_load_reranker(redis_url, tiny_model_dir):
    """``load_reranker(..., cache=URL)``: the cross-encoder's scores come back bit for bit from another replica."""
    uncached = load_reranker(str(tiny_model_dir), cache_size=0, dtype="fp32", device="cpu")
    a = load_reranker(str(tiny_model_dir), cache=redis_url, dtype="fp32", device="cpu")
    b = load_reranker(str(tiny_model_dir), cache=redis_url, dtype="fp32", device="cpu")
    assert isinstance(a, CachedReranker) and a.info()["cache"]["store"] == "redis"
    want = uncached.score(QUERY, DOCS)
    assert a.score(QUERY, DOCS).scores == want.scores
    got = b.score(QUERY, DOCS)
    assert got.cache_hits == len(DOCS) and got.scores == want.scores


def test_keys_do_not_collide(redis_url):
    """Another model, another max length (how a replica was loaded), another instruction or long-document mode:
    each is another score, so none reads the others' entries."""
    base = replica(redis_url)
    base.score(QUERIES[0], TEXTS[:5])
    others = {
        "another model": replica(redis_url, Counting(name="other")),
        "another max_length": replica(redis_url, Counting(max_length=30)),
        "a chunk variant": replica(redis_url).with_options(long_documents="chunk"),
    }
    for what, other in others.items():
        res = other.score(QUERIES[0], TEXTS[:5])
        assert res.cache_hits == 0, what
        assert res.scores == other.inner.score(QUERIES[0], TEXTS[:5]).scores, what
    for instruction in ("Find passages about plants.", "Find passages about volcanoes."):
        res = base.score(QUERIES[0], TEXTS[:5], instruction=instruction)
        assert res.cache_hits == 0
        assert res.scores == Counting().score(QUERIES[0], TEXTS[:5], instruction=instruction).scores
    # and each of them now hits its own entries from a fresh replica
    again = replica(redis_url).score(QUERIES[0], TEXTS[:5], instruction="Find passages about plants.")
    assert again.cache_hits == 5
    assert replica(redis_url).with_options(long_documents="chunk").score(QUERIES[0], TEXTS[:5]).cache_hits == 5


def test_memory_store_keys_unchanged_and_separate(redis_url):
    """The in-memory cache is still the default, private to its process: a Redis replica's entries are not in it."""
    replica(redis_url).score(QUERIES[0], TEXTS[:3])
    local = CachedReranker(Counting(), max_entries=10)
    assert local.score(QUERIES[0], TEXTS[:3]).cache_hits == 0
    assert local.score(QUERIES[0], TEXTS[:3]).cache_hits == 3
    assert local.stats()["store"] == "memory" and local.max_entries == 10


def test_concurrent_writers_agree(redis_url):
    """Eight replicas in threads score overlapping batches at once: every answer is the uncached score, and the
    entries they raced to write read back whole and right."""
    truth = Counting()
    replicas = [replica(redis_url) for _ in range(8)]

    def work(i: int) -> list[tuple[tuple[str, str], float]]:
        out = []
        for round_ in range(6):
            pairs = [(QUERIES[(i + round_ + j) % 3], TEXTS[(i * 5 + round_ * 3 + j) % len(TEXTS)]) for j in range(12)]
            out += list(zip(pairs, replicas[i].score_pairs(pairs).scores, strict=True))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = [r for rs in pool.map(work, range(8)) for r in rs]
    for (q, t), score in results:
        assert score == truth._one(q, t, None)
    assert sum(r.stats()["redis_errors"] for r in replicas) == 0
    every = [(q, t) for q in QUERIES for t in TEXTS]
    fresh = replica(redis_url)
    got = fresh.score_pairs(every)
    assert got.scores == truth.score_pairs(every).scores
    assert got.cache_hits == len({pair for pair, _ in results})  # everything any replica scored was stored


# ------------------------------------------------------------------------------------------ entries


def test_entries_have_the_ttl_and_the_compact_format(redis_server, redis_url):
    r = replica(redis_server.url(ttl_s=3600))
    r.score(QUERIES[0], TEXTS[:2])
    client = redis_server.client()
    names = sorted(client.scan_iter(match=KEY_PREFIX + b"*"))
    assert len(names) == 2
    for name in names:
        assert len(name) == len(KEY_PREFIX) + 32  # the 16-byte digest as hex
        assert 3590 <= client.ttl(name) <= 3600
        raw = client.get(name)
        assert len(raw) == 9 and decode_entry(raw) is not None
    default = replica(redis_url)
    default.score(QUERIES[1], TEXTS[:1])
    name = next(n for n in client.scan_iter(match=KEY_PREFIX + b"*") if n not in names)
    assert client.ttl(name) > 6 * 24 * 3600  # seven days unless told


def test_an_unreadable_value_is_a_miss_and_is_rewritten(redis_server, redis_url):
    a = replica(redis_url)
    want = a.score(QUERIES[0], TEXTS[:1]).scores
    client = redis_server.client()
    (name,) = client.scan_iter(match=KEY_PREFIX + b"*")
    client.set(name, b"\x00\x01")  # a truncated or foreign value
    b = replica(redis_url)
    got = b.score(QUERIES[0], TEXTS[:1])
    assert got.cache_hits == 0 and got.scores == want and b.inner.pairs == [(QUERIES[0], TEXTS[0])]
    assert decode_entry(client.get(name)) == (want[0], False)


# ------------------------------------------------------------------------------------------ Redis down


def test_redis_killed_then_restarted(own_redis, caplog):
    """Redis dies mid-run: answers stay right (scored without the cache), the failures are counted, one warning is
    logged, nothing raises; once Redis is back and the back-off has passed, the cache is used again."""
    truth = Counting()
    r = replica(own_redis.url(timeout_ms=200), backoff_s=0.3, max_backoff_s=0.3)
    r.score(QUERIES[0], TEXTS[:4])
    assert r.score(QUERIES[0], TEXTS[:4]).cache_hits == 4
    own_redis.stop()
    with caplog.at_level(logging.WARNING, logger="crossrank.rerank"):
        for i in range(5):
            texts = TEXTS[i * 4:(i + 1) * 4 + 4]
            got = r.score(QUERIES[1], texts)
            assert got.scores == truth.score(QUERIES[1], texts).scores and got.cache_hits == 0
    stats = r.stats()
    assert stats["redis_errors"] >= 1 and stats["redis_available"] is False
    warnings = [rec for rec in caplog.records if "unavailable" in rec.getMessage()]
    assert len(warnings) == 1, [rec.getMessage() for rec in caplog.records]
    # calls inside the back-off do not touch Redis: a burst costs one timeout, not one each
    errors = stats["redis_errors"]
    for _ in range(20):
        r.score(QUERIES[2], TEXTS[:2])
    assert r.stats()["redis_errors"] <= errors + 1

    own_redis.start()  # back, empty
    time.sleep(0.35)
    r.score(QUERIES[0], TEXTS[:4])  # the first call after the back-off reconnects, and stores
    assert r.stats()["redis_available"] is True
    other = replica(own_redis.url())
    assert other.score(QUERIES[0], TEXTS[:4]).cache_hits == 4 and other.inner.pairs == []


def test_redis_down_at_start_and_hung_redis():
    """A cache that is not there at start-up, or accepts connections and never answers (a hung server), costs
    at most the short timeout per back-off period; scores are still right."""
    truth = Counting()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # closed again: nothing listens
    with SilentServer() as hung:
        for url in (f"redis://127.0.0.1:{dead_port}/0?timeout_ms=50", f"redis://127.0.0.1:{hung.port}/0?timeout_ms=50"):
            start = time.monotonic()
            r = replica(url)  # start-up pings once, fails, and goes on
            for q in QUERIES:
                assert r.score(q, TEXTS[:3]).scores == truth.score(q, TEXTS[:3]).scores
            assert time.monotonic() - start < 2.0, url
            assert r.stats()["redis_errors"] >= 1 and r.stats()["redis_available"] is False


# ------------------------------------------------------------------------------------------ URLs


@pytest.mark.parametrize("url, needle", [
    ("ftp://cache:6379", "scheme"),
    ("redis://", "needs a host"),
    ("redis://localhost:99999", "not a valid URL"),
    ("redis://localhost/zero", "database number"),
    ("redis://localhost?ttl_s=0", "ttl_s"),
    ("redis://localhost?timeout_ms=fast", "timeout_ms"),
    ("redis://localhost?no_such=1", "unknown URL parameter"),
    ("unix://", "socket's path"),
])
def test_bad_urls_fail_before_the_model_loads(url, needle):
    with pytest.raises(InputError, match=needle):
        load_reranker("no/such-model-anywhere", cache=url)  # the model would be a ModelLoadError


def test_password_is_masked():
    spec = parse_cache_url("redis://app:hunter2@cache.internal:6380/3?ttl_s=60")
    assert "hunter2" not in spec.display and "hunter2" not in repr(spec)
    assert spec.display == "redis://app:***@cache.internal:6380/3?ttl_s=60" and spec.ttl_s == 60
    with pytest.raises(InputError) as exc:
        load_reranker("default", cache="http://app:hunter2@cache.internal")
    assert "hunter2" not in str(exc.value)


def test_cli_refuses_a_bad_cache_url():
    proc = run_cli("serve", "--cache", "memcached://localhost:11211", "--port", "0")
    assert_clean_error(proc, "scheme")
    assert proc.stderr.count("error:") == 1


# ------------------------------------------------------------------------------------------ the server


def test_server_with_a_redis_cache(tmp_path, tiny_model_dir):
    """``crossrank serve --cache redis://:password@...``'s app (``build_app``): TEI /rerank answered from the
    shared cache by a second server, the password nowhere in /info or /metrics, and Redis going away costs no
    request, only a counted error."""
    from crossrank.serve import ServerThread
    from crossrank.serve.server import build_app

    redis = RedisServer(_redis_binary(), tmp_path, password="s3cret-pw").start()
    try:
        url = redis.url()
        apps = [build_app(str(tiny_model_dir), cache=url, reranker_options={"dtype": "fp32", "device": "cpu"})
                for _ in range(2)]
        with ServerThread(apps[0]) as one, ServerThread(apps[1]) as two:
            body = {"query": QUERY, "texts": DOCS, "raw_scores": True}
            first = httpx.post(one.url + "/rerank", json=body, timeout=30)
            second = httpx.post(two.url + "/rerank", json=body, timeout=30)
            assert first.status_code == second.status_code == 200
            assert first.json() == second.json()
            assert _metric(two.url, "crossrank_cache_hits_total") == len(DOCS)
            info = httpx.get(two.url + "/info").text
            assert "s3cret-pw" not in info and "redis://:***@127.0.0.1" in info
            metrics = httpx.get(two.url + "/metrics").text
            assert "s3cret-pw" not in metrics
            assert _metric(two.url, "crossrank_cache_redis_up") == 1
            assert _metric(two.url, "crossrank_cache_redis_errors_total") == 0

            redis.stop()
            fresh = {"query": QUERY, "texts": [d + " (again)" for d in DOCS], "raw_scores": True}
            r = httpx.post(two.url + "/rerank", json=fresh, timeout=30)
            assert r.status_code == 200 and len(r.json()) == len(DOCS)
            assert _metric(two.url, "crossrank_cache_redis_errors_total") >= 1
            assert _metric(two.url, "crossrank_cache_redis_up") == 0
    finally:
        redis.stop()
