"""The local engine on the sequence-classification architectures people deploy as rerankers (issue #22), each as a
tiny RANDOM checkpoint built here, offline, with a tokenizer trained on the fly that builds the family's real pair
format:

=================  ===========================================  ==============================================
family             deployed as                                  pair format
=================  ===========================================  ==============================================
``xlm-roberta``    bge-reranker-v2-m3, bge-reranker-base        ``<s> A </s></s> B </s>``, no token types
``deberta-v2``     mxbai-rerank-v1 (type_vocab_size 0, as        ``[CLS] A [SEP] B [SEP]``, token types 0 / 1
                   DeBERTa-v3)
``deberta-v2-2l``  the same, 2 labels and token-type            as above (relevance = logit[1] - logit[0])
                   embeddings (type_vocab_size 2)
``modernbert``     gte-reranker-modernbert                      ``[CLS] A [SEP] B [SEP]``, no token type ids
=================  ===========================================  ==============================================

For each: crossrank's raw logits equal sentence-transformers' ``CrossEncoder`` and a plain transformers forward
pass; a batch of mixed lengths scores as one-by-one; truncation keeps the special tokens and flags the pair; the
ONNX backends agree with torch; and checkpoints that name custom code are refused unless ``trust_remote_code``.

Random weights use ``initializer_range=0.2`` (as ``spread_model_dir`` in test_backends.py): with the default 0.02
the logits barely vary from text to text and ranking agreement would mean nothing.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import crossrank
from crossrank.errors import ModelLoadError
from crossrank.rerank.backends import onnx_available
from crossrank.rerank.engine import CrossEncoderReranker

pytestmark = pytest.mark.slow  # four architectures through three backends: about a minute in all

# Small English text the tokenizers are trained on (a few hundred vocabulary entries).
CORPUS = """\
Plants convert sunlight, water and carbon dioxide into glucose and oxygen in their chloroplasts.
Photosynthesis happens in the leaves, where chlorophyll absorbs red and blue light and reflects green light.
The glucose made in leaves is stored as starch and used for energy when the sun does not shine.
Mitochondria produce energy for the cell through oxidative phosphorylation; they are the powerhouse of the cell.
A volcano erupts when magma rises through the crust and escapes as lava, ash and gas.
Earth's crust is divided into plates whose motion causes earthquakes and builds mountains over millions of years.
Insulin is a hormone made by the pancreas that lets cells absorb glucose from the blood.
The pancreas also makes digestive enzymes that break down food in the small intestine.
A black hole is a region of space where gravity is so strong that nothing, not even light, can escape.
Stars are born in clouds of gas and dust, shine for billions of years and die as white dwarfs or supernovae.
What do plants make from sunlight? How does a volcano erupt? Which organ makes insulin? Why is the sky blue?
The sky looks blue because air scatters short blue wavelengths of sunlight more than long red ones.
Rain forms when water vapour in the air cools, condenses into droplets and the droplets grow heavy enough to fall.
Rivers carry water from the mountains to the sea, cutting valleys and carrying sand and stones with them.
The heart pumps blood through arteries to every part of the body, and veins carry it back to the heart.
Search engines first retrieve many candidate documents, then a reranker scores each query and document pair.
A cross-encoder reads the query and the document together and returns one relevance score for the pair.
"""

QUERY = "what do plants make from sunlight"
# mixed lengths: from one word to ~150 tokens (longer than ModernBERT's 16-token local attention window here)
DOCS = [
    "Plants convert sunlight, water and carbon dioxide into glucose and oxygen in chloroplasts.",
    "short",
    "Photosynthesis happens in the leaves of plants. " * 8,
    "A volcano erupts when magma rises through the crust.",
    "Insulin is a hormone made by the pancreas.",
    "The sky looks blue because air scatters blue light. " * 3,
    "Stars shine for billions of years.",
    "Rivers carry water, sand and stones from the mountains to the sea, cutting deep valleys on the way.",
]
# ~20 texts for ranking agreement between backends
RANK_DOCS = [line.strip() for line in CORPUS.splitlines() if line.strip()] + [
    "glucose", "the heart pumps blood", "light"
]
LONG_DOC = " ".join(["Chlorophyll in the leaves absorbs red and blue light to make glucose."] * 60)  # ~800 tokens

needs_onnx = pytest.mark.skipif(not onnx_available(), reason="onnxruntime / onnx not installed")


# --------------------------------------------------------------------------------------------------- tokenizers


def _unigram_vocab(specials: list[str], size: int = 400) -> list[tuple[str, float]]:
    """A SentencePiece-style Unigram vocabulary learned on CORPUS by tokenizers' UnigramTrainer, ``specials`` first
    (ids 0..len-1).

    The trainer's piece set is stable, but its EM runs in parallel: scores differ by up to 5e-4 and ties come out in
    any order from run to run, which would change ids and segmentations (so the random model's scores). The pieces
    are therefore kept and re-scored with their log frequency in CORPUS (the trainer's own seed estimate), ordered by
    score then text: the same vocabulary every run."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(CORPUS.splitlines(), trainers.UnigramTrainer(vocab_size=size, special_tokens=specials))
    pieces = [piece for piece, _ in json.loads(tok.to_str())["model"]["vocab"]]
    assert pieces[: len(specials)] == specials
    text = "".join("\u2581" + w for w in CORPUS.split())  # what Metaspace makes of it: "▁Plants▁convert..."
    counts = {p: text.count(p) for p in pieces[len(specials):]}
    total = sum(counts.values())
    learned = sorted(((p, round(math.log(max(c, 0.5) / total), 6)) for p, c in counts.items()),
                     key=lambda ps: (-ps[1], ps[0]))
    return [(p, 0.0) for p in specials] + learned


def _xlmr_tokenizer():
    """XLM-RoBERTa's own tokenizer class on a trained Unigram vocabulary, ids as in XLM-R: <s>=0 <pad>=1 </s>=2
    <unk>=3, <mask> last. The class installs XLM-R's post-processor (``<s> A </s></s> B </s>``)."""
    from transformers import XLMRobertaTokenizer

    vocab = _unigram_vocab(["<s>", "<pad>", "</s>", "<unk>"]) + [("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=512)


def _deberta_tokenizer():
    """DeBERTa-v2's own tokenizer class on a trained Unigram vocabulary, ids as in DeBERTa-v3: [PAD]=0 [CLS]=1
    [SEP]=2 [UNK]=3, [MASK] last; its post-processor gives ``[CLS] A [SEP] B [SEP]`` with token types 0 / 1."""
    from transformers import DebertaV2Tokenizer

    vocab = _unigram_vocab(["[PAD]", "[CLS]", "[SEP]", "[UNK]"]) + [("[MASK]", 0.0)]
    return DebertaV2Tokenizer(vocab=vocab, model_max_length=512)


def _modernbert_tokenizer():
    """ModernBERT's kind of tokenizer: byte-level BPE with the special tokens after the learned vocabulary
    ([UNK] [CLS] [SEP] [PAD] [MASK], as ModernBERT's ids 50280-50284), a ``[CLS] A [SEP] B [SEP]`` template and
    ``model_input_names`` without token_type_ids, in a PreTrainedTokenizerFast (what ModernBERT checkpoints ship)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS.splitlines(), trainers.BpeTrainer(
        vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
        mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"], model_max_length=8192,
    )


# --------------------------------------------------------------------------------------------------- checkpoints

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, initializer_range=0.2)


def _build_xlmr(out: Path, *, max_position_embeddings: int = 514) -> None:
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tok = _xlmr_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=len(tok), max_position_embeddings=max_position_embeddings, type_vocab_size=1,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        num_labels=1, **TINY,
    )
    torch.manual_seed(0)
    XLMRobertaForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _build_deberta(out: Path, *, num_labels: int = 1, type_vocab_size: int = 0) -> None:
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    tok = _deberta_tokenizer()
    config = DebertaV2Config(  # DeBERTa-v3's layout: relative attention only, shared keys, bucketed positions
        vocab_size=len(tok), max_position_embeddings=512, type_vocab_size=type_vocab_size, relative_attention=True,
        position_buckets=256, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True,
        position_biased_input=False, pad_token_id=tok.pad_token_id, num_labels=num_labels, **TINY,
    )
    torch.manual_seed(1)
    DebertaV2ForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _build_modernbert(out: Path) -> None:
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    tok = _modernbert_tokenizer()
    config = ModernBertConfig(  # local_attention 16 (128 in the real ones), so the test texts cross the window
        vocab_size=len(tok), max_position_embeddings=8192, local_attention=16, global_attn_every_n_layers=2,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
        cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id, classifier_pooling="mean", num_labels=1,
        **TINY,
    )
    torch.manual_seed(2)
    ModernBertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[Path], None]
    architecture: str
    prefix: tuple[str, ...]  # special tokens around the query and the document: prefix A mid B suffix
    mid: tuple[str, ...]
    suffix: tuple[str, ...]
    token_types: bool  # whether the tokenizer feeds token_type_ids (0 for A, 1 for B)
    num_labels: int = 1


FAMILIES = {
    "xlm-roberta": Family("xlm-roberta", _build_xlmr, "XLMRobertaForSequenceClassification",
                          ("<s>",), ("</s>", "</s>"), ("</s>",), token_types=False),
    "deberta-v2": Family("deberta-v2", _build_deberta, "DebertaV2ForSequenceClassification",
                         ("[CLS]",), ("[SEP]",), ("[SEP]",), token_types=True),
    "deberta-v2-2l": Family("deberta-v2-2l", lambda out: _build_deberta(out, num_labels=2, type_vocab_size=2),
                            "DebertaV2ForSequenceClassification", ("[CLS]",), ("[SEP]",), ("[SEP]",),
                            token_types=True, num_labels=2),
    "modernbert": Family("modernbert", _build_modernbert, "ModernBertForSequenceClassification",
                         ("[CLS]",), ("[SEP]",), ("[SEP]",), token_types=False),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two torch threads wait on
    each other (measured: a forward pass 0.9 s with 2 threads under load, 0.04 s with 1). ONNX sessions follow
    (their thread count defaults to torch's)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("crossrank-cache")


@pytest.fixture(autouse=True)
def _private_cache(cache_dir, monkeypatch):
    monkeypatch.setenv("CROSSRANK_CACHE_DIR", str(cache_dir))  # ONNX graphs go here, not to ~/.cache


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory) -> tuple[Family, Path]:
    fam = FAMILIES[request.param]
    out = tmp_path_factory.mktemp(f"tiny-{fam.name}")
    fam.build(out)
    return fam, out


@pytest.fixture(scope="module")
def engine(family) -> CrossEncoderReranker:
    _, path = family
    return CrossEncoderReranker(path, activation="raw", dtype="fp32", backend="torch")


@pytest.fixture(scope="module")
def tokenizer(family):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(family[1]))


def _relevance(logits: np.ndarray) -> np.ndarray:
    """One relevance logit per row: the logit itself (1 label) or logit[1] - logit[0] (2 labels)."""
    logits = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


# --------------------------------------------------------------------------------------------------- 1. load + score


def test_fixture_tokenizer_builds_the_family_pair_format(family, tokenizer):
    """The checkpoint is what it claims: the tokenizer reloaded from disk joins a pair in the family's format."""
    fam, _ = family
    enc = tokenizer(QUERY, DOCS[0])
    q = tokenizer(QUERY, add_special_tokens=False)["input_ids"]
    d = tokenizer(DOCS[0], add_special_tokens=False)["input_ids"]
    sp = lambda toks: tokenizer.convert_tokens_to_ids(list(toks))  # noqa: E731 - special tokens' ids
    assert enc["input_ids"] == sp(fam.prefix) + q + sp(fam.mid) + d + sp(fam.suffix)
    assert ("token_type_ids" in enc) == fam.token_types
    if fam.token_types:
        n_a = len(fam.prefix) + len(q) + len(fam.mid)
        assert enc["token_type_ids"] == [0] * n_a + [1] * (len(enc["input_ids"]) - n_a)
    assert 200 <= len(tokenizer) <= 600


def test_engine_loads_the_family(family, engine):
    fam, _ = family
    info = engine.info()
    assert info["architecture"] == fam.architecture
    assert info["num_labels"] == fam.num_labels
    assert info["backend"] == "torch" and info["dtype"] == "fp32" and info["activation"] == "raw"
    assert info["max_length"] == 512  # min(positions, 512, tokenizer.model_max_length)


def test_pair_inputs_equal_the_tokenizers_own_pair(family, engine, tokenizer):
    fam, _ = family
    for doc in DOCS:
        (fed,) = engine.pair_inputs(QUERY, doc)
        ref = tokenizer(QUERY, doc)
        assert fed["input_ids"] == ref["input_ids"]
        if fam.token_types:
            assert fed["token_type_ids"] == ref["token_type_ids"]


def test_raw_logits_equal_sentence_transformers_cross_encoder(family, engine):
    from sentence_transformers import CrossEncoder

    _, path = family
    ce = CrossEncoder(str(path), device="cpu")
    ref = _relevance(ce.predict([(QUERY, d) for d in DOCS], activation_fn=torch.nn.Identity(),
                                convert_to_numpy=True))
    got = np.array(engine.score(QUERY, DOCS).scores)
    assert np.ptp(ref) > 1e-2  # the random model does tell the texts apart, so equality means something
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_raw_logits_equal_a_plain_transformers_forward(family, engine, tokenizer):
    from transformers import AutoModelForSequenceClassification

    fam, path = family
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    assert model.config.num_labels == fam.num_labels
    with torch.inference_mode():
        ref = _relevance(np.concatenate([
            model(**tokenizer(QUERY, d, return_tensors="pt")).logits.numpy() for d in DOCS
        ]))
    got = np.array(engine.score(QUERY, DOCS).scores)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    # score_pairs (several queries in one call) gives the same numbers
    pairs = [(QUERY, d) for d in DOCS] + [("why is the sky blue", DOCS[5])]
    got_pairs = engine.score_pairs(pairs).scores
    np.testing.assert_allclose(got_pairs[: len(DOCS)], ref, atol=1e-4, rtol=0)
    with torch.inference_mode():
        sky = _relevance(model(**tokenizer(*pairs[-1], return_tensors="pt")).logits.numpy())[0]
    assert got_pairs[-1] == pytest.approx(sky, abs=1e-4)


def test_sigmoid_activation_is_the_sigmoid_of_the_relevance_logit(family, engine):
    _, path = family
    probs = CrossEncoderReranker(path, activation="sigmoid", dtype="fp32", backend="torch").score(QUERY, DOCS).scores
    logits = np.array(engine.score(QUERY, DOCS).scores)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-5)


# --------------------------------------------------------------------------------------------------- 2. batching


def test_mixed_length_batch_scores_as_one_by_one(family, engine, tokenizer):
    lengths = [len(tokenizer(QUERY, d)["input_ids"]) for d in DOCS]
    assert max(lengths) - min(lengths) > 100  # real padding inside the batch
    together = engine.score(QUERY, DOCS)
    one_by_one = [engine.score(QUERY, [d]).scores[0] for d in DOCS]
    np.testing.assert_allclose(together.scores, one_by_one, atol=1e-4, rtol=0)
    assert together.truncated == [False] * len(DOCS)
    # another order, and batches cut small (several forward passes, different padding), change nothing
    rev = engine.score(QUERY, DOCS[::-1]).scores[::-1]
    np.testing.assert_allclose(rev, one_by_one, atol=1e-4, rtol=0)
    _, path = family
    small = CrossEncoderReranker(path, activation="raw", dtype="fp32", backend="torch", batch_tokens=128,
                                 max_batch_size=3)
    np.testing.assert_allclose(small.score(QUERY, DOCS).scores, one_by_one, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------- 3. truncation


def test_truncation_cuts_the_document_and_keeps_the_special_tokens(family, tokenizer):
    fam, path = family
    max_length = 32
    rr = CrossEncoderReranker(path, activation="raw", dtype="fp32", backend="torch", max_length=max_length)
    sp = lambda toks: tokenizer.convert_tokens_to_ids(list(toks))  # noqa: E731 - special tokens' ids
    q = tokenizer(QUERY, add_special_tokens=False)["input_ids"]
    d = tokenizer(LONG_DOC, add_special_tokens=False)["input_ids"]
    assert len(q) + len(d) > 10 * max_length

    (fed,) = rr.pair_inputs(QUERY, LONG_DOC)
    ids = fed["input_ids"]
    n_special = len(fam.prefix) + len(fam.mid) + len(fam.suffix)
    assert len(ids) == max_length
    assert ids[: len(fam.prefix)] == sp(fam.prefix)
    assert ids[-len(fam.suffix):] == sp(fam.suffix)
    start = len(fam.prefix)
    assert ids[start : start + len(q)] == q  # the query whole
    assert ids[start + len(q) : start + len(q) + len(fam.mid)] == sp(fam.mid)
    kept = max_length - n_special - len(q)
    assert ids[start + len(q) + len(fam.mid) : -len(fam.suffix)] == d[:kept]  # the document's head
    if fam.token_types:
        n_a = start + len(q) + len(fam.mid)
        assert fed["token_type_ids"] == [0] * n_a + [1] * (max_length - n_a)

    res = rr.score(QUERY, [LONG_DOC, DOCS[1]])
    assert res.truncated == [True, False]
    # the score is the model's on exactly those ids
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    feed = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    if fam.token_types:
        feed["token_type_ids"] = torch.tensor([fed["token_type_ids"]])
    with torch.inference_mode():
        ref = _relevance(model(**feed).logits.numpy())[0]
    assert res.scores[0] == pytest.approx(ref, abs=1e-4)


def test_long_document_at_the_default_max_length_runs_within_the_position_table(family, engine):
    """At the default max_length (512 here) a long document fills the window and the model accepts it."""
    (fed,) = engine.pair_inputs(QUERY, LONG_DOC)
    assert len(fed["input_ids"]) == engine.max_length == 512
    res = engine.score(QUERY, [LONG_DOC])
    assert res.truncated == [True] and np.isfinite(res.scores[0])


def test_xlmr_max_length_leaves_room_for_the_position_offset(tmp_path):
    """XLM-R's position ids start at padding_idx + 1 = 2, so a table of N entries holds N - 2 tokens."""
    _build_xlmr(tmp_path, max_position_embeddings=512)
    rr = CrossEncoderReranker(tmp_path, activation="raw", dtype="fp32", backend="torch")
    assert rr.max_length <= 510
    res = rr.score(QUERY, [LONG_DOC])
    assert res.truncated == [True] and np.isfinite(res.scores[0])


# --------------------------------------------------------------------------------------------------- 4. backends

# onnx-int8 vs torch fp32 on RANK_DOCS (20 texts, one call), Spearman, measured on these (deterministic) fixtures
# with onnxruntime 1.31.1: xlm-roberta 0.892, deberta-v2 0.904 (with the token_type_ids fix below simulated),
# deberta-v2-2l 0.904, modernbert 0.949; max |logit diff| 0.16 / 0.38 / 0.36 / 0.65 on logit spreads of
# 0.36 / 1.16 / 1.21 / 2.56. (Random weights with large activations under per-tensor u8 activation scales;
# torch-int8 on the same: 0.976 / 0.985 / 0.959 / 0.997.) Thresholds sit ~0.05 under the measurement.
INT8_MIN_SPEARMAN = {"xlm-roberta": 0.85, "deberta-v2": 0.85, "deberta-v2-2l": 0.85, "modernbert": 0.9}

@pytest.fixture(scope="module")
def rank_reference(engine) -> np.ndarray:
    return np.array(engine.score(QUERY, RANK_DOCS).scores)


@needs_onnx
def test_onnx_fp32_agrees_with_torch(family, rank_reference):
    """(DeBERTa-v3-style type_vocab_size=0: the export drops the unused token_type_ids input, which the runner
    then does not feed.)"""
    fam, path = family
    rr = CrossEncoderReranker(path, activation="raw", dtype="fp32", backend="onnx")
    assert rr.info()["backend"] == "onnx"
    got = np.array(rr.score(QUERY, RANK_DOCS).scores)
    np.testing.assert_allclose(got, rank_reference, atol=1e-4, rtol=0)
    np.testing.assert_allclose(rr.score(QUERY, DOCS).scores, [rr.score(QUERY, [d]).scores[0] for d in DOCS],
                               atol=1e-4, rtol=0)


@needs_onnx
def test_onnx_int8_keeps_the_ranking_close(family, rank_reference):
    fam, path = family
    rr = CrossEncoderReranker(path, activation="raw", dtype="fp32", backend="onnx-int8")
    assert rr.info()["backend"] == "onnx-int8"
    got = np.array(rr.score(QUERY, RANK_DOCS).scores)
    assert np.all(np.isfinite(got))
    assert np.max(np.abs(got - rank_reference)) > 1e-3  # it really is another (quantised) graph
    assert _spearman(got, rank_reference) >= INT8_MIN_SPEARMAN[fam.name], (got, rank_reference)


def test_torch_int8_keeps_the_ranking_close(family, rank_reference):
    """Dynamic int8 Linear layers in torch (measured Spearman 0.96-1.00 on these fixtures)."""
    fam, path = family
    rr = CrossEncoderReranker(path, activation="raw", dtype="fp32", backend="torch-int8")
    assert rr.info()["backend"] == "torch-int8"
    got = np.array(rr.score(QUERY, RANK_DOCS).scores)
    assert np.all(np.isfinite(got)) and np.max(np.abs(got - rank_reference)) > 1e-4  # quantised, not a copy
    assert _spearman(got, rank_reference) >= 0.9, (got, rank_reference)


# --------------------------------------------------------------------------------------------------- 5. remote code

REMOTE_CODE = '''\
"""What a checkpoint that ships its own modelling code looks like (e.g. jina-reranker-v2: an XLM-R variant)."""
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification


class TinyRemoteConfig(XLMRobertaConfig):
    model_type = "{model_type}"


class TinyRemoteForSequenceClassification(XLMRobertaForSequenceClassification):
    config_class = TinyRemoteConfig

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = -out.logits  # what only this repository's code does
        return out
'''


@pytest.fixture(scope="module")
def stock_xlmr(tmp_path_factory) -> tuple[Path, list[float]]:
    out = tmp_path_factory.mktemp("tiny-xlmr-stock")
    _build_xlmr(out)
    return out, CrossEncoderReranker(out, activation="raw", dtype="fp32", backend="torch").score(QUERY, DOCS).scores


def _with_remote_code(stock: Path, out: Path, model_type: str) -> Path:
    shutil.copytree(stock, out)
    (out / "modeling_tiny_remote.py").write_text(REMOTE_CODE.replace("{model_type}", model_type), encoding="utf-8")
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config.update(
        model_type=model_type,
        architectures=["TinyRemoteForSequenceClassification"],
        auto_map={"AutoConfig": "modeling_tiny_remote.TinyRemoteConfig",
                  "AutoModelForSequenceClassification": "modeling_tiny_remote.TinyRemoteForSequenceClassification"},
    )
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


# a model type transformers does not know (it would refuse on its own), and one it knows (transformers alone would
# silently load its stock XLM-R class and never run the checkpoint's code: scores of another model)
REMOTE_MODEL_TYPES = ["tiny-remote-xlmr", "xlm-roberta"]


@pytest.mark.parametrize("model_type", REMOTE_MODEL_TYPES)
def test_custom_code_is_refused_by_default_naming_trust_remote_code(stock_xlmr, tmp_path, model_type):
    path = _with_remote_code(stock_xlmr[0], tmp_path / "remote", model_type)
    with pytest.raises(ModelLoadError, match="trust_remote_code") as e:
        CrossEncoderReranker(path, activation="raw", dtype="fp32", backend="torch")
    assert "auto_map" in str(e.value) or "custom" in str(e.value)
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        crossrank.load_reranker(str(path), cache_size=0)
    # nothing of the checkpoint's code was imported
    assert not any("modeling_tiny_remote" in name for name in sys.modules)


@pytest.mark.parametrize("model_type", REMOTE_MODEL_TYPES)
def test_trust_remote_code_runs_the_checkpoints_own_code(stock_xlmr, tmp_path, model_type, monkeypatch):
    import transformers.dynamic_module_utils as dmu

    # transformers copies remote code into HF_MODULES_CACHE and puts that folder on sys.path: keep both private
    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    stock_path, stock_scores = stock_xlmr
    path = _with_remote_code(stock_path, tmp_path / "remote", model_type)
    try:
        rr = CrossEncoderReranker(path, activation="raw", dtype="fp32", backend="torch", trust_remote_code=True)
        assert type(rr.model).__name__ == "TinyRemoteForSequenceClassification"
        np.testing.assert_allclose(rr.score(QUERY, DOCS).scores, -np.asarray(stock_scores), atol=1e-5, rtol=0)
    finally:
        for name in [n for n in sys.modules if "modeling_tiny_remote" in n]:
            del sys.modules[name]
    # registering the custom classes did not touch the stock mapping: the plain checkpoint still loads as XLM-R
    stock = CrossEncoderReranker(stock_path, activation="raw", dtype="fp32", backend="torch")
    assert type(stock.model).__name__ == "XLMRobertaForSequenceClassification"


@pytest.mark.parametrize("model_type", REMOTE_MODEL_TYPES)
def test_custom_code_of_a_hub_id_is_refused_too(stock_xlmr, tmp_path, model_type, monkeypatch):
    """The same checkpoints as a hub id, read from the Hugging Face cache (offline)."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-remote"
    _with_remote_code(stock_xlmr[0], repo / "snapshots" / commit, model_type)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        CrossEncoderReranker("acme/tiny-remote", activation="raw", dtype="fp32", backend="torch")
