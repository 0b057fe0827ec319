"""Splitting documents into overlapping, token-counted passages.

Tokens are counted with a fast word-level regex (a word, with inner apostrophes, or one punctuation mark), not with
the model's tokenizer: it needs no model, is ~50x faster, and is close enough for sizing windows. WordPiece / BPE
tokenizers produce about 1.3 sub-word tokens per English word (more on scientific text), so ``max_tokens=200`` is
roughly 260 model tokens; keep ``max_tokens`` at about 0.75x the model's limit (MiniLM: 256 -> 200 words).
Windows are cut on token boundaries and keep the original text (spacing and punctuation) between them.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from crossrank.errors import InputError
from crossrank.types import Document, Passage

WORD_PATTERN = re.compile(r"\w+(?:['\u2019]\w+)*|[^\w\s]")
WORDPIECES_PER_WORD = 1.3


def count_tokens(text: str) -> int:
    """Number of word-level tokens in ``text`` (see the module docstring)."""
    return sum(1 for _ in WORD_PATTERN.finditer(text))


def _whole(doc: Document) -> Passage:
    return Passage(id=doc.id, doc_id=doc.id, text=doc.text, title=doc.title, index=0)


def chunk_document(doc: Document, max_tokens: int | None = 200, overlap: int = 40) -> list[Passage]:
    """Split one document (see ``chunk_documents``)."""
    if not max_tokens:
        return [_whole(doc)]
    spans = [m.span() for m in WORD_PATTERN.finditer(doc.text)]
    n = len(spans)
    if n <= max_tokens:
        return [_whole(doc)]
    step = max_tokens - overlap
    passages = []
    start = 0
    while True:
        end = min(start + max_tokens, n)
        text = doc.text[spans[start][0] : spans[end - 1][1]]
        i = len(passages)
        passages.append(Passage(id=f"{doc.id}#{i}", doc_id=doc.id, text=text, title=doc.title, index=i))
        if end == n:
            return passages
        start += step


def chunk_documents(
    docs: Iterable[Document], max_tokens: int | None = 200, overlap: int = 40
) -> list[Passage]:
    """Cut documents into windows of at most ``max_tokens`` word-level tokens, consecutive windows sharing
    ``overlap`` tokens. A document that fits is one passage with ``id == doc_id``; otherwise passages are
    ``f"{doc_id}#{index}"`` with ``index`` from 0. ``max_tokens=0`` or ``None`` disables chunking."""
    if max_tokens:
        if max_tokens < 0:
            raise InputError(f"max_tokens must be positive (or 0/None to disable chunking), got {max_tokens}")
        if overlap < 0 or overlap >= max_tokens:
            raise InputError(f"overlap must be >= 0 and smaller than max_tokens ({max_tokens}), got {overlap}")
    out: list[Passage] = []
    for doc in docs:
        out.extend(chunk_document(doc, max_tokens, overlap))
    return out


def as_passages(items: Sequence[Document | Passage]) -> list[Passage]:
    """Passages as given, documents as one passage each (no chunking)."""
    return [x if isinstance(x, Passage) else _whole(x) for x in items]
