"""The LangChain, LlamaIndex and Haystack adapters (crossrank.integrations), against the real frameworks.

The tiny random checkpoint's scores mean nothing but are deterministic, so each adapter's order and scores are
checked against ``crossrank.load_reranker(tiny_model_dir).score(...)`` sorted. A framework that is not installed
skips its tests, saying which package to install (``pip install -e ".[test]"`` installs all three)."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import subprocess
import sys

import pytest

import crossrank

pytestmark = pytest.mark.slow  # each module imports its real framework (LlamaIndex alone takes seconds)

QUERY = "what causes earthquakes"
TEXTS = [
    "Plates slip along faults and release energy as seismic waves.",
    "Sourdough bread uses a starter of wild yeast.",
    "Earth's lithosphere is divided into moving tectonic plates.",
    "Insulin is a hormone made by the pancreas.",
    "A volcano erupts when magma rises through the crust.",
    "Black holes bend light around them.",
    "Mitochondria produce ATP in the cell.",
]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package (llama_index for llama_index.core)
        return False


def _framework(module: str, package: str):
    return pytest.importorskip(module, reason=f"{package} is not installed (pip install {package})")


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return crossrank.load_reranker(tiny_model_dir)


def expected(reference, texts, n=None, query=QUERY):
    """``[(text, score)]`` best first: the reference reranker's scores, sorted, cut to ``n``."""
    scores = reference.score(query, texts).scores
    order = sorted(range(len(texts)), key=lambda i: -scores[i])[:n]
    return [(texts[i], scores[i]) for i in order]


def _approx(pairs):
    return [(t, pytest.approx(s, rel=1e-5, abs=1e-7)) for t, s in pairs]


# --- importing crossrank imports no framework --------------------------------------------------------------------


def test_importing_crossrank_imports_no_framework():
    code = (
        "import sys, crossrank, crossrank.integrations, crossrank.integrations._common\n"
        "crossrank.load_reranker\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('langchain', 'langchain_core', 'llama_index',"
        " 'haystack'))\n"
        "print(bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


@pytest.mark.parametrize(
    "adapter, blocked, package",
    [
        ("langchain", "langchain_core", "langchain-core"),
        ("llama_index", "llama_index", "llama-index-core"),
        ("haystack", "haystack", "haystack-ai"),
    ],
)
def test_missing_framework_names_the_pip_package(adapter, blocked, package):
    # sys.modules[name] = None makes `import name` fail as if it were not installed
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "try:\n"
        f"    import crossrank.integrations.{adapter}\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    print('imported')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"pip install {package}" in proc.stdout, proc.stdout


# --- LangChain ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lc():
    _framework("langchain_core", "langchain-core")
    from langchain_core.documents import Document

    from crossrank.integrations.langchain import CrossrankRerank

    return CrossrankRerank, Document


def test_langchain_ranks_like_the_reranker(lc, reference, tiny_model_dir):
    CrossrankRerank, Document = lc
    from langchain_core.documents.compressor import BaseDocumentCompressor

    docs = [Document(page_content=t, metadata={"source": f"s{i}"}, id=f"d{i}") for i, t in enumerate(TEXTS)]
    compressor = CrossrankRerank(reranker=str(tiny_model_dir))
    assert isinstance(compressor, BaseDocumentCompressor)
    assert compressor.top_n == 3
    out = compressor.compress_documents(docs, QUERY)
    assert [(d.page_content, d.metadata["relevance_score"]) for d in out] == _approx(expected(reference, TEXTS, 3))
    for d in out:  # copies: metadata and id kept, the input documents untouched
        i = TEXTS.index(d.page_content)
        assert d.id == f"d{i}" and d.metadata["source"] == f"s{i}"
    assert all("relevance_score" not in d.metadata for d in docs)


def test_langchain_object_top_n_none_empty_async_and_errors(lc, reference):
    CrossrankRerank, Document = lc
    docs = [Document(page_content=t) for t in TEXTS]
    compressor = CrossrankRerank(reranker=reference, top_n=None)
    out = compressor.compress_documents(docs, QUERY)
    assert [(d.page_content, d.metadata["relevance_score"]) for d in out] == _approx(expected(reference, TEXTS))
    assert compressor.compress_documents([], QUERY) == []
    out2 = asyncio.run(CrossrankRerank(reranker=reference, top_n=2).acompress_documents(docs, QUERY))
    assert [d.page_content for d in out2] == [t for t, _ in expected(reference, TEXTS, 2)]
    with pytest.raises(ValueError, match="top_n"):
        CrossrankRerank(reranker=reference, top_n=0)
    with pytest.raises(ValueError, match="reranker"):
        CrossrankRerank(reranker="  ")
    with pytest.raises(ValueError, match="query"):
        compressor.compress_documents(docs, "   ")


# --- LlamaIndex ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def li():
    _framework("llama_index.core", "llama-index-core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from crossrank.integrations.llama_index import CrossrankRerank

    return CrossrankRerank, NodeWithScore, TextNode, QueryBundle


def _nodes(li):
    _, NodeWithScore, TextNode, _ = li
    return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=1.0 - i / 10) for i, t in enumerate(TEXTS)]


