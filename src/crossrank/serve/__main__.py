"""``python -m crossrank.serve``: the server without the CLI package (benchmarks and tests start it this way)."""

from __future__ import annotations

import argparse
import sys

from crossrank.errors import CrossrankError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crossrank.serve", description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--index", default=None)
    p.add_argument("--retriever", default="hybrid")
    p.add_argument("--api-key", default=None, help="or CROSSRANK_API_KEY, or --api-key-file (not shown in ps)")
    p.add_argument("--api-key-file", default=None, help="read the API key from this file")
    p.add_argument("--allowed-hosts", default=None,
                   help="Host names served besides loopback (comma-separated, '*': any; or CROSSRANK_ALLOWED_HOSTS)")
    p.add_argument("--max-documents", type=int, default=1000)
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024)
    p.add_argument("--max-queue-pairs", type=int, default=20000)
    p.add_argument("--max-queue-requests", type=int, default=512)
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--max-batch-pairs", type=int, default=256)
    p.add_argument("--batch-wait-ms", type=float, default=0.0)
    p.add_argument("--no-dynamic-batching", action="store_true")
    p.add_argument("--long-documents", default="truncate", choices=["truncate", "chunk"])
    p.add_argument("--deadline-ms", type=float, default=None)
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
        run(a.model, host=a.host, port=a.port, index=a.index, retriever=a.retriever, api_key=a.api_key,
            api_key_file=a.api_key_file, allowed_hosts=a.allowed_hosts,
            max_documents=a.max_documents, max_body_bytes=a.max_body_bytes, max_queue_pairs=a.max_queue_pairs,
            max_queue_requests=a.max_queue_requests, batch_tokens=a.batch_tokens, max_batch_pairs=a.max_batch_pairs,
            batch_wait_ms=a.batch_wait_ms, dynamic_batching=not a.no_dynamic_batching,
            long_documents=a.long_documents, deadline_ms=a.deadline_ms, log_level=a.log_level,
            reranker_options=options)
    except CrossrankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
