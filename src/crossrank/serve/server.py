"""Running the app: ``run`` (what ``crossrank serve`` calls) and ``ServerThread`` (a real uvicorn server on a
loopback port inside this process, for tests, benchmarks and notebooks)."""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from crossrank.serve.config import WILDCARD_HOSTS, ServeConfig, config_from_settings, resolve_settings
from crossrank.threads import lower_other_threads

log = logging.getLogger("crossrank.serve")


def build_app(
    model: str = "default",
    *,
    index: str | os.PathLike | None = None,
    retriever: str = "hybrid",
    host: str | None = None,
    reranker_options: dict[str, Any] | None = None,
    config: ServeConfig | None = None,
    **settings: Any,
):
    """Load the reranker (and the index), and return the FastAPI app ``run`` serves (``host``: the address it
    will bind, accepted as a Host header). ``settings``: the server's settings by name (``config.SETTINGS``:
    ``max_documents``, ``api_key_file``, ``dynamic_batching``, ``deadline_ms``...; unknown names are a
    ``TypeError``). ``config``: the :class:`ServeConfig` they describe where the caller has built it already
    (``config_from_settings(settings)``, as ``run`` does); None: built here, before the model loads."""
    from crossrank.rerank import load_reranker
    from crossrank.serve.app import create_app

    values = resolve_settings(settings)
    if config is None:
        config = config_from_settings(values)  # before the model loads: a bad key file fails fast
    options = dict(reranker_options or {})
    remote = is_remote(model)
    if not remote:
        options.setdefault("long_documents", values["long_documents"])
        options.setdefault("batch_tokens", config.batch_tokens)
    if host is not None:
        config.allow_bound(host)
    if config.cache is not None:
        options.setdefault("cache", config.cache)
    reranker = load_reranker(model, **options)
    config.model_name = reranker.name
    if not remote and config.tokens_per_s is None:
        config.tokens_per_s = measured_tokens_per_s(reranker)
    loaded_index = None
    if index is not None:
        from crossrank.retrieve import load_index

        loaded_index = load_index(Path(index))
    return create_app(reranker, config=config, index=loaded_index, retriever=retriever,
                      search_deadline_ms=values["deadline_ms"])


def freeze_startup_heap() -> None:
    """Move every object alive now (the model's modules, torch, transformers, the app) out of the garbage
    collector's reach (``gc.freeze``), once the server is built and before it serves. A full collection
    otherwise walks that whole heap and stops every Python thread while it does, the event loop included, and a
    burst of requests sets off several (benchmarks/results/overload.md). What the requests allocate later is
    still collected as usual. vLLM does the same after its start-up."""
    gc.collect()
    gc.freeze()


def is_remote(model: str) -> bool:
    """A URL names a remote reranker (proxied), which takes no loading options."""
    return str(model).startswith(("http://", "https://"))


WARM_UP_TEXT = "A warm-up passage of ordinary words, long enough to fill the model's input. " * 40


def measured_tokens_per_s(reranker: Any, pairs: int = 4) -> float | None:
    """The reranker's throughput in the batcher's estimated tokens per second, timed on ``pairs`` full-length
    pairs after one untimed pair (lazy loads, first allocations). It seeds admission control, which otherwise
    admits everything until its worker has timed a step: a burst of clients at startup would all be admitted and
    most would expire. A pass this small understates the rate (fixed overhead), so the prior errs on the side of
    refusing; measurements of real steps take over within a few steps. None if the warm-up fails."""
    from crossrank.rerank.base import as_reranker
    from crossrank.serve.batcher import estimate_tokens

    reranker = as_reranker(reranker)
    max_length = int(reranker.info().get("max_length") or 512)
    # distinct texts: a score cache (or deduplication) must not answer the timed pass
    query, texts = "warm-up query", [f"Passage {i}. {WARM_UP_TEXT}" for i in range(pairs)]
    try:
        reranker.score(query, [f"Untimed passage. {WARM_UP_TEXT}"])
        start = time.perf_counter()
        reranker.score(query, texts)
        seconds = time.perf_counter() - start
    except Exception as exc:  # the first real request will report a broken model; startup goes on
        log.warning("throughput warm-up failed (%s): admission waits for the first measured step", exc)
        return None
    tokens = sum(estimate_tokens(query, t, max_length) for t in texts)
    log.info("warm-up: %d pairs in %.0f ms (~%.0f estimated tokens/s)", pairs, seconds * 1000, tokens / seconds)
    return tokens / max(seconds, 1e-6)


