"""The pipeline's promises: timings on every result, fallback with a reason, partial rerank under a deadline."""

from __future__ import annotations

import threading
import time

import pytest

from crossrank.corpus import chunk_documents, load_corpus
from crossrank.errors import InputError
from crossrank.pipeline import Fusion, Pipeline, fuse
from crossrank.rerank import CachedReranker, CrossEncoderReranker
from crossrank.retrieve import BM25Retriever
from crossrank.types import Candidate, Document, first_per_document


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    # fp32: on CPUs with native bf16 the auto dtype is bf16, whose rounding ties a random model's close scores
    return CrossEncoderReranker(str(tiny_model_dir), dtype="fp32")


@pytest.fixture()
def bm25(small_corpus):
    return BM25Retriever(chunk_documents(load_corpus(small_corpus), max_tokens=0))


# Touches all six sample documents, so BM25 returns six candidates (it drops zero-score documents).
BROAD = "plants glucose mitochondria volcano black hole insulin earthquakes plates"


class SlowReranker:
    """The real engine behind an injected delay: stands in for a reranker that is overloaded."""

    def __init__(self, inner, delay_s: float = 0.0, per_pair_s: float = 0.0):
        self.inner, self.delay_s, self.per_pair_s = inner, delay_s, per_pair_s
        self.name = "slow-" + inner.name

    def score(self, query, texts):
        time.sleep(self.delay_s + self.per_pair_s * len(texts))
        return self.inner.score(query, texts)

    def rerank(self, query, texts, top_n=None):
        return self.inner.rerank(query, texts, top_n)


class BrokenReranker:
    """A reranker whose backend dies: every call raises, as a crashed model server would."""

    name = "broken"

    def score(self, query, texts):
        raise ConnectionError("connection refused")

    def rerank(self, query, texts, top_n=None):
        raise ConnectionError("connection refused")


