"""Paired comparison of two evaluated configurations: ``python -m crossrank.evaluate.compare``.

Reads the ``per_query.json`` that ``crossrank eval`` writes (nDCG@10 per configuration and query) from one or two
evaluation folders and prints the mean of each, their difference with a 95% bootstrap interval and the queries
won / lost, the figures a quality claim needs::

    python -m crossrank.evaluate.compare out/eval "hybrid|none|none|100" "hybrid|default|interpolate:0.3|100"
    python -m crossrank.evaluate.compare out/old "hybrid|default|none|100" "hybrid|new|none|100" --other out/new
    python -m crossrank.evaluate.compare out/nq "hybrid|none|none|20" "hybrid|default|none|20" --answer-top 5

``--answer-top N`` compares answer-in-top-N (1 or 0 per question) instead, on datasets with answers.

With no configuration ids it lists the ones the folder holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from crossrank.errors import InputError
from crossrank.evaluate.metrics import paired_bootstrap


def load_per_query(folder: str | Path, answer_top: int | None = None) -> dict[str, dict[str, float]]:
    """nDCG@10 per configuration and query; with ``answer_top`` N, 1.0 or 0.0 per question: an answer in the
    first N."""
    path = Path(folder) / "per_query.json"
    if not path.is_file():
        raise InputError(f"{path} not found: run 'crossrank eval ... --out {folder}' first")
    data = json.loads(path.read_text(encoding="utf-8"))
    if answer_top is None:
        return data["per_query"]
    if "answer_first_hit" not in data:
        raise InputError(f"{path} has no answer positions: the dataset has no answers, or crossrank eval predates them")
    return {cid: {q: float(f is not None and f < answer_top) for q, f in hits.items()}
            for cid, hits in data["answer_first_hit"].items()}


def compare(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    if set(before) != set(after):
        raise InputError(f"the two configurations cover different queries ({len(before)} vs {len(after)})")
    return {"before": sum(before.values()) / len(before), "after": sum(after.values()) / len(after),
            **paired_bootstrap(before, after)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossrank.evaluate.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="evaluation folder (holds per_query.json)")
    p.add_argument("before", nargs="?", help="configuration id, e.g. 'hybrid|none|none|100'")
    p.add_argument("after", nargs="?", help="configuration id to compare with (in --other's folder if given)")
    p.add_argument("--other", help="second evaluation folder holding AFTER")
    p.add_argument("--answer-top", type=int, default=None, metavar="N", help="compare answer-in-top-N, not nDCG@10")
    args = p.parse_args(argv)
    try:
        if args.answer_top is not None and args.answer_top < 1:
            raise InputError("--answer-top must be >= 1")
        runs = load_per_query(args.folder, args.answer_top)
        if not args.before:
            print("\n".join(sorted(runs)))
            return 0
        other = load_per_query(args.other, args.answer_top) if args.other else runs
        missing = [c for c, r in ((args.before, runs), (args.after, other)) if c not in r]
        if not args.after or missing:
            raise InputError(f"unknown configuration {missing[0] if missing else '(none given)'}; "
                             f"list them with: python -m crossrank.evaluate.compare {args.folder}")
        r = compare(runs[args.before], other[args.after])
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.before}: {r['before']:.4f}\n{args.after}: {r['after']:.4f}\n"
          f"difference {r['mean_diff']:+.4f} (95% bootstrap {r['low']:+.4f}..{r['high']:+.4f}), "
          f"{r['queries']} queries, won {r['wins']} / lost {r['losses']} / tied {r['ties']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
