"""Haystack: :class:`CrossrankRanker`, a ranker component that reranks with crossrank.

```python
from haystack import Document
from crossrank.integrations.haystack import CrossrankRanker

ranker = CrossrankRanker(reranker="default", top_k=5)
ranker.warm_up()
ranker.run(query="what causes earthquakes", documents=[Document(content="..."), ...])["documents"]
```

Needs ``haystack-ai`` (``pip install haystack-ai``; the component API of Haystack 2.x and 3.x).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from crossrank.integrations._common import LazyReranker, check_top_n, require, top_n_scores

if not hasattr(require("haystack", "haystack-ai", "crossrank.integrations.haystack"), "component"):
    raise ImportError(
        "crossrank.integrations.haystack needs Haystack 2.x or later (the 'haystack' found is another package, "
        "e.g. farm-haystack 1.x): pip install haystack-ai"
    )

from haystack import Document, component, default_from_dict, default_to_dict  # noqa: E402

__all__ = ["CrossrankRanker"]


@component
class CrossrankRanker:
    """Ranks documents by crossrank relevance to the query and keeps the best ``top_k``.

    ``reranker``: a :func:`crossrank.load_reranker` spec (``"default"``, ``"fast"``, a model folder, an
    ``http(s)://`` URL of a crossrank / TEI / Cohere-compatible service) or a reranker object; ``warm_up()``
    loads it (a Pipeline calls it), else the first ``run`` does. ``top_k``: how many documents to return (None:
    all); ``run(top_k=...)`` overrides it. Returned documents are copies of the input ones with ``score`` set
    (calibrated relevance in [0, 1] for the bundled models), best first; a document without text scores as "".
    """

    def __init__(self, reranker: Any = "default", top_k: int | None = 10) -> None:
        self._lazy = LazyReranker(reranker)
        self.top_k = check_top_n(top_k, "top_k")

    def warm_up(self) -> None:
        """Load the model now (Haystack calls this before a pipeline runs)."""
        self._lazy.get()

    def to_dict(self) -> dict[str, Any]:
        if not isinstance(self._lazy.spec, str):
            raise TypeError("CrossrankRanker.to_dict needs the reranker given as a spec string, not an object")
        return default_to_dict(self, reranker=self._lazy.spec, top_k=self.top_k)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CrossrankRanker":
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, list[Document]]:
        """``{"documents": the best top_k documents (run's top_k, else the component's), best first}``."""
        top_k = check_top_n(top_k, "top_k") if top_k is not None else self.top_k
        ranked = top_n_scores(self._lazy, query, [d.content or "" for d in documents], top_k)
        return {"documents": [replace(documents[i], score=score) for i, score in ranked]}
