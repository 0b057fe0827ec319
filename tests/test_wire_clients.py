"""Real client packages against a real crossrank server on loopback (issue 21's wire table): the voyageai SDK,
tei-client and huggingface_hub on /info, the cohere v1 client with ``rank_fields``; infinity (its client pins an
httpx older than crossrank's, so it cannot be installed beside it) against a recorded response of its schema;
token usage that counts pairs answered from the score cache; and the README's client snippets, read from README.md
and run as written."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

from conftest import RERANK_DOCS, RERANK_QUERY
from crossrank.rerank.cache import CachedReranker
from crossrank.serve import ServeConfig, ServerThread, create_app

DOCS, QUERY = RERANK_DOCS, RERANK_QUERY
LONG = " ".join(f"word{i % 50}" for i in range(900))  # over the tiny model's 512 tokens
KEY = "wire-key"
AUTH = {"Authorization": f"Bearer {KEY}"}

# infinity 0.0.78's /rerank answer (ReRankResult in its OpenAPI schema), as recorded from its client's models.
INFINITY_RECORDED = {
    "object": "rerank",
    "results": [{"relevance_score": 0.97, "index": 1, "document": "Plants convert sunlight ..."}],
    "model": "mixedbread-ai/mxbai-rerank-xsmall-v1",
    "usage": {"prompt_tokens": 41, "total_tokens": 41},
    "id": "infinity-5e6b0a7c-0000-4000-8000-000000000000",
    "created": 1730000000,
}
# text-embeddings-inference's Info for a reranker (router/src/lib.rs), less `prompts` (embedding models only).
TEI_INFO_KEYS = {"model_id", "model_sha", "model_dtype", "model_type", "max_concurrent_requests",
                 "max_input_length", "max_batch_tokens", "max_batch_requests", "max_client_batch_size",
                 "auto_truncate", "tokenization_workers", "version", "sha", "docker_label"}


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    return CrossEncoderReranker(str(tiny_model_dir), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def server(engine):
    with ServerThread(create_app(CachedReranker(engine), config=ServeConfig(api_key=KEY))) as s:
        yield s


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=AUTH, timeout=30)


def _best_first(scores) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def _same_shape(got, recorded) -> None:
    """``got`` has the keys and value types of ``recorded``, recursively (lists by their first item)."""
    if isinstance(recorded, dict):
        assert isinstance(got, dict) and set(got) == set(recorded), (got, recorded)
        for key in recorded:
            _same_shape(got[key], recorded[key])
    elif isinstance(recorded, list):
        assert isinstance(got, list) and got
        for item in got:
            _same_shape(item, recorded[0])
    else:
        assert isinstance(got, float if isinstance(recorded, float) else type(recorded)), (got, recorded)


# ------------------------------------------------------------------------------------------------ Voyage


def test_voyage_sdk(server, engine):
    import voyageai

    client = voyageai.Client(api_key=KEY, base_url=server.url + "/v1", max_retries=0)
    expected = engine.score(QUERY + " voyage", DOCS)
    got = client.rerank(QUERY + " voyage", DOCS, model="rerank-2", top_k=2)
    assert [r.index for r in got.results] == _best_first(expected.scores)[:2]
    for r in got.results:
        assert r.relevance_score == pytest.approx(expected.scores[r.index], abs=1e-6)
        assert r.document == DOCS[r.index]
    assert got.total_tokens == expected.tokens > 0
    with pytest.raises(voyageai.error.VoyageError):
        client.rerank(QUERY, [DOCS[0], LONG], model="rerank-2", truncation=False)


def test_voyage_async_sdk_and_raw_shape(server):
    import asyncio

    import voyageai

    async def go():
        client = voyageai.AsyncClient(api_key=KEY, base_url=server.url + "/v1", max_retries=0)
        return await client.rerank(QUERY, DOCS, model="rerank-2")

    assert len(asyncio.run(go()).results) == len(DOCS)
    body = _post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS, "model": "rerank-2", "top_k": 1,
                                        "return_documents": True}).json()
    assert set(body) == {"object", "data", "model", "usage"} and body["object"] == "list"
    assert set(body["data"][0]) == {"index", "relevance_score", "document"} and set(body["usage"]) == {"total_tokens"}
    assert body["data"][0]["document"] == DOCS[body["data"][0]["index"]] and body["model"] == "rerank-2"


# ------------------------------------------------------------------------------------------------ TEI /info


@pytest.fixture
def hub_online(monkeypatch):
    """huggingface_hub refuses every request under HF_HUB_OFFLINE=1 (which the README suggests for machines
    without a network), even to a loopback server: these tests talk only to loopback, so they lift it."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_tei_client_and_hf_hub_read_info(server, engine, hub_online):
    from huggingface_hub import InferenceClient
    from tei_client import HttpClient
    from tei_client.models import ModelType

    config = server.app.state.crossrank.config
    tei = HttpClient(server.url, headers=AUTH)
    info = tei.info()
    assert info.server_model_type == ModelType.Reranker and info.server_model_dtype == "float32"
    assert info.max_client_batch_size == config.max_documents and info.max_input_length == 512
    assert info.server_model_metadata.label2id == {"LABEL_0": 0}
    ranks = tei.rerank(QUERY, DOCS, return_text=True, truncate=True).ranks
    assert [r.index for r in ranks] == _best_first(engine.score(QUERY, DOCS).scores)
    assert ranks[0].text == DOCS[ranks[0].index]
    hub = InferenceClient(model=server.url, token=KEY, provider="hf-inference").get_endpoint_info()
    assert hub["max_client_batch_size"] == config.max_documents
    assert TEI_INFO_KEYS <= set(hub) and hub["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"},
                                                                            "label2id": {"LABEL_0": 0}}}
    assert hub["limits"]["max_documents"] == config.max_documents and hub["engine"]  # crossrank's own, kept


