"""The HTTP service: a cross-encoder behind the TEI (``/rerank``), Cohere v2 (``/v2/rerank``) and Jina
(``/v1/rerank``) wire formats, optional ``/search`` over an index, dynamic batching, metrics and a test page.

    from crossrank.serve import create_app, ServeConfig, ServerThread
    app = create_app(crossrank.load_reranker("default"), config=ServeConfig(api_key="secret"))

or from the shell: ``crossrank serve --model default --index my-index`` (which calls ``run``).
"""

from crossrank.serve.config import ServeConfig

__all__ = ["ServeConfig", "ServerThread", "build_app", "create_app", "run"]


def __getattr__(name: str):
    # FastAPI / uvicorn load on first use, so ``import crossrank.serve`` stays cheap for the CLI.
    if name == "create_app":
        from crossrank.serve.app import create_app

        return create_app
    if name in ("run", "build_app", "ServerThread"):
        from crossrank.serve import server

        return getattr(server, name)
    raise AttributeError(f"module 'crossrank.serve' has no attribute {name!r}")
