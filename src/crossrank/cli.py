"""The ``crossrank`` command: a thin shell over the Python API.

Every command maps to one API call; the shell adds argument parsing, progress display and exit codes.
Errors raised on purpose (``CrossrankError``) print one ``error: ...`` line and exit with status 2; nothing
prints a traceback unless ``CROSSRANK_DEBUG=1``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from crossrank.errors import CrossrankError, InputError

app = typer.Typer(
    name="crossrank",
    help="Retrieve-then-rerank: index a corpus, search it with BM25/dense/hybrid retrieval, rerank with a cross-encoder.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Manage reranker models (export the bundled default).", no_args_is_help=True)
app.add_typer(model_app, name="model")

out = Console()
err = Console(stderr=True)

RETRIEVERS = ("bm25", "dense", "hybrid")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _int_csv(value: str, option: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError as exc:
        raise InputError(f"{option} expects comma-separated integers, got {value!r}") from exc


def _load_reranker_option(name: str, **options):
    """``none`` -> None; anything else goes to ``crossrank.load_reranker``."""
    if name.lower() == "none":
        return None
    from crossrank.rerank import load_reranker

    return load_reranker(name, **options)


def _print_result_table(result, title: str) -> None:
    table = Table(title=title, show_lines=False)
    table.add_column("rank", justify="right")
    table.add_column("id")
    table.add_column("first-stage", justify="right")
    table.add_column("rerank score", justify="right")
    table.add_column("text", overflow="fold", max_width=80)
    for h in result.hits:
        text = (h.title + ": " if h.title else "") + h.text
        table.add_row(
            str(h.rank),
            h.id,
            f"#{h.first_stage_rank} ({h.first_stage_score:.3f})",
            "-" if h.rerank_score is None else f"{h.rerank_score:.4f}",
            text[:160] + ("..." if len(text) > 160 else ""),
        )
    out.print(table)
    t = result.timings
    status = "reranked" if result.reranked else "first-stage order"
    if result.reason:
        status += f" ({result.reason})"
    out.print(
        f"[dim]{status}; {result.n_reranked}/{result.n_candidates} candidates reranked; "
        f"retrieve {t.retrieve_ms:.1f} ms, rerank {t.rerank_ms:.1f} ms, total {t.total_ms:.1f} ms[/dim]"
    )


@app.command()
def index(
    corpus: Path = typer.Argument(..., help="BEIR corpus.jsonl, any JSONL with id/title/text, or a folder of .txt/.md files."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Index directory to write (replaced atomically)."),
    methods: str = typer.Option("bm25,dense", help="Comma-separated: bm25, dense."),
    dense_model: str = typer.Option("default", help="Bi-encoder: 'default' (all-MiniLM-L6-v2, offline) or a sentence-transformers id/path."),
    chunk_tokens: int = typer.Option(200, help="Passage window in tokens (0: one passage per document)."),
    chunk_overlap: int = typer.Option(40, help="Tokens shared by consecutive windows."),
) -> None:
    """Build a persisted index of CORPUS."""
    from crossrank.corpus import load_corpus
    from crossrank.retrieve import build_index

    start = time.perf_counter()
    docs = load_corpus(corpus)
    idx = build_index(
        docs,
        out_dir,
        methods=tuple(_csv(methods)),
        dense_model=dense_model,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        progress=True,
    )
    err.print(
        f"indexed {len(docs)} documents as {len(idx.passages)} passages into {out_dir} "
        f"in {time.perf_counter() - start:.1f} s"
    )


@app.command()
def search(
    index_dir: Path = typer.Argument(..., help="Index directory made by 'crossrank index'."),
    query: str = typer.Argument(..., help="The query."),
    k: int = typer.Option(100, "--k", help="Candidates from the first stage."),
    n: int = typer.Option(10, "--n", help="Results returned."),
    retriever: str = typer.Option("hybrid", help="bm25, dense or hybrid."),
    reranker: str = typer.Option("default", help="'default' (bundled), 'none', a model id/path, or a rerank service URL."),
    fusion: str = typer.Option("auto", help="Final order: none (cross-encoder), rrf, interpolate[:w], or auto (the model's recommendation)."),
    deadline_ms: Optional[float] = typer.Option(None, help="Time budget; the reranker is cut short to meet it."),
    unit: str = typer.Option("passage", help="passage or document (best passage per document)."),
    as_json: bool = typer.Option(False, "--json", help="Print the documented JSON schema instead of a table."),
) -> None:
    """Search an index: retrieve K, rerank, return N."""
    from crossrank.pipeline import Pipeline
    from crossrank.retrieve import load_index

    if retriever not in RETRIEVERS:
        raise InputError(f"unknown retriever {retriever!r}: use one of {', '.join(RETRIEVERS)}")
    idx = load_index(index_dir)
    rr = _load_reranker_option(reranker)
    pipe = Pipeline(
        idx.retriever(retriever),
        rr,
        k=k,
        n=n,
        deadline_ms=deadline_ms,
        fusion=_resolve_fusion(fusion, reranker),
        unit=unit,  # type: ignore[arg-type]
    )
    result = pipe.search(query)
    pipe.close()
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
    else:
        _print_result_table(result, f"{retriever} top-{k} -> {reranker} -> top-{n}")


def _resolve_fusion(fusion: str, reranker_name: str) -> str | dict | None:
    """``auto``: the reranker's recommended setting if it ships one (the bundled default does), else none."""
    if fusion != "auto":
        return fusion
    if reranker_name.lower() == "none" or reranker_name.startswith(("http://", "https://")):
        return "none"
    from crossrank.rerank import recommended_fusion

    return recommended_fusion(reranker_name) or "none"


