"""Load test of the rerank service, dynamic batching on vs off, loopback only and bounded.

For each mode it starts a fresh server process (``python -m crossrank.serve``, score cache off so every pair is
really scored), has ``--clients`` concurrent clients each send ``--requests`` Cohere v2 rerank requests
(a SciFact query + ``--docs`` SciFact documents, a different slice per request), stops issuing new requests
after ``--time-cap`` seconds, and records throughput, p50/p95 latency, status codes, mean pairs per forward
pass (from /metrics) and the server's RSS at start and end. It fails (exit 1) on any 5xx, any transport error
or any request without an answer, and prints a table plus the on/off ratios.

    python benchmarks/load_test.py                                  # bundled default model, 8 clients x 20
    python benchmarks/load_test.py --model /path/to/tiny --requests 2   # quick end-to-end check

Overload sweep (``--concurrency 1,4,16,64``): one fresh server per level, default limits and the default 30 s
deadline; each of N closed-loop clients sends TEI ``/rerank`` requests of 20-100 texts of 50-300 words (seeded)
for ``--duration`` seconds and honours ``Retry-After`` on a 429, as the provider SDKs do. It reports goodput
(pairs of requests answered 200 within the deadline, per second of the level's wall time), p50/p95/p99 of the
200s, status counts and the slowest 429, then the goodput at 16 and 64 clients as a share of the best at 1-4.
``PYTHONPATH=OLD_CHECKOUT/src`` runs the servers of another checkout (the "before" column):

    python benchmarks/load_test.py --concurrency 1,4,16,64 --duration 40 --json benchmarks/results/overload.json

Data: ../shared/data/scifact (read in place, not copied); falls back to the sample corpus bundled with the
package when it is absent (then queries are document titles).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SCIFACT = Path(os.environ.get("CROSSRANK_SHARED_DATA", REPO.parent / "shared" / "data")) / "scifact"
SAMPLE = REPO / "src" / "crossrank" / "data" / "sample_corpus.jsonl"


def load_data(n_docs: int) -> tuple[list[str], list[str], str]:
    corpus_path = SCIFACT / "corpus.jsonl"
    if not corpus_path.is_file():
        corpus_path = SAMPLE
    docs, titles = [], []
    with open(corpus_path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            title, text = row.get("title", ""), row.get("text", "")
            docs.append(f"{title}\n{text}" if title else text)
            titles.append(title or text[:80])
    queries = []
    qpath = SCIFACT / "queries.jsonl"
    if corpus_path != SAMPLE and qpath.is_file():
        with open(qpath, encoding="utf-8") as f:
            queries = [json.loads(line)["text"] for line in f]
    if not queries:
        queries = titles
    if len(docs) < n_docs:
        docs = (docs * (n_docs // max(1, len(docs)) + 1))[: max(n_docs, len(docs))]
    return docs, queries, str(corpus_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc (0 where unavailable)."""
    cur = peak = 0.0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return cur, peak


