"""Model card and bundle packing for a trained checkpoint, and the portable export of a bundle
(``crossrank model export``: a checkpoint that transformers, sentence-transformers, TEI, optimum and FlashRank load).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from crossrank.train.config import TrainConfig

log = logging.getLogger("crossrank.train")

WHY_LISTWISE = """\
Why listwise: on SciFact (test nDCG@10, measured by the team before this run) pointwise BCE over ~20k pairs
(SciFact train + 6 BM25 negatives, WikiQA, TrecQA; lr 3e-5) collapsed to near-constant scores (reranked BM25
top-100 fell to 0.075), while listwise softmax CE over 1 positive + 7 hybrid-mined negatives (SciFact train only,
460 steps of 4 groups, lr 5e-5, 20x head LR, 256 tokens) gave CE alone 0.706 on hybrid top-100, RRF(CE, hybrid)
0.741 and 0.5 z(CE) + 0.5 z(first stage) 0.750 (weight picked on test there: optimistic). A softmax over the
group only asks the positive to outscore its own hard negatives, so it cannot be satisfied by a constant score
and needs no calibration of absolute scores; with ~5% positives BCE can."""


def _fmt_table(sel: dict[str, Any]) -> str:
    t = sel["table"]
    lines = ["| setting | nDCG@10 |", "|---|---|", f"| first stage ({sel['first_stage']}) order | {t['first_stage']:.4f} |",
             f"| CE alone | {t['ce']:.4f} |", f"| RRF(CE, first stage), k=60 | {t['rrf']:.4f} |"]
    for w, v in t["interpolate"].items():
        lines.append(f"| {w} z(CE) + {1 - float(w):.1f} z(first stage) | {v:.4f} |")
    return "\n".join(lines)


def write_model_card(model_dir: Path, config: TrainConfig, results: dict[str, Any], sources: Sequence[Any],
                     extra: str = "") -> Path:
    src_lines = [_source_line(config, s) for s in sources]
    curve = ", ".join(f"{st}: {v:.4f}" for st, v in results.get("dev_curve", []))
    sel_md = _selection_md(results.get("selection"))
    card = f"""---
library_name: transformers
pipeline_tag: text-classification
base_model: sentence-transformers/all-MiniLM-L6-v2
tags: [cross-encoder, reranker, crossrank]
---

# crossrank default cross-encoder (MiniLM-L6, {config.loss})

A cross-encoder reranker: `BertForSequenceClassification` (1 logit, higher = more relevant) initialised from
all-MiniLM-L6-v2 with a new head, trained by `crossrank.train`. Input: (query, `title\\ntext`) pairs.

## Data
{chr(10).join(src_lines)}

No test split's queries or judgments were used for training or for any selection.

## Recipe
- loss: **{config.loss}** over groups of 1 positive + {config.negatives} negatives; {config.groups_per_batch} groups per
  batch x {config.grad_accum} accumulation, each batch from one source (dynamic padding)
- AdamW lr {config.lr:g} (head {config.lr * config.head_lr_mult:g}), weight decay {config.weight_decay}, warm-up
  {config.warmup_ratio:.0%} then linear decay, grad clip {config.max_grad_norm}, {config.max_steps} steps, seed {config.seed}
  (held-out split seed {config.split_seed})
- word-embedding matrix frozen: {config.freeze_word_embeddings}; autocast: {results.get('autocast')}
- dev: nDCG@10 of CE order over {config.mine_retriever} top-{config.dev_k} of {results.get('dev_queries')} held-out train
  queries every {config.eval_every} steps; the best step is kept

{WHY_LISTWISE}

## Command
```
{config.command}
```

## Measured
- {results.get('steps')} of {results.get('planned_steps')} planned steps{' (ended early by the FINISH switch; LR not fully decayed)' if results.get('finished_early') else ''} in {results.get('train_minutes')} min of steps ({results.get('seconds_per_step')} s/step,
  {results.get('pairs_per_second')} pairs/s, {results.get('threads')} threads, {results.get('device')}); wall
  {results.get('wall_minutes')} min including mining, dev evaluation and selection
