"""LlamaIndex: :class:`CrossrankRerank`, a node postprocessor that reranks with crossrank.

```python
from crossrank.integrations.llama_index import CrossrankRerank

query_engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[CrossrankRerank(top_n=5)])
```

Needs ``llama-index-core`` (``pip install llama-index-core``).
"""

from __future__ import annotations

from typing import Any, List, Optional

from crossrank.integrations._common import LazyReranker, check_top_n, require, top_n_scores

require("llama_index.core", "llama-index-core", "crossrank.integrations.llama_index")

from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator  # noqa: E402
from llama_index.core.callbacks import CBEventType, EventPayload  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle  # noqa: E402

__all__ = ["CrossrankRerank"]


class CrossrankRerank(BaseNodePostprocessor):
    """Reranks nodes with a crossrank cross-encoder and keeps the best ``top_n`` (None: all), best first.

    ``reranker``: a :func:`crossrank.load_reranker` spec (``"default"``, ``"fast"``, a model folder, an
    ``http(s)://`` URL of a crossrank / TEI / Cohere-compatible service), loaded on first use, or a reranker
    object. Each returned ``NodeWithScore`` holds the input node with the crossrank score (calibrated relevance
    in [0, 1] for the bundled models); ``keep_retrieval_score=True`` also keeps the retriever's score in
    ``node.metadata["retrieval_score"]``. Nodes are scored on their embedding text
    (``get_content(metadata_mode=MetadataMode.EMBED)``), as LlamaIndex's own rerankers do."""

    reranker: Any = Field(default="default", description="crossrank.load_reranker spec, or a reranker object.")
    top_n: Optional[int] = Field(default=5, description="Number of nodes to return, best first (None: all).")
    keep_retrieval_score: bool = Field(default=False, description="Keep the retrieval score in metadata.")

    _lazy: Optional[LazyReranker] = PrivateAttr(default=None)

    @field_validator("reranker")
    @classmethod
    def _check_reranker(cls, v: Any) -> Any:
        LazyReranker(v)
        return v

    @field_validator("top_n")
    @classmethod
    def _check_top_n(cls, v: Optional[int]) -> Optional[int]:
        return check_top_n(v)

    @classmethod
    def class_name(cls) -> str:
        return "CrossrankRerank"

    def _reranker(self) -> LazyReranker:
        if self._lazy is None or self._lazy.spec is not self.reranker:
            self._lazy = LazyReranker(self.reranker)
        return self._lazy

    def _postprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        if query_bundle is None:
            raise ValueError(
                "CrossrankRerank needs the query: call postprocess_nodes(nodes, query_str=...) or pass a QueryBundle"
            )
        if not nodes:
            return []
        lazy = self._reranker()
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: lazy.name,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: self.top_n,
            },
        ) as event:
            ranked = top_n_scores(lazy, query_bundle.query_str, texts, check_top_n(self.top_n))
            out = []
            for i, score in ranked:
                if self.keep_retrieval_score:
                    nodes[i].node.metadata["retrieval_score"] = nodes[i].score
                out.append(NodeWithScore(node=nodes[i].node, score=score))
            event.on_end(payload={EventPayload.NODES: out})
        return out
