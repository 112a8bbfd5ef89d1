"""A task's context on the worker: inputs through the cache, copies that stay inside the
working directory, capped and bounded log lines, output uploads, cleanup."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from parallel_pilot.core.protocol import TaskLease
from parallel_pilot.errors import InvalidInput
from parallel_pilot.http import Connection
from parallel_pilot.worker.cache import BlobCache
from parallel_pilot.worker.context import StopReason, TaskContext
from parallel_pilot.worker.link import CoordinatorLink
from parallel_pilot.worker.log_buffer import LogBuffer

DATA = b"scene data\n" * 100
SHA = hashlib.sha256(DATA).hexdigest()


class FakeBlobServer:
    """Serves one blob and accepts uploads and output reports, recording them."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {SHA: DATA}
        self.downloads = 0
        self.outputs: list[dict[str, object]] = []
        self.puts: list[tuple[str, str | None]] = []  # (sha, X-Pilot-Attempt) per upload

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        if path.startswith("/blobs/"):
            sha = path.rsplit("/", 1)[1]
            if request.method == "HEAD":
                return httpx.Response(200 if sha in self.blobs else 404)
            if request.method == "PUT":
                self.puts.append((sha, request.headers.get("X-Pilot-Attempt")))
                self.blobs[sha] = request.read()
                return httpx.Response(201, json={"sha256": sha, "size": len(self.blobs[sha])})
            self.downloads += 1
            return httpx.Response(200, content=self.blobs[sha])
        if path.endswith("/outputs"):
            self.outputs.append(json.loads(request.content))
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(404, json={"error": "not_found", "message": path})


def lease(**inputs: str) -> TaskLease:
    return TaskLease(task_id=7, attempt=2, job_id=3, kind="sweep", name="item 1", payload={},
                     inputs=inputs, lease_expires_at=0.0, heartbeat_seconds=1.0)


@pytest.fixture
def server() -> FakeBlobServer:
    return FakeBlobServer()


@pytest.fixture
def ctx(tmp_path: Path, server: FakeBlobServer):
    link = CoordinatorLink(Connection("http://fake", transport=httpx.MockTransport(server),
                                      retry_seconds=0))
    cache = BlobCache(tmp_path / "cache", max_bytes=1 << 20)
    context = TaskContext(lease(**{"scene.blend": SHA}), link, cache, tmp_path / "work")
    yield context
    context.close()


def test_workdir_is_fresh_and_removed_on_close(ctx: TaskContext, tmp_path: Path) -> None:
    assert not (tmp_path / "work").exists()  # made only when a kind asks for it
    workdir = ctx.workdir
    assert workdir.is_dir() and list(workdir.iterdir()) == []
    assert workdir.parent == (tmp_path / "work").resolve()
    assert ctx.workdir == workdir  # the same folder every time
    locked = workdir / "locked"
    locked.mkdir()
    (locked / "f").write_text("x")
    os.chmod(locked / "f", 0o444)
    os.chmod(locked, 0o555)  # a task may leave read-only folders behind
    ctx.close()
    assert not workdir.exists()


def test_a_task_that_needs_no_folder_makes_none(tmp_path: Path, server: FakeBlobServer) -> None:
    link = CoordinatorLink(Connection("http://fake", transport=httpx.MockTransport(server),
                                      retry_seconds=0))
    context = TaskContext(lease(), link, BlobCache(tmp_path / "cache", max_bytes=1 << 20),
                          tmp_path / "work")
    context.progress(0.5, "half")
    context.log("a line")
    context.close()
    assert not (tmp_path / "work").exists()


def test_input_path_goes_through_the_cache_and_is_pinned(ctx: TaskContext,
                                                         server: FakeBlobServer) -> None:
    path = ctx.input_path("scene.blend")
    assert path.read_bytes() == DATA
    assert ctx.input_path("scene.blend") == path
    assert server.downloads == 1
    assert ctx.cache.pinned_count(SHA) == 2
    ctx.close()
    assert ctx.cache.pinned_count(SHA) == 0


def test_input_path_names_the_inputs_when_unknown(ctx: TaskContext) -> None:
    with pytest.raises(InvalidInput, match="no input named 'other.blend'.*scene.blend"):
        ctx.input_path("other.blend")


