"""Training data: groups of (query, positives, negatives) from BEIR datasets (negatives mined from the first stage),
answer-selection TSVs (negatives = the question's other candidates) and title pseudo-queries over a BEIR corpus
(no judgments needed); a held-out split of BEIR train queries
for dev evaluation and setting selection; and a deterministic batch schedule (a pure function of the config), which
is what makes ``--resume`` exact."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossrank.errors import InputError
from crossrank.files import atomic_write_text
from crossrank.retrieve.base import KIND_METHODS
from crossrank.train.config import SourceSpec, TrainConfig

log = logging.getLogger("crossrank.train")


@dataclass
class Group:
    """One query with its positive and negative texts. Training samples 1 positive + n negatives from it."""

    qid: str
    query: str
    positives: list[str]
    negatives: list[str]
    # positives with the query's entity swapped for another (crossrank.train.counterfactual): sure negatives
    counterfactuals: list[str] = field(default_factory=list)


@dataclass
class DevQuery:
    """A held-out query: its first-stage candidates (best first) and its judgments."""

    qid: str
    query: str
    doc_ids: list[str]
    texts: list[str]
    first_stage_scores: list[float]
    qrels: dict[str, int]


@dataclass
class Source:
    spec: SourceSpec
    groups: list[Group]
    max_length: int
    dev: list[DevQuery] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- reading


def _doc_text(title: str, text: str) -> str:
    """What the models see for a document; the same form as ``Candidate.full_text``."""
    return f"{title}\n{text}" if title else text


def read_beir(path: Path, split: str) -> tuple[dict[str, tuple[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """(corpus id -> (title, text), queries id -> text, qrels qid -> {doc_id: grade > 0}) for ``split``, read by
    :func:`crossrank.corpus.load_beir`. Judgments of grade 0 (judged not relevant) are no positives: they are
    dropped here, and a query left without a positive is not a training query."""
    from crossrank.corpus import load_beir

    ds = load_beir(path, split)
    corpus = {d.id: (d.title, d.text) for d in ds.corpus}
    qrels = {q: {d: int(g) for d, g in rel.items() if int(g) > 0} for q, rel in ds.qrels.items()}
    return corpus, dict(ds.queries), {q: rel for q, rel in qrels.items() if rel}


def read_tsv_groups(path: Path) -> list[Group]:
    """Answer-selection TSV -> one group per question that has at least one correct and one wrong sentence."""
    by_q: dict[str, Group] = {}
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:4]] != ["qid", "question", "sentence", "label"]:
            raise InputError(f"{path}: expected a header 'qid question sentence label'")
        for row in reader:
            if len(row) < 4:
                continue
            qid, question, sentence, label = row[0], row[1], row[2], row[3]
            g = by_q.setdefault(qid, Group(qid=qid, query=question, positives=[], negatives=[]))
            (g.positives if label.strip() not in ("0", "") else g.negatives).append(sentence)
    return [g for g in by_q.values() if g.positives and g.negatives]


# ---------------------------------------------------------------------------------------------------- splitting


def split_dev(qids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of query ids into (train, dev); stable under reordering of the input."""
    ordered = sorted(qids)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ordered))
    n_dev = int(round(len(ordered) * fraction))
    dev = sorted(ordered[i] for i in perm[:n_dev])
    dev_set = set(dev)
    return [q for q in ordered if q not in dev_set], dev


# ---------------------------------------------------------------------------------------------------- mining


def _wait_for(path: Path, seconds: int) -> None:
    import time

    deadline = time.time() + max(0, seconds)
    if not path.exists() and seconds > 0:
        log.info("waiting up to %ds for index %s", seconds, path)
    while not path.exists() and time.time() < deadline:
        time.sleep(10)