# ------------------------------------------------------------------------------------------------ Cohere v1


def test_cohere_v1_client_rank_fields_and_id(server, engine):
    import cohere

    client = cohere.Client(api_key=KEY, base_url=server.url)
    docs = [{"title": f"doc {i}", "text": t, "lang": "en"} for i, t in enumerate(DOCS)]
    r = client.rerank(model="rerank-v3.5", query=QUERY, documents=docs, rank_fields=["title", "text"], top_n=2,
                      return_documents=True)
    assert isinstance(r.id, str) and r.id
    ranked = [f"title: doc {i}\ntext: {t}" for i, t in enumerate(DOCS)]
    expected = engine.score(QUERY, ranked).scores
    assert [x.index for x in r.results] == _best_first(expected)[:2]
    for x in r.results:
        assert x.relevance_score == pytest.approx(expected[x.index], abs=1e-6)
        assert x.document.text == DOCS[x.index] and x.document.title == f"doc {x.index}"  # echoed as sent
    assert r.meta.billed_units.search_units == 1 and r.meta.api_version.version == "1"
    plain = client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, rank_fields=["text"])
    assert all(x.document is None for x in plain.results)  # Cohere's default: no documents back
    with pytest.raises(cohere.core.ApiError):
        client.rerank(model="rerank-v3.5", query=QUERY, documents=[{"title": "no text field"}])


# ------------------------------------------------------------------------------------------------ infinity


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank"])
def test_infinity_schema_documents_and_raw_scores(server, engine, path):
    # what infinity_client's RerankInput.to_dict() sends: every field, defaults included
    body = {"query": QUERY, "documents": DOCS, "return_documents": True, "raw_scores": False,
            "model": "default/not-specified", "top_n": 3}
    got = _post(server, path, body)
    assert got.status_code == 200, got.text
    got = got.json()
    _same_shape(got, INFINITY_RECORDED)
    expected = engine.score(QUERY, DOCS).scores
    assert [x["index"] for x in got["results"]] == _best_first(expected)[:3]
    assert all(x["document"] == DOCS[x["index"]] for x in got["results"])  # a string, as infinity's schema
    raw = _post(server, path, {**body, "raw_scores": True, "return_documents": False}).json()["results"]
    calibration = server.app.state.crossrank.engines.calibration
    for x in raw:
        assert x["document"] is None
        assert x["relevance_score"] == pytest.approx(calibration.raw(expected[x["index"]]), abs=1e-4)
    assert any(abs(x["relevance_score"] - expected[x["index"]]) > 1e-3 for x in raw)  # logits, not [0, 1]


# ------------------------------------------------------------------------------------------------ usage


def test_usage_counts_cache_hits(server, engine):
    query = QUERY + " cached"
    expected = engine.score(query, DOCS).tokens
    jina = {"query": query, "documents": DOCS}
    first = _post(server, "/v1/rerank", jina)
    again = _post(server, "/v1/rerank", jina)  # every pair from the score cache now
    assert again.headers["x-compute-tokens"] == "0"
    assert first.json()["usage"]["total_tokens"] == again.json()["usage"]["total_tokens"] == expected
    voyage = _post(server, "/v1/rerank", {**jina, "top_k": 2}).json()
    assert voyage["usage"]["total_tokens"] == expected
    infinity = _post(server, "/rerank", jina).json()
    assert infinity["usage"]["total_tokens"] == expected


