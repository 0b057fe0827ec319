"""The server's side of the reranker: the one it was given, its per-request variants (long-document mode), the
cuts a request asks for before scoring (Cohere's ``max_tokens_per_doc``, left truncation), the usage it reports,
and the conversion between the engine's scores and the wire's (TEI's ``raw_scores``).

Scores on the wire: the engine reports scores after its activation (``info()["activation"]``: "sigmoid" gives
[0, 1], "raw" gives logits). TEI's ``raw_scores=true`` answers logits, everything else answers [0, 1]
(``relevance_score`` in Cohere and Jina is a probability-like score); :meth:`Engines.to_prob` and
:meth:`Engines.to_raw` convert between the two.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Callable, NamedTuple, Sequence

from crossrank.errors import InputError
from crossrank.rerank.base import Reranker, RerankScores, as_reranker
from crossrank.rerank.calibration import Calibration
from crossrank.serve.batcher import estimate_tokens

log = logging.getLogger("crossrank.serve")


class Usage(NamedTuple):
    """What a request used: tokens the model reads, and windows scored (one per document unless chunked)."""

    tokens: int
    windows: int

    @property
    def search_units(self) -> int:
        """Cohere's billing: 100 documents a unit, each chunk of a long document counted as one."""
        return max(1, math.ceil(self.windows / 100))


# --------------------------------------------------------------------------------------------------- engine side


