"""The worker's blob cache: one download per hash, LRU eviction that honours pins and the
size bound, read-only files, and recovery from what a previous run left on disk."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from parallel_pilot.errors import InvalidInput
from parallel_pilot.worker.cache import BlobCache

WAIT = 2.0  # seconds any test waits for a condition at most


def blob(text: str, size: int = 100) -> tuple[str, bytes]:
    data = (text * size)[:size].encode()
    return hashlib.sha256(data).hexdigest(), data


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


class FakeStore:
    """A ``fetch`` that serves blobs from memory and counts downloads per hash."""

    def __init__(self, *blobs: tuple[str, bytes]) -> None:
        self.blobs = dict(blobs)
        self.fetches: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, sha256: str, dest: Path) -> Path:
        with self.lock:
            self.fetches[sha256] = self.fetches.get(sha256, 0) + 1
        dest.write_bytes(self.blobs[sha256])
        return dest


def test_downloads_once_and_makes_files_read_only(tmp_path: Path) -> None:
    sha, data = blob("a")
    store = FakeStore((sha, data))
    cache = BlobCache(tmp_path, max_bytes=10_000)
    first = cache.get(sha, store)
    second = cache.get(sha, store)
    assert first == second == tmp_path / sha[:2] / sha
    assert first.read_bytes() == data
    assert store.fetches == {sha: 1}
    assert stat.S_IMODE(first.stat().st_mode) == 0o444
    assert [p.name for p in first.parent.iterdir()] == [sha]  # no temporary file left


def test_failed_fetch_leaves_nothing_and_can_be_retried(tmp_path: Path) -> None:
    sha, data = blob("a")
    cache = BlobCache(tmp_path, max_bytes=10_000)

    def broken(sha256: str, dest: Path) -> Path:
        dest.write_bytes(b"partial")
        raise OSError("network went away")

    with pytest.raises(OSError):
        cache.get(sha, broken)
    assert sha not in cache and not (tmp_path / sha[:2] / sha).exists()
    assert list((tmp_path / sha[:2]).iterdir()) == []
    assert cache.pinned_count(sha) == 0
    assert cache.get(sha, FakeStore((sha, data))).read_bytes() == data


def test_evicts_least_recently_used_over_the_bound(tmp_path: Path) -> None:
    a, b, c = blob("a"), blob("b"), blob("c")
    store = FakeStore(a, b, c)
    cache = BlobCache(tmp_path, max_bytes=250)  # room for two 100-byte blobs
    cache.get(a[0], store)
    cache.get(b[0], store)
    cache.get(a[0], store)  # a is now more recently used than b
    cache.get(c[0], store)
    assert a[0] in cache and c[0] in cache and b[0] not in cache
    assert not cache.path_of(b[0]).exists()
    assert cache.total_bytes == 200


def test_pinned_files_are_never_evicted(tmp_path: Path) -> None:
    a, b, c = blob("a"), blob("b"), blob("c")
    store = FakeStore(a, b, c)
    cache = BlobCache(tmp_path, max_bytes=150)
    with cache.pinned(a[0], store) as path_a:
        cache.get(b[0], store)
        cache.get(c[0], store)
        assert path_a.exists()  # pinned: survives though it is the oldest
        assert b[0] not in cache
        assert cache.pinned_count(a[0]) == 1
    # unpinned and least recently used: now it goes
    assert a[0] not in cache and not path_a.exists()
    assert cache.total_bytes <= 150


def test_the_blob_just_fetched_stays_even_when_larger_than_the_bound(tmp_path: Path) -> None:
    big = blob("z", size=500)
    cache = BlobCache(tmp_path, max_bytes=100)
    path = cache.get(big[0], FakeStore(big))
    assert path.read_bytes() == big[1]


def test_concurrent_gets_of_one_hash_fetch_once(tmp_path: Path) -> None:
    sha, data = blob("q")
    release_fetch = threading.Event()
    store = FakeStore((sha, data))

    def slow_fetch(sha256: str, dest: Path) -> Path:
        assert release_fetch.wait(WAIT)
        return store(sha256, dest)

    cache = BlobCache(tmp_path, max_bytes=10_000)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(sha, slow_fetch)))
               for _ in range(8)]
    for t in threads:
        t.start()
    # every thread is inside get() (pinned) before the one download may finish
    assert wait_until(lambda: cache.pinned_count(sha) == 8)
    release_fetch.set()
    for t in threads:
        t.join(WAIT)
    assert store.fetches == {sha: 1}
    assert len(results) == 8 and len(set(results)) == 1
    assert cache.pinned_count(sha) == 0


def test_refuses_names_that_are_not_hashes(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, max_bytes=100)
    for bad in ("../../etc/passwd", "A" * 64, "abc"):
        with pytest.raises(InvalidInput):
            cache.get(bad, FakeStore())


def test_restart_indexes_old_files_and_refetches_damaged_ones(tmp_path: Path) -> None:
    a, b = blob("a"), blob("b")
    store = FakeStore(a, b)
    first = BlobCache(tmp_path, max_bytes=10_000)
    first.get(a[0], store)
    path_b = first.get(b[0], store)
    # damage b on disk and leave a partial download behind, as a crash would
    os.chmod(path_b, 0o644)
    path_b.write_bytes(b"rotten")
    stray = path_b.with_name("." + b[0] + ".1234.tmp")
    stray.write_bytes(b"half")

    second = BlobCache(tmp_path, max_bytes=10_000)
    assert a[0] in second and b[0] in second
    assert not stray.exists()
    assert second.get(a[0], store).read_bytes() == a[1]
    assert second.get(b[0], store).read_bytes() == b[1]
    assert store.fetches == {a[0]: 1, b[0]: 2}  # only the damaged one again