def run(
    model: str = "default",
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    index: str | os.PathLike | None = None,
    retriever: str = "hybrid",
    log_level: str = "info",
    reranker_options: dict[str, Any] | None = None,
    config: ServeConfig | None = None,
    **settings: Any,
) -> None:
    """Serve ``model`` over HTTP until interrupted (binds loopback unless ``host`` says otherwise).

    ``model``: "default", a hub id, a local checkpoint, or an http(s) URL (a remote reranker, proxied).
    ``index``: an index directory; adds ``POST /search`` (``retriever`` the default kind; the settings ``k`` and
    ``n``, its default K and N).
    ``settings``: the server's settings by name (``config.SETTINGS``, as ``crossrank serve`` takes them), e.g.
    ``api_key`` (or ``CROSSRANK_API_KEY``, or ``api_key_file``, which keeps it out of ``ps``): require
    ``Authorization: Bearer <key>`` (``/health`` and ``/`` stay open);
    ``allowed_hosts`` (or ``CROSSRANK_ALLOWED_HOSTS``; comma-separated, ``*`` for any): Host names served besides
    the loopback names and ``host``; other Host headers get 400 (DNS rebinding);
    ``dynamic_batching=False`` runs each request alone (comparison baseline);
    ``deadline_ms``: default time budget per request (30 s when unset) and the search pipeline's deadline.
    ``reranker_options``: extra keyword arguments for ``load_reranker`` (``dtype``, ``device``, ``max_length``...).
    ``ray=True``: the same app on Ray Serve, ``replicas`` copies (``ray_deploy.run_ray``).
    ``config``: the :class:`ServeConfig` the settings describe where the caller has built it already
    (``crossrank serve`` does, to fail before anything loads); None: built here (``config_from_settings``).
    """
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config is None:
        config = config_from_settings(settings)  # a bad setting or key file fails before anything loads
    if config.ray:
        from crossrank.serve.ray_deploy import run_ray

        run_ray(model, host=host, port=port, index=index, retriever=retriever, reranker_options=reranker_options,
                config=config, **settings)
        return
    import uvicorn

    from crossrank.serve.engines import engine_info

    app = build_app(model, index=index, retriever=retriever, host=host, reranker_options=reranker_options,
                    config=config, **settings)
    state = app.state.crossrank
    warn_exposed(host, state.config)
    log.info("crossrank: serving %s on http://%s:%d (batching %s%s, score cache %s)", state.model_name, host, port,
             "dynamic" if state.config.batching else "off", ", /search" if state.search else "",
             _cache_label(engine_info(state.engines.base).get("cache")))
    # uvicorn runs its loop on this thread: with inference_nice the model's threads (started by build_app) yield to it
    lower_other_threads(state.config.inference_nice)
    freeze_startup_heap()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=10,
                **uvicorn_options(state.config))


def _cache_label(stats: Any) -> str:
    """The score cache as the start-up line names it (a Redis URL with its password masked)."""
    if not isinstance(stats, dict):
        return "off"
    return str(stats.get("url") or stats.get("store") or "on")


def warn_exposed(host: str, config: ServeConfig) -> None:
    """Warn when ``host`` exposes the service without a key, or binds every address but serves few Host names."""
    if host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        log.warning("binding %s without an API key: anyone who can reach this port can use the service", host)
    if host in WILDCARD_HOSTS and "*" not in config.allowed_hosts:
        log.warning("bound to %s, but only Host names %s and the loopback names are served: add others with "
                    "--allowed-hosts (or '*')", host, list(config.allowed_hosts))


def uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    """``config``'s connection settings as ``uvicorn.Config`` keywords."""
    return {
        "http": _timed_h11(config.header_timeout_s, config.body_timeout_s),
        # not "auto": uvicorn would switch to uvloop wherever it is installed (ray[serve] brings it), and the
        # server's timings and tests were measured on asyncio's loop
        "loop": "asyncio",
        "ws": "none",
        "timeout_keep_alive": config.keep_alive_s,
        "limit_concurrency": config.max_connections + 1,  # uvicorn refuses at >= limit, the new one counted
        "h11_max_incomplete_event_size": config.max_header_bytes,
    }


def _timed_h11(header_s: float, body_s: float) -> type:
    """uvicorn's h11 protocol plus what uvicorn lacks: each request's headers, then its body, must arrive within
    ``header_s`` / ``body_s`` or the connection is closed (slow clients)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11(H11Protocol):
        _phase: str | None = None
        _timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._watch()

        def handle_events(self) -> None:
            super().handle_events()
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._arm(None)
            super().connection_lost(exc)

        def _watch(self) -> None:
            state = self.conn.their_state
            self._arm("headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None)

        def _arm(self, phase: str | None) -> None:
            if phase == self._phase:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._phase, self._timer = phase, None
            if phase is not None and not self.transport.is_closing():
                self._timer = self.loop.call_later(header_s if phase == "headers" else body_s, self._expire)

        def _expire(self) -> None:
            log.debug("closing a connection too slow sending its request %s", self._phase)
            self.transport.close()

    return TimedH11


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
        state = getattr(getattr(self.app, "state", None), "crossrank", None)
        if state is not None:
            state.config.allow_bound(self.host)
        options = uvicorn_options(state.config if state is not None else ServeConfig())
        config = uvicorn.Config(self.app, log_level=self.log_level, access_log=False, lifespan="on",
                                timeout_graceful_shutdown=2, **options)
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