@dataclass
class ModeResult:
    mode: str
    sent: int = 0
    answered: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    transport_errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    rss_start: float = 0.0
    rss_end: float = 0.0
    rss_peak: float = 0.0
    pairs_per_pass: float = 0.0
    capped: bool = False

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] * 1000

    def throughput(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0


def start_server(args, port: int, batching: bool, defaults: bool = False) -> subprocess.Popen:
    """``defaults``: the server's own limits and deadline (the overload sweep); otherwise room for ``--docs``
    texts and ``--deadline-ms``."""
    cmd = [sys.executable, "-m", "crossrank.serve", "--model", args.model, "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--cache-size", "0"]
    if not defaults:
        cmd += ["--max-documents", str(max(1000, args.docs)), "--deadline-ms", str(args.deadline_ms)]
    if not batching:
        cmd.append("--no-dynamic-batching")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.max_length:
        cmd += ["--max-length", str(args.max_length)]
    if args.server_nice:
        # the server below the load generator, as if the clients ran on another machine: what the clients measure
        # is then the server's answer, not their own wait for a core
        cmd = ["nice", "-n", str(args.server_nice)] + cmd
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def mean_pairs_per_pass(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    s = re.search(r"^crossrank_batch_pairs_sum ([\d.e+]+)$", text, re.M)
    c = re.search(r"^crossrank_batch_pairs_count ([\d.e+]+)$", text, re.M)
    return float(s.group(1)) / float(c.group(1)) if s and c and float(c.group(1)) else 0.0


def timed_post(http: httpx.Client, path: str, body: dict, lock: threading.Lock,
               errors: list[str], content: bytes | None = None) -> tuple[httpx.Response, float] | None:
    """POST ``body`` (``content``: its JSON, encoded already): (response, seconds), or None after recording a
    transport error."""
    # Encoded before the clock starts: with 64 client threads sharing the GIL, encoding 100 texts inside the timed
    # region measured the client's own CPU, not the server's answer.
    content = json.dumps(body).encode() if content is None else content
    t0 = time.perf_counter()
    try:
        resp = http.post(path, content=content, headers={"content-type": "application/json"})
    except httpx.HTTPError as exc:
        with lock:
            errors.append(f"{type(exc).__name__}: {exc}")
        return None
    return resp, time.perf_counter() - t0


def run_mode(args, docs: list[str], queries: list[str], batching: bool) -> ModeResult:
    mode = "dynamic batching" if batching else "no batching"
    res = ModeResult(mode=mode)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port, batching)
    try:
        wait_ready(proc, url, args.start_timeout)
        # One warm-up request (first forward pass allocations), not counted.
        httpx.post(url + "/v2/rerank", json={"model": "m", "query": queries[0], "documents": docs[: args.docs]},
                   timeout=args.request_timeout)
        res.rss_start = rss_mb(proc.pid)[0]
        lock = threading.Lock()
        stop_at = time.monotonic() + args.time_cap
        start = threading.Barrier(args.clients + 1)

        def client(c: int) -> None:
            with httpx.Client(base_url=url, timeout=args.request_timeout) as http:
                start.wait()
                for r in range(args.requests):
                    if time.monotonic() > stop_at:
                        with lock:
                            res.capped = True
                        return
                    j = c * args.requests + r + 1
                    off = (j * 97) % max(1, len(docs) - args.docs)
                    body = {"model": "crossrank", "query": queries[j % len(queries)],
                            "documents": docs[off : off + args.docs], "top_n": 10}
                    with lock:
                        res.sent += 1
                    sent = timed_post(http, "/v2/rerank", body, lock, res.transport_errors)
                    if sent is None:
                        continue
                    resp, dt = sent
                    with lock:
                        res.answered += 1
                        res.statuses[resp.status_code] = res.statuses.get(resp.status_code, 0) + 1
                        if resp.status_code == 200:
                            res.latencies.append(dt)
                            n = len(resp.json()["results"])
                            if n != min(10, args.docs):
                                res.transport_errors.append(f"expected {min(10, args.docs)} results, got {n}")

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(args.clients)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        res.wall_s = time.perf_counter() - t0
        res.rss_end, res.rss_peak = rss_mb(proc.pid)
        res.pairs_per_pass = mean_pairs_per_pass(url)
    finally:
        stop_server(proc)
    return res


# ---------------------------------------------------------------------------------------------------- overload sweep

DEADLINE_S = 30.0  # the server's default deadline, which the sweep leaves as it is


@dataclass
class LevelResult:
    clients: int
    statuses: dict[int, int] = field(default_factory=dict)
    ok_latencies: list[float] = field(default_factory=list)
    rejected_latencies: list[float] = field(default_factory=list)
    rejected_at: list[float] = field(default_factory=list)  # seconds into the level each 429 was sent
    good_pairs: int = 0
    late: int = 0
    transport_errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)  # the server's count (/metrics)
    dropped_by_reason: dict[str, int] = field(default_factory=dict)  # admitted, then shed (/metrics)
    timeouts: list[tuple[float, float, int]] = field(default_factory=list)  # 504s: (sent at s, took s, texts)

    def goodput(self) -> float:
        return self.good_pairs / self.wall_s if self.wall_s else 0.0

    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.transport_errors)

    @staticmethod
    def pct(xs: list[float], q: float) -> float:
        if not xs:
            return float("nan")
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] * 1000


