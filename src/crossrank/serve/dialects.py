"""Wire dialects: request bodies and error shapes of each API the server speaks.

| route           | dialect (told by)           | request                                                   | error body              |
|-----------------|-----------------------------|-----------------------------------------------------------|-------------------------|
| POST /rerank    | Hugging Face TEI            | query, texts, truncate, truncation_direction, raw_scores, | {"error", "error_type"} |
|                 |                             | return_text                                               |                         |
|                 | infinity (`documents`)      | as on /v1/rerank                                          |                         |
| POST /v2/rerank | Cohere v2                   | model, query, documents, top_n, max_tokens_per_doc        | {"id", "message"}       |
| POST /v1/rerank | Jina and Cohere v1          | model, query, documents, top_n, return_documents,         | {"detail"}              |
|                 |                             | rank_fields, max_chunks_per_doc (Cohere v1)               |                         |
|                 | Voyage (`top_k`, `truncation`) | model, query, documents, top_k, return_documents,     |                         |
|                 |                             | truncation                                                |                         |
|                 | infinity (`raw_scores`)     | model, query, documents, top_n, return_documents,         |                         |
|                 |                             | raw_scores                                                |                         |
| everything else | crossrank                   | (see /docs)                                               | {"error", "error_type"} |

Shared routes. Jina, Voyage, infinity and Cohere v1 all serve ``POST /v1/rerank`` (infinity also ``/rerank``), so
their SDKs reach crossrank with the same ``base_url`` as the real service. The body says which one it is, by
fields only one provider sends (``shape_v1`` / ``shape_tei``): ``raw_scores`` is infinity's, ``top_k`` or
``truncation`` Voyage's, anything else Jina's; on ``/rerank`` a body with ``documents`` and no ``texts`` is
infinity's. Each is validated against that provider's schema alone and answered in its response shape (Voyage
``{object: "list", data, model, usage}``, infinity ``{object: "rerank", results: [{document: str}], ...}``). The
Jina answer also carries Cohere v1's ``id`` and ``meta``, so one body satisfies both (their requests are the same
unless Cohere's ``rank_fields`` / ``max_chunks_per_doc`` appear: then ``return_documents`` defaults to false, as
Cohere's does). A separate ``/voyage/v1/rerank`` route was rejected: the SDKs would then need a URL that is not
the provider's. A body with none of the marker fields is Jina's. Token usage in every answer that reports it
(``usage``, ``search_units``) counts the pairs' tokens, those answered from the score cache included.

Every rerank body also takes ``deadline_ms`` (a time budget; the ``X-Crossrank-Deadline-Ms`` header does the
same, and is what the gate's screen sees before the body is read) and ``long_documents`` ("truncate" |
"chunk" | "focus"). Unknown fields are ignored (Cohere's SDK sends ``priority`` and ``relevant_spans``). Types are strict: ``"yes"`` is not a boolean and ``1`` is not a string (an
integer may be written ``2.0``, as JSON Schema's ``integer`` allows). Bounds are JSON Schema's in the OpenAPI
document, those the routes check themselves included (``Documented``), and the server's limits are written into
it by ``serve/openapi.py``.
Every string field is ``Text``: one that cannot be encoded as UTF-8 (a lone surrogate such as ``"\ud800"``) is a
schema error, answered like any other in the route's dialect.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from crossrank.rerank.base import LONG_DOCUMENT_MODES
from crossrank.retrieve.base import KINDS
from crossrank.wire import COHERE, JINA, RERANK_PATHS, TEI

NATIVE = "native"  # crossrank's own routes (/search, /info, ...) and any path that is no rerank route
VOYAGE, INFINITY = "voyage", "infinity"  # request shapes sharing a route with another dialect
SHAPES = frozenset({TEI, JINA, VOYAGE, INFINITY})

# HTTP status per dialect for the failures the dialects disagree on.
_STATUS = {
    # TEI documents 413 for "batch size error" and 422 for "tokenization error"; Cohere answers 400 for any
    # invalid request; Jina/Voyage (FastAPI services) answer 422 for schema errors.
    "too_many_documents": {TEI: 413, COHERE: 400, JINA: 413, NATIVE: 413},
    "schema": {TEI: 422, COHERE: 400, JINA: 422, NATIVE: 422},
    "too_long": {TEI: 422, COHERE: 400, JINA: 422, NATIVE: 422},
}


_DIALECT_AT = {path: name for name, path in RERANK_PATHS.items()}


def dialect_of(path: str) -> str:
    """The dialect a request path is answered in: a rerank route's exactly (no prefix, unlike the client's
    ``wire.dialect_at``: the server's routes sit at the root), else crossrank's own."""
    return _DIALECT_AT.get(path.rstrip("/"), NATIVE)


def status_for(kind: str, dialect: str) -> int:
    return _STATUS[kind][dialect]


class ErrorBody(BaseModel):
    """The error body of TEI and of crossrank's own routes."""

    model_config = ConfigDict(extra="forbid")
    error: str
    error_type: str = Field(examples=["validation", "empty", "unauthorized", "overloaded", "timeout"])


