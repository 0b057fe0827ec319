"""LangChain: :class:`CrossrankRerank`, a document compressor that reranks with crossrank.

```python
from crossrank.integrations.langchain import CrossrankRerank

compressor = CrossrankRerank(reranker="default", top_n=3)
docs = compressor.compress_documents(retrieved_docs, "what causes earthquakes")
```

It also fits wherever LangChain takes a ``BaseDocumentCompressor`` (``ContextualCompressionRetriever``, ...).

Needs ``langchain-core`` (``pip install langchain-core``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from crossrank.integrations._common import LazyReranker, check_top_n, require, top_n_scores

require("langchain_core", "langchain-core", "crossrank.integrations.langchain")

from langchain_core.callbacks import Callbacks  # noqa: E402
from langchain_core.documents import Document  # noqa: E402
from langchain_core.documents.compressor import BaseDocumentCompressor  # noqa: E402
from pydantic import ConfigDict, PrivateAttr, field_validator  # noqa: E402

__all__ = ["CrossrankRerank"]


class CrossrankRerank(BaseDocumentCompressor):
    """Reranks documents with a crossrank cross-encoder and keeps the best ``top_n``.

    ``reranker``: a :func:`crossrank.load_reranker` spec (``"default"``, ``"fast"``, a model folder, an
    ``http(s)://`` URL of a crossrank / TEI / Cohere-compatible service), loaded on first use, or a reranker
    object. ``top_n``: how many documents to return (None: all). Each returned document is a copy of the input one
    with ``metadata["relevance_score"]`` set (as langchain-cohere's ``CohereRerank`` does), best first."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    reranker: Any = "default"
    top_n: Optional[int] = 3

    _lazy: Optional[LazyReranker] = PrivateAttr(default=None)

    @field_validator("reranker")
    @classmethod
    def _check_reranker(cls, v: Any) -> Any:
        LazyReranker(v)  # raises InputError (a ValueError) on an empty spec or an object without .score()
        return v

    @field_validator("top_n")
    @classmethod
    def _check_top_n(cls, v: Optional[int]) -> Optional[int]:
        return check_top_n(v)

    def _reranker(self) -> LazyReranker:
        if self._lazy is None or self._lazy.spec is not self.reranker:
            self._lazy = LazyReranker(self.reranker)
        return self._lazy

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        documents = list(documents)
        ranked = top_n_scores(self._reranker(), query, [d.page_content for d in documents], check_top_n(self.top_n))
        return [
            documents[i].model_copy(update={"metadata": {**documents[i].metadata, "relevance_score": score}})
            for i, score in ranked
        ]
