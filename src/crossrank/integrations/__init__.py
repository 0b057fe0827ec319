"""Adapters that plug a crossrank reranker into other frameworks, one submodule each:

- :mod:`crossrank.integrations.langchain`: ``CrossrankRerank``, a LangChain ``BaseDocumentCompressor``;
- :mod:`crossrank.integrations.llama_index`: ``CrossrankRerank``, a LlamaIndex ``BaseNodePostprocessor``;
- :mod:`crossrank.integrations.haystack`: ``CrossrankRanker``, a Haystack ``@component``.

Each takes ``reranker``: a spec for :func:`crossrank.load_reranker` (``"default"``, ``"fast"``, a model folder, an
``http(s)://`` URL of a crossrank, TEI or Cohere-compatible service) or a reranker object. Importing this package
imports no framework: each submodule imports only its own, and says which pip package to install when it is
missing (``pip install "crossrank[integrations]"`` installs all three).
"""
