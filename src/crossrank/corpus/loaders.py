"""Reading corpora, queries and relevance judgments from disk.

Supported corpus inputs (``load_corpus``):

* a BEIR ``corpus.jsonl`` or any JSONL file whose objects carry an id (``_id`` / ``id`` / ``doc_id`` / ``docid``),
  a text (``text`` / ``contents`` / ``body``) and optionally a ``title``; other keys go to ``Document.metadata``;
* a ``.json`` file holding a list of such objects;
* a single ``.txt`` / ``.md`` file (one document);
* a folder: a BEIR dataset folder (it has ``corpus.jsonl``) is read as that file, any other folder is walked for
  ``.txt`` / ``.md`` files (hidden files and folders skipped); the id is the path relative to the folder, the title
  the first markdown heading (``.md``) or the file stem.

Every problem is reported as :class:`crossrank.errors.InputError` naming the file (and line, where there is one).
Empty documents (no title and no text, or only NUL bytes) are skipped, with one logged warning per corpus.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from crossrank.errors import InputError
from crossrank.types import Document

ID_FIELDS = ("_id", "id", "doc_id", "docid")
TEXT_FIELDS = ("text", "contents", "body")
TEXT_SUFFIXES = (".txt", ".md", ".markdown")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- low-level readers
def _check_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{what} not found: {path}")


def _read_error(path: Path, e: OSError) -> InputError:
    """The user-facing error for a file that exists but cannot be read."""
    if isinstance(e, PermissionError):
        return InputError(f"cannot read {path}: permission denied")
    if isinstance(e, IsADirectoryError):
        return InputError(f"expected a file but {path} is a directory")
    return InputError(f"cannot read {path}: {e.strerror or e}")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _read_error(path, e) from None


def _looks_utf16(raw: bytes) -> bool:
    """A UTF-16 BOM, or NULs in every other byte (ASCII text in UTF-16 without a BOM)."""
    if raw.startswith(_UTF16_BOMS):
        return True
    if b"\0" not in raw:
        return False
    head = raw[:4096]
    half = max(len(head) // 2, 1)
    even, odd = head[0::2].count(0), head[1::2].count(0)
    return max(even, odd) > 0.4 * half and min(even, odd) < 0.1 * half


def _decode(raw: bytes, path: Path, line_offset: int = 0) -> str:
    """Strict UTF-8 decode; the error names the file, line and column of the first bad byte (or says UTF-16)."""
    if _looks_utf16(raw):
        raise InputError(f"{path}: this file is UTF-16; convert it to UTF-8, e.g. "
                         f"iconv -f UTF-16 -t UTF-8 {path.name} > utf8-{path.name}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1 + line_offset
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {col}); "
            "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file, with file:line errors."""
    path = Path(path)
    _check_exists(path, "file")
    try:
        f = open(path, "rb")  # streamed line by line: memory stays flat for large corpora
    except OSError as e:
        raise _read_error(path, e) from None
    with f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            text = _decode(line, path, line_offset=lineno - 1).rstrip("\r\n")
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:  # e.pos: characters into this line
                raise InputError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.pos + 1})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
            yield lineno, obj


def _pick(obj: dict[str, Any], names: tuple[str, ...]) -> tuple[str | None, Any]:
    for name in names:
        if name in obj:
            return name, obj[name]
    return None, None


def _record_to_document(obj: dict[str, Any], where: str) -> Document:
    id_key, doc_id = _pick(obj, ID_FIELDS)
    if id_key is None or doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
        raise InputError(f"{where}: missing document id (expected one of {', '.join(ID_FIELDS)})")
    if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
        raise InputError(f"{where}: document id must be a string or integer, got {type(doc_id).__name__}")
    text_key, text = _pick(obj, TEXT_FIELDS)
    if text_key is None:
        raise InputError(f"{where}: document {doc_id!r} has no text field (expected one of {', '.join(TEXT_FIELDS)})")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InputError(f"{where}: field {text_key!r} of document {doc_id!r} must be a string")
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise InputError(f"{where}: field 'title' of document {doc_id!r} must be a string")
    metadata: dict[str, Any] = {}
    if isinstance(obj.get("metadata"), dict):
        metadata.update(obj["metadata"])
    for key, value in obj.items():
        if key not in (id_key, text_key, "title", "metadata"):
            metadata[key] = value
    return Document(id=str(doc_id), text=text, title=title, metadata=metadata)


