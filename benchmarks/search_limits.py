"""Hostile /search input (#18 item 2): what four concurrent 5 MiB queries cost the server.

Starts ``crossrank serve --model default --index INDEX`` (default limits) on a free loopback port, sends one
small search to warm it, then four concurrent ``POST /search`` with a 5 MiB query, and reports each answer's
status, latency and first bytes, and the server's RSS: idle before, peak while they run (polled every 20 ms)
and idle 3 s after. ``PYTHONPATH=OLD_CHECKOUT/src`` runs another checkout's server (the "before" column):

    python benchmarks/search_limits.py INDEX --json benchmarks/results/search-limits-after.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from load_test import wait_ready  # benchmarks/ is the script's folder, so on sys.path

QUERY_BYTES = 5 * 1024 * 1024
CLIENTS = 4
ANSWER_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next((x for x in f if x.startswith("VmRSS")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1024


def _one(base: str, query: str) -> dict:
    t0 = time.time()
    try:
        r = httpx.post(base + "/search", json={"query": query, "k": 10}, timeout=ANSWER_TIMEOUT_S)
    except httpx.TimeoutException:
        return {"status": f"no answer in {ANSWER_TIMEOUT_S} s", "ms": round((time.time() - t0) * 1000)}
    return {"status": r.status_code, "ms": round((time.time() - t0) * 1000), "body": r.text[:160],
            "response_bytes": len(r.content)}


def measure(index: str) -> dict:
    port = _free_port()
    cmd = [sys.executable, "-m", "crossrank.cli", "serve", "--model", "default", "--index", index, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, timeout=300)
        _one(base, "boundary layer transition")
        idle = _rss_mb(proc.pid)
        big = ("wing " * (QUERY_BYTES // 5))[:QUERY_BYTES]
        peak = idle
        with cf.ThreadPoolExecutor(CLIENTS) as ex:
            futures = [ex.submit(_one, base, big) for _ in range(CLIENTS)]
            while not all(f.done() for f in futures):
                peak = max(peak, _rss_mb(proc.pid))
                time.sleep(0.02)
        time.sleep(3)
        return {"rss_idle_before_mb": round(idle), "rss_peak_mb": round(peak),
                "rss_idle_after_mb": round(_rss_mb(proc.pid)), "responses": [f.result() for f in futures]}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index", help="a saved crossrank index")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args()
    result = measure(args.index)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
