"""The app's OpenAPI document, made to say what this server does (issue 18 item 9).

FastAPI writes the request models (``dialects``) and the ``responses=`` of each route; what depends on how the
server was started is written here, over that document, once:

* the limits of its configuration as JSON Schema: ``maxLength`` of the query (``max_query_chars``), ``maxItems``
  of the texts / documents (``max_documents``), ``maximum`` of ``/search``'s ``k`` and ``n`` (``max_search_k``);
* what its reranker and index take: ``instruction`` only where the reranker has a prompt for one (else the field
  may only be null), the ``long_documents`` modes it can switch to, the retrievers ``/search`` has;
* which shape of a shared route a body is (``dialects.shape_v1`` / ``shape_tei``) as JSON Schema, so that exactly
  one branch of the route's ``oneOf`` admits a body;
* the ``X-Crossrank-Deadline-Ms`` request header and the ``X-Crossrank-Truncated`` response header;
* no FastAPI 422 (its list of validation errors, which the server never sends: schema errors come in the route's
  dialect, and Cohere's status for them is 400);
* with an API key: the bearer security scheme on every route the gate protects, and their 401 (in the route's
  dialect).
"""

from __future__ import annotations

import copy
import json
from typing import Any, Iterable

from fastapi import FastAPI

from crossrank.serve import dialects as d
from crossrank.wire import RERANK_PATHS

SECURITY_SCHEME = "bearerAuth"
DEADLINE_HEADER_DOC = {
    "name": "X-Crossrank-Deadline-Ms",
    "in": "header",
    "required": False,
    "description": "Time budget in milliseconds (the body's `deadline_ms` wins when both are given); anything "
                   "but a number in (0, 3600000] is a 400. Under overload a request is judged by this header (or "
                   "the server's default) before its body is read, and may get 429 then: send a budget longer "
                   "than the default here.",
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 3_600_000},
}
TRUNCATED_HEADER_DOC = {
    "description": "How many (query, document) pairs were cut to the model's maximum length.",
    "schema": {"type": "integer", "minimum": 0},
}
# request models whose `query` / `texts` / `documents` / `instruction` / `long_documents` the limits apply to
_RERANK_MODELS = ("TEIRerankRequest", "CohereRerankRequest", "JinaRerankRequest", "VoyageRerankRequest",
                  "InfinityRerankRequest")
_SHAPE_MODELS = {d.TEI: "TEIRerankRequest", d.JINA: "JinaRerankRequest", d.VOYAGE: "VoyageRerankRequest",
                 d.INFINITY: "InfinityRerankRequest"}


def install_openapi(
    app: FastAPI,
    *,
    api_key: bool,
    open_paths: Iterable[str],
    max_query_chars: int,
    max_documents: int,
    takes_instruction: bool,
    long_documents: list[str],
    retrievers: list[str] | None,
    search_instruction: bool,
    max_search_k: int,
) -> None:
    """Make ``app.openapi()`` return FastAPI's document with the above written in. ``api_key``: whether the server
    has one (then every path but ``open_paths`` needs it)."""
    generate = app.openapi
    open_ = frozenset(open_paths)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            _limits(doc, max_query_chars=max_query_chars, max_documents=max_documents,
                    takes_instruction=takes_instruction, long_documents=long_documents, retrievers=retrievers,
                    search_instruction=search_instruction, max_search_k=max_search_k)
            _shapes(doc)
            _headers(doc)
            _no_fastapi_validation_errors(doc)
            if api_key:
                _security(doc, open_)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend its document


