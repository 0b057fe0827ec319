"""The ``crossrank`` command: a thin shell over the Python API.

Every command maps to one API call; the shell adds argument parsing, progress display and exit codes.
Exit status: 0 success; 2 usage or input error (bad command, option or value; ``CrossrankError``); 130 Ctrl-C;
1 a bug. Each failure prints one unwrapped ``error: ...`` line on stderr; a traceback only with ``CROSSRANK_DEBUG=1``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer._click.exceptions import ClickException, UsageError  # typer bundles its own click

from crossrank.errors import CrossrankError, InputError
from crossrank.types import DEFAULT_N

app = typer.Typer(
    name="crossrank",
    help="Retrieve-then-rerank: index a corpus, search it with BM25/dense/hybrid retrieval, rerank with a cross-encoder.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
# no no_args_is_help: a missing command is a usage error (status 2, one line), not a help page
model_app = typer.Typer(help="Manage reranker models (export the bundled default).")
app.add_typer(model_app, name="model")

out = Console()
err = Console(stderr=True)

def _check_retrievers(given: list[str], option: str | None = None) -> None:
    """An ``InputError`` unless every name is a retriever kind of the index (``retrieve.base.KINDS``, imported
    here: the commands that check it load the retrieve package next anyway)."""
    from crossrank.retrieve.base import KINDS

    kinds = ", ".join(sorted(KINDS))
    bad = [r for r in given if r not in KINDS]
    if option is not None and (bad or not given):
        raise InputError(f"{option}: unknown or none {bad or given}; use some of {kinds}")
    if bad:
        raise InputError(f"unknown retriever {bad[0]!r}: use one of {kinds}")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _int_csv(value: str, option: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError as exc:
        raise InputError(f"{option} expects comma-separated integers, got {value!r}") from exc


_PROMPT_FORMAT_HELP = ("LLM rerankers: how the model reads a pair (qwen3-reranker, bge-reranker-v2-gemma, or a JSON "
                       "file); default: the checkpoint's own or the one its name implies.")
_REMOTE_CODE_HELP = "Allow a checkpoint to run code from its repository (off: such models are refused)."


def _model_options(prompt_format: str | None, trust_remote_code: bool) -> dict:
    """Loading options for a local model, only those set (a bundle or a URL takes none)."""
    opts: dict = {}
    if prompt_format:
        opts["prompt_format"] = prompt_format
    if trust_remote_code:
        opts["trust_remote_code"] = True
    return opts


def _load_reranker_option(name: str, **options):
    """``none`` -> None; anything else goes to ``crossrank.load_reranker``."""
    if name.lower() == "none":
        return None
    from crossrank.rerank import load_reranker

    return load_reranker(name, **options)


def _first_stage_label(retriever: str) -> str | None:
    """What the first-stage score of this retriever is (None: not worth showing)."""
    retriever = retriever.removeprefix("milvus:")  # a Milvus store's retrievers score as the built-in ones do
    if retriever.startswith("hybrid-rrf"):
        return "RRF"
    return {"bm25": "BM25", "dense": "cosine"}.get(retriever)


def _sort_rule(fusion) -> str:
    if fusion is None or fusion.method == "none":
        return "sorted by relevance (the cross-encoder's score)"
    if fusion.method == "rrf":
        return "sorted by score = RRF of the relevance and first-stage ranks"
    if fusion.method == "confidence":
        return (f"sorted by score = w z(relevance) + (1 - w) z(first stage), w = {fusion.weight:g} x the best "
                "relevance")
    return f"sorted by score = {fusion.weight:g} z(relevance) + {1 - fusion.weight:g} z(first stage)"


def _print_result_table(result, title: str, *, fusion=None, unit: str = "passage", load_ms: float | None = None,
                        min_score: float | None = None) -> None:
    """The hits with the score they are sorted by; a one-line message when there are none."""
    if not result.hits:
        _print_no_results(result, min_score)
    else:
        out.print(_result_table(result, title, fusion, unit))
    t = result.timings
    status = "first-stage order"
    if result.reranked:
        status = f"reranked {result.n_reranked}/{result.n_candidates} candidate passages"
    if result.reason:
        status += f" ({result.reason})"
    if result.reranked:
        status += "; " + _sort_rule(fusion)
    load = f"; loading and warm-up took {load_ms:.0f} ms" if load_ms is not None else ""
    out.print(f"[dim]{escape(status)}[/dim]", soft_wrap=True)
    out.print(f"[dim]query: retrieve {t.retrieve_ms:.1f} ms, rerank {t.rerank_ms:.1f} ms, "
              f"total {t.total_ms:.1f} ms{load}[/dim]", soft_wrap=True)


def _print_no_results(result, min_score: float | None) -> None:
    if result.n_candidates == 0:
        out.print("no results: nothing in the index matches this query", soft_wrap=True)
    elif result.below_min_score and min_score is not None:
        out.print(f"no results: all {result.below_min_score} reranked hits scored below --min-score {min_score:g}",
                  soft_wrap=True)
    else:
        out.print("no results", soft_wrap=True)


def _result_table(result, title: str, fusion, unit: str) -> Table:
    reranked = result.reranked
    fused = reranked and fusion is not None and fusion.method != "none"
    label = _first_stage_label(result.retriever)
    table = Table(title=title, show_lines=False)
    table.add_column("rank", justify="right", no_wrap=True)
    table.add_column("document" if unit == "document" else "passage")
    if fused:
        table.add_column("score", justify="right", no_wrap=True)
    if reranked:
        table.add_column("relevance", justify="right", no_wrap=True)
    table.add_column(f"first stage ({label})" if label else "first stage", justify="right", no_wrap=True)
    table.add_column("text", overflow="fold", max_width=80)
    for h in result.hits:
        text = (h.title + ": " if h.title else "") + h.text
        row = [str(h.rank), h.doc_id if unit == "document" else h.id]
        if fused:
            row.append("-" if h.rerank_score is None else f"{h.score:.4f}")
        if reranked:
            row.append("-" if h.rerank_score is None else f"{h.rerank_score:.4f}")
        row.append(f"#{h.first_stage_rank}" + (f" ({h.first_stage_score:.3f})" if label else ""))
        row.append(text[:160] + ("..." if len(text) > 160 else ""))
        table.add_row(*(escape(c) for c in row))
    return table


@app.command()
def index(
    corpus: Optional[Path] = typer.Argument(None, help="BEIR corpus.jsonl, any JSONL with id/title/text, or a folder of .txt/.md files (omit with --add/--delete)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Index directory to write (replaced atomically)."),
    store: Optional[str] = typer.Option(None, "--store", help="Also (or only) write the index to Milvus: milvus:///ABS/PATH.db (Milvus Lite, embedded), milvus://HOST:PORT or http(s)://HOST:PORT (a server), ?collection=NAME (default crossrank)."),
    methods: str = typer.Option("bm25,dense", help="Comma-separated: bm25, dense."),
    dense_model: str = typer.Option("default", help="Bi-encoder: 'default' (all-MiniLM-L6-v2, offline) or a sentence-transformers id/path."),
    chunk_tokens: int = typer.Option(200, help="Passage window in tokens (0: one passage per document)."),
    chunk_overlap: int = typer.Option(40, help="Tokens shared by consecutive windows."),
    ann: str = typer.Option("auto", help="ANN graph for the dense side: auto (from 100,000 passages on), on, off."),
    add: Optional[Path] = typer.Option(None, "--add", help="Update the index at --out: add (or replace) the documents of this corpus file."),
    delete: Optional[Path] = typer.Option(None, "--delete", help="Update the index at --out: delete the document ids listed in this file, one per line."),
) -> None:
    """Build a persisted index of CORPUS (--out DIR and/or --store URI), or update one in place with --add /
    --delete (the index's own methods, model and chunking are kept; the options that set them are ignored then)."""
    from crossrank.corpus import load_corpus

    start = time.perf_counter()
    if ann not in ("auto", "on", "off"):
        raise InputError(f"--ann must be auto, on or off, got {ann!r}")
    if store is not None:
        from crossrank.retrieve.milvus import parse_store_uri

        parse_store_uri(store)  # a bad URI fails before the corpus is read and encoded
    if add is not None or delete is not None:
        if store is not None:
            raise InputError("--add/--delete update an index directory (--out); rebuild a Milvus store with "
                             "'crossrank index CORPUS --store URI'")
        if out_dir is None:
            raise InputError("--add/--delete need --out DIR, the index to update")
        if corpus is not None:
            raise InputError("give either CORPUS (build) or --add/--delete (update an existing index), not both")
        from crossrank.retrieve.update import read_ids, update_index

        docs = load_corpus(add) if add is not None else []
        ids = read_ids(delete) if delete is not None else []
        change = update_index(out_dir, add=docs, delete=ids, progress=err.is_terminal)
        missing = change["ids_not_found"]
        err.print(
            f"updated {out_dir}: +{change['added_passages']} / -{change['deleted_passages']} passages "
            f"(+{change['added_documents']} / -{change['deleted_documents']} documents"
            + (f", {len(missing)} ids to delete were not in the index" if missing else "")
            + f"), now {change['counts']['passages']} passages, in {time.perf_counter() - start:.1f} s",
            soft_wrap=True, markup=False,
        )
        return
    if corpus is None:
        raise InputError("missing CORPUS: give a corpus to build an index from, or --add/--delete to update one")
    if out_dir is None and store is None:
        raise InputError("say where the index goes: --out DIR (a crossrank index) and/or --store URI (Milvus)")
    from crossrank.retrieve import build_index

    docs = load_corpus(corpus)
    idx = build_index(
        docs,
        out_dir,
        methods=tuple(_csv(methods)),
        dense_model=dense_model,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        progress=err.is_terminal,  # no progress bars in pipes and logs
        ann={"auto": None, "on": True, "off": False}[ann],
    )
    if store is not None:
        from crossrank.retrieve import write_store

        write_store(idx, store).close()
    where = " and ".join(str(w) for w in (out_dir, store) if w is not None)
    err.print(
        f"indexed {len(docs)} documents as {len(idx.passages)} passages into {where} "
        f"in {time.perf_counter() - start:.1f} s", soft_wrap=True, markup=False,
    )


# the CLI's warm-up bound on each reranker call: the deadline (at least this much, so a cold local model still
# gets measured), at most the pipeline's own WARM_UP_TIMEOUT_S
_WARM_UP_MIN_S = 2.0


def _warm_up_bound(deadline_ms: float | None) -> float:
    from crossrank.pipeline import WARM_UP_TIMEOUT_S

    if deadline_ms is None or not deadline_ms > 0:  # a bad deadline is reported by the search itself
        return WARM_UP_TIMEOUT_S
    return min(WARM_UP_TIMEOUT_S, max(deadline_ms / 1000.0, _WARM_UP_MIN_S))


def _check_search_options(**options: Any) -> None:
    """The pipeline's own option checks (:func:`crossrank.pipeline.check_options`), run before anything loads,
    each error naming the command-line option."""
    from crossrank.errors import InputError
    from crossrank.pipeline import check_options

    for name, value in options.items():
        try:
            check_options(**{name: value})
        except InputError as e:
            raise InputError(f"invalid value for '--{name.replace('_', '-')}': {e}") from None


@app.command()
def search(
    index_dir: str = typer.Argument(..., help="Index directory made by 'crossrank index --out', or a Milvus store URI made by 'crossrank index --store' (milvus:///ABS/PATH.db, milvus://HOST:PORT, http(s)://HOST:PORT)."),
    query: str = typer.Argument(..., help="The query."),
    k: int = typer.Option(100, "--k", help="Candidates from the first stage."),
    n: Optional[int] = typer.Option(None, "--n", help="Results returned (default: 10, or K when K is smaller)."),
    retriever: str = typer.Option("hybrid", help="bm25, dense or hybrid."),
    reranker: str = typer.Option("default", help="'default', 'fast' or 'fast-student' (bundled), 'none', a depth like default@20 (rerank the first stage's top 20), a cascade like fast-student>default@20, a model id/path, or a rerank service URL."),
    fusion: str = typer.Option("auto", help="Final order: none (cross-encoder), rrf, interpolate[:w], confidence[:w], or auto (the model's recommendation)."),
    deadline_ms: Optional[float] = typer.Option(None, help="Time budget; the reranker is cut short to meet it."),
    min_score: Optional[str] = typer.Option(
        None, help="Drop reranked hits whose relevance (0-1) is below this; 'auto': the model's 'nothing relevant' threshold."),
    unit: str = typer.Option(
        "document", help="document (one row per document, its best passage) or passage (every matching passage)."),
    as_json: bool = typer.Option(False, "--json", help="Print the documented JSON schema instead of a table."),
    instruction: Optional[str] = typer.Option(
        None, help="Task instruction for LLM rerankers whose prompt takes one (default: the model's own)."),
    prompt_format: Optional[str] = typer.Option(None, help=_PROMPT_FORMAT_HELP),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=_REMOTE_CODE_HELP),
) -> None:
    """Search an index: retrieve K, rerank, return N."""
    from crossrank.errors import check_query
    from crossrank.pipeline import Pipeline, check_k_n
    from crossrank.retrieve import open_index

    _check_retrievers([retriever])
    check_query(query)  # bad input fails before seconds of model loading
    n = min(DEFAULT_N, k) if n is None else n
    check_k_n(k, n)
    _check_search_options(fusion=fusion, min_score=min_score, unit=unit, deadline_ms=deadline_ms)
    start = time.perf_counter()
    idx = open_index(index_dir)
    rr = _load_reranker_option(reranker, **_model_options(prompt_format, trust_remote_code))
    pipe = Pipeline(
        idx.retriever(retriever),
        rr,
        k=k,
        n=n,
        deadline_ms=deadline_ms,
        fusion=fusion,
        min_score=min_score,
        unit=unit,  # type: ignore[arg-type]
        instruction=instruction,
    )
    with pipe:
        # lazy loads and the throughput estimate stay out of the query's timings and deadline; bounded, so a
        # reranker that never answers costs seconds here, not its own timeouts and retries
        pipe.warm_up(timeout_s=_warm_up_bound(deadline_ms))
        load_ms = (time.perf_counter() - start) * 1000.0
        result = pipe.search(query)
    if as_json:
        out.print_json(json.dumps({**result.to_dict(), "load_ms": round(load_ms, 3)}))
    else:
        _print_result_table(result, f"{retriever} top-{k} -> {reranker} -> top-{n}", fusion=pipe.fusion,
                            unit=unit, load_ms=load_ms, min_score=pipe.min_score)




