"""Query-focused passages: what ``long_documents="focus"`` scores when a document does not fit the pair.

``truncate`` keeps a long document's opening; ``chunk`` scores every window and keeps the best (one forward pass
per window). ``focus`` costs what ``truncate`` costs (one window of the same length) but fills it with the parts
of the document the query is about. The document is cut into sentences at the tokenizer's ``.``, ``?`` and ``!``
pieces. Its first sentence (title and opening) is always kept, cut to the budget if it alone is longer. The rest
of the budget goes to the other sentences by how many distinct query terms each holds, most first, ties to the
earlier one. A sentence is taken whole and only if it still fits. The kept sentences are returned in document
order.

A query term is a query token of at least 3 characters, word-piece markers stripped, that is not an English
stopword (bm25s's list). Everything works on token ids, so the window is exactly what the model sees.
"""

from __future__ import annotations

from typing import Any, Sequence

_SENTENCE_ENDS = frozenset({".", "?", "!"})
# word-piece markers: WordPiece continuation, SentencePiece and byte-level BPE word starts
_MARKERS = ("##", "\u2581", "\u0120")
_MIN_TERM_CHARS = 3


def _strip(token: str) -> str:
    for m in _MARKERS:
        if token.startswith(m):
            return token[len(m):]
    return token


class SentenceFocus:
    """Picks a document's query-focused window (see the module docstring) from token ids, for one tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        from bm25s.stopwords import STOPWORDS_EN

        self._tokenizer = tokenizer
        self._stop = frozenset(STOPWORDS_EN)
        vocab = tokenizer.get_vocab()
        self.sentence_end_ids = frozenset(i for t, i in vocab.items() if _strip(t) in _SENTENCE_ENDS)

    def query_terms(self, query_ids: Sequence[int]) -> frozenset[int]:
        """The query's term ids: tokens of at least 3 characters that are not stopwords."""
        tokens = self._tokenizer.convert_ids_to_tokens(list(query_ids))
        return frozenset(i for i, t in zip(query_ids, tokens, strict=True)
                         if len(s := _strip(t).lower()) >= _MIN_TERM_CHARS and s not in self._stop)

    def sentences(self, doc_ids: Sequence[int]) -> list[list[int]]:
        """``doc_ids`` cut after each sentence-ending token (a run of them stays with its sentence)."""
        out, cur = [], []
        for j, t in enumerate(doc_ids):
            cur.append(t)
            if t in self.sentence_end_ids and (j + 1 == len(doc_ids) or doc_ids[j + 1] not in self.sentence_end_ids):
                out.append(cur)
                cur = []
        if cur:
            out.append(cur)
        return out

    def window(self, query_ids: Sequence[int], doc_ids: Sequence[int], budget: int) -> list[int]:
        """At most ``budget`` token ids of ``doc_ids``: the whole document when it fits, else its focused window."""
        if len(doc_ids) <= budget:
            return list(doc_ids)
        sents = self.sentences(doc_ids)
        first = sents[0][:budget]
        left = budget - len(first)
        terms = self.query_terms(query_ids)
        hits = [len(terms.intersection(s)) for s in sents]
        keep = {0}
        for i in sorted(range(1, len(sents)), key=lambda i: (-hits[i], i)):
            if len(sents[i]) <= left:
                keep.add(i)
                left -= len(sents[i])
        return first + [t for i in sorted(keep - {0}) for t in sents[i]]
