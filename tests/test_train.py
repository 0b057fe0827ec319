"""crossrank.train: real training steps on tiny generated data with the tiny fixture model (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_beir
from crossrank.errors import InputError
from crossrank.train import SourceSpec, TrainConfig, train
from crossrank.train.data import build_sources, read_tsv_groups, split_dev
from crossrank.train.metrics import ndcg_at_k, order_by

TOPICS = ["photosynthesis", "mitochondria", "volcano", "glacier", "insulin", "tectonics", "comet", "vaccine",
          "enzyme", "neutron", "coral", "monsoon"]


@pytest.fixture()
def tiny_beir(tmp_path) -> Path:
    docs, queries, qrels = [], [], []
    for i, t in enumerate(TOPICS):
        docs.append({"_id": f"d{i}", "title": t.title(), "text": f"{t} is studied a lot; facts about {t} and more {t}."})
        docs.append({"_id": f"x{i}", "title": "Other", "text": f"an unrelated note that mentions {t} once."})
        queries.append({"_id": f"q{i}", "text": f"what is known about {t}?"})
        qrels.append(f"q{i}\td{i}\t1")
    return write_beir(tmp_path / "beir", docs, queries, qrels)


@pytest.fixture()
def tiny_tsv(tmp_path) -> Path:
    rows = ["qid\tquestion\tsentence\tlabel"]
    for i, t in enumerate(TOPICS[:6]):
        rows += [f"{i}\twhere is {t} ?\t{t} is found here .\t1", f"{i}\twhere is {t} ?\tsomething else .\t0",
                 f"{i}\twhere is {t} ?\tnot this one either .\t0"]
    rows.append("99\tno positive ?\tnothing .\t0")
    path = tmp_path / "qa" / "train.tsv"
    path.parent.mkdir()
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _config(tiny_model_dir, tiny_beir, tiny_tsv, out, **kw) -> TrainConfig:
    base = dict(
        sources=[SourceSpec(str(tiny_beir), "beir", weight=1.0), SourceSpec(str(tiny_tsv), "tsv", weight=1.0)],
        output_dir=str(out), init_model=str(tiny_model_dir), mine_retriever="bm25", mine_k=10, negatives=3,
        groups_per_batch=2, max_steps=4, max_length=64, qa_max_length=32, dev_fraction=0.25, dev_queries=3,
        dev_k=10, eval_every=2, save_every=2, log_every=1, select_k=10, threads=1, seed=7,
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize("loss", ["listwise", "pairwise", "bce"])
@pytest.mark.slow
def test_train_each_loss_and_load_with_reranker(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path, loss):
    import torch

    out = train(_config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / loss, loss=loss))
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    card = (out / "README.md").read_text()
    assert f"MiniLM-L6, {loss}" in card and "## Recipe" in card
    results = json.loads((tmp_path / loss / "results.json").read_text())
    assert results["steps"] == 4 and [s for s, _ in results["dev_curve"]] == [2, 4]
    assert all(v["groups_seen"] > 0 for v in results["data"].values())  # both sources were trained on
    assert set(results["selection"]["table"]) >= {"ce", "rrf", "interpolate", "first_stage"}
    # trained weights moved, the frozen word embeddings did not
    init, new = _weights(tiny_model_dir), _weights(tmp_path / loss / "checkpoints" / "last")
    assert torch.equal(init["bert.embeddings.word_embeddings.weight"], new["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(init["classifier.weight"], new["classifier.weight"])
    from crossrank.rerank import CrossEncoderReranker

    reranker = CrossEncoderReranker(str(out))
    scores = reranker.score("what is known about volcano?", ["volcano facts", "unrelated note"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path):
    import torch

    full = train(_config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "full", select=False, eval_every=0))
    cfg = _config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "cut", select=False, eval_every=0, stop_after_step=2)
    train(cfg)
    state = json.loads((tmp_path / "cut" / "checkpoints" / "last" / "state.json").read_text())
    assert state["step"] == 2
    resumed = train(_config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "cut", select=False, eval_every=0,
                            resume=True))
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_different_config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path):
    train(_config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "r", select=False, eval_every=0, stop_after_step=1))
    with pytest.raises(InputError):
        train(_config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "r", select=False, eval_every=0, resume=True,
                      lr=1e-3))


def test_data_helpers(tiny_tsv):
    groups = read_tsv_groups(tiny_tsv)
    assert len(groups) == 6 and all(len(g.positives) == 1 and len(g.negatives) == 2 for g in groups)
    tr, dev = split_dev([f"q{i}" for i in range(20)], 0.25, seed=3)
    assert len(dev) == 5 and not set(tr) & set(dev)
    assert split_dev([f"q{i}" for i in reversed(range(20))], 0.25, seed=3)[1] == dev


def test_held_out_split_follows_split_seed_not_training_seed(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path):
    # a run continued from another run's checkpoint with a new --seed must hold out the same queries
    def dev_ids(**kw):
        cfg = _config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "out", **kw)
        return sorted(q.qid for s in build_sources(cfg, tmp_path / "cache") for q in s.dev if s.spec.kind == "beir")

    first = dev_ids(seed=1, split_seed=42)
    assert len(first) == 3
    assert dev_ids(seed=2, split_seed=42) == first
    assert any(dev_ids(seed=1, split_seed=s) != first for s in (1, 2, 3))
    # a run saved before split_seed existed split with its training seed; resuming it must keep that split
    old = _config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "old", seed=5).to_dict()
    del old["split_seed"]
    assert TrainConfig.from_dict(old).split_seed == 5


def test_title_pseudo_queries(tiny_model_dir, tmp_path):
    corpus = tmp_path / "titled"
    corpus.mkdir()
    docs = [{"_id": f"d{i}", "title": f"New findings on {t} in the field", "text": f"{t} body text number {i}."}
            for i, t in enumerate(TOPICS)]
    docs += [{"_id": "short", "title": "Erratum", "text": "photosynthesis correction."},
             {"_id": "dup", "title": docs[0]["title"], "text": "a second version of the photosynthesis paper."}]
    (corpus / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    cfg = TrainConfig(sources=[SourceSpec(str(corpus), "titles")], output_dir=str(tmp_path / "out"),
                      init_model=str(tiny_model_dir), mine_retriever="bm25", mine_k=5, negatives=2,
                      groups_per_batch=2, max_steps=2, max_length=64, eval_every=0, save_every=2, threads=1)
    (source,) = build_sources(cfg, tmp_path / "cache")
    assert source.spec.name == "titled-titles" and source.dev == []  # no judgments, so nothing to hold out
    by_id = {g.qid: g for g in source.groups}
    assert "short" not in by_id  # a one-word title is no query
    g = by_id["d1"]
    assert g.query == docs[1]["title"] and g.positives == [docs[1]["text"]]
    titles = {d["title"] for d in docs}
    for group in source.groups:
        assert group.positives[0] not in group.negatives
        assert not any(t in x for x in group.negatives + group.positives for t in titles)  # bodies only
    # the other version of the same paper (same title) is not a negative for its title
    assert "a second version of the photosynthesis paper." not in by_id["d0"].negatives
    # judged queries and titles over one corpus, no saved index: one index is built and both mine with it
    both = TrainConfig(**{**cfg.__dict__, "sources": [SourceSpec(str(corpus), "beir"), SourceSpec(str(corpus), "titles")]})
    (corpus / "qrels").mkdir()
    (corpus / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(len(TOPICS))), encoding="utf-8")
    (corpus / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"which body text is about {t}?"})
                                                  + "\n" for i, t in enumerate(TOPICS)), encoding="utf-8")
    assert len(build_sources(both, tmp_path / "cache2")) == 2
    assert [p.name for p in (tmp_path / "cache2").glob("index-*")] == ["index-titled"]
    out = train(cfg)  # trains on titles alone: no dev set, still a loadable model
    assert (out / "model.safetensors").is_file()
    assert "document titles as queries" in (out / "README.md").read_text()


def test_metrics():
    assert ndcg_at_k(["a", "b"], {"a": 1}) == 1.0
    assert ndcg_at_k(["b", "a"], {"a": 1}) == pytest.approx(1 / 1.5849625, rel=1e-6)
    assert order_by(["a", "b", "c"], [0.1, 0.3, 0.3]) == ["b", "c", "a"]
    from crossrank.pipeline import fuse

    fused = fuse([3.0, 2.0, 1.0], [0.0, 1.0, 0.5], "rrf")  # what selection's RRF row is scored with
    assert fused[1] > fused[2]


def test_cli_help_and_parse(capsys):
    from crossrank.train.cli import build_parser, config_from_args

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "--resume" in capsys.readouterr().out
    argv = ["--beir", "data/scifact@0.8", "--index", "/tmp/idx", "--tsv", "data/wikiqa/train.tsv@0.2", "--steps", "9"]
    cfg = config_from_args(build_parser().parse_args(argv), argv)
    assert cfg.max_steps == 9 and cfg.sources[0].weight == 0.8 and cfg.sources[0].index == "/tmp/idx"
    assert cfg.sources[1].kind == "tsv" and cfg.command.endswith("--steps 9")
    argv = ["--beir", "data/scifact", "--index", "/tmp/idx", "--titles", "data/scifact@0.3", "--titles", "data/other"]
    cfg = config_from_args(build_parser().parse_args(argv), argv)
    titles = [s for s in cfg.sources if s.kind == "titles"]
    assert [(s.weight, s.index) for s in titles] == [(0.3, "/tmp/idx"), (1.0, None)]  # the same corpus's index


def test_validate_rejects_bad_config(tmp_path):
    with pytest.raises(InputError):
        TrainConfig().validate()
    with pytest.raises(InputError):
        TrainConfig(sources=[SourceSpec(str(tmp_path))], loss="hinge").validate()
    with pytest.raises(InputError, match="split_seed"):
        TrainConfig(sources=[SourceSpec(str(tmp_path))], split_seed=-1).validate()


def test_finish_switch_ends_early_and_exports(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path):
    out_dir = tmp_path / "fin"
    out_dir.mkdir()
    (out_dir / "FINISH").touch()
    out = train(_config(tiny_model_dir, tiny_beir, tiny_tsv, out_dir, select=False, eval_every=0))
    results = json.loads((out_dir / "results.json").read_text())
    assert results["steps"] == 1 and results["finished_early"] and (out / "model.safetensors").is_file()
    assert "1 of 4 planned steps" in (out / "README.md").read_text()


def test_answer_selection_sources_hold_out_questions_too(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path):
    cfg = _config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "out")
    tsv = next(s for s in build_sources(cfg, tmp_path / "cache") if s.spec.kind == "tsv")
    held = {q.qid for q in tsv.dev}
    assert held and not held & {g.qid for g in tsv.groups}
    for q in tsv.dev:
        assert q.first_stage_scores == []  # nothing to fuse with: they take no part in choosing the fusion
        assert sorted(q.doc_ids) == sorted(q.qrels) + sorted(set(q.doc_ids) - set(q.qrels))
        assert len(q.qrels) >= 1 and len(q.doc_ids) > len(q.qrels)


@pytest.mark.slow
def test_distillation_learns_the_teachers_scores(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path):
    """A 1-layer student of the tiny model, distilled from a teacher that scores on a 100x wider scale: the
    student's scores move towards the teacher's."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from crossrank.rerank import CrossEncoderReranker

    wide = tmp_path / "teacher"
    model = BertForSequenceClassification.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        model.classifier.weight.mul_(100.0)
    model.save_pretrained(wide, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(wide)
    teacher = CrossEncoderReranker(str(wide), activation="raw")
    probe = ["what is known about volcano?", ["volcano is studied a lot", "an unrelated note", "glacier facts"]]
    target = torch.tensor(list(teacher.score(*probe).scores))

    def gap(model_dir) -> float:
        student = CrossEncoderReranker(str(model_dir), activation="raw")
        return float((torch.tensor(list(student.score(*probe).scores)) - target).abs().mean())

    cfg = _config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "d", loss="distill", teacher=str(wide),
                  init_layers=[1], max_steps=30, lr=3e-3, eval_every=0, select=False, save_every=30)
    train(_config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "d0", loss="distill", teacher=str(wide),
                  init_layers=[1], max_steps=1, lr=1e-9, eval_every=0, select=False))
    out = train(cfg)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    assert gap(out) < 0.7 * gap(tmp_path / "d0" / "model")