def test_llama_index_ranks_like_the_reranker(li, reference, tiny_model_dir):
    CrossrankRerank, NodeWithScore, _, QueryBundle = li
    from llama_index.core.postprocessor.types import BaseNodePostprocessor

    post = CrossrankRerank(reranker=str(tiny_model_dir))
    assert isinstance(post, BaseNodePostprocessor)
    assert post.top_n == 5
    nodes = _nodes(li)
    out = post.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert all(isinstance(n, NodeWithScore) for n in out)
    assert [(n.node.get_content(), n.score) for n in out] == _approx(expected(reference, TEXTS, 5))
    assert [n.node_id for n in out] == [f"n{TEXTS.index(n.node.get_content())}" for n in out]
    assert [n.score for n in nodes] == [1.0 - i / 10 for i in range(len(TEXTS))]  # input untouched
    # query_str works too, and keep_retrieval_score keeps the first-stage score
    out2 = CrossrankRerank(reranker=reference, top_n=2, keep_retrieval_score=True).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert [(n.node.get_content(), n.score) for n in out2] == _approx(expected(reference, TEXTS, 2))
    for n in out2:
        assert n.node.metadata["retrieval_score"] == 1.0 - TEXTS.index(n.node.get_content()) / 10


def test_llama_index_needs_a_query_and_handles_empty(li, reference):
    CrossrankRerank, _, _, QueryBundle = li
    post = CrossrankRerank(reranker=reference, top_n=None)
    with pytest.raises(ValueError, match="needs the query"):
        post.postprocess_nodes(_nodes(li))
    assert post.postprocess_nodes([], QueryBundle(QUERY)) == []
    assert len(post.postprocess_nodes(_nodes(li), query_str=QUERY)) == len(TEXTS)
    with pytest.raises(ValueError, match="top_n"):
        CrossrankRerank(reranker=reference, top_n=-1)


# --- Haystack -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hs():
    haystack = _framework("haystack", "haystack-ai")
    if not hasattr(haystack, "component"):
        pytest.skip("the installed 'haystack' is not Haystack 2.x or later (pip install haystack-ai)")
    from crossrank.integrations.haystack import CrossrankRanker

    return CrossrankRanker, haystack.Document


