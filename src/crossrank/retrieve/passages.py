"""``passages.jsonl``, an index's passages: one JSON object per line, written in index order and read on demand.

A saved index does not parse its passages when it opens: :class:`PassageTable` finds the line starts with one
vectorised scan for newline bytes (JSON escapes every newline inside a string, so a raw newline byte only ends a
line) and parses a passage when a search returns it. Opening a million-passage index is then a scan of its bytes,
not a million ``json.loads`` and ``Passage`` objects, and its passages live in the page cache, shared between
processes, instead of each process's heap.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Any, Iterator, Sequence, overload

import numpy as np
import orjson

from crossrank.corpus.chunking import as_passages
from crossrank.errors import IndexLoadError
from crossrank.retrieve._common import REBUILD
from crossrank.types import Passage

_SCAN_BYTES = 64 << 20  # newline scan in slices of this size: bounds the temporary boolean array


def write_passages(path: Path, passages: Sequence[Passage]) -> None:
    """Write ``passages`` as JSON lines (UTF-8, not ASCII-escaped)."""
    with open(path, "w", encoding="utf-8") as f:
        for p in passages:
            f.write(json.dumps({"id": p.id, "doc_id": p.doc_id, "index": p.index, "title": p.title, "text": p.text},
                               ensure_ascii=False))
            f.write("\n")


class PassageTable(Sequence[Passage]):
    """The passages of ``passages.jsonl`` as a read-only sequence, each parsed when it is asked for.

    ``in_memory=False`` (the default) memory-maps the file; ``True`` reads its bytes once into memory (the index no
    longer depends on the file afterwards). A line that is not a passage raises :class:`IndexLoadError` naming the
    file, on access; the index's sha256 check on load catches damage before that."""

    def __init__(self, path: str | os.PathLike, *, in_memory: bool = False) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                if in_memory:
                    self._buf: Any = f.read()
                else:
                    self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""
        except OSError as e:
            raise IndexLoadError(f"cannot read {self.path} ({e}); " + REBUILD) from None
        self._starts, self._ends = _line_bounds(self._buf)

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, i: int) -> Passage: ...

    @overload
    def __getitem__(self, i: slice) -> list[Passage]: ...

    def __getitem__(self, i: int | slice) -> Passage | list[Passage]:
        if isinstance(i, slice):
            return [self._parse(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"passage {i} of {n}")
        return self._parse(j)

    def __iter__(self) -> Iterator[Passage]:
        return (self._parse(j) for j in range(len(self)))

    def __repr__(self) -> str:
        return f"PassageTable({str(self.path)!r}, passages={len(self)})"

    def _parse(self, j: int) -> Passage:
        line = self._buf[int(self._starts[j]) : int(self._ends[j])]
        try:
            o = orjson.loads(line)
            return Passage(id=o["id"], doc_id=o["doc_id"], text=o["text"], title=o.get("title", ""),
                           index=o.get("index", 0))
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise IndexLoadError(f"{self.path} is corrupt at passage {j} ({type(e).__name__}: {e}); "
                                 + REBUILD) from None


def _line_bounds(buf: Any) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, before the newline) byte offsets of every non-empty line of ``buf``."""
    data = np.frombuffer(buf, dtype=np.uint8) if len(buf) else np.zeros(0, dtype=np.uint8)
    ends = [np.flatnonzero(data[s : s + _SCAN_BYTES] == 0x0A) + s for s in range(0, len(data), _SCAN_BYTES)]
    end = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
    if len(data) and data[-1] != 0x0A:  # a last line without its newline
        end = np.append(end, len(data))
    start = np.concatenate([[0], end[:-1] + 1]) if len(end) else np.zeros(0, dtype=np.int64)
    keep = end > start  # blank lines hold no passage
    return start[keep].astype(np.int64), end[keep].astype(np.int64)


def as_passage_sequence(items: Sequence[Any]) -> Sequence[Passage]:
    """A :class:`PassageTable` as it is (not parsed), anything else through ``corpus.as_passages``."""
    return items if isinstance(items, PassageTable) else as_passages(items)