def test_distillation_config_needs_teacher_and_valid_layers(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path):
    with pytest.raises(InputError, match="teacher"):
        _config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "a", loss="distill").validate()
    with pytest.raises(InputError, match="teacher"):
        _config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "b", teacher=str(tiny_model_dir)).validate()
    with pytest.raises(InputError, match="init_layers"):
        _config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "c", init_layers=[0, 0]).validate()
    with pytest.raises(InputError, match="has 2 layers"):
        train(_config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "e", init_layers=[0, 5], select=False))


def test_distillation_losses():
    import torch

    from crossrank.train.losses import compute_loss

    mask = torch.tensor([[True, True, True], [True, True, False]])
    teacher = torch.tensor([[3.0, 1.0, -2.0], [0.5, 0.0, float("-inf")]])
    assert float(compute_loss("distill", teacher.clone(), mask, teacher=teacher)) == pytest.approx(0.0, abs=1e-6)
    shifted = teacher + 1.0  # same order and margins, other scale: margin-MSE is blind to it, distill is not
    assert float(compute_loss("margin-mse", shifted, mask, teacher=teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(compute_loss("distill", shifted, mask, teacher=teacher)) > 0.1
    swapped = torch.tensor([[-2.0, 1.0, 3.0], [0.0, 0.5, float("-inf")]])
    loss = compute_loss("distill", swapped, mask, teacher=teacher)
    assert torch.isfinite(loss) and float(loss) > 1.0
    with pytest.raises(ValueError, match="teacher"):
        compute_loss("margin-mse", teacher, mask)


def test_heldout_cascade_scores_replace_the_first_models_top_m():
    from crossrank.train.heldout import cascade_scores

    first = {"q": [0.9, 0.1, 0.5, 0.7]}
    second = {"q": [0.2, 0.8, 0.6, 0.3]}
    assert cascade_scores(first, second, 2) == {"q": [0.2, 0.1, 0.5, 0.3]}  # first's top 2: items 0 and 3
    assert cascade_scores(first, second, 10) == second


def test_heldout_cascade_at_a_depth_sees_only_the_first_stages_top_s():
    from crossrank.train.data import DevQuery
    from crossrank.train.heldout import HeldOut, cascade_report, fusion_table

    # the relevant d3 is last in first-stage order; both models put it first
    q = DevQuery("q", "what?", ["d0", "d1", "d2", "d3"], ["a", "b", "c", "d"], [4.0, 3.0, 2.0, 1.0], {"d3": 1})
    ho = HeldOut("src", "beir", [q])
    first, second = {"q": [0.1, 0.2, 0.3, 0.9]}, {"q": [0.1, 0.1, 0.1, 0.9]}
    tables = {"src": fusion_table(ho, second)}
    r = cascade_report([ho], {"src": first}, {"src": second}, [1], "ce", tables, "student>teacher",
                       heads=("score",), depths=(None, 2))
    assert r["by_head"]["score"]["1"]["macro_ndcg@10"] == 1.0  # all 4: the head of 1 is d3
    deep = r["by_head"]["score, first 2"]["1"]
    assert deep["label"] == "student@2>teacher@1" and deep["macro_ndcg@10"] == 0.0  # d3 never read


def _fake_checkpoint(d: Path, weights: bytes) -> Path:
    """A folder with what the weights fingerprint reads (no model loads: the store is keyed before scoring)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}', encoding="utf-8")
    (d / "model.safetensors").write_bytes(weights)
    (d / "README.md").write_text("a model card does not decide scores", encoding="utf-8")
    return d


class _CountingEngine:
    def __init__(self, value: float) -> None:
        self.value, self.calls = value, 0

    def score(self, query, texts):
        from crossrank.rerank.base import RerankScores

        self.calls += 1
        return RerankScores([self.value] * len(texts))


def test_heldout_score_store_is_keyed_by_the_weights_content_not_their_path(tmp_path, caplog):
    import shutil

    from crossrank.train.heldout import ScoreStore

    model = _fake_checkpoint(tmp_path / "run" / "model", b"weights of the first training")
    store = ScoreStore(tmp_path / "out")
    items = [("q1", "what?", ["a", "b"])]
    opts = {"activation": "raw", "cache_size": 0, "dtype": "fp32"}
    first = store.key(str(model), opts, items)

    # retrained into the same path: another key, so the old scores are not reused
    (model / "model.safetensors").write_bytes(b"weights of the second training")
    assert store.key(str(model), opts, items) != first
    # the same checkpoint copied elsewhere (and its model card edited): the same key
    copy = shutil.copytree(model, tmp_path / "elsewhere" / "model")
    (copy / "README.md").write_text("another card", encoding="utf-8")
    assert store.key(str(copy), opts, items) == store.key(str(model), opts, items)
    # options that change scores change the key; those that do not, do not
    assert store.key(str(model), {**opts, "max_length": 128}, items) != store.key(str(model), opts, items)
    assert store.key(str(model), {**opts, "cache_size": 9}, items) == store.key(str(model), opts, items)

    engine = _CountingEngine(1.0)
    assert store.get("new", str(model), opts, "src", items, lambda: engine) == {"q1": [1.0, 1.0]}
    assert store.get("new", str(copy), opts, "src", items, lambda: engine) == {"q1": [1.0, 1.0]}
    assert engine.calls == 1  # the copy read the first one's file
    (model / "model.safetensors").write_bytes(b"weights of a third training")
    retrained = _CountingEngine(2.0)
    assert store.get("new", str(model), opts, "src", items, lambda: retrained) == {"q1": [2.0, 2.0]}

    # a file cached by spec before fingerprinting is never read, and the store says so
    (tmp_path / "out" / "scores" / "new-src-0123456789ab.json").write_text('{"q1": [9.0, 9.0]}', encoding="utf-8")
    with caplog.at_level("INFO", logger="crossrank.train"):
        ScoreStore(tmp_path / "out")
    assert "ignoring 1 score files" in caplog.text


def test_weights_fingerprint_covers_cascades_and_refuses_urls(tmp_path):
    from crossrank.rerank.weights import weights_fingerprint

    a = _fake_checkpoint(tmp_path / "a", b"A")
    b = _fake_checkpoint(tmp_path / "b", b"B")
    assert weights_fingerprint(str(a)) != weights_fingerprint(str(b))
    assert weights_fingerprint(f"{a}>{b}@5") not in (weights_fingerprint(f"{b}>{a}@5"), weights_fingerprint(f"{a}>{b}@6"))
    deep = weights_fingerprint(f"{a}@40>{b}@5")  # the first model's depth: A's weights, a shape of its own
    assert deep is not None and deep not in (weights_fingerprint(f"{a}>{b}@5"), weights_fingerprint(f"{a}@50>{b}@5"))
    assert weights_fingerprint("http://localhost:1/rerank") is None


def test_checkpoint_holds_no_pickle_and_refuses_old_pickle_checkpoints(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path):
    from safetensors.torch import load_file

    cfg = _config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "r", select=False, eval_every=0, stop_after_step=1)
    train(cfg)
    last = tmp_path / "r" / "checkpoints" / "last"
    names = {p.name for p in last.iterdir()}
    assert {"trainer_state.safetensors", "trainer_state.json", "state.json", "model.safetensors"} <= names
    assert not [n for n in names if n.endswith((".pt", ".bin", ".pkl"))]
    moments = load_file(str(last / "trainer_state.safetensors"))
    assert any(k.endswith(".exp_avg_sq") for k in moments) and "rng.torch" in moments
    # a checkpoint from before this format: refused with a message, its pickle never opened
    (last / "trainer_state.safetensors").unlink()
    (last / "trainer_state.pt").write_bytes(b"\x80\x04not a pickle crossrank should ever read")
    with pytest.raises(InputError, match="pickle"):
        train(_config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "r", select=False, eval_every=0, resume=True))


def test_training_checkpoint_does_not_change_the_weights_fingerprint(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path):
    import shutil

    from crossrank.rerank.weights import folder_fingerprint

    train(_config(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path / "r", select=False, eval_every=0, stop_after_step=1))
    last = tmp_path / "r" / "checkpoints" / "last"
    bare = tmp_path / "bare"
    shutil.copytree(last, bare, ignore=shutil.ignore_patterns("trainer_state.*", "state.json"))
    assert folder_fingerprint(last) == folder_fingerprint(bare)


@pytest.mark.slow
def test_heldout_depth_reports_every_setting_and_reuses_its_scores(tiny_model_dir, tiny_beir, tiny_tsv, tmp_path):
    """``crossrank.train.heldout_depth`` on a run's held-out queries: one row per (mode, length, depth); the
    setting that is the reference (all K, its length, truncate) scores the same; a second run scores nothing."""
    import json

    from crossrank.retrieve import build_index
    from crossrank.train.heldout_depth import main

    run = tmp_path / "run"
    run.mkdir()
    cfg = _config(tiny_model_dir, tiny_beir, tiny_tsv, run, dev_fraction=0.5, dev_queries=6)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
    build_index(tiny_beir / "corpus.jsonl", tmp_path / "idx", chunk_tokens=0, progress=False)
    cal = tmp_path / "heldout.json"
    cal.write_text(json.dumps({"calibration": {"fitted": {"method": "platt", "scale": 1.0, "shift": 0.0}}}))
    argv = ["--run", str(run), "--reranker", str(tiny_model_dir), "--index", f"beir={tmp_path / 'idx'}",
            "--k", "6", "--calibration", str(cal), "--depths", "3,6", "--max-lengths", "24,64",
            "--long-documents", "truncate,focus", "--reference-max-length", "64", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "heldout_depth.json").read_text())
    assert report["sources"] == {"beir": 6}
    rows = {(r["long_documents"], r["max_length"], r["depth"]): r for r in report["settings"]}
    assert len(rows) == 8
    assert rows[("truncate", 64, 6)]["vs_reference"] == pytest.approx(0.0, abs=1e-9)
    scores = sorted((tmp_path / "out" / "scores").glob("*.json"))
    assert len(scores) == 5  # the reference and one file per (mode, length), the deepest M only
    written = [p.stat().st_mtime_ns for p in scores]
    assert main(argv) == 0 and sorted((tmp_path / "out" / "scores").glob("*.json")) == scores
    assert [p.stat().st_mtime_ns for p in scores] == written  # read back, not scored and written again
    assert main([*argv[:-2], "--long-documents", "sentences", "--out", str(tmp_path / "out")]) == 2
