"""Dynamic (continuous) batching, TEI-style: a router admits requests into a bounded queue, ONE worker thread
packs (query, document) pairs from every waiting request into forward passes under a token budget, and each
request's future resolves when its last pair is scored.

No HTTP here: the app submits jobs and awaits futures; ``BatchedReranker`` lets the pipeline (or any caller)
go through the same queue. Knows only the ``score_pairs(pairs) -> RerankScores`` shape of the engine.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from crossrank.errors import CrossrankError, RerankerUnavailable
from crossrank.rerank.base import RankedText, RerankScores, rank_by_scores

log = logging.getLogger("crossrank.serve")

Pair = tuple[str, str]
ScoreFn = Callable[[Sequence[Pair], dict[str, Any]], RerankScores]


class Overloaded(RerankerUnavailable):
    """The queue is full: try again later (HTTP 429)."""


class DeadlineExceeded(RerankerUnavailable):
    """The request's deadline passed before it was scored (HTTP 504)."""


class Cancelled(CrossrankError):
    """The caller went away (client disconnect); nobody waits for the answer."""


class BatchObserver(Protocol):
    """What the batcher reports (the app wires these to Prometheus)."""

    def on_pass(self, n_pairs: int, n_requests: int, tokens: int, seconds: float) -> None: ...

    def on_queue_time(self, seconds: float) -> None: ...

    def on_depth(self, pairs: int, requests: int) -> None: ...

    def on_drop(self, reason: str) -> None: ...


@dataclass(slots=True)
class JobResult:
    """A finished job: scores in input order, plus where its time went."""

    scores: RerankScores
    queue_ms: float
    inference_ms: float
    passes: int


@dataclass(eq=False)
class Job:
    query: str
    texts: list[str]
    deadline: float  # time.monotonic() seconds
    options: dict[str, Any]
    est_tokens: list[int]
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None
    next: int = 0  # first pair not yet taken into a pass
    scored: int = 0
    scores: list[float] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    tokens: int = 0
    cache_hits: int = 0
    inference_s: float = 0.0
    passes: int = 0
    cancelled: bool = False
    failed: bool = False

    def __post_init__(self) -> None:
        self.scores = [math.nan] * len(self.texts)
        self.truncated = [False] * len(self.texts)

    @property
    def remaining(self) -> int:
        return len(self.texts) - self.next

    def cancel(self) -> None:
        """Mark as abandoned: pairs not yet run are dropped before inference."""
        self.cancelled = True


