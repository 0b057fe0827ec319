"""The one reranker contract (``rerank/base.py``): the engine, the cache, the remote client (against a real local
server), the cascade and the server's batched reranker each implement all of ``Reranker``: ``score_pairs`` on a
mixed-query batch agrees with ``score`` per query, ``info()`` names the model, ``with_options`` gives a working
variant. Plus the adapter for score-only objects, the one instruction rule and the one spec reader."""

from __future__ import annotations

import pytest

from crossrank.errors import InputError
from crossrank.rerank.base import (
    Reranker,
    RerankScores,
    ScoreOnlyReranker,
    as_reranker,
    check_instruction,
    score_by_query,
)
from crossrank.rerank.cache import CachedReranker
from crossrank.rerank.cascade import CascadeReranker, spec_models

Q1 = "what do plants make from sunlight"
Q2 = "how do volcanoes erupt"
DOCS = [
    "Plants convert sunlight, water and carbon dioxide into glucose and oxygen.",
    "Volcanoes erupt when magma rises through the crust.",
    "Insulin lets cells absorb glucose from the blood.",
]
LONG = " ".join(f"word{i % 50}" for i in range(400))  # far over max_length=64
PAIRS = [(Q1, DOCS[0]), (Q2, DOCS[1]), (Q1, LONG), (Q2, DOCS[0]), (Q1, DOCS[2]), (Q2, LONG)]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    return CrossEncoderReranker(str(tiny_model_dir), max_length=64, dtype="fp32", device="cpu")


def check_contract(reranker, variant_options: dict, *, flags: bool = True) -> Reranker:
    """The protocol's every member on ``reranker``; returns its variant under ``variant_options``."""
    assert isinstance(reranker, Reranker)
    got = reranker.score_pairs(PAIRS, timeout_s=60)
    assert isinstance(got, RerankScores) and len(got) == len(PAIRS) == len(got.truncated)
    for query in (Q1, Q2):
        idx = [i for i, (q, _) in enumerate(PAIRS) if q == query]
        want = reranker.score(query, [PAIRS[i][1] for i in idx], timeout_s=60)
        assert [got.scores[i] for i in idx] == pytest.approx(want.scores, abs=1e-5)
        assert [got.truncated[i] for i in idx] == want.truncated
    if flags:  # the two long texts, and only they, were cut
        assert got.truncated == [t == LONG for _, t in PAIRS]
    info = reranker.info()
    assert info["model"] and "activation" in info
    spans = reranker.token_spans([DOCS[0]])  # a tokenizer's spans, or None where it has none to offer
    assert spans is None or (len(spans) == 1 and spans[0] and all(DOCS[0][a:b].strip() for a, b in spans[0]))
    assert reranker.with_options() is reranker
    with pytest.raises(InputError):
        reranker.with_options(no_such_option=1)
    variant = reranker.with_options(**variant_options)
    assert isinstance(variant, Reranker) and variant is not reranker
    res = variant.score(Q1, [DOCS[0], LONG])
    assert len(res) == 2 and all(isinstance(s, float) for s in res)
    return variant


def test_the_engine_implements_the_contract(engine):
    chunked = check_contract(engine, {"long_documents": "chunk"})
    assert chunked.info()["long_documents"] == "chunk" and engine.info()["long_documents"] == "truncate"
    assert chunked.model is engine.model  # the same weights, not a copy
    # chunking scores the best window, the first of which is what truncation scores
    assert chunked.score(Q1, [LONG]).scores[0] >= engine.score(Q1, [LONG]).scores[0] - 1e-6
    assert chunked.count_inputs(Q1, [LONG]).windows > 1 and engine.count_inputs(Q1, [LONG]).windows == 1
    assert chunked.score(Q1, [DOCS[0]]).scores == pytest.approx(engine.score(Q1, [DOCS[0]]).scores, abs=1e-6)


def test_the_cache_implements_the_contract(engine):
    cached = CachedReranker(engine, max_entries=1000)
    chunked = check_contract(cached, {"long_documents": "chunk"})
    assert isinstance(chunked, CachedReranker) and chunked.info()["long_documents"] == "chunk"
    again = cached.score_pairs(PAIRS)
    assert again.cache_hits == len(PAIRS) and again.tokens == 0
    # the variant keys its own scores: a long text scored by chunks is not the truncated one's
    first = chunked.score(Q2, [LONG])  # (Q2, LONG) is in the cache, truncated
    assert first.cache_hits == 0 and chunked.score(Q2, [LONG]).cache_hits == 1
    assert first.scores == pytest.approx(engine.with_options(long_documents="chunk").score(Q2, [LONG]).scores)
    assert cached.count_inputs(Q1, DOCS) == engine.count_inputs(Q1, DOCS)
    assert cached.token_spans(DOCS) == engine.token_spans(DOCS) and engine.token_spans(DOCS) is not None
    assert cached.info()["special_tokens"] == engine.template.n_special and cached.info()["id2label"]


