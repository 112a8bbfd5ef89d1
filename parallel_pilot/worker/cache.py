"""The worker's blob cache: content-addressed, size-bounded, least-recently-used files.

A blob lives at ``root/ab/abcdef…`` (its SHA-256), read-only. It is downloaded once per
worker however many tasks use it: concurrent requests for one hash wait for a single
download. Files in use by a task are pinned and never evicted; the least recently used of
the others go when the cache holds more than ``max_bytes``. Files found on disk at start
are re-hashed on their first use, so a damaged file is fetched again instead of being used.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from parallel_pilot.core.folders import private_dir
from parallel_pilot.core.protocol import SHA256_RE
from parallel_pilot.errors import InvalidInput
from parallel_pilot.http import sha256_file

log = logging.getLogger(__name__)

READ_ONLY_MODE = 0o444  # mode of cached files: tasks must copy before they write
TEMP_PREFIX = "."  # names of partial downloads start with this; swept away at start

Fetch = Callable[[str, Path], Path]  # fetch(sha256, dest) writes the verified blob to dest


@dataclass
class _Entry:
    size: int
    verified: bool  # hashed by this process (downloaded now, or checked on first use)


class BlobCache:
    """Files named by SHA-256 under ``root``, at most ``max_bytes`` of them unpinned."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest use first
        self._pins: dict[str, int] = {}
        self._hash_locks: dict[str, tuple[threading.Lock, int]] = {}  # lock, users
        private_dir(self.root)  # what a worker caches is the jobs' data: its owner's only
        self._scan()

    # ------------------------------------------------------------ public

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def path_of(self, sha256: str) -> Path:
        _check(sha256)
        return self.root / sha256[:2] / sha256

    def __contains__(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._entries

    def get(self, sha256: str, fetch: Fetch) -> Path:
        """The path of the cached blob, downloading it with ``fetch`` only when missing."""
        path = self.acquire(sha256, fetch)
        # unpinned but not evicted now: the file just fetched stays until a later eviction
        self._unpin(sha256)
        return path

    def acquire(self, sha256: str, fetch: Fetch) -> Path:
        """Like ``get``, and pin the file until ``release`` so it is not evicted meanwhile."""
        path = self.path_of(sha256)
        self.pin(sha256)
        try:
            with self._hash_lock(sha256):
                if not self._usable(sha256, path):
                    self._download(sha256, path, fetch)
            self._touch(sha256, path)
            self._evict()
        except BaseException:
            self._unpin(sha256)
            raise
        return path

    def release(self, sha256: str) -> None:
        """Unpin a blob pinned by ``acquire`` or ``pin``, then evict if over the bound."""
        self._unpin(sha256)
        self._evict()

    def pin(self, sha256: str) -> None:
        _check(sha256)
        with self._lock:
            self._pins[sha256] = self._pins.get(sha256, 0) + 1

    unpin = release

    def pinned_count(self, sha256: str) -> int:
        with self._lock:
            return self._pins.get(sha256, 0)

    @contextmanager
    def pinned(self, sha256: str, fetch: Fetch) -> Iterator[Path]:
        """``with cache.pinned(sha, fetch) as path:`` — the file stays while in the block."""
        path = self.acquire(sha256, fetch)
        try:
            yield path
        finally:
            self.release(sha256)

    # ------------------------------------------------------------ internals

    def _unpin(self, sha256: str) -> None:
        with self._lock:
            left = self._pins.get(sha256, 0) - 1
            if left > 0:
                self._pins[sha256] = left
            else:
                self._pins.pop(sha256, None)

    def _scan(self) -> None:
        """Index the files a previous run left, oldest use first; drop partial downloads."""
        found: list[tuple[float, str, int]] = []
        for sub in self.root.iterdir():
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for path in sub.iterdir():
                if path.name.startswith(TEMP_PREFIX):
                    path.unlink(missing_ok=True)
                elif SHA256_RE.match(path.name) and path.name[:2] == sub.name and path.is_file():
                    st = path.stat()
                    found.append((st.st_mtime, path.name, st.st_size))
        for _, sha, size in sorted(found):
            self._entries[sha] = _Entry(size=size, verified=False)

    def _usable(self, sha256: str, path: Path) -> bool:
        """Whether the indexed file is there and (once per process) hashes to its name."""
        with self._lock:
            entry = self._entries.get(sha256)
        if entry is None:
            return False
        if not path.is_file():
            self._forget(sha256)
            return False
        if not entry.verified:
            if sha256_file(path) != sha256:
                log.warning("cached blob %s is damaged; fetching it again", sha256[:12])
                self._forget(sha256)
                path.unlink(missing_ok=True)
                return False
            entry.verified = True
        return True

    def _download(self, sha256: str, path: Path, fetch: Fetch) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{TEMP_PREFIX}{sha256}.{secrets.token_hex(4)}.tmp")
        try:
            fetched = fetch(sha256, tmp)
            os.chmod(fetched, READ_ONLY_MODE)
            os.replace(fetched, path)
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self._entries[sha256] = _Entry(size=path.stat().st_size, verified=True)

    def _touch(self, sha256: str, path: Path) -> None:
        try:
            os.utime(path)  # the mtime records the last use across restarts
        except OSError:
            pass
        with self._lock:
            if sha256 in self._entries:
                self._entries.move_to_end(sha256)

    def _forget(self, sha256: str) -> None:
        with self._lock:
            self._entries.pop(sha256, None)

    def _evict(self) -> None:
        """Delete least-recently-used unpinned files while over the size bound."""
        victims: list[str] = []
        with self._lock:
            total = sum(e.size for e in self._entries.values())
            for sha, entry in list(self._entries.items()):
                if total <= self.max_bytes:
                    break
                if self._pins.get(sha, 0) > 0 or sha in self._hash_locks:
                    continue  # in use by a task, or being fetched right now
                del self._entries[sha]
                total -= entry.size
                victims.append(sha)
        for sha in victims:
            log.debug("evicting cached blob %s", sha[:12])
            (self.root / sha[:2] / sha).unlink(missing_ok=True)

    @contextmanager
    def _hash_lock(self, sha256: str) -> Iterator[None]:
        """One lock per hash, so one download serves every thread that wants the blob."""
        with self._lock:
            lock, users = self._hash_locks.get(sha256, (threading.Lock(), 0))
            self._hash_locks[sha256] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._hash_locks[sha256]
                if users <= 1:
                    del self._hash_locks[sha256]
                else:
                    self._hash_locks[sha256] = (lock, users - 1)


def _check(sha256: str) -> None:
    # the hash becomes a file name: anything but 64 lowercase hex digits is refused
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
        raise InvalidInput(f"{sha256!r} is not a SHA-256 hex digest")