class CohereErrorBody(BaseModel):
    """Cohere's error body."""

    model_config = ConfigDict(extra="forbid")
    id: str
    message: str


class JinaErrorBody(BaseModel):
    """The error body on ``/v1/rerank`` (Jina's, also what Voyage, infinity and Cohere v1 clients read): one
    message, schema errors included (not FastAPI's list of validation errors)."""

    model_config = ConfigDict(extra="forbid")
    detail: str


ERROR_MODELS: dict[str, type[BaseModel]] = {TEI: ErrorBody, NATIVE: ErrorBody, COHERE: CohereErrorBody,
                                            JINA: JinaErrorBody}


def error_responses(dialect: str, statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for these error statuses, each with ``dialect``'s error body."""
    return {status: {"model": ERROR_MODELS[dialect], "description": text} for status, text in statuses.items()}


def error_body(dialect: str, message: str, error_type: str) -> dict[str, Any]:
    """The JSON error body of ``dialect``."""
    if not message.isascii():  # a message quoting unencodable input must not turn the error into a 500
        message = message.encode("utf-8", "replace").decode("utf-8")
    if dialect == COHERE:
        return {"id": str(uuid.uuid4()), "message": message}
    if dialect == JINA:
        return {"detail": message}
    return {"error": message, "error_type": error_type}


def _encodable(value: str) -> str:
    """Tokenizers and the JSON encoder need UTF-8; the message does not echo the text."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"text cannot be encoded as UTF-8 (lone surrogate at character {exc.start})") from None
    return value


@dataclass(frozen=True)
class Documented:
    """JSON Schema keywords for a rule the server checks itself, after the schema (its own status and message:
    an empty ``texts`` is TEI's 400, not a schema error's 422), so that the OpenAPI document shows the rule.
    ``Documented(minItems=1)``; hashable, as typing needs of ``Annotated`` metadata."""

    keywords: tuple[tuple[str, Any], ...]

    def __init__(self, **keywords: Any) -> None:
        object.__setattr__(self, "keywords", tuple(sorted(keywords.items())))

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema.update(dict(self.keywords))
        return schema


Text = Annotated[StrictStr, AfterValidator(_encodable)]
# A query needs a character that is not white space by Python's str.isspace, which the routes strip (a blank one is
# their 400 "empty"). Spelled out, not as \S: a JSON Schema pattern is ECMA-262's, whose \s lacks \x1c-\x1f and
# \x85 and has \ufeff. Its length limit is the server's max_query_chars, written into the app's document.
WHITESPACE = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
Query = Annotated[Text, Documented(pattern=f"[^{WHITESPACE}]")]
# Empty lists are the routes' 400 "empty" (TEI's "Batch is empty"); at most max_documents (the app's document).
Texts = Annotated[list[Text], Documented(minItems=1)]
# strict: a JSON integer is accepted, a boolean or a string is not; the bounds are JSON Schema's
# exclusiveMinimum / maximum in the document
MAX_DEADLINE_MS = 3_600_000
Deadline = Annotated[float, Field(strict=True, gt=0, le=MAX_DEADLINE_MS)]
DEADLINE_HEADER = "x-crossrank-deadline-ms"  # the same budget as the body's deadline_ms (the body's wins)


def parse_deadline_header(raw: str) -> float:
    """The ``X-Crossrank-Deadline-Ms`` header's milliseconds; ``ValueError`` (its message the answer's) when it is
    not a number in (0, MAX_DEADLINE_MS]."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{DEADLINE_HEADER} must be a number of milliseconds, got {raw!r}") from None
    if not (0 < value <= MAX_DEADLINE_MS):  # NaN fails this too
        raise ValueError(f"{DEADLINE_HEADER} must be in (0, {MAX_DEADLINE_MS}], got {raw!r}")
    return value
LongDocuments = Literal[LONG_DOCUMENT_MODES]  # type: ignore[valid-type]