def test_haystack_ranks_like_the_reranker(hs, reference, tiny_model_dir):
    CrossrankRanker, Document = hs
    docs = [Document(content=t, meta={"i": i}) for i, t in enumerate(TEXTS)]
    ranker = CrossrankRanker(reranker=str(tiny_model_dir), top_k=4)
    ranker.warm_up()
    out = ranker.run(query=QUERY, documents=docs)["documents"]
    assert [(d.content, d.score) for d in out] == _approx(expected(reference, TEXTS, 4))
    assert [d.id for d in out] == [docs[d.meta["i"]].id for d in out]
    assert all(d.score is None for d in docs)  # copies: the input documents untouched
    out = ranker.run(query=QUERY, documents=docs, top_k=2)["documents"]
    assert [(d.content, d.score) for d in out] == _approx(expected(reference, TEXTS, 2))
    assert ranker.run(query=QUERY, documents=[]) == {"documents": []}
    with pytest.raises(ValueError, match="top_k"):
        ranker.run(query=QUERY, documents=docs, top_k=0)


def test_haystack_pipeline_and_serialization(hs, reference, tiny_model_dir):
    CrossrankRanker, Document = hs
    from haystack import Pipeline

    ranker = CrossrankRanker(reranker=str(tiny_model_dir), top_k=None)
    data = ranker.to_dict()
    assert data["init_parameters"] == {"reranker": str(tiny_model_dir), "top_k": None}
    again = CrossrankRanker.from_dict(data)
    pipe = Pipeline()
    pipe.add_component("ranker", again)
    # through YAML and back; Haystack 3 loads only allowlisted modules' components
    allow = {"allowed_modules": ["crossrank.integrations.haystack"]}
    pipe = Pipeline.loads(pipe.dumps(), **(allow if "allowed_modules" in inspect.signature(Pipeline.loads).parameters
                                           else {}))
    out = pipe.run({"ranker": {"query": QUERY, "documents": [Document(content=t) for t in TEXTS]}})
    assert [(d.content, d.score) for d in out["ranker"]["documents"]] == _approx(expected(reference, TEXTS))
    with pytest.raises(TypeError, match="spec string"):
        CrossrankRanker(reranker=reference).to_dict()


# --- the bundled default model, through every adapter installed ---------------------------------------------------


@pytest.mark.slow
def test_default_model_ranks_the_capital_first():
    from crossrank.rerank.bundled import DEFAULT_BUNDLE_DIR, bundle_available

    if not bundle_available(DEFAULT_BUNDLE_DIR):
        pytest.skip(f"no default bundle in {DEFAULT_BUNDLE_DIR}")
    query = "What is the capital of the United States?"
    right = "Washington, D.C. is the capital of the United States."
    wrong = "Mariana Islands are an island chain in the Pacific."
    reranker = crossrank.load_reranker("default")
    ran = []
    if _installed("langchain_core"):
        from langchain_core.documents import Document as LCDocument

        from crossrank.integrations.langchain import CrossrankRerank as LCRerank

        out = LCRerank(reranker=reranker).compress_documents([LCDocument(page_content=wrong),
                                                              LCDocument(page_content=right)], query)
        assert [d.page_content for d in out] == [right, wrong]
        assert out[0].metadata["relevance_score"] > out[1].metadata["relevance_score"]
        ran.append("langchain")
    if _installed("llama_index.core"):
        from llama_index.core.schema import NodeWithScore, TextNode

        from crossrank.integrations.llama_index import CrossrankRerank as LIRerank

        nodes = [NodeWithScore(node=TextNode(text=wrong)), NodeWithScore(node=TextNode(text=right))]
        out = LIRerank(reranker=reranker).postprocess_nodes(nodes, query_str=query)
        assert [n.node.get_content() for n in out] == [right, wrong]
        assert out[0].score > out[1].score
        ran.append("llama_index")
    if _installed("haystack"):
        from haystack import Document as HSDocument

        from crossrank.integrations.haystack import CrossrankRanker

        out = CrossrankRanker(reranker=reranker).run(query=query, documents=[HSDocument(content=wrong),
                                                                              HSDocument(content=right)])
        assert [d.content for d in out["documents"]] == [right, wrong]
        assert out["documents"][0].score > out["documents"][1].score
        ran.append("haystack")
    if not ran:
        pytest.skip("none of langchain-core, llama-index-core, haystack-ai is installed")
