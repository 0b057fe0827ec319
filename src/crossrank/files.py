"""File permissions for what crossrank writes atomically (temporary file or folder, then a rename)."""

from __future__ import annotations

import os
import threading
from pathlib import Path


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
