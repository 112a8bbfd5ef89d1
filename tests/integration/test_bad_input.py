"""Bad input gets a clear 4xx with a JSON error body naming what is wrong, and creates
nothing (SQLite; the same app code serves every database)."""

from __future__ import annotations

import hashlib

import pytest

from parallel_pilot.kinds import known_kinds
from tests.integration.conftest import Coordinator

API = "/api/v1"
SWEEP = {"command": ["python", "sim.py", "{item}"], "items": "1-3"}


def submit(coord: Coordinator, params: dict, kind: str = "sweep"):
    return coord.client.post(f"{API}/jobs", headers=coord.user(),
                             json={"kind": kind, "params": params})


def job_count(coord: Coordinator) -> int:
    return len(coord.client.get(f"{API}/jobs", headers=coord.user()).json()["jobs"])


@pytest.mark.parametrize("items, words", [
    ("1-x", "cannot read '1-x'"),
    ("10-1", "ends before it starts"),
    ("", "no items given"),
    ("1-5x0", "step"),
    ("1-99999999999", "more than"),
    ("a/b", "results folder"),
])
def test_malformed_item_ranges(sqlite_coordinator: Coordinator, items: str, words: str) -> None:
    r = submit(sqlite_coordinator, {**SWEEP, "items": items})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "invalid_input" and words in body["message"]
    assert job_count(sqlite_coordinator) == 0


def test_unknown_kind(sqlite_coordinator: Coordinator) -> None:
    r = submit(sqlite_coordinator, {}, kind="teleport")
    assert r.status_code == 400
    assert r.json() == {"error": "unknown_kind",
                        "message": "unknown job kind 'teleport'; known kinds: "
                                   + ", ".join(known_kinds())}
    assert {"render", "sleep", "sweep", "python"} <= set(known_kinds())


def test_missing_files_are_named(sqlite_coordinator: Coordinator) -> None:
    sha = hashlib.sha256(b"never uploaded").hexdigest()
    r = submit(sqlite_coordinator, {**SWEEP, "files": {"sim.py": sha}})
    assert r.status_code == 400
    assert r.json()["error"] == "missing_blob" and "sim.py" in r.json()["message"]
    assert job_count(sqlite_coordinator) == 0


def test_unsafe_file_names(sqlite_coordinator: Coordinator) -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    for name in ("../evil.py", "/etc/passwd", "a//b"):
        r = submit(sqlite_coordinator, {**SWEEP, "files": {name: sha}})
        assert r.status_code == 400 and "relative path" in r.json()["message"], name


@pytest.mark.parametrize("path", ["/api/v1/jobs/424242", "/api/v1/jobs/424242/tasks",
                                  "/api/v1/jobs/424242/outputs", "/api/v1/jobs/424242/logs"])
def test_unknown_job_ids(sqlite_coordinator: Coordinator, path: str) -> None:
    r = sqlite_coordinator.client.get(path, headers=sqlite_coordinator.user())
    assert r.status_code == 404
    assert r.json() == {"error": "job_not_found", "message": "no job 424242"}


def test_cancel_unknown_job(sqlite_coordinator: Coordinator) -> None:
    r = sqlite_coordinator.client.post(f"{API}/jobs/77/cancel", headers=sqlite_coordinator.user())
    assert r.status_code == 404 and r.json()["error"] == "job_not_found"


def test_job_id_that_is_not_a_number(sqlite_coordinator: Coordinator) -> None:
    r = sqlite_coordinator.client.get(f"{API}/jobs/abc", headers=sqlite_coordinator.user())
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_input" and "job_id" in r.json()["message"]


def test_blob_whose_content_does_not_match_its_name(sqlite_coordinator: Coordinator) -> None:
    coord = sqlite_coordinator
    claimed = hashlib.sha256(b"what I said").hexdigest()
    r = coord.client.put(f"{API}/blobs/{claimed}", headers=coord.user(), content=b"what I sent")
    assert r.status_code == 422
    assert r.json()["error"] == "blob_mismatch" and claimed in r.json()["message"]
    assert coord.client.head(f"{API}/blobs/{claimed}", headers=coord.user()).status_code == 404
    assert not any(coord.services.settings.blob_dir.rglob(claimed))


def test_blob_name_that_is_not_a_hash(sqlite_coordinator: Coordinator) -> None:
    r = sqlite_coordinator.client.put(f"{API}/blobs/not-a-hash",
                                      headers=sqlite_coordinator.user(), content=b"x")
    assert r.status_code == 400 and "SHA-256" in r.json()["message"]


def test_blob_upload_is_deduplicated(sqlite_coordinator: Coordinator) -> None:
    coord = sqlite_coordinator
    data = b"scene" * 1000
    sha = hashlib.sha256(data).hexdigest()
    for _ in range(2):
        assert coord.client.put(f"{API}/blobs/{sha}", headers=coord.user(),
                                content=data).status_code == 200
    assert len(list(coord.services.settings.blob_dir.rglob(sha))) == 1


def test_no_token_and_wrong_token(sqlite_coordinator: Coordinator) -> None:
    r = sqlite_coordinator.client.get(f"{API}/jobs")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = sqlite_coordinator.client.get(f"{API}/jobs", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_worker_token_cannot_submit_and_user_token_cannot_lease(
        sqlite_coordinator: Coordinator) -> None:
    worker = sqlite_coordinator.register_worker()
    r = sqlite_coordinator.client.post(f"{API}/jobs", headers=worker,
                                       json={"kind": "sleep", "params": {}})
    assert r.status_code == 403
    r = sqlite_coordinator.client.post(f"{API}/workers/lease", headers=sqlite_coordinator.user(),
                                       json={"slots": 1, "wait_seconds": 0})
    assert r.status_code == 403


def test_bad_join_token(sqlite_coordinator: Coordinator) -> None:
    r = sqlite_coordinator.client.post(f"{API}/workers/register", json={
        "join_token": "pp_j_wrong", "name": "x",
        "capabilities": {"cpu_cores": 1, "ram_bytes": 1, "kinds": ["sleep"]}})
    assert r.status_code == 401 and "join token" in r.json()["message"]


def test_unknown_fields_are_refused(sqlite_coordinator: Coordinator) -> None:
    r = sqlite_coordinator.client.post(f"{API}/jobs", headers=sqlite_coordinator.user(),
                                       json={"kind": "sleep", "params": {"tasks": 1},
                                             "prioirty": 3})
    assert r.status_code == 422 and "prioirty" in r.json()["message"]
    r = submit(sqlite_coordinator, {"tasks": 1, "millis": 5}, kind="sleep")
    assert r.status_code == 400 and "millis" in r.json()["message"]


def test_unknown_route_has_a_json_error(sqlite_coordinator: Coordinator) -> None:
    r = sqlite_coordinator.client.get(f"{API}/nothing-here")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_sqlite_uses_wal(sqlite_coordinator: Coordinator) -> None:
    with sqlite_coordinator.services.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
