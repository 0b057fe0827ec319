"""A Milvus backend for the first stage: the passages and vectors of a crossrank index in one Milvus collection,
searched through the same ``Retriever`` protocol (``bm25``, ``dense``, ``hybrid``).

Where it lives (a *store URI*; :func:`parse_store_uri`)::

    milvus:///abs/path/store.db      Milvus Lite, embedded: a local folder named *.db (pip install crossrank[milvus])
    path/store.db                    the same, relative
    milvus://host:19530              a Milvus server or cluster (gRPC), as http://host:19530
    http://host:19530, https://...   the same, spelled as pymilvus spells it
    ...?collection=NAME              the collection (default "crossrank"); one store can hold several

The same code talks to all of them (``pymilvus.MilvusClient``; for a ``.db`` path pymilvus starts Milvus Lite
inside this process).

The collection: ``id`` (passage id, primary key), ``doc_id``, ``passage_index``, ``title``, ``text`` (what the
``Candidate`` carries), ``dense`` (FLOAT_VECTOR, the index's own L2-normalised passage vectors, FLAT index, IP
metric: exact cosine search, as the built-in dense search is), ``terms`` + ``sparse`` (BM25: Milvus' own BM25
Function turns ``terms`` into a sparse vector at insert, a SPARSE_INVERTED_INDEX with metric BM25 scores it).

Why ``terms`` and not the raw text: Milvus Lite's analyzer is a plain regex tokenizer with no stemmer (a Milvus
server has stemmer filters, Lite has not), so BM25 over the raw text would rank differently from crossrank's
(English stop words + Snowball stemming, Pyserini's BEIR settings). ``terms`` holds each passage's tokens as
crossrank's BM25 analyzer makes them, joined by spaces, and queries are analyzed the same way before they are sent;
Milvus' standard tokenizer then only splits on the spaces. With ``k1``/``b`` set to crossrank's (0.9 / 0.4), Milvus'
BM25 ranks as the built-in BM25 does (its scores are the built-in's times ``k1 + 1``, Lucene's classic form).
Milvus Lite keeps BM25 statistics per segment: a store is written and flushed as one segment (up to Lite's 128 MiB
memtable, about 40,000 passages of 384-d vectors and text), beyond that its IDF is segment-local (a Lite
limitation; a Milvus server uses global statistics).

Hybrid: ``fused_by="milvus"`` (default) is one ``hybrid_search`` call, BM25 + dense fused by Milvus' RRFRanker
(``rrf_k``, each side fetched ``depth`` deep); ``fused_by="crossrank"`` is crossrank's own
:class:`~crossrank.retrieve.hybrid.HybridRetriever` over this store's bm25 and dense retrievers (RRF or weighted,
weights allowed). Queries are embedded by crossrank's :class:`~crossrank.retrieve.dense.QueryEncoder`, exactly as
the built-in dense search embeds them; the collection's description records the model.

Writing (:func:`write_store`, ``crossrank index CORPUS --store URI``) takes a built :class:`~crossrank.retrieve.Index`
(same chunking, same vectors), fills a new collection and only then replaces the old one (drop + rename: a failed
write leaves the previous collection in place). pymilvus is imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence
from urllib.parse import parse_qs

import numpy as np

from crossrank.errors import CrossrankError, IndexLoadError, InputError, check_query
from crossrank.retrieve._common import check_k, passage_text
from crossrank.retrieve.base import KINDS
from crossrank.retrieve.bm25 import DEFAULT_PARAMS, _Analyzer
from crossrank.retrieve.dense import DEFAULT_MODEL, QueryEncoder
from crossrank.retrieve.hybrid import FUSIONS, HybridRetriever
from crossrank.types import Candidate

if TYPE_CHECKING:
    from crossrank.retrieve.base import Retriever
    from crossrank.retrieve.index import Index

SCHEME = "milvus://"
FORMAT = "crossrank-milvus"
FORMAT_VERSION = 1
DEFAULT_COLLECTION = "crossrank"
FUSED_BY = ("milvus", "crossrank")
META_KEY = "crossrank.meta"  # the collection property holding the store's description (Lite keeps no description)
MAX_VARCHAR = 65535  # Milvus' VARCHAR limit, in UTF-8 bytes
MAX_ID = 1024  # bytes of a passage or document id
MAX_LIMIT = 16384  # Milvus' largest topk
INSERT_ROWS = 512  # rows per insert call: far under gRPC's message limit with 384-d vectors and 64 KiB texts
QUERY_BATCH = 32  # queries per search call: k=100 hits with their text stay a few MB per reply
CONNECT_TIMEOUT_S = 10.0  # and each call's, but for flush and load, which take as long as the collection needs
SLOW_CALL_TIMEOUT_S = 3600.0
OUTPUT_FIELDS = ["doc_id", "title", "text"]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_INSTALL = "the Milvus backend needs pymilvus and milvus-lite: pip install 'crossrank[milvus]'"


# ------------------------------------------------------------------------------------------------- locations
@dataclass(frozen=True)
class StoreLocation:
    """Where a store is: ``uri`` as ``MilvusClient`` takes it (a ``.db`` path for Lite, else http(s)://host:port),
    the collection, and whether it is an embedded Milvus Lite file."""

    uri: str
    collection: str
    lite: bool

    def __str__(self) -> str:
        where = f"{SCHEME}{self.uri}" if self.lite else self.uri
        return where if self.collection == DEFAULT_COLLECTION else f"{where}?collection={self.collection}"


def is_store_uri(location: Any) -> bool:
    """True for a Milvus store URI (``milvus://``, ``http(s)://``, or a ``*.db`` path that is not a crossrank index
    directory), False for anything else (a crossrank index directory)."""
    s = str(location)
    if s.startswith((SCHEME, "http://", "https://")):
        return True
    path = Path(s.partition("?")[0])
    return path.name.endswith(".db") and not (path / "manifest.json").is_file()


def parse_store_uri(location: Any) -> StoreLocation:
    """A :class:`StoreLocation` from a store URI (see the module docstring), or ``InputError`` saying why not."""
    s = str(location).strip()
    base, _, query = s.partition("?")
    collection = _collection_of(query, s)
    if base.startswith(("http://", "https://")):
        return StoreLocation(base.rstrip("/"), collection, lite=False)
    rest = base[len(SCHEME):] if base.startswith(SCHEME) else base
    if rest.endswith(".db"):
        return StoreLocation(str(Path(rest).expanduser().absolute()), collection, lite=True)
    if base.startswith(SCHEME) and rest and not rest.startswith("/"):
        return StoreLocation("http://" + rest.rstrip("/"), collection, lite=False)
    raise InputError(f"{s!r} is not a Milvus store URI: use milvus:///ABS/PATH.db or PATH.db (Milvus Lite), "
                     "milvus://HOST:PORT or http(s)://HOST:PORT (a Milvus server), optionally ?collection=NAME")


def _collection_of(query: str, s: str) -> str:
    params = parse_qs(query, keep_blank_values=True) if query else {}
    unknown = sorted(set(params) - {"collection"})
    if unknown:
        raise InputError(f"{s!r}: unknown store URI parameter(s) {', '.join(unknown)}; only ?collection=NAME")
    name = params.get("collection", [DEFAULT_COLLECTION])[-1]
    if not _NAME.fullmatch(name):
        raise InputError(f"{s!r}: collection name {name!r} must be letters, digits and underscores, not starting "
                         "with a digit (Milvus' rule)")
    return name


# ------------------------------------------------------------------------------------------------- connections
# Milvus Lite runs inside this process, one server per .db folder (pymilvus' server manager), and holds a file
# lock on the folder; counting the stores open on each lets the last one to close release it, so another
# process can open the file.
_LITE_OPEN: Counter[str] = Counter()
_LITE_LOCK = threading.Lock()


def _error_text(e: BaseException) -> str:
    return " ".join(str(getattr(e, "message", None) or e).split())


_OWN_CALL = threading.local()


class _DropOwnErrors(logging.Filter):
    """pymilvus logs every failed call with its traceback before raising; crossrank turns each failure of its own
    calls into one error message (the CLI's one ``error:`` line), so those records are dropped. Other code's
    pymilvus calls in the same process still log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_OWN_CALL, "active", False)


_FILTER = _DropOwnErrors()


@contextmanager
def _own_call() -> Iterator[None]:
    logging.getLogger("pymilvus.decorators").addFilter(_FILTER)  # idempotent: a logger holds a filter once
    outer = getattr(_OWN_CALL, "active", False)
    _OWN_CALL.active = True
    try:
        yield
    finally:
        _OWN_CALL.active = outer


def _connect(loc: StoreLocation, *, create: bool, timeout_s: float) -> Any:
    """A ``MilvusClient`` for ``loc``; ``IndexLoadError`` (one line) when pymilvus is missing or nothing answers."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise IndexLoadError(_INSTALL) from None
    if loc.lite:
        path = Path(loc.uri)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.is_dir():
            raise IndexLoadError(f"no Milvus Lite store at {path}; build one with 'crossrank index CORPUS --store "
                                 f"{SCHEME}{path}'")
        try:
            import milvus_lite  # noqa: F401 - pymilvus would only say "Open local milvus failed"
        except ImportError:
            raise IndexLoadError(_INSTALL) from None
    try:
        with _own_call():
            client = MilvusClient(uri=loc.uri, timeout=timeout_s)
    except Exception as e:  # noqa: BLE001 - pymilvus raises MilvusException and plain errors alike
        where = f"Milvus Lite at {loc.uri}" if loc.lite else f"the Milvus server at {loc.uri}"
        raise IndexLoadError(f"cannot open {where}: {_error_text(e)}") from None
    if loc.lite:
        with _LITE_LOCK:
            _LITE_OPEN[loc.uri] += 1
    return client


def _disconnect(client: Any, loc: StoreLocation) -> None:
    try:
        client.close()
    finally:
        if loc.lite:
            with _LITE_LOCK:
                _LITE_OPEN[loc.uri] -= 1
                last = _LITE_OPEN[loc.uri] <= 0
                if last:
                    del _LITE_OPEN[loc.uri]
            if last:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(loc.uri)


# ------------------------------------------------------------------------------------------------- writing
def _meta(index: "Index") -> dict[str, Any]:
    """What the collection's description records: enough to search it (methods, model, BM25 settings) and to
    say what it was built from."""
    m = index.manifest
    meta: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "crossrank_version": m.get("crossrank_version"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "methods": list(index.methods),
        "counts": m.get("counts"), "chunking": m.get("chunking"), "text": m.get("text"),
    }
    if "bm25" in index.methods:
        bm25 = index.manifest.get("bm25") or DEFAULT_PARAMS
        meta["bm25"] = {key: bm25.get(key, DEFAULT_PARAMS[key]) for key in DEFAULT_PARAMS}
    if index.embeddings is not None:
        dense = m["dense"]
        meta["dense"] = {key: dense.get(key) for key in ("model", "model_id", "dimension", "max_seq_length")}
    return meta


def _schema(client: Any, meta: dict[str, Any]) -> tuple[Any, Any]:
    from pymilvus import DataType, Function, FunctionType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=MAX_ID)
    schema.add_field("passage_index", DataType.INT64)
    schema.add_field("title", DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR)
    index_params = client.prepare_index_params()
    if "bm25" in meta:
        # the standard tokenizer only splits crossrank's analyzed tokens apart again (see the module docstring)
        schema.add_field("terms", DataType.VARCHAR, max_length=MAX_VARCHAR, enable_analyzer=True,
                         analyzer_params={"tokenizer": "standard"})
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["terms"],
                                     output_field_names=["sparse"]))
        tuning = {"bm25_k1": float(meta["bm25"]["k1"]), "bm25_b": float(meta["bm25"]["b"])}
        # pymilvus 3 sends index params as flat key-value pairs, Milvus Lite 3.2 reads only a JSON "params" entry
        # (and would silently use k1=1.5, b=0.75): send both; a Milvus server reads either
        index_params.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                               params={**tuning, "params": tuning})
    if "dense" in meta:
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=int(meta["dense"]["dimension"]))
        index_params.add_index(field_name="dense", index_type="FLAT", metric_type="IP")
    return schema, index_params


def _checked(value: str, what: str, passage_id: str, limit: int) -> str:
    if len(value.encode("utf-8")) > limit:
        raise InputError(f"passage {passage_id!r}: its {what} is over Milvus' {limit}-byte limit; index with "
                         "chunking (--chunk-tokens, e.g. 200) so each passage fits")
    return value


def _rows(index: "Index", analyze: _Analyzer | None) -> Iterator[list[dict[str, Any]]]:
    """The collection's rows, ``INSERT_ROWS`` at a time."""
    passages, emb = index.passages, index.embeddings
    for start in range(0, len(passages), INSERT_ROWS):
        batch = []
        for i in range(start, min(start + INSERT_ROWS, len(passages))):
            p = passages[i]
            row: dict[str, Any] = {
                "id": _checked(p.id, "id", p.id, MAX_ID), "doc_id": _checked(p.doc_id, "document id", p.id, MAX_ID),
                "passage_index": int(p.index), "title": _checked(p.title, "title", p.id, MAX_VARCHAR),
                "text": _checked(p.text, "text", p.id, MAX_VARCHAR),
            }
            if analyze is not None:
                row["terms"] = _checked(" ".join(analyze(passage_text(p))), "BM25 terms", p.id, MAX_VARCHAR)
            if emb is not None:
                row["dense"] = np.asarray(emb[i], dtype=np.float32).tolist()
            batch.append(row)
        yield batch


def _check_replaceable(client: Any, loc: StoreLocation) -> None:
    if not client.has_collection(loc.collection):
        return
    if _read_meta(client, loc, strict=False).get("format") != FORMAT:
        raise InputError(f"refusing to replace collection {loc.collection!r} at {loc.uri}: it was not written by "
                         "crossrank; choose another with ?collection=NAME")


def write_store(index: "Index", location: Any, *, timeout_s: float = CONNECT_TIMEOUT_S) -> "MilvusStore":
    """Write ``index``'s passages, BM25 terms and dense vectors (no re-encoding) to the store at ``location`` and
    return it open. An existing crossrank collection of that name is replaced once the new one is complete."""
    loc = parse_store_uri(location)
    if not index.passages:
        raise InputError("cannot write an empty index to Milvus")
    meta = _meta(index)
    client = _connect(loc, create=True, timeout_s=timeout_s)
    try:
        with _own_call():
            _check_replaceable(client, loc)
            _fill(client, loc, index, meta)
            stored = _read_meta(client, loc)
    except CrossrankError:
        _disconnect(client, loc)
        raise
    except Exception as e:  # noqa: BLE001 - a Milvus failure mid-write: one line, the old collection kept
        _disconnect(client, loc)
        raise IndexLoadError(f"writing to Milvus at {loc}: {_error_text(e)}") from None
    return MilvusStore(client, loc, stored)


def _fill(client: Any, loc: StoreLocation, index: "Index", meta: dict[str, Any]) -> None:
    """Build the collection under a temporary name, then put it in place of ``loc.collection`` and load it."""
    tmp = f"{loc.collection}__build_{uuid.uuid4().hex[:8]}"
    schema, index_params = _schema(client, meta)
    analyze = _Analyzer(meta["bm25"]["stopwords"], meta["bm25"]["stemmer"]) if "bm25" in meta else None
    # the index is made apart, unsynced: a synced create (or create_collection with index_params) waits on an RPC
    # Milvus Lite lacks (AllocTimestamp), which its gRPC server logs as a traceback; Lite builds the index as it
    # goes, and a server's load_collection waits for it
    client.create_collection(tmp, schema=schema, properties={META_KEY: json.dumps(meta)})
    try:
        client.create_index(tmp, index_params, sync=False)
        for batch in _rows(index, analyze):
            client.insert(tmp, batch)
        client.flush(tmp, timeout=SLOW_CALL_TIMEOUT_S)  # one sealed segment: BM25 statistics over all of it
        if client.has_collection(loc.collection):
            client.drop_collection(loc.collection)
        client.rename_collection(tmp, loc.collection)
    except BaseException:
        if client.has_collection(tmp):
            client.drop_collection(tmp)
        raise
    client.load_collection(loc.collection, timeout=SLOW_CALL_TIMEOUT_S)


# ------------------------------------------------------------------------------------------------- reading
def _read_meta(client: Any, loc: StoreLocation, *, strict: bool = True) -> dict[str, Any]:
    """The collection's crossrank description; with ``strict``, ``IndexLoadError`` for a collection that is
    missing or not crossrank's."""
    if not client.has_collection(loc.collection):
        if not strict:
            return {}
        have = client.list_collections()
        raise IndexLoadError(f"{loc}: no collection {loc.collection!r} (collections there: "
                             f"{', '.join(have) or 'none'}); build it with 'crossrank index CORPUS --store {loc}'")
    try:
        props = client.describe_collection(loc.collection).get("properties") or {}
        meta = json.loads(props.get(META_KEY) or "{}")
    except (TypeError, ValueError):
        meta = {}
    if strict and (not isinstance(meta, dict) or meta.get("format") != FORMAT):
        raise IndexLoadError(f"{loc}: collection {loc.collection!r} was not written by crossrank")
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if strict and (not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION):
        raise IndexLoadError(f"{loc}: store format {version!r}, this crossrank reads "
                             f"{FORMAT_VERSION}; rebuild it (or upgrade crossrank)")
    return meta if isinstance(meta, dict) else {}


class MilvusStore:
    """An open store: a Milvus collection written by :func:`write_store`. Get a searcher with
    ``store.retriever(kind)``, as from an :class:`~crossrank.retrieve.Index`; ``close()`` (or ``with``) when done."""

    def __init__(self, client: Any, location: StoreLocation, meta: dict[str, Any]):
        self.client = client
        self.location = location
        self.meta = meta
        self._encoder: QueryEncoder | None = None
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, location: Any, *, timeout_s: float = CONNECT_TIMEOUT_S) -> "MilvusStore":
        """Open the store at ``location``; ``IndexLoadError`` (one line) when it cannot be reached or read."""
        loc = parse_store_uri(location)
        client = _connect(loc, create=False, timeout_s=timeout_s)
        try:
            with _own_call():
                meta = _read_meta(client, loc)
                # a server (or a reopened Lite file) starts released
                client.load_collection(loc.collection, timeout=SLOW_CALL_TIMEOUT_S)
        except IndexLoadError:
            _disconnect(client, loc)
            raise
        except Exception as e:  # noqa: BLE001
            _disconnect(client, loc)
            raise IndexLoadError(f"cannot load {loc}: {_error_text(e)}") from None
        return cls(client, loc, meta)

    def __repr__(self) -> str:
        return f"MilvusStore({self.location}, passages={len(self)}, methods={list(self.methods)})"

    def __len__(self) -> int:
        return int((self.meta.get("counts") or {}).get("passages", 0))

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _disconnect(self.client, self.location)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.meta.get("methods", ()))

    @property
    def collection(self) -> str:
        return self.location.collection

    def query_encoder(self, device: str | None = None, batch_size: int = 64,
                      query_backend: str = "auto") -> QueryEncoder:
        """The store's query encoder (the model its vectors were made with), one per store, as ``Index.dense``."""
        if "dense" not in self.methods:
            raise InputError(f"this store has no dense part (methods: {', '.join(self.methods)}); rebuild with "
                             "'dense'")
        with self._lock:
            enc = self._encoder
            if enc is None or (device is not None and device != enc.device) or query_backend != enc.query_backend:
                enc = QueryEncoder(self.meta["dense"].get("model") or DEFAULT_MODEL, device=device,
                                   batch_size=batch_size, query_backend=query_backend)
                self._encoder = enc
            enc.batch_size = batch_size
            return enc

    def analyzer(self) -> _Analyzer:
        if "bm25" not in self.methods:
            raise InputError(f"this store has no BM25 part (methods: {', '.join(self.methods)}); rebuild with 'bm25'")
        params = self.meta["bm25"]
        return _Analyzer(params.get("stopwords"), params.get("stemmer"))

    def retriever(self, kind: str = "hybrid", fusion: str = "rrf", *, fused_by: str = "milvus",
                  **opts: Any) -> "Retriever":
        """A ``Retriever`` over this store: ``kind`` "hybrid", "bm25" or "dense", options as
        ``Index.retriever`` (``device``, ``batch_size``, ``query_backend``; ``rrf_k``, ``weights``, ``depth``).
        Hybrid ``fused_by="milvus"``: Milvus' ``hybrid_search`` with RRFRanker (``fusion="rrf"`` only, no
        weights); ``"crossrank"``: crossrank's ``HybridRetriever`` over this store's bm25 and dense lists."""
        dense_opts = {key: opts.pop(key) for key in ("device", "batch_size", "query_backend") if key in opts}
        hybrid_opts = {key: opts.pop(key) for key in ("rrf_k", "weights", "depth") if key in opts}
        if opts:
            raise InputError(f"unknown retriever option(s): {', '.join(sorted(opts))}")
        if fused_by not in FUSED_BY:
            raise InputError(f"unknown fused_by {fused_by!r}; choose one of {', '.join(FUSED_BY)}")
        if kind == "bm25":
            return MilvusRetriever(self, "bm25", analyzer=self.analyzer())
        if kind == "dense":
            return MilvusRetriever(self, "dense", encoder=self.query_encoder(**dense_opts))
        if kind != "hybrid":
            raise InputError(f"unknown retriever kind {kind!r}; choose one of {', '.join(KINDS)}")
        if fused_by == "crossrank":
            parts = [self.retriever("bm25"), self.retriever("dense", **dense_opts)]
            return HybridRetriever(parts, fusion=fusion, **hybrid_opts)
        return MilvusHybridRetriever(self, self.analyzer(), self.query_encoder(**dense_opts), fusion=fusion,
                                     **hybrid_opts)