@pytest.mark.slow
def test_usage_of_chunks_and_cohere_search_units(server, tiny_model_dir):
    from crossrank.rerank.engine import CrossEncoderReranker

    chunked = CrossEncoderReranker(str(tiny_model_dir), dtype="fp32", device="cpu", long_documents="chunk")
    body = {"query": QUERY, "documents": [LONG, DOCS[0]], "long_documents": "chunk"}
    expected = chunked.score(QUERY, body["documents"]).tokens
    assert _post(server, "/v1/rerank", body).json()["usage"]["total_tokens"] == expected
    many = [f"document number {i}" for i in range(150)]
    meta = _post(server, "/v2/rerank", {"query": QUERY, "documents": many}).json()["meta"]
    assert meta["billed_units"]["search_units"] == math.ceil(150 / 100)
    meta = _post(server, "/v2/rerank", {"query": QUERY, "documents": [LONG] * 60, "long_documents": "chunk"}).json()
    windows = len(chunked.pair_inputs(QUERY, LONG))
    assert windows > 1 and meta["meta"]["billed_units"]["search_units"] == math.ceil(60 * windows / 100)


# ------------------------------------------------------------------------------------------------ README snippets

README = Path(__file__).resolve().parent.parent / "README.md"
README_SECTION = "## Use it from rerank clients"
README_QUERY = "what do plants make from sunlight"
README_DOCS = ["Volcanoes erupt when magma rises.", "Plants turn sunlight into glucose."]


def readme_snippet(title: str) -> str:
    """The Python block of README.md's client section whose first line is ``# <title>...``."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(README_SECTION):]
    section = section[: section.find("\n## ", 1)]
    blocks = [b.split("\n```", 1)[0] for b in section.split("```python\n")[1:]]
    (block,) = [b for b in blocks if b.startswith(f"# {title}")]
    return block


def run_readme_snippet(title: str, **replace: str) -> dict:
    """Run the snippet as written, with the README's address, key or folder (``replace``: old -> new, each
    where it occurs, the first one at least) swapped for the test's."""
    code = readme_snippet(title)
    assert next(iter(replace)) in code, title
    for old, new in replace.items():
        code = code.replace(old, new)
    namespace: dict = {}
    exec(compile(code, f"README.md: {title}", "exec"), namespace)
    return namespace


def _run_against(server, title: str) -> dict:
    return run_readme_snippet(title, **{"http://127.0.0.1:8080": server.url, '"KEY"': repr(KEY),
                                        '"Bearer KEY"': repr(f"Bearer {KEY}")})


def _readme_order(engine, docs=README_DOCS) -> list[int]:
    return _best_first(engine.score(README_QUERY, docs).scores)


def test_readme_cohere_v2(server, engine):
    ns = _run_against(server, "cohere SDK, v2 API")
    assert [r.index for r in ns["response"].results] == _readme_order(engine)
    assert ns["best"] == _readme_order(engine)[0]


def test_readme_cohere_v1(server, engine):
    ns = _run_against(server, "cohere SDK, v1 API")
    ranked = [f"title: {d['title']}\ntext: {d['text']}" for d in ns["docs"]]
    order = _readme_order(engine, ranked)
    assert [r.index for r in ns["response"].results] == order and ns["response"].id
    assert ns["best"] == ns["docs"][order[0]]["title"]


def test_readme_voyageai(server, engine):
    ns = _run_against(server, "voyageai SDK")
    assert [r.index for r in ns["response"].results] == _readme_order(engine)
    assert ns["best"] == README_DOCS[_readme_order(engine)[0]] and ns["response"].total_tokens > 0


def test_readme_tei_client(server, engine):
    ns = _run_against(server, "tei-client")
    assert [r.index for r in ns["ranks"]] == _readme_order(engine) and ns["best"] == _readme_order(engine)[0]
    assert ns["ranks"][0].text == README_DOCS[ns["best"]]


def test_readme_huggingface_hub(server, hub_online):
    info = _run_against(server, "huggingface_hub InferenceClient")["info"]
    assert info["max_client_batch_size"] == server.app.state.crossrank.config.max_documents
    assert set(info["model_type"]) == {"reranker"}


def test_readme_llama_index_tei_with_api_key(server, engine):
    ns = _run_against(server, "LlamaIndex TEI postprocessor")
    assert ns["best"] == README_DOCS[_readme_order(engine)[0]]
    assert httpx.post(server.url + "/rerank", json={"query": "q", "texts": ["d"]}).status_code == 401  # key needed


def test_readme_infinity_client(server, engine):
    # infinity-client pins httpx<0.28 (crossrank pins 0.28.1): it installs only in an environment of its own
    pytest.importorskip("infinity_client", reason="infinity-client cannot be installed beside crossrank's httpx")
    ns = _run_against(server, "infinity_client")
    assert ns["best"] == README_DOCS[_readme_order(engine)[0]]
