"""Argument parsing for ``python -m crossrank.train`` (the ``crossrank train`` command wraps the same TrainConfig)."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import NoReturn, Sequence

from crossrank.errors import CrossrankError, InputError
from crossrank.train.config import AUTOCAST, LOSSES, MINE_RETRIEVERS, SourceSpec, TrainConfig


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one ``error: ...`` line and status 2, as the ``crossrank`` command does."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser(parser: argparse.ArgumentParser | None = None, prog: str = "python -m crossrank.train") -> argparse.ArgumentParser:
    d = TrainConfig()
    p = parser or _Parser(
        prog=prog,
        description="Train a cross-encoder reranker: BEIR datasets (negatives mined from the first stage) and "
                    "answer-selection TSVs, listwise / pairwise / BCE loss, dev selection on held-out train queries.")
    _data_options(p.add_argument_group("data"), d)
    _model_options(p.add_argument_group("model and optimisation"), d)
    _evaluation_options(p.add_argument_group("evaluation and checkpoints"), d)
    return p


def _data_options(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--beir", action="append", default=[], metavar="DIR[@WEIGHT]",
                   help="BEIR dataset folder (train qrels give positives); repeatable; @WEIGHT = share of batches")
    g.add_argument("--index", action="append", default=[], metavar="DIR",
                   help="saved crossrank index of the n-th --beir corpus to mine with (built under OUTPUT/data if absent)")
    g.add_argument("--tsv", action="append", default=[], metavar="FILE[@WEIGHT]",
                   help="answer-selection TSV (qid, question, sentence, label); repeatable")
    g.add_argument("--titles", action="append", default=[], metavar="DIR[@WEIGHT]",
                   help="BEIR corpus whose document titles become pseudo-queries (positive: the document's body; "
                        "negatives mined, shown without titles); uses no judgments; mines with the --index of the "
                        "--beir source with the same DIR when there is one; repeatable")
    g.add_argument("--split", default="train", help="BEIR qrels split to train on (default: train)")
    g.add_argument("--mine", dest="mine_retriever", choices=MINE_RETRIEVERS, default=d.mine_retriever,
                   help="first stage to mine negatives from (default: %(default)s)")
    g.add_argument("--mine-k", type=int, default=d.mine_k, help="mine negatives from the top K (default: %(default)s)")
    g.add_argument("--skip-top", type=int, default=d.skip_top,
                   help="ignore the first N mined ranks (false-negative guard; default: %(default)s)")
    g.add_argument("--negatives", type=int, default=d.negatives, help="negatives per group (default: %(default)s)")
    g.add_argument("--swap-negatives", type=int, default=d.swap_negatives,
                   help="of those, up to N are the group's positives with the entity they share with the query "
                        "swapped for another (counterfactual negatives; default: %(default)s)")
    g.add_argument("--dev-fraction", type=float, default=d.dev_fraction,
                   help="held-out share of BEIR train queries for dev/selection (default: %(default)s)")
    g.add_argument("--split-seed", type=int, default=d.split_seed,
                   help="seed of the held-out split, independent of --seed; keep it when continuing from another "
                        "run's checkpoint (default: %(default)s)")
    g.add_argument("--max-length", type=int, default=d.max_length, help="tokens per BEIR pair (default: %(default)s)")
    g.add_argument("--qa-max-length", type=int, default=d.qa_max_length,
                   help="tokens per TSV pair (default: %(default)s)")


def _model_options(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--init", dest="init_model", default=d.init_model,
                   help="local model folder to start from; 'default' = bundled all-MiniLM-L6-v2 (default)")
    g.add_argument("--init-layers", default=None, metavar="I,J,...",
                   help="keep only these encoder layers of --init (e.g. 0,1): a smaller, faster student")
    g.add_argument("--teacher", default=None, metavar="RERANKER",
                   help="distil: learn this reranker's scores ('default', a bundle or checkpoint folder) with "
                        "--loss distill (listwise KL + MSE) or margin-mse; no labels are needed for that")
    g.add_argument("--output", "-o", dest="output_dir", default=d.output_dir, help="run folder (default: %(default)s)")
    g.add_argument("--loss", choices=LOSSES, default=d.loss,
                   help="training objective over each group of 1 positive + negatives (listwise: softmax over the "
                        "group; +bce adds pointwise BCE; distill / margin-mse learn a --teacher; default: %(default)s)")
    g.add_argument("--steps", dest="max_steps", type=int, default=d.max_steps, help="optimizer steps (default: %(default)s)")
    g.add_argument("--groups-per-batch", type=int, default=d.groups_per_batch,
                   help="query groups per optimizer step, all from one source (default: %(default)s)")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="batches accumulated per optimizer step (a larger effective batch; default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate (default: %(default)s)")
    g.add_argument("--head-lr-mult", type=float, default=d.head_lr_mult,
                   help="LR multiplier for newly initialised weights (the head; default: %(default)s)")
    g.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio,
                   help="share of --steps with a linear warm-up, then linear decay to 0 (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default: %(default)s)")
    g.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="0 = no clipping (default: %(default)s)")
    g.add_argument("--margin", dest="pairwise_margin", type=float, default=d.pairwise_margin,
                   help="pairwise loss margin (default: %(default)s)")
    g.add_argument("--train-word-embeddings", action="store_true",
                   help="also train the word-embedding matrix (the bundle format needs it frozen)")
    g.add_argument("--autocast", choices=AUTOCAST, default=d.autocast,
                   help="auto: bf16 only on CPUs with AMX/AVX512-BF16, bf16/fp16 on CUDA, else fp32 (default)")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="seed of batch order and initialisation (the held-out split has --split-seed; default: %(default)s)")
    g.add_argument("--threads", type=int, default=d.threads, help="torch threads; 0 = all cores (default)")


def _evaluation_options(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="dev evaluation every N steps (0 = end only)")
    g.add_argument("--dev-queries", type=int, default=d.dev_queries,
                   help="held-out train queries the dev nDCG@10 is measured on (default: %(default)s)")
    g.add_argument("--dev-k", type=int, default=d.dev_k, help="rerank the first-stage top K on dev (default: %(default)s)")
    g.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (default: %(default)s)")
    g.add_argument("--log-every", type=int, default=d.log_every,
                   help="a progress line (loss, rate, ETA) every N steps (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last")
    g.add_argument("--stop-after", dest="stop_after_step", type=int, default=None,
                   help="stop after this step (checkpoint written), as an interruption would")
    g.add_argument("--no-select", dest="select", action="store_false",
                   help="skip choosing the fusion setting on held-out train queries")
    g.add_argument("--select-k", type=int, default=d.select_k, help="candidates per query for selection (default: %(default)s)")
    g.add_argument("--select-queries", type=int, default=d.select_queries,
                   help="held-out train queries the fusion setting is chosen on (default: %(default)s)")
    g.add_argument("--select-retriever", choices=MINE_RETRIEVERS, default=None,
                   help="first stage whose top-K the selection reranks (default: the --mine one)")
    g.add_argument("--select-index", default=None, metavar="DIR", help="saved index for --select-retriever")
    g.add_argument("--index-wait", type=int, default=0, metavar="SECONDS",
                   help="wait this long for an --index / --select-index that another process is still building")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size,
                   help="pairs per forward pass when scoring dev and selection queries (default: %(default)s)")
    g.add_argument("--pack", dest="pack_to", default=None, metavar="DIR",
                   help="also pack the result as a crossrank bundle into DIR (e.g. src/crossrank/rerank/models/default)")


def config_from_args(args: argparse.Namespace, argv: Sequence[str] | None = None) -> TrainConfig:
    sources = [SourceSpec.parse(s, "beir") for s in args.beir]
    for spec, index in zip(sources, args.index, strict=False):
        spec.index = index
    for spec in sources:
        spec.split = args.split
    sources += [SourceSpec.parse(s, "tsv") for s in args.tsv]
    index_of = {spec.path: spec.index for spec in sources if spec.kind == "beir"}
    for s in args.titles:
        spec = SourceSpec.parse(s, "titles")
        spec.index = index_of.get(spec.path)
        sources.append(spec)
    cfg = TrainConfig(sources=sources, freeze_word_embeddings=not args.train_word_embeddings)
    cfg.teacher = args.teacher
    if args.init_layers is not None:
        try:
            cfg.init_layers = [int(x) for x in str(args.init_layers).split(",") if x.strip()]
        except ValueError as e:
            raise InputError(f"--init-layers takes layer numbers like 0,1, not {args.init_layers!r}") from e
    for name in ("output_dir", "init_model", "loss", "negatives", "groups_per_batch", "grad_accum", "max_length",
                 "qa_max_length", "mine_retriever", "mine_k", "skip_top", "swap_negatives", "dev_fraction", "split_seed", "max_steps", "lr",
                 "head_lr_mult", "warmup_ratio", "weight_decay", "max_grad_norm", "pairwise_margin", "autocast",
                 "seed", "threads", "eval_every", "dev_queries", "dev_k", "save_every", "log_every", "resume",
                 "stop_after_step", "select", "select_k", "select_queries", "eval_batch_size", "pack_to",
                 "select_retriever", "select_index", "index_wait"):
        setattr(cfg, name, getattr(args, name))
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg.command = "python -m crossrank.train " + " ".join(shlex.quote(a) for a in argv)
    return cfg


def main(argv: Sequence[str] | None = None, prog: str = "python -m crossrank.train") -> int:
    """Parse and train; 0 done, 2 bad input (argparse exits 2 itself on a usage error, 0 after --help)."""
    args = build_parser(prog=prog).parse_args(argv)
    try:
        from crossrank.train.trainer import train

        out = train(config_from_args(args, argv))
    except CrossrankError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0