@app.command()
def quickstart(
    query: str = typer.Argument("why can't I sleep after drinking coffee in the afternoon?", help="Query to run."),
    reranker: str = typer.Option("default", help="Reranker to use ('default' is bundled)."),
    k: int = typer.Option(20, "--k"),
    n: int = typer.Option(5, "--n"),
) -> None:
    """Index the bundled sample corpus and show first-stage vs reranked order, with timings. Offline."""
    from crossrank.corpus import load_corpus
    from crossrank.pipeline import Pipeline
    from crossrank.retrieve import build_index

    sample = Path(__file__).parent / "data" / "sample_corpus.jsonl"
    start = time.perf_counter()
    docs = load_corpus(sample)
    idx = build_index(docs, None, progress=True)
    err.print(f"indexed {len(docs)} sample documents ({len(idx.passages)} passages) in {time.perf_counter() - start:.1f} s")
    rr = _load_reranker_option(reranker)
    with Pipeline(idx.retriever("hybrid"), rr, k=k, n=n, fusion=_resolve_fusion("auto", reranker), unit="document") as pipe:
        pipe.retriever.search("warm up", k=1)  # lazy model loads stay out of the printed timings
        first = pipe.search(query, rerank=False)
        final = pipe.search(query)
    out.print(f"\n[bold]query:[/bold] {query}\n")
    _print_result_table(first, f"first stage (hybrid BM25 + all-MiniLM-L6-v2), top {n}")
    _print_result_table(final, f"reranked by {reranker}, top {n}")


@app.command()
def serve(
    model: str = typer.Option("default", help="Reranker: 'default', a model id or path."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8080),
    index_dir: Optional[Path] = typer.Option(None, "--index", help="Also serve POST /search over this index."),
    retriever: str = typer.Option("hybrid", help="First stage for /search: bm25, dense or hybrid."),
    k: int = typer.Option(100, "--k", help="Default K for /search."),
    n: int = typer.Option(10, "--n", help="Default N for /search."),
    api_key: Optional[str] = typer.Option(None, envvar="CROSSRANK_API_KEY", help="Require 'Authorization: Bearer KEY'."),
    max_documents: int = typer.Option(1000, help="Most documents per request."),
    max_body_bytes: int = typer.Option(8 * 1024 * 1024, help="Largest request body."),
    max_queue_pairs: int = typer.Option(20000, help="Pairs waiting before requests get 429."),
    max_queue_requests: int = typer.Option(512, help="Requests waiting before requests get 429."),
    batch_wait_ms: float = typer.Option(0.0, help="Wait this long for more requests before a forward pass."),
    batch_tokens: int = typer.Option(16384, help="Token budget per forward pass."),
    no_dynamic_batching: bool = typer.Option(False, help="Run each request alone (for comparison)."),
    long_documents: str = typer.Option("truncate", help="truncate or chunk (max-score over windows)."),
    deadline_ms: Optional[float] = typer.Option(None, help="Default per-request deadline."),
) -> None:
    """Run the reranker as an HTTP service (TEI /rerank, Cohere /v2/rerank, Jina/Voyage /v1/rerank)."""
    from crossrank import serve as serve_mod

    serve_mod.run(
        model=model,
        host=host,
        port=port,
        index=index_dir,
        retriever=retriever,
        k=k,
        n=n,
        api_key=api_key,
        max_documents=max_documents,
        max_body_bytes=max_body_bytes,
        max_queue_pairs=max_queue_pairs,
        max_queue_requests=max_queue_requests,
        batch_wait_ms=batch_wait_ms,
        batch_tokens=batch_tokens,
        dynamic_batching=not no_dynamic_batching,
        long_documents=long_documents,
        deadline_ms=deadline_ms,
    )