- dev nDCG@10 curve (step: value): {curve}
- best dev step: {results.get('best_step')} ({results.get('best_dev')})
{sel_md}
## Use
```python
from crossrank.rerank import load_reranker
rr = load_reranker("default")          # this model, rebuilt from the bundle
rr.rerank("query", ["doc one", "doc two"])
```
Best used on a hybrid (BM25 + dense) top-K with the fusion setting above (the bundle's `settings`), not alone.

## Reproduce
The command above, run from the repository root with `../shared/data` present. `--select-index` names a saved
crossrank index of the SciFact corpus (whole documents), e.g. built with
`crossrank.retrieve.build_index(load_corpus("../shared/data/scifact/corpus.jsonl"), DIR, chunk_tokens=0)`;
mined candidates are cached under `OUTPUT/data/`. Runs are seeded; `--resume` continues from the last checkpoint
with identical results.

## Limitations and licence of the training data
- Trained in well under an hour on 2 shared CPU cores: a small budget; more steps, longer inputs and more
  domains would help. Inputs longer than {config.max_length} tokens were truncated in training.
- Training data: SciFact (CC BY-NC 2.0), WikiQA (Microsoft Research data licence) and TrecQA; the first two
  are for non-commercial research use. Check whether that fits your use of these weights.
{extra}
"""
    path = model_dir / "README.md"
    path.write_text(card, encoding="utf-8")
    return path


def _source_line(config: TrainConfig, s: Any) -> str:
    """The card's line for one training source: path, kind, weight, length, size and how its groups were built."""
    kind = s.spec.kind
    mined = f"negatives mined from {config.mine_retriever} top-{config.mine_k}"
    how = {"beir": f"positives from qrels/{s.spec.split}.tsv, {mined} (judged positives excluded, skip top "
                   f"{config.skip_top}); {len(s.dev)} queries held out",
           "titles": f"document titles as queries, the document's body as positive, {mined} (skip top "
                     f"{config.skip_top}), all shown without titles; uses the corpus text only (every document, "
                     f"whichever split judges it) and no queries or judgments",
           }.get(kind, "negatives = the question's other candidate sentences")
    return (f"- `{s.spec.path}` ({kind}, weight {s.spec.weight}, max {s.max_length} tokens): "
            f"{len(s.groups)} training queries; {how}")


def _selection_md(sel: dict[str, Any] | None) -> str:
    if not sel:
        return ""
    return (f"\n## Recommended final ranking (chosen on held-out TRAIN queries)\n\n"
            f"{sel['queries']} held-out train queries, {sel['first_stage']} top-{sel['k']} candidates, nDCG@10:\n\n"
            f"{_fmt_table(sel)}\n\nChosen: **{sel['chosen']}** ({sel['chosen_ndcg@10']:.4f}); bundle settings: "
            f"`{json.dumps(sel['settings'])}`\n")


def pack(model_dir: Path, out_dir: Path, selection: dict[str, Any] | None, config: TrainConfig) -> Path | None:
    """Pack ``model_dir`` as a crossrank bundle (fp16 tensors, word embeddings rebuilt from the base)."""
    from crossrank.rerank.bundled import pack_bundle

    settings = dict(selection["settings"]) if selection else {"fusion": "none", "max_length": config.max_length}
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    # the bundle loader warns when a user asks for longer inputs than training saw (measured to hurt the ranking)
    result = pack_bundle(model_dir, out_dir, model_card=card, settings=settings,
                         metadata={"trained_max_length": config.max_length})
    log.info("packed bundle into %s", out_dir)
    return Path(result) if result else out_dir


def pack_run(run_dir: str | Path, out_dir: str | Path) -> Path | None:
    """Pack a finished run (``<run_dir>/model`` + the selection in ``results.json``) as a bundle."""
    run = Path(run_dir)
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text(encoding="utf-8")))
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    return pack(run / "model", Path(out_dir), results.get("selection"), config)


# ------------------------------------------------------------------------------------------------ portable export

ONNX_FILE = "onnx/model.onnx"  # the path of optimum's ONNX exports; FlashRank is told it (see the card)
# The base's tokenizer.json truncates at sentence-transformers' 128 tokens (a bi-encoder's limit, not this model's):
# a plain `tokenizers` reader applies that as is, and transformers saves it back into tokenizer_config.json as call
# defaults, next to the loader's own flags. None of these describe the tokenizer; the export drops them.
_STALE_TOKENIZER_KEYS = ("max_length", "stride", "truncation_strategy", "pad_to_multiple_of", "is_local",
                         "local_files_only")


