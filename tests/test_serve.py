"""The HTTP service against a real uvicorn server on a loopback port (tiny model): every route's success and
error shapes, the real Cohere SDK, auth, body limit, queue full, deadlines, disconnects, batching on/off."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import RERANK_DOCS, RERANK_QUERY, Gated
from crossrank.serve import ServeConfig, ServerThread, create_app

DOCS, QUERY = RERANK_DOCS, RERANK_QUERY
LONG = " ".join(f"word{i % 50}" for i in range(900))  # well over 512 tokens
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    return CrossEncoderReranker(str(tiny_model_dir), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, config=ServeConfig(max_documents=8))
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def secured(engine):
    app = create_app(engine, config=ServeConfig(api_key=KEY, max_body_bytes=4096))
    with ServerThread(app) as s:
        yield s


def _wait_for(predicate, timeout=10.0):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if predicate():
            return True
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def _queued(url) -> int:
    return httpx.get(url + "/health").json()["queue_requests"]


def _metric(url, name) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _post(url, path, body, **kw):
    return httpx.post(url + path, json=body, timeout=kw.pop("timeout", 30), **kw)


# ------------------------------------------------------------------------------------------------ TEI /rerank


def test_tei_rerank_wire_format(client, engine):
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-crossrank-truncated"] == "0"
    assert int(r.headers["x-compute-tokens"]) > 0
    ranks = r.json()
    assert isinstance(ranks, list) and len(ranks) == len(DOCS)
    assert all(set(item) == {"index", "score"} for item in ranks)  # no text unless asked
    assert sorted(item["index"] for item in ranks) == list(range(len(DOCS)))
    scores = [item["score"] for item in ranks]
    assert scores == sorted(scores, reverse=True)
    expected = engine.score(QUERY, DOCS).scores
    for item in ranks:
        assert item["score"] == pytest.approx(expected[item["index"]], abs=1e-6)
        assert 0.0 <= item["score"] <= 1.0


def test_tei_return_text_and_raw_scores(client):
    probs = {i["index"]: i["score"] for i in client.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()}
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True, "raw_scores": True})
    assert r.status_code == 200
    for item in r.json():
        assert item["text"] == DOCS[item["index"]]
        assert 1.0 / (1.0 + math.exp(-item["score"])) == pytest.approx(probs[item["index"]], abs=1e-6)


def test_tei_truncation(client, server):
    body = {"query": QUERY, "texts": [DOCS[0], LONG]}
    r = client.post("/rerank", json=body)  # truncate unset: the server's auto_truncate (on)
    assert r.status_code == 200 and r.headers["x-crossrank-truncated"] == "1"
    two_halves = "apple " * 600 + "volcano lava magma " * 200
    right = client.post("/rerank", json={"query": QUERY, "texts": [two_halves], "raw_scores": True})
    left = client.post("/rerank", json={"query": QUERY, "texts": [two_halves], "raw_scores": True,
                                        "truncate": True, "truncation_direction": "Left"})
    assert right.headers["x-crossrank-truncated"] == left.headers["x-crossrank-truncated"] == "1"
    assert left.json()[0]["score"] != pytest.approx(right.json()[0]["score"], abs=1e-7)  # kept the other end
    r = client.post("/rerank", json={**body, "truncate": False})
    assert r.status_code == 422
    assert r.json()["error_type"] == "tokenizer" and "input 1" in r.json()["error"]
    r = client.post("/rerank", json={**body, "long_documents": "chunk"})  # windows, max score: nothing cut
    assert r.status_code == 200 and r.headers["x-crossrank-truncated"] == "0"
    assert _metric(server.url, "crossrank_truncated_pairs_total") >= 2


@pytest.mark.parametrize(
    "body, status, error_type",
    [
        ({"query": QUERY, "texts": []}, 400, "empty"),
        ({"query": "   ", "texts": ["a"]}, 400, "empty"),
        ({"query": QUERY, "texts": ["a"] * 9}, 413, "validation"),
        ({"query": 1, "texts": ["a"]}, 422, "validation"),
        ({"query": QUERY, "texts": "a"}, 422, "validation"),
        ({"query": QUERY, "texts": [["a"]]}, 422, "validation"),
        ({"texts": ["a"]}, 422, "validation"),
        ({"query": QUERY, "texts": ["a"], "raw_scores": "yes"}, 422, "validation"),
        ({"query": QUERY, "texts": ["a"], "truncation_direction": "up"}, 422, "validation"),
        ({"query": QUERY, "texts": ["a"], "deadline_ms": -5}, 422, "validation"),
        ([1, 2, 3], 422, "validation"),
    ],
)
def test_tei_errors(client, body, status, error_type):
    r = client.post("/rerank", json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "error_type"}
    assert r.json()["error_type"] == error_type


def test_malformed_json_and_unknown_routes(client):
    r = client.post("/rerank", content=b'{"query": "x", "texts": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error_type"] == "validation"
    r = client.post("/rerank", content=b"\xff\xfe\x00garbage", headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and "error" in r.json()
    assert client.get("/nope").status_code == 404
    assert client.get("/rerank").status_code == 405
    assert client.get("/rerank").json()["error_type"] == "method_not_allowed"


def test_deadline_header_must_be_a_number(client):
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS}, headers={"X-Crossrank-Deadline-Ms": "soon"})
    assert r.status_code == 400 and "deadline" in r.json()["error"].lower()


# ------------------------------------------------------------------------------------------------ Cohere /v2/rerank


def test_cohere_sdk_gets_correct_results(server, engine):
    import cohere

    co = cohere.ClientV2(api_key="anything", base_url=server.url)
    res = co.rerank(model="crossrank", query=QUERY, documents=DOCS, top_n=2)
    expected = engine.score(QUERY, DOCS).scores
    best = sorted(range(len(DOCS)), key=lambda i: -expected[i])[:2]
    assert [r.index for r in res.results] == best
    for r in res.results:
        assert r.relevance_score == pytest.approx(expected[r.index], abs=1e-6)
    assert res.id
    assert res.meta.api_version.version == "2"
    assert res.meta.billed_units.search_units == 1


def test_cohere_sdk_errors(server, secured):
    import cohere

    co = cohere.ClientV2(api_key="anything", base_url=server.url)
    with pytest.raises(cohere.errors.BadRequestError) as e:
        co.rerank(model="crossrank", query=QUERY, documents=[])
    assert e.value.status_code == 400 and "documents" in e.value.body["message"]
    with pytest.raises(cohere.errors.BadRequestError):
        co.rerank(model="crossrank", query=QUERY, documents=["d"] * 9)  # over max_documents: 400 in Cohere's dialect
    bad = cohere.ClientV2(api_key="wrong", base_url=secured.url)
    with pytest.raises(cohere.errors.UnauthorizedError):
        bad.rerank(model="crossrank", query=QUERY, documents=DOCS)
    good = cohere.ClientV2(api_key=KEY, base_url=secured.url)
    assert len(good.rerank(model="crossrank", query=QUERY, documents=DOCS).results) == len(DOCS)


def test_cohere_wire_format(client):
    r = client.post("/v2/rerank", json={"model": "m", "query": QUERY, "documents": DOCS, "top_n": 3,
                                        "max_tokens_per_doc": 4, "priority": 0})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"id", "results", "meta"}
    assert len(body["results"]) == 3 and all(set(x) == {"index", "relevance_score"} for x in body["results"])
    assert body["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    assert int(r.headers["x-crossrank-truncated"]) >= 3  # every document is longer than 4 tokens
    for bad in ({"query": QUERY, "documents": DOCS, "top_n": 0}, {"query": QUERY, "documents": [1]}, {"query": QUERY}):
        r = client.post("/v2/rerank", json=bad)
        assert r.status_code == 400 and set(r.json()) == {"id", "message"}, r.text


def test_usage_is_what_the_engine_ran_after_the_servers_cuts(engine):
    """Usage comes from the engine's own count (``count_inputs``) of the pairs as scored: Cohere's
    max_tokens_per_doc and left truncation applied first."""
    from crossrank.serve.engines import Engines

    engines = Engines(engine, None)
    texts = DOCS + [LONG]
    for options in ({}, {"max_tokens_per_doc": 4}, {"truncation_direction": "left"}):
        result = engines.score_pairs([(QUERY, t) for t in texts], options)
        assert engines.usage(QUERY, texts, options, result) == (result.tokens, len(texts)), options


# ------------------------------------------------------------------------------------------------ Jina /v1/rerank


def test_jina_wire_format(client, engine):
    r = client.post("/v1/rerank", json={"model": "jina-reranker", "query": QUERY, "documents": DOCS, "top_n": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "jina-reranker"
    assert body["usage"]["total_tokens"] > 0
    expected = engine.score(QUERY, DOCS).scores
    assert [x["index"] for x in body["results"]] == sorted(range(len(DOCS)), key=lambda i: -expected[i])[:2]
    for x in body["results"]:
        assert x["document"] == {"text": DOCS[x["index"]]}
        assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=1e-6)
    # Jina documents as {"text": ...} objects, not echoed; a Voyage request (top_k) gets Voyage's shape.
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": [{"text": t} for t in DOCS], "top_n": 1,
                                        "return_documents": False})
    assert r.status_code == 200 and len(r.json()["results"]) == 1 and "document" not in r.json()["results"][0]
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_k": 1})
    assert r.status_code == 200 and len(r.json()["data"]) == 1 and "document" not in r.json()["data"][0]
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": [DOCS[0], LONG], "truncation": False})
    assert r.status_code == 422 and set(r.json()) == {"detail"}
    r = client.post("/v1/rerank", json={"query": QUERY})
    assert r.status_code == 422 and set(r.json()) == {"detail"}
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": ["x"] * 9})
    assert r.status_code == 413 and set(r.json()) == {"detail"}


# ------------------------------------------------------------------------------------------------ service routes


def test_health_info_metrics_docs_page(client):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["dtype"] == "fp32" and info["max_length"] == 512 and info["version"]
    assert info["limits"]["max_documents"] == 8 and info["batching"] == "dynamic" and info["search"] is False
    client.post("/rerank", json={"query": QUERY, "texts": DOCS})
    text = client.get("/metrics").text
    for name in ("crossrank_requests_total", "crossrank_request_duration_seconds_bucket", "crossrank_queue_seconds",
                 "crossrank_inference_seconds", "crossrank_batch_pairs", "crossrank_batch_tokens",
                 "crossrank_queue_depth_pairs", "crossrank_truncated_pairs_total", "crossrank_cache_hits_total",
                 "crossrank_fallbacks_total"):
        assert name in text, name
    assert 'crossrank_requests_total{route="/rerank",status="200"}' in text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/rerank", "/v2/rerank", "/v1/rerank", "/health", "/info", "/metrics"} <= set(paths)
    assert "/search" not in paths  # no pipeline given
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text.lower()
    assert "<textarea" in html and "http://" not in html and "https://" not in html and " src=" not in html


@pytest.mark.slow
def test_docs_pages_load_nothing_from_another_host(client, secured, monkeypatch):
    """Issue 18 item 10: /docs and /redoc are served from packaged assets, so they work offline."""
    import re

    from crossrank.serve import docs

    assert docs.assets_dir() is not None, "fastapi-offline (a dependency) is not installed"
    for page, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))):
        for c in (client, httpx.Client(base_url=secured.url, timeout=30)):  # open without the API key too
            got = c.get(page)
            assert got.status_code == 200 and got.headers["content-type"].startswith("text/html")
            assert not re.findall(r"(?:https?:)?//[\w.-]+\.\w", got.text), page  # no absolute or protocol-relative URL
            loaded = re.findall(r"""(?:src|href)=["']([^"']+)["']""", got.text) + re.findall(r"url: ?'([^']+)'", got.text)
            assert {f"/docs/assets/{a}" for a in assets} <= set(loaded), loaded
            for url in loaded:
                assert url.startswith("/"), url
                fetched = c.get(url)
                assert fetched.status_code == 200 and len(fetched.content) > 100, url
    assert client.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/docs/assets/..%2Fcore.py").status_code == 404
    assert client.get("/docs/assets/core.py").status_code == 404
    assert '"validatorUrl": null' in client.get("/docs").text  # no badge from the online validator

    monkeypatch.setattr(docs, "assets_dir", lambda: None)  # the package missing: say so, point to the document
    page = client.get("/docs")
    assert page.status_code == 200 and "fastapi-offline" in page.text and "/openapi.json" in page.text
    assert "swagger-ui-bundle" not in page.text and "//" not in page.text.replace("<!doctype", "")


def test_api_key(secured):
    url = secured.url
    r = _post(url, "/rerank", {"query": QUERY, "texts": DOCS})
    assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    r = _post(url, "/rerank", {"query": QUERY, "texts": DOCS}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = _post(url, "/v1/rerank", {"query": QUERY, "documents": DOCS})
    assert r.status_code == 401 and set(r.json()) == {"detail"}
    r = _post(url, "/rerank", {"query": QUERY, "texts": DOCS}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    assert 'route="/rerank",status="401"' in httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert httpx.get(url + "/health").status_code == 200  # open
    assert httpx.get(url + "/info").status_code == 401
    assert httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_body_limit(secured):
    auth = {"Authorization": f"Bearer {KEY}"}
    big = {"query": QUERY, "texts": ["x" * 1000] * 5}
    r = _post(secured.url, "/rerank", big, headers=auth)
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
    payload = json.dumps(big).encode()

    def chunks():  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(payload), 1000):
            yield payload[i : i + 1000]

    r = httpx.post(secured.url + "/v2/rerank", content=chunks(), headers={**auth, "content-type": "application/json"})
    assert r.status_code == 413 and set(r.json()) == {"id", "message"}


# ------------------------------------------------------------------------------------------------ batcher behaviour


@pytest.fixture()
def gated_server(engine, request):
    opts = getattr(request, "param", {})
    gated = Gated(engine)
    app = create_app(gated, config=ServeConfig(**{"max_queue_requests": 3, "max_queue_pairs": 100, **opts}))
    with ServerThread(app) as s:
        yield s, gated
        gated.gate.set()


def _hold_worker(server, gated, pool):
    """Close the gate and park one request in the worker; returns its future."""
    gated.gate.clear()
    gated.entered.clear()
    first = pool.submit(_post, server.url, "/rerank", {"query": "first", "texts": DOCS})
    assert gated.entered.wait(10)
    return first


def test_queue_full_answers_429(gated_server):
    server, gated = gated_server
    with ThreadPoolExecutor(8) as pool:
        first = _hold_worker(server, gated, pool)
        queued = [pool.submit(_post, server.url, "/rerank", {"query": f"q{i}", "texts": DOCS}) for i in range(3)]
        _wait_for(lambda: _queued(server.url) == 3)
        r = _post(server.url, "/rerank", {"query": "one too many", "texts": DOCS})
        assert r.status_code == 429 and r.json()["error_type"] == "overloaded" and r.headers["retry-after"]
        r = _post(server.url, "/v2/rerank", {"query": "one too many", "documents": DOCS})
        assert r.status_code == 429 and set(r.json()) == {"id", "message"}
        gated.gate.set()
        assert first.result().status_code == 200
        assert [f.result().status_code for f in queued] == [200, 200, 200]
    assert "one too many" not in gated.queries_seen()


@pytest.mark.slow
def test_deadline_drops_before_inference(gated_server):
    server, gated = gated_server
    with ThreadPoolExecutor(4) as pool:
        first = _hold_worker(server, gated, pool)
        t0 = time.monotonic()
        r = _post(server.url, "/rerank", {"query": "late", "texts": DOCS}, headers={"X-Crossrank-Deadline-Ms": "150"})
        assert r.status_code == 504 and r.json()["error_type"] == "timeout"
        assert time.monotonic() - t0 < 5
        r = _post(server.url, "/v1/rerank", {"query": "late too", "documents": DOCS, "deadline_ms": 100})
        assert r.status_code == 504 and set(r.json()) == {"detail"}
        gated.gate.set()
        assert first.result().status_code == 200
    _wait_for(lambda: _metric(server.url, 'crossrank_dropped_requests_total{reason="deadline"}') >= 2)
    assert not {"late", "late too"} & gated.queries_seen()


@pytest.mark.slow
def test_disconnected_client_is_dropped(gated_server):
    server, gated = gated_server
    with ThreadPoolExecutor(4) as pool:
        first = _hold_worker(server, gated, pool)
        with pytest.raises(httpx.ReadTimeout):
            _post(server.url, "/rerank", {"query": "gone", "texts": DOCS}, timeout=0.3)
        _wait_for(lambda: _metric(server.url, 'crossrank_requests_total{route="/rerank",status="499"}') >= 1)
        gated.gate.set()
        assert first.result().status_code == 200
        assert _post(server.url, "/rerank", {"query": "after", "texts": DOCS}).status_code == 200
    assert "gone" not in gated.queries_seen()
    assert _metric(server.url, 'crossrank_dropped_requests_total{reason="cancelled"}') >= 1


@pytest.mark.parametrize("gated_server", [{"batching": True}, {"batching": False}], indirect=True)
@pytest.mark.slow
def test_cross_request_batching_switch(gated_server):
    server, gated = gated_server
    batching = server.app.state.crossrank.config.batching
    with ThreadPoolExecutor(8) as pool:
        first = _hold_worker(server, gated, pool)
        waiting = []
        for i in range(3):  # in a known arrival order
            waiting.append(pool.submit(_post, server.url, "/rerank", {"query": f"q{i}", "texts": DOCS}))
            _wait_for(lambda i=i: _queued(server.url) == i + 1)
        gated.gate.set()
        assert first.result().status_code == 200
        assert [f.result().status_code for f in waiting] == [200, 200, 200]
    later = [sorted({q for q, _ in call}) for call in gated.calls[1:]]
    if batching:
        assert later == [["q0", "q1", "q2"]]  # one forward pass for the three waiting requests
    else:
        assert later == [["q0"], ["q1"], ["q2"]]  # each alone, in arrival order


def test_engine_error_is_a_500_without_traceback_and_spares_the_others(gated_server):
    server, gated = gated_server
    with ThreadPoolExecutor(4) as pool:
        first = _hold_worker(server, gated, pool)
        boom = pool.submit(_post, server.url, "/rerank", {"query": "boom", "texts": DOCS})
        fine = pool.submit(_post, server.url, "/rerank", {"query": "fine", "texts": DOCS})
        _wait_for(lambda: _queued(server.url) == 2)
        gated.gate.set()
        assert first.result().status_code == 200
        r = boom.result()
        assert r.status_code == 500 and r.json() == {"error": "Inference failed", "error_type": "backend"}
        assert "Traceback" not in r.text
        assert fine.result().status_code == 200  # packed with the bad one, isolated and retried alone


# ------------------------------------------------------------------------------------------------ /search


@pytest.mark.slow
def test_search_route(engine, small_corpus):
    from crossrank.corpus import load_corpus
    from crossrank.retrieve import build_index

    index = build_index(load_corpus(small_corpus), methods=["bm25"], progress=False)
    app = create_app(engine, index=index, retriever="bm25", k=5, n=3, config=ServeConfig(max_search_k=50))
    with ServerThread(app) as s:
        r = _post(s.url, "/search", {"query": "how do cells get energy", "k": 4, "n": 2})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["reranked"] is True and body["retriever"] == "bm25" and len(body["hits"]) == 2
        assert set(body["timings"]) == {"retrieve_ms", "rerank_ms", "total_ms"}
        assert {"id", "doc_id", "rank", "first_stage_rank", "rerank_score", "score"} <= set(body["hits"][0])
        first = _post(s.url, "/search", {"query": "how do cells get energy", "rerank": False}).json()
        assert first["reranked"] is False and first["hits"][0]["rerank_score"] is None
        r = _post(s.url, "/search", {"query": " "})
        assert r.status_code == 400 and set(r.json()) == {"error", "error_type"}
        # a k below the server's n: at most k hits, not an error; an explicit n above k is one
        small_k = _post(s.url, "/search", {"query": "how do cells get energy", "k": 2})
        assert small_k.status_code == 200 and len(small_k.json()["hits"]) == 2, small_k.text
        r = _post(s.url, "/search", {"query": "x", "k": 2, "n": 3})
        assert r.status_code == 400 and r.json()["error"].startswith("n=3 is more than k=2")
        assert _post(s.url, "/search", {"query": "x", "k": 51}).status_code == 422
        assert _post(s.url, "/search", {"query": "x", "retriever": "dense"}).status_code == 400  # no dense part
        assert _post(s.url, "/search", {"query": "x", "retriever": "magic"}).status_code == 422
        assert httpx.get(s.url + "/info").json()["retrievers"] == ["bm25"]
        assert "/search" in httpx.get(s.url + "/openapi.json").json()["paths"]


def test_search_defaults_are_server_settings(engine, small_corpus):
    """/search's default K and N are ServeConfig fields (checked there, by the pipeline's rule), the command lines'
    --k / --n, and what /info reports; create_app's k / n replace them on a copy of the config."""
    from crossrank.corpus import load_corpus
    from crossrank.errors import InputError
    from crossrank.retrieve import build_index
    from crossrank.serve.config import SETTINGS

    assert ServeConfig().search_defaults() == (100, 10)  # as before the move
    assert ServeConfig(search_k=4).search_defaults() == (4, 4)  # N: 10, or K when K is smaller
    with pytest.raises(InputError, match="n=5 is more than k=3"):
        ServeConfig(search_k=3, search_n=5)
    with pytest.raises(InputError, match="k must be a positive integer"):
        ServeConfig(search_k=0)
    assert {s.name: s.field for s in SETTINGS}.items() >= {"k": "search_k", "n": "search_n"}.items()

    index = build_index(load_corpus(small_corpus), methods=["bm25"], progress=False)
    config = ServeConfig(search_k=6)
    app = create_app(engine, index=index, retriever="bm25", config=config)
    with ServerThread(app) as s:
        assert httpx.get(s.url + "/info").json()["search_defaults"] == {"k": 6, "n": 6}
        assert _post(s.url, "/search", {"query": "how do cells get energy"}).status_code == 200
        pipe = app.state.crossrank.search.get(None)
        assert (pipe.k, pipe.n) == (6, 6)
    app = create_app(engine, index=index, retriever="bm25", n=2, config=config)
    assert app.state.crossrank.config.search_defaults() == (6, 2) and config.search_n is None
    with ServerThread(create_app(engine)) as s:
        assert httpx.get(s.url + "/info").json()["search_defaults"] is None


