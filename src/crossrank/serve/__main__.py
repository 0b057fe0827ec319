"""``python -m crossrank.serve``: the server without the CLI package (benchmarks and tests start it this way)."""

from __future__ import annotations

import argparse
import sys

from crossrank.errors import CrossrankError
from crossrank.serve.config import SETTINGS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossrank.serve", description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--index", default=None)
    p.add_argument("--retriever", default="hybrid")
    for s in SETTINGS:  # the server's settings: the same names, defaults and help as `crossrank serve`
        if s.type is bool:
            p.add_argument(s.flag, action=argparse.BooleanOptionalAction, default=s.default, help=s.help)
        else:
            p.add_argument(s.flag, type=s.type, default=s.default, choices=s.choices, help=s.help)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache-size", type=int, default=None, help="score cache entries (0: no cache)")
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    from crossrank.serve.server import run

    options = {}
    if a.max_length:
        options["max_length"] = a.max_length
    if a.dtype:
        options["dtype"] = a.dtype
    if a.threads:
        options["num_threads"] = a.threads
    if a.cache_size is not None:
        options["cache_size"] = a.cache_size
    try:
        run(a.model, host=a.host, port=a.port, index=a.index, retriever=a.retriever, log_level=a.log_level,
            reranker_options=options, **{s.name: getattr(a, s.name) for s in SETTINGS})
    except CrossrankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