def test_the_remote_client_implements_the_contract(engine):
    from crossrank.rerank.remote import RemoteReranker
    from crossrank.serve import ServerThread, create_app

    with ServerThread(create_app(engine)) as server, RemoteReranker(server.url) as remote:
        fewer = check_contract(remote, {"retries": 0, "max_documents_per_request": 1}, flags=False)
        assert fewer.retries == 0 and fewer.batch == 1 and remote.retries == 2
        assert fewer.score(Q1, DOCS).scores == pytest.approx(remote.score(Q1, DOCS).scores, abs=1e-5)
        assert remote.with_options(long_documents="truncate") is not None
        with pytest.raises(InputError, match="long_documents"):
            remote.with_options(long_documents="chunk")
        assert remote.count_inputs(Q1, DOCS) is None
        with pytest.raises(InputError, match="takes no instruction"):
            remote.score(Q1, DOCS, instruction="Find the city")


def test_the_cascade_implements_the_contract(engine):
    cascade = CascadeReranker(CachedReranker(engine), engine, top_m=2)
    chunked = check_contract(cascade, {"long_documents": "chunk"})
    assert chunked.info()["cascade"]["first"]["long_documents"] == "chunk"
    assert chunked.info()["cascade"]["second"]["long_documents"] == "chunk"
    # the same model twice: the cascade's scores are the model's
    assert cascade.score(Q1, DOCS).scores == pytest.approx(engine.score(Q1, DOCS).scores, abs=1e-5)
    assert cascade.count_inputs(Q1, DOCS) is None


def test_the_servers_batched_reranker_implements_the_contract(engine):
    from crossrank.serve.batcher import BatchedReranker, DynamicBatcher
    from crossrank.serve.engines import Engines

    engines = Engines(engine, None)
    batcher = DynamicBatcher(engines.score_pairs, max_length=engines.max_length)
    batcher.start()
    try:
        batched = BatchedReranker(batcher, engine.name, timeout_s=60, info=engine.info())
        chunked = check_contract(batched, {"long_documents": "chunk"})
        want = engine.with_options(long_documents="chunk").score(Q1, [LONG]).scores
        assert chunked.score(Q1, [LONG]).scores == pytest.approx(want, abs=1e-5)
        with pytest.raises(InputError, match="takes no instruction"):
            batched.score(Q1, DOCS, instruction="Find the city")
    finally:
        batcher.stop()


def test_the_servers_engine_side_gets_variants_through_with_options(engine):
    from crossrank.serve.engines import Engines

    engines = Engines(CachedReranker(engine), None)
    assert engines.supports("truncate") and engines.supports("chunk")
    assert engines.get("chunk") is engines.get("chunk") and engines.get(None) is engines.base
    assert engines.get("chunk").info()["long_documents"] == "chunk"


class OnlyScore:
    """A caller's own scorer: ``score(query, texts)`` returning a plain list, nothing else."""

    name = "only-score"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def score(self, query, texts):
        self.calls.append((query, len(texts)))
        return [float(len(t)) + (0.5 if "glucose" in query + t else 0.0) for t in texts]


def test_a_score_only_object_gets_the_full_contract_through_as_reranker():
    scorer = OnlyScore()
    assert not isinstance(scorer, Reranker)
    reranker = as_reranker(scorer)
    assert isinstance(reranker, ScoreOnlyReranker) and as_reranker(reranker) is reranker and as_reranker(None) is None
    got = reranker.score_pairs(PAIRS)
    assert scorer.calls[-2:] == [(Q1, 3), (Q2, 3)]  # one call per distinct query
    for i, (q, t) in enumerate(PAIRS):
        assert got.scores[i] == reranker.score(q, [t]).scores[0]
    assert got.truncated == [False] * len(PAIRS) and got.cache_hits == 0
    assert reranker.info() == {"model": "only-score"} and reranker.count_inputs(Q1, DOCS) is None
    assert reranker.with_options() is reranker
    with pytest.raises(InputError, match="takes no options"):
        reranker.with_options(long_documents="chunk")
    assert [r.index for r in reranker.rerank(Q1, ["a", "abc", "ab"])] == [1, 2, 0]


def test_score_by_query_scatters_back_in_input_order():
    def score(query, texts):
        return RerankScores(scores=[float(len(query) * 100 + len(t)) for t in texts],
                            truncated=[len(t) > 3 for t in texts], cache_hits=1, tokens=len(texts))

    got = score_by_query(score, [("a", "xy"), ("bb", "x"), ("a", "xyzw")])
    assert got.scores == [102.0, 201.0, 104.0] and got.truncated == [False, False, True]
    assert got.cache_hits == 2 and got.tokens == 3
    with pytest.raises(InputError, match="pairs"):
        score_by_query(score, ["not a pair"])


def test_one_instruction_rule(engine):
    assert check_instruction(engine, None) is None
    for reranker in (engine, None):
        with pytest.raises(InputError, match="takes none"):
            check_instruction(reranker, "Find the city")
    with pytest.raises(InputError, match="takes no instruction"):
        check_instruction(engine, "Find the city")
    with pytest.raises(InputError, match="non-empty"):
        check_instruction(engine, " ")


def test_spec_models_reads_every_spec_form():
    from crossrank.rerank.bundled import fast_spec

    assert spec_models("a>b@3:rrf") == (("a", "b"), 3, "rrf") and spec_models("a>b@3").cascade
    assert spec_models("default@20") == (("default",), 20, "score")
    assert spec_models("default") == (("default",), None, "score") and not spec_models("default").cascade
    assert spec_models("http://host:8080/rerank") == (("http://host:8080/rerank",), None, "score")
    assert spec_models("fast") == spec_models(fast_spec())
    with pytest.raises(InputError, match="cascade spec"):
        spec_models("a>b")