@app.command(name="eval")
def eval_cmd(
    dataset: Path = typer.Argument(..., help="A BEIR-layout dataset dir, or an answer-selection dir/TSV."),
    split: Optional[str] = typer.Option(None, help="Split to evaluate (default: test, or dev where there is no test)."),
    retrievers: str = typer.Option("bm25,dense,hybrid"),
    rerankers: str = typer.Option("none,default"),
    k: str = typer.Option("10,20,50,100,200", "--k"),
    n: str = typer.Option("5,10,20", "--n"),
    fusion: str = typer.Option("none,auto", help="Comma-separated fusions to report: none, rrf, interpolate[:w], auto (the model's recommendation)."),
    rerank_max_k: Optional[str] = typer.Option(
        None, help="Rerank some first stages only up to a depth, e.g. 'bm25=100,dense=100' (saves scoring time)."),
    backend: Optional[str] = typer.Option(
        None, help="Rerank backend: torch, torch-int8, onnx, onnx-int8, auto (default: the engine's)."),
    max_length: Optional[int] = typer.Option(None, help="Tokens per (query, document) pair (default: the model's)."),
    out_dir: Optional[Path] = typer.Option(None, "--out"),
    index_dir: Optional[Path] = typer.Option(
        None, "--index", help="Saved crossrank index of the BEIR corpus, whole documents (default: built under --out)."),
    max_queries: Optional[int] = typer.Option(None, help="Evaluate only the first M queries (quick look)."),
) -> None:
    """Does reranking help on this data? Metrics, K/N sweeps with latency, report.md/report.html."""
    from crossrank.evaluate import run_eval

    caps = None
    if rerank_max_k:
        caps = {}
        for item in _csv(rerank_max_k):
            name, sep, depth = item.partition("=")
            if not sep or not depth.strip().isdigit():
                raise InputError(f"--rerank-max-k expects RETRIEVER=K pairs, got {item!r}")
            caps[name.strip()] = int(depth)
    reranker_options = {key: v for key, v in (("backend", backend), ("max_length", max_length)) if v is not None}
    path = run_eval(
        dataset,
        split=split,
        retrievers=_csv(retrievers),
        rerankers=_csv(rerankers),
        ks=_int_csv(k, "--k"),
        ns=_int_csv(n, "--n"),
        fusions=_csv(fusion),
        rerank_max_k=caps,
        reranker_options=reranker_options or None,
        out_dir=out_dir,
        index_dir=index_dir,
        max_queries=max_queries,
    )
    err.print(f"wrote {path}/results.json, report.md, report.html")
    report = Path(path) / "report.md"
    if report.exists():
        out.print(report.read_text(encoding="utf-8"))


@app.command()
def tune(
    dataset: Path = typer.Argument(...),
    latency_budget_ms: float = typer.Option(..., help="p95 end-to-end latency budget on this machine."),
    split: Optional[str] = typer.Option(None),
    out_dir: Optional[Path] = typer.Option(None, "--out"),
) -> None:
    """Recommend K, N, retriever and reranker maximising quality under a latency budget."""
    from crossrank.evaluate import run_tune

    recommendation = run_tune(dataset, latency_budget_ms=latency_budget_ms, split=split, out_dir=out_dir)
    out.print(recommendation.explanation)
    # soft_wrap: the command must stay one copy-pasteable line
    out.print(f"Pipeline settings: {recommendation.search_command()}", soft_wrap=True, markup=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context) -> None:
    """Fine-tune a cross-encoder (see 'crossrank train --help' for all options)."""
    from crossrank.train.__main__ import main as train_main

    code = train_main(list(ctx.args))
    raise typer.Exit(code or 0)


@model_app.command("export")
def model_export(
    name: str = typer.Argument(..., help="'default' (the bundled model) or a crossrank bundle directory."),
    out_dir: Path = typer.Argument(..., help="Directory to write a standard Hugging Face checkpoint into."),
) -> None:
    """Write a model as a standard Hugging Face checkpoint (loads in transformers, sentence-transformers, TEI)."""
    from crossrank.rerank.bundled import DEFAULT_BUNDLE_DIR, bundle_available, export_bundle

    # a bundle directory from `crossrank train --pack` or from the repository's history (an earlier default);
    # a missing default is reported by export_bundle itself
    bundle_dir = DEFAULT_BUNDLE_DIR if name == "default" else Path(name)
    if name != "default" and not bundle_available(bundle_dir):
        raise InputError(f"{name!r} is neither 'default' nor a complete crossrank bundle directory "
                         "(config.json, delta.safetensors, crossrank_bundle.json)")
    export_bundle(out_dir, bundle_dir)
    err.print(f"exported {'the default reranker' if name == 'default' else name} to {out_dir}")


def _quiet_libraries() -> None:
    """transformers 5 prints a progress bar and a load report for every model load; the CLI shows its own."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning expected errors into one line and exit code 2."""
    _quiet_libraries()
    try:
        app(args=argv, standalone_mode=False)
    except CrossrankError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("aborted")
        return 130
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:  # click usage errors and anything unexpected
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        if os.environ.get("CROSSRANK_DEBUG"):
            raise
        err.print(f"[red]error:[/red] unexpected {type(exc).__name__}: {exc} (set CROSSRANK_DEBUG=1 for a traceback)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
