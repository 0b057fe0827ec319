"""A thread pool whose workers never keep the process alive.

``concurrent.futures.ThreadPoolExecutor`` joins its workers at interpreter exit (an ``atexit``-style hook joins
every worker thread, daemon or not), so a call that outlived its caller's deadline - a remote reranker retrying
against a service that accepts connections and never answers, a long forward pass - holds the process after it
has answered. :class:`DaemonThreadPoolExecutor` runs calls on daemon threads that nothing joins at exit: a
program ends as soon as its main thread does, whatever a timed-out call is still doing.

Use it only for work whose result nobody needs once its caller gave up (the pipeline's deadline-bounded reranker
calls): a daemon thread is stopped mid-way at exit, so it must not be writing anything that has to be complete.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from concurrent.futures import Executor, Future
from typing import Any, Callable

_ids = itertools.count()


class DaemonThreadPoolExecutor(Executor):
    """``ThreadPoolExecutor``'s interface (``submit``, ``map``, ``shutdown``, context manager) on daemon threads,
    started on demand up to ``max_workers`` (an idle worker is reused before a new one starts)."""

    def __init__(self, max_workers: int = 4, thread_name_prefix: str = "crossrank-worker") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = int(max_workers)
        self._prefix = thread_name_prefix or f"DaemonThreadPoolExecutor-{next(_ids)}"
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future = Future()
            self._work.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.max_workers:
                t = threading.Thread(target=self._run, name=f"{self._prefix}_{len(self._threads)}", daemon=True)
                t.start()
                self._threads.append(t)
            return future

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:  # shutdown: pass the signal on to the next worker
                self._work.put(None)
                return
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                    future.set_exception(exc)
                    del exc
                else:
                    future.set_result(result)
                    del result
            del future, fn, args, kwargs
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            self._work.put(None)
            threads = list(self._threads)
        if wait:
            for t in threads:
                t.join()


def lower_other_threads(by: int) -> int:
    """Raise the nice value of every thread of this process except the calling one by ``by`` (capped at 19);
    returns how many were changed. On Linux nice is per thread and a new thread inherits its creator's, so the
    threads these start later (an inference library's pool) stay lower too, while the caller's stay level.
    A server calls it from its event loop's thread once the model is loaded, so that under full load the loop
    still gets a core at once to refuse (429) or answer what it can: it needs little CPU, and the model loses
    only that little. Unprivileged (raising nice needs no rights); a no-op where /proc/self/task is absent."""
    if by <= 0 or not os.path.isdir("/proc/self/task"):
        return 0
    me, changed = threading.get_native_id(), 0
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        if tid == me:
            continue
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
            changed += 1
        except OSError:  # the thread ended meanwhile
            pass
    return changed