def _open_index(spec: SourceSpec, corpus: dict[str, tuple[str, str]], cache_dir: Path, methods: tuple[str, ...],
                index_wait: int = 0):
    from crossrank import retrieve  # lazy: only training with BEIR sources needs a first stage

    if spec.index:
        _wait_for(Path(spec.index), index_wait)
    if spec.index and Path(spec.index).exists():
        log.info("mining with saved index %s", spec.index)
        return retrieve.load_index(spec.index)
    from crossrank.types import Document

    # named after the corpus folder, not the source, so a --beir and a --titles source over one corpus share it
    index_dir = cache_dir / f"index-{Path(spec.path).name}"
    if (index_dir).exists():
        try:
            return retrieve.load_index(index_dir)
        except Exception as e:  # stale or partial: rebuild
            log.warning("cannot reuse %s (%s); rebuilding", index_dir, e)
    docs = [Document(id=i, title=t, text=x) for i, (t, x) in corpus.items()]
    log.info("building a %s index of %d docs for mining at %s", "+".join(methods), len(docs), index_dir)
    return retrieve.build_index(docs, out_dir=index_dir, methods=methods, chunk_tokens=None, progress=False)


def mine(spec: SourceSpec, corpus: dict[str, tuple[str, str]], queries: dict[str, str], qids: list[str],
         retriever: str, k: int, cache_dir: Path, index_wait: int = 0) -> dict[str, list[tuple[str, float]]]:
    """First-stage top-``k`` (doc_id, score) per query, best first, one entry per document. Cached on disk."""
    key = hashlib.sha256(json.dumps([str(Path(spec.path).resolve()), spec.split, retriever, k, sorted(qids)]).encode()).hexdigest()[:16]
    cache = cache_dir / f"mined-{spec.name}-{retriever}-{k}-{key}.json"
    if cache.is_file():
        return {q: [(d, s) for d, s in v] for q, v in json.loads(cache.read_text(encoding="utf-8")).items()}
    index = _open_index(spec, corpus, cache_dir, KIND_METHODS[retriever], index_wait)
    r = index.retriever(retriever) if retriever != "hybrid" else index.retriever("hybrid", fusion="rrf")
    texts = [queries[q] for q in qids]
    out: dict[str, list[tuple[str, float]]] = {}
    # over-fetch a little: chunked indexes can return several passages of one document
    results = r.search_batch(texts, k=k)
    for q, cands in zip(qids, results, strict=True):
        seen, row = set(), []
        for c in cands:
            if c.doc_id not in seen and c.doc_id in corpus:
                seen.add(c.doc_id)
                row.append((c.doc_id, float(c.score)))
        out[q] = row[:k]
    atomic_write_text(cache, json.dumps(out))
    return out


# ---------------------------------------------------------------------------------------------------- building

MIN_TITLE_WORDS = 3  # shorter titles ("Introduction", "Erratum") are not queries anyone would type


def title_groups(spec: SourceSpec, config: TrainConfig, cache_dir: Path) -> list[Group]:
    """Pseudo-queries from the corpus alone: a document's title is the query, its body the positive, and the
    first stage's other top documents for that title the negatives. Every text of such a group is a body without
    its title: with titles left on the negatives, "the one without a title" would be a shortcut to the answer.
    No document with the query's title (the positive itself, duplicates, other versions) is a negative."""
    from crossrank.corpus import load_corpus

    docs = load_corpus(Path(spec.path))
    corpus = {d.id: (d.title, d.text) for d in docs}
    queries = {d.id: d.title.strip() for d in docs
               if d.text.strip() and len(d.title.split()) >= MIN_TITLE_WORDS}
    if not queries:
        raise InputError(f"{spec.path}: no document has a title of {MIN_TITLE_WORDS}+ words and a body")
    qids = sorted(queries)
    mined = mine(spec, corpus, queries, qids, config.mine_retriever, config.mine_k + config.skip_top, cache_dir,
                 config.index_wait)
    groups = []
    for q in qids:
        cand = mined.get(q, [])[config.skip_top: config.skip_top + config.mine_k]
        negs = [corpus[d][1] for d, _ in cand if corpus[d][0].strip() != queries[q] and corpus[d][1].strip()]
        if negs:
            groups.append(Group(qid=q, query=queries[q], positives=[corpus[q][1]], negatives=negs))
    return groups