def _integral(value: Any) -> Any:
    """JSON Schema's ``integer`` is any number without a fraction, ``2.0`` included (JSON does not tell them apart),
    so such a float is taken as the integer; ``true`` and ``"2"`` are still refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


PositiveInt = Annotated[StrictInt, Field(ge=1), BeforeValidator(_integral)]
Instruction = Annotated[StrictStr, Field(min_length=1, max_length=4096)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    deadline_ms: Deadline | None = Field(
        default=None, description="crossrank extension: time budget in ms; queued past it, the request gets 504."
    )
    long_documents: LongDocuments | None = Field(
        default=None, description="crossrank extension: 'truncate', 'chunk' (max score over windows) or 'focus' (the first "
                    "sentence and those sharing the most query terms, in one window)."
    )
    instruction: Instruction | None = Field(
        default=None, description="Task instruction for LLM rerankers whose prompt takes one (vLLM's field; "
                                  "default: the model's own). A reranker that takes none answers 400.")


class TEIRerankRequest(_Body):
    """Hugging Face text-embeddings-inference ``/rerank``."""

    query: Query = Field(examples=["What is Deep Learning?"])
    texts: Texts = Field(examples=[["Deep Learning is ..."]])
    truncate: StrictBool | None = Field(
        default=None, description="Cut inputs longer than the model's maximum; false: 422 instead. "
        "Unset: the server's auto_truncate.")
    truncation_direction: Literal["left", "right", "Left", "Right"] = Field(
        default="right", description="Which end of a too-long text to cut (right keeps the start).")
    raw_scores: StrictBool = Field(default=False, description="true: model logits; false: sigmoid scores in [0, 1].")
    return_text: StrictBool = Field(default=False, description="Echo each text in its rank.")

    @field_validator("truncation_direction")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class TextObject(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: Text


class QueryObject(BaseModel):
    """A query given as ``{"text": ...}`` (Jina)."""

    model_config = ConfigDict(extra="ignore")
    text: Query


Document = Union[Text, TextObject]


class CohereRerankRequest(_Body):
    """Cohere ``/v2/rerank``."""

    model: Text | None = Field(default=None, examples=["crossrank"])
    query: Query = Field(examples=["What is the capital of the United States?"])
    documents: Annotated[list[Document], Documented(minItems=1)] = Field(
        description="Texts (strings; {'text': ...} objects are accepted too).")
    top_n: PositiveInt | None = None
    max_tokens_per_doc: PositiveInt | None = Field(
        default=None, description="Cut each document to this many tokens before scoring.")


class JinaRerankRequest(_Body):
    """Jina ``/v1/rerank``, which is also Cohere v1's: dict documents, ``rank_fields``.

    An object document needs a string ``text`` unless the request names ``rank_fields`` (the ``anyOf`` below);
    with ``rank_fields``, it needs at least one of those fields, each a string where present: a rule JSON Schema
    cannot state (the keys come from another field's values), answered 422 like a schema error."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"anyOf": [
        {"properties": {"rank_fields": {"type": "array"}}, "required": ["rank_fields"]},
        {"properties": {"documents": {"items": {"anyOf": [
            {"type": "string"},
            {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        ]}}}},
    ]})

    model: Text | None = Field(default=None, examples=["crossrank"])
    query: Union[Query, QueryObject] = Field(examples=["Organic skincare products for sensitive skin"])
    documents: Annotated[list[Union[Text, dict[str, Any]]], Documented(minItems=1)] = Field(
        description="Strings or objects: their 'text', or with rank_fields those fields as 'key: value' lines.")
    top_n: PositiveInt | None = None
    return_documents: StrictBool | None = Field(
        default=None, description="Echo each document in its result; default true (Jina), false when the request "
                                  "has rank_fields or max_chunks_per_doc (Cohere v1).")
    rank_fields: list[Text] | None = Field(default=None, description="Cohere v1: the object fields ranked on.")
    max_chunks_per_doc: PositiveInt | None = Field(default=None, description="Cohere v1: accepted, not used.")
    _ranked: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _texts(self) -> "JinaRerankRequest":
        self._ranked = [_rank_text(doc, self.rank_fields, i) for i, doc in enumerate(self.documents)]
        return self

    @property
    def texts(self) -> list[str]:
        return self._ranked

    @property
    def echo(self) -> bool:
        if self.return_documents is not None:
            return self.return_documents
        return self.rank_fields is None and self.max_chunks_per_doc is None


def _rank_text(doc: Any, fields: list[str] | None, i: int) -> str:
    """What is ranked of a document: a string itself; of an object, its ``text`` or its ``fields`` as lines."""
    if isinstance(doc, str):
        return doc
    keys = fields if fields is not None else ["text"]
    for key in keys:
        if key in doc and not isinstance(doc[key], str):
            raise ValueError(f"documents[{i}].{key} must be a string")
        _encodable(doc.get(key, ""))
    if fields is None:
        if "text" not in doc:
            raise ValueError(f"documents[{i}] has no 'text' field (or give rank_fields)")
        return doc["text"]
    lines = [f"{key}: {doc[key]}" for key in fields if key in doc]
    if not lines:
        raise ValueError(f"documents[{i}] has none of the rank_fields")
    return "\n".join(lines)


