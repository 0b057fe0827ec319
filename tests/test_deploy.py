"""deploy/: the Dockerfile and the Kubernetes manifest of the plain server. Neither is built or applied here (no
docker, no cluster); this checks that they say what the server actually does: the manifest parses, its probes
reach /health with a Host the server accepts, the API key comes from a Secret through the variable serve reads,
the ports agree, and the image's command line uses options ``crossrank serve`` has."""

from __future__ import annotations

import json
import re

import pytest

from conftest import REPO, run_cli
from crossrank.serve import ServeConfig

DEPLOY = REPO / "deploy"


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict]:
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "crossrank-rerank.yaml").read_text()))
    return {doc["kind"]: doc for doc in docs}


def _container(manifest: dict[str, dict]) -> dict:
    (container,) = manifest["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def test_manifest_has_deployment_service_and_secret(manifest):
    assert set(manifest) == {"Secret", "Deployment", "Service"}
    deployment, service = manifest["Deployment"], manifest["Service"]
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in _container(manifest)["ports"]}


def test_probes_reach_health_with_an_accepted_host(manifest):
    container = _container(manifest)
    config = ServeConfig()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and get["port"] == "http"
        hosts = [h["value"] for h in get["httpHeaders"] if h["name"].lower() == "host"]
        assert hosts and config.host_allowed(hosts[0]), probe
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]


def test_api_key_comes_from_the_secret_through_the_variable_serve_reads(manifest, monkeypatch):
    env = {e["name"]: e for e in _container(manifest)["env"]}
    ref = env["CROSSRANK_API_KEY"]["valueFrom"]["secretKeyRef"]
    secret = manifest["Secret"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    monkeypatch.setenv("CROSSRANK_API_KEY", "from-the-secret")
    monkeypatch.setenv("CROSSRANK_ALLOWED_HOSTS", env["CROSSRANK_ALLOWED_HOSTS"]["value"])
    config = ServeConfig.from_env()
    assert config.api_key == "from-the-secret"
    assert config.host_allowed(manifest["Service"]["metadata"]["name"])  # the Service's DNS name


def test_dockerfile_runs_the_plain_server_as_non_root_with_a_health_check():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*127\.0\.0\.1:8080/health", text, re.M)
    pyproject = (REPO / "pyproject.toml").read_text()
    pinned = re.search(r'"torch==([^"]+)"', pyproject).group(1)
    assert f"--index-url https://download.pytorch.org/whl/cpu torch=={pinned}" in text


def test_image_command_line_uses_real_serve_options(manifest):
    text = (DEPLOY / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert entrypoint[:2] == ["crossrank", "serve"] and "0.0.0.0" in entrypoint
    flags = {a for a in entrypoint + cmd + _container(manifest)["args"] if a.startswith("--")}
    help_text = run_cli("serve", "--help").stdout
    assert all(flag in help_text for flag in flags), (flags, help_text)


def test_dockerignore_keeps_the_context_to_what_is_copied():
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[:4] == ["*", "!pyproject.toml", "!README.md", "!src/"]
    copied = re.findall(r"^COPY (.+) \S+$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert {p for line in copied for p in line.split()} == {"pyproject.toml", "README.md", "src"}
