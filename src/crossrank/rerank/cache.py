"""A score cache in front of any reranker: the keying rule and the hit / miss logic, over a store.

Keys are 16-byte BLAKE2b digests of (model name, variant, instruction, query, text), so 100k entries take a few
tens of MB no matter how long the texts are. The store holds (score, truncated) per key: :class:`MemoryStore`, a
bounded in-process LRU (the default), or ``cache_redis.RedisStore``, shared by replicas. Thread-safe. No torch
import.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any, Mapping, Protocol, Sequence

from crossrank.errors import InputError
from crossrank.rerank.base import InputCount, RankedText, Reranker, RerankScores, as_reranker, rank_by_scores

Entry = tuple[float, bool]  # (score, truncated)


class ScoreStore(Protocol):
    """Where a :class:`CachedReranker` keeps its entries. ``get_many`` answers None for a key it does not hold (or
    cannot read right now); neither method raises for a store that is unavailable: a cache never fails a call.
    ``shared``: entries are seen by other processes (other engines), so keys must name the scorer fully."""

    shared: bool

    def get_many(self, keys: Sequence[bytes]) -> list[Entry | None]: ...

    def set_many(self, entries: Mapping[bytes, Entry]) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def clear(self) -> None: ...

    def __len__(self) -> int: ...


class MemoryStore:
    """A bounded LRU dict of entries (least recently used dropped first), private to this process."""

    shared = False

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise InputError("max_entries must be at least 1 (use the inner reranker directly for no cache)")
        self.max_entries = int(max_entries)
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[bytes]) -> list[Entry | None]:
        out: list[Entry | None] = []
        with self._lock:
            for k in keys:
                got = self._entries.get(k)
                if got is not None:
                    self._entries.move_to_end(k)
                out.append(got)
        return out

    def set_many(self, entries: Mapping[bytes, Entry]) -> None:
        with self._lock:
            for k, v in entries.items():
                self._entries[k] = v
                self._entries.move_to_end(k)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        return {"store": "memory", "entries": len(self._entries), "max_entries": self.max_entries}

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"MemoryStore(max_entries={self.max_entries})"


# info() entries that do not change a score: where and how fast it runs, counters, advice about using it.
_NOT_SCORING = frozenset({"device", "threads", "batch_tokens", "pass_tokens", "max_batch_size", "backend_info",
                          "recommended", "cache", "circuit", "timeout_s", "retries", "max_documents_per_request",
                          "takes_instruction",
                          # fixed by the model the name already keys (and left out, so keys stay as they were)
                          "id2label", "special_tokens"})


def scorer_fingerprint(reranker: Reranker) -> bytes:
    """What decides ``reranker``'s scores besides its name (max length, dtype, backend, activation, calibration,
    long-document mode, prompt, a remote endpoint; a cascade's parts too), canonically encoded. A shared store's
    keys carry it: two replicas started with another ``--max-length`` or dtype must not read each other's
    scores, while the same model started the same way on another machine (another device, thread count or batch
    size) does. Empty when ``info()`` fails (the name alone then keys, as in memory)."""
    try:
        info = reranker.info()
    except Exception:  # info is decoration elsewhere; here it only narrows keys
        return b""

    def scoring(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): scoring(v) for k, v in value.items() if k not in _NOT_SCORING}
        return value

    return json.dumps(scoring(info), sort_keys=True, default=repr).encode("utf-8", "surrogatepass")


class CachedReranker:
    """Wraps a :class:`Reranker`; answers repeated (query, text) pairs from its store (``store``: a
    :class:`MemoryStore` of ``max_entries`` unless given, e.g. a shared ``cache_redis.RedisStore``).

    ``score`` returns :class:`RerankScores` with ``cache_hits`` set and ``tokens`` counting only what the inner
    reranker ran. Duplicate texts within one call are scored once.
    """

    def __init__(self, inner: Reranker, max_entries: int = 100_000, *, store: ScoreStore | None = None) -> None:
        self.inner = as_reranker(inner)
        self.store: ScoreStore = MemoryStore(max_entries) if store is None else store
        self._lock = threading.Lock()  # the counters'; the store keeps its own
        # In the keys besides the name: for a shared store, how the inner reranker scores (other processes load
        # the model their own way); for a with_options variant, its options (it shares the store).
        self._variant = scorer_fingerprint(self.inner) if self.store.shared else b""
        self.hits = 0
        self.misses = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def takes_instruction(self) -> bool:
        return self.inner.takes_instruction

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    @property
    def max_length(self) -> int | None:
        """The inner reranker's longest pair in tokens (its ``info()["max_length"]``; None where it names none)."""
        return self.inner.info().get("max_length")

    @property
    def max_entries(self) -> int | None:
        """The in-memory store's bound (None for a store without one)."""
        return getattr(self.store, "max_entries", None)

    def __len__(self) -> int:
        return len(self.store)

    def stats(self) -> dict[str, Any]:
        return {**self.store.stats(), "hits": self.hits, "misses": self.misses, "hit_rate": round(self.hit_rate, 6)}

    def clear(self) -> None:
        """Drop the store's entries (a shared store's: every replica's) and reset the counts."""
        self.store.clear()
        with self._lock:
            self.hits = self.misses = 0

    def info(self) -> dict[str, Any]:
        return {**self.inner.info(), "cache": self.stats()}

    def with_options(self, **options: Any) -> "CachedReranker":
        """The inner reranker's variant behind this cache's entries (the same store and bound; the options are part
        of the variant's keys, since a pair scored another way is another score); no options: this cache."""
        if not options:
            return self
        variant = CachedReranker(self.inner.with_options(**options), store=self.store)
        variant._variant = self._variant + repr(sorted(options.items())).encode("utf-8", "surrogatepass")
        return variant

    def count_inputs(self, query: str, texts: Sequence[str], instruction: str | None = None) -> InputCount | None:
        """The inner reranker's count: what scoring these pairs runs with no cache in front."""
        return self.inner.count_inputs(query, texts, instruction)

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]] | None:
        """The inner reranker's token spans."""
        return self.inner.token_spans(texts)

    # ---------------------------------------------------------------- keys

    def _query_hasher(self, query: str, instruction: str | None = None) -> "hashlib._Hash":
        h = hashlib.blake2b(digest_size=16)
        h.update(self.name.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
        if self._variant:
            h.update(b"\x02" + self._variant + b"\x00")
        if instruction is not None:  # the same pair under another task instruction is another score
            h.update(b"\x01" + instruction.encode("utf-8", "surrogatepass") + b"\x00")
        h.update(query.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
        return h

    @staticmethod
    def _key(base: "hashlib._Hash", text: str) -> bytes:
        h = base.copy()
        h.update(text.encode("utf-8", "surrogatepass"))
        return h.digest()

    # ---------------------------------------------------------------- scoring

    def score(self, query: str, texts: Sequence[str], *, timeout_s: float | None = None,
              instruction: str | None = None) -> RerankScores:
        """Cached scores; ``timeout_s`` and ``instruction`` reach the wrapped reranker for the pairs it scores."""
        texts = list(texts)
        if not isinstance(query, str) or any(not isinstance(t, str) for t in texts):
            raise InputError("query and texts must be strings")
        base = self._query_hasher(query, instruction)
        keys = [self._key(base, t) for t in texts]
        return self._score_keys(keys, [(query, t) for t in texts], lambda todo: self.inner.score(
            query, [t for _, t in todo], timeout_s=timeout_s, instruction=instruction))

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, timeout_s: float | None = None,
                    instruction: str | None = None) -> RerankScores:
        """Cached scores for pairs from many queries (the server's batcher calls this)."""
        pairs = [tuple(p) for p in pairs]
        bases: dict[str, Any] = {}
        keys = []
        for q, t in pairs:
            if not isinstance(q, str) or not isinstance(t, str):
                raise InputError("pairs must be (query, text) strings")
            if q not in bases:
                bases[q] = self._query_hasher(q, instruction)
            keys.append(self._key(bases[q], t))
        return self._score_keys(keys, pairs, lambda todo: self.inner.score_pairs(
            todo, timeout_s=timeout_s, instruction=instruction))

    def _score_keys(self, keys: list[bytes], pairs: list[tuple[str, str]], run) -> RerankScores:
        n = len(keys)
        scores: list[float] = [0.0] * n
        truncated: list[bool] = [False] * n
        todo_at: dict[bytes, list[int]] = {}
        hits = 0
        unique = list(dict.fromkeys(keys))  # one look-up per distinct pair
        found = dict(zip(unique, self.store.get_many(unique), strict=True))
        for i, k in enumerate(keys):
            got = found[k]
            if got is not None:
                scores[i], truncated[i] = got
                hits += 1
            else:
                todo_at.setdefault(k, []).append(i)
        tokens = 0
        if todo_at:
            todo_keys = list(todo_at)
            res = run([pairs[todo_at[k][0]] for k in todo_keys])
            tokens = res.tokens
            fresh: dict[bytes, Entry] = {}
            for j, k in enumerate(todo_keys):
                s = float(res.scores[j])
                tr = bool(res.truncated[j]) if res.truncated else False
                for i in todo_at[k]:
                    scores[i], truncated[i] = s, tr
                fresh[k] = (s, tr)
            self.store.set_many(fresh)
        with self._lock:
            self.hits += hits
            self.misses += n - hits
        return RerankScores(scores=scores, truncated=truncated, cache_hits=hits, tokens=tokens)

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[RankedText]:
        texts = list(texts)
        return rank_by_scores(texts, self.score(query, texts).scores, top_n)

    def __repr__(self) -> str:
        return f"CachedReranker({self.inner!r}, store={self.store!r})"
