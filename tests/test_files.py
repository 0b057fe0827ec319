"""Stale temporary folders of crashed atomic writes: removed on the next write, safely (only ours, only old)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from crossrank.files import STALE_TEMP_AGE_S, remove_stale_temp_dirs, staged_dir, temp_dir_pattern

OLD = time.time() - 2 * STALE_TEMP_AGE_S


def _dir(path: Path, *, age: float | None = OLD, files: dict[str, float | None] | None = None) -> Path:
    path.mkdir()
    for name, mtime in (files or {"part.bin": age}).items():
        (path / name).write_bytes(b"x" * 10)
        if mtime is not None:
            os.utime(path / name, (mtime, mtime))
    if age is not None:
        os.utime(path, (age, age))
    return path


def test_only_our_old_temp_folders_go(tmp_path):
    stale = _dir(tmp_path / ".idx.tmp-123-abcd1234")
    stale_mkdtemp = _dir(tmp_path / ".idx.tmp-k2_x9q")
    fresh = _dir(tmp_path / ".idx.tmp-456-ffff0000", age=None)  # a concurrent writer's, just made
    # an old folder where a writer is still writing a file: its newest mtime counts, not the folder's
    busy = _dir(tmp_path / ".idx.tmp-789-aaaa", files={"old.bin": OLD, "dense.npy": None})
    other_name = _dir(tmp_path / ".other.tmp-1-abcd")  # another target's, not asked about
    foreign = [_dir(tmp_path / n) for n in (".idx.tmp", "idx.tmp-1", ".idx.tmpx-1", ".idx.tmp-1.bak", "keep")]
    (tmp_path / ".idx.tmp-999-file").write_bytes(b"a file, not a folder")
    outside = _dir(tmp_path / "outside")
    (tmp_path / ".idx.tmp-link").symlink_to(outside, target_is_directory=True)
    os.utime(tmp_path / ".idx.tmp-link", (OLD, OLD), follow_symlinks=False)

    removed = remove_stale_temp_dirs(tmp_path, "idx")
    assert sorted(removed) == sorted([stale, stale_mkdtemp])
    assert not stale.exists() and not stale_mkdtemp.exists()
    for kept in [fresh, busy, other_name, *foreign, outside, tmp_path / ".idx.tmp-999-file"]:
        assert kept.exists(), kept
    assert (tmp_path / ".idx.tmp-link").is_symlink() and (outside / "part.bin").exists()


def test_an_old_copy_is_kept_while_it_is_the_only_copy(tmp_path):
    old = _dir(tmp_path / ".idx.old-1a2b3c4d")
    assert remove_stale_temp_dirs(tmp_path, "idx") == []  # a crash between the swap's renames: no idx
    assert old.exists()
    (tmp_path / "idx").mkdir()
    assert remove_stale_temp_dirs(tmp_path, "idx") == [old] and not old.exists()


def test_any_name_for_a_folder_that_is_ours_alone_and_errors_never_raise(tmp_path):
    a = _dir(tmp_path / ".bert-fp32-0123abcd.tmp-x1y2")
    b = _dir(tmp_path / ".bert-int8-4567.tmp-zz")
    lock = tmp_path / ".bert-fp32-0123abcd.lock"
    lock.write_bytes(b"")
    entry = _dir(tmp_path / "bert-fp32-0123abcd")
    assert sorted(remove_stale_temp_dirs(tmp_path)) == sorted([a, b])
    assert lock.exists() and entry.exists()
    assert remove_stale_temp_dirs(tmp_path / "missing", "idx") == []
    assert temp_dir_pattern("a.b").match(".a.b.tmp-1") and not temp_dir_pattern("a.b").match(".axb.tmp-1")
    assert remove_stale_temp_dirs(tmp_path, max_age_s=0, now=time.time() + 10) == []  # nothing else of ours there


def test_staged_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with staged_dir(target) as tmp:
        assert tmp.parent == tmp_path and temp_dir_pattern("model").match(tmp.name)
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    assert (target.stat().st_mode & 0o777) == 0o755 and ((target / "a.txt").stat().st_mode & 0o044) == 0o044

    with pytest.raises(RuntimeError, match="crash"):
        with staged_dir(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "one"  # the previous folder, untouched
    with staged_dir(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # the new folder whole, nothing of the old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging folder left behind
