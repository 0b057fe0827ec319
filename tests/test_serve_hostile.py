"""The HTTP service against hostile or careless clients (issue 18), on a real uvicorn server on loopback with the
tiny real model: text that cannot be encoded as UTF-8, oversize /search queries, foreign Host headers (DNS
rebinding), the API key from the environment or a file, slow and too many connections."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from crossrank.errors import InputError
from crossrank.serve import ServeConfig, ServerThread, create_app

pytestmark = pytest.mark.slow  # hostile clients against real servers (the marker: tests that start servers)

QUERY = "what do plants make from sunlight"
DOCS = ["Plants convert sunlight into glucose.", "Volcanoes erupt when magma rises."]
BAD = "a\ud800"  # a lone surrogate: valid JSON ("\ud800" escape), not encodable as UTF-8
KEY = "k3y-from-elsewhere"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    return CrossEncoderReranker(str(tiny_model_dir), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    """Every route, /search included (BM25 over the six sample documents), default limits."""
    from conftest import SAMPLE_DOCS
    from crossrank.corpus import load_corpus
    from crossrank.retrieve import build_index

    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(doc) + "\n" for doc in SAMPLE_DOCS), encoding="utf-8")
    index = build_index(load_corpus(path), methods=["bm25"], progress=False)
    app = create_app(engine, index=index, retriever="bm25", k=5, n=3,
                     config=ServeConfig(allowed_hosts=("api.example",)))
    with ServerThread(app) as s:
        yield s


def _raw_post(url: str, path: str, body: object, **kw) -> httpx.Response:
    """POST ``body`` as ASCII JSON (``\\ud800`` escapes survive; httpx's ``json=`` would fail to encode them)."""
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(url + path, content=json.dumps(body).encode("ascii"), headers=headers, timeout=30, **kw)


TEI_SHAPE, COHERE_SHAPE, JINA_SHAPE = {"error", "error_type"}, {"id", "message"}, {"detail"}


@pytest.mark.parametrize(
    "path, body, status, shape",
    [
        ("/rerank", {"query": BAD, "texts": DOCS}, 422, TEI_SHAPE),
        ("/rerank", {"query": QUERY, "texts": [DOCS[0], BAD]}, 422, TEI_SHAPE),
        ("/v2/rerank", {"query": BAD, "documents": DOCS}, 400, COHERE_SHAPE),
        ("/v2/rerank", {"query": QUERY, "documents": [{"text": BAD}]}, 400, COHERE_SHAPE),
        ("/v1/rerank", {"query": QUERY, "documents": [BAD]}, 422, JINA_SHAPE),
        ("/v1/rerank", {"query": {"text": BAD}, "documents": DOCS}, 422, JINA_SHAPE),
        ("/v1/rerank", {"model": BAD, "query": QUERY, "documents": DOCS}, 422, JINA_SHAPE),  # echoed back
        ("/search", {"query": BAD}, 422, TEI_SHAPE),
    ],
)
def test_unencodable_text_is_a_4xx_in_the_dialects_shape(server, path, body, status, shape):
    r = _raw_post(server.url, path, body)
    assert r.status_code == status, r.text
    assert set(r.json()) == shape
    assert "UTF-8" in r.text
    assert _raw_post(server.url, path, json.loads(json.dumps(body).replace("\\ud800", ""))).status_code == 200


def test_search_has_the_rerank_limits(server):
    config = server.app.state.crossrank.config
    t0 = time.monotonic()
    r = _raw_post(server.url, "/search", {"query": "earthquake " * 500_000})  # 5.5 MB, under the body limit
    assert r.status_code == 422 and set(r.json()) == TEI_SHAPE, r.text[:300]
    assert str(config.max_query_chars) in r.json()["error"] and len(r.content) < 1000  # not echoed back
    assert time.monotonic() - t0 < 10
    at_limit = "earthquake plates " * (config.max_query_chars // 18)
    assert _raw_post(server.url, "/search", {"query": at_limit, "k": 3}).status_code == 200
    r = _raw_post(server.url, "/search", {"query": "x" * (config.max_body_bytes + 10)})
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
    r = _raw_post(server.url, "/search", {"query": "x", "k": config.max_search_k + 1})
    assert r.status_code == 422


def test_an_oversized_body_still_gets_its_413_when_the_client_sends_it_all(server):
    """The 413 is decided from Content-Length before the body arrives; closing at once with the body unread made
    the kernel reset the connection, so a client that sends its whole body first (as httpx does) lost the answer
    (seen as "peer closed connection" on a loaded machine). Sent here after the server has had time to answer."""
    limit = server.app.state.crossrank.config.max_body_bytes
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /search HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {limit + 10}\r\n\r\n".encode())
        time.sleep(0.5)  # the old code answered and closed here
        sock.sendall(b"x" * (limit + 10))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


# ------------------------------------------------------------------------------------------------ Host allowlist


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil"])
def test_foreign_host_is_a_400_in_the_dialects_shape(server, host):
    h = {"Host": host}
    r = _raw_post(server.url, "/rerank", {"query": QUERY, "texts": DOCS}, headers=h)
    assert r.status_code == 400 and set(r.json()) == TEI_SHAPE and r.json()["error_type"] == "invalid_host"
    r = _raw_post(server.url, "/v2/rerank", {"query": QUERY, "documents": DOCS}, headers=h)
    assert r.status_code == 400 and set(r.json()) == COHERE_SHAPE
    r = _raw_post(server.url, "/v1/rerank", {"query": QUERY, "documents": DOCS}, headers=h)
    assert r.status_code == 400 and set(r.json()) == JINA_SHAPE
    for path in ("/info", "/health", "/"):
        assert httpx.get(server.url + path, headers=h).status_code == 400


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LocalHost.", "[::1]", "api.example", "API.example:443"])
def test_allowed_hosts_are_served(server, host):
    for h in (host,) if host.endswith(":443") else (host, f"{host}:{server.port}"):
        r = _raw_post(server.url, "/rerank", {"query": QUERY, "texts": DOCS}, headers={"Host": h})
        assert r.status_code == 200, (h, r.text)


def test_missing_host_is_refused(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /info HTTP/1.0\r\n\r\n")
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 400") and b"invalid_host" in reply


def test_host_allowlist_settings(engine, monkeypatch):
    monkeypatch.setenv("CROSSRANK_ALLOWED_HOSTS", " Search.Internal:8080, ::1 ,")
    config = ServeConfig.from_env()
    assert config.allowed_hosts == ("search.internal", "[::1]")
    assert config.host_allowed("search.internal") and not config.host_allowed("other.internal")
    assert ServeConfig.from_env(allowed_hosts="*").host_allowed("anything.example")
    config.allow_bound("0.0.0.0")  # a wildcard bind is not a name to accept
    assert config.allowed_hosts == ("search.internal", "[::1]")
    with ServerThread(create_app(engine, config=ServeConfig(allowed_hosts="*"))) as s:
        r = _raw_post(s.url, "/rerank", {"query": QUERY, "texts": DOCS}, headers={"Host": "rebound.example"})
        assert r.status_code == 200


# ------------------------------------------------------------------------------------------------ API key sources


def _assert_needs(url: str, key: str) -> None:
    body = {"query": QUERY, "texts": DOCS}
    assert _raw_post(url, "/rerank", body).status_code == 401
    assert _raw_post(url, "/rerank", body, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def _build(tiny_model_dir, **kw):
    from crossrank.serve.server import build_app

    return build_app(str(tiny_model_dir), reranker_options={"dtype": "fp32", "device": "cpu"}, **kw)


def test_api_key_from_the_environment(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CROSSRANK_API_KEY", KEY)
    with ServerThread(_build(tiny_model_dir)) as s:
        _assert_needs(s.url, KEY)


def test_api_key_from_a_file(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("CROSSRANK_API_KEY", raising=False)
    key_file = tmp_path / "key"
    key_file.write_text(f"  {KEY}\n", encoding="utf-8")
    app = _build(tiny_model_dir, api_key_file=key_file, host="10.9.8.7")
    assert app.state.crossrank.config.host_allowed("10.9.8.7:8080")  # the bound address is a good Host
    with ServerThread(app) as s:
        _assert_needs(s.url, KEY)
    with pytest.raises(InputError, match="not both"):
        ServeConfig.from_env(api_key_file=key_file, api_key="other")
    (tmp_path / "empty").write_text("\n")
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(InputError, match="API key file"):
            ServeConfig.from_env(api_key_file=bad)


def test_module_entry_point_passes_the_key_file_and_hosts(monkeypatch, tmp_path):
    import crossrank.serve.server as server_mod
    from crossrank.serve.__main__ import main

    seen = {}
    monkeypatch.setattr(server_mod, "run", lambda model, **kw: seen.update(kw))
    assert main(["--api-key-file", str(tmp_path / "k"), "--allowed-hosts", "a.example,b.example"]) == 0
    assert seen["api_key_file"] == str(tmp_path / "k") and seen["api_key"] is None
    assert seen["allowed_hosts"] == "a.example,b.example"


# ------------------------------------------------------------------------------------------------ slow clients


class Slow:
    """The engine, 1.5 s slower per call: inference longer than the connection timeouts."""

    def __init__(self, engine):
        self.engine, self.name = engine, engine.name

    def info(self):
        return self.engine.info()

    def score(self, query, texts):
        return self.score_pairs([(query, t) for t in texts])

    def score_pairs(self, pairs):
        time.sleep(1.5)
        return self.engine.score_pairs(pairs)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closes ``sock`` (fails if it is still open after ``seconds``)."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    try:
        _read_all(sock)
    except socket.timeout:
        pytest.fail(f"the server kept a slow connection open for {seconds} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def strict(engine):
    config = ServeConfig(header_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=30, max_connections=3)
    with ServerThread(create_app(Slow(engine), config=config)) as s:
        yield s


@pytest.mark.slow
def test_slow_headers_and_bodies_are_cut_off(strict):
    port = strict.port
    with socket.create_connection(("127.0.0.1", port)) as sock:  # headers, a byte at a time, never finished
        sock.sendall(b"POST /rerank HTTP/1.1\r\nHo")
        assert _closed_within(sock, 5) >= 0.8
    with socket.create_connection(("127.0.0.1", port)) as sock:  # a body that stops arriving
        sock.sendall(b"POST /rerank HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"query\":")
        assert _closed_within(sock, 5) >= 0.8
    body = json.dumps({"query": QUERY, "texts": DOCS}).encode()
    request = (b"POST /rerank HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with socket.create_connection(("127.0.0.1", port)) as sock:  # kept alive, then a stalled next request
        sock.sendall(request)
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # inference (1.5 s) outlasts both timeouts
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        assert _closed_within(sock, 5) >= 0.8
    assert httpx.get(strict.url + "/health").status_code == 200


def test_connections_are_bounded(strict):
    idle = [socket.create_connection(("127.0.0.1", strict.port)) for _ in range(3)]  # max_connections
    try:
        time.sleep(0.2)
        assert httpx.get(strict.url + "/health").status_code == 503  # one more
    finally:
        for sock in idle:
            sock.close()
    until = time.monotonic() + 5
    while httpx.get(strict.url + "/health").status_code != 200:
        assert time.monotonic() < until, "connections were not released"
        time.sleep(0.05)


def test_a_served_model_is_timed_at_startup_so_admission_predicts_from_the_first_request(tiny_model_dir):
    """Without a throughput prior, admission admits everything until the worker has timed a step, and a burst of
    clients at startup would all be queued to expire. ``build_app`` times the model once while it loads."""
    app = _build(tiny_model_dir)
    assert app.state.crossrank.config.tokens_per_s > 0
    with ServerThread(app) as s:
        health = httpx.get(s.url + "/health").json()
        assert health["queue_seconds"] == 0  # a prediction exists before any request was scored
        assert _raw_post(s.url, "/rerank", {"query": QUERY, "texts": DOCS}).status_code == 200


def test_the_server_freezes_its_startup_heap_before_it_serves(tiny_model_dir, monkeypatch):
    """``run`` moves the heap built at startup (model, libraries, app) out of the garbage collector's reach
    before uvicorn serves: full collections that walk it stopped the event loop under a burst
    (benchmarks/results/overload.md)."""
    import gc

    import uvicorn

    from crossrank.serve import server as server_mod

    seen = {}

    def fake_run(app, **kw):  # instead of serving: what the server is about to serve with
        seen["frozen"] = gc.get_freeze_count()
        seen["app"] = app

    monkeypatch.setattr(uvicorn, "run", fake_run)
    gc.unfreeze()
    try:
        server_mod.run(str(tiny_model_dir), port=0, log_level="warning")
        assert seen["app"].state.crossrank.model_name
        assert seen["frozen"] > 10_000  # the model and its libraries, not a handful of objects
    finally:
        gc.unfreeze()  # the test process goes on collecting as before
        if "app" in seen:
            seen["app"].state.crossrank.batcher.stop()  # never served: nothing else stops its worker
