"""What crossrank writes atomically (temporary file or folder, then a rename): file permissions, and the removal
of temporary folders that a crashed write left behind."""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

# A temporary folder untouched for this long is a crashed write's, not a running one's (a writer keeps creating
# and writing files in it; the newest mtime of anything in it is what counts).
STALE_TEMP_AGE_S = 3600.0


def plain_file_mode(directory: str | os.PathLike) -> int:
    """The mode a plain ``open(..., "w")`` gives a new file in ``directory`` (0644 under the usual umask).

    Found by creating an empty probe file, so the process-wide umask is never changed (that would race threads)."""
    probe = Path(directory) / f".mode-probe-{os.getpid()}-{threading.get_ident()}"  # unique per writer
    probe.write_bytes(b"")
    try:
        return probe.stat().st_mode & 0o666
    finally:
        probe.unlink()


def share_files(directory: str | os.PathLike) -> None:
    """Give the files in ``directory`` a plain write's permissions.

    ``tempfile.mkstemp`` and safetensors create files 0600 whatever the umask, so a model, index or report would
    otherwise be unreadable to other users, e.g. a serving container that runs under its own uid."""
    mode = plain_file_mode(directory)
    for f in Path(directory).iterdir():
        if f.is_file():
            os.chmod(f, mode)


def temp_dir_pattern(name: str | None = None) -> re.Pattern[str]:
    """The hidden sibling folders crossrank's atomic writers use for ``name``: ``.<name>.tmp-<suffix>`` (being
    written) and ``.<name>.old-<suffix>`` (the previous copy, during a swap). ``name=None``: any name (for a
    folder that only crossrank writes to, such as the ONNX graph cache)."""
    stem = re.escape(name) if name is not None else r"[^/]+?"
    return re.compile(rf"^\.(?P<name>{stem})\.(?P<kind>tmp|old)-[\w-]+$")


def remove_stale_temp_dirs(
    parent: str | os.PathLike,
    name: str | None = None,
    *,
    max_age_s: float = STALE_TEMP_AGE_S,
    now: float | None = None,
) -> list[Path]:
    """Delete the temporary folders that crashed atomic writes left in ``parent``; returns those removed.

    Called by every atomic folder writer before it starts. Safe next to concurrent writers and foreign files:

    * only ours: hidden folders named by :func:`temp_dir_pattern` (for ``name`` when given), directly in
      ``parent``; symlinks and files are never touched;
    * only old ones: nothing inside was modified for ``max_age_s`` (default an hour), so a write in progress,
      which keeps creating and writing files, is left alone;
    * a ``.<name>.old-*`` folder only while ``<name>`` itself exists: if a crash came between the two renames of
      a swap, the old copy is the only one and is kept.

    Never raises: a folder that cannot be inspected or removed is logged and left."""
    parent = Path(parent)
    pattern = temp_dir_pattern(name)
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if m["kind"] == "old" and not (parent / m["name"]).is_dir():
                continue
            if now - _newest_mtime(entry.path) < max_age_s:
                continue
            shutil.rmtree(entry.path)
        except OSError as exc:
            log.warning("could not remove the stale temporary folder %s: %s", entry.path, exc)
            continue
        log.info("removed %s, left by a write that did not finish", entry.path)
        removed.append(Path(entry.path))
    return removed


def _newest_mtime(path: str) -> float:
    """The latest mtime of ``path`` and everything under it (symlinks not followed)."""
    newest = os.lstat(path).st_mtime
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, n)).st_mtime)
            except OSError:  # removed meanwhile: someone is at work there
                return time.time()
    return newest
