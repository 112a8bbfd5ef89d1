"""Limits and validation (SQLite): upload size (413), tasks per job, log bytes per task,
path traversal in file names, and the JSON error body on every 4xx."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from parallel_pilot.coordinator.services.leasing import LOG_TRUNCATED
from tests.integration.conftest import Coordinator, make_coordinator

API = "/api/v1"
SCRIPT = b"print('hi')"


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Coordinator]:
    """A coordinator with tight limits."""
    coord = make_coordinator(f"sqlite:///{tmp_path / 'pilot.db'}", tmp_path,
                             max_upload_bytes=100, max_tasks_per_job=5,
                             max_log_bytes_per_task=50)
    with coord.client:
        yield coord
    coord.services.engine.dispose()


def put(coord: Coordinator, data: bytes, **headers: str):
    sha = hashlib.sha256(data).hexdigest()
    return coord.client.put(f"{API}/blobs/{sha}", headers={**coord.user(), **headers},
                            content=data)


def sweep(coord: Coordinator, **params: object):
    sha = hashlib.sha256(SCRIPT).hexdigest()
    assert put(coord, SCRIPT).status_code == 200
    return coord.client.post(f"{API}/jobs", headers=coord.user(), json={
        "kind": "sweep", "params": {"command": ["python", "sim.py", "{item}"], "items": "1",
                                    "files": {"sim.py": sha}, **params}})


def test_upload_over_the_limit_is_413(small: Coordinator) -> None:
    assert put(small, b"x" * 100).status_code == 200
    r = put(small, b"y" * 101)
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large" and "100 bytes" in r.json()["message"]
    sha = hashlib.sha256(b"y" * 101).hexdigest()
    assert small.client.head(f"{API}/blobs/{sha}", headers=small.user()).status_code == 404


def test_upload_over_the_limit_is_413_while_streaming(small: Coordinator) -> None:
    """Without a Content-Length (chunked), the bytes are counted as they come."""
    data = b"z" * 300
    sha = hashlib.sha256(data).hexdigest()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 50):
            yield data[i:i + 50]

    r = small.client.put(f"{API}/blobs/{sha}", headers=small.user(), content=chunks())
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    partial = [p for p in (small.data_dir / "blobs" / "tmp").rglob("*")
               if p.is_file() and p.name != ".lock"]
    assert not partial  # no partial file left


def test_upload_with_a_malformed_content_length_is_refused(small: Coordinator) -> None:
    r = put(small, b"x" * 10, **{"Content-Length": "abc"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_input"


def test_tasks_per_job_limit(small: Coordinator) -> None:
    assert sweep(small, items="1-5").status_code == 201
    r = sweep(small, items="1-6")
    assert r.status_code == 400 and r.json()["error"] == "invalid_input"
    assert "at most 5" in r.json()["message"]


def test_log_bytes_per_task_limit(small: Coordinator) -> None:
    assert sweep(small).status_code == 201
    worker = small.register_worker(["sweep"])
    [task] = small.client.post(f"{API}/workers/lease", headers=worker,
                               json={"wait_seconds": 0}).json()["tasks"]
    base = f"{API}/attempts/{task['task_id']}/{task['attempt']}"
    lines = [f"line {i:05d}" for i in range(10)]  # 10 characters each
    for _ in range(3):
        r = small.client.post(f"{base}/heartbeat", headers=worker, json={"log_lines": lines})
        assert r.status_code == 200
    r = small.client.post(f"{base}/complete", headers=worker,
                          json={"result": {}, "log_lines": ["x"]})
    assert r.status_code == 200
    stored = [line["line"] for line in small.client.get(
        f"{API}/jobs/{task['job_id']}/logs", headers=small.user()).json()["lines"]]
    marker = LOG_TRUNCATED.format(limit=50)
    assert stored == [*lines[:5], marker]


@pytest.mark.parametrize("pattern", ["../up.txt", "/etc/passwd", "a/../../b", "../*"])
def test_collect_patterns_cannot_leave_the_workdir(sqlite_coordinator: Coordinator,
                                                   pattern: str) -> None:
    r = sweep(sqlite_coordinator, collect=[pattern])
    assert r.status_code == 400, (pattern, r.text)
    assert r.json()["error"] == "invalid_input"


@pytest.mark.parametrize("name", ["../scene.blend", "/tmp/scene.blend", "a/scene.blend", ".."])
def test_render_scene_file_must_be_a_plain_name(sqlite_coordinator: Coordinator,
                                                name: str) -> None:
    sha = hashlib.sha256(b"BLENDER").hexdigest()
    r = sqlite_coordinator.client.post(f"{API}/jobs", headers=sqlite_coordinator.user(), json={
        "kind": "render", "params": {"scene": sha, "scene_file": name, "frames": "1"}})
    assert r.status_code == 400, (name, r.text)
    assert r.json()["error"] == "invalid_input" and "scene_file" in r.json()["message"]


@pytest.mark.parametrize("path", ["../x", "/abs", "a/../../x", "a//b", "./a", "a\\b"])
def test_output_paths_cannot_leave_the_download_folder(sqlite_coordinator: Coordinator,
                                                       path: str) -> None:
    coord = sqlite_coordinator
    assert sweep(coord).status_code == 201
    worker = coord.register_worker(["sweep"])
    [task] = coord.client.post(f"{API}/workers/lease", headers=worker,
                               json={"wait_seconds": 0}).json()["tasks"]
    sha = hashlib.sha256(SCRIPT).hexdigest()
    r = coord.client.post(f"{API}/attempts/{task['task_id']}/{task['attempt']}/outputs",
                          headers=worker, json={"path": path, "sha256": sha, "size": 1})
    assert r.status_code == 422 and r.json()["error"] == "invalid_input", (path, r.text)


def test_every_4xx_has_a_json_error_body(small: Coordinator) -> None:
    client, admin = small.client, small.user()
    answers = {
        400: client.post(f"{API}/jobs", headers=admin, json={"kind": "sweep", "params": {}}),
        401: client.get(f"{API}/jobs"),
        403: client.get(f"{API}/jobs", headers=small.register_worker()),
        404: client.get(f"{API}/jobs/999", headers=admin),
        405: client.delete(f"{API}/jobs", headers=admin),
        413: put(small, b"q" * 500),
        422: client.post(f"{API}/jobs", headers=admin, json={"kind": 5}),
    }
    answers[404.1] = client.get(f"{API}/no-such-endpoint", headers=admin)  # type: ignore[index]
    for status, r in answers.items():
        assert r.status_code == int(status), (status, r.text)
        body = r.json()
        assert set(body) == {"error", "message"}, (status, body)
        assert body["error"] and body["message"], (status, body)