def estimate_tokens(query: str, text: str, max_length: int = 512) -> int:
    """Cheap token estimate for packing (about 4 characters per WordPiece token, plus [CLS]/[SEP]/[SEP])."""
    return max(4, min(max_length, (len(query) + len(text)) // 4 + 3))


class DynamicBatcher:
    """Bounded queue + one inference worker.

    ``batching=True``: each step takes pairs first-come first-served (oldest request first) from every waiting
    request until their estimated tokens would pass ``batch_tokens * step_passes`` (or ``max_batch_pairs``), and
    hands them, sorted by length, to one ``score_pairs`` call; the engine packs them into forward passes of
    ``batch_tokens`` padded tokens each. Several passes' worth per step lets the engine group similar lengths
    (less padding on CPU) while a request arriving meanwhile still waits at most one step. A large request may
    span several steps, and small ones arriving meanwhile ride along in the same forward passes.
    ``batching=False``: the oldest request runs alone, all its pairs in one engine call, in arrival order.
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        *,
        batching: bool = True,
        batch_tokens: int = 16384,
        max_batch_pairs: int = 256,
        step_passes: int = 4,
        max_queue_pairs: int = 8192,
        max_queue_requests: int = 512,
        batch_wait_ms: float = 0.0,
        max_length: int = 512,
        count_tokens: Callable[[str, str], int] | None = None,
        observer: BatchObserver | None = None,
        name: str = "crossrank-batcher",
    ) -> None:
        self.score_fn = score_fn
        self.batching = batching
        self.batch_tokens = batch_tokens
        self.max_batch_pairs = max_batch_pairs
        self.step_tokens = batch_tokens * max(1, step_passes)
        self.max_queue_pairs = max_queue_pairs
        self.max_queue_requests = max_queue_requests
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.max_length = max_length
        self.count_tokens = count_tokens
        self.observer = observer
        self.name = name
        self._queue: deque[Job] = deque()
        self._pending_pairs = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.busy = False

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker; jobs still queued fail with ``RerankerUnavailable``."""
        with self._cond:
            self._stopping = True
            dropped = list(self._queue)
            self._queue.clear()
            self._pending_pairs = 0
            self._cond.notify_all()
        for job in dropped:
            _fail(job, RerankerUnavailable("the server is shutting down"))
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def depth(self) -> tuple[int, int]:
        """(pairs, requests) waiting."""
        with self._cond:
            return self._pending_pairs, len(self._queue)

    # ---------------------------------------------------------------- router
    def submit(
        self,
        query: str,
        texts: Sequence[str],
        *,
        deadline_s: float | None = None,
        options: dict[str, Any] | None = None,
    ) -> Job:
        """Queue a request; its ``future`` resolves to a ``JobResult``. Raises ``Overloaded`` when the queue is full.

        ``deadline_s`` is the time budget in seconds from now (None: no deadline)."""
        texts = list(texts)
        now = time.monotonic()
        deadline = now + deadline_s if deadline_s is not None else math.inf
        est = [self._estimate(query, t) for t in texts]
        job = Job(query=query, texts=texts, deadline=deadline, options=dict(options or {}), est_tokens=est,
                  enqueued=now)
        if not texts:
            job.future.set_result(JobResult(RerankScores(scores=[], truncated=[]), 0.0, 0.0, 0))
            return job
        if not self.alive and not self._stopping:
            self.start()
        with self._cond:
            if self._stopping:
                raise RerankerUnavailable("the server is shutting down")
            busy = bool(self._queue)
            if busy and (
                len(self._queue) >= self.max_queue_requests or self._pending_pairs + len(texts) > self.max_queue_pairs
            ):
                if self.observer:
                    self.observer.on_drop("overloaded")
                raise Overloaded(
                    f"overloaded: {self._pending_pairs} pairs in {len(self._queue)} requests are queued "
                    f"(limits {self.max_queue_pairs} pairs, {self.max_queue_requests} requests)"
                )
            self._queue.append(job)
            self._pending_pairs += len(texts)
            self._report_depth()
            self._cond.notify()
        return job

    def _estimate(self, query: str, text: str) -> int:
        if self.count_tokens is not None:
            try:
                return max(1, min(self.max_length, int(self.count_tokens(query, text))))
            except Exception:  # an estimate only; never fail a request over it
                pass
        return estimate_tokens(query, text, self.max_length)

    def _report_depth(self) -> None:
        if self.observer:
            self.observer.on_depth(self._pending_pairs, len(self._queue))

    # ---------------------------------------------------------------- worker
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                if self.batching and self.batch_wait_s > 0:
                    self._linger()
                taken = self._take()
            if taken:
                self._run(taken)

    def _linger(self) -> None:
        """Wait up to ``batch_wait_s`` for the queue to fill one pass (lock held; ``wait`` releases it)."""
        until = time.monotonic() + self.batch_wait_s
        while not self._stopping:
            if self._pending_pairs >= self.max_batch_pairs:
                return
            left = until - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _take(self) -> list[tuple[Job, int]]:
        """Drop dead jobs, then pick the pairs of the next pass (lock held)."""
        now = time.monotonic()
        for job in list(self._queue):
            reason = "deadline" if now > job.deadline else "cancelled" if job.cancelled else None
            if reason is None:
                continue
            self._queue.remove(job)
            self._pending_pairs -= job.remaining
            if self.observer:
                self.observer.on_drop(reason)
            if reason == "cancelled":
                _fail(job, Cancelled("the client went away"))
            else:
                waited = (now - job.enqueued) * 1000
                _fail(job, DeadlineExceeded(f"deadline exceeded after {waited:.0f} ms (dropped before inference)"))
        taken: list[tuple[Job, int]] = []
        if not self._queue:
            self._report_depth()
            return taken
        if not self.batching:
            job = self._queue.popleft()
            taken = [(job, i) for i in range(job.next, len(job.texts))]
            self._pending_pairs -= job.remaining
            job.next = len(job.texts)
        else:
            tokens = 0
            options = self._queue[0].options
            while self._queue:
                job = self._queue[0]
                if job.options != options:
                    break  # a step shares one set of engine options; the next job waits for the next step
                while job.next < len(job.texts):
                    est = job.est_tokens[job.next]
                    if taken and (tokens + est > self.step_tokens or len(taken) >= self.max_batch_pairs):
                        break
                    taken.append((job, job.next))
                    tokens += est
                    job.next += 1
                    self._pending_pairs -= 1
                if job.next < len(job.texts):
                    break  # the step is full
                self._queue.popleft()
        self._report_depth()
        return taken

    def _run(self, taken: list[tuple[Job, int]]) -> None:
        jobs = list(dict.fromkeys(job for job, _ in taken))
        start = time.monotonic()
        for job in jobs:
            if job.started is None:
                job.started = start
                if self.observer:
                    self.observer.on_queue_time(start - job.enqueued)
        order = sorted(range(len(taken)), key=lambda j: taken[j][0].est_tokens[taken[j][1]])
        taken = [taken[j] for j in order]
        self.busy = True
        try:
            try:
                result = self.score_fn([(job.query, job.texts[i]) for job, i in taken], jobs[0].options)
                if len(result.scores) != len(taken):
                    raise RuntimeError(f"the engine returned {len(result.scores)} scores for {len(taken)} pairs")
            except Exception as exc:
                if len(jobs) > 1:
                    # Isolate: one bad request must not fail the others packed with it.
                    for job in jobs:
                        self._run_alone(job, [(j, i) for j, i in taken if j is job])
                    return
                self._fail_job(jobs[0], exc)
                return
            seconds = time.monotonic() - start
            self._deliver(taken, result, seconds)
            self.passes += 1
            if self.observer:
                tokens = result.tokens or sum(job.est_tokens[i] for job, i in taken)
                self.observer.on_pass(len(taken), len(jobs), tokens, seconds)
        finally:
            self.busy = False

    def _run_alone(self, job: Job, taken: list[tuple[Job, int]]) -> None:
        start = time.monotonic()
        try:
            result = self.score_fn([(job.query, job.texts[i]) for _, i in taken], job.options)
            if len(result.scores) != len(taken):
                raise RuntimeError(f"the engine returned {len(result.scores)} scores for {len(taken)} pairs")
        except Exception as exc:
            self._fail_job(job, exc)
            return
        self._deliver(taken, result, time.monotonic() - start)

    def _fail_job(self, job: Job, exc: BaseException) -> None:
        if not isinstance(exc, CrossrankError):
            log.error("inference failed for a request of %d pairs", len(job.texts), exc_info=exc)
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
                self._pending_pairs -= job.remaining
                self._report_depth()
        job.failed = True
        _fail(job, exc)

    def _deliver(self, taken: list[tuple[Job, int]], result: RerankScores, seconds: float) -> None:
        truncated = result.truncated if len(result.truncated) == len(taken) else [False] * len(taken)
        total = max(1, len(taken))
        seen: set[int] = set()
        for (job, i), score, cut in zip(taken, result.scores, truncated):
            if job.failed:
                continue
            job.scores[i] = float(score)
            job.truncated[i] = bool(cut)
            job.scored += 1
            if id(job) not in seen:
                seen.add(id(job))
                job.inference_s += seconds
                job.passes += 1
        # Tokens and cache hits are reported per pass; share them out by pair count.
        counts: dict[int, int] = {}
        for job, _ in taken:
            counts[id(job)] = counts.get(id(job), 0) + 1
        for job in {id(j): j for j, _ in taken}.values():
            share = counts[id(job)] / total
            job.tokens += round(result.tokens * share)
            job.cache_hits += round(result.cache_hits * share)
            if job.scored == len(job.texts) and not job.future.done() and not job.failed:
                queue_ms = ((job.started or job.enqueued) - job.enqueued) * 1000
                scores = RerankScores(scores=job.scores, truncated=job.truncated, cache_hits=job.cache_hits,
                                      tokens=job.tokens)
                _resolve(job, JobResult(scores, queue_ms, job.inference_s * 1000, job.passes))


def _resolve(job: Job, result: JobResult) -> None:
    try:
        job.future.set_result(result)
    except Exception:  # already resolved or cancelled
        pass


def _fail(job: Job, exc: BaseException) -> None:
    try:
        if not job.future.done():
            job.future.set_exception(exc)
    except Exception:
        pass


class BatchedReranker:
    """A ``Reranker`` whose scoring goes through a ``DynamicBatcher`` (so pipeline traffic shares the queue).

    Queue full or deadline passed raise ``RerankerUnavailable`` subclasses, on which the pipeline falls back."""

    def __init__(self, batcher: DynamicBatcher, name: str, *, timeout_s: float | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.batcher = batcher
        self.name = name
        self.timeout_s = timeout_s
        self._info = dict(info or {"model": name})

    def info(self) -> dict[str, Any]:
        """The batched engine's ``info()`` (its recommendation included, so pipelines on top fuse as it says)."""
        return dict(self._info)

    def score(self, query: str, texts: Sequence[str], *, timeout_s: float | None = None) -> RerankScores:
        """Queue the pairs and wait; ``timeout_s`` (the caller's remaining budget, e.g. the pipeline's deadline)
        tightens the job's deadline, so work nobody waits for any more is dropped from the queue."""
        budget = self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s or math.inf)
        job = self.batcher.submit(query, texts, deadline_s=budget)
        try:
            return job.future.result(timeout=None if budget is None else budget + 1.0).scores
        except TimeoutError as exc:
            job.cancel()
            raise DeadlineExceeded(f"reranking took longer than {budget:.1f} s") from exc

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[RankedText]:
        return rank_by_scores(texts, self.score(query, texts).scores, top_n)
