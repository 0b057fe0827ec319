"""Dynamic (continuous) batching, TEI-style: a router admits requests into a bounded queue, ONE worker thread
packs (query, document) pairs from every waiting request into forward passes under a token budget, and each
request's future resolves when its last pair is scored.

No HTTP here: the app submits jobs and awaits futures; ``BatchedReranker`` lets the pipeline (or any caller)
go through the same queue. Knows only the ``score_pairs(pairs) -> RerankScores`` shape of the engine.

Admission is deadline-aware (see :class:`DynamicBatcher`): a request that the measured throughput says cannot
finish before its deadline is refused at once (``Overloaded`` with ``retry_after_s``: HTTP 429) instead of being
queued to expire, and work whose deadline passed, or whose caller went away (:class:`CancelScope`), is shed
before it is scored.
"""

from __future__ import annotations

import bisect
import contextvars
import itertools
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

from crossrank.errors import CrossrankError, InputError, RerankerUnavailable
from crossrank.rerank.base import (
    InputCount,
    RankedText,
    RerankScores,
    check_instruction,
    rank_by_scores,
    score_by_query_within,
)
from crossrank.serve.config import ServeConfig

log = logging.getLogger("crossrank.serve")
# the queue's defaults are the server's (ServeConfig: the one definition); admission_safety is not: a bare
# batcher predicts with its throughput as measured
_SERVER = ServeConfig()

Pair = tuple[str, str]
ScoreFn = Callable[[Sequence[Pair], dict[str, Any]], RerankScores]


