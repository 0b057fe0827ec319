"""LLM rerankers (a causal LM read by its answer-token logits): Qwen3-Reranker's and bge-reranker-v2-gemma's
published prompts on tiny random checkpoints built here from their ``transformers`` configs, with byte-level BPE
tokenizers trained on the fly. crossrank's scores are compared with an independent computation: a plain
transformers forward pass over the prompt built as the models' reference code builds it."""

from __future__ import annotations

import json
import math

import httpx
import pytest

pytestmark = pytest.mark.slow  # builds and runs causal LMs: tens of seconds in all

torch = pytest.importorskip("torch")

from crossrank.errors import InputError, ModelLoadError  # noqa: E402
from crossrank.rerank.prompts import BUILTIN, PROMPT_FILE  # noqa: E402

CORPUS = """yes no yes no Yes No. yes. no. Yes, No?
The capital of France is Paris. Plants make glucose from sunlight, water and carbon dioxide.
Judge whether the Document meets the requirements based on the Query and the Instruct provided.
Given a web search query, retrieve relevant passages that answer the query. A: B: passage
Given a query A and a passage B, determine whether the passage contains an answer to the query.
<Instruct>: <Query>: <Document>: What is the capital of China? Beijing is the capital of China.
Gravity is a force that attracts two bodies towards each other. Volcanoes erupt when magma rises.
""" * 20
# Qwen2's pre-tokenizer split (digits one by one, letters with one leading non-letter, punctuation runs, newlines)
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
QUERY = "What is the capital of China?"
DOCS = ["The capital of China is Beijing.", "Plants make glucose.",
        "Gravity is a force that attracts two bodies towards each other. " * 4, "yes", "Volcanoes erupt."]


