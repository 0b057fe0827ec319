"""The rerank service on Ray Serve (``serve/ray_deploy.py``): two replicas of the real app on a local Ray (2 CPUs,
a small object store, no dashboard), the tiny model, real HTTP through Ray's proxy; scores must equal the plain
in-process server's. Skipped, saying why, where Ray is not installed or cannot start in time. The option checks
at the end need no Ray."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import RERANK_DOCS, RERANK_QUERY, assert_clean_error, run_cli
from crossrank.errors import InputError
from crossrank.serve import ServeConfig, ServerThread
from crossrank.serve.config import config_from_settings

DOCS, QUERY = RERANK_DOCS, RERANK_QUERY
SETTINGS = {"ray": True, "replicas": 2}
START_TIMEOUT_S = 90.0  # Ray, its proxy and two replicas (each loading torch) on two shared cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deploy_or_skip(model: str, port: int) -> bool:
    """Start a local Ray and the 2-replica app on ``port``; returns whether this test started Ray. Skips when Ray
    is missing, cannot start, or the replicas are not up within ``START_TIMEOUT_S`` (a deploy error fails)."""
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'crossrank[ray]')")
    from crossrank.serve import ray_deploy

    try:
        cluster = ray_deploy.start_ray(num_cpus=2, object_store_bytes=100 * 1024 * 1024)
    except ray_deploy.RayUnavailable as exc:
        pytest.skip(f"Ray cannot start here: {exc}")
    local = cluster.local
    config = config_from_settings(SETTINGS)
    app = ray_deploy.application(model, config, cpus=cluster.cpus, node_cpus=cluster.node_cpus, host="127.0.0.1",
                                 settings=SETTINGS)
    failure: list[BaseException] = []

    def deploy() -> None:
        try:
            ray_deploy.deploy(app, host="127.0.0.1", port=port, keep_alive_s=config.keep_alive_s)
        except BaseException as exc:  # reported in the test's thread
            failure.append(exc)

    worker = threading.Thread(target=deploy, daemon=True)
    worker.start()
    worker.join(START_TIMEOUT_S)
    if worker.is_alive():
        ray_deploy.stop(local)
        pytest.skip(f"Ray Serve's 2 replicas did not start within {START_TIMEOUT_S:.0f} s (machine busy?)")
    if failure:
        ray_deploy.stop(local)
        raise failure[0]
    return local


@pytest.fixture(scope="module")
def ray_url(tiny_model_dir):
    from crossrank.serve import ray_deploy

    port = _free_port()
    local = _deploy_or_skip(str(tiny_model_dir), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        ray_deploy.stop(local)


@pytest.fixture(scope="module")
def plain_url(tiny_model_dir):
    """The same model, loaded as one replica loads it (``build_app``, one thread), served without Ray."""
    from crossrank.serve.server import build_app

    app = build_app(str(tiny_model_dir), host="127.0.0.1", reranker_options={"num_threads": 1})
    with ServerThread(app) as server:
        yield server.url


def _post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30)


@pytest.mark.slow
def test_tei_rerank_through_ray_matches_the_plain_server(ray_url, plain_url):
    body = {"query": QUERY, "texts": DOCS, "return_text": True}
    got, want = _post(ray_url, "/rerank", body), _post(plain_url, "/rerank", body)
    assert got.status_code == 200, got.text
    assert [r["index"] for r in got.json()] == [r["index"] for r in want.json()]
    assert [r["score"] for r in got.json()] == pytest.approx([r["score"] for r in want.json()], rel=1e-5, abs=1e-6)
    assert got.json()[0]["text"] == DOCS[got.json()[0]["index"]]


@pytest.mark.slow
def test_cohere_v2_rerank_through_ray_matches_the_plain_server(ray_url, plain_url):
    body = {"model": "m", "query": QUERY, "documents": DOCS, "top_n": 3}
    got, want = _post(ray_url, "/v2/rerank", body), _post(plain_url, "/v2/rerank", body)
    assert got.status_code == 200, got.text
    scores = [(r["index"], r["relevance_score"]) for r in got.json()["results"]]
    expected = [(r["index"], r["relevance_score"]) for r in want.json()["results"]]
    assert [i for i, _ in scores] == [i for i, _ in expected]
    assert [s for _, s in scores] == pytest.approx([s for _, s in expected], rel=1e-5, abs=1e-6)
    assert got.json()["meta"]["billed_units"]["search_units"] == 1


@pytest.mark.slow
def test_health_and_errors_are_the_apps_own(ray_url):
    health = httpx.get(ray_url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    empty = _post(ray_url, "/rerank", {"query": " ", "texts": DOCS})
    assert empty.status_code == 400 and empty.json()["error_type"] == "empty"
    # the gate runs in the replica: a Host that is not allowed is refused there
    assert httpx.get(ray_url + "/info", headers={"Host": "evil.example"}, timeout=10).status_code == 400


@pytest.mark.slow
def test_both_replicas_answer_and_label_their_metrics(ray_url):
    seen: set[str] = set()
    until = time.monotonic() + 20
    while len(seen) < 2 and time.monotonic() < until:
        text = httpx.get(ray_url + "/metrics", timeout=10).text
        assert "crossrank_requests_total" in text
        seen.update(re.findall(r'^crossrank_replica_info\{replica="([^"]+)"\} 1\.0$', text, re.M))
    assert len(seen) == 2, f"scrapes reached replicas {seen}"


# ------------------------------------------------------------------------------------------------ without Ray


def test_replicas_need_ray():
    with pytest.raises(InputError, match="need --ray"):
        ServeConfig(replicas=2)
    with pytest.raises(InputError, match="replicas must be a positive integer"):
        ServeConfig(ray=True, replicas=0)
    assert ServeConfig(ray=True, replicas=3).replicas == 3


def test_missing_ray_is_one_error_line(monkeypatch):
    from crossrank.serve import ray_deploy

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ray_deploy.RayUnavailable, match=r"pip install 'crossrank\[ray\]'"):
        ray_deploy.import_ray()


def test_replica_share_fits_the_machine():
    from crossrank.serve.ray_deploy import replica_share

    assert (replica_share(2, 2).num_cpus, replica_share(2, 2).threads) == (1.0, 1)
    assert (replica_share(16, 2).num_cpus, replica_share(16, 2).threads) == (8.0, 8)
    # more replicas than cores: fractional reservations (all of them fit), one thread each
    assert (replica_share(2, 3).num_cpus, replica_share(2, 3).threads) == (pytest.approx(2 / 3), 1)
    # a cluster of 4-CPU nodes: no replica asks for more than a node has
    assert (replica_share(16, 2, node_cpus=4).num_cpus, replica_share(16, 2, node_cpus=4).threads) == (4.0, 4)


def test_cli_without_ray_is_one_error_line():
    # `import ray` fails in the CLI's process, as where the extra is not installed
    code = "import sys; sys.modules['ray'] = None; from crossrank.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "serve", "--ray", "--replicas", "2"], capture_output=True,
                          text=True, timeout=120)
    assert_clean_error(proc, "pip install 'crossrank[ray]'")


def test_cli_takes_ray_options():
    help_text = run_cli("serve", "--help").stdout
    assert "--ray" in help_text and "--replicas" in help_text
    assert_clean_error(run_cli("serve", "--replicas", "2"), "need --ray")
