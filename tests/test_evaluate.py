"""crossrank.evaluate: metrics against hand computation, the BEIR sweep on a tiny generated dataset with the tiny
real reranker, the persistent score cache, answer selection, answer-in-top-N, LLM answers through a local fake
OpenAI-compatible server, tuning, and dataset detection."""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli, shared_dataset
from crossrank.errors import InputError
from crossrank.evaluate import (
    SCHEMA_DOC,
    answer_in_top_n,
    answer_match,
    detect_dataset,
    evaluate_answer_selection,
    evaluate_beir,
    latency_plan,
    normalize_answer,
    ranking_metrics,
    recommend,
    run_eval,
    wins_losses_ties,
)
from crossrank.evaluate.answers import LLMAnswerCache, LLMConfig, llm_answer_accuracy
from crossrank.evaluate.beir import rerank_prefix
from crossrank.rerank.base import RerankScores, rank_by_scores
from crossrank.types import Candidate

# ---------------------------------------------------------------------------------------------- tiny dataset
DOCS = [
    ("d1", "Photosynthesis", "Plants convert sunlight, water and carbon dioxide into glucose and oxygen in chloroplasts."),
    ("d2", "Mitochondria", "Mitochondria produce ATP through oxidative phosphorylation; the powerhouse of the cell."),
    ("d3", "Volcanoes", "A volcano erupts when magma rises through the crust and escapes as lava, ash and gas."),
    ("d4", "Black holes", "A black hole is a region of spacetime where gravity is so strong that not even light escapes."),
    ("d5", "Insulin", "Insulin is a hormone made by the pancreas that lets cells absorb glucose from the blood."),
    ("d6", "Plate tectonics", "Earth's lithosphere is divided into plates whose motion causes earthquakes."),
    ("d7", "Moon", "The Moon orbits Earth every 27 days and its gravity drives the ocean tides."),
    ("d8", "DNA", "DNA is a double helix discovered by Watson and Crick in 1953, carrying genetic instructions."),
    ("d9", "Penicillin", "Alexander Fleming discovered penicillin in 1928, the first widely used antibiotic."),
    ("d10", "Speed of light", "Light travels through vacuum at about 299,792 kilometres per second."),
    ("d11", "Great Wall", "The Great Wall of China stretches over 21,000 kilometres across northern China."),
    ("d12", "Everest", "Mount Everest, at 8,849 metres, is the highest mountain above sea level."),
]
QUERIES = [
    ("q1", "what do plants make from sunlight", "d1", ["glucose"]),
    ("q2", "which organelle produces ATP", "d2", ["Mitochondria"]),
    ("q3", "why does a volcano erupt", "d3", ["magma"]),
    ("q4", "who discovered penicillin", "d9", ["Alexander Fleming"]),
    ("q5", "how high is mount everest", "d12", ["8,849 metres"]),
    ("q6", "what causes ocean tides", "d7", ["the Moon's gravity", "Moon"]),
]