# --------------------------------------------------------------------------------------------- corpus
def _load_jsonl_corpus(path: Path) -> list[Document]:
    return _dedupe(((f"{path}:{n}", _record_to_document(obj, f"{path}:{n}")) for n, obj in iter_jsonl(path)), path)


def _load_json_corpus(path: Path) -> list[Document]:
    text = _decode(_read_bytes(path), path)
    stripped = text.lstrip()
    if not stripped.startswith("["):  # a .json file that is really JSONL
        return _load_jsonl_corpus(path)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    pairs = []
    for i, obj in enumerate(items):
        where = f"{path}[{i}]"
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        pairs.append((where, _record_to_document(obj, where)))
    return _dedupe(pairs, path)


def _markdown_title(text: str) -> tuple[str | None, str]:
    """``(title, text)``: the first heading's words, and the text without that line (it is in the title)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _HEADING.match(line)
        if m:
            return m.group(1).strip(), "\n".join(lines[:i] + lines[i + 1:])
    return None, text


def _is_blank(text: str) -> bool:
    return not text.replace("\0", "").strip()


def _text_file_document(path: Path, doc_id: str) -> Document:
    text = _decode(_read_bytes(path), path)
    title = None
    if path.suffix.lower() in (".md", ".markdown") and not _is_blank(text):
        title, text = _markdown_title(text)
    if _is_blank(text) and not title:  # NUL-filled or empty: no title either, so load_corpus skips it
        return Document(id=doc_id, text="", title="", metadata={"path": str(path)})
    return Document(id=doc_id, text=text.strip(), title=title or path.stem, metadata={"path": str(path)})


def _load_folder(root: Path) -> list[Document]:
    files = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES:
            files.append(p)
    if not files:
        raise InputError(
            f"no documents found in folder {root}: expected .txt or .md files (searched recursively), "
            "or a corpus.jsonl"
        )
    return [_text_file_document(p, p.relative_to(root).as_posix()) for p in files]


def _dedupe(pairs, path: Path) -> list[Document]:
    seen: dict[str, str] = {}
    docs: list[Document] = []
    for where, doc in pairs:
        if doc.id in seen:
            raise InputError(f"{where}: duplicate document id {doc.id!r} (first seen at {seen[doc.id]}); ids must be unique")
        seen[doc.id] = where
        docs.append(doc)
    return docs


def load_corpus(path: str | Path) -> list[Document]:
    """Read a corpus (see the module docstring for the formats). Raises ``InputError`` on any problem,
    including an empty corpus and duplicate ids."""
    path = Path(path)
    _check_exists(path, "corpus path")
    if path.is_dir():
        if (path / "corpus.jsonl").is_file():
            docs = _load_jsonl_corpus(path / "corpus.jsonl")
            path = path / "corpus.jsonl"
        else:
            docs = _load_folder(path)
    elif path.suffix.lower() in TEXT_SUFFIXES:
        docs = [_text_file_document(path, path.name)]
    elif path.suffix.lower() == ".json":
        docs = _load_json_corpus(path)
    else:
        docs = _load_jsonl_corpus(path)
    if not docs:
        raise InputError(f"corpus {path} is empty: no documents found")
    return _skip_empty(docs, path)


def _is_empty(doc: Document) -> bool:
    return _is_blank(doc.text) and _is_blank(doc.title)


def _skip_empty(docs: list[Document], path: Path) -> list[Document]:
    """``docs`` without empty ones (no title and text, or only NUL bytes); one warning with their count."""
    empty = [_is_empty(d) for d in docs]
    kept = [d for d, e in zip(docs, empty, strict=True) if not e]
    skipped = [d.id for d, e in zip(docs, empty, strict=True) if e]
    if not kept:
        raise InputError(f"corpus {path} is empty: all {len(docs)} documents have no text (or only NUL bytes)")
    if skipped:
        more = f", ... ({len(skipped) - 5} more)" if len(skipped) > 5 else ""
        log.warning("warning: skipped %d empty document(s) of %s (no text, or only NUL bytes): %s%s",
                    len(skipped), path, ", ".join(skipped[:5]), more)
    return kept


# --------------------------------------------------------------------------------------------- queries and qrels
def load_queries(path: str | Path, *, return_metadata: bool = False):
    """Read a BEIR ``queries.jsonl`` (``_id``/``id``, ``text``/``query``, optional ``metadata``).

    Returns ``{qid: text}``, or ``({qid: text}, {qid: metadata})`` with ``return_metadata=True``."""
    path = Path(path)
    queries: dict[str, str] = {}
    metadata: dict[str, dict] = {}
    for n, obj in iter_jsonl(path):
        key, qid = _pick(obj, ("_id", "id", "qid", "query_id", "query-id"))
        if key is None:
            raise InputError(f"{path}:{n}: missing query id (expected _id or id)")
        tkey, text = _pick(obj, ("text", "query", "question"))
        if tkey is None or not isinstance(text, str):
            raise InputError(f"{path}:{n}: query {qid!r} has no text (expected a 'text' string)")
        qid = str(qid)
        if qid in queries:
            raise InputError(f"{path}:{n}: duplicate query id {qid!r}")
        queries[qid] = text
        md = obj.get("metadata")
        metadata[qid] = dict(md) if isinstance(md, dict) else {}
    return (queries, metadata) if return_metadata else queries


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read relevance judgments: BEIR TSV (``query-id corpus-id score``, header optional) or TREC
    (``qid 0 docid score``). Returns ``{qid: {docid: score}}``."""
    path = Path(path)
    _check_exists(path, "qrels file")
    text = _decode(_read_bytes(path), path)
    qrels: dict[str, dict[str, int]] = {}
    for n, row in enumerate(csv.reader(text.splitlines(), delimiter="\t"), start=1):
        if len(row) == 1:
            row = row[0].split()
        if not row or not "".join(row).strip():
            continue
        if len(row) == 3:
            qid, docid, score = row
        elif len(row) == 4:
            qid, _, docid, score = row
        else:
            raise InputError(f"{path}:{n}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}")
        try:
            value = int(float(score))
        except ValueError:
            if n == 1:  # header
                continue
            raise InputError(f"{path}:{n}: score {score!r} is not a number") from None
        qrels.setdefault(qid.strip(), {})[docid.strip()] = value
    return qrels


