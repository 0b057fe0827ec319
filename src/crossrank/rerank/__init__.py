"""Reranking: the :class:`Reranker` protocol, the local cross-encoder engine, a score cache, the bundled model.

``load_reranker(name_or_path)`` is the one entry point: ``"default"`` (the bundled model), an ``http(s)://`` URL
(a remote rerank service), or a Hugging Face id / local directory of a cross-encoder. Importing this package is
cheap: torch and transformers load only when an engine is built.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

from crossrank.errors import InputError
from crossrank.rerank.base import RankedText, Reranker, RerankScores, as_reranker, rank_by_scores
from crossrank.rerank.cache import CachedReranker, MemoryStore, ScoreStore

if TYPE_CHECKING:  # pragma: no cover
    from crossrank.rerank.engine import CrossEncoderReranker

__all__ = [
    "CachedReranker",
    "CrossEncoderReranker",
    "RankedText",
    "Reranker",
    "RerankScores",
    "load_reranker",
    "rank_by_scores",
    "recommendation",
]

DEFAULT_CACHE_SIZE = 100_000


def load_reranker(name_or_path: str | os.PathLike, *, cache_size: int = DEFAULT_CACHE_SIZE, cache: str | None = None,
                  **options: Any) -> Reranker:
    """Build a reranker from a name, path or URL.

    - ``"default"``: the bundled MiniLM-L6 cross-encoder (ModelLoadError when it is not in this build);
    - ``"fast"``: speed first: what the fast bundle recommends (a cascade ``"fast-student>default@M:rrf"``, chosen on
      held-out queries; how its quality compares with the default's is measured in that bundle's model card);
    - ``"fast-student"``: the bundled 2-layer student distilled from the default, alone;
    - ``"B@M"``: B with a recommended ``rerank_depth`` of M: pipelines and evaluations rerank only the first
      stage's top M with it, the rest follow in first-stage order (e.g. ``"default@20"``);
    - ``"A>B@M"``: a :class:`crossrank.rerank.cascade.CascadeReranker`, A scores every text and B rescores A's
      top M (e.g. ``"fast-student>default@20"``; ``options`` go to both); ``"A>B@M:rrf"`` picks those M by
      A's order fused with the input order; ``"A@S>B@M"`` recommends a ``rerank_depth`` of S (pipelines hand
      the cascade only the first stage's top S);
    - ``http://...`` / ``https://...``: :class:`crossrank.rerank.remote.RemoteReranker` (``options`` go to it);
    - a directory holding a crossrank bundle (``crossrank_bundle.json``): that bundle;
    - anything else: :class:`CrossEncoderReranker` on a Hugging Face id or local checkpoint directory.

    ``options`` are the engine's (``max_length``, ``batch_tokens``, ``dtype``, ``device``, ...). The result is
    wrapped in a :class:`CachedReranker`: ``cache`` None or ``"memory"``, an in-process LRU of ``cache_size``
    entries (``cache_size=0``: none); ``"none"``, no cache; a ``redis://host:6379/0`` (``rediss://``,
    ``unix://``) URL, a score cache shared by every replica that names it (``rerank.cache_redis``: ``?ttl_s=``,
    ``?timeout_ms=``; scoring goes on without it while Redis is down). A bad ``cache`` fails before the model
    loads.
    ``"none"`` is not a reranker: callers that accept it (the CLI) handle it before calling this.
    """
    spec = os.fspath(name_or_path).strip() if name_or_path is not None else ""
    if not spec:
        raise InputError("no reranker given: pass 'default', a model id or path, or a URL")
    if spec.lower() == "none":
        raise InputError("'none' means no reranker; handle it before calling load_reranker")
    if cache_size < 0:
        raise InputError("cache_size must be >= 0")
    make_store = cache_store(cache, cache_size)  # checked before seconds of model loading

    from crossrank.rerank.bundled import bundled_dir
    from crossrank.rerank.cascade import spec_models

    parts = spec_models(spec)
    spec = parts.names[0]
    inner: Reranker
    if parts.cascade:
        from crossrank.rerank.cascade import CascadeReranker

        first, second = (load_reranker(name, cache_size=0, **options) for name in parts.names)
        inner = CascadeReranker(first, second, parts.top_m, parts.head)
    elif parts.top_m is not None:
        from crossrank.rerank.engine import CrossEncoderReranker

        inner = load_reranker(spec, cache_size=0, **options)
        if not isinstance(inner, CrossEncoderReranker):
            raise InputError(f"{spec + '@' + str(parts.top_m)!r}: a rerank depth applies to a local reranker, "
                             f"not {spec!r}")
        inner.recommended = {**inner.recommended, "rerank_depth": parts.top_m}
    elif spec.lower().startswith(("http://", "https://")):
        from crossrank.rerank.remote import RemoteReranker

        inner = RemoteReranker(spec, **options)
    elif bundled_dir(spec) is not None:
        from crossrank.rerank.bundled import bundled_reranker

        inner = bundled_reranker(bundled_dir(spec), **options)
    else:
        from crossrank.rerank.engine import CrossEncoderReranker

        inner = CrossEncoderReranker(spec, **options)
    store = make_store()
    return inner if store is None else CachedReranker(inner, store=store)


def check_cache(cache: str | None) -> None:
    """An ``InputError`` for a ``cache`` that :func:`load_reranker` would refuse (no connection is made)."""
    cache_store(cache, DEFAULT_CACHE_SIZE)


def cache_store(cache: str | None, cache_size: int) -> Callable[[], ScoreStore | None]:
    """What ``cache`` (``load_reranker``'s) names, checked now and opened by the returned call (None: no cache)."""
    spec = "memory" if cache is None else str(cache).strip()
    if spec.lower() == "memory":
        return lambda: MemoryStore(cache_size) if cache_size else None
    if spec.lower() == "none":
        return lambda: None
    from crossrank.rerank.cache_redis import RedisStore, parse_cache_url

    parsed = parse_cache_url(spec)
    return lambda: RedisStore(parsed)


def recommendation(reranker: Any) -> dict[str, Any]:
    """What ``reranker`` recommends around its scores (``{}`` when nothing): ``fusion`` (``{"method", "weight"}``,
    the final order chosen on held-out training queries), ``min_score`` (the "nothing here is relevant"
    threshold on its calibrated scores) and ``rerank_depth`` (rerank only the first stage's top this many: a
    ``B@M`` spec, ``fast``). The bundled models carry the first two; a plain checkpoint or a remote service
    recommends nothing. The pipeline, the CLI, the server and the evaluator all read it here."""
    rec = as_reranker(reranker).info().get("recommended")
    return dict(rec) if isinstance(rec, dict) else {}


def __getattr__(name: str) -> Any:
    if name == "CrossEncoderReranker":
        from crossrank.rerank.engine import CrossEncoderReranker

        return CrossEncoderReranker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
