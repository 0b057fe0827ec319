"""Wire dialects: request bodies and error shapes of each API the server speaks.

| route          | dialect                  | request                                                    | error body                     |
|----------------|--------------------------|------------------------------------------------------------|--------------------------------|
| POST /rerank   | Hugging Face TEI         | query, texts, truncate, truncation_direction, raw_scores,   | {"error", "error_type"}        |
|                |                          | return_text                                                |                                |
| POST /v2/rerank| Cohere v2                | model, query, documents, top_n, max_tokens_per_doc          | {"id", "message"}              |
| POST /v1/rerank| Jina (Voyage/infinity)   | model, query, documents, top_n or top_k, return_documents   | {"detail"}                     |
| everything else| crossrank                | (see /docs)                                                | {"error", "error_type"}        |

Every rerank body also takes ``deadline_ms`` (a time budget; the ``X-Crossrank-Deadline-Ms`` header does the
same) and ``long_documents`` ("truncate" | "chunk"). Unknown fields are ignored (Cohere's SDK sends
``priority`` and ``relevant_spans``). Types are strict: ``"yes"`` is not a boolean and ``1`` is not a string.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

TEI, COHERE, JINA, NATIVE = "tei", "cohere", "jina", "native"

# HTTP status per dialect for the failures the dialects disagree on.
_STATUS = {
    # TEI documents 413 for "batch size error" and 422 for "tokenization error"; Cohere answers 400 for any
    # invalid request; Jina/Voyage (FastAPI services) answer 422 for schema errors.
    "too_many_documents": {TEI: 413, COHERE: 400, JINA: 413, NATIVE: 413},
    "schema": {TEI: 422, COHERE: 400, JINA: 422, NATIVE: 422},
    "too_long": {TEI: 422, COHERE: 400, JINA: 422, NATIVE: 422},
}


def dialect_of(path: str) -> str:
    if path.rstrip("/") == "/rerank":
        return TEI
    if path.rstrip("/") == "/v2/rerank":
        return COHERE
    if path.rstrip("/") == "/v1/rerank":
        return JINA
    return NATIVE


def status_for(kind: str, dialect: str) -> int:
    return _STATUS[kind][dialect]


def error_body(dialect: str, message: str, error_type: str) -> dict[str, Any]:
    """The JSON error body of ``dialect``."""
    if dialect == COHERE:
        return {"id": str(uuid.uuid4()), "message": message}
    if dialect == JINA:
        return {"detail": message}
    return {"error": message, "error_type": error_type}


Deadline = Annotated[Union[StrictInt, StrictFloat], Field(gt=0, le=3_600_000)]
LongDocuments = Literal["truncate", "chunk"]
PositiveInt = Annotated[StrictInt, Field(ge=1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    deadline_ms: Deadline | None = Field(
        default=None, description="crossrank extension: time budget in ms; queued past it, the request gets 504."
    )
    long_documents: LongDocuments | None = Field(
        default=None, description="crossrank extension: 'truncate' or 'chunk' (max score over windows)."
    )


class TEIRerankRequest(_Body):
    """Hugging Face text-embeddings-inference ``/rerank``."""

    query: StrictStr = Field(examples=["What is Deep Learning?"])
    texts: list[StrictStr] = Field(examples=[["Deep Learning is ..."]])
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
    text: StrictStr


Document = Union[StrictStr, TextObject]


class CohereRerankRequest(_Body):
    """Cohere ``/v2/rerank``."""

    model: StrictStr | None = Field(default=None, examples=["crossrank"])
    query: StrictStr = Field(examples=["What is the capital of the United States?"])
    documents: list[Document] = Field(description="Texts (strings; {'text': ...} objects are accepted too).")
    top_n: PositiveInt | None = None
    max_tokens_per_doc: PositiveInt | None = Field(
        default=None, description="Cut each document to this many tokens before scoring.")


class JinaRerankRequest(_Body):
    """Jina ``/v1/rerank`` (also Voyage and infinity requests: ``top_k`` is ``top_n``)."""

    model: StrictStr | None = Field(default=None, examples=["crossrank"])
    query: Union[StrictStr, TextObject] = Field(examples=["Organic skincare products for sensitive skin"])
    documents: list[Document]
    top_n: PositiveInt | None = None
    top_k: PositiveInt | None = Field(default=None, description="Voyage's name for top_n.")
    return_documents: StrictBool = Field(default=True, description="Include {'text': ...} per result (Jina default).")
    truncation: StrictBool | None = Field(
        default=None, description="Voyage: false answers 422 for inputs over the model's maximum length.")


class SearchRequest(BaseModel):
    """crossrank ``/search``: retrieve K from the index, rerank, return N."""

    model_config = ConfigDict(extra="ignore")
    query: StrictStr = Field(examples=["what causes earthquakes"])
    k: PositiveInt | None = Field(default=None, description="Candidates from the first stage.")
    n: PositiveInt | None = Field(default=None, description="Results returned.")
    retriever: Literal["bm25", "dense", "hybrid"] | None = None
    deadline_ms: Deadline | None = None
    rerank: StrictBool = True


def text_of(doc: Any) -> str:
    return doc if isinstance(doc, str) else doc.text