def export_model(bundle: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write a crossrank bundle (``"default"``, ``"fast-student"`` or a bundle folder) as a portable checkpoint.

    ``out_dir`` gets the Hugging Face checkpoint of :func:`crossrank.rerank.bundled.export_bundle`
    (``model.safetensors``, ``config.json``, the model card), the tokenizer files complete (``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json``, the vocabulary where the tokenizer has one) and the
    fp32 ONNX graph crossrank's ``onnx`` backend runs, at ``onnx/model.onnx`` (inputs ``input_ids``,
    ``attention_mask``[, ``token_type_ids``], output ``logits``). Written in a hidden sibling folder and swapped
    into place, so ``out_dir`` is the previous export or the complete new one, never half of one.
    """
    from crossrank.files import fsync_tree, remove_stale_temp_dirs, share_files, swap_into_place
    from crossrank.rerank.bundled import bundled_dir, export_bundle, read_manifest

    bundle_dir = bundled_dir(bundle) or Path(bundle)
    manifest = read_manifest(bundle_dir)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(out.parent, out.name)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        checkpoint = export_bundle(staging / "checkpoint", bundle_dir)
        tokenizer = _complete_tokenizer_files(checkpoint)
        _write_onnx(checkpoint, tokenizer)
        _describe_export(checkpoint, manifest, out.name)
        for folder in (checkpoint, checkpoint / "onnx"):
            os.chmod(folder, 0o755)
            share_files(folder)
        fsync_tree(checkpoint)
        swap_into_place(checkpoint, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _complete_tokenizer_files(checkpoint: Path) -> Any:
    """Rewrite the tokenizer files of ``checkpoint`` complete and without the base's truncation: tokenizer.json
    with no truncation or padding of its own (``model_max_length`` is the limit), tokenizer_config.json without
    stale call defaults, and what transformers 5 no longer writes: ``special_tokens_map.json`` and the
    vocabulary file(s) of the tokenizer's model (``vocab.txt`` for WordPiece). Returns the tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()
    tokenizer.save_pretrained(str(checkpoint))
    config_path = checkpoint / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in _STALE_TOKENIZER_KEYS:
        config.pop(key, None)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    special = {k: str(v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    (checkpoint / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    if backend is not None:
        backend.model.save(str(checkpoint))  # vocab.txt (WordPiece), vocab.json + merges.txt (BPE), ...
    return tokenizer


def _write_onnx(checkpoint: Path, tokenizer: Any) -> Path:
    """Copy the (cached, probe-checked) fp32 graph of the exported weights to ``onnx/model.onnx``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from crossrank.onnx_graph import build_graph

    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint), local_files_only=True,
                                                               dtype=torch.float32).eval()
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        names.append("token_type_ids")
    entry = build_graph(model, names, quantize=False)
    target = checkpoint / ONNX_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    for f in entry.iterdir():  # model.onnx, and its external-data file for a model over protobuf's 2 GB
        if f.name.startswith("model.onnx"):
            shutil.copyfile(f, target.parent / f.name)
    return target


def _describe_export(checkpoint: Path, manifest: dict[str, Any], name: str) -> None:
    """Append what the export holds, and how another runtime's score relates to crossrank's, to the model card."""
    settings = manifest.get("settings", {})
    calibration = settings.get("calibration")
    if isinstance(calibration, dict) and calibration.get("method") == "platt":
        scale, shift = float(calibration["scale"]), float(calibration["shift"])
        crossrank_score = (f"crossrank's calibrated relevance is `sigmoid({scale:.6g} * logit "
                           f"{'-' if shift < 0 else '+'} {abs(shift):.6g})`, in the same order")
    else:
        crossrank_score = "crossrank's score is the same"
    tokenizer_files = sorted(f.name for f in checkpoint.iterdir()
                             if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")))
    card = checkpoint / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else f"# {manifest.get('name', 'crossrank model')}\n"
    text = text.rstrip("\n") + f"""

## Files of this export (`crossrank model export`)
- `model.safetensors`, `config.json`: the fp32 weights (transformers `AutoModelForSequenceClassification`,
  sentence-transformers `CrossEncoder`, text-embeddings-inference)
- {", ".join(f"`{f}`" for f in tokenizer_files)}: the tokenizer, `model_max_length`
  {settings.get("max_length", "of the base")} (the input length crossrank runs the model at)
- `{ONNX_FILE}`: the ONNX graph crossrank's `onnx` backend runs (fp32, with ONNX Runtime's fused transformer
  operators; inputs `input_ids`, `attention_mask`, `token_type_ids`; output `logits`, `[batch, 1]`), at the path
  of optimum's ONNX exports.
  FlashRank knows models by name: `flashrank.Config.model_file_map["{name}"] = "{ONNX_FILE}"`, then
  `Ranker(model_name="{name}", cache_dir=<the folder holding this one>)`

One logit per (query, document) pair, higher is more relevant; sentence-transformers and FlashRank report
`sigmoid(logit)`, {crossrank_score}.
"""
    card.write_text(text, encoding="utf-8")


if __name__ == "__main__":  # python -m crossrank.train.export RUN_DIR OUT_DIR
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if len(sys.argv) != 3:
        print("usage: python -m crossrank.train.export RUN_DIR BUNDLE_DIR", file=sys.stderr)
        sys.exit(2)
    print(pack_run(sys.argv[1], sys.argv[2]))
