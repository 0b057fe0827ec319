"""Weight averaging of checkpoints (``crossrank.train.soup``): real tiny checkpoints on disk, the real loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crossrank.errors import InputError
from crossrank.train.soup import write_soup

pytestmark = pytest.mark.slow  # loads a model, runs the module's CLI in subprocesses


def _perturbed(base: Path, out: Path, seed: int, scale: float = 0.05) -> Path:
    """A copy of ``base`` with every float tensor moved by seeded noise: a stand-in for a fine-tuned sibling."""
    from safetensors.torch import save_file

    out.mkdir()
    for f in base.iterdir():
        if f.name != "model.safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    g = torch.Generator().manual_seed(seed)
    state = {k: (t + scale * torch.randn(t.shape, generator=g) if t.is_floating_point() else t).contiguous()
             for k, t in load_file(str(base / "model.safetensors")).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture()
def siblings(tiny_model_dir, tmp_path) -> tuple[Path, Path]:
    return _perturbed(tiny_model_dir, tmp_path / "a", 1), _perturbed(tiny_model_dir, tmp_path / "b", 2)


def test_uniform_soup_is_the_mean_of_the_tensors_and_loads_as_a_reranker(siblings, tmp_path):
    from crossrank.rerank import load_reranker

    a, b = siblings
    out = write_soup([a, b], tmp_path / "soup")
    sa, sb, soup = (load_file(str(p / "model.safetensors")) for p in (a, b, out))
    assert soup.keys() == sa.keys()
    name = next(k for k, t in sa.items() if t.is_floating_point() and t.ndim == 2)
    assert torch.allclose(soup[name], (sa[name] + sb[name]) / 2, atol=1e-6)
    assert not torch.allclose(soup[name], sa[name])
    recipe = json.loads((out / "soup.json").read_text())
    assert [s["weight"] for s in recipe["soup"]] == [0.5, 0.5]
    scores = load_reranker(str(out), activation="raw").score("what makes ATP?", ["mitochondria", "volcanoes"]).scores
    assert len(scores) == 2 and scores[0] != scores[1]


def test_weights_are_normalised_and_a_one_hot_soup_is_the_checkpoint(siblings, tmp_path):
    a, b = siblings
    out = write_soup([a, b], tmp_path / "soup", weights=[3, 0])
    sa, soup = load_file(str(a / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.allclose(soup[k], sa[k], atol=1e-6) for k in sa)


def test_a_second_soup_replaces_the_first_whole(siblings, tmp_path):
    a, b = siblings
    out = write_soup([a, b], tmp_path / "soup")
    write_soup([a, b], out, weights=[1, 3])
    assert [s["weight"] for s in json.loads((out / "soup.json").read_text())["soup"]] == [0.25, 0.75]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "soup"]  # no staging folder left behind


def test_different_architectures_are_refused(siblings, tmp_path):
    a, b = siblings
    config = json.loads((b / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (b / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="config.json differs"):
        write_soup([a, b], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_bad_input_exits_2_with_one_error_line(siblings, tmp_path):
    a, _ = siblings
    cmd = [sys.executable, "-m", "crossrank.train.soup", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "s")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: not a checkpoint folder"]
    one = subprocess.run(cmd[:4] + ["--out", str(tmp_path / "s")], capture_output=True, text=True, timeout=120)
    assert one.returncode == 2 and one.stderr.strip() == "error: a soup needs at least two checkpoints"
