"""`crossrank model export` of the bundled default, loaded by other runtimes: its tokenizer files as transformers,
FlashRank and plain `tokenizers` read them, its ONNX graph in onnxruntime, and FlashRank's Ranker on the folder;
each compared with crossrank's own engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossrank.rerank.bundled import bundle_available, read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not bundle_available(), reason="no trained default bundle")]

QUERY = "how do cells make energy"
DOCS = [
    "Mitochondria produce ATP through oxidative phosphorylation; they are the powerhouse of the cell.",
    "A volcano erupts when magma rises through the crust and escapes as lava, ash and gas.",
    "Insulin is a hormone made by the pancreas that lets cells absorb glucose from the blood.",
    " ".join(["cells make energy as ATP"] * 80),  # over the default's max_length: truncated by every runtime
]
NAME = "crossrank-default"  # FlashRank finds a model as <cache_dir>/<model name>


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("export") / NAME
    proc = run_cli("model", "export", "default", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def raw_logits():
    """crossrank's torch engine on the bundle: raw logits (activation ``raw``), no cache."""
    from crossrank.rerank import load_reranker

    engine = load_reranker("default", activation="raw", backend="torch", dtype="fp32", cache_size=0)
    return np.array(engine.score(QUERY, DOCS).scores)


def test_tokenizer_files_are_complete_and_carry_the_bundle_length(exported):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    max_length = read_manifest()["settings"]["max_length"]
    config = json.loads((exported / "tokenizer_config.json").read_text())
    assert "max_length" not in config and config["model_max_length"] == max_length
    special = json.loads((exported / "special_tokens_map.json").read_text())
    assert special == {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                       "mask_token": "[MASK]"}
    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    vocab = (exported / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert {token: i for i, token in enumerate(vocab)} == tokenizer.get_vocab()
    assert len(tokenizer(QUERY, DOCS[3], truncation=True)["input_ids"]) == max_length  # not the base's 128
    raw = Tokenizer.from_file(str(exported / "tokenizer.json"))
    assert raw.truncation is None and raw.padding is None
    card = (exported / "README.md").read_text()
    assert "onnx/model.onnx" in card and "special_tokens_map.json" in card


def test_onnx_graph_in_onnxruntime_matches_the_engine(exported, raw_logits):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    session = ort.InferenceSession(str(exported / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    feeds = tokenizer([QUERY] * len(DOCS), DOCS, truncation=True, padding=True, return_tensors="np")
    (logits,) = session.run(["logits"], {k: v.astype(np.int64) for k, v in feeds.items()})
    assert logits.shape == (len(DOCS), 1)
    np.testing.assert_allclose(logits[:, 0], raw_logits, atol=1e-4)


def test_flashrank_loads_the_export_and_ranks_like_crossrank(exported, raw_logits):
    from flashrank import Ranker, RerankRequest
    from flashrank.Config import model_file_map

    from crossrank.rerank import load_reranker

    # FlashRank knows its models by name; an export is one more entry: its folder name -> the graph inside it
    model_file_map[NAME] = "onnx/model.onnx"
    ranker = Ranker(model_name=NAME, cache_dir=str(exported.parent))
    ranked = ranker.rerank(RerankRequest(query=QUERY, passages=[{"id": i, "text": t} for i, t in enumerate(DOCS)]))
    ours = load_reranker("default", cache_size=0).rerank(QUERY, DOCS)  # calibrated [0, 1], the same order
    assert [p["id"] for p in ranked] == [r.index for r in ours]
    got = {p["id"]: float(p["score"]) for p in ranked}
    np.testing.assert_allclose([got[i] for i in range(len(DOCS))], 1 / (1 + np.exp(-raw_logits)), atol=1e-5)


def test_readme_flashrank_snippet(exported):
    from crossrank.rerank import load_reranker
    from test_wire_clients import README_DOCS, README_QUERY, run_readme_snippet

    ns = run_readme_snippet("FlashRank on an export", **{'cache_dir="."': f"cache_dir={str(exported.parent)!r}"})
    order = [r.index for r in load_reranker("default", cache_size=0).rerank(README_QUERY, README_DOCS)]
    assert [p["id"] for p in ns["ranked"]] == order and ns["best"] == order[0]


def test_fast_is_a_cascade_and_says_how_to_export_it(tmp_path):
    """``fast`` is fast-student scoring all, default rescoring the head: two models, so no single checkpoint. The
    export refuses it in one line (exit 2), names the two exports to run, and writes nothing."""
    from conftest import run_cli

    proc = run_cli("model", "export", "fast", str(tmp_path / "out"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: 'fast' is a cascade (")
    assert "crossrank model export fast-student DIR" in lines[0] and "crossrank model export default DIR" in lines[0]
    assert not (tmp_path / "out").exists()
