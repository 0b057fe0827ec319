"""The daemon thread pool behind the pipeline's deadline-bounded reranker calls."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from crossrank.threads import DaemonThreadPoolExecutor


def test_it_behaves_like_a_thread_pool():
    pool = DaemonThreadPoolExecutor(max_workers=2, thread_name_prefix="t")
    try:
        assert pool.submit(pow, 2, 10).result(timeout=5) == 1024
        assert list(pool.map(abs, [-1, -2, 3])) == [1, 2, 3]
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(timeout=5)
        names = set()
        gate = threading.Event()

        def held():
            names.add(threading.current_thread().name)
            assert threading.current_thread().daemon
            gate.wait(5)

        futures = [pool.submit(held) for _ in range(4)]
        time.sleep(0.2)
        assert len(pool._threads) == 2  # never more than max_workers
        gate.set()
        for f in futures:
            f.result(timeout=5)
        assert names <= {"t_0", "t_1"}
    finally:
        pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(pow, 2, 2)


def test_shutdown_cancels_queued_work_without_waiting():
    pool = DaemonThreadPoolExecutor(max_workers=1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 5)
    queued = pool.submit(pow, 2, 2)
    t0 = time.monotonic()
    pool.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - t0 < 0.5 and queued.cancelled()
    gate.set()
    assert running.result(timeout=5) is True


@pytest.mark.slow
def test_a_process_exits_while_a_timed_out_reranker_call_still_runs(tmp_path):
    """A reranker that ignores its budget and sleeps 60 s: the search falls back at the deadline and the
    interpreter exits then (a ThreadPoolExecutor worker would be joined at exit: 60 s)."""
    script = textwrap.dedent("""
        import time
        from crossrank.pipeline import Pipeline
        from crossrank.corpus import chunk_documents
        from crossrank.retrieve import BM25Retriever
        from crossrank.types import Document

        class Stuck:
            name = "stuck"
            def score(self, query, texts):
                time.sleep(60)

        docs = [Document(id=f"d{i}", text=f"volcano magma number {i}") for i in range(5)]
        pipe = Pipeline(BM25Retriever(chunk_documents(docs, max_tokens=0)), Stuck(), k=5, n=3)
        pipe.warm_up_ms = 0.0  # no automatic warm-up: go straight to the deadline-bounded call
        result = pipe.search("volcano", deadline_ms=300)
        print(result.reranked, len(result.hits))
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "3"]
    assert elapsed < 20, elapsed



LOWER_OTHERS = textwrap.dedent("""
    import os, threading
    from crossrank.threads import lower_other_threads

    def nice(tid=0):
        return os.getpriority(os.PRIO_PROCESS, tid)

    go, made, tids = threading.Event(), threading.Event(), {}

    def worker():
        tids["worker"] = threading.get_native_id()
        made.set()
        go.wait(10)
        child = threading.Thread(target=lambda: tids.setdefault("child", nice(threading.get_native_id())))
        child.start()
        child.join()

    mine = nice()
    t = threading.Thread(target=worker)
    t.start()
    made.wait(10)
    before = nice(tids["worker"])
    changed = lower_other_threads(3)
    after, mine_after = nice(tids["worker"]), nice()
    go.set()
    t.join()
    print(changed, before, after, mine, mine_after, tids["child"], lower_other_threads(0))
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread nice needs Linux /proc")
def test_lower_other_threads_lowers_every_thread_but_the_callers_and_their_children_inherit():
    """The server's event loop thread keeps its priority; the model's threads (and the threads they start later)
    run ``by`` nice steps lower, so the loop gets a core at once under full load. In a child process: nice cannot
    be lowered back without privileges."""
    out = subprocess.run([sys.executable, "-c", LOWER_OTHERS], capture_output=True, text=True, timeout=60, check=True)
    changed, before, after, mine, mine_after, child, none = map(int, out.stdout.split())
    assert changed >= 1 and after == min(19, before + 3) and child == after
    assert mine_after == mine  # the caller's own thread is left as it was
    assert none == 0