def test_reranked_result_has_timings_and_first_stage_fields(bm25, engine):
    with Pipeline(bm25, engine, k=6, n=3) as pipe:
        result = pipe.search(BROAD)
    assert result.reranked is True and result.reason is None
    assert result.n_candidates == 6 and result.n_reranked == 6
    assert [h.rank for h in result.hits] == [1, 2, 3]
    assert all(h.rerank_score is not None for h in result.hits)
    scores = [h.rerank_score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    t = result.timings
    assert t.retrieve_ms > 0 and t.rerank_ms > 0 and t.total_ms >= t.retrieve_ms + t.rerank_ms - 1e-6
    d = result.to_dict()
    assert set(d["hits"][0]) == {
        "id", "doc_id", "text", "title", "rank", "first_stage_rank", "first_stage_score", "rerank_score", "score"
    }


def test_reranker_exception_falls_back_to_first_stage(bm25):
    with Pipeline(bm25, BrokenReranker(), k=6, n=6) as pipe:
        result = pipe.search(BROAD)
    first = bm25.search(BROAD, 6)
    assert result.reranked is False
    assert "reranker failed" in result.reason and "connection refused" in result.reason
    assert [h.id for h in result.hits] == [c.id for c in first]
    assert all(h.rerank_score is None for h in result.hits)


def test_reranker_timeout_falls_back_within_deadline(bm25, engine):
    slow = SlowReranker(engine, delay_s=2.0)
    with Pipeline(bm25, slow, k=6, n=6) as pipe:
        pipe.throughput.update(600, 1.0)  # measured fast earlier (no automatic warm-up), overloaded now
        start = time.perf_counter()
        result = pipe.search(BROAD, deadline_ms=150)
        elapsed = time.perf_counter() - start
    assert result.reranked is False
    assert "timed out" in result.reason
    assert elapsed < 1.0, "the pipeline must answer at its deadline, not when the reranker finishes"
    assert [h.first_stage_rank for h in result.hits] == list(range(1, 7))


@pytest.mark.slow
def test_tight_deadline_reranks_the_head_and_keeps_the_tail(bm25, engine):
    # ~10 pairs/s: the deadline fits about 3 of the 6 pairs, with ~200 ms to spare for the engine itself on a
    # loaded machine (at 20 pairs/s and 200 ms the spare was 50 ms, and a busy CI machine used it up)
    slow = SlowReranker(engine, per_pair_s=0.1)
    with Pipeline(bm25, slow, k=6, n=6) as pipe:
        warm = pipe.search(BROAD)  # measures throughput
        assert warm.n_reranked == 6
        result = pipe.search(BROAD, deadline_ms=500)
    assert result.reranked is True
    assert 1 <= result.n_reranked < 6
    assert "reranked the top" in result.reason
    head, tail = result.hits[: result.n_reranked], result.hits[result.n_reranked :]
    assert all(h.rerank_score is not None for h in head)
    assert all(h.rerank_score is None for h in tail)
    assert [h.first_stage_rank for h in tail] == sorted(h.first_stage_rank for h in tail)
    assert sorted(h.first_stage_rank for h in head) == list(range(1, result.n_reranked + 1))
    assert all(h.score == h.first_stage_score for h in tail)  # the README's JSON example says so


def test_score_cache_hits_are_reported(bm25, engine):
    cached = CachedReranker(engine, max_entries=100)
    with Pipeline(bm25, cached, k=5, n=5) as pipe:
        first = pipe.search(BROAD)
        second = pipe.search(BROAD)
    assert first.cache_hits == 0
    assert second.cache_hits == 5 == second.n_reranked
    assert [h.id for h in first.hits] == [h.id for h in second.hits]


def test_no_reranker_returns_first_stage(bm25):
    with Pipeline(bm25, None, k=4, n=2) as pipe:
        result = pipe.search("black hole gravity light")
    assert result.reranked is False and result.reason == "no reranker configured"
    assert result.hits[0].doc_id == "d4"


def test_document_unit_keeps_best_passage_per_document(engine):
    long_doc = Document("long", " ".join(f"volcano lava magma sentence {i}." for i in range(200)), "Volcano notes")
    docs = [long_doc, Document("short", "Magma rises and a volcano erupts.", "Eruptions"), Document("x", "Bread and yeast.")]
    passages = chunk_documents(docs, max_tokens=60, overlap=10)
    assert sum(p.doc_id == "long" for p in passages) > 3
    retriever = BM25Retriever(passages)
    with Pipeline(retriever, engine, k=20, n=5, unit="document") as pipe:
        result = pipe.search("volcano magma")
    doc_ids = [h.doc_id for h in result.hits]
    assert len(doc_ids) == len(set(doc_ids))
    assert {"long", "short"} <= set(doc_ids)


def test_bad_input_is_an_input_error(bm25):
    with Pipeline(bm25, None) as pipe:
        with pytest.raises(InputError, match="empty"):
            pipe.search("   ")
        with pytest.raises(InputError, match="k must be"):
            pipe.search("x", k=0)
        with pytest.raises(InputError, match="n=10 is more than k=5: .* raise k or lower n"):
            pipe.search("x", k=5, n=10)
        with pytest.raises(InputError, match="deadline"):
            pipe.search("x", deadline_ms=-5)
    with pytest.raises(InputError, match="fusion"):
        Fusion.parse("borda")
    with pytest.raises(InputError, match="n=4 is more than k=3"):
        Pipeline(bm25, None, k=3, n=4)


def test_a_k_below_the_default_n_returns_at_most_k_hits(bm25):
    with Pipeline(bm25, None, k=20, n=10) as pipe:
        assert len(pipe.search(BROAD, k=3).hits) == 3
        assert len(pipe.search(BROAD).hits) == 6  # all six documents match; n=10 is the cap


def test_fusion_math():
    first, ce = [3.0, 2.0, 1.0], [0.1, 0.9, 0.5]
    assert fuse(first, ce, "none") == ce
    rrf = fuse(first, ce, "rrf")
    # ranks: ce (3,1,2), first (1,2,3)
    assert rrf == pytest.approx([1 / 63 + 1 / 61, 1 / 61 + 1 / 62, 1 / 62 + 1 / 63])
    only_ce = fuse(first, ce, Fusion("interpolate", 1.0))
    assert sorted(range(3), key=lambda i: -only_ce[i]) == [1, 2, 0]
    only_first = fuse(first, ce, "interpolate:0")
    assert sorted(range(3), key=lambda i: -only_first[i]) == [0, 1, 2]


def test_confidence_fusion_scales_the_weight_by_the_best_relevance():
    first = [3.0, 2.0, 1.0]
    sure, unsure = [0.1, 0.9, 0.5], [0.01, 0.09, 0.05]  # same order, the second reads "nothing relevant"
    assert fuse(first, sure, "confidence:0.8") == pytest.approx(fuse(first, sure, Fusion("interpolate", 0.8 * 0.9)))
    assert fuse(first, unsure, "confidence:0.8") == pytest.approx(fuse(first, unsure, "interpolate:0.072"))
    # confident: the cross-encoder's order; unsure: the first stage keeps its order
    assert sorted(range(3), key=lambda i: -fuse(first, sure, "confidence:1")[i]) == [1, 2, 0]
    assert sorted(range(3), key=lambda i: -fuse(first, unsure, "confidence:1")[i]) == [0, 1, 2]
    # scores above 1 (raw logits) clip to the plain interpolation
    assert fuse(first, [1.0, 7.0, 3.0], "confidence:0.4") == pytest.approx(fuse(first, [1.0, 7.0, 3.0], "interpolate:0.4"))
    assert Fusion.parse({"fusion": "confidence", "weight": 0.2}) == Fusion("confidence", 0.2)
    with pytest.raises(InputError):
        Fusion.parse("confident:0.2")


class BudgetRecordingReranker:
    """The real engine, recording the time budget the pipeline hands it."""

    def __init__(self, inner):
        self.inner, self.name, self.budgets = inner, "recording-" + inner.name, []

    def score(self, query, texts, *, timeout_s=None):
        self.budgets.append(timeout_s)
        return self.inner.score(query, texts, timeout_s=timeout_s)

    def rerank(self, query, texts, top_n=None):
        return self.inner.rerank(query, texts, top_n)


def test_pipeline_hands_its_remaining_deadline_to_the_reranker(bm25, engine):
    rec = BudgetRecordingReranker(engine)
    with Pipeline(bm25, CachedReranker(rec, max_entries=100), k=6, n=6) as pipe:
        result = pipe.search(BROAD, deadline_ms=5000)  # through the cache's pass-through
        pipe.search("black hole gravity light")  # no deadline: no budget
    assert result.reranked is True
    assert 0 < rec.budgets[-2] <= 5.0  # after the automatic warm-up's calls
    assert rec.budgets[-1] is None


@pytest.mark.slow
def test_engine_stops_when_its_time_budget_runs_out(tiny_model_dir):
    from crossrank.errors import RerankerUnavailable, RerankTimeout

    one_per_pass = CrossEncoderReranker(str(tiny_model_dir), max_batch_size=1)
    texts = [f"document number {i} about plants and glucose" for i in range(3000)]
    # Each forward pass of the tiny model is made to take 10 ms more, as a large model's would: 3000 passes need
    # 30 s, a 3 s budget covers tokenising them even on a loaded machine, and the engine must stop in between.
    run_pass = one_per_pass._runner

    def slow_pass(*args):
        time.sleep(0.01)
        return run_pass(*args)

    one_per_pass._runner = slow_pass
    with pytest.raises(RerankTimeout, match=r"after \d+ of 3000 forward passes") as info:
        one_per_pass.score("plants", texts, timeout_s=3.0)
    assert isinstance(info.value, RerankerUnavailable)  # the pipeline falls back on it
    done = int(str(info.value).split("after ")[1].split(" of")[0])
    assert 0 < done < 3000
    assert len(one_per_pass.score("plants", texts[:3], timeout_s=30.0)) == 3
    with pytest.raises(InputError, match="timeout_s"):
        one_per_pass.score("plants", texts[:3], timeout_s=0)


def test_first_per_document_keeps_each_documents_first_passage_in_order():
    ranked = [Candidate(id=p, doc_id=p.split("#")[0], text="", score=s, rank=r)
              for r, (p, s) in enumerate([("a#1", 9.0), ("b#0", 8.0), ("a#0", 7.0), ("c", 6.0), ("b#2", 5.0)], 1)]
    assert [c.id for c in first_per_document(ranked)] == ["a#1", "b#0", "c"]


@pytest.mark.parametrize("query, message", [("  ", "query is empty"), (None, "query must be a string, not NoneType"),
                                            (["a"], "query must be a string, not list")])
def test_every_stage_rejects_a_bad_query_with_the_same_error(bm25, engine, query, message):
    with Pipeline(bm25, engine, k=6, n=3) as pipe:
        for call in (lambda: bm25.search(query, k=3), lambda: engine.score(query, ["a text"]),
                     lambda: pipe.search(query)):
            with pytest.raises(InputError, match=message):
                call()


def test_auto_fusion_follows_the_rerankers_recommendation(bm25, tiny_model_dir):
    rr = CrossEncoderReranker(str(tiny_model_dir), dtype="fp32")
    assert Pipeline(bm25, rr).fusion == Fusion("none")  # recommends nothing: cross-encoder order
    rr.recommended = {"fusion": {"method": "interpolate", "weight": 0.3}}
    assert Pipeline(bm25, rr).fusion == Fusion("interpolate", 0.3)
    assert Pipeline(bm25, CachedReranker(rr)).fusion == Fusion("interpolate", 0.3)  # through the cache
    assert Pipeline(bm25, rr, fusion="rrf").fusion == Fusion("rrf")
    with Pipeline(bm25, rr, k=6, n=6) as pipe:
        auto = pipe.search(BROAD)
        explicit = pipe.search(BROAD, fusion="interpolate:0.3")
    assert [h.id for h in auto.hits] == [h.id for h in explicit.hits]


def test_min_score_drops_reranked_hits_below_the_threshold(bm25, engine):
    with Pipeline(bm25, engine, k=6, n=6, fusion="none") as pipe:
        everything = pipe.search(BROAD)
        scores = sorted(h.rerank_score for h in everything.hits)
        cut = (scores[2] + scores[3]) / 2
        kept = pipe.search(BROAD, min_score=cut)
        none_left = pipe.search(BROAD, min_score=scores[-1] + 1e-3)
        without_reranking = pipe.search(BROAD, min_score=cut, rerank=False)
    assert [h.id for h in kept.hits] == [h.id for h in everything.hits[:3]]
    assert kept.below_min_score == 3 and kept.to_dict()["below_min_score"] == 3
    assert none_left.hits == [] and none_left.below_min_score == 6
    assert len(without_reranking.hits) == 6  # nothing is dropped on scores that were never computed


def test_min_score_auto_uses_the_recommended_threshold(bm25, tiny_model_dir):
    rr = CrossEncoderReranker(str(tiny_model_dir), dtype="fp32")
    assert Pipeline(bm25, rr, min_score="auto").min_score is None
    rr.recommended = {"min_score": 0.25}
    assert Pipeline(bm25, rr, min_score="auto").min_score == 0.25
    for bad in ("high", float("nan"), True):
        with pytest.raises(InputError):
            Pipeline(bm25, rr, min_score=bad)


class ColdStart:
    """A real retriever or reranker whose first call pays a one-time cost, as lazy model loading does."""

    def __init__(self, inner, cold_s: float):
        self.inner, self.cold_s, self.name, self.calls = inner, cold_s, "cold-" + inner.name, 0
        self._lock = threading.Lock()

    def _first_call(self):
        with self._lock:
            if self.calls == 0:
                time.sleep(self.cold_s)
            self.calls += 1

    def search(self, query, k=100):
        self._first_call()
        return self.inner.search(query, k)

    def score(self, query, texts):
        self._first_call()
        return self.inner.score(query, texts)


@pytest.mark.slow
def test_cold_pipeline_reranks_a_head_on_its_very_first_deadline_query(bm25, tiny_model_dir):
    # each cold load alone is longer than the deadline: without a warm-up nothing could be reranked
    retriever = ColdStart(bm25, 1.2)
    reranker = ColdStart(CrossEncoderReranker(str(tiny_model_dir)), 1.2)  # a fresh engine, never run
    with Pipeline(retriever, reranker, k=6, n=6, deadline_ms=1000) as pipe:
        result = pipe.search(BROAD)
    assert result.reranked is True and result.n_reranked > 0, result.reason
    assert pipe.warm_up_ms >= 2400 and pipe.throughput.pairs_per_s > 0
    assert result.timings.total_ms < pipe.warm_up_ms  # the cold loads are not in the query's timings


def test_warm_up_measures_throughput_and_reports_a_broken_reranker(bm25, tiny_model_dir):
    with Pipeline(bm25, CrossEncoderReranker(str(tiny_model_dir)), k=6, n=6) as pipe:
        assert pipe.warm_up_ms is None and pipe.throughput.pairs_per_s is None
        assert pipe.warm_up() is None
        assert pipe.warm_up_ms > 0 and pipe.throughput.pairs_per_s > 0
    with Pipeline(bm25, BrokenReranker(), k=6, n=6) as pipe:
        assert pipe.warm_up() == "reranker warm-up failed: ConnectionError: connection refused"
        result = pipe.search(BROAD, deadline_ms=1000)  # warmed (and failed) once: no second warm-up
    assert result.reranked is False and "connection refused" in result.reason
    with Pipeline(bm25, None) as pipe:
        assert pipe.warm_up() is None and pipe.warm_up_ms > 0


def test_cached_hits_do_not_inflate_the_throughput_estimate(bm25, engine):
    with Pipeline(bm25, CachedReranker(engine, max_entries=100), k=6, n=6) as pipe:
        pipe.search(BROAD)
        measured = pipe.throughput.pairs_per_s
        assert pipe.search(BROAD).cache_hits == 6
        assert pipe.throughput.pairs_per_s == measured


def test_a_recommended_rerank_depth_reranks_only_the_first_stages_head(bm25, tiny_model_dir):
    rr = CrossEncoderReranker(str(tiny_model_dir), dtype="fp32")
    rr.recommended = {"rerank_depth": 3}
    with Pipeline(bm25, rr, k=6, n=6, fusion="none") as pipe:
        assert pipe.rerank_depth == 3
        result = pipe.search(BROAD)
        first = pipe.search(BROAD, rerank=False)
    assert result.reranked and result.n_reranked == 3 and result.reason is None  # a setting, not a fallback
    head_ids = {h.id for h in first.hits[:3]}
    assert {h.id for h in result.hits[:3]} == head_ids  # only the top 3 were reordered...
    assert [h.id for h in result.hits[3:]] == [h.id for h in first.hits[3:]]  # ...the rest kept their order
    assert all(h.rerank_score is None for h in result.hits[3:])
    scores = rr.score(BROAD, [c.full_text for c in bm25.search(BROAD, 3)]).scores
    assert sorted((h.rerank_score for h in result.hits[:3]), reverse=True) == pytest.approx(sorted(scores, reverse=True))
    with Pipeline(bm25, rr, k=6, n=6, rerank_depth=None) as pipe:  # the caller overrides it
        assert pipe.search(BROAD).n_reranked == 6
    with pytest.raises(InputError, match="rerank_depth"):
        Pipeline(bm25, rr, rerank_depth=0)
