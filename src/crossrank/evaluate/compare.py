"""Paired comparison of two evaluated configurations: ``python -m crossrank.evaluate.compare``.

Reads the ``per_query.json`` that ``crossrank eval`` writes (nDCG@10 per configuration and query) from one or two
evaluation folders and prints the mean of each, their difference with a 95% bootstrap interval and the queries
won / lost, the figures a quality claim needs::

    python -m crossrank.evaluate.compare out/eval "hybrid|none|none|100" "hybrid|default|interpolate:0.3|100"
    python -m crossrank.evaluate.compare out/old "hybrid|default|none|100" --other out/new "hybrid|new|none|100"

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


def load_per_query(folder: str | Path) -> dict[str, dict[str, float]]:
    path = Path(folder) / "per_query.json"
    if not path.is_file():
        raise InputError(f"{path} not found: run 'crossrank eval ... --out {folder}' first")
    return json.loads(path.read_text(encoding="utf-8"))["per_query"]


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
    args = p.parse_args(argv)
    try:
        runs = load_per_query(args.folder)
        if not args.before:
            print("\n".join(sorted(runs)))
            return 0
        other = load_per_query(args.other) if args.other else runs
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