def test_copy_input_creates_parents_and_a_writable_copy(ctx: TaskContext) -> None:
    dest = ctx.copy_input("scene.blend", Path("assets/scenes/scene.blend"))
    assert dest == ctx.workdir / "assets" / "scenes" / "scene.blend"
    assert dest.read_bytes() == DATA
    assert stat.S_IMODE(dest.stat().st_mode) & stat.S_IWUSR
    absolute = ctx.copy_input("scene.blend", ctx.workdir / "again.blend")
    assert absolute.read_bytes() == DATA


@pytest.mark.parametrize("dest", ["../escape.blend", "a/../../escape.blend", "/tmp/x.blend", "."])
def test_copy_input_refuses_paths_outside_the_workdir(ctx: TaskContext, dest: str) -> None:
    with pytest.raises(InvalidInput, match="inside the task's working directory"):
        ctx.copy_input("scene.blend", Path(dest))


def test_copy_input_refuses_escaping_through_a_link(ctx: TaskContext, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (ctx.workdir / "link").symlink_to(outside)
    with pytest.raises(InvalidInput):
        ctx.copy_input("scene.blend", Path("link/scene.blend"))
    assert list(outside.iterdir()) == []


def test_upload_output_uploads_then_reports(ctx: TaskContext, server: FakeBlobServer) -> None:
    frame = ctx.workdir / "frame_0001.png"
    frame.write_bytes(b"png bytes")
    sha = ctx.upload_output("frames/frame_0001.png", frame)
    assert server.blobs[sha] == b"png bytes"
    assert server.outputs == [{"path": "frames/frame_0001.png", "sha256": sha, "size": 9}]
    with pytest.raises(InvalidInput, match="output path"):
        ctx.upload_output("../evil.png", frame)
    assert len(server.outputs) == 1
    # the upload named the attempt (task 7, attempt 2) it is an output of
    assert server.puts == [(sha, "7/2")]


def test_an_output_always_sends_its_bytes_once_per_attempt(ctx: TaskContext,
                                                            server: FakeBlobServer) -> None:
    """The coordinator has the bytes already (HEAD would say so): an output is sent all
    the same, since only the bytes prove the worker has them; a second path with the
    same bytes in the same attempt is not sent again."""
    model = ctx.workdir / "model.bin"
    model.write_bytes(DATA)  # the bytes of the blob the server has
    assert ctx.upload_output("rounds/0000/model.bin", model) == SHA
    assert ctx.upload_output("model.bin", model) == SHA
    assert server.puts == [(SHA, "7/2")]
    assert [o["path"] for o in server.outputs] == ["rounds/0000/model.bin", "model.bin"]


def test_progress_is_clamped_and_stop_reason_first_wins(ctx: TaskContext) -> None:
    ctx.progress(1.7, "x" * 5000)
    fraction, message = ctx.snapshot()
    assert fraction == 1.0 and message is not None and len(message) == 1000
    assert ctx.request_stop(StopReason.COORDINATOR, "cancelled")
    assert not ctx.request_stop(StopReason.SHUTDOWN, "leaving")
    assert ctx.stop_event.is_set() and ctx.stop_reason is StopReason.COORDINATOR


def test_log_lines_are_capped(ctx: TaskContext) -> None:
    ctx.log("y" * 10_000)
    ctx.log("two\nlines")
    lines = ctx.logs.drain()
    assert len(lines[0]) == 4000 and lines[0].endswith("[truncated]")
    assert lines[1:] == ["two", "lines"]
    assert ctx.logs.drain() == []


def test_log_buffer_drops_oldest_with_a_marker() -> None:
    logs = LogBuffer(max_lines=10)
    for i in range(25):
        logs.append(f"line {i}")
    lines = logs.drain()
    assert lines[0] == "[16 lines dropped]"
    assert lines[1:] == [f"line {i}" for i in range(16, 25)]
    assert len(lines) == 10


def test_log_buffer_bounds_characters_too() -> None:
    logs = LogBuffer(max_lines=1000, max_chars=100, max_line=50)
    for _ in range(10):
        logs.append("z" * 50)
    lines = logs.drain()
    assert lines[0] == "[8 lines dropped]" and len(lines) == 3