def build_sources(config: TrainConfig, cache_dir: Path) -> list[Source]:
    sources: list[Source] = []
    for spec in config.sources:
        path = Path(spec.path)
        if spec.kind == "titles":
            groups = title_groups(spec, config, cache_dir)
            if not groups:
                raise InputError(f"{path}: no title pseudo-query has a mined negative")
            sources.append(Source(spec=spec, groups=groups, max_length=spec.max_length or config.max_length))
            log.info("source %s: %d title pseudo-queries (%s top-%d mining, skip %d)", spec.name, len(groups),
                     config.mine_retriever, config.mine_k, config.skip_top)
            continue
        if spec.kind == "tsv":
            groups = read_tsv_groups(path)
            if not groups:
                raise InputError(f"{path}: no question has both a correct and a wrong sentence")
            train_q, dev_q = split_dev([g.qid for g in groups], config.dev_fraction, config.split_seed)
            held = set(dev_q)
            dev = [_tsv_dev_query(g, config.split_seed) for g in groups if g.qid in held]
            groups = [g for g in groups if g.qid not in held]
            _add_counterfactuals(spec, groups, config)
            sources.append(Source(spec=spec, groups=groups, max_length=spec.max_length or config.qa_max_length,
                                  dev=dev))
            log.info("source %s: %d questions (tsv), %d held out", spec.name, len(groups), len(dev))
            continue
        corpus, queries, qrels = read_beir(path, spec.split)
        qids = [q for q in qrels if q in queries]
        if not qids:
            raise InputError(f"{path}: no {spec.split} queries with judgments")
        train_q, dev_q = split_dev(qids, config.dev_fraction, config.split_seed)
        same = config.select_retriever in (None, config.mine_retriever)
        k = max(config.mine_k + config.skip_top, config.dev_k, config.select_k if config.select and same else 0)
        mined = mine(spec, corpus, queries, sorted(qids), config.mine_retriever, k, cache_dir, config.index_wait)
        groups = []
        for q in train_q:
            pos = [d for d in qrels[q] if d in corpus]
            cand = mined.get(q, [])[config.skip_top: config.skip_top + config.mine_k]
            negs = [d for d, _ in cand if d not in qrels[q]]
            if pos and negs:
                groups.append(Group(qid=q, query=queries[q], positives=[_doc_text(*corpus[d]) for d in pos],
                                    negatives=[_doc_text(*corpus[d]) for d in negs]))
        dev = _dev_queries(dev_q, mined, corpus, queries, qrels)
        if not groups:
            raise InputError(f"{path}: no training query has both a positive and a mined negative")
        _add_counterfactuals(spec, groups, config)
        sources.append(Source(spec=spec, groups=groups, max_length=spec.max_length or config.max_length, dev=dev))
        log.info("source %s: %d train queries, %d held out (%s top-%d mining, skip %d)", spec.name, len(groups),
                 len(dev), config.mine_retriever, config.mine_k, config.skip_top)
    return sources


def _add_counterfactuals(spec: SourceSpec, groups: list[Group], config: TrainConfig) -> None:
    """With ``config.swap_negatives``: each group's entity-swapped positives, names drawn from the source's own
    positives (seeded by the training seed and the source's name, so a rerun or a resume builds the same texts)."""
    if not config.swap_negatives:
        return
    from crossrank.train.counterfactual import entity_pool, swap_entity

    pool = entity_pool(p for g in groups for p in g.positives)
    rng = np.random.default_rng([config.seed, int(hashlib.sha256(spec.name.encode()).hexdigest()[:8], 16)])
    for g in groups:
        swapped = (swap_entity(g.query, p, pool, rng) for p in g.positives)
        g.counterfactuals = [t for t in swapped if t is not None]
    log.info("source %s: %d of %d groups have a counterfactual negative", spec.name,
             sum(bool(g.counterfactuals) for g in groups), len(groups))


def _dev_queries(dev_q, mined, corpus, queries, qrels) -> list[DevQuery]:
    dev = []
    for q in dev_q:
        cand = mined.get(q, [])
        dev.append(DevQuery(qid=q, query=queries[q], doc_ids=[d for d, _ in cand],
                            texts=[_doc_text(*corpus[d]) for d, _ in cand],
                            first_stage_scores=[s for _, s in cand], qrels=dict(qrels[q])))
    return dev


