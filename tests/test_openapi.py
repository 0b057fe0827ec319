"""The OpenAPI document says what the server does (issue 18 item 9).

A bounded, seeded schemathesis run (``st run --checks all``, every operation, against a real uvicorn server on
loopback with the tiny model, an API key and a BM25 index) must find nothing; the two built-in checks it narrows
and why are in ``schemathesis_hooks.py`` and ``schemathesis.toml``. Then direct tests of what that run fixed: JSON
Schema bounds (not pydantic keywords), the security scheme, the documented statuses and error bodies per dialect,
``/metrics`` as text.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from crossrank.serve import ServeConfig, ServerThread, create_app

KEY = "openapi-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# pydantic's names for bounds; in a JSON Schema they are silently ignored (JSON Schema says minimum, maxLength...)
PYDANTIC_KEYWORDS = {"gt", "ge", "lt", "le", "min_length", "max_length", "multiple_of", "max_digits",
                     "decimal_places", "allow_inf_nan", "strict"}
RERANK_ROUTES = ("/rerank", "/v2/rerank", "/v1/rerank")


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    return CrossEncoderReranker(str(tiny_model_dir), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    """What the schemathesis run tests: an API key, /search over BM25, small limits (cheap cases on two cores;
    the document states them, so they bound what is generated)."""
    from conftest import SAMPLE_DOCS
    from crossrank.corpus import load_corpus
    from crossrank.retrieve import build_index

    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(doc) + "\n" for doc in SAMPLE_DOCS), encoding="utf-8")
    index = build_index(load_corpus(path), methods=["bm25"], progress=False)
    config = ServeConfig(api_key=KEY, max_documents=8, max_search_k=50, max_query_chars=500)
    app = create_app(engine, index=index, retriever="bm25", k=5, n=3, config=config)
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope="module")
def spec(server):
    return httpx.get(server.url + "/openapi.json").json()


def _post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, headers={**AUTH, **kw.pop("headers", {})}, timeout=30, **kw)


# ------------------------------------------------------------------------------------------------ schemathesis


@pytest.mark.slow
def test_schemathesis_finds_nothing(server, tmp_path):
    """Every operation, every check, 25 examples each, seed 1: 0 failures (about 35 s on two cores)."""
    from schemathesis_hooks import HOOKS, st_command

    command = st_command(server.url, key=KEY, max_examples=25, seed=1)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "PYTHONIOENCODING": "utf-8"}
    # cwd: st keeps a crash cache (.schemathesis/) in its working directory
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    report = proc.stdout + proc.stderr
    summary = report[report.find("SUMMARY"):] if "SUMMARY" in report else report[-4000:]
    sys.stdout.write(summary)  # shown with -s or -rP
    assert proc.returncode == 0, report[-12000:]
    assert "No issues found" in report and "7 selected / 7 total" in report, summary
    assert re.search(r"\d+ generated, \d+ passed", report), summary


# ------------------------------------------------------------------------------------------------ the document


def _walk(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


def test_bounds_are_json_schema_keywords(spec):
    schemas = spec["components"]["schemas"]
    leaked = [(path, key) for path, key, _ in _walk(schemas)
              if key in PYDANTIC_KEYWORDS and not path.endswith("/properties")]
    assert not leaked, leaked
    deadline = [b for b in schemas["TEIRerankRequest"]["properties"]["deadline_ms"]["anyOf"] if b["type"] == "number"]
    assert deadline == [{"type": "number", "exclusiveMinimum": 0, "maximum": 3_600_000}]
    for name in ("CohereRerankRequest", "JinaRerankRequest", "VoyageRerankRequest", "InfinityRerankRequest",
                 "SearchRequest"):
        assert schemas[name]["properties"]["deadline_ms"]["anyOf"] == [*deadline, {"type": "null"}], name
    header = next(p for p in spec["paths"]["/rerank"]["post"]["parameters"] if p["name"] == "X-Crossrank-Deadline-Ms")
    assert header["in"] == "header" and header["schema"]["exclusiveMinimum"] == 0


def test_the_servers_limits_are_in_the_document(spec):
    schemas = spec["components"]["schemas"]
    tei = schemas["TEIRerankRequest"]["properties"]
    assert tei["texts"]["minItems"] == 1 and tei["texts"]["maxItems"] == 8  # max_documents
    assert tei["query"]["maxLength"] == 500 and "pattern" in tei["query"]  # max_query_chars, not blank
    assert schemas["CohereRerankRequest"]["properties"]["documents"]["maxItems"] == 8
    assert schemas["QueryObject"]["properties"]["text"]["maxLength"] == 500
    search = schemas["SearchRequest"]["properties"]
    assert [b["maximum"] for b in search["k"]["anyOf"] if b["type"] == "integer"] == [50]  # max_search_k
    assert [b["enum"] for b in search["retriever"]["anyOf"] if "enum" in b] == [["bm25"]]  # this index has
    # the tiny cross-encoder has no prompt: an instruction is a 400, so the document allows only null
    for name in ("TEIRerankRequest", "CohereRerankRequest", "JinaRerankRequest", "SearchRequest"):
        assert schemas[name]["properties"]["instruction"]["type"] == "null"
    assert [b["enum"] for b in tei["long_documents"]["anyOf"] if "enum" in b] == [["truncate", "chunk", "focus"]]


def test_blank_query_pattern_is_pythons_white_space():
    """The query pattern is read as ECMA-262 (jsonschema-rs) and as Python (the generator) alike, and it admits a
    string exactly when ``str.strip`` leaves something (what the routes check)."""
    import jsonschema_rs

    from crossrank.serve.dialects import WHITESPACE

    schema = {"type": "string", "pattern": f"[^{WHITESPACE}]"}
    validator = jsonschema_rs.validator_for(schema)
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    for text in spaces + ["".join(spaces)]:
        assert not validator.is_valid(text) and not re.search(schema["pattern"], text), repr(text)
    for text in ("a", " a ", "\ufeff", "\x00", "\u200b", "\x1bx"):
        assert validator.is_valid(text) and re.search(schema["pattern"], text), repr(text)


def test_security_scheme_on_the_protected_routes(spec, server):
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["bearerAuth"][
            "description"]}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if path == "/health":
                assert "security" not in operation and "401" not in operation["responses"]
                assert httpx.get(server.url + path).status_code == 200
                continue
            assert operation["security"] == [{"bearerAuth": []}], path
            assert "401" in operation["responses"], path
            r = httpx.request(method, server.url + path, json={}, timeout=30)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path


def test_no_security_scheme_without_a_key(engine):
    app = create_app(engine)
    doc = app.openapi()
    assert "securitySchemes" not in doc.get("components", {})
    assert all("security" not in op and "401" not in op["responses"]
               for item in doc["paths"].values() for op in item.values())


def _error_schema(spec, path, status):
    ref = spec["paths"][path]["post" if path != "/metrics" else "get"]["responses"][status]["content"][
        "application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]


def test_each_route_documents_its_statuses_and_error_bodies(spec):
    statuses = {
        "/rerank": {"200", "400", "401", "413", "422", "429", "500", "503", "504"},
        "/v2/rerank": {"200", "400", "401", "413", "429", "500", "503", "504"},  # Cohere: 400 for schema errors
        "/v1/rerank": {"200", "400", "401", "413", "422", "429", "500", "503", "504"},
        "/search": {"200", "400", "401", "413", "422", "500", "503"},
    }
    for path, expected in statuses.items():
        assert set(spec["paths"][path]["post"]["responses"]) == expected, path
    assert {_error_schema(spec, "/rerank", s) for s in ("400", "401", "422", "504")} == {"ErrorBody"}
    assert {_error_schema(spec, "/v2/rerank", s) for s in ("400", "401", "413", "504")} == {"CohereErrorBody"}
    assert {_error_schema(spec, "/v1/rerank", s) for s in ("400", "401", "422", "504")} == {"JinaErrorBody"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's list-shaped 422 is not served
    assert set(spec["paths"]["/health"]["get"]["responses"]) == {"200", "400", "503"}
    assert spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"] == {"text/plain": {"schema": {
        "type": "string"}}}


def test_v1_validation_error_matches_the_document(server, spec):
    import jsonschema_rs

    schemas = {"components": spec["components"]}

    def valid(name, body):
        return jsonschema_rs.validator_for({**schemas, "$ref": f"#/components/schemas/{name}"}).is_valid(body)

    r = _post(server, "/v1/rerank", {"query": "q", "documents": "not a list"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str) and valid("JinaErrorBody", r.json())
    r = _post(server, "/v2/rerank", {"query": "q"})
    assert r.status_code == 400 and valid("CohereErrorBody", r.json())
    r = _post(server, "/rerank", {"query": "q"})
    assert r.status_code == 422 and valid("ErrorBody", r.json())
    r = httpx.post(server.url + "/v1/rerank", json={"query": "q", "documents": ["d"]})  # no key
    assert r.status_code == 401 and valid("JinaErrorBody", r.json())


def test_metrics_is_text(server):
    r = httpx.get(server.url + "/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


def test_shared_routes_tell_shapes_apart_as_the_document_does(server, spec):
    """Each body goes to exactly one branch of the route's oneOf, the one the server answers it as."""
    import jsonschema_rs

    def branch(path, body):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        hits = [i for i, b in enumerate(schema["oneOf"])
                if jsonschema_rs.validator_for({"components": spec["components"], **b}).is_valid(body)]
        return hits

    v1 = {"query": "q", "documents": ["a", "b"]}
    assert branch("/v1/rerank", v1) == [0] and "results" in _post(server, "/v1/rerank", v1).json()  # Jina
    voyage = {**v1, "top_k": 1}
    assert branch("/v1/rerank", voyage) == [1] and _post(server, "/v1/rerank", voyage).json()["object"] == "list"
    infinity = {**v1, "raw_scores": False, "top_k": 1}
    assert branch("/v1/rerank", infinity) == [2]
    assert _post(server, "/v1/rerank", infinity).json()["object"] == "rerank"
    assert branch("/v1/rerank", {**v1, "raw_scores": None}) == []  # infinity's, and not a boolean
    assert _post(server, "/v1/rerank", {**v1, "raw_scores": None}).status_code == 422
    tei = {"query": "q", "texts": ["a"], "documents": ["b"]}
    assert branch("/rerank", tei) == [0] and isinstance(_post(server, "/rerank", tei).json(), list)
    inf = {"query": "q", "documents": ["b"]}
    assert branch("/rerank", inf) == [1] and _post(server, "/rerank", inf).json()["object"] == "rerank"