# ------------------------------------------------------------------------------------------------- searching
def _candidates(hits: Sequence[Any], *, bm25: bool) -> list[Candidate]:
    out = []
    for rank, hit in enumerate(hits, start=1):
        e = hit.get("entity") or {}
        score = float(hit.get("distance", 0.0))
        # Milvus Lite 3.2 reports a BM25 hit's distance as -score (smaller is better inside it), a Milvus server
        # as +score; BM25 scores are never negative, so the magnitude is the score either way
        if bm25:
            score = abs(score)
        out.append(Candidate(id=str(hit.get("id")), doc_id=str(e.get("doc_id", "")), text=str(e.get("text", "")),
                             score=score, rank=rank, title=str(e.get("title") or "")))
    return out


def _check_limit(k: int) -> int:
    k = check_k(k)
    if k > MAX_LIMIT:
        raise InputError(f"k={k} is over Milvus' largest limit ({MAX_LIMIT})")
    return k


def _check_request(queries: Sequence[str], k: int) -> int:
    """Every query checked as the built-in retrievers check it; ``k`` checked and within Milvus' limit."""
    for q in queries:
        check_query(q)
    return _check_limit(k)


class MilvusRetriever:
    """BM25 (``kind="bm25"``) or dense (``kind="dense"``) search of one store's collection."""

    def __init__(self, store: MilvusStore, kind: str, *, analyzer: _Analyzer | None = None,
                 encoder: QueryEncoder | None = None):
        self.store = store
        self.kind = kind
        self.name = f"milvus:{kind}"
        self._analyze = analyzer
        self._encoder = encoder

    def search(self, query: str, k: int = 100) -> list[Candidate]:
        check_query(query)
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 100) -> list[list[Candidate]]:
        k = _check_request(queries, k)
        out: list[list[Candidate]] = []
        for i in range(0, len(queries), QUERY_BATCH):
            chunk = list(queries[i : i + QUERY_BATCH])
            out.extend(self._bm25(chunk, k) if self.kind == "bm25" else self._dense(chunk, k))
        return out

    def _bm25(self, queries: list[str], k: int) -> list[list[Candidate]]:
        assert self._analyze is not None
        terms = [" ".join(self._analyze(q)) for q in queries]
        asked = [i for i, t in enumerate(terms) if t]  # no terms (only stop words): no match, as the built-in
        out: list[list[Candidate]] = [[] for _ in queries]
        if asked:
            hits = self._call("search", data=[terms[i] for i in asked], anns_field="sparse", limit=k,
                              output_fields=OUTPUT_FIELDS, search_params={"metric_type": "BM25"})
            for i, row in zip(asked, hits, strict=True):
                out[i] = _candidates(row, bm25=True)
        return out

    def _dense(self, queries: list[str], k: int) -> list[list[Candidate]]:
        assert self._encoder is not None
        vectors = self._encoder.encode_queries(queries)
        hits = self._call("search", data=vectors.tolist(), anns_field="dense", limit=k, output_fields=OUTPUT_FIELDS,
                          search_params={"metric_type": "IP"})
        return [_candidates(row, bm25=False) for row in hits]

    def _call(self, method: str, **kwargs: Any) -> Any:
        return _milvus_call(self.store, method, **kwargs)