class Overloaded(RerankerUnavailable):
    """Refused at admission (HTTP 429): the queue is full (``reason="queue_full"``) or the request is predicted
    to miss its deadline (``reason="deadline"``). ``retry_after_s``: whole seconds (>= 1) until the work queued
    now should have drained enough for it to fit."""

    def __init__(self, message: str, *, reason: str = "queue_full", retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = max(1, int(retry_after_s))


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

    def on_reject(self, reason: str) -> None: ...

    def on_rate(self, tokens_per_s: float) -> None: ...


@dataclass(slots=True)
class JobResult:
    """A finished job: scores in input order, plus where its time went."""

    scores: RerankScores
    queue_ms: float
    inference_ms: float


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
    cancelled: bool = False
    failed: bool = False
    seq: int = 0  # arrival order (ties in the queue order)
    left_tokens: int = 0  # estimated tokens of the pairs not yet taken into a step
    owner: "DynamicBatcher | None" = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.scores = [math.nan] * len(self.texts)
        self.truncated = [False] * len(self.texts)
        self.left_tokens = sum(self.est_tokens)

    @property
    def remaining(self) -> int:
        return len(self.texts) - self.next

    def cancel(self) -> None:
        """Abandon the job (the caller went away): its pairs not yet run are dropped from the queue now, and its
        future fails with ``Cancelled`` at once (pairs already in a running forward pass finish for nobody)."""
        self.cancelled = True
        if self.owner is not None:
            self.owner._cancel(self)


@dataclass(eq=False, slots=True)
class Reservation:
    """A request :meth:`DynamicBatcher.screen` let in whose body is still being read and parsed: its estimated
    work counts in the screening of requests that arrive meanwhile, until it is submitted or given up
    (:meth:`DynamicBatcher.release`). ``left_tokens`` and ``deadline`` as a queued ``Job``'s."""

    deadline: float
    left_tokens: int
    pairs: int


def _by_deadline(queue: Sequence[Any], deadline: float) -> int:
    """Where an entry due at ``deadline`` goes in ``queue`` by earliest deadline first, after entries due at the
    same time (ties by arrival): scanning from the end, before every entry due later."""
    pos = len(queue)
    while pos > 0 and queue[pos - 1].deadline > deadline:
        pos -= 1
    return pos


def estimate_tokens(query: str, text: str, max_length: int = 512) -> int:
    """Cheap token estimate for packing (about 4 characters per WordPiece token, plus [CLS]/[SEP]/[SEP])."""
    return max(4, min(max_length, (len(query) + len(text)) // 4 + 3))


class DynamicBatcher:
    """Bounded queue + one inference worker, with deadline-aware admission.

    Packing. ``batching=True``: each step takes pairs, in queue order, from every waiting request until their
    estimated tokens would pass ``batch_tokens * step_passes`` (or ``max_batch_pairs``), and hands them, sorted
    by length, to one ``score_pairs`` call; the engine packs them into forward passes of ``batch_tokens`` padded
    tokens each. Several passes' worth per step lets the engine group similar lengths (less padding on CPU)
    while a request arriving meanwhile still waits at most one step. A large request may span several steps,
    and small ones arriving meanwhile ride along in the same forward passes. ``batching=False``: the request at
    the head of the queue runs alone, all its pairs in one engine call.

    Throughput. After every step (one engine call: up to ``step_passes`` forward passes) the worker updates an
    exponentially weighted estimate of estimated tokens per second (each step's tokens and seconds are added to
    sums that decay by ``RATE_DECAY`` per step, so a long step weighs more than a tiny one, whose fixed overhead
    would understate the rate). The same token estimate sizes the queue, so its bias cancels out. The worker's
    first step is not measured (it pays for lazy loads and cold caches).

    Queue order (the scheduling rule). Earliest deadline first, ties by arrival. One exception, so a short
    request does not wait behind a long one: a new request moves ahead of each queued request that has more
    estimated tokens left than it has, as long as that request is still predicted to meet its deadline with the
    new one's work added before it; nothing goes ahead of one predicted to miss it (by then admission's
    headroom is all it has left). A long request therefore is only ever delayed by work that fits in its slack,
    and a short one usually waits at most one step.

    Admission (``submit``). Before any step has been measured, or when the worker is idle (nothing queued or
    running: trying costs nobody anything), every request is admitted, within the queue bounds. Otherwise each
    request's completion is predicted as: now + what is left of the running step + the estimated tokens queued
    up to the end of the step that will hold its last pair (steps fill in queue order, so its own tokens, those
    ahead of it and what rides along after it, up to a step's worth) / rate. The request is refused at once with
    ``Overloaded(reason="deadline")`` when that prediction is after its deadline, or when admitting it would
    push a queued request that is on course for its deadline past it; ``retry_after_s`` is the predicted
    overshoot (if it could not fit even alone: the time to drain what is ahead of it, after which it would be
    tried alone), rounded up, at least 1 s.
    The queue bounds (``max_queue_pairs`` / ``max_queue_requests``) still apply: ``reason="queue_full"``.

    Screening (``screen``). The same rule, applied before a request's body is read (the HTTP gate calls it with
    the deadline and the body size its headers give): a request that ``submit`` would refuse even at the
    fewest tokens its body is likely to hold is refused without being read or parsed (``reason=
    "deadline_early"`` / ``"queue_full_early"``), so under overload the CPU that parsing it would take stays
    with the model. It errs on the side of admitting: what it lets through still meets ``submit``. What it lets
    through is held as a :class:`Reservation` until ``submit(reservation=...)`` (or :meth:`release`), and counts
    as queued in later screenings: when a burst of requests arrives at once, the first ones' bodies are still
    being read while the rest are screened, and without it all of them would see an empty queue.

    Shedding. Before every step, jobs whose deadline has passed (``DeadlineExceeded``; reason ``"deadline"``) or
    that were cancelled are dropped, including what is left of a partly scored one, so no step is spent on work
    nobody waits for. ``Job.cancel`` removes a job from the queue at once. Refusals are reported to the
    observer's ``on_reject(reason)``, shed work to ``on_drop(reason)``.
    """

    RATE_DECAY = 0.7
    PER_BYTE_WINDOW = 64  # recent requests whose tokens per body byte screen() takes the lowest of
    # screen()'s tokens per body byte before any request has taught it: a lower bound for JSON text (the token
    # estimate is 4 characters a token, and a character is at most 6 bytes of JSON: a \uXXXX escape)
    PER_BYTE_FLOOR = 1 / 24

    def __init__(
        self,
        score_fn: ScoreFn,
        *,
        batching: bool = _SERVER.batching,
        batch_tokens: int = _SERVER.batch_tokens,
        max_batch_pairs: int = _SERVER.max_batch_pairs,
        step_passes: int = _SERVER.step_passes,
        max_queue_pairs: int = _SERVER.max_queue_pairs,
        max_queue_requests: int = _SERVER.max_queue_requests,
        batch_wait_ms: float = _SERVER.batch_wait_ms,
        max_length: int = 512,
        observer: BatchObserver | None = None,
        name: str = "crossrank-batcher",
        tokens_per_s: float | None = None,
        admission_safety: float = 1.0,
    ) -> None:
        """``tokens_per_s``: a prior for the throughput estimate (e.g. from a benchmark of this engine), so
        admission predicts from the first request; it weighs as one second of measurement and fades as steps are
        measured. None (default): admit everything until the worker has measured. ``admission_safety``: admission
        predicts with this share of the estimate (1.0: as measured; less leaves headroom for its error)."""
        self.score_fn = score_fn
        self.batching = batching
        self.batch_tokens = batch_tokens
        self.max_batch_pairs = max_batch_pairs
        self.step_tokens = batch_tokens * max(1, step_passes)
        self.max_queue_pairs = max_queue_pairs
        self.max_queue_requests = max_queue_requests
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.max_length = max_length
        self.observer = observer
        self.name = name
        self.admission_safety = admission_safety
        self._queue: list[Job] = []  # in scheduling order (see the class docstring)
        self._pending_pairs = 0
        self._seq = itertools.count()
        self._rate_tokens = float(tokens_per_s) if tokens_per_s and tokens_per_s > 0 else 0.0
        self._rate_seconds = 1.0 if self._rate_tokens else 0.0  # decayed sums behind the throughput estimate
        # estimated tokens per body byte of recent requests (submit's body_bytes): screen() sizes a body by them
        self._per_byte: deque[float] = deque(maxlen=self.PER_BYTE_WINDOW)
        self._reserved: list[Reservation] = []  # screened in, not yet submitted (by deadline)
        self._step_tokens_now = 0  # estimated tokens of the step the worker is running (0: none)
        self._step_started = 0.0
        self._steps_timed = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
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

    @property
    def tokens_per_s(self) -> float | None:
        """The measured throughput in estimated tokens per second (None before the first step)."""
        return self._rate_tokens / self._rate_seconds if self._rate_seconds > 0 and self._rate_tokens > 0 else None

    def backlog_s(self) -> float | None:
        """Predicted seconds until everything queued now is scored (None before any measurement)."""
        with self._cond:
            rate = self.tokens_per_s
            if rate is None:
                return None
            return self._running_left(time.monotonic(), rate) + sum(j.left_tokens for j in self._queue) / rate

    def _running_left(self, now: float, rate: float) -> float:
        """Predicted seconds left of the step being run (lock held)."""
        if not self._step_tokens_now:
            return 0.0
        return max(0.0, self._step_started + self._step_tokens_now / rate - now)

    # ---------------------------------------------------------------- router
    def submit(
        self,
        query: str,
        texts: Sequence[str],
        *,
        deadline_s: float | None = None,
        options: dict[str, Any] | None = None,
        body_bytes: int | None = None,
        reservation: Reservation | None = None,
    ) -> Job:
        """Queue a request; its ``future`` resolves to a ``JobResult``. Raises ``Overloaded`` when the queue is full
        or the request is predicted to miss its deadline.

        ``deadline_s`` is the time budget in seconds from now (None: no deadline). ``body_bytes``: the size of
        the HTTP body the request came in, if any; it teaches :meth:`screen` how many tokens a byte holds.
        ``reservation``: what :meth:`screen` returned for this request, released here (its real work replaces it)."""
        texts = list(texts)
        now = time.monotonic()
        deadline = now + deadline_s if deadline_s is not None else math.inf
        est = [self._estimate(query, t) for t in texts]
        job = Job(query=query, texts=texts, deadline=deadline, options=dict(options or {}), est_tokens=est,
                  enqueued=now)
        if not texts:
            self.release(reservation)
            job.future.set_result(JobResult(RerankScores(scores=[], truncated=[]), 0.0, 0.0))
            return job
        if not self.alive and not self._stopping:
            self.start()
        with self._cond:
            self._forget(reservation)  # under the same lock as the job's queueing: no screen sees neither
            if self._stopping:
                raise RerankerUnavailable("the server is shutting down")
            if body_bytes:
                self._per_byte.append(job.left_tokens / body_bytes)
            rate = self.tokens_per_s
            try:
                self._check_bounds(len(texts), now, rate)
                pos = self._place(job.deadline, job.left_tokens, len(texts), now, self._safe(rate))
            except Overloaded as exc:
                self._reject(exc.reason)
                raise
            job.seq = next(self._seq)
            job.owner = self
            self._queue.insert(pos, job)
            self._pending_pairs += len(texts)
            self._report_depth()
            self._cond.notify()
        return job

    def screen(self, deadline_s: float, body_bytes: int | None = None) -> Reservation | None:
        """Admission before a request's body is read (the HTTP gate calls it from the headers alone): raises
        ``Overloaded`` (reason ``"deadline_early"`` or ``"queue_full_early"``, counted by the observer) when
        ``submit`` would refuse a request with this deadline and a body of ``body_bytes`` bytes, so the server
        spends nothing on reading and parsing it. The rule is ``submit``'s, over the queue and the reservations
        of requests screened in before it; the request's size is a low guess: its tokens at the lowest tokens
        per byte of the last ``PER_BYTE_WINDOW`` requests (:data:`PER_BYTE_FLOOR` before any; without
        ``body_bytes`` 0: then only a request that could not even start in time is refused), in pairs of the
        queue's mean size (the pairs only size the steps). Returns the request's :class:`Reservation` (None
        while stopping); pass it to ``submit``, or to :meth:`release` when the request ends without one."""
        now = time.monotonic()
        with self._cond:
            if self._stopping:
                return None  # submit answers that
            self._reserved = [r for r in self._reserved if r.deadline > now]  # those past it cannot matter
            rate = self.tokens_per_s
            per_byte = min(self._per_byte) if self._per_byte else self.PER_BYTE_FLOOR
            own = math.floor(per_byte * body_bytes) if body_bytes else 0
            if not self._per_byte:  # untaught, the body may be one long document: its estimate is capped per pair
                own = min(own, self.max_length)
            queue = self._with_reserved()
            pending = self._pending_pairs + sum(r.pairs for r in self._reserved)
            queued = sum(j.left_tokens for j in queue)
            pairs = max(1, round(own * pending / queued)) if queued else 1
            try:
                self._check_bounds(0, now, rate)  # its own pairs unknown: only the bounds the queue is at already
                self._place(now + deadline_s, own, pairs, now, self._safe(rate), queue, pending)
            except Overloaded as exc:
                reason = f"{exc.reason}_early"
                self._reject(reason)
                raise Overloaded(f"{exc} (refused before its body was read)", reason=reason,
                                 retry_after_s=exc.retry_after_s) from None
            reservation = Reservation(now + deadline_s, own, pairs)
            bisect.insort(self._reserved, reservation, key=lambda r: r.deadline)
            return reservation

    def release(self, reservation: Reservation | None) -> None:
        """Forget a :meth:`screen` reservation (submitted, refused, or the request ended first); idempotent."""
        with self._cond:
            self._forget(reservation)

    def _forget(self, reservation: Reservation | None) -> None:
        if reservation is not None and reservation in self._reserved:  # lock held
            self._reserved.remove(reservation)

    def reserved(self) -> int:
        """Requests screened in whose bodies are still being read (their reservations held)."""
        with self._cond:
            return len(self._reserved)

    def _with_reserved(self) -> list[Any]:
        """The queue with the reservations placed in it by deadline, after queued jobs of the same deadline
        (lock held): the work a screened request would find ahead of it once those bodies are parsed."""
        merged: list[Any] = list(self._queue)
        for r in self._reserved:
            merged.insert(_by_deadline(merged, r.deadline), r)
        return merged

    def _safe(self, rate: float | None) -> float | None:
        """The rate admission predicts with: ``admission_safety`` of the measured one."""
        return rate * self.admission_safety if rate is not None else None

    def _check_bounds(self, pairs: int, now: float, rate: float | None) -> None:
        """``Overloaded(reason="queue_full")`` when a request of ``pairs`` pairs does not fit the queue bounds; an
        empty queue takes any request, so a large one is never starved (lock held)."""
        if not self._queue or (
            len(self._queue) < self.max_queue_requests and self._pending_pairs + pairs <= self.max_queue_pairs
        ):
            return
        retry = 1.0
        if rate is not None:  # until enough of the queue has drained for this one to fit
            excess = self._pending_pairs + pairs - self.max_queue_pairs
            share = max(0, excess) / max(1, self._pending_pairs)
            retry = self._running_left(now, rate) + share * sum(j.left_tokens for j in self._queue) / rate
        raise Overloaded(
            f"{self._pending_pairs} pairs in {len(self._queue)} requests are queued "
            f"(limits {self.max_queue_pairs} pairs, {self.max_queue_requests} requests)",
            reason="queue_full", retry_after_s=math.ceil(retry),
        )

    def _place(self, deadline: float, own: int, pairs: int, now: float, rate: float | None,
               queue: list[Any] | None = None, pending_pairs: int | None = None) -> int:
        """Where a request (``own`` estimated tokens in ``pairs`` pairs, due at ``deadline``) goes in ``queue``
        (default: the queue; ``pending_pairs``: its pairs), or ``Overloaded`` when it is predicted to miss its
        deadline there, or to make a queued request that is on course miss its own (lock held; the rule is in
        the class docstring). O(queued requests)."""
        queue = self._queue if queue is None else queue
        pending_pairs = self._pending_pairs if pending_pairs is None else pending_pairs
        pos = _by_deadline(queue, deadline)
        if rate is None:  # nothing measured yet: admit; short ones still go ahead of long ones
            while pos > 0 and queue[pos - 1].left_tokens > own:
                pos -= 1
            return pos
        if not queue and not self._step_tokens_now:
            return pos  # idle: trying costs nobody anything
        start = now + self._running_left(now, rate)
        ends = list(itertools.accumulate(j.left_tokens for j in queue))  # tokens through each queued job
        total = ends[-1] if ends else 0
        finish = self._finish_fn(start, rate, total + own, pending_pairs + pairs)

        def late(i: int, through: int, all_tokens: int) -> bool:
            return finish(through, all_tokens) > queue[i].deadline

        while pos > 0:  # go ahead of longer ones that have the slack
            i = pos - 1
            if queue[i].left_tokens <= own:
                break
            if late(i, ends[i] + own, total + own):
                # it would make that one miss its deadline, or one predicted to miss it later still: that
                # prediction counts on admission_safety of the rate, so such a request may still make it if
                # nothing more goes ahead of it (letting others pass it made it expire: overload.md)
                break
            pos -= 1
        ahead = ends[pos - 1] if pos > 0 else 0
        done = finish(ahead + own, total + own)
        if done > deadline:
            fits_alone = start + own / rate <= deadline
            # could it never fit, retrying helps only once what is ahead has drained (then it is tried alone)
            overshoot = done - deadline if fits_alone else finish(ahead, total) - now
            raise Overloaded(
                f"cannot finish before its deadline: predicted {(done - now) * 1000:.0f} ms "
                f"({(finish(ahead, total) - now) * 1000 if pos else 0:.0f} ms of queued work ahead at "
                f"~{rate:.0f} tokens/s), budget {(deadline - now) * 1000:.0f} ms",
                reason="deadline", retry_after_s=math.ceil(overshoot),
            )
        for i in range(len(queue)):  # those it shares a step with, or goes ahead of, finish later
            through = ends[i] + (own if i >= pos else 0)
            if not late(i, ends[i], total) and late(i, through, total + own):
                raise Overloaded(
                    f"cannot be admitted before its deadline without making a queued request miss its own "
                    f"(~{rate:.0f} tokens/s)",
                    reason="deadline", retry_after_s=math.ceil(finish(ends[i], total) - now),
                )
        return pos

    def _finish_fn(self, start: float, rate: float, tokens: int, pairs: int) -> Callable[[int, int], float]:
        """``finish(through, total)``: when the work queued through some request (``through`` estimated tokens
        from the head) is predicted scored, with ``total`` tokens queued in all. A request is done at the end of
        the step holding its last pair, and steps take up to one step's worth in queue order (what follows it
        rides along), so: ``through`` rounded up to whole steps, no further than ``total``. A step holds
        ``batch_tokens * step_passes`` estimated tokens or ``max_batch_pairs`` pairs (of the queue's mean size:
        ``tokens`` over ``pairs``), whichever is less."""
        if not self.batching:  # each request alone
            return lambda through, total: start + through / rate
        per_pair = max(1.0, tokens / max(1, pairs))
        step = max(1.0, min(float(self.step_tokens), self.max_batch_pairs * per_pair))

        def finish(through: int, total: int) -> float:
            return start + min(math.ceil(through / step) * step, total) / rate

        return finish

    def _reject(self, reason: str) -> None:
        fn = getattr(self.observer, "on_reject", None)
        if fn is not None:
            fn(reason)

    def _estimate(self, query: str, text: str) -> int:
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
            job = self._queue.pop(0)
            taken = [(job, i) for i in range(job.next, len(job.texts))]
            self._pending_pairs -= job.remaining
            job.next = len(job.texts)
            job.left_tokens = 0
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
                    job.left_tokens -= est
                    self._pending_pairs -= 1
                if job.next < len(job.texts):
                    break  # the step is full
                self._queue.pop(0)
        self._step_tokens_now = sum(job.est_tokens[i] for job, i in taken)
        self._step_started = now
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
            self._measure(sum(job.est_tokens[i] for job, i in taken), seconds)
            self._deliver(taken, result, seconds)
            if self.observer:
                tokens = result.tokens or sum(job.est_tokens[i] for job, i in taken)
                self.observer.on_pass(len(taken), len(jobs), tokens, seconds)
        finally:
            with self._cond:
                self._step_tokens_now = 0
            self.busy = False

    def _measure(self, tokens: int, seconds: float) -> None:
        """Fold one step into the throughput estimate (see the class docstring)."""
        if tokens <= 0 or seconds <= 0:
            return
        with self._cond:
            self._steps_timed += 1
            if self._steps_timed == 1:
                return  # the first engine call pays for lazy loads: not representative
            self._rate_tokens = self._rate_tokens * self.RATE_DECAY + tokens
            self._rate_seconds = self._rate_seconds * self.RATE_DECAY + seconds
            rate = self.tokens_per_s
        fn = getattr(self.observer, "on_rate", None)
        if fn is not None and rate is not None:
            fn(rate)

    def _cancel(self, job: Job) -> None:
        """``Job.cancel``: out of the queue now (its work shed), and its future failed. A job given up on because
        its deadline passed (the app's own timer) counts as ``"deadline"``, not ``"cancelled"``."""
        now = time.monotonic()
        with self._cond:
            queued = job in self._queue
            if queued:
                self._queue.remove(job)
                self._pending_pairs -= job.remaining
                job.left_tokens = 0
                self._report_depth()
        expired = now > job.deadline
        if queued and self.observer:
            self.observer.on_drop("deadline" if expired else "cancelled")
        _fail(job, DeadlineExceeded(f"deadline exceeded after {(now - job.enqueued) * 1000:.0f} ms") if expired
              else Cancelled("the client went away"))

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
                job.left_tokens = 0
                self._report_depth()
        job.failed = True
        _fail(job, exc)

    def _deliver(self, taken: list[tuple[Job, int]], result: RerankScores, seconds: float) -> None:
        truncated = result.truncated if len(result.truncated) == len(taken) else [False] * len(taken)
        total = max(1, len(taken))
        seen: set[int] = set()
        for (job, i), score, cut in zip(taken, result.scores, truncated, strict=False):
            if job.failed:
                continue
            job.scores[i] = float(score)
            job.truncated[i] = bool(cut)
            job.scored += 1
            if id(job) not in seen:
                seen.add(id(job))
                job.inference_s += seconds
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
                _resolve(job, JobResult(scores, queue_ms, job.inference_s * 1000))


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


class CancelScope:
    """The batcher jobs one caller's work submits (e.g. one ``/search`` request), so they can all be shed when
    that caller goes away: ``BatchedReranker.score`` adds its job to the scope current in its context
    (:func:`current_scope`, set with :meth:`active`); :meth:`cancel` cancels those jobs and any submitted later
    (those raise ``Cancelled`` at once). Thread-safe; the scope follows context variables, so a thread the work
    hops to must run in a copy of the caller's context (``contextvars.copy_context().run``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: list[Job] = []
        self.cancelled = False

    def add(self, job: Job) -> None:
        with self._lock:
            if not self.cancelled:
                self._jobs.append(job)
                return
        job.cancel()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            if not job.future.done():
                job.cancel()

    @contextmanager
    def active(self) -> Iterator["CancelScope"]:
        token = _SCOPE.set(self)
        try:
            yield self
        finally:
            _SCOPE.reset(token)


_SCOPE: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar("crossrank_cancel_scope", default=None)


def current_scope() -> CancelScope | None:
    return _SCOPE.get()


JOB_OPTIONS = ("long_documents", "max_tokens_per_doc", "truncation_direction")  # per-job engine options


class BatchedReranker:
    """A ``Reranker`` whose scoring goes through a ``DynamicBatcher`` (so pipeline traffic shares the queue).

    Queue full, predicted or passed deadline raise ``RerankerUnavailable`` subclasses, on which the pipeline
    falls back. A call made inside a :class:`CancelScope` is shed when the scope is cancelled (``Cancelled``)."""

    def __init__(self, batcher: DynamicBatcher, name: str, *, timeout_s: float | None = None,
                 info: dict[str, Any] | None = None, takes_instruction: bool = False,
                 options: dict[str, Any] | None = None) -> None:
        self.batcher = batcher
        self.name = name
        self.timeout_s = timeout_s
        self._info = dict(info or {"model": name})
        self.takes_instruction = takes_instruction
        self.options = dict(options or {})  # job options every call carries (a with_options variant's)

    def info(self) -> dict[str, Any]:
        """The batched engine's ``info()`` (its recommendation included, so pipelines on top fuse as it says)."""
        return dict(self._info)

    def score(self, query: str, texts: Sequence[str], *, timeout_s: float | None = None,
              instruction: str | None = None) -> RerankScores:
        """Queue the pairs and wait; ``timeout_s`` (the caller's remaining budget, e.g. the pipeline's deadline)
        tightens the job's deadline, so work nobody waits for any more is dropped from the queue. An
        ``instruction`` travels as a job option (jobs share a step only with jobs of the same options)."""
        budget = self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s or math.inf)
        scope = current_scope()
        if scope is not None and scope.cancelled:
            raise Cancelled("the client went away")
        check_instruction(self, instruction)
        options = {**self.options, **({"instruction": instruction} if instruction is not None else {})}
        job = self.batcher.submit(query, texts, deadline_s=budget, options=options or None)
        if scope is not None:
            scope.add(job)
        try:
            return job.future.result(timeout=None if budget is None else budget + 1.0).scores
        except TimeoutError as exc:
            job.cancel()
            raise DeadlineExceeded(f"reranking took longer than {budget:.1f} s") from exc

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, timeout_s: float | None = None,
                    instruction: str | None = None) -> RerankScores:
        """One job per distinct query, each waited for in turn, all within the one ``timeout_s``."""
        return score_by_query_within(self, pairs, timeout_s=timeout_s, instruction=instruction)

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None) -> list[RankedText]:
        return rank_by_scores(texts, self.score(query, texts).scores, top_n)

    def with_options(self, **options: Any) -> "BatchedReranker":
        """This reranker with jobs that carry ``options`` (``long_documents``, ``max_tokens_per_doc``,
        ``truncation_direction``: what the server's engine side applies per job); no options: this one."""
        unknown = set(options) - set(JOB_OPTIONS)
        if unknown:
            raise InputError(f"with_options takes {', '.join(JOB_OPTIONS)}, not {', '.join(sorted(unknown))}")
        if not options:
            return self
        return BatchedReranker(self.batcher, self.name, timeout_s=self.timeout_s, info=self._info,
                               takes_instruction=self.takes_instruction, options={**self.options, **options})

    def count_inputs(self, query: str, texts: Sequence[str], instruction: str | None = None) -> InputCount | None:
        """None: the engine behind the batcher counts what it runs."""
        return None

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]] | None:
        """None: the engine behind the batcher cuts texts itself (a job's ``max_tokens_per_doc``)."""
        return None
