"""Progress of long jobs (an evaluation's scoring, encoding passages, building an ANN graph) in a pipe or a log: a
redrawn bar (rich, tqdm) shows nothing useful in a file, so there each task prints a plain line at most every
``every_s`` seconds and at its end, with the count, the rate and the ETA. :func:`progress_bar` picks a tqdm bar on a
terminal and these lines elsewhere, for code that counts one task."""

from __future__ import annotations

import sys
import time
from typing import Any


class LineProgress:
    """Plain progress lines for several tasks, with the ``add_task`` / ``update`` / ``advance`` of a rich
    ``Progress``. ``completed`` given to ``add_task`` is work done before (resumed): it is not in the rate."""

    def __init__(self, stream: Any, every_s: float = 30.0, clock: Any = None):
        self.stream, self.every_s, self.clock = stream, every_s, clock or time.monotonic
        self.tasks: dict[int, dict[str, Any]] = {}

    def add_task(self, description: str, total: float | None = None, completed: float = 0.0, **_: Any) -> int:
        task = len(self.tasks)
        now = self.clock()
        self.tasks[task] = {"description": description, "total": total, "completed": float(completed),
                            "before": float(completed), "start": now, "shown": now}
        return task

    def update(self, task: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, description: str | None = None, **_: Any) -> None:
        t = self.tasks[task]
        if description is not None:
            t["description"] = description
        if total is not None:
            t["total"] = total
        if completed is not None:
            t["completed"] = float(completed)
        if advance:
            t["completed"] += advance
        now = self.clock()
        done = t["total"] is not None and t["completed"] >= t["total"]
        if done and not t.get("finished"):
            t["finished"] = True
            self._line(t, now)
        elif not done and now - t["shown"] >= self.every_s:
            self._line(t, now)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def remove_task(self, task: int) -> None:
        self.tasks.pop(task, None)

    def log(self, *objects: Any, **_: Any) -> None:
        print(*objects, file=self.stream, flush=True)

    def _line(self, t: dict[str, Any], now: float) -> None:
        t["shown"] = now
        elapsed = now - t["start"]
        done, total = t["completed"], t["total"]
        rate = (done - t["before"]) / elapsed if elapsed > 0 else float("nan")
        if total:
            eta = (total - done) / rate if rate > 0 else float("nan")
            text = (f"{t['description']}: {done:g}/{total:g} ({100 * done / total:.0f}%), {elapsed:.0f} s, "
                    f"{rate:.3g}/s, eta {eta:.0f} s")
        else:
            text = f"{t['description']}: {done:g}, {elapsed:.0f} s, {rate:.3g}/s"
        print(text, file=self.stream, flush=True)


class _OneTask:
    """One task of a :class:`LineProgress`, with a tqdm bar's ``update(n)`` / ``close()``."""

    def __init__(self, lines: LineProgress, desc: str, total: int, done: int):
        self.lines, self.task = lines, lines.add_task(desc, total=total, completed=done)

    def update(self, n: int) -> None:
        self.lines.advance(self.task, n)

    def close(self) -> None:
        t = self.lines.tasks[self.task]
        if not t.get("finished"):  # stopped short (an error): say how far it got
            self.lines._line(t, self.lines.clock())


def progress_bar(total: int, desc: str, *, done: int = 0, unit: str = "passage") -> Any:
    """A tqdm bar on a terminal's stderr (or in a notebook), :class:`LineProgress` lines elsewhere; None when there
    is nothing to count. ``done``: work finished before (resumed), outside the rate."""
    if not total:
        return None
    if not sys.stderr.isatty() and "ipykernel" not in sys.modules:  # a notebook draws tqdm.auto's widget
        return _OneTask(LineProgress(sys.stderr), desc, total, done)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit=unit, unit_scale=True, desc=desc, smoothing=0.05)