def _milvus_call(store: MilvusStore, method: str, **kwargs: Any) -> Any:
    """``store.client.<method>(collection, ...)``; a Milvus failure becomes one ``IndexLoadError`` line."""
    try:
        with _own_call():
            return getattr(store.client, method)(store.collection, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise IndexLoadError(f"Milvus {method} on {store.location} failed: {_error_text(e)}") from None


class MilvusHybridRetriever:
    """BM25 + dense fused by Milvus itself: one ``hybrid_search`` call with an RRFRanker per query, each side
    fetched ``depth`` deep (default ``max(k, 100)``, as :class:`~crossrank.retrieve.hybrid.HybridRetriever`)."""

    def __init__(self, store: MilvusStore, analyzer: _Analyzer, encoder: QueryEncoder, *, fusion: str = "rrf",
                 rrf_k: float = 60, weights: Sequence[float] | None = None, depth: int | None = None):
        if fusion not in FUSIONS:
            raise InputError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if fusion != "rrf" or (weights is not None and len(set(map(float, weights))) > 1):
            # Milvus' WeightedRanker normalises scores its own way (arctan), not crossrank's min-max
            raise InputError("Milvus-side fusion is RRF without weights; for weighted fusion use "
                             "fused_by='crossrank'")
        if not 0 < rrf_k < MAX_LIMIT:
            raise InputError(f"Milvus' RRF needs 0 < rrf_k < {MAX_LIMIT}, got {rrf_k}")
        if depth is not None:
            _check_limit(depth)
        self.store, self._analyze, self._encoder = store, analyzer, encoder
        self.rrf_k, self.depth = rrf_k, depth
        self.name = "milvus:hybrid-rrf(bm25+dense)"

    def search(self, query: str, k: int = 100) -> list[Candidate]:
        check_query(query)
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 100) -> list[list[Candidate]]:
        from pymilvus import AnnSearchRequest, RRFRanker

        k = _check_request(queries, k)
        depth = max(k, self.depth if self.depth is not None else 100)
        vectors = self._encoder.encode_queries(list(queries)) if queries else np.zeros((0, 0), np.float32)
        out = []
        # one call per query: a query without BM25 terms sends the dense side alone, and a request's sides must
        # all hold the same number of queries
        for q, vec in zip(queries, vectors, strict=True):
            reqs = [AnnSearchRequest(data=[vec.tolist()], anns_field="dense", param={"metric_type": "IP"},
                                     limit=depth)]
            terms = " ".join(self._analyze(q))
            if terms:
                reqs.insert(0, AnnSearchRequest(data=[terms], anns_field="sparse", param={"metric_type": "BM25"},
                                                limit=depth))
            hits = _milvus_call(self.store, "hybrid_search", reqs=reqs, ranker=RRFRanker(self.rrf_k), limit=k,
                                output_fields=OUTPUT_FIELDS)
            out.append(_candidates(hits[0], bm25=False))
        return out