def _bpe_tokenizer(out, special: list[str], **named):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    tok.add_tokens([AddedToken("<think>", normalized=False), AddedToken("</think>", normalized=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **named)
    fast.save_pretrained(out)
    return fast


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    """A Qwen3 causal LM with Qwen3-Reranker-0.6B's shape ratios (tied embeddings, GQA), 2 layers, hidden 64.
    The folder name is the hub's, so the format is found by name."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = tmp_path_factory.mktemp("llm") / "Qwen3-Reranker-tiny"
    tok = _bpe_tokenizer(out, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    config = Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    from transformers import GemmaConfig, GemmaForCausalLM

    out = tmp_path_factory.mktemp("llm") / "bge-reranker-v2-gemma-tiny"
    tok = _bpe_tokenizer(out, ["<pad>", "<eos>", "<bos>"], bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    config = GemmaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(1)
    GemmaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def qwen3(qwen3_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    return CrossEncoderReranker(str(qwen3_dir), activation="raw", dtype="fp32")


def _reference(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()


def _last_logits(lm, ids: list[int]):
    with torch.no_grad():
        return lm(torch.tensor([ids])).logits[0, -1]


def _qwen3_reference_ids(tok, query, doc, instruction=None, max_length=8192) -> list[int]:
    """Qwen3-Reranker's reference code: prefix tokens + the tokenised '<Instruct>...<Document>: doc' (cut from
    its end to fit) + suffix tokens."""
    fmt = BUILTIN["qwen3-reranker"]
    prefix = tok.encode(fmt.prefix, add_special_tokens=False)
    suffix = tok.encode(fmt.suffix, add_special_tokens=False)
    body = f"<Instruct>: {instruction or fmt.default_instruction}\n<Query>: {query}\n<Document>: {doc}"
    ids = tok(body, add_special_tokens=False)["input_ids"][: max_length - len(prefix) - len(suffix)]
    return prefix + ids + suffix


def test_qwen3_scores_are_the_yes_no_log_odds_of_the_reference_prompt(qwen3, qwen3_dir):
    tok, lm = _reference(qwen3_dir)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    assert qwen3.info()["prompt_format"] == "qwen3-reranker" and qwen3.takes_instruction
    assert qwen3.info()["backend"] == "torch"  # auto builds no ONNX graph of a decoder
    for instruction in (None, "Find the passage that names the city"):
        got = qwen3.score(QUERY, DOCS, instruction=instruction).scores
        for doc, score in zip(DOCS, got, strict=True):
            ids = _qwen3_reference_ids(tok, QUERY, doc, instruction)
            assert qwen3.pair_inputs(QUERY, doc, instruction)[0]["input_ids"] == ids
            logits = _last_logits(lm, ids)
            assert score == pytest.approx(float(logits[yes] - logits[no]), abs=1e-4)


def test_qwen3_probability_is_the_softmax_of_yes_over_yes_and_no(qwen3_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    engine = CrossEncoderReranker(str(qwen3_dir), dtype="fp32")  # activation auto: sigmoid
    tok, lm = _reference(qwen3_dir)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    for doc, p in zip(DOCS, engine.score(QUERY, DOCS).scores, strict=True):
        logits = _last_logits(lm, _qwen3_reference_ids(tok, QUERY, doc))
        assert p == pytest.approx(float(torch.softmax(logits[[no, yes]], dim=0)[1]), abs=1e-5)


def test_a_batch_of_mixed_lengths_scores_as_one_by_one(qwen3):
    texts = [("word " * n).strip() or "x" for n in (1, 40, 3, 120, 7, 0, 60)]
    together = qwen3.score(QUERY, texts).scores
    alone = [qwen3.score(QUERY, [t]).scores[0] for t in texts]
    assert together == pytest.approx(alone, abs=1e-4)
    pairs = [(QUERY, texts[0]), ("another question", texts[1]), (QUERY, texts[3])]
    assert qwen3.score_pairs(pairs).scores == pytest.approx(
        [qwen3.score(q, [t]).scores[0] for q, t in pairs], abs=1e-4)


def test_truncation_cuts_only_the_document_and_keeps_the_chat_template_whole(qwen3_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    engine = CrossEncoderReranker(str(qwen3_dir), activation="raw", dtype="fp32", max_length=256)
    tok, lm = _reference(qwen3_dir)
    fmt = BUILTIN["qwen3-reranker"]
    prefix = tok.encode(fmt.prefix, add_special_tokens=False)
    suffix = tok.encode(fmt.suffix, add_special_tokens=False)
    opening = tok.encode("<Document>:", add_special_tokens=False)
    long_doc = "Gravity is a force that attracts two bodies towards each other. " * 40
    ids = engine.pair_inputs(QUERY, long_doc)[0]["input_ids"]
    assert len(ids) == 256 and ids[: len(prefix)] == prefix and ids[-len(suffix):] == suffix
    body = tok.decode(ids[len(prefix): -len(suffix)])
    assert f"<Query>: {QUERY}\n<Document>: Gravity" in body and ids.count(opening[0]) >= 1
    result = engine.score(QUERY, [long_doc, "short"])
    assert result.truncated == [True, False]
    # what it scored is the reference prompt cut the same way (the reference cuts its body to fit)
    ref = _qwen3_reference_ids(tok, QUERY, long_doc, max_length=256)
    assert ids == ref
    logits = _last_logits(lm, ref)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    assert result.scores[0] == pytest.approx(float(logits[yes] - logits[no]), abs=1e-4)


def test_bge_gemma_scores_are_the_yes_logit_of_its_reference_prompt(gemma_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    engine = CrossEncoderReranker(str(gemma_dir), activation="raw", dtype="fp32")
    assert engine.info()["prompt_format"] == "bge-reranker-v2-gemma" and not engine.takes_instruction
    tok, lm = _reference(gemma_dir)
    yes = tok("Yes", add_special_tokens=False)["input_ids"][0]
    sep = tok("\n", add_special_tokens=False)["input_ids"]
    prompt = tok(BUILTIN["bge-reranker-v2-gemma"].suffix[1], add_special_tokens=False)["input_ids"]
    for doc, score in zip(DOCS, engine.score(QUERY, DOCS).scores, strict=True):
        # FlagEmbedding's FlagLLMReranker: [bos] + 'A: q' + sep + 'B: p' + sep + prompt, score = logit of "Yes"
        ids = ([tok.bos_token_id] + tok(f"A: {QUERY}", add_special_tokens=False)["input_ids"] + sep
               + tok(f"B: {doc}", add_special_tokens=False)["input_ids"] + sep + prompt)
        assert engine.pair_inputs(QUERY, doc)[0]["input_ids"] == ids
        assert score == pytest.approx(float(_last_logits(lm, ids)[yes]), abs=1e-4)
    with pytest.raises(InputError, match="takes no instruction"):
        engine.score(QUERY, DOCS, instruction="anything")


def test_bge_gemma_batches_and_truncates_like_one_by_one(gemma_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    fixed = CrossEncoderReranker(str(gemma_dir), activation="raw", dtype="fp32").template.n_special
    limit = fixed + 48  # room for the query part and about 30 document tokens
    engine = CrossEncoderReranker(str(gemma_dir), activation="raw", dtype="fp32", max_length=limit)
    tok = _reference(gemma_dir)[0]
    texts = [("word " * n).strip() or "x" for n in (1, 40, 3, 120, 7)]
    together = engine.score(QUERY, texts)
    assert together.scores == pytest.approx([engine.score(QUERY, [t]).scores[0] for t in texts], abs=1e-4)
    assert together.truncated == [False, True, False, True, False]
    ids = engine.pair_inputs(QUERY, texts[3])[0]["input_ids"]
    prompt = tok(BUILTIN["bge-reranker-v2-gemma"].suffix[1], add_special_tokens=False)["input_ids"]
    sep = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(ids) == limit and ids[0] == tok.bos_token_id and ids[-len(prompt) - len(sep):] == sep + prompt
    assert tok.decode(ids[1:]).startswith(f"A: {QUERY}\nB: word")  # the query whole, the document cut


def test_bf16_keeps_the_ranking(qwen3_dir, qwen3):
    from crossrank.rerank.engine import CrossEncoderReranker

    engine = CrossEncoderReranker(str(qwen3_dir), activation="raw", dtype="bf16", backend="torch")
    assert engine.info()["dtype"] == "bf16"
    got, ref = engine.score(QUERY, DOCS).scores, qwen3.score(QUERY, DOCS).scores
    assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) < 0.05


def test_where_the_prompt_format_comes_from(tmp_path, qwen3_dir):
    import shutil

    from crossrank.rerank.engine import CrossEncoderReranker

    plain = tmp_path / "my-causal-lm"
    shutil.copytree(qwen3_dir, plain)
    with pytest.raises(ModelLoadError, match="prompt_format"):  # no name to go by, nothing in the checkpoint
        CrossEncoderReranker(str(plain))
    # the caller's choice, by name
    assert CrossEncoderReranker(str(plain), prompt_format="qwen3-reranker").prompt.name == "qwen3-reranker"
    # the checkpoint's own file: a custom format with another instruction and answer tokens
    custom = {"query": "Q: {query}", "separator": "\n", "document": "D: {document}", "suffix": "\nRelevant?",
              "true_token": "Yes", "false_token": "No"}
    (plain / PROMPT_FILE).write_text(json.dumps(custom), encoding="utf-8")
    engine = CrossEncoderReranker(str(plain), activation="raw", dtype="fp32")
    assert engine.prompt.query == "Q: {query}" and not engine.takes_instruction
    tok, lm = _reference(plain)
    ids = (tok(f"Q: {QUERY}", add_special_tokens=False)["input_ids"] + tok("\n", add_special_tokens=False)["input_ids"]
           + tok("D: Plants make glucose.", add_special_tokens=False)["input_ids"]
           + tok("\nRelevant?", add_special_tokens=False)["input_ids"])
    logits = _last_logits(lm, ids)
    y, n = tok("Yes", add_special_tokens=False)["input_ids"][0], tok("No", add_special_tokens=False)["input_ids"][0]
    assert engine.score(QUERY, ["Plants make glucose."]).scores[0] == pytest.approx(float(logits[y] - logits[n]),
                                                                                   abs=1e-4)
    with pytest.raises(InputError, match="true_token"):
        CrossEncoderReranker(str(plain), prompt_format={"query": "{query}", "document": "{document}"})
    with pytest.raises(ModelLoadError, match="not one"):  # an answer that is not one token cannot be read off
        CrossEncoderReranker(str(plain), prompt_format={**custom, "true_token": "Beijing is"})


def test_chunking_is_refused_for_llm_rerankers(qwen3_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    with pytest.raises(InputError, match="chunk"):
        CrossEncoderReranker(str(qwen3_dir), long_documents="chunk")


def test_instruction_through_the_cache_the_pipeline_and_a_classifier(qwen3_dir, tiny_model_dir, small_corpus):
    from crossrank.corpus import load_corpus
    from crossrank.pipeline import Pipeline
    from crossrank.rerank import load_reranker
    from crossrank.retrieve import build_index

    cached = load_reranker(str(qwen3_dir), activation="raw", dtype="fp32")
    a = cached.score(QUERY, DOCS[:2]).scores
    b = cached.score(QUERY, DOCS[:2], instruction="Find the city").scores
    assert a != b  # the instruction reaches the model, and the cache keys on it
    assert cached.score(QUERY, DOCS[:2], instruction="Find the city").cache_hits == 2
    assert cached.score(QUERY, DOCS[:2]).scores == a

    index = build_index(load_corpus(small_corpus), methods=["bm25"], progress=False)
    def rerank_scores(result):
        assert result.reranked, result.reason
        return {h.id: h.rerank_score for h in result.hits}

    with Pipeline(index.retriever("bm25"), cached, k=3, n=3, fusion="none", instruction="Find the city") as pipe:
        default = rerank_scores(pipe.search("glucose plants"))
        same = rerank_scores(pipe.search("glucose plants", instruction="Find the city"))
        other = rerank_scores(pipe.search("glucose plants", instruction="Another task"))
    assert same == default and other != default
    classifier = load_reranker(str(tiny_model_dir))
    with pytest.raises(InputError, match="no instruction"):
        classifier.score(QUERY, DOCS, instruction="Find the city")
    with pytest.raises(InputError, match="takes none"):
        Pipeline(index.retriever("bm25"), classifier, k=3, n=2, instruction="Find the city")


def test_every_http_dialect_takes_an_instruction(qwen3_dir, tiny_model_dir):
    from crossrank.rerank import load_reranker
    from crossrank.serve import ServeConfig, create_app
    from crossrank.serve.server import ServerThread

    engine = load_reranker(str(qwen3_dir), activation="raw", dtype="fp32", cache_size=0)
    want = engine.score(QUERY, DOCS[:3], instruction="Find the city").scores
    best = max(range(3), key=lambda i: want[i])
    bodies = {
        "/rerank": {"query": QUERY, "texts": DOCS[:3], "raw_scores": True},
        "/v2/rerank": {"model": "m", "query": QUERY, "documents": DOCS[:3]},
        "/v1/rerank": {"model": "m", "query": QUERY, "documents": DOCS[:3]},
    }
    with ServerThread(create_app(engine, config=ServeConfig())) as s:
        for path, body in bodies.items():
            r = httpx.post(s.url + path, json={**body, "instruction": "Find the city"}, timeout=60)
            assert r.status_code == 200, r.text
            items = r.json() if path == "/rerank" else r.json()["results"]
            assert items[0]["index"] == best
            if path == "/rerank":
                assert items[0]["score"] == pytest.approx(want[best], abs=1e-4)
        r = httpx.post(s.url + "/rerank", json={**bodies["/rerank"], "instruction": ""}, timeout=60)
        assert r.status_code == 422 and "error" in r.json()
    with ServerThread(create_app(load_reranker(str(tiny_model_dir)), config=ServeConfig())) as s:
        for path, body in bodies.items():
            r = httpx.post(s.url + path, json={**body, "instruction": "Find the city"}, timeout=60)
            assert r.status_code == 400, (path, r.text)
            assert "takes no instruction" in json.dumps(r.json())  # in the dialect's own error shape


def test_score_agrees_with_sentence_transformers_on_a_chat_template_checkpoint(qwen3_dir, tmp_path):
    """sentence-transformers (v5.4+) reads a causal LM with a query/document chat template and scores it by
    logit(yes) - logit(no) at the last token: on a checkpoint given Qwen3-Reranker's prompt as that template,
    its scores and crossrank's agree."""
    import shutil

    st = pytest.importorskip("sentence_transformers")
    target = tmp_path / "my-st-reranker"  # a name no built-in format matches: the template must say it all
    shutil.copytree(qwen3_dir, target)
    fmt = BUILTIN["qwen3-reranker"]
    template = (
        fmt.prefix.replace("\n", "\\n")
        + "<Instruct>: {{ task if task else '" + fmt.default_instruction + "' }}\\n"
        + "<Query>: {{ (messages | selectattr('role', 'eq', 'query') | first).content }}\\n"
        + "<Document>: {{ (messages | selectattr('role', 'eq', 'document') | first).content }}"
        + "{{ '" + fmt.suffix.replace("\n", "\\n") + "' }}"  # an expression: Jinja drops a template's last newline
    )
    config = json.loads((target / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = template.encode().decode("unicode_escape")
    (target / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    try:
        model = st.CrossEncoder(str(target), device="cpu")
        got = model.predict([(QUERY, d) for d in DOCS], activation_fn=torch.nn.Identity())
    except Exception as exc:  # noqa: BLE001 - a sentence-transformers without causal rerankers: say so
        pytest.skip(f"this sentence-transformers cannot score the checkpoint: {type(exc).__name__}: {exc}")
    from crossrank.rerank.engine import CrossEncoderReranker

    engine = CrossEncoderReranker(str(target), activation="raw", dtype="fp32")
    assert engine.prompt.name.startswith("chat template") and engine.takes_instruction
    assert engine.prompt.default_instruction == fmt.default_instruction
    ours = engine.score(QUERY, DOCS).scores
    assert [float(x) for x in got] == pytest.approx(ours, abs=1e-4)
    assert not any(math.isnan(x) for x in ours)
    # the format read from the template is Qwen3-Reranker's: the reference ids, with a task instruction too
    tok = _reference(target)[0]
    for instruction in (None, "Find the city"):
        assert engine.pair_inputs(QUERY, DOCS[0], instruction)[0]["input_ids"] == _qwen3_reference_ids(
            tok, QUERY, DOCS[0], instruction)
    # a sentence-transformers LogitScore module names the answer tokens: here "no" is the relevant one
    (target / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.Transformer"},
        {"idx": 1, "name": "1", "path": "1_LogitScore",
         "type": "sentence_transformers.cross_encoder.modules.LogitScore"}]), encoding="utf-8")
    (target / "1_LogitScore").mkdir()
    (target / "1_LogitScore" / "config.json").write_text(json.dumps(
        {"true_token_id": tok.convert_tokens_to_ids("no"), "false_token_id": tok.convert_tokens_to_ids("yes")}),
        encoding="utf-8")
    flipped = CrossEncoderReranker(str(target), activation="raw", dtype="fp32")
    assert (flipped.prompt.true_token, flipped.prompt.false_token) == ("no", "yes")
    assert flipped.score(QUERY, DOCS).scores == pytest.approx([-x for x in ours], abs=1e-5)
