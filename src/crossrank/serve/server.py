"""Running the app: ``run`` (what ``crossrank serve`` calls) and ``ServerThread`` (a real uvicorn server on a
loopback port inside this process, for tests, benchmarks and notebooks)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from crossrank.errors import InputError
from crossrank.serve.config import ServeConfig

log = logging.getLogger("crossrank.serve")


def build_app(
    model: str = "default",
    *,
    index: str | os.PathLike | None = None,
    retriever: str = "hybrid",
    api_key: str | None = None,
    max_documents: int = 1000,
    max_body_bytes: int = 8 * 1024 * 1024,
    max_queue_pairs: int = 20000,
    max_queue_requests: int = 512,
    batch_tokens: int = 16384,
    max_batch_pairs: int = 256,
    batch_wait_ms: float = 0.0,
    dynamic_batching: bool = True,
    long_documents: str = "truncate",
    deadline_ms: float | None = None,
    k: int = 100,
    n: int = 10,
    reranker_options: dict[str, Any] | None = None,
):
    """Load the reranker (and the index), and return the FastAPI app ``run`` serves."""
    from crossrank.rerank import load_reranker
    from crossrank.serve.app import create_app

    if long_documents not in ("truncate", "chunk"):
        raise InputError(f"long_documents must be 'truncate' or 'chunk', got {long_documents!r}")
    options = dict(reranker_options or {})
    remote = str(model).startswith(("http://", "https://"))
    if not remote:
        options.setdefault("long_documents", long_documents)
        options.setdefault("batch_tokens", batch_tokens)
    reranker = load_reranker(model, **options)
    config = ServeConfig.from_env(
        model_name=str(getattr(reranker, "name", model)),
        api_key=api_key,
        max_documents=max_documents,
        max_body_bytes=max_body_bytes,
        max_queue_pairs=max_queue_pairs,
        max_queue_requests=max_queue_requests,
        batch_tokens=batch_tokens,
        max_batch_pairs=max_batch_pairs,
        batch_wait_ms=batch_wait_ms,
        batching=dynamic_batching,
        default_deadline_ms=deadline_ms,
    )
    loaded_index = None
    if index is not None:
        from crossrank.retrieve import load_index

        loaded_index = load_index(Path(index))
    return create_app(reranker, config=config, index=loaded_index, retriever=retriever, k=k, n=n,
                      search_deadline_ms=deadline_ms)


def run(
    model: str = "default",
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    index: str | os.PathLike | None = None,
    retriever: str = "hybrid",
    api_key: str | None = None,
    max_documents: int = 1000,
    max_body_bytes: int = 8 * 1024 * 1024,
    max_queue_pairs: int = 20000,
    max_queue_requests: int = 512,
    batch_tokens: int = 16384,
    max_batch_pairs: int = 256,
    batch_wait_ms: float = 0.0,
    dynamic_batching: bool = True,
    long_documents: str = "truncate",
    deadline_ms: float | None = None,
    k: int = 100,
    n: int = 10,
    log_level: str = "info",
    reranker_options: dict[str, Any] | None = None,
) -> None:
    """Serve ``model`` over HTTP until interrupted (binds loopback unless ``host`` says otherwise).

    ``model``: "default", a hub id, a local checkpoint, or an http(s) URL (a remote reranker, proxied).
    ``index``: an index directory; adds ``POST /search`` (``retriever`` the default kind, K ``k``, N ``n``).
    ``api_key`` (or ``CROSSRANK_API_KEY``): require ``Authorization: Bearer <key>`` (``/health`` and ``/`` stay open).
    ``dynamic_batching=False`` runs each request alone (comparison baseline).
    ``deadline_ms``: default time budget per request (30 s when unset) and the search pipeline's deadline.
    ``reranker_options``: extra keyword arguments for ``load_reranker`` (``dtype``, ``device``, ``max_length``...).
    """
    import uvicorn

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_app(
        model, index=index, retriever=retriever, api_key=api_key, max_documents=max_documents,
        max_body_bytes=max_body_bytes, max_queue_pairs=max_queue_pairs, max_queue_requests=max_queue_requests,
        batch_tokens=batch_tokens, max_batch_pairs=max_batch_pairs, batch_wait_ms=batch_wait_ms,
        dynamic_batching=dynamic_batching, long_documents=long_documents, deadline_ms=deadline_ms, k=k, n=n,
        reranker_options=reranker_options,
    )
    state = app.state.crossrank
    if host not in ("127.0.0.1", "localhost", "::1") and not state.config.api_key:
        log.warning("binding %s without an API key: anyone who can reach this port can use the service", host)
    log.info("crossrank: serving %s on http://%s:%d (batching %s%s)", state.model_name, host, port,
             "dynamic" if state.config.batching else "off", ", /search" if state.search else "")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=10)


class ServerThread:
    """A real uvicorn server in a background thread on a loopback port (``port=0``: a free one).

    >>> with ServerThread(app) as server:          # doctest: +SKIP
    ...     httpx.post(server.url + "/rerank", json={...})
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.app = app
        self.host = host
        self.port = port
        self.log_level = log_level
        self._server = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(self.app, log_level=self.log_level, access_log=False, lifespan="on",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        until = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread died during start-up")
            if time.monotonic() > until:
                raise RuntimeError(f"the server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._server = self._thread = self._sock = None

    def __enter__(self) -> "ServerThread":
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