def write_beir(root: Path, with_answers: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for did, title, text in DOCS:
            f.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text, _, answers in QUERIES:
            f.write(json.dumps({"_id": qid, "text": text, "metadata": {"answers": answers} if with_answers else {}}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    rows = ["query-id\tcorpus-id\tscore"] + [f"{qid}\t{did}\t1" for qid, _, did, _ in QUERIES]
    rows.append("q4\td8\t1")  # a second relevant document for one query
    (root / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


class CountingReranker:
    """Wraps the real reranker and counts what it is asked to score (optionally failing after some calls)."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner = inner
        self.name = "tiny"
        self.calls = 0
        self.pairs: list[tuple[str, str]] = []
        self.fail_after = fail_after

    def score(self, query, texts):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.pairs += [(query, t) for t in texts]
        return self.inner.score(query, texts)

    def rerank(self, query, texts, top_n=None):
        return rank_by_scores(list(texts), self.score(query, texts).scores, top_n)

    def info(self):
        return self.inner.info()


@pytest.fixture(scope="module")
def tiny_reranker(tiny_model_dir):
    from crossrank.rerank import load_reranker

    return load_reranker(str(tiny_model_dir), cache_size=0)


@pytest.fixture(scope="module")
def shared_index(tmp_path_factory):
    """One index of the tiny corpus for the whole module (building the dense part loads MiniLM once)."""
    from crossrank.corpus import load_corpus
    from crossrank.retrieve import build_index

    root = write_beir(tmp_path_factory.mktemp("tinybeir") / "tiny")
    path = tmp_path_factory.mktemp("index") / "index"
    build_index(load_corpus(root / "corpus.jsonl"), path, chunk_tokens=0, progress=False)
    return path


def read_run(path: Path) -> dict[str, list[str]]:
    run: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        q, _, d, rank, _, _ = line.split()
        run.setdefault(q, []).append(d)
    return run


# ---------------------------------------------------------------------------------------------- metrics
@pytest.mark.slow
def test_metrics_match_hand_computation():
    qrels = {"a": {"x": 2, "y": 1, "z": 0}, "b": {"u": 1}}
    ranked = {"a": ["n1", "y", "x", "n2"], "b": ["n3", "n4", "u"]}
    means, pq = ranking_metrics(qrels, ranked, ["ndcg@10", "mrr@10", "map@100", "recall@2"])
    # query a: gains 0, 1, 2 (linear) at ranks 1..3; ideal 2, 1
    dcg_a = 1 / math.log2(3) + 2 / math.log2(4)
    idcg_a = 2 / math.log2(2) + 1 / math.log2(3)
    dcg_b, idcg_b = 1 / math.log2(4), 1.0
    assert pq["ndcg@10"]["a"] == pytest.approx(dcg_a / idcg_a)
    assert pq["ndcg@10"]["b"] == pytest.approx(dcg_b / idcg_b)
    assert means["ndcg@10"] == pytest.approx((dcg_a / idcg_a + dcg_b / idcg_b) / 2)
    assert pq["mrr@10"] == pytest.approx({"a": 1 / 2, "b": 1 / 3})
    assert pq["map@100"]["a"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert pq["recall@2"] == pytest.approx({"a": 0.5, "b": 0.0})
    # a judged query without results counts as 0
    means2, pq2 = ranking_metrics(qrels, {"a": ranked["a"]}, ["ndcg@10"])
    assert pq2["ndcg@10"]["b"] == 0.0
    assert means2["ndcg@10"] == pytest.approx(dcg_a / idcg_a / 2)
    assert wins_losses_ties({"a": 0.5, "b": 0.2, "c": 0.1}, {"a": 0.6, "b": 0.2, "c": 0.0}) == {
        "wins": 1, "losses": 1, "ties": 1}


def test_rerank_prefix_never_admits_documents_beyond_k():
    cands = [Candidate(id=f"p{i}", doc_id=f"p{i}", text="t", score=10.0 - i, rank=i + 1) for i in range(6)]
    out = rerank_prefix(cands, 3, [0.1, 0.9, 0.5], "none")
    assert [c.id for c in out] == ["p1", "p2", "p0"]
    out = rerank_prefix(cands, 3, [0.1, 0.9, 0.5], "rrf")
    assert {c.id for c in out} == {"p0", "p1", "p2"}


def test_latency_plan_is_disjoint_across_k_when_possible():
    plan = latency_plan([f"q{i}" for i in range(10)], [5, 10], 4, ["bm25", "dense"])
    first = {q for q, _ in plan[5]}
    second = {q for q, _ in plan[10]}
    assert len(first) == len(second) == 4 and not first & second
    assert [r for _, r in plan[5]] == ["bm25", "dense", "bm25", "dense"]


# ---------------------------------------------------------------------------------------------- answers
def test_answer_normalisation_and_matching():
    assert normalize_answer("The  Beatles!") == "beatles"
    assert normalize_answer("«Paris», France.") == "paris france"
    assert answer_match("It was the Beatles.", ["Beatles"]) == {"exact": False, "contains": True}
    assert answer_match("beatles", ["The Beatles"]) == {"exact": True, "contains": True}
    assert answer_match("1308 points", ["308"])["contains"] is False


def test_answer_in_top_n_toy():
    lists = {
        "q1": [("a", "", "nothing here"), ("b", "", "The answer is 308 points."), ("c", "", "x")],
        "q2": [("d", "Beatles", "a band from Liverpool"), ("e", "", "y")],
        "q3": [("f", "", "1308 is not it"), ("g", "", "z")],
        "q4": [("h", "", "no answers for this one")],
    }
    answers = {"q1": ["308"], "q2": ["the Beatles"], "q3": ["308"], "q4": []}
    acc = answer_in_top_n(lists, answers, [1, 2, 3])
    # q4 has no gold answer and is not counted: 3 questions
    assert acc == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(2 / 3)}


# ---------------------------------------------------------------------------------------------- answer selection
class OverlapReranker:
    """A deterministic reranker for hand-checkable results: number of query words in the text."""

    name = "overlap"

    def score(self, query, texts):
        q = set(query.lower().split())
        return RerankScores(scores=[float(len(q & set(t.lower().split()))) for t in texts])

    def rerank(self, query, texts, top_n=None):
        return rank_by_scores(list(texts), self.score(query, texts).scores, top_n)


@pytest.mark.slow
def test_answer_selection_matches_hand_computation(tmp_path):
    rows = [
        ("1", "who wrote hamlet", "hamlet is a tragedy", 0),
        ("1", "who wrote hamlet", "the weather is nice", 0),
        ("1", "who wrote hamlet", "shakespeare wrote hamlet", 1),
        ("2", "capital of france", "paris is the capital of france", 1),
        ("2", "capital of france", "lyon is a city", 0),
        ("2", "capital of france", "france borders spain and capital letters", 1),
        ("3", "no answer here", "irrelevant", 0),
        ("3", "no answer here", "also irrelevant", 0),
    ]
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("qid\tquestion\tsentence\tlabel\n" + "".join(f"{a}\t{b}\t{c}\t{d}\n" for a, b, c, d in rows))
    res = evaluate_answer_selection(tsv, [OverlapReranker()], out_dir=tmp_path / "out", progress=False)
    d = res.data
    assert d["dataset"]["n_questions_excluded_no_positive"] == 1
    assert d["dataset"]["n_questions_evaluated"] == 2
    base, rr = d["methods"]
    # file order: q1 positive at rank 3 -> AP 1/3, RR 1/3, P@1 0; q2 positives at 1 and 3 -> AP (1 + 2/3)/2, RR 1
    assert base["metrics"]["MAP"] == pytest.approx((1 / 3 + (1 + 2 / 3) / 2) / 2, abs=1e-6)
    assert base["metrics"]["MRR"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-6)
    assert base["metrics"]["P@1"] == pytest.approx(0.5, abs=1e-6)
    # overlap: q1 scores [1, 0, 2] -> positive first: AP 1; q2 scores [3, 0, 2] -> positives at 1, 2: AP 1
    assert rr["metrics"] == {"MAP": pytest.approx(1.0), "MRR": pytest.approx(1.0), "P@1": pytest.approx(1.0)}
    assert (rr["wins"], rr["losses"]) == (2, 0)
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "report.md").is_file()
    # rerun: everything comes from the score cache
    again = evaluate_answer_selection(tsv, [OverlapReranker()], out_dir=tmp_path / "out", progress=False)
    assert again.data["methods"][1]["pairs_scored"] == 0
    assert again.data["methods"][1]["metrics"] == rr["metrics"]


# ---------------------------------------------------------------------------------------------- the BEIR sweep
@pytest.mark.slow
def test_beir_sweep_outputs_schema_cache_and_topk(tmp_path, tiny_reranker, shared_index):
    ds = write_beir(tmp_path / "tiny")
    out = tmp_path / "out"
    counting = CountingReranker(tiny_reranker)
    opts = dict(retrievers=("bm25", "dense", "hybrid"), ks=(2, 4, 8), ns=(1, 3), fusions=("none", "rrf", "interpolate:0.3"),
                out_dir=out, index_dir=shared_index, latency_queries=2, progress=False, save_runs=True)
    res = evaluate_beir(ds, rerankers=("none", counting), **opts)
    data = res.data

    for name in ("results.json", "per_query.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(data))
    for key in ("schema_version", "kind", "created", "duration_s", "machine", "dataset", "settings", "index",
                "first_stage", "rerankers", "answers", "configs"):
        assert key in data and key in SCHEMA_DOC, key
    assert data["kind"] == "beir" and data["dataset"]["n_queries"] == 6 and data["dataset"]["has_answers"]
    # 3 first stages x (1 + 3 fusions) x 3 K
    assert len(data["configs"]) == 3 * 4 * 3
    for c in data["configs"]:
        for key in ("id", "retriever", "reranker", "fusion", "k", "metrics", "first_stage_recall@k",
                    "first_stage_ndcg@10", "delta_ndcg@10", "wins", "losses", "ties", "latency_ms",
                    "answer_in_top_n"):
            assert key in c and key in SCHEMA_DOC, key
        assert set(c["metrics"]) == {"ndcg@10", "mrr@10", "map@100", "recall@k"}
        assert c["latency_ms"]["total"]["p95"] is not None
        if c["reranker"] != "none":
            assert c["metrics"]["recall@k"] == pytest.approx(c["first_stage_recall@k"])
            assert c["wins"] + c["losses"] + c["ties"] == 6
            assert c["latency_ms"]["rerank"]["n"] == 2
        assert c["answer_in_top_n"]["3"] is not None or c["k"] < 3
    # per-question answer positions: what answer_in_top_n counts, and what compare --answer-top pairs
    hits = json.loads((out / "per_query.json").read_text())["answer_first_hit"]
    for c in data["configs"]:
        h = hits[c["id"]]
        assert all(f is None or 0 <= f < c["k"] for f in h.values())
        assert c["answer_in_top_n"]["1"] == pytest.approx(sum(f == 0 for f in h.values()) / len(h), abs=1e-6)
    from crossrank.evaluate.compare import main as compare_main

    assert compare_main([str(out), "bm25|none|none|8", "hybrid|none|none|8", "--answer-top", "3"]) == 0
    assert compare_main([str(out), "bm25|none|none|8", "hybrid|none|none|8", "--answer-top", "0"]) == 2
    rr = data["rerankers"][counting.name]
    assert set(rr["latency_ms"]) == {"2", "4", "8"}
    assert rr["latency_sample"]["pairs_recomputed_for_timing"] == 0

    # reranked lists hold exactly the first stage's top-K documents
    for c in data["configs"]:
        if c["reranker"] == "none":
            continue
        fs = read_run(out / "runs" / f"{c['retriever']}__none__none__{c['k']}.trec")
        rer = read_run(out / "runs" / (c["id"].replace("|", "__").replace(":", "-") + ".trec"))
        for q, docs in rer.items():
            assert set(docs) == set(fs[q][: c["k"]])

    # every (query, document) pair scored once: the union over retrievers at max K, plus one warm-up pair
    union = set()
    queries = {qid: text for qid, text, _, _ in QUERIES}
    for r in ("bm25", "dense", "hybrid"):
        for q, docs in read_run(out / "runs" / f"{r}__none__none__8.trec").items():
            union |= {(queries[q], d) for d in docs}
    scored = [p for p in counting.pairs if p[0] != "warm up"]
    assert len(scored) == len(set(scored)) == len(union)
    assert rr["pairs_scored"] == len(union)

    # a rerun (even adding a fusion) computes nothing
    again = CountingReranker(tiny_reranker)
    res2 = evaluate_beir(ds, rerankers=(again,), write_reports=False,
                         **{**opts, "fusions": ("none", "rrf", "interpolate:0.3", "interpolate:0.8")})
    assert again.calls == 0
    assert res2.data["rerankers"][again.name]["latency_sample"]["timings_reused"] == 6
    c1 = res.config("hybrid", counting.name, "rrf", 8)
    c2 = res2.config("hybrid", again.name, "rrf", 8)
    assert c1["metrics"] == c2["metrics"]

    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "http://" not in html and "https://" not in html
    md = (out / "report.md").read_text()
    assert "## SCHEMA" in md and "Recall@K (first stage, ceiling)" in md


@pytest.mark.slow
def test_cli_eval_reuses_a_given_index_and_rejects_one_that_lacks_a_method(tmp_path, shared_index):
    """``crossrank eval --index DIR`` evaluates on the user's saved index instead of re-encoding the corpus; an
    index without the method a retriever needs is a one-line error, not a rebuild over the user's files."""
    from crossrank.corpus import load_corpus
    from crossrank.retrieve import build_index

    root = write_beir(tmp_path / "tiny")
    out = tmp_path / "out"
    cmd = ["eval", str(root), "--retrievers", "bm25", "--rerankers", "none", "--k", "3", "--n", "1", "--out", str(out)]
    proc = run_cli(*cmd, "--index", str(shared_index))
    assert proc.returncode == 0, proc.stderr
    # stderr is a pipe here, as in a logged background run: progress comes as plain lines, not a redrawn bar
    assert re.search(r"^retrieve bm25 \(k=3\): (\d+)/\1 \(100%\)", proc.stderr, re.M), proc.stderr
    index_info = json.loads((out / "results.json").read_text())["index"]
    assert index_info["path"] == str(shared_index) and index_info["status"] == "loaded"
    assert not (out / "index").exists()

    bm25_only = tmp_path / "bm25-only"
    build_index(load_corpus(root / "corpus.jsonl"), bm25_only, methods=("bm25",), chunk_tokens=0, progress=False)
    before = sorted(p.name for p in bm25_only.iterdir())
    cmd[cmd.index("bm25")] = "dense"
    assert_clean_error(run_cli(*cmd, "--index", str(bm25_only)), "dense")
    assert sorted(p.name for p in bm25_only.iterdir()) == before


@pytest.mark.slow
def test_rerank_max_k_caps_scoring_and_configs(tmp_path, tiny_reranker, shared_index):
    ds = write_beir(tmp_path / "tiny")
    out = tmp_path / "out"
    counting = CountingReranker(tiny_reranker)
    res = evaluate_beir(ds, rerankers=(counting,), retrievers=("bm25", "hybrid"), ks=(2, 8), ns=(1,),
                        rerank_max_k={"bm25": 2}, out_dir=out, index_dir=shared_index, latency_queries=2,
                        progress=False, save_runs=True, write_reports=False)
    rer = {(c["retriever"], c["k"]) for c in res.configs if c["reranker"] != "none"}
    assert rer == {("bm25", 2), ("hybrid", 2), ("hybrid", 8)}
    # first-stage rows stay at every K
    assert {(c["retriever"], c["k"]) for c in res.configs if c["reranker"] == "none"} == {
        ("bm25", 2), ("bm25", 8), ("hybrid", 2), ("hybrid", 8)}
    assert res.data["settings"]["rerank_max_k"] == {"bm25": 2, "hybrid": 8}
    queries = {qid: text for qid, text, _, _ in QUERIES}
    union = set()
    for name, depth in (("bm25", 2), ("hybrid", 8)):
        for q, docs in read_run(out / "runs" / f"{name}__none__none__8.trec").items():
            union |= {(queries[q], d) for d in docs[:depth]}
    scored = [p for p in counting.pairs if p[0] != "warm up"]
    assert len(scored) == len(set(scored)) == len(union)  # pairs are (query, text): compare counts
    # K=8 is timed on hybrid candidates only
    assert res.data["rerankers"][counting.name]["latency_ms"]["8"]["n"] == 2
    with pytest.raises(InputError, match="not among the retrievers"):
        evaluate_beir(ds, rerankers=(counting,), retrievers=("hybrid",), ks=(2,), rerank_max_k={"bm25": 2},
                      out_dir=out, index_dir=shared_index, progress=False, write_reports=False)


def test_rerank_max_k_is_parsed_and_checked_in_one_place():
    from crossrank.evaluate import parse_rerank_max_k

    assert parse_rerank_max_k(" bm25=100, dense = 50,", ["bm25", "dense"]) == {"bm25": 100, "dense": 50}
    assert parse_rerank_max_k({"bm25": 3}) == {"bm25": 3} and parse_rerank_max_k(None) == parse_rerank_max_k("") == {}
    with pytest.raises(InputError, match="RETRIEVER=K pairs"):
        parse_rerank_max_k("bm25:100")
    with pytest.raises(InputError, match="bm25 must be positive"):
        parse_rerank_max_k("bm25=0")
    with pytest.raises(InputError, match="not among the retrievers"):
        parse_rerank_max_k("dense=5", ["bm25"])
    with pytest.raises(InputError, match=r"--rerank-max-k names 'dense', which is not among --retrievers \(bm25\)"):
        parse_rerank_max_k("dense=5", ["bm25"], option="--rerank-max-k", among="--retrievers")


@pytest.mark.slow
def test_interrupted_scoring_resumes_without_rescoring(tmp_path, tiny_reranker, shared_index):
    ds = write_beir(tmp_path / "tiny", with_answers=False)
    out = tmp_path / "out"
    opts = dict(retrievers=("bm25",), ks=(3, 6), ns=(1,), out_dir=out, index_dir=shared_index, latency_queries=1,
                progress=False, save_runs=True)
    first = CountingReranker(tiny_reranker, fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        evaluate_beir(ds, rerankers=(first,), **opts)
    second = CountingReranker(tiny_reranker)
    res = evaluate_beir(ds, rerankers=(second,), **opts)
    done_before = {p for p in first.pairs if p[0] != "warm up"}
    done_after = {p for p in second.pairs if p[0] != "warm up"}
    assert done_before and done_after and not done_before & done_after
    run = read_run(out / "runs" / "bm25__none__none__6.trec")  # BM25 returns only documents sharing a term
    assert len(done_before) + len(done_after) == sum(len(v) for v in run.values())
    assert not res.data["answers"]


# ---------------------------------------------------------------------------------------------- LLM answers
class _FakeChat(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that answers only when the gold passage is in the prompt."""

    gold: dict[str, tuple[str, str]] = {}  # question -> (gold passage text, answer)
    seen_auth: list[str] = []
    active = 0
    max_active = 0
    requests = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.max_active = max(cls.max_active, cls.active)
            cls.requests += 1
        try:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            cls.seen_auth.append(self.headers.get("Authorization", ""))
            if self.path != "/v1/chat/completions" or body.get("model") != "fake-llm":
                self.send_response(404)
                self.end_headers()
                return
            prompt = "\n".join(m["content"] for m in body["messages"])
            reply = "unknown"
            for question, (passage, answer) in cls.gold.items():
                if f"Question: {question}" in prompt and passage in prompt:
                    reply = f"The answer is {answer}."
            payload = json.dumps({"id": "x", "object": "chat.completion", "model": "fake-llm",
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        finally:
            with cls.lock:
                cls.active -= 1

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_llm():
    docs = {d: text for d, _, text in DOCS}
    _FakeChat.gold = {text: (docs[did], answers[-1]) for _, text, did, answers in QUERIES}
    _FakeChat.seen_auth, _FakeChat.max_active, _FakeChat.requests = [], 0, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_llm_answer_accuracy_through_fake_openai_server(tmp_path, fake_llm, shared_index, monkeypatch):
    ds = write_beir(tmp_path / "tiny")
    out = tmp_path / "out"
    monkeypatch.setenv("CROSSRANK_LLM_API_KEY", "sk-test")
    llm = {"base_url": fake_llm, "model": "fake-llm", "concurrency": 2, "timeout_s": 10, "ns": [1, 3]}
    res = evaluate_beir(ds, retrievers=("bm25", "dense"), rerankers=("none",), ks=(4,), ns=(1, 3), out_dir=out,
                        index_dir=shared_index, progress=False, llm=llm, save_runs=True)
    gold = {qid: did for qid, _, did, _ in QUERIES}
    for c in res.configs:
        acc = c["llm_answer_accuracy"]
        run = read_run(out / "runs" / (c["id"].replace("|", "__") + ".trec"))
        for n in (1, 3):
            # the fake answers exactly when the gold passage was among the N passages given
            expected = sum(gold[q] in run[q][:n] for q in gold) / len(gold)
            assert acc[str(n)]["contains"] == pytest.approx(expected)
            assert acc[str(n)]["errors"] == 0 and acc[str(n)]["n_questions"] == 6
    assert _FakeChat.max_active <= 2
    assert set(_FakeChat.seen_auth) == {"Bearer sk-test"}
    info = res.data["answers"]["llm"]
    assert "sk-test" not in json.dumps(res.data)
    assert info["distinct_prompts"] <= 2 * 2 * 6
    first_requests = _FakeChat.requests
    assert first_requests == info["distinct_prompts"]
    # rerun: replies come from the on-disk cache
    evaluate_beir(ds, retrievers=("bm25", "dense"), rerankers=("none",), ks=(4,), ns=(1, 3), out_dir=out,
                  index_dir=shared_index, progress=False, llm=llm)
    assert _FakeChat.requests == first_requests


def test_llm_scores_match_gold_passage_presence(tmp_path, fake_llm):
    cfg = LLMConfig.from_options({"base_url": fake_llm, "model": "fake-llm", "concurrency": 3})
    docs = {d: (t, x) for d, t, x in DOCS}
    requests, expected = {}, {}
    for qid, text, gold, _answers in QUERIES:
        for variant, ids in (("with", [gold, "d10"]), ("without", ["d10", "d11"])):
            requests[f"{qid}-{variant}"] = (qid, text, [(d, *docs[d]) for d in ids])
            expected[f"{qid}-{variant}"] = variant == "with"
    answers = {qid: a for qid, _, _, a in QUERIES}
    cache = LLMAnswerCache(tmp_path / "llm.jsonl")
    got = llm_answer_accuracy(requests, answers, cfg, cache=cache)
    assert {rid: r["contains"] for rid, r in got.items()} == expected
    assert all(r["error"] is None for r in got.values())
    # an unreachable endpoint is an error per request, not a crash
    bad = LLMConfig.from_options({"base_url": "http://127.0.0.1:9/v1", "model": "m", "timeout_s": 1,
                                  "max_retries": 0})
    res = llm_answer_accuracy({"x": ("q1", "q", [("d1", "", "t")])}, answers, bad)
    assert res["x"]["error"] and res["x"]["contains"] is False


def test_llm_config_requires_endpoint(monkeypatch):
    monkeypatch.delenv("CROSSRANK_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("CROSSRANK_LLM_MODEL", raising=False)
    with pytest.raises(InputError, match="base_url"):
        LLMConfig.from_options({})


# ---------------------------------------------------------------------------------------------- tune
def _cfg(r, rr, f, k, ndcg, p95, ans=None):
    return {"id": f"{r}|{rr}|{f}|{k}", "retriever": r, "reranker": rr, "fusion": f, "k": k,
            "metrics": {"ndcg@10": ndcg, "mrr@10": ndcg, "map@100": ndcg, "recall@k": 0.9},
            "latency_ms": {"total": {"p50": p95 / 2, "p95": p95, "n": 30}},
            **({"answer_in_top_n": ans} if ans else {})}


def _sweep(configs, has_answers=False):
    return {"kind": "beir", "created": "now", "machine": {"processor": "cpu", "cpu_count": 2},
            "dataset": {"name": "x", "split": "test", "has_answers": has_answers}, "configs": configs}


def test_tune_picks_best_config_under_budget():
    data = _sweep([
        _cfg("bm25", "none", "none", 100, 0.66, 8),
        _cfg("hybrid", "none", "none", 100, 0.70, 40),
        _cfg("bm25", "ce", "none", 20, 0.71, 300),
        _cfg("bm25", "ce", "none", 100, 0.74, 1500),
        _cfg("hybrid", "ce", "rrf", 50, 0.75, 900),
        _cfg("hybrid", "ce", "rrf", 100, 0.76, 1600),
    ])
    rec = recommend(data, 1000)
    assert (rec.retriever, rec.reranker, rec.fusion, rec.k, rec.fits) == ("hybrid", "ce", "rrf", 50, True)
    assert "0.750" in rec.explanation and "1000 ms" in rec.explanation
    assert rec.search_command() == ("crossrank search INDEX QUERY --retriever hybrid --k 50 --reranker ce "
                                    "--fusion rrf --deadline-ms 1000")
    assert rec.to_dict()["search_command"] == rec.search_command()
    assert recommend(data, 5000).k == 100 and recommend(data, 5000).value == 0.76
    rec = recommend(data, 100)
    assert (rec.retriever, rec.reranker, rec.first_stage_only, rec.fits) == ("hybrid", "none", True, True)
    assert rec.search_command().endswith("--retriever hybrid --k 100 --reranker none")
    assert "No reranked configuration" in rec.explanation
    rec = recommend(data, 5)
    assert (rec.retriever, rec.reranker, rec.fits) == ("hybrid", "none", False)
    assert "Nothing fits" in rec.explanation and "first stage alone" in rec.explanation


def test_tune_chooses_n_for_answer_datasets():
    data = _sweep([
        _cfg("bm25", "none", "none", 20, 0.5, 10, {"5": 0.60, "10": 0.70, "20": 0.80}),
        _cfg("bm25", "ce", "none", 20, 0.6, 200, {"5": 0.78, "10": 0.802, "20": 0.80}),
    ], has_answers=True)
    rec = recommend(data, 500)
    assert rec.metric == "answer_in_top_n"
    assert (rec.reranker, rec.n) == ("ce", 10)  # 0.802 best; N=10 beats N=20 on N, and N=5 is 2 points lower
    assert rec.search_command().endswith("--deadline-ms 500 --n 10")


# ---------------------------------------------------------------------------------------------- detection / errors
@pytest.mark.slow
def test_detection_and_input_errors(tmp_path):
    ds = write_beir(tmp_path / "tiny")
    assert detect_dataset(ds) == ("beir", ds, "test")
    with pytest.raises(InputError, match="available splits: test"):
        detect_dataset(ds, "dev")
    with pytest.raises(InputError, match="not found"):
        run_eval(tmp_path / "missing")
    with pytest.raises(InputError, match="unknown retriever 'sparse'"):
        evaluate_beir(ds, retrievers=("sparse",), out_dir=tmp_path / "o", progress=False)
    with pytest.raises(InputError, match="available splits: test"):
        evaluate_beir(ds, split="train", out_dir=tmp_path / "o", progress=False)
    asel = tmp_path / "asel"
    asel.mkdir()
    (asel / "train.tsv").write_text("qid\tquestion\tsentence\tlabel\n1\tq\ts\t1\n")
    (asel / "dev.tsv").write_text("qid\tquestion\tsentence\tlabel\n1\tq\ts\t1\n")
    assert detect_dataset(asel) == ("answer_selection", asel / "dev.tsv", "dev")
    with pytest.raises(InputError, match="available splits: dev, train"):
        detect_dataset(asel, "test")
    out = run_eval(asel, split="train", rerankers="none", out_dir=tmp_path / "as-out", progress=False)
    assert json.loads((out / "results.json").read_text())["kind"] == "answer_selection"


@pytest.mark.shared
def test_shared_answer_selection_files_load():
    from crossrank.evaluate import load_answer_selection

    qs = load_answer_selection(shared_dataset("wikiqa") / "dev.tsv")
    assert len(qs) == 126 and sum(len(q.sentences) for q in qs) == 1130
    assert sum(sum(q.labels) for q in qs) == 140


@pytest.mark.shared
@pytest.mark.slow
def test_shared_scifact_bm25_through_the_sweep(tmp_path):
    res = evaluate_beir(shared_dataset("scifact"), retrievers=("bm25",), rerankers=("none",), ks=(10, 100),
                        out_dir=tmp_path / "out", progress=False)
    assert res.config("bm25", k=100)["metrics"]["ndcg@10"] == pytest.approx(0.679, abs=0.01)
    assert res.data["dataset"]["n_queries"] == 300 and not res.data["dataset"]["has_answers"]


def test_frontier_labels_of_close_points_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crossrank.evaluate.report import _separate_labels

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set_xscale("log")
    ax.set_xlim(1, 1e4)
    ax.set_ylim(0.70, 0.76)
    labels = [ax.annotate(f"hybrid → default [rrf] K={k}", (x, y), textcoords="offset points", xytext=(8, 9))
              for k, x, y in [(20, 1200, 0.743), (50, 1400, 0.744), (100, 1600, 0.744)]]
    renderer = fig.canvas.get_renderer()
    before = [t.get_window_extent(renderer) for t in labels]
    assert before[0].overlaps(before[1])  # the case being fixed
    _separate_labels(fig, labels)
    after = [t.get_window_extent(renderer) for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(after) for b in after[i + 1:])
    plt.close(fig)


def test_atomic_writes_get_a_plain_files_permissions(tmp_path):
    from crossrank.files import atomic_write_text

    atomic_write_text(tmp_path / "report.json", "{}")  # through mkstemp, which creates 0600
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "report.json"]  # no probe left behind


def test_line_progress_prints_at_most_every_interval_and_once_at_the_end():
    import io

    from crossrank.evaluate._util import LineProgress

    now = [0.0]
    out = io.StringIO()
    bars = LineProgress(out, every_s=30.0, clock=lambda: now[0])
    task = bars.add_task("rerank x (100 new pairs)", total=100)
    for _ in range(99):  # one pair a second: a line at 30 s, 60 s, 90 s
        now[0] += 1.0
        bars.advance(task)
    now[0] += 1.0
    bars.advance(task)
    bars.advance(task, 0)  # already finished: no second end line
    lines = out.getvalue().splitlines()
    assert lines == [
        "rerank x (100 new pairs): 30/100 (30%), 30 s, 1/s, eta 70 s",
        "rerank x (100 new pairs): 60/100 (60%), 60 s, 1/s, eta 40 s",
        "rerank x (100 new pairs): 90/100 (90%), 90 s, 1/s, eta 10 s",
        "rerank x (100 new pairs): 100/100 (100%), 100 s, 1/s, eta 0 s",
    ]


# ------------------------------------------------------------------------------------ score cache fingerprint
@pytest.mark.slow
def test_score_cache_key_follows_weight_content_not_path_or_mtime(tiny_model_dir, tmp_path):
    """Retrained in place (same size, same path) -> a new key; the same weights moved elsewhere -> the same key;
    another max_length -> a new key."""
    import os
    import shutil

    from safetensors.torch import load_file, save_file

    from crossrank.evaluate.cache import reranker_fingerprint
    from crossrank.rerank import load_reranker

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    key = reranker_fingerprint(str(folder), load_reranker(str(folder), cache_size=0))
    moved = tmp_path / "elsewhere" / "model-copy"
    shutil.copytree(folder, moved)
    assert reranker_fingerprint(str(moved), load_reranker(str(moved), cache_size=0)) == key
    assert reranker_fingerprint(str(folder), load_reranker(str(folder), cache_size=0, max_length=64)) != key

    weights = folder / "model.safetensors"
    stat = weights.stat()
    state = {k: (t + 0.01 if t.is_floating_point() else t).contiguous() for k, t in load_file(str(weights)).items()}
    save_file(state, str(weights), metadata={"format": "pt"})


    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: only the content differs
    assert weights.stat().st_size == stat.st_size
    from crossrank.files import _sha_cache

    _sha_cache.clear()  # a new process would not remember the old hash either
    assert reranker_fingerprint(str(folder), load_reranker(str(folder), cache_size=0)) != key