@dataclass
class BeirDataset:
    """A BEIR dataset split: the whole corpus, the queries judged in the split, their qrels and metadata."""

    name: str
    corpus: list[Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    query_metadata: dict[str, dict] = field(default_factory=dict)
    split: str = "test"


def available_splits(dataset_dir: str | Path) -> list[str]:
    qdir = Path(dataset_dir) / "qrels"
    return sorted(p.stem for p in qdir.glob("*.tsv")) if qdir.is_dir() else []


def load_beir(dataset_dir: str | Path, split: str = "test") -> BeirDataset:
    """Load a BEIR-layout folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

    ``queries`` keeps only queries judged in ``split``; qrels of queries absent from queries.jsonl are dropped."""
    root = Path(dataset_dir)
    _check_exists(root, "dataset folder")
    if not root.is_dir():
        raise InputError(f"expected a BEIR dataset folder, got a file: {root}")
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (root / name).is_file():
            raise InputError(f"{root} is not a BEIR dataset folder: {name} is missing")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = available_splits(root)
        have = ", ".join(splits) if splits else "none (no qrels/*.tsv)"
        raise InputError(f"split {split!r} not found in {root}: no qrels/{split}.tsv; available splits: {have}")
    qrels = load_qrels(qrels_path)
    all_queries, all_meta = load_queries(root / "queries.jsonl", return_metadata=True)
    queries = {qid: all_queries[qid] for qid in qrels if qid in all_queries}
    qrels = {qid: rels for qid, rels in qrels.items() if qid in queries}
    if not queries:
        raise InputError(f"{qrels_path}: none of its query ids appear in {root / 'queries.jsonl'}")
    return BeirDataset(
        name=root.name,
        corpus=load_corpus(root / "corpus.jsonl"),
        queries=queries,
        qrels=qrels,
        query_metadata={qid: all_meta.get(qid, {}) for qid in queries},
        split=split,
    )
