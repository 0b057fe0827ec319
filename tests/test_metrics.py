"""/metrics on a real server on loopback: process and runtime series, crossrank_build_info, and OpenMetrics when
the scraper's Accept header asks for it (parsed back with prometheus-client's own parsers)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from crossrank.serve import ServerThread, create_app

# what Prometheus 2.x / 3.x sends when it scrapes a target
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    engine = CrossEncoderReranker(str(tiny_model_dir), dtype="fp32", device="cpu")
    with ServerThread(create_app(engine)) as s:
        httpx.post(s.url + "/rerank", json={"query": "q", "texts": ["a", "b"]}, timeout=30).raise_for_status()
        yield s


def _families(text: str, parse) -> dict:
    return {f.name: f for f in parse(text)}


def test_text_format_has_process_runtime_and_build_info(server):
    r = httpx.get(server.url + "/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
    families = _families(r.text, parse_text)
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds", "python_info", "python_gc_collections"):
        assert name in families, name
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    (build,) = families["crossrank_build_info"].samples
    info = httpx.get(server.url + "/info", timeout=30).json()
    assert build.labels == {"version": info["version"], "model": info["model_id"]} and build.value == 1
    requests = families["crossrank_requests"].samples
    assert any(s.labels == {"route": "/rerank", "status": "200"} and s.value == 1 for s in requests)


def test_openmetrics_when_asked(server):
    r = httpx.get(server.url + "/metrics", headers={"Accept": PROMETHEUS_ACCEPT}, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert r.text.endswith("# EOF\n")
    families = _families(r.text, parse_openmetrics)  # the strict parser: refuses anything not OpenMetrics
    assert families["crossrank_build"].type == "info"
    assert families["crossrank_requests"].type == "counter" and "process_cpu_seconds" in families
    plain = httpx.get(server.url + "/metrics", headers={"Accept": "text/plain"}, timeout=30)
    assert plain.headers["content-type"].startswith("text/plain") and "# EOF" not in plain.text