class Engines:
    """The reranker plus per-request variants (long-document mode), and text cutting with its tokenizer."""

    def __init__(self, reranker: Any, default_mode: str | None) -> None:
        self.base: Reranker = as_reranker(reranker)
        self.info = engine_info(self.base)
        self.activation = self.info.get("activation", "sigmoid")
        self.calibration = Calibration.parse(self.info.get("calibration"))
        self.max_length = int(self.info.get("max_length") or 512)
        self.base_mode = self.info.get("long_documents")
        self.default_mode = default_mode or self.base_mode or "truncate"
        self._variants: dict[str, Reranker] = {}
        self._lock = threading.Lock()
        # the text cutting's tokens: a local engine's own (``token_spans``; a remote reranker has none: words stand
        # in), and what its pair template adds around a query and a text ([CLS]/[SEP]/[SEP] where it does not say)
        special = self.info.get("special_tokens")
        self.n_special = 3 if special is None else int(special)
        if self.default_mode != (self.base_mode or "truncate"):
            self.get(self.default_mode)  # fail at start, not on the first request

    def supports(self, mode: str) -> bool:
        """Whether the reranker has a variant for long-document mode ``mode`` (LLM rerankers' prompts keep one)."""
        try:
            self.get(mode)
        except InputError:
            return False
        return True

    def get(self, mode: str | None) -> Reranker:
        """The reranker for long-document mode ``mode`` (None: the server's default): the reranker itself, or its
        ``with_options(long_documents=mode)`` variant, made once."""
        mode = mode or self.default_mode
        if mode == (self.base_mode or "truncate"):
            return self.base
        with self._lock:
            if mode not in self._variants:
                self._variants[mode] = self.base.with_options(long_documents=mode)
            return self._variants[mode]

    @property
    def takes_instruction(self) -> bool:
        return self.base.takes_instruction

    # the engine answers calibrated relevance ("sigmoid") or logits ("raw"); the wire gets either on request
    def to_prob(self, s: float) -> float:
        return s if self.activation == "sigmoid" else self.calibration.prob(s)

    def to_raw(self, s: float) -> float:
        return self.calibration.raw(s) if self.activation == "sigmoid" else s

    def score_pairs(self, pairs: Sequence[tuple[str, str]], options: dict[str, Any]) -> RerankScores:
        engine = self.get(options.get("long_documents"))
        pairs, cut = self._prepare(pairs, options)
        result = engine.score_pairs(pairs, instruction=options.get("instruction"))
        if any(cut):
            flags = result.truncated if len(result.truncated) == len(pairs) else [False] * len(pairs)
            result.truncated = [a or b for a, b in zip(flags, cut, strict=True)]
        return result

    def _prepare(self, pairs: Sequence[tuple[str, str]], options: dict[str, Any]) -> tuple[list[tuple[str, str]], list[bool]]:
        """The pairs as the engine gets them (Cohere's ``max_tokens_per_doc`` and left truncation applied
        here, before scoring), and which of them these cuts shortened."""
        pairs = list(pairs)
        cut = [False] * len(pairs)
        max_doc = options.get("max_tokens_per_doc")
        if max_doc is not None and max_doc < self.max_length:
            pairs, cut = self._cut(pairs, lambda q: max_doc, keep_end=False)
        if options.get("truncation_direction") == "left" and (options.get("long_documents") or self.default_mode) == "truncate":
            budgets: dict[str, int] = {}

            def budget(query: str) -> int:
                if query not in budgets:
                    budgets[query] = self._doc_budget(query)
                return budgets[query]

            pairs, cut2 = self._cut(pairs, budget, keep_end=True)
            cut = [a or b for a, b in zip(cut, cut2, strict=True)]
        return pairs, cut

    def usage(self, query: str, texts: Sequence[str], options: dict[str, Any], result: RerankScores) -> Usage:
        """Tokens the model reads for these pairs and the windows scored, counted whether or not a pair came from
        the score cache (a cache saves compute, not usage) and whatever else shared its batch.

        A local engine counts them itself (``count_inputs``: exactly what its ``score`` runs, no forward pass) on
        the pairs as :meth:`score_pairs` hands them over; a reranker that cannot count (a remote one) reports
        ``tokens`` only for what it ran, so cached pairs are estimated."""
        pairs, _ = self._prepare([(query, t) for t in texts], options)
        count = self.get(options.get("long_documents")).count_inputs(query, [t for _, t in pairs],
                                                                      options.get("instruction"))
        if count is not None:
            return Usage(count.tokens, count.windows)
        if result.cache_hits:  # estimate what the cache answered
            return Usage(sum(estimate_tokens(query, t, self.max_length) for t in texts), len(texts))
        return Usage(result.tokens, len(texts))

    def _doc_budget(self, query: str) -> int:
        avail = self.max_length - self.n_special
        q = len(self._token_offsets([query])[0])
        return max(1, avail - min(q, avail // 2))

    def _token_offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        spans = self.base.token_spans(texts)
        if spans is not None:
            return spans
        # No tokenizer to ask (e.g. a remote reranker): whitespace words stand in for tokens.
        out = []
        for t in texts:
            spans, pos = [], 0
            for w in t.split():
                start = t.index(w, pos)
                spans.append((start, start + len(w)))
                pos = start + len(w)
            out.append(spans)
        return out

    def _cut(self, pairs: list[tuple[str, str]], budget: Callable[[str], int], keep_end: bool):
        budgets = [budget(q) for q, _ in pairs]
        # Only texts that could exceed their budget need tokenising (every token covers at least one UTF-8 byte).
        idx = [i for i, (q, t) in enumerate(pairs) if len(t) > budgets[i] and len(t.encode("utf-8")) > budgets[i]]
        cut = [False] * len(pairs)
        if not idx:
            return pairs, cut
        offsets = self._token_offsets([pairs[i][1] for i in idx])
        out = list(pairs)
        for i, offs in zip(idx, offsets, strict=True):
            n = budgets[i]
            if len(offs) <= n:
                continue
            q, t = pairs[i]
            out[i] = (q, t[offs[-n][0]:] if keep_end else t[: offs[n - 1][1]])
            cut[i] = True
        return out, cut


def engine_info(reranker: Reranker) -> dict[str, Any]:
    """``reranker.info()``, with at least ``model``."""
    info: dict[str, Any] = {}
    try:
        info = dict(reranker.info())
    except Exception:  # info is decoration; never fail start-up over it
        log.warning("reranker.info() failed", exc_info=True)
    info.setdefault("model", reranker.name)
    return info
