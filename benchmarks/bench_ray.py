"""Ray Serve replicas against one replica (and the plain server): throughput at concurrent clients, and the score
cache's hit rate when two replicas serve repeated queries.

Throughput: for each setup (plain ``python -m crossrank.serve``; ``--ray --replicas 1``; ``--ray --replicas 2``)
a server process with the score cache off (every pair really scored) and one warm-up request; all three stay up
and take ``--runs`` runs round-robin (fair to each under a shared machine's changing load). In a run
``--clients`` concurrent async clients (httpx) share the same seeded TEI ``/rerank`` requests
(``load_test.request_body``: 20-100 SciFact texts of 50-300 words; a long deadline, so admission lets every
request wait its turn). Reported: pairs/s of the answered requests per run, their median, and each setup's ratio
to one Ray replica.

Cache: a fresh 2-replica server with the cache on; ``--cache-requests`` distinct requests (pass 1), then the same
requests again (passes 2 and 3), from the same concurrent clients. Hits are read from every replica's
``crossrank_cache_hits_total`` (each replica keeps its own cache and metrics; scrapes are repeated until every
replica's ``crossrank_replica_info`` label was seen), as a share of the pairs a shared cache would answer.

    python benchmarks/bench_ray.py                       # default model; writes results/bench_ray.{json,md}
    python benchmarks/bench_ray.py --model /path/to/tiny --runs 1 --requests-per-client 1 --out /tmp/r
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import free_port, load_data, request_body  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Setup:
    name: str
    ray: bool
    replicas: int


SETUPS = (Setup("plain", False, 1), Setup("ray x1", True, 1), Setup("ray x2", True, 2))


@dataclass
class RunResult:
    pairs: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.wall_s if self.wall_s else 0.0


class Server:
    """``python -m crossrank.serve`` in its own process group (Ray's processes with it), its log in a file."""

    def __init__(self, args: argparse.Namespace, setup: Setup, cache: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.replicas = setup.replicas
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench_ray_", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "crossrank.serve", "--model", args.model, "--port", str(self.port),
               "--log-level", "warning", "--max-documents", "1000", "--deadline-ms", str(args.deadline_ms)]
        if not cache:
            cmd += ["--cache-size", "0"]
        elif args.cache:
            cmd += ["--cache", args.cache]  # e.g. a Redis URL every replica shares
        if setup.ray:
            cmd += ["--ray", "--replicas", str(setup.replicas)]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        """Until ``/health`` answers and (behind Ray) every replica has answered a scrape."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    scrape_replicas(self.url, self.replicas, tries=40)
                    return
            except (httpx.HTTPError, RuntimeError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGINT (the server shuts Ray down itself), then the whole process group if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        os.unlink(self.log.name)


def scrape_replicas(url: str, replicas: int, tries: int) -> dict[str, str]:
    """Each replica's ``/metrics`` text by its ``crossrank_replica_info`` label (the plain server: one, "-");
    a scrape lands on one replica, so scrape until all ``replicas`` were seen."""
    seen: dict[str, str] = {}
    for _ in range(tries):
        text = httpx.get(url + "/metrics", timeout=10).text
        label = re.search(r'^crossrank_replica_info\{replica="([^"]+)"\}', text, re.M)
        seen[label.group(1) if label else "-"] = text
        if len(seen) >= replicas:
            return seen
    raise RuntimeError(f"saw {len(seen)} of {replicas} replicas in {tries} scrapes")


def counter(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([\d.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def cache_hits(url: str, replicas: int) -> float:
    return sum(counter(t, "crossrank_cache_hits_total") for t in scrape_replicas(url, replicas, 60).values())


async def drive(url: str, bodies: list[dict], clients: int) -> RunResult:
    """``clients`` concurrent clients take the next body from a shared list until it is empty."""
    res, queue = RunResult(), list(reversed(bodies))

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            resp = await http.post("/rerank", json=body)
            res.statuses[resp.status_code] = res.statuses.get(resp.status_code, 0) + 1
            if resp.status_code == 200:
                res.pairs += len(body["texts"])
                res.latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        res.wall_s = time.perf_counter() - start
    return res


def merged_statuses(runs: list[RunResult]) -> dict[str, int]:
    total: dict[str, int] = {}
    for run in runs:
        for status, count in run.statuses.items():
            total[str(status)] = total.get(str(status), 0) + count
    return total


def requests_for(args: argparse.Namespace, seed: int, count: int) -> list[dict]:
    docs, queries, _ = load_data(200)
    rng = random.Random(seed)
    return [request_body(rng, docs, queries) for _ in range(count)]


def throughput(args: argparse.Namespace) -> list[dict]:
    """All setups' servers up at once (an idle one costs little), runs taken round-robin, so that a change in
    the shared machine's background load falls on every setup alike rather than on whichever ran then."""
    bodies = requests_for(args, args.seed, args.clients * args.requests_per_client)
    servers: list[Server] = []
    runs: dict[str, list[RunResult]] = {s.name: [] for s in SETUPS}
    loads: dict[str, list[float]] = {s.name: [] for s in SETUPS}
    try:
        for setup in SETUPS:  # one at a time: starts compete for the cores
            servers.append(Server(args, setup, cache=False))
            servers[-1].wait_ready(args.start_timeout)
            asyncio.run(drive(servers[-1].url, bodies[:1], 1))  # warm-up: first allocations, lazy loads
        for _ in range(args.runs):
            for setup, server in zip(SETUPS, servers, strict=True):
                loads[setup.name].append(os.getloadavg()[0])
                runs[setup.name].append(asyncio.run(drive(server.url, bodies, args.clients)))
                print(setup.name, f"{runs[setup.name][-1].pairs_per_s:.1f} pairs/s", flush=True)
    finally:
        for server in servers:
            server.stop()
    return [summary(setup, runs[setup.name], loads[setup.name]) for setup in SETUPS]


def summary(setup: Setup, runs: list[RunResult], loads: list[float]) -> dict:
    rates = [r.pairs_per_s for r in runs]
    latencies = sorted(x for r in runs for x in r.latencies)
    result = {**asdict(setup), "setup": setup.name,
              "pairs_per_s_runs": [round(x, 1) for x in rates], "pairs_per_s": round(statistics.median(rates), 1),
              "p50_ms": round(statistics.median(latencies) * 1000) if latencies else None,
              "statuses": merged_statuses(runs), "pairs_per_run": runs[0].pairs,
              "loadavg_1min_at_runs": [round(x, 2) for x in loads]}
    print(json.dumps(result), flush=True)
    return result


def cache_rate(args: argparse.Namespace, setup: Setup) -> dict:
    bodies = requests_for(args, args.seed + 1, args.cache_requests)
    pairs = sum(len(b["texts"]) for b in bodies)
    server = Server(args, setup, cache=True)
    passes = []
    try:
        server.wait_ready(args.start_timeout)
        before = cache_hits(server.url, setup.replicas)
        for _ in range(3):
            run = asyncio.run(drive(server.url, bodies, args.clients))
            after = cache_hits(server.url, setup.replicas)
            passes.append({"hits": int(after - before), "pairs": pairs, "hit_rate": round((after - before) / pairs, 3),
                           "statuses": {str(k): v for k, v in run.statuses.items()}})
            before = after
    finally:
        server.stop()
    result = {"setup": setup.name, "replicas": setup.replicas, "requests": len(bodies), "passes": passes,
              "cache": _masked(args.cache)}
    print(json.dumps(result), flush=True)
    return result


def _masked(url: str | None) -> str | None:
    from crossrank.rerank.cache_redis import mask_password

    return mask_password(url) if url else None


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not report["throughput"]:
        return write_cache_only(report, out)
    (out / "bench_ray.json").write_text(json.dumps(report, indent=2) + "\n")
    base = next(r["pairs_per_s"] for r in report["throughput"] if r["setup"] == "ray x1")
    lines = [
        f"# Ray Serve replicas vs one replica ({report['date']})",
        "",
        f"- machine: {report['machine']['cpus']} cores ({report['machine']['processor']}), shared; load average "
        f"{report['loadavg_start'][0]:.2f} at start, {report['loadavg_end'][0]:.2f} at end",
        f"- model {report['args']['model']}; {report['args']['clients']} concurrent async clients, "
        f"{report['args']['clients'] * report['args']['requests_per_client']} TEI /rerank requests per run "
        "(20-100 SciFact texts of 50-300 words, seeded), score cache off, deadline "
        f"{report['args']['deadline_ms'] / 1000:g} s; median of "
        f"{report['args']['runs']} runs per setup, taken round-robin with every setup's server up; Ray "
        f"{report['versions']['ray']}",
        f"- command: `{report['command']}`",
        "",
        "| setup | pairs/s (median) | runs | x vs ray x1 | p50 ms | statuses | 1-min load avg at each run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["throughput"]:
        lines.append(f"| {r['setup']} | {r['pairs_per_s']} | {', '.join(map(str, r['pairs_per_s_runs']))} | "
                     f"{r['pairs_per_s'] / base:.2f} | {r['p50_ms']} | {r['statuses']} | "
                     f"{', '.join(map(str, r['loadavg_1min_at_runs']))} |")
    lines += cache_table(report["cache"])
    out.joinpath("bench_ray.md").write_text("\n".join(lines) + "\n")


def cache_table(c: dict) -> list[str]:
    store = f"the shared cache {c['cache']}" if c.get("cache") else "each replica its own in-memory cache"
    lines = ["", f"Cache, {c['setup']}: {c['requests']} distinct requests, then the same again twice (cache on, "
             f"{store}); hits as a share of the pairs a shared cache would answer:",
             "", "| pass | hits | pairs | hit rate |", "|---|---|---|---|"]
    return lines + [f"| {i} | {p['hits']} | {p['pairs']} | {p['hit_rate']:.1%} |" for i, p in enumerate(c["passes"], 1)]


def write_cache_only(report: dict, out: Path) -> None:
    """``--cache-only``: the cache pass alone, in files of its own (``--tag``)."""
    (out / f"{report['args']['tag']}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Ray Serve: cache hit rate with two replicas ({report['date']})", "",
             f"- command: `{report['command']}`; {report['args']['clients']} concurrent clients; load average "
             f"{report['loadavg_start'][0]:.2f} at start, {report['loadavg_end'][0]:.2f} at end"]
    out.joinpath(f"{report['args']['tag']}.md").write_text("\n".join(lines + cache_table(report["cache"])) + "\n")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("ray", "torch", "onnxruntime")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cache-requests", type=int, default=8)
    p.add_argument("--seed", type=int, default=23)
    # throughput, not deadlines: every request is admitted and waits its turn (the admission rule would refuse
    # the tail of 8 clients' 60-pair requests on 2 busy cores under the default 30 s)
    p.add_argument("--deadline-ms", type=float, default=600_000.0)
    p.add_argument("--start-timeout", type=float, default=240.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--cache", default=None, help="the cache pass's --cache (e.g. redis://127.0.0.1:6379/0)")
    p.add_argument("--cache-only", action="store_true", help="only the cache pass (results in --tag files)")
    p.add_argument("--tag", default="bench_ray_cache")
    args = p.parse_args(argv)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "args": vars(args) | {"out": None},
              "command": "python benchmarks/bench_ray.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"cpus": len(os.sched_getaffinity(0)), "processor": platform.processor() or platform.machine()},
              "versions": versions(), "loadavg_start": os.getloadavg()}
    report["throughput"] = [] if args.cache_only else throughput(args)
    report["cache"] = cache_rate(args, SETUPS[2])
    report["loadavg_end"] = os.getloadavg()
    write(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