@app.command()
def quickstart(
    query: str = typer.Argument("why can't I sleep after drinking coffee in the afternoon?", help="Query to run."),
    reranker: str = typer.Option("default", help="Reranker to use ('default' and 'fast' are bundled)."),
    k: int = typer.Option(20, "--k", help="Candidates from the first stage."),
    n: int = typer.Option(5, "--n", help="Results shown."),
) -> None:
    """Index the bundled sample corpus and show first-stage vs reranked order, with timings. Offline."""
    from crossrank.corpus import load_corpus
    from crossrank.pipeline import Pipeline, check_k_n
    from crossrank.retrieve import build_index

    check_k_n(k, n)
    sample = Path(__file__).parent / "data" / "sample_corpus.jsonl"
    start = time.perf_counter()
    docs = load_corpus(sample)
    idx = build_index(docs, None, progress=err.is_terminal)
    err.print(f"indexed {len(docs)} sample documents ({len(idx.passages)} passages) in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    rr = _load_reranker_option(reranker)
    with Pipeline(idx.retriever("hybrid"), rr, k=k, n=n, fusion="auto", unit="document") as pipe:
        pipe.warm_up()  # lazy model loads stay out of the printed timings
        load_ms = (time.perf_counter() - start) * 1000.0
        first = pipe.search(query, rerank=False)
        final = pipe.search(query)
    out.print(f"\n[bold]query:[/bold] {escape(query)}\n")
    _print_result_table(first, f"first stage (hybrid BM25 + all-MiniLM-L6-v2), top {n}", unit="document")
    _print_result_table(final, f"reranked by {reranker}, top {n}", fusion=pipe.fusion, unit="document",
                        load_ms=load_ms)


def _with_serve_settings(command):
    """Give ``command`` one option per server setting, made from ``crossrank.serve.config.SETTINGS`` (names,
    defaults, help, environment variables: the CLI spells none of them out) and passed as keyword arguments."""
    import inspect

    from crossrank.serve.config import SETTINGS  # plain data: no FastAPI, no model

    signature = inspect.signature(command)
    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for s in SETTINGS:
        flags = f"{s.flag}/--no-{s.flag[2:]}" if s.type is bool else s.flag
        annotation = s.type if s.default is not None else Optional[s.type]
        option = typer.Option(s.default, flags, help=s.help, envvar=s.envvar)
        params.append(inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
        command.__annotations__[s.name] = annotation
    command.__signature__ = signature.replace(parameters=params)
    return command


@app.command()
@_with_serve_settings
def serve(
    model: str = typer.Option("default", help="Reranker: 'default', 'fast', 'fast-student', a depth like default@20, a cascade like fast-student>default@20, a model id or path."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8080, help="TCP port to listen on."),
    index_dir: Optional[Path] = typer.Option(None, "--index", help="Also serve POST /search over this index."),
    retriever: str = typer.Option("hybrid", help="First stage for /search: bm25, dense or hybrid."),
    prompt_format: Optional[str] = typer.Option(None, help=_PROMPT_FORMAT_HELP),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=_REMOTE_CODE_HELP),
    **settings,
) -> None:
    """Run the reranker as an HTTP service (TEI /rerank, Cohere /v2/rerank, Jina/Voyage /v1/rerank). Every
    dialect takes an optional `instruction` for LLM rerankers."""
    from crossrank import serve as serve_mod
    from crossrank.serve.config import config_from_settings

    # bad options fail before seconds of model loading (the settings, K and N, a key file: ServeConfig's checks)
    _check_serve_options(retriever, port, index_dir, settings["deadline_ms"])
    config = config_from_settings(settings)
    serve_mod.run(model=model, host=host, port=port, index=index_dir, retriever=retriever,
                  reranker_options=_model_options(prompt_format, trust_remote_code) or None, config=config,
                  **settings)


def _check_serve_options(retriever, port, index_dir, deadline_ms) -> None:
    _check_retrievers([retriever])
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, got {port}")
    _check_search_options(deadline_ms=deadline_ms)  # the /search pipelines' deadline: the pipeline's rule
    if index_dir is not None:
        from crossrank.retrieve import read_manifest

        read_manifest(index_dir)


def _check_eval_options(dataset: Path, split, retrievers: list[str], ks: list[int], ns: list[int], fusion: str,
                        backend, max_length, max_queries, index_dir) -> None:
    """The cheap checks of ``eval``'s arguments, before any index build or model load."""
    from crossrank.evaluate.beir import parse_fusions
    from crossrank.evaluate.runner import detect_dataset
    from crossrank.rerank.backends import BACKENDS

    detect_dataset(dataset, split)
    _check_retrievers(retrievers, "--retrievers")
    for option, values in (("--k", ks), ("--n", ns)):
        if not values or min(values) < 1:
            raise InputError(f"{option} expects positive integers, got {values}")
    for option, value in (("--max-queries", max_queries), ("--max-length", max_length)):
        if value is not None and value < 1:
            raise InputError(f"{option} must be positive, got {value}")
    if backend is not None and backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    parse_fusions(_csv(fusion))
    if index_dir is not None:
        from crossrank.retrieve import read_manifest

        read_manifest(index_dir)


@app.command(name="eval")
def eval_cmd(
    dataset: Path = typer.Argument(..., help="A BEIR-layout dataset dir, or an answer-selection dir/TSV."),
    split: Optional[str] = typer.Option(None, help="Split to evaluate (default: test, or dev where there is no test)."),
    retrievers: str = typer.Option("bm25,dense,hybrid", help="Comma-separated first stages: bm25, dense, hybrid."),
    rerankers: str = typer.Option("none,default", help="Comma-separated rerankers: none, default, model ids/paths or URLs."),
    k: str = typer.Option("10,20,50,100,200", "--k", help="Comma-separated first-stage depths K to sweep."),
    n: str = typer.Option("5,10,20", "--n", help="Comma-separated result counts N to report."),
    fusion: str = typer.Option("none,auto", help="Comma-separated fusions to report: none, rrf, interpolate[:w], confidence[:w], auto (the model's recommendation)."),
    rerank_max_k: Optional[str] = typer.Option(
        None, help="Rerank some first stages only up to a depth, e.g. 'bm25=100,dense=100' (saves scoring time)."),
    backend: Optional[str] = typer.Option(
        None, help="Rerank backend: torch, torch-int8, onnx, onnx-int8, openvino, auto (default: the engine's)."),
    max_length: Optional[int] = typer.Option(None, help="Tokens per (query, document) pair (default: the model's)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder for results.json and the reports (default: ./crossrank-eval/DATASET-SPLIT)."),
    index_dir: Optional[Path] = typer.Option(
        None, "--index", help="Saved crossrank index of the BEIR corpus, whole documents (default: built under --out)."),
    max_queries: Optional[int] = typer.Option(None, help="Evaluate only the first M queries (quick look)."),
) -> None:
    """Does reranking help on this data? Metrics, K/N sweeps with latency, report.md/report.html."""
    from crossrank.evaluate import parse_rerank_max_k, run_eval

    caps = parse_rerank_max_k(rerank_max_k, _csv(retrievers), option="--rerank-max-k", among="--retrievers") or None
    ks, ns = _int_csv(k, "--k"), _int_csv(n, "--n")
    _check_eval_options(dataset, split, _csv(retrievers), ks, ns, fusion, backend, max_length, max_queries, index_dir)
    reranker_options = {key: v for key, v in (("backend", backend), ("max_length", max_length)) if v is not None}
    path = run_eval(
        dataset,
        split=split,
        retrievers=_csv(retrievers),
        rerankers=_csv(rerankers),
        ks=ks,
        ns=ns,
        fusions=_csv(fusion),
        rerank_max_k=caps,
        reranker_options=reranker_options or None,
        out_dir=out_dir,
        index_dir=index_dir,
        max_queries=max_queries,
    )
    _print_eval_summary(Path(path))


def _print_eval_summary(path: Path) -> None:
    """The headline table and where the rest is; the notes and the results.json schema stay in report.md."""
    from crossrank.evaluate.report import headline

    data = json.loads((path / "results.json").read_text(encoding="utf-8"))
    out.print(headline(data).rstrip(), markup=False, highlight=False, soft_wrap=True)
    out.print(f"\nreports: {path / 'report.md'} (with notes and the results.json schema), {path / 'report.html'} "
              f"(with plots); data: {path / 'results.json'}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def tune(
    dataset: Path = typer.Argument(..., help="A BEIR-layout dataset dir, or an answer-selection dir/TSV."),
    latency_budget_ms: float = typer.Option(..., help="p95 end-to-end latency budget on this machine."),
    split: Optional[str] = typer.Option(None, help="Split to tune on (default: test, or dev where there is no test)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Evaluation folder to reuse or write (default: ./crossrank-eval/DATASET-SPLIT)."),
) -> None:
    """Recommend K, N, retriever and reranker maximising quality under a latency budget."""
    from crossrank.evaluate import run_tune

    recommendation = run_tune(dataset, latency_budget_ms=latency_budget_ms, split=split, out_dir=out_dir)
    out.print(recommendation.explanation)
    # soft_wrap: the command must stay one copy-pasteable line
    out.print(f"Pipeline settings: {recommendation.search_command()}", soft_wrap=True, markup=False)


# every argument, --help included, goes to the argparse parser of crossrank.train.cli
@app.command(add_help_option=False, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context) -> None:
    """Fine-tune a cross-encoder ('crossrank train --help' lists the options)."""
    from crossrank.train.cli import main as train_main

    try:
        code = train_main(list(ctx.args), prog="crossrank train")
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        code = exc.code
    raise typer.Exit(code or 0)


@model_app.command("export")
def model_export(
    name: str = typer.Argument(..., help="'default' or 'fast-student' (the bundled models; 'fast' is their cascade: export each) or a crossrank bundle directory."),
    out_dir: Path = typer.Argument(..., help="Directory to write a standard Hugging Face checkpoint into."),
) -> None:
    """Write a model as a standard Hugging Face checkpoint with its ONNX graph at onnx/model.onnx (loads in
    transformers, sentence-transformers, TEI, ONNX Runtime, FlashRank)."""
    from crossrank.rerank.bundled import BUNDLED, bundle_available, bundled_dir, fast_spec
    from crossrank.train.export import export_model

    # a bundle directory from `crossrank train --pack` or from the repository's history (an earlier default);
    # a missing bundled model is reported by the export itself
    if name == "fast":  # a cascade of two models is not one checkpoint
        raise InputError(f"'fast' is a cascade ({fast_spec()}), not one checkpoint: export its models one by one, "
                         "'crossrank model export fast-student DIR' and 'crossrank model export default DIR'")
    bundle_dir = bundled_dir(name)
    if bundle_dir is None or (name not in BUNDLED and not bundle_available(bundle_dir)):
        raise InputError(f"{name!r} is neither {' nor '.join(map(repr, BUNDLED))} nor a complete crossrank bundle "
                         "directory (config.json, delta.safetensors, crossrank_bundle.json)")
    export_model(bundle_dir, out_dir)
    err.print(f"exported {f'the {name} reranker' if name in BUNDLED else name} to {out_dir}")


def _quiet_libraries() -> None:
    """transformers 5 prints a progress bar and a load report for every model load; the CLI shows its own."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _fail(message: str, code: int = 2) -> int:
    """Print one ``error: ...`` line on stderr (never wrapped, even when piped) and return ``code``."""
    err.print("[red]error:[/red]", escape(" ".join(str(message).split())), soft_wrap=True, highlight=False)
    return code


def _usage_message(exc: UsageError) -> str:
    message = exc.format_message().strip().rstrip(".").replace(". Did you mean", "; did you mean")
    message = message[:1].lower() + message[1:]
    ctx = exc.ctx
    if ctx is None:
        return message
    if hasattr(ctx.command, "list_commands") and "did you mean" not in message:  # name the valid commands
        message += "; commands: " + ", ".join(ctx.command.list_commands(ctx))
    return f"{message} (see '{ctx.command_path} --help')"


def _run(argv: list[str] | None) -> int:
    """Invoke the app without typer's standalone handling, so that every exception reaches ``main``."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with command.make_context("crossrank", args) as ctx:
            command.invoke(ctx)
    except typer.Exit as exc:  # --help, or a command's own status
        return exc.exit_code
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 ok, 2 usage/input error, 130 interrupted, 1 bug; one ``error:`` line for each failure."""
    _quiet_libraries()
    try:
        return _run(argv)
    except CrossrankError as exc:
        return _fail(str(exc))
    except UsageError as exc:
        return _fail(_usage_message(exc))
    except ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        return _fail("interrupted", 130)
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if os.environ.get("CROSSRANK_DEBUG"):
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (set CROSSRANK_DEBUG=1 for a traceback)", 1)


if __name__ == "__main__":
    sys.exit(main())
