"""RemoteReranker over real HTTP: against the crossrank server in each dialect, against a scripted fake server
(429 then 200, 4xx, malformed answers) and against a closed port (circuit breaker); and the pipeline falling
back to first-stage order while the service is down, then recovering when it is back on the same port."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import RERANK_DOCS, RERANK_QUERY
from crossrank.errors import InputError, RerankerUnavailable, RerankTimeout
from crossrank.rerank.remote import CircuitBreaker, RemoteReranker
from crossrank.serve import ServeConfig, ServerThread, create_app

QUERY = RERANK_QUERY
DOCS = [*RERANK_DOCS, "Mitochondria make ATP."]
KEY = "remote-key"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    return CrossEncoderReranker(str(tiny_model_dir), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def server(engine):
    with ServerThread(create_app(engine, config=ServeConfig(api_key=KEY))) as s:
        yield s


class Fake:
    """A scripted HTTP server: answers the queued (status, headers, body) in turn, repeating the last."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[tuple[str, dict, object]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                fake.requests.append((self.path, dict(self.headers), body))
                status, headers, payload = fake.responses.pop(0) if len(fake.responses) > 1 else fake.responses[0]
                if callable(payload):
                    payload = payload(body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def tei_ok(body):
    n = len(body["texts"])
    return [{"index": i, "score": 1.0 - i / n} for i in reversed(range(n))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ against the server


@pytest.mark.parametrize("api", ["tei", "cohere", "jina"])
def test_each_dialect_matches_the_local_engine(server, engine, api):
    expected = engine.score(QUERY, DOCS).scores
    with RemoteReranker(server.url, api=api, api_key=KEY) as remote:
        got = remote.score(QUERY, DOCS)
        assert got.scores == pytest.approx(expected, abs=1e-6)  # input order, not rank order
        assert got.tokens > 0
        assert [r.index for r in remote.rerank(QUERY, DOCS, top_n=2)] == sorted(
            range(len(DOCS)), key=lambda i: -expected[i])[:2]
        pairs = [(QUERY, DOCS[0]), ("black holes", DOCS[3]), (QUERY, DOCS[1])]
        assert remote.score_pairs(pairs).scores == pytest.approx(
            [expected[0], engine.score("black holes", [DOCS[3]]).scores[0], expected[1]], abs=1e-6)


def test_endpoint_urls_pick_the_dialect(server):
    assert RemoteReranker(server.url + "/v2/rerank").api == "cohere"
    assert RemoteReranker(server.url + "/v1/rerank/").api == "jina"
    assert RemoteReranker(server.url + "/rerank").api == "tei"
    assert RemoteReranker(server.url).endpoint == server.url + "/rerank"
    assert RemoteReranker(server.url, api="cohere").endpoint == server.url + "/v2/rerank"
    with pytest.raises(InputError):
        RemoteReranker("ftp://example.org")
    with pytest.raises(InputError):
        RemoteReranker(server.url, api="grpc")
    with pytest.raises(InputError):
        RemoteReranker(server.url, batch_tokens=10)


def test_client_and_server_read_one_table_of_dialect_paths():
    """wire.RERANK_PATHS: each dialect's path is the server's route answering in that dialect and the client's
    endpoint for it; the client also finds it under a prefix, the server (routes at the root) does not."""
    from crossrank.rerank.remote import APIS
    from crossrank.serve import dialects
    from crossrank.serve.routes import router
    from crossrank.wire import RERANK_PATHS, dialect_at

    routed = {route.path for route in router.routes}
    assert set(APIS) == {"auto", *RERANK_PATHS}
    for name, path in RERANK_PATHS.items():
        assert path in routed and dialects.dialect_of(path) == name and dialect_at("/api" + path + "/") == name
        assert RemoteReranker("http://127.0.0.1:9", api=name).endpoint == "http://127.0.0.1:9" + path
    assert dialects.dialect_of("/api/v2/rerank") == dialects.NATIVE and dialect_at("/search") is None


def test_wrong_key_is_a_clear_error_and_not_retried(server):
    remote = RemoteReranker(server.url, api_key="wrong", retries=3)
    with pytest.raises(RerankerUnavailable, match="401"):
        remote.score(QUERY, DOCS)
    assert remote.attempts == 1
    assert remote.breaker.state == "closed"  # the service answered; nothing to trip over


def test_large_lists_are_split(server, engine):
    remote = RemoteReranker(server.url, api="tei", api_key=KEY, max_documents_per_request=2)
    assert remote.score(QUERY, DOCS).scores == pytest.approx(engine.score(QUERY, DOCS).scores, abs=1e-6)
    assert remote.calls == 3


def test_load_reranker_builds_a_remote_one(server):
    from crossrank.rerank import load_reranker

    rr = load_reranker(server.url + "/v2/rerank", cache_size=0, api_key=KEY, timeout=5)
    assert isinstance(rr, RemoteReranker) and rr.api == "cohere"
    assert len(rr.score(QUERY, DOCS)) == len(DOCS)


# ------------------------------------------------------------------------------------------------ fake server


@pytest.mark.slow
def test_retries_429_then_succeeds_honouring_retry_after():
    fake = Fake((429, {"Retry-After": "0.3"}, {"error": "Model is overloaded", "error_type": "overloaded"}),
                (200, {}, tei_ok))
    try:
        remote = RemoteReranker(fake.url, retries=2, backoff=0.01)
        t0 = time.monotonic()
        scores = remote.score(QUERY, DOCS[:3])
        assert time.monotonic() - t0 >= 0.29  # waited as told, not the 10 ms backoff
        assert scores.scores == pytest.approx([1.0, 2 / 3, 1 / 3])  # back in input order
        assert remote.attempts == 2 and len(fake.requests) == 2
        path, headers, body = fake.requests[-1]
        assert path == "/rerank" and body["texts"] == DOCS[:3] and body["truncate"] is True
    finally:
        fake.close()


@pytest.mark.slow
def test_503_retries_then_gives_up_with_status_and_body():
    fake = Fake((503, {}, {"error": "warming up", "error_type": "unhealthy"}))
    try:
        remote = RemoteReranker(fake.url, retries=2, backoff=0.01)
        with pytest.raises(RerankerUnavailable) as e:
            remote.score(QUERY, DOCS)
        assert "503" in str(e.value) and "warming up" in str(e.value) and "3 attempts" in str(e.value)
        assert len(fake.requests) == 3
    finally:
        fake.close()


@pytest.mark.parametrize(
    "status, payload, match",
    [
        (400, {"message": "invalid request: documents"}, "400.*invalid request"),
        (200, b"<html>not json</html>", "unreadable"),
        (200, [{"index": 0, "score": 0.5}], "no score for"),
        (200, [{"index": 7, "score": 0.5}, {"index": 0, "score": 0.1}], "out of range"),
    ],
)
def test_bad_answers_raise_unavailable_without_retry(status, payload, match):
    fake = Fake((status, {}, payload))
    try:
        remote = RemoteReranker(fake.url, retries=3, backoff=0.01)
        with pytest.raises(RerankerUnavailable, match=match):
            remote.score(QUERY, DOCS[:2])
        assert len(fake.requests) == 1
    finally:
        fake.close()


@pytest.mark.slow
def test_cohere_and_voyage_answers_are_read():
    def cohere_ok(body):
        n = len(body["documents"])
        return {"id": "x", "results": [{"index": i, "relevance_score": i / n} for i in reversed(range(n))]}

    def voyage_ok(body):
        n = len(body["documents"])
        return {"object": "list", "data": [{"index": i, "relevance_score": i / n} for i in range(n)]}

    for api, answer in (("cohere", cohere_ok), ("jina", voyage_ok)):
        fake = Fake((200, {}, answer))
        try:
            remote = RemoteReranker(fake.url, api=api, model="m", api_key="k")
            assert remote.score(QUERY, DOCS[:4]).scores == pytest.approx([0, 0.25, 0.5, 0.75])
            path, headers, body = fake.requests[0]
            assert body["model"] == "m" and body["top_n"] == 4
            assert headers["Authorization"] == "Bearer k"
        finally:
            fake.close()


# ------------------------------------------------------------------------------------------------ circuit breaker


@pytest.mark.slow
def test_circuit_opens_on_a_closed_port_then_half_opens_and_recovers(engine):
    port = free_port()
    remote = RemoteReranker(f"http://127.0.0.1:{port}", retries=1, backoff=0.01, circuit_breaker_failures=2,
                            circuit_reset_s=0.5)
    for _ in range(2):
        with pytest.raises(RerankerUnavailable, match="cannot reach"):
            remote.score(QUERY, DOCS)
    assert remote.breaker.state == "open" and remote.attempts == 4
    t0 = time.monotonic()
    with pytest.raises(RerankerUnavailable, match="circuit open"):
        remote.score(QUERY, DOCS)
    assert time.monotonic() - t0 < 0.1 and remote.attempts == 4  # failed fast, no request
    time.sleep(0.55)
    with pytest.raises(RerankerUnavailable, match="cannot reach"):  # half-open trial fails: open again
        remote.score(QUERY, DOCS)
    assert remote.breaker.state == "open" and remote.attempts == 5
    with ServerThread(create_app(engine), port=port):
        with pytest.raises(RerankerUnavailable, match="circuit open"):
            remote.score(QUERY, DOCS)
        time.sleep(0.55)
        assert len(remote.score(QUERY, DOCS)) == len(DOCS)  # trial succeeds
        assert remote.breaker.state == "closed"


@pytest.mark.slow
def test_time_budget_bounds_attempts_and_retries_against_a_hung_service():
    from conftest import SilentServer

    with SilentServer() as hung:
        remote = RemoteReranker(hung.url, timeout=10, retries=2, circuit_breaker_failures=1)
        t0 = time.monotonic()
        with pytest.raises(RerankTimeout, match="time budget"):
            remote.score(QUERY, DOCS, timeout_s=0.5)
        assert time.monotonic() - t0 < 2.0 and remote.attempts == 1  # not 3 x 10 s
        # our budget, not the service, decided: the circuit stays closed (a 1-failure breaker would open)
        assert remote.breaker.state == "closed"
    with pytest.raises(InputError, match="timeout_s"):
        remote.score(QUERY, DOCS, timeout_s=0)


@pytest.mark.slow
def test_time_budget_leaves_no_room_for_a_long_retry():
    fake = Fake((503, {"Retry-After": "5"}, {"error": "busy", "error_type": "overloaded"}))
    try:
        remote = RemoteReranker(fake.url, retries=2, backoff=0.01)
        t0 = time.monotonic()
        with pytest.raises(RerankerUnavailable, match="503.*no room for a retry") as info:
            remote.score(QUERY, DOCS[:2], timeout_s=1.0)
        assert not isinstance(info.value, RerankTimeout)  # the service failed; the budget only stopped retries
        assert time.monotonic() - t0 < 1.0 and len(fake.requests) == 1
    finally:
        fake.close()


def test_breaker_state_machine():
    now = [0.0]
    b = CircuitBreaker(failures=2, reset_s=5, clock=lambda: now[0])
    assert b.before_call() is False
    b.failure("x")
    assert b.state == "closed"
    b.failure("y")
    assert b.state == "open"
    with pytest.raises(RerankerUnavailable, match="last: y"):
        b.before_call()
    now[0] = 5.0
    assert b.before_call() is True  # the trial
    with pytest.raises(RerankerUnavailable, match="trial"):
        b.before_call()  # only one at a time
    b.success()
    assert b.state == "closed" and b.before_call() is False


# ------------------------------------------------------------------------------------------------ pipeline fault test


@pytest.mark.slow
def test_pipeline_falls_back_while_the_service_is_down_and_recovers(engine, small_corpus):
    from crossrank.corpus import load_corpus
    from crossrank.pipeline import Pipeline
    from crossrank.retrieve import build_index

    index = build_index(load_corpus(small_corpus), methods=["bm25"], progress=False)
    first = ServerThread(create_app(engine)).start()
    port = first.port
    remote = RemoteReranker(first.url, api="cohere", timeout=2, retries=1, backoff=0.01,
                            circuit_breaker_failures=2, circuit_reset_s=0.3)
    query = "how do cells and plants get energy from glucose"
    with Pipeline(index.retriever("bm25"), remote, k=5, n=3) as pipe:
        up = pipe.search(query)
        assert up.reranked and up.reason is None and up.hits[0].rerank_score is not None
        first_stage = [h.id for h in pipe.search(query, rerank=False).hits]
        assert first_stage
        first.stop()
        for _ in range(4):  # connection refused, then the open circuit: first-stage order every time
            down = pipe.search(query)
            assert down.reranked is False and "reranker failed" in down.reason
            assert [h.id for h in down.hits] == first_stage
            assert all(h.rerank_score is None for h in down.hits)
        assert remote.breaker.state == "open"
        with ServerThread(create_app(engine), port=port):
            time.sleep(0.35)
            back = pipe.search(query)
            assert back.reranked and back.reason is None
            assert [h.doc_id for h in back.hits] == [h.doc_id for h in up.hits]


@pytest.mark.slow
def test_auto_fusion_over_a_remote_crossrank_server_is_the_server_recommendation(tiny_model_dir):
    """A crossrank server's /info carries its engine's recommendation; the remote client reports it, so
    fusion="auto" orders as the server's own /search would. Another service (no /info) recommends nothing."""
    from crossrank.pipeline import Fusion, resolve_fusion
    from crossrank.rerank.engine import CrossEncoderReranker

    served = CrossEncoderReranker(str(tiny_model_dir), dtype="fp32", device="cpu", activation="sigmoid")
    served.recommended = {"fusion": {"method": "confidence", "weight": 0.2}, "min_score": 0.06}
    with ServerThread(create_app(served)) as s:
        for url in (s.url, s.url + "/v2/rerank"):
            remote = RemoteReranker(url)
            assert remote.info()["recommended"] == served.recommended
            assert resolve_fusion("auto", remote) == Fusion("confidence", 0.2)
    fake = Fake((200, {}, {"results": []}))  # a service without GET /info (it answers 501)
    try:
        other = RemoteReranker(fake.url, api="cohere")
        assert "recommended" not in other.info()
        assert resolve_fusion("auto", other) == Fusion.parse(None)  # the cross-encoder's order
    finally:
        fake.close()
