"""How crossrank writes atomically (a temporary file or folder, then a rename): the one directory swap every
writer uses (an index, a bundle, a training checkpoint), fsync, file hashes, file permissions, and the removal of
temporary folders that a crashed write left behind."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


# ---------------------------------------------------------------------------------------------------- durability


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under ``root`` (before it is swapped into place)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def swap_into_place(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Replace the folder ``target`` with the complete folder ``tmp`` (same parent): readers see the old or the new
    folder, never a half-written one and, where the kernel has ``renameat2(RENAME_EXCHANGE)``, never a moment
    without one (elsewhere two renames, the old folder restored if the second fails). The parent is fsynced."""
    tmp, target = Path(tmp), Path(target)
    parent = target.parent
    if not target.exists():
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous folder
    else:
        old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(parent)


@contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Write the folder ``target`` atomically: the block writes into the hidden sibling ``.<name>.tmp-*`` this
    yields (0755; stale ones of earlier crashed writes are removed first). When the block ends without an error its
    top-level files get a plain write's permissions, everything is fsynced and the folder is swapped into place
    (:func:`swap_into_place`); on an error it is removed and ``target`` is as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is a normal folder
    try:
        yield tmp
        share_files(tmp)
        fsync_tree(tmp)
        swap_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a swap: gone, or the previous folder


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder, fsynced, then renamed over
    it: readers see the old content or the new, never a part; the file gets a plain write's permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, plain_file_mode(path.parent))  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------------------------------- hashes

_sha_cache: dict[tuple[str, int, int], str] = {}
_sha_lock = threading.Lock()


def file_sha256(path: str | os.PathLike, *, remember: bool = False) -> str:
    """sha256 of a file. ``remember=True`` keeps it per process, keyed by path, size and mtime (for large files
    read often, like a bundle's base weights); verification of what is on disk leaves it off."""
    p = Path(path)
    key = None
    if remember:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        with _sha_lock:
            if key in _sha_cache:
                return _sha_cache[key]
    with open(p, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if key is not None:
        with _sha_lock:
            _sha_cache[key] = digest
    return digest
