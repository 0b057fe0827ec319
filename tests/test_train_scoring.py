"""One scorer: the trainer's dev evaluation and the selection score through the inference engine, so on the same
weights they give what ``load_reranker`` gives for the saved checkpoint (pair template, truncation, activation);
and the training modules import no cycle."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from crossrank.rerank import load_reranker
from crossrank.train.scoring import dev_ndcg, score_texts, training_engine
from crossrank.train.select import _sigmoid
from crossrank.train.trainer import load_model

# A query longer than half of max_length (the engine cuts it to that) and a document longer than the rest.
QUERY = "which organelle of the cell produces most of its ATP through oxidative phosphorylation " * 2
TEXTS = [
    "Mitochondria produce ATP through oxidative phosphorylation; the powerhouse of the cell.",
    "A volcano erupts when magma rises through the crust and escapes as lava, ash and gas. " * 8,
    "Insulin is a hormone made by the pancreas.",
    "ATP",
]
MAX_LENGTH = 48


@pytest.fixture()
def sharp_model_dir(tiny_model_dir, tmp_path) -> Path:
    """The tiny model with its classifier scaled by 1e4: its random weights score every pair within about 1e-5 of
    the others, so a different template or truncation would hide below any tolerance; scaled, it shows (>0.02)."""
    tokenizer, model, _ = load_model(str(tiny_model_dir), freeze_word_embeddings=False)
    with torch.no_grad():
        model.classifier.weight.mul_(1e4)
    model.save_pretrained(tmp_path / "sharp", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "sharp")
    return tmp_path / "sharp"


def test_training_scores_equal_inference_scores_on_the_same_weights(sharp_model_dir, tmp_path):
    tokenizer, model, _ = load_model(str(sharp_model_dir), freeze_word_embeddings=True)
    model.train()
    engine = training_engine(model, tokenizer, MAX_LENGTH, batch_size=2, device=torch.device("cpu"))
    assert model.training  # building the engine hands the model back in train mode

    before = score_texts(engine, QUERY, TEXTS)
    assert model.training  # scoring too (it runs in eval mode: dropout off)
    assert score_texts(engine, QUERY, TEXTS) == before
    # fp32 like the training engine (the auto dtype is bf16 on CPUs with native bf16)
    served = load_reranker(str(sharp_model_dir), max_length=MAX_LENGTH, activation="raw", dtype="fp32", cache_size=0)
    result = served.score(QUERY, TEXTS)
    assert before == pytest.approx(list(result.scores), abs=1e-3)
    assert result.truncated[1]  # the rule under test did cut something

    # a training step changes the weights in place: the same engine scores the new weights, as the saved copy does
    with torch.no_grad():
        model.classifier.bias.add_(5.0)
        model.bert.encoder.layer[0].output.dense.bias.add_(0.5)
    after = score_texts(engine, QUERY, TEXTS)
    assert after != pytest.approx(before, abs=1.0)
    model.save_pretrained(tmp_path / "step", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "step")
    stepped = load_reranker(str(tmp_path / "step"), max_length=MAX_LENGTH, activation="raw", dtype="fp32", cache_size=0)
    assert after == pytest.approx(list(stepped.score(QUERY, TEXTS).scores), abs=1e-3)


def test_selection_sigmoid_is_the_engines_activation(tiny_model_dir):
    raw = load_reranker(str(tiny_model_dir), max_length=MAX_LENGTH, activation="raw", dtype="fp32", cache_size=0)
    sig = load_reranker(str(tiny_model_dir), max_length=MAX_LENGTH, activation="sigmoid", dtype="fp32", cache_size=0)
    logits = list(raw.score(QUERY, TEXTS).scores) + [-40.0, 40.0]
    assert list(_sigmoid(logits))[:4] == pytest.approx(list(sig.score(QUERY, TEXTS).scores), abs=1e-7)
    assert list(_sigmoid(logits))[4:] == pytest.approx([0.0, 1.0], abs=1e-12)


def test_dev_ndcg_orders_by_the_engine_scores(sharp_model_dir):
    from crossrank.train.data import DevQuery
    from crossrank.train.metrics import ndcg_at_k, order_by

    tokenizer, model, _ = load_model(str(sharp_model_dir), freeze_word_embeddings=False)
    engine = training_engine(model, tokenizer, MAX_LENGTH, batch_size=8, device=torch.device("cpu"))
    ids = [f"d{i}" for i in range(len(TEXTS))]
    dev = [DevQuery("q", QUERY, ids, TEXTS, [1.0] * len(TEXTS), {"d2": 1})]
    served = load_reranker(str(sharp_model_dir), max_length=MAX_LENGTH, activation="raw", dtype="fp32", cache_size=0)
    want = ndcg_at_k(order_by(ids[:3], list(served.score(QUERY, TEXTS[:3]).scores)), {"d2": 1}, 10)
    assert dev_ndcg(engine, dev, k=3) == pytest.approx(want)
    assert math.isnan(dev_ndcg(engine, [], k=3))


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The crossrank modules ``path`` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            for a in node.names:
                out.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module)
    return out


@pytest.mark.parametrize("package", ["train", "evaluate"])
def test_no_import_cycle(package):
    src = Path(__file__).resolve().parents[1] / "src"
    files = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (src / "crossrank" / package).rglob("*.py")}
    graph = {m: _imports(p, set(files)) - {m} for m, p in files.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    assert not [m for m in graph if reaches(m, m, set())]
