"""The service's page in a real headless Chromium: a person's query shows first-stage and reranked order side by side."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import urllib.parse

import pytest

from crossrank.corpus import load_corpus
from crossrank.rerank import CrossEncoderReranker
from crossrank.retrieve import build_index
from crossrank.serve import ServeConfig, ServerThread, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")]


def render(url: str) -> str:
    """The DOM after the page's scripts ran (virtual time lets the fetches finish)."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    import json

    from conftest import SAMPLE_DOCS

    corpus = tmp_path_factory.mktemp("page") / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in SAMPLE_DOCS), encoding="utf-8")
    index = build_index(load_corpus(corpus), None, methods=("bm25",), progress=False)
    app = create_app(CrossEncoderReranker(str(tiny_model_dir)), index=index, retriever="bm25", k=6, n=3,
                     config=ServeConfig())
    with ServerThread(app) as s:
        yield s


def test_page_search_shows_both_orders(server):
    dom = render(server.url + "/?" + urllib.parse.urlencode({"q": "volcano magma lava"}))
    assert "Volcanoes" in dom  # the matching document, in both columns
    assert dom.count("<table") == 2
    # the reranked column's timing line: "reranked N · retrieve ... · rerank ... · total ..."
    assert re.search(r"reranked [1-9]\d* \u00b7 retrieve [\d.]+ ms \u00b7 rerank [\d.]+ ms", dom), dom[-3000:]
    assert "retrieve" in dom and "rerank" in dom and "total" in dom


def test_page_paste_mode_reranks_pasted_lines(server):
    cands = "Bread rises with yeast.\nMagma rises and the volcano erupts.\nTides follow the Moon."
    dom = render(server.url + "/?" + urllib.parse.urlencode({"q": "volcano eruption", "cands": cands}))
    assert dom.count("<table") == 2
    assert dom.count("Magma rises and the volcano erupts.") >= 2  # input column and reranked column
    assert "inference" in dom and "round trip" in dom