def _tsv_dev_query(g: Group, seed: int) -> DevQuery:
    """A held-out answer-selection question as a dev query: its candidates in a seeded shuffle (file order can
    put the correct answers first), no first-stage scores (there is no first stage to fuse with)."""
    texts = g.positives + g.negatives
    ids = [f"{g.qid}:{i}" for i in range(len(texts))]
    perm = np.random.default_rng([seed, int(hashlib.sha256(g.qid.encode()).hexdigest()[:8], 16)]).permutation(len(texts))
    return DevQuery(qid=g.qid, query=g.query, doc_ids=[ids[i] for i in perm], texts=[texts[i] for i in perm],
                    first_stage_scores=[], qrels={ids[i]: 1 for i in range(len(g.positives))})


def interleave(lists: list[list[DevQuery]]) -> list[DevQuery]:
    """Round-robin over the sources' held-out queries, so the first N dev queries come from every source."""
    out: list[DevQuery] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def selection_queries(config: TrainConfig, sources: list[Source], cache_dir: Path) -> list[DevQuery]:
    """Held-out BEIR queries with the selection first stage's top ``select_k`` (the mining stage's when the same).
    Answer-selection sources have no first stage to fuse with, so they take no part in choosing the fusion."""
    if config.select_retriever in (None, config.mine_retriever):
        return interleave([s.dev for s in sources if s.spec.kind != "tsv"])
    out: list[DevQuery] = []
    for s in sources:
        if s.spec.kind != "beir" or not s.dev:
            continue
        spec = SourceSpec(**{**s.spec.__dict__, "index": config.select_index or s.spec.index})
        corpus, queries, qrels = read_beir(Path(spec.path), spec.split)
        dev_q = [q.qid for q in s.dev]
        mined = mine(spec, corpus, queries, dev_q, config.select_retriever, config.select_k, cache_dir,
                     config.index_wait)
        out += _dev_queries(dev_q, mined, corpus, queries, qrels)
    return out


# ---------------------------------------------------------------------------------------------------- schedule


@dataclass
class Item:
    """One group in a batch: source, group index, chosen positive, chosen negatives (mined, and counterfactual:
    indexes into the group's ``counterfactuals``)."""

    source: int
    group: int
    pos: int
    negs: list[int]
    swaps: list[int] = field(default_factory=list)


def build_schedule(sources: list[Source], config: TrainConfig) -> list[list[list[Item]]]:
    """``schedule[step][micro]`` = the groups of that micro-batch. Every micro-batch comes from one source (so
    short answer sentences are not padded to abstract length). Pure function of (sources, config)."""
    rng = np.random.default_rng(config.seed + 1)
    weights = np.array([s.spec.weight for s in sources], dtype=float)
    weights /= weights.sum()
    perms: list[list[int]] = [[] for _ in sources]
    schedule: list[list[list[Item]]] = []
    for _step in range(config.max_steps):
        micro_batches = []
        for _m in range(config.grad_accum):
            si = int(rng.choice(len(sources), p=weights))
            src = sources[si]
            items = []
            for _g in range(config.groups_per_batch):
                if not perms[si]:
                    perms[si] = [int(i) for i in rng.permutation(len(src.groups))]
                gi = perms[si].pop()
                g = src.groups[gi]
                pos = int(rng.integers(len(g.positives)))
                swaps = _draw(rng, len(g.counterfactuals), min(config.swap_negatives, config.negatives - 1))
                n = min(config.negatives - len(swaps), len(g.negatives))
                negs = [int(i) for i in rng.choice(len(g.negatives), size=n, replace=False)]
                items.append(Item(si, gi, pos, negs, swaps))
            micro_batches.append(items)
        schedule.append(micro_batches)
    return schedule


def _draw(rng: np.random.Generator, available: int, wanted: int) -> list[int]:
    """Up to ``wanted`` of ``available`` indexes; no draw at all when none is wanted or available, so that runs
    without counterfactual negatives keep the schedule they always had."""
    k = min(available, wanted)
    return [int(i) for i in rng.choice(available, size=k, replace=False)] if k > 0 else []


def describe(sources: list[Source], schedule: list[list[list[Item]]]) -> dict[str, Any]:
    counts = [0] * len(sources)
    for step in schedule:
        for mb in step:
            counts[mb[0].source] += len(mb)
    return {s.spec.name: {"groups_available": len(s.groups), "groups_seen": c} for s, c in zip(sources, counts, strict=True)}
