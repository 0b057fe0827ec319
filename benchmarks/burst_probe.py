"""The opening burst, alone: N raw-socket clients send one TEI ``/rerank`` request each at the same instant to a
fresh server (default limits and deadline, score cache off), and the probe prints, per request, when it was sent,
when its bytes were all written, and when its answer came (ms from the start), then the 429s' slowest.

It is what found the event loop standing still in a burst (the garbage collector; ``benchmarks/results/overload.md``,
session 9): raw sockets and bodies encoded beforehand keep the client's own work out of the figures.

    python benchmarks/burst_probe.py --clients 64
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load_test as lt  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--model", default="default")
    args = ap.parse_args(argv)
    docs, queries, _ = lt.load_data(1000)
    port = lt.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "crossrank.serve", "--model", args.model, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--cache-size", "0"]
    proc = subprocess.Popen(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        lt.wait_ready(proc, url, 180)
        httpx.post(url + "/rerank", json=lt.request_body(random.Random(0), docs, queries), timeout=120)  # warm-up
        rows = burst(port, [json.dumps(lt.request_body(random.Random(1000 + c), docs, queries)).encode()
                            for c in range(args.clients)])
    finally:
        proc.terminate()
        proc.wait(30)
    print("sent ms  written ms  answered ms  status")
    for sent, written, answered, status in rows:
        print(f"{sent:7.1f}  {written:10.1f}  {answered:11.1f}  {status}")
    refused = [answered - sent for sent, _, answered, status in rows if status == 429]
    counts = {s: sum(1 for r in rows if r[3] == s) for s in sorted({r[3] for r in rows})}
    print(f"statuses {counts}; 429s: slowest {max(refused, default=float('nan')):.1f} ms, "
          f"median {sorted(refused)[len(refused) // 2] if refused else float('nan'):.1f} ms (sent to answered)")
    return 0


def burst(port: int, bodies: list[bytes]) -> list[tuple[float, float, float, int]]:
    """Each body on its own connection, all released at once: (sent, written, answered) ms and the status."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=120) for _ in bodies]
    barrier = threading.Barrier(len(bodies) + 1)
    out: list = [None] * len(bodies)

    def client(c: int) -> None:
        head = (f"POST /rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(bodies[c])}\r\n\r\n").encode()
        barrier.wait()
        t0 = time.perf_counter()
        socks[c].sendall(head + bodies[c])
        t1 = time.perf_counter()
        status = int(socks[c].recv(64).split()[1])
        out[c] = (t0, t1, time.perf_counter(), status)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(len(bodies))]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    for s in socks:
        s.close()
    return sorted(((a - start) * 1000, (b - start) * 1000, (c - start) * 1000, st) for a, b, c, st in out)


if __name__ == "__main__":
    raise SystemExit(main())
