"""Held-out quality of a reranker at a depth, at other pair lengths and long-document modes (``fast``'s rules).

``python -m crossrank.train.heldout_depth --run RUN --reranker SPEC --index squad=DIR ... --calibration HELDOUT_JSON
--fusion interpolate:0.3 --depths 10,15,20 --max-lengths 96,128,192 --long-documents truncate,focus --out OUT``

On the held-out training queries of a training run (the same ones :mod:`crossrank.train.heldout` uses, BEIR
sources with a saved index), the reranker rescores the first stage's top M at each pair length L and long-document
mode; its calibrated scores (the calibration of ``--calibration``'s decision run) are fused with the first stage
under ``--fusion``, the rest follow in first-stage order. Each setting is compared (paired per query) with the
reference: the same reranker on all K candidates at its own length, truncated. Only the deepest M is scored per
(L, mode); scores are cached under ``OUT/scores`` as the decision run caches them (pass the decision run's
``--out`` folder as ``--scores`` to reuse its reference scores). It never reads a test split. Results:
``OUT/heldout_depth.json`` and ``OUT/heldout_depth.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crossrank.errors import CrossrankError, InputError
from crossrank.evaluate.metrics import paired_bootstrap
from crossrank.files import atomic_write_text
from crossrank.rerank.calibration import Calibration
from crossrank.train.config import TrainConfig
from crossrank.train.heldout import HeldOut, ScoreStore, _depth, _memo, fusion_table, held_out_sets

log = logging.getLogger("crossrank.train")

def _options(backend: str | None, max_length: int | None, **more: Any) -> dict[str, Any]:
    """The scoring options, built as the decision run builds them (so that its cached scores are found)."""
    opts: dict[str, Any] = {"activation": "raw", "cache_size": 0, "dtype": "fp32"}
    if max_length:
        opts["max_length"] = max_length
    if backend:
        opts["backend"] = backend
        opts.pop("dtype")
    return {**opts, **more}


def _scores(store: ScoreStore, label: str, spec: str, opts: dict[str, Any], sets: list[HeldOut],
            depth: int | None) -> dict[str, dict[str, list[float]]]:
    from crossrank.rerank import load_reranker

    factory = _memo(lambda: load_reranker(spec, **opts))
    out = {}
    for ho in sets:
        cut = _depth(ho, depth) if depth else ho
        out[ho.name] = store.get(label, spec, opts, ho.name, [(q.qid, q.query, q.texts) for q in cut.queries],
                                 factory)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_dir, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
    indexes = dict(kv.split("=", 1) for kv in args.index)
    sets = [ho for ho in held_out_sets(cfg, run_dir, indexes, args.k, args.per_source)
            if ho.kind == "beir" and ho.name in indexes]
    if not sets:
        raise InputError("no held-out BEIR source has a saved index: give --index SOURCE=DIR")
    fitted = json.loads(Path(args.calibration).read_text(encoding="utf-8"))["calibration"]["fitted"]
    cal = Calibration.parse(fitted)
    store = ScoreStore(Path(args.scores) if args.scores else out)

    def probs(raw):
        return {src: {q: [cal.prob(x) for x in v] for q, v in per.items()} for src, per in raw.items()}

    ref_raw = _scores(store, args.label, args.reranker, _options(args.backend, args.reference_max_length), sets, None)
    ref = {ho.name: fusion_table(ho, probs(ref_raw)[ho.name])[args.fusion] for ho in sets}
    report: dict[str, Any] = {"run": str(run_dir), "reranker": args.reranker, "k": args.k, "fusion": args.fusion,
                              "backend": args.backend or "fp32",
                              "sources": {ho.name: len(ho.queries) for ho in sets},
                              "reference": {"per_source": {s: _mean(t) for s, t in ref.items()},
                                            "macro": float(np.mean([_mean(t) for t in ref.values()]))},
                              "settings": []}
    deepest = max(args.depths)
    for mode in args.long_documents:
        for length in args.max_lengths:
            opts = _options(args.backend, length, long_documents=mode)
            p = probs(_scores(store, f"{args.label}-{mode}-{length}", args.reranker, opts, sets, deepest))
            for m in args.depths:
                rows = {}
                for ho in sets:
                    cut = _depth(ho, m)
                    t = fusion_table(cut, {q: s[:m] for q, s in p[ho.name].items()})[args.fusion]
                    rows[ho.name] = {"ndcg@10": _mean(t), **paired_bootstrap(ref[ho.name], t)}
                macro = float(np.mean([r["ndcg@10"] for r in rows.values()]))
                report["settings"].append({"long_documents": mode, "max_length": length, "depth": m,
                                           "macro": macro, "vs_reference": macro - report["reference"]["macro"],
                                           "per_source": rows})
    atomic_write_text(out / "heldout_depth.json", json.dumps(report, indent=2))
    atomic_write_text(out / "heldout_depth.md", render_markdown(report))
    return report


def _mean(d: dict[str, float]) -> float:
    return float(np.mean(list(d.values()))) if d else float("nan")


def render_markdown(r: dict[str, Any]) -> str:
    srcs = list(r["sources"])
    ref = r["reference"]
    lines = [f"# Held-out nDCG@10 at a depth ({r['reranker']}, run {r['run']})", "",
             f"Held-out training queries: {r['sources']}; first stage: hybrid top {r['k']}; fusion {r['fusion']} "
             f"on the head, the rest in first-stage order; backend {r['backend']}.", "",
             f"Reference (all {r['k']} candidates, the model's own length, truncate): macro {ref['macro']:.4f}; "
             + ", ".join(f"{s} {ref['per_source'][s]:.4f}" for s in srcs) + ".", "",
             "| long_documents | max_length | M | macro | vs reference | "
             + " | ".join(f"{s} (diff, interval, won/lost)" for s in srcs) + " |",
             "|---|---|---|---|---|" + "---|" * len(srcs)]
    for row in r["settings"]:
        cells = [f"{row['per_source'][s]['ndcg@10']:.4f} ({row['per_source'][s]['mean_diff']:+.4f}, "
                 f"{row['per_source'][s]['low']:+.4f}..{row['per_source'][s]['high']:+.4f}, "
                 f"{row['per_source'][s]['wins']}/{row['per_source'][s]['losses']})" for s in srcs]
        lines.append(f"| {row['long_documents']} | {row['max_length']} | {row['depth']} | {row['macro']:.4f} | "
                     f"{row['vs_reference']:+.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    from crossrank.rerank.base import LONG_DOCUMENT_MODES

    ap = argparse.ArgumentParser(prog="python -m crossrank.train.heldout_depth", description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="training run folder (its config.json names sources and split)")
    ap.add_argument("--reranker", required=True, help="reranker spec (a checkpoint folder, a bundle)")
    ap.add_argument("--label", default="default", help="name of its score files (default: default)")
    ap.add_argument("--index", action="append", default=[], metavar="SOURCE=DIR", help="saved index of a source")
    ap.add_argument("--k", type=int, default=100, help="first-stage candidates per query (default: 100)")
    ap.add_argument("--per-source", type=int, default=200, help="held-out queries per source (default: 200)")
    ap.add_argument("--calibration", required=True, metavar="HELDOUT_JSON",
                    help="the reranker's decision run (its heldout.json holds the fitted calibration)")
    ap.add_argument("--fusion", default="interpolate:0.3", help="final-order fusion (default: interpolate:0.3)")
    ap.add_argument("--depths", type=_ints, default=[10, 20], help="depths M (default: 10,20)")
    ap.add_argument("--max-lengths", type=_ints, required=True, help="pair lengths L, e.g. 96,128,192")
    ap.add_argument("--long-documents", default=["truncate"], type=lambda s: [x.strip() for x in s.split(",")],
                    help=f"modes, comma-separated: {', '.join(LONG_DOCUMENT_MODES)} (default: truncate)")
    ap.add_argument("--backend", default=None, help="inference backend, e.g. openvino (default: the fp32 one)")
    ap.add_argument("--reference-max-length", type=int, default=None,
                    help="the reference's pair length (default: the model's own)")
    ap.add_argument("--scores", default=None, help="score cache folder's parent (default: --out)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    bad = [m for m in args.long_documents if m not in LONG_DOCUMENT_MODES]
    if bad:
        print(f"error: unknown long_documents mode {bad[0]!r}: use {', '.join(LONG_DOCUMENT_MODES)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        report = run(args)
    except (CrossrankError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
