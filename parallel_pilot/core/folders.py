"""Folders a process holds while it runs, and the removal of those a dead process left.

A worker's task folders and a coordinator's partial uploads live in a folder of the
process's own (``PREFIX…``, mode 0700) with a lock file in it, ``flock``-ed for as long as
the process runs; the kernel drops the lock when the process dies, however it dies. At
start a process removes the folders of its parent whose lock nobody holds: what a killed
worker or a crashed coordinator left. Two live processes sharing a parent never remove
each other's folder.

Private modes live here too: data files 0600, folders 0700, and ``tighten`` for what an
older version left more open.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"  # in a held folder: flock-ed by the process that holds it
PRIVATE_DIR_MODE = 0o700  # folders of data only its owner may read
PRIVATE_FILE_MODE = 0o600  # files of data only its owner may read
CLAIM_TRIES = 5  # attempts at claiming a fresh folder (one may be removed under us)


class HeldFolder:
    """A folder this process holds until ``release()`` (or its exit)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self._finalizer = weakref.finalize(self, _close_quietly, fd)

    def release(self, remove: bool = True) -> None:
        """Drop the lock, first removing the folder (by default)."""
        if self._fd is None:
            return
        if remove:
            remove_tree(self.path)
        self._finalizer()
        self._fd = None


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) and give it mode 0700 if this user owns it."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    tighten(path, PRIVATE_DIR_MODE)
    return path


def tighten(path: Path, mode: int) -> None:
    """Take from ``path`` every permission beyond ``mode`` (files of this user only; a
    missing path, one of another user, a link and a sticky folder are left as they are)."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if st.st_uid != os.getuid() or stat.S_ISLNK(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return  # a shared folder like /tmp (given as a work dir): never closed to others
    if stat.S_IMODE(st.st_mode) & ~mode:
        with contextlib.suppress(OSError):
            os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def claim_folder(parent: Path, prefix: str) -> HeldFolder:
    """A fresh folder ``parent/prefix…`` (0700), held by this process."""
    parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    for _ in range(CLAIM_TRIES):
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=str(parent))).resolve()
        lock = path / LOCK_NAME
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # another process's sweep may have taken the lock between our open and flock,
        # found the folder stale and removed it: then the lock file is not ours any more
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except OSError:
            same = False
        if same:
            return HeldFolder(path, fd)
        os.close(fd)
    raise OSError(f"could not claim a folder in {parent}")


def remove_stale_folders(parent: Path, prefix: str) -> list[Path]:
    """Remove the folders ``parent/prefix…`` of this user whose lock no process holds
    (their holder died); returns those removed. A folder without a lock file is one being
    made right now, and is left."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        path = Path(entry.path)
        try:
            fd = os.open(path / LOCK_NAME, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # held: its process lives
        try:
            remove_tree(path)
            removed.append(path)
        except OSError as exc:
            log.warning("cannot remove the stale folder %s: %s", path, exc)
        finally:
            os.close(fd)
    return removed


def remove_tree(path: Path) -> None:
    """Remove a folder even where a task left read-only files or folders in it."""

    def make_writable_and_retry(func: Any, failed: str, _exc: Any) -> None:
        try:
            parent = os.path.dirname(failed)
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IRWXU)
            func(failed)
        except OSError:
            pass

    if not path.exists():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable_and_retry)
    else:
        shutil.rmtree(path, onerror=make_writable_and_retry)
