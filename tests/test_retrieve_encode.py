"""Bulk passage encoding (retrieve/encode.py): the same vectors as sentence-transformers' ``encode`` (the offline
MiniLM), in the order given whatever the length sorting, and resumable after a crash part-way through."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SAMPLE_DOCS
from crossrank.errors import InputError
from crossrank.retrieve import encode_bulk, load_bi_encoder
from crossrank.retrieve.encode import pick_encoder

WORDS = " ".join(f"{d['title']} {d['text']}" for d in SAMPLE_DOCS).split()


def texts(n: int, seed: int = 0) -> list[str]:
    """``n`` texts of very different lengths (2 to ~300 words: some past MiniLM's 256-token truncation)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 300)))) for _ in range(n)]


class Crash(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "torch", "bf16"])
def test_vectors_match_sentence_transformers(backend):
    model = load_bi_encoder("default")
    sample = texts(48)
    want = model.encode(sample, convert_to_numpy=True, normalize_embeddings=True)
    got, stats = encode_bulk(model, sample, batch_size=16, backend=backend)
    assert stats["backend"] == backend and stats["encoded"] == 48 and stats["passages_per_s"] > 0
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # unit vectors whatever the compute dtype
    cosine = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert float(cosine.min()) >= 1 - 1e-3, cosine.min()


@pytest.mark.slow
def test_resume_after_a_crash_at_80_percent(tmp_path, tiny_model_dir):
    model = load_bi_encoder(str(tiny_model_dir))
    sample = texts(40, seed=1)
    full, _ = encode_bulk(model, sample, shard_size=8)

    def crash_at_80(done, total):
        if done >= 0.8 * total:
            raise Crash

    resume = tmp_path / "shards"
    with pytest.raises(Crash):
        encode_bulk(model, sample, shard_size=8, resume_dir=resume, on_shard=crash_at_80)
    assert len(list(resume.glob("shard-*.npy"))) == 4
    again, stats = encode_bulk(model, sample, shard_size=8, resume_dir=resume)
    assert stats["resumed"] == 32 and stats["encoded"] == 8
    assert np.allclose(again, full, atol=1e-6)
    # another text: the old shards are of no use, all is encoded afresh
    changed = sample[:-1] + ["a different last passage"]
    _, stats = encode_bulk(model, changed, shard_size=8, resume_dir=resume)
    assert stats["resumed"] == 0 and stats["encoded"] == 40


@pytest.mark.slow
def test_order_and_errors(tiny_model_dir):
    model = load_bi_encoder(str(tiny_model_dir))
    sample = texts(10, seed=2)
    got, _ = encode_bulk(model, sample, batch_size=3, shard_size=4, backend="torch")
    one_by_one = np.concatenate([encode_bulk(model, [t], backend="torch")[0] for t in sample])
    assert np.allclose(got, one_by_one, atol=1e-5)  # row i is text i, whatever the length sorting did
    assert encode_bulk(model, [])[0].shape[0] == 0
    with pytest.raises(InputError, match="unknown encoding backend"):
        pick_encoder(model, "tpu")
    with pytest.raises(InputError, match="batch_size"):
        encode_bulk(model, sample, batch_size=0)


@pytest.mark.slow
def test_progress_in_a_log_is_lines_with_rate_and_eta(tiny_model_dir, capsys, monkeypatch):
    """Where stderr is a pipe or a file (pytest captures it: not a terminal), progress is plain lines, not a
    redrawn bar: the count, passages/s and the ETA, so a long index build in a log is never silent."""
    from crossrank.progress import LineProgress

    monkeypatch.setattr(LineProgress.__init__, "__defaults__", (0.0, None))  # every_s=0: a line per batch
    model = load_bi_encoder(str(tiny_model_dir))
    encode_bulk(model, texts(12, seed=3), batch_size=4, progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("encoding passages:")]
    assert len(lines) >= 3 and "\r" not in "".join(lines)
    assert lines[-1].startswith("encoding passages: 12/12 (100%), ") and lines[-1].endswith("/s, eta 0 s")
    assert all("/s, eta " in ln for ln in lines)