def by_reason(url: str, metric: str) -> dict[str, int]:
    """A ``crossrank_<metric>_total`` counter by reason: ``rejected_requests`` (``*_early`` were refused before
    their body was read) or ``dropped_requests`` (admitted, then shed: ``deadline``, ``cancelled``)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {m.group(1): int(float(m.group(2)))
            for m in re.finditer(rf'^crossrank_{metric}_total\{{reason="([^"]+)"\}} ([\d.e+]+)$', text, re.M)}


def request_body(rng: random.Random, docs: list[str], queries: list[str]) -> dict:
    """A TEI rerank request: 20-100 texts, each cut to 50-300 words."""
    texts = []
    for _ in range(rng.randint(20, 100)):
        words = docs[rng.randrange(len(docs))].split()
        texts.append(" ".join(words[: rng.randint(50, 300)]))
    return {"query": queries[rng.randrange(len(queries))], "texts": texts}


def retry_after_s(resp: httpx.Response) -> float:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def run_level(args, docs: list[str], queries: list[str], clients: int) -> LevelResult:
    res = LevelResult(clients=clients)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port, batching=True, defaults=True)
    try:
        wait_ready(proc, url, args.start_timeout)
        httpx.post(url + "/rerank", json=request_body(random.Random(0), docs, queries), timeout=120)  # warm-up
        lock = threading.Lock()
        start = threading.Barrier(clients + 1)
        stop_at = [0.0]

        def client(c: int) -> None:
            rng = random.Random(1000 * clients + c)
            first = request_body(rng, docs, queries)
            first_content = json.dumps(first).encode()  # before the start: the opening burst measures the server
            with httpx.Client(base_url=url, timeout=DEADLINE_S + 30) as http:
                start.wait()
                while time.monotonic() < stop_at[0]:
                    body, content = (first, first_content) if first is not None else (
                        request_body(rng, docs, queries), None)
                    first = None
                    sent = timed_post(http, "/rerank", body, lock, res.transport_errors, content)
                    if sent is None:
                        continue
                    resp, dt = sent
                    with lock:
                        res.statuses[resp.status_code] = res.statuses.get(resp.status_code, 0) + 1
                        if resp.status_code == 200:
                            res.ok_latencies.append(dt)
                            if dt <= DEADLINE_S:
                                res.good_pairs += len(body["texts"])
                            else:
                                res.late += 1
                        elif resp.status_code == 429:
                            res.rejected_latencies.append(dt)
                            res.rejected_at.append(time.monotonic() - dt - (stop_at[0] - args.duration))
                        elif resp.status_code == 504:
                            res.timeouts.append((time.monotonic() - dt - (stop_at[0] - args.duration), dt,
                                                 len(body["texts"])))
                    if resp.status_code == 429:
                        time.sleep(min(retry_after_s(resp), max(0.0, stop_at[0] - time.monotonic())))

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
        for t in threads:
            t.start()
        stop_at[0] = time.monotonic() + args.duration
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        res.wall_s = time.perf_counter() - t0
        res.rejected_by_reason = by_reason(url, "rejected_requests")
        res.dropped_by_reason = by_reason(url, "dropped_requests")
    finally:
        stop_server(proc)
    return res


def sweep(args, docs: list[str], queries: list[str]) -> int:
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    server_src = os.environ.get("PYTHONPATH", "") or "this checkout"
    print(f"overload sweep: model={args.model} levels={levels} duration={args.duration:g}s "
          f"server code={server_src} load={os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for n in levels:
        r = run_level(args, docs, queries, n)
        results.append(r)
        print(f"  {n} clients: {r.statuses} in {r.wall_s:.1f}s; 429 by reason {r.rejected_by_reason}", flush=True)
    head = (f"{'clients':>7} {'sent':>5} {'200':>5} {'429':>5} {'504':>5} {'other':>5} {'late':>4} {'goodput pairs/s':>15} "
            f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'slowest 429 ms':>14}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        other = sum(v for k, v in r.statuses.items() if k not in (200, 429, 504)) + len(r.transport_errors)
        print(f"{r.clients:>7} {r.sent():>5} {r.statuses.get(200, 0):>5} {r.statuses.get(429, 0):>5} "
              f"{r.statuses.get(504, 0):>5} {other:>5} {r.late:>4} {r.goodput():>15.1f} "
              f"{r.pct(r.ok_latencies, 0.5):>7.0f} {r.pct(r.ok_latencies, 0.95):>7.0f} "
              f"{r.pct(r.ok_latencies, 0.99):>7.0f} {r.pct(r.rejected_latencies, 1.0):>14.0f}")
    best_low = max((r.goodput() for r in results if r.clients <= 4), default=0.0)
    if best_low:
        for r in results:
            if r.clients > 4:
                print(f"goodput at {r.clients} clients: {r.goodput() / best_low:.2f} x the best at 1-4 clients")
    if args.json:
        args.json.write_text(json.dumps({
            "server_code": server_src, "duration_s": args.duration, "model": args.model,
            "server_nice": args.server_nice, "loadavg_end": list(os.getloadavg()),
            "levels": [{"clients": r.clients, "statuses": r.statuses, "late": r.late, "wall_s": r.wall_s,
                        "goodput_pairs_s": r.goodput(), "p50_ms": r.pct(r.ok_latencies, 0.5),
                        "p95_ms": r.pct(r.ok_latencies, 0.95), "p99_ms": r.pct(r.ok_latencies, 0.99),
                        "slowest_429_ms": r.pct(r.rejected_latencies, 1.0),
                        "p50_429_ms": r.pct(r.rejected_latencies, 0.5), "p95_429_ms": r.pct(r.rejected_latencies, 0.95),
                        "slowest_429_after_2s_ms": r.pct([dt for dt, at in zip(r.rejected_latencies, r.rejected_at,
                                                                               strict=True) if at >= 2.0], 1.0),
                        "rejected_timeline": [[round(at, 3), round(dt * 1000, 1)]
                                              for at, dt in zip(r.rejected_at, r.rejected_latencies, strict=True)],
                        "rejected_by_reason": r.rejected_by_reason, "dropped_by_reason": r.dropped_by_reason,
                        "timeouts_504": [[round(at, 3), round(dt * 1000, 1), n] for at, dt, n in r.timeouts],
                        "errors": r.transport_errors[:10]} for r in results]}, indent=2))
    return 1 if any(k >= 500 and k != 504 for r in results for k in r.statuses) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="'default', a hub id or a checkpoint directory")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=20, help="requests per client")
    p.add_argument("--docs", type=int, default=100, help="documents per request")
    p.add_argument("--time-cap", type=float, default=300.0, help="seconds per mode before clients stop issuing")
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--deadline-ms", type=float, default=600_000.0, help="server-side budget per request")
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads in the server")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--modes", default="on,off", help="which runs, in order: on, off or both")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--concurrency", default=None, metavar="N,N,...",
                   help="overload sweep instead of the on/off comparison: these client counts, one server each")
    p.add_argument("--duration", type=float, default=40.0, help="seconds each sweep level issues requests")
    p.add_argument("--server-nice", type=int, default=0,
                   help="run the server N nice steps below the clients (emulates clients on another machine)")
    args = p.parse_args(argv)

    docs, queries, source = load_data(args.docs)
    if args.concurrency:
        return sweep(args, docs, queries)
    print(f"model={args.model} clients={args.clients} requests/client={args.requests} docs/request={args.docs} "
          f"time cap={args.time_cap:g}s data={source}", flush=True)
    results = []
    for m in [x.strip() for x in args.modes.split(",") if x.strip()]:
        if m not in ("on", "off"):
            p.error(f"unknown mode {m!r}")
        r = run_mode(args, docs, queries, batching=(m == "on"))
        results.append(r)
        print(f"  {r.mode}: {r.ok}/{r.sent} ok in {r.wall_s:.1f}s", flush=True)

    head = (f"{'mode':<17} {'sent':>5} {'200':>5} {'4xx':>4} {'5xx':>4} {'lost':>4} {'req/s':>7} {'pairs/s':>8} "
            f"{'p50 ms':>8} {'p95 ms':>8} {'pairs/call':>10} {'RSS MiB start/end/peak':>24}")
    print("\n" + head + "\n" + "-" * len(head))
    failures = []
    for r in results:
        c4 = sum(v for k, v in r.statuses.items() if 400 <= k < 500)
        c5 = sum(v for k, v in r.statuses.items() if k >= 500)
        lost = r.sent - r.answered
        print(f"{r.mode:<17} {r.sent:>5} {r.ok:>5} {c4:>4} {c5:>4} {lost:>4} {r.throughput():>7.2f} "
              f"{r.throughput() * args.docs:>8.1f} {r.pct(0.5):>8.0f} {r.pct(0.95):>8.0f} {r.pairs_per_pass:>10.1f} "
              f"{r.rss_start:>8.0f}/{r.rss_end:.0f}/{r.rss_peak:.0f}")
        if c5:
            failures.append(f"{r.mode}: {c5} responses were 5xx")
        if lost or r.transport_errors:
            failures.append(f"{r.mode}: {lost} requests lost; errors: {r.transport_errors[:3]}")
        if r.capped:
            print(f"  ({r.mode}: time cap reached, clients stopped early)")
    if len(results) == 2 and all(r.ok for r in results):
        on, off = results if results[0].mode.startswith("dynamic") else results[::-1]
        print(f"\ndynamic/no batching: throughput x{on.throughput() / off.throughput():.2f}, "
              f"p50 x{on.pct(0.5) / off.pct(0.5):.2f}, p95 x{on.pct(0.95) / off.pct(0.95):.2f}")
    if args.json:
        args.json.write_text(json.dumps([{
            "mode": r.mode, "sent": r.sent, "answered": r.answered, "statuses": r.statuses, "wall_s": r.wall_s,
            "throughput_rps": r.throughput(), "p50_ms": r.pct(0.5), "p95_ms": r.pct(0.95),
            "pairs_per_pass": r.pairs_per_pass, "rss_mb": [r.rss_start, r.rss_end, r.rss_peak],
            "errors": r.transport_errors[:10]} for r in results], indent=2))
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