def test_documented_rules_the_server_checks_itself(server):
    """Bounds written for rules the routes check after the schema keep the routes' own statuses."""
    assert _post(server, "/rerank", {"query": "q", "texts": []}).json()["error_type"] == "empty"  # 400, TEI's
    assert _post(server, "/rerank", {"query": "\x1c\u3000", "texts": ["a"]}).status_code == 400  # blank
    assert _post(server, "/rerank", {"query": "q", "texts": ["a"] * 9}).status_code == 413  # TEI batch size
    # integers as JSON Schema has them: 2.0 is one, true and "2" are not
    assert _post(server, "/v2/rerank", {"query": "q", "documents": ["a", "b", "c"], "top_n": 2.0}).status_code == 200
    assert _post(server, "/v2/rerank", {"query": "q", "documents": ["a"], "top_n": True}).status_code == 400
    assert _post(server, "/search", {"query": "cells", "k": 4.0, "n": 2}).status_code == 200
    # a malformed deadline header is a 400 even when the body's deadline_ms wins over it
    for path, body in (("/rerank", {"query": "q", "texts": ["a"]}), ("/search", {"query": "cells"})):
        r = _post(server, path, {**body, "deadline_ms": 1000}, headers={"X-Crossrank-Deadline-Ms": "soon"})
        assert r.status_code == 400 and "x-crossrank-deadline-ms" in r.json()["error"].lower(), path
        assert _post(server, path, {**body, "deadline_ms": True}).status_code == 422, path
    assert _post(server, "/search", {"query": "cells", "fusion": "interpolate:0.3"}).status_code == 200
    for fusion in ("RRF", "interpolate:2", "magic"):
        assert _post(server, "/search", {"query": "cells", "fusion": fusion}).status_code == 422, fusion
    for min_score in ("0.5", False):
        assert _post(server, "/search", {"query": "cells", "min_score": min_score}).status_code == 422, min_score
