"""What a coordinator leaves on disk, with real ``pilot server`` processes: a crashed one's
partial uploads are removed at the next start (never those of a coordinator running beside
it on the same blob folder), and the data folder is the owner's only (folders 0700,
database, tokens, logs and blobs 0600), also for an install an older version left open."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from parallel_pilot.client.local_cluster import LocalCluster
from parallel_pilot.store.blobs import BlobStore

API = "/api/v1"
WAIT_SECONDS = 30.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _wait_for(condition, seconds: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def _partials(tmp: Path) -> list[Path]:
    return [p for p in tmp.rglob("*.part") if p.is_file()]


def test_a_crashed_coordinators_partial_upload_is_removed_at_the_next_start(
        tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "data", workers=0, env={"PILOT_TOKEN": ""})
    cluster.start_server()
    tmp = cluster.data_dir / "blobs" / "tmp"
    release = threading.Event()
    data = b"p" * (1 << 20)
    sha = hashlib.sha256(data * 4).hexdigest()

    def body() -> Iterator[bytes]:
        yield data
        release.wait(60)  # the rest never comes: the coordinator dies first
        yield data

    def upload() -> None:
        try:
            httpx.put(f"{cluster.url}{API}/blobs/{sha}", content=body(), timeout=60,
                      headers={"Authorization": f"Bearer {cluster.admin_token}",
                               "Content-Type": "application/octet-stream"})
        except httpx.HTTPError:
            pass

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    try:
        crashed = _wait_for(lambda: _partials(tmp), WAIT_SECONDS, "a partial upload on disk")
        assert cluster.server is not None
        cluster.server.send_signal(signal.SIGKILL)
        cluster.server.wait(10)
    finally:
        release.set()
        uploader.join(30)
    assert all(p.exists() for p in crashed)  # the crash left it
    legacy = tmp / f"{sha}.0123abcd.part"  # where an older version wrote partial uploads
    legacy.write_bytes(b"old")
    beside = BlobStore(cluster.data_dir / "blobs")  # a coordinator running beside it
    in_flight = beside.tmp / f"{sha}.live.part"
    in_flight.write_bytes(b"still coming")
    try:
        cluster.start_server()
        try:
            assert not any(p.exists() for p in crashed)
            assert not legacy.exists()
            assert in_flight.read_bytes() == b"still coming"  # not the restarted one's to take
            assert _partials(tmp) == [in_flight]
        finally:
            cluster.stop()
    finally:
        beside.close()
    assert not beside.tmp.exists()


def test_data_files_are_private_and_an_open_install_is_tightened(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cluster = LocalCluster(data_dir, workers=0, env={"PILOT_TOKEN": ""})
    cluster.start_server()
    blob = b"private bytes"
    sha = hashlib.sha256(blob).hexdigest()
    r = httpx.put(f"{cluster.url}{API}/blobs/{sha}", content=blob, timeout=30,
                  headers={"Authorization": f"Bearer {cluster.admin_token}",
                           "Content-Type": "application/octet-stream"})
    assert r.status_code < 300, r.text
    blob_file = data_dir / "blobs" / sha[:2] / sha
    folders = [data_dir, data_dir / "blobs", data_dir / "blobs" / sha[:2],
               data_dir / "blobs" / "tmp", data_dir / "logs"]
    files = [data_dir / name for name in ("pilot.db", "pilot.db-wal", "pilot.db-shm",
                                          "admin-token", "join-token", "admin-password")]
    files += [blob_file, data_dir / "logs" / "server.log"]
    try:
        _check_private(folders, files)
    finally:
        cluster.stop()
    # an install an older version left readable by everyone
    for path in folders:
        os.chmod(path, 0o755)
    for path in files:
        if path.exists():
            os.chmod(path, 0o644)
    cluster.start_server()
    try:
        _check_private([p for p in folders], [p for p in files if p != blob_file])
        # the blob file itself is as it was, behind its folders, which nobody else may enter
        assert _mode(blob_file) == 0o644 and _mode(blob_file.parent) == 0o700
    finally:
        cluster.stop()


def _check_private(folders: list[Path], files: list[Path]) -> None:
    for folder in folders:
        assert _mode(folder) == 0o700, (folder, oct(_mode(folder)))
    for file in files:
        if file.name.endswith(("-wal", "-shm")) and not file.exists():
            continue  # SQLite removes them when the last connection closes
        assert _mode(file) == 0o600, (file, oct(_mode(file)))