def _limits(doc: dict[str, Any], *, max_query_chars: int, max_documents: int, takes_instruction: bool,
            long_documents: list[str], retrievers: list[str] | None, search_instruction: bool,
            max_search_k: int) -> None:
    schemas = doc.get("components", {}).get("schemas", {})
    no_instruction = {"type": "null", "description": "This server's reranker takes no instruction (its prompt has no "
                                                     "place for one): any other value is a 400."}
    for name in _RERANK_MODELS + ("SearchRequest", "QueryObject"):
        props = schemas.get(name, {}).get("properties", {})
        for key in ("query", "text") if name == "QueryObject" else ("query",):
            for branch in _branches(props.get(key)):
                if branch.get("type") == "string":
                    branch["maxLength"] = max_query_chars
        for key in ("texts", "documents"):
            if key in props and props[key].get("type") == "array":
                props[key]["maxItems"] = max_documents
        allowed = search_instruction if name == "SearchRequest" else takes_instruction
        if "instruction" in props and not allowed:
            props["instruction"] = {**no_instruction, "title": props["instruction"].get("title", "Instruction")}
        for branch in _branches(props.get("long_documents")):
            if "enum" in branch:
                branch["enum"] = [mode for mode in branch["enum"] if mode in long_documents]
    search = schemas.get("SearchRequest", {}).get("properties", {})
    for key in ("k", "n"):
        for branch in _branches(search.get(key)):
            if branch.get("type") == "integer":
                branch["maximum"] = max_search_k
    if retrievers is not None:
        for branch in _branches(search.get("retriever")):
            if "enum" in branch:
                branch["enum"] = list(retrievers)


def _branches(schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The schema itself, or its ``anyOf`` branches (pydantic writes ``X | None`` as an ``anyOf``)."""
    if not schema:
        return []
    return list(schema["anyOf"]) if "anyOf" in schema else [schema]


def _shapes(doc: dict[str, Any]) -> None:
    """The shared routes' ``oneOf``: each branch narrowed to the bodies ``shape_v1`` / ``shape_tei`` send to it."""
    for path, shapes in ((RERANK_PATHS[d.JINA], d.V1_SHAPE_SCHEMAS), (RERANK_PATHS[d.TEI], d.TEI_SHAPE_SCHEMAS)):
        body = doc.get("paths", {}).get(path, {}).get("post", {}).get("requestBody", {})
        schema = body.get("content", {}).get("application/json", {}).get("schema")
        if not schema or "oneOf" not in schema:
            continue
        branches = []
        for shape, extra in shapes.items():
            ref = {"$ref": f"#/components/schemas/{_SHAPE_MODELS[shape]}"}
            branches.append({"allOf": [ref, copy.deepcopy(extra)]} if extra else ref)
        schema["oneOf"] = branches


def _no_fastapi_validation_errors(doc: dict[str, Any]) -> None:
    """FastAPI documents a 422 with its list of validation errors on every route with a body that does not
    document its own; the server never answers that (schema errors are the dialect's body, and Cohere's status
    for them is 400), so it goes, with its schemas."""
    fastapi_422 = "#/components/schemas/HTTPValidationError"
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses", {})
            schema = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref") == fastapi_422:
                del responses["422"]
    schemas = doc.get("components", {}).get("schemas", {})
    if fastapi_422 not in json.dumps(doc.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)


def _headers(doc: dict[str, Any]) -> None:
    for path in (*RERANK_PATHS.values(), "/search"):
        operation = doc.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        operation.setdefault("parameters", []).append(copy.deepcopy(DEADLINE_HEADER_DOC))
        ok = operation.get("responses", {}).get("200")
        if ok is not None:
            ok.setdefault("headers", {})["X-Crossrank-Truncated"] = copy.deepcopy(TRUNCATED_HEADER_DOC)


def _security(doc: dict[str, Any], open_paths: frozenset[str]) -> None:
    doc.setdefault("components", {}).setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's API key: `Authorization: Bearer <key>`. /health, / and the documentation are "
                       "open.",
    }
    for path, item in doc.get("paths", {}).items():
        if path in open_paths:
            continue
        dialect = d.dialect_of(path)
        error = {"$ref": f"#/components/schemas/{d.ERROR_MODELS[dialect].__name__}"}
        for operation in item.values():
            operation["security"] = [{SECURITY_SCHEME: []}]
            operation.setdefault("responses", {})["401"] = {
                "description": "Missing or wrong API key (`WWW-Authenticate: Bearer`).",
                "headers": {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
                "content": {"application/json": {"schema": error}},
            }