class VoyageRerankRequest(_Body):
    """Voyage ``/v1/rerank`` (told from Jina's by ``top_k`` or ``truncation``)."""

    model: Text | None = Field(default=None, examples=["rerank-2"])
    query: Query
    documents: Texts
    top_k: PositiveInt | None = None
    return_documents: StrictBool = False
    truncation: StrictBool = Field(default=True, description="false: 422 for inputs over the model's maximum.")


class InfinityRerankRequest(_Body):
    """infinity ``/rerank`` (told from TEI's by ``documents``, from Jina's by ``raw_scores``)."""

    model: Text | None = Field(default=None, examples=["default/not-specified"])
    query: Query
    documents: Texts
    return_documents: StrictBool = False
    raw_scores: StrictBool = Field(default=False, description="true: model logits instead of [0, 1] scores.")
    top_n: PositiveInt | None = None


def shape_v1(body: Any) -> str:
    """Which provider's request a ``/v1/rerank`` body is (see the module docstring)."""
    if isinstance(body, dict):
        if "raw_scores" in body:
            return INFINITY
        if "top_k" in body or "truncation" in body:
            return VOYAGE
    return JINA


def shape_tei(body: Any) -> str:
    return INFINITY if isinstance(body, dict) and "documents" in body and "texts" not in body else TEI


# What shape_v1 / shape_tei decide, as JSON Schema: each shape's schema plus these is what it accepts, so that exactly
# one branch of the route's oneOf admits a body (serve/openapi.py). ``false``: the field must be absent.
V1_SHAPE_SCHEMAS: dict[str, dict[str, Any]] = {
    JINA: {"properties": {"raw_scores": False, "top_k": False, "truncation": False}},
    VOYAGE: {"properties": {"raw_scores": False}, "anyOf": [{"required": ["top_k"]}, {"required": ["truncation"]}]},
    INFINITY: {"required": ["raw_scores"]},
}
TEI_SHAPE_SCHEMAS: dict[str, dict[str, Any]] = {TEI: {}, INFINITY: {"properties": {"texts": False}}}


V1RerankRequest = Annotated[
    Union[Annotated[JinaRerankRequest, Tag(JINA)], Annotated[VoyageRerankRequest, Tag(VOYAGE)],
          Annotated[InfinityRerankRequest, Tag(INFINITY)]],
    Discriminator(shape_v1),
]
RootRerankRequest = Annotated[
    Union[Annotated[TEIRerankRequest, Tag(TEI)], Annotated[InfinityRerankRequest, Tag(INFINITY)]],
    Discriminator(shape_tei),
]


# Pipeline fusion specs (crossrank.pipeline.Fusion.parse) in their documented spelling; the weight is in [0, 1].
FUSION = r"^(auto|(none|rrf|interpolate|confidence)(:(0(\.[0-9]*)?|1(\.0*)?|\.[0-9]+))?)$"


class SearchRequest(BaseModel):
    """crossrank ``/search``: retrieve K from the index, rerank, return N."""

    model_config = ConfigDict(extra="ignore")
    query: Query = Field(examples=["what causes earthquakes"])
    k: PositiveInt | None = Field(default=None, description="Candidates from the first stage.")
    n: PositiveInt | None = Field(default=None, description="Results returned.")
    retriever: Literal[KINDS] | None = None  # type: ignore[valid-type]
    deadline_ms: Deadline | None = None
    rerank: StrictBool = True
    fusion: StrictStr = Field(default="auto", examples=["auto", "none", "rrf", "interpolate:0.3", "confidence:0.2"],
                              pattern=FUSION,
                              description="Final order: auto (the model's recommendation), none (cross-encoder "
                                          "order), rrf, interpolate[:w] (w in [0, 1], on the cross-encoder), "
                                          "confidence[:w] (w times the best candidate's relevance).")
    min_score: Annotated[float, Field(strict=True, allow_inf_nan=False)] | Literal["auto"] | None = Field(
        default=None, description="Drop reranked hits whose relevance is below this; auto: the model's "
                                  "recommended 'nothing relevant' threshold.")
    instruction: Instruction | None = Field(
        default=None, description="Task instruction for LLM rerankers whose prompt takes one.")
    unit: Literal["document", "passage"] = Field(
        default="document", description="document: one hit per document, shown by its best passage (as "
                                        "`crossrank search` lists them); passage: every matching passage, so a "
                                        "long document can take several hits.")


def text_of(doc: Any) -> str:
    return doc if isinstance(doc, str) else doc.text