@pytest.mark.slow
def test_search_loads_its_models_at_startup(engine, small_corpus):
    """The first /search must not pay for the bi-encoder load: the server warms its default retriever up."""
    from crossrank.corpus import load_corpus
    from crossrank.retrieve import build_index

    index = build_index(load_corpus(small_corpus), methods=["dense"], progress=False)
    app = create_app(engine, index=index, retriever="dense", k=5, n=3)
    with ServerThread(app) as s:
        dense = app.state.crossrank.search.get(None).retriever
        assert dense._model is not None and dense._query_encoder_ready  # before any request
        r = _post(s.url, "/search", {"query": "how do cells get energy", "k": 4, "n": 2})
        assert r.status_code == 200, r.text
        assert app.state.crossrank.search.get(None).retriever is dense  # the warmed-up one serves it


@pytest.mark.slow
def test_search_ranks_as_the_pipeline_and_the_cli_do(small_corpus, tmp_path):
    """One final order everywhere: POST /search, Pipeline(fusion="auto", unit="document") and `crossrank search
    --json` return the same documents in the same order with the bundled default (its recommended fusion); the
    body's `fusion` and `unit` change what /search returns."""
    from conftest import run_cli
    from crossrank.corpus import load_corpus
    from crossrank.pipeline import Pipeline
    from crossrank.rerank import load_reranker
    from crossrank.rerank.bundled import bundle_available
    from crossrank.retrieve import build_index

    if not bundle_available():
        pytest.skip("the bundled default reranker is not in this checkout")
    reranker = load_reranker("default")
    assert reranker.info()["recommended"]["fusion"]["method"] != "none"  # auto then differs from CE order
    # short passages, so documents span several of them
    index = build_index(load_corpus(small_corpus), tmp_path / "idx", methods=["bm25"], chunk_tokens=8,
                        chunk_overlap=0, progress=False)
    query = "what do plants, cells, mitochondria and the pancreas do with glucose, oxygen, ATP and light?"
    with Pipeline(index.retriever("bm25"), reranker, k=12, n=5, fusion="auto", unit="document") as pipe:
        want = [h.doc_id for h in pipe.search(query).hits]
    assert len(want) == len(set(want)) > 1
    cli = run_cli("search", str(tmp_path / "idx"), query, "--retriever", "bm25", "--k", "12", "--n", "5", "--json")
    assert cli.returncode == 0, cli.stderr
    assert [h["doc_id"] for h in json.loads(cli.stdout)["hits"]] == want

    app = create_app(reranker, index=index, retriever="bm25")
    with ServerThread(app) as s:
        def search(**extra):
            r = _post(s.url, "/search", {"query": query, "k": 12, "n": 5, **extra})
            assert r.status_code == 200, r.text
            return r.json()["hits"]

        assert [h["doc_id"] for h in search()] == want
        passages = search(unit="passage")
        assert len({h["doc_id"] for h in passages}) < len(passages)  # a document takes several passage hits
        by_relevance = search(unit="passage", fusion="none")
        scores = [h["rerank_score"] for h in by_relevance]
        assert scores == sorted(scores, reverse=True)  # fusion none: the cross-encoder's own order
        assert [h["id"] for h in by_relevance] != [h["id"] for h in passages]  # and the fusion changed it
