"""The dashboard against the real app in-process (SQLite): login and logout, pages that
read without JavaScript, the streamed submit form with errors next to fields, cancel and
retry with CSRF, job files, the live-update streams, and isolation between users."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from parallel_pilot.coordinator import sse
from parallel_pilot.coordinator.sessions import CSRF_COOKIE, SESSION_COOKIE
from parallel_pilot.web import events
from tests.integration import trusted
from tests.integration.conftest import Coordinator, make_coordinator

BLEND = b"BLENDER17-01v0500" + b"\0" * 4096  # a header as Blender 5.0 writes it
PASSWORD = "a long password"


def _password(coord: Coordinator) -> str:
    return (coord.data_dir / "admin-password").read_text().strip()


def login(client: TestClient, name: str, password: str) -> str:
    response = client.post("/login", data={"name": name, "password": password,
                                           "next": "/jobs"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/jobs"
    return client.cookies[CSRF_COOKIE]


def submit(client: TestClient, csrf: str, data: dict[str, str], content: bytes | None = BLEND,
           filename: str = "shot.blend") -> object:
    files = {"scene": (filename, content or b"", "application/octet-stream")}
    return client.post("/jobs/new", data={"csrf_token": csrf, **data}, files=files,
                       follow_redirects=False)


def make_user(coord: Coordinator, name: str) -> None:
    response = coord.client.post("/api/v1/users", headers=coord.user(),
                                 json={"name": name, "password": PASSWORD})
    assert response.status_code == 200, response.text


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    """SQLite; cookies without the Secure flag, since the test client speaks plain http
    to a host named "testserver"."""
    coord = make_coordinator(f"sqlite:///{tmp_path / 'pilot.db'}", tmp_path,
                             cookie_secure=False)
    with coord.client:
        coord.client.headers["accept"] = "text/html"
        yield coord
    coord.services.engine.dispose()


@pytest.fixture
def web(coordinator: Coordinator) -> TestClient:
    return coordinator.client


def test_pages_need_a_login_and_login_sets_the_session(coordinator: Coordinator,
                                                      web: TestClient) -> None:
    response = web.get("/jobs?state=running", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fjobs%3Fstate%3Drunning"
    page = web.get("/login")
    assert '<label for="login-name">' in page.text and 'id="login-name"' in page.text
    assert "PILOT_COOKIE_SECURE" not in page.text  # cookies are not Secure here
    assert "default-src 'self'" in page.headers["content-security-policy"]
    bad = web.post("/login", data={"name": "admin", "password": "wrong password"})
    assert bad.status_code == 401 and "wrong user name or password" in bad.text
    login(web, "admin", _password(coordinator))
    assert SESSION_COOKIE in web.cookies
    jobs = web.get("/jobs")
    assert jobs.status_code == 200 and "No jobs yet" in jobs.text
    # an open redirect is not followed: "next" must be a path on this site
    web.cookies.clear()
    away = web.post("/login", data={"name": "admin", "password":
                                        _password(coordinator),
                                        "next": "//evil.example/x"}, follow_redirects=False)
    assert away.headers["location"] == "/jobs"
    csrf = web.cookies[CSRF_COOKIE]
    assert web.post("/logout", data={}, follow_redirects=False).status_code == 403
    out = web.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    web.cookies.clear()
    assert web.get("/jobs", follow_redirects=False).status_code == 303


def test_submit_form_streams_the_file_and_shows_errors_next_to_fields(
        coordinator: Coordinator, web: TestClient) -> None:
    csrf = login(web, "admin", _password(coordinator))
    # wrong fields: each error is shown next to its field, the file is kept
    bad = submit(web, csrf, {"frames": "5-1", "chunk": "zero", "resolution": "300",
                                 "format": "PNG"})
    assert bad.status_code == 400
    text = bad.text
    assert re.search(r'id="chunk-error">must be a whole number', text)
    sha = hashlib.sha256(BLEND).hexdigest()
    assert f'name="scene_sha" value="{sha}"' in text and "Kept from your last try" in text
    again = submit(web, csrf, {"frames": "5-1", "resolution": "300", "scene_sha": sha,
                                   "scene_file": "shot.blend"}, content=None, filename="")
    assert again.status_code == 400
    assert 'id="resolution-error">' in again.text and 'aria-invalid="true"' in again.text
    assert 'id="frames-error">' in again.text
    # not a .blend: said next to the file field, and nothing kept
    notes = submit(web, csrf, {"frames": "1-4"}, content=b"my notes\n" * 10,
                   filename="notes.blend")
    assert notes.status_code == 400
    assert re.search(r'id="scene-error">[^<]*not a \.blend', notes.text), notes.text
    assert 'name="scene_sha"' not in notes.text
    # no file at all
    none = submit(web, csrf, {"frames": "1-4"}, content=None, filename="")
    assert 'id="scene-error">choose a .blend file' in none.text
    # a forged post (no CSRF token) is refused before the file is stored
    forged = web.post("/jobs/new", data={"frames": "1-4"},
                          files={"scene": ("x.blend", BLEND + b"x", "application/x")},
                          follow_redirects=False)
    assert forged.status_code == 403
    assert not (coordinator.services.blobs.exists(
        hashlib.sha256(BLEND + b"x").hexdigest()))
    # a good one: a job, and its page
    good = submit(web, csrf, {"frames": "1-4", "chunk": "2", "samples": "2",
                                  "engine": "CYCLES", "format": "PNG", "name": "my shot"})
    assert good.status_code == 303, good.text
    job_url = good.headers["location"]
    page = web.get(job_url)
    assert page.status_code == 200
    assert "my shot" in page.text and page.text.count('class="cell st-ready') == 2
    assert "Cancel job" in page.text
    job_id = int(job_url.rsplit("/", 1)[1])
    info = web.get(f"/api/v1/jobs/{job_id}").json()
    assert info["params"]["frames"] == "1-4" and info["params"]["blender_version"] == "5.0"
    # cancel needs the CSRF token; then retry brings it back
    assert web.post(f"/jobs/{job_id}/cancel", data={}).status_code == 403
    done = web.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf},
                        follow_redirects=False)
    assert done.status_code == 303
    cancelled = web.get(job_url).text
    assert "Retry failed tasks" in cancelled and "cancelled by user" in cancelled
    web.post(f"/jobs/{job_id}/retry", data={"csrf_token": csrf})
    assert web.get(f"/api/v1/jobs/{job_id}").json()["state"] == "queued"
    listed = web.get("/jobs?state=queued").text
    assert f'data-job="{job_id}"' in listed and "0/4 frames" in listed


def test_a_second_user_cannot_see_the_first_users_job_or_its_files(
        coordinator: Coordinator, web: TestClient, tmp_path: Path) -> None:
    coord = coordinator
    make_user(coord, "alice")
    make_user(coord, "bob")
    csrf = login(web, "alice", PASSWORD)
    job_url = submit(web, csrf, {"frames": "1-2"}).headers["location"]
    job_id = int(job_url.rsplit("/", 1)[1])
    sha = hashlib.sha256(BLEND).hexdigest()
    # alice reads her blob with the session cookie (the blob endpoints accept it)
    assert web.get(f"/api/v1/blobs/{sha}").content == BLEND
    # an output of her job, as a worker would record it
    out_sha = coord.services.blobs.write_bytes(b"\x89PNG fake frame")
    with coord.services.transaction() as conn:
        from parallel_pilot.store import queries as q
        q.insert_output(conn, job_id=job_id, task_id=None, attempt=0, path="frames/0001.png",
                        sha256=out_sha, size=15, now=coord.clock())
    file_url = f"/jobs/{job_id}/files/{out_sha}/0001.png"
    shown = web.get(file_url)
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/png"
    saved = web.get(file_url + "?download=1")
    assert saved.headers["content-disposition"].startswith("attachment")
    assert web.get(f"/jobs/{job_id}/files/{sha}/x.png").status_code == 404  # not an output
    web.cookies.clear()
    login(web, "bob", PASSWORD)
    for url in (job_url, file_url, f"/events/jobs/{job_id}"):
        response = web.get(url)
        assert response.status_code == 404, url
        assert f"no job {job_id}" in response.text
    assert web.get(f"/api/v1/blobs/{sha}").status_code == 404
    assert web.get(f"/api/v1/blobs/{out_sha}").status_code == 404
    assert f'data-job="{job_id}"' not in web.get("/jobs").text


def test_streams_send_fragments_and_end(coordinator: Coordinator,
                                        web: TestClient,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "STREAM_SECONDS", 0.3)
    monkeypatch.setattr(sse, "POLL_SECONDS", 0.05)
    csrf = login(web, "admin", _password(coordinator))
    job_id = int(submit(web, csrf, {"frames": "1-3"}).headers["location"].rsplit("/")[-1])
    for url, ids in ((f"/events/jobs/{job_id}", {"job-summary", "task-grid", "job-preview"}),
                     ("/events/jobs", {"jobs-rows"}), ("/events/workers", {"workers-rows"})):
        with web.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            body = "".join(response.iter_text())
        assert body.startswith("retry: ")
        first = body.split("event: fragments\ndata: ", 1)[1].split("\n\n", 1)[0]
        assert ids <= set(json.loads(first)), url
        # fragments are sent again only when they change
        assert body.count("event: fragments") == 1, url
    web.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf})
    with web.stream("GET", f"/events/jobs/{job_id}") as response:
        body = "".join(response.iter_text())
    assert "event: done" in body and "cancelled" in body


def test_account_page_tokens_and_admin_sections(coordinator: Coordinator,
                                                web: TestClient) -> None:
    csrf = login(web, "admin", _password(coordinator))
    page = web.get("/account").text
    assert "Worker join tokens" in page and "Users" in page
    made = web.post("/account/tokens", data={"csrf_token": csrf, "name": "laptop",
                                                 "expires_days": "30"})
    token = re.search(r'id="created-token" class="token">([^<]+)<', made.text)
    assert token is not None
    assert web.get("/api/v1/me", headers={"Authorization": f"Bearer {token[1]}"}).status_code == 200
    bad = web.post("/account/tokens", data={"csrf_token": csrf, "expires_days": "soon"})
    assert bad.status_code == 400 and "whole number of days" in bad.text
    users = web.post("/account/users", data={"csrf_token": csrf, "name": "carol",
                                                 "password": "short"})
    assert users.status_code == 400 and "password" in users.text
    ok = web.post("/account/users", data={"csrf_token": csrf, "name": "carol",
                                              "password": PASSWORD})
    assert "first API token of carol" in ok.text
    join = web.post("/account/join-tokens", data={"csrf_token": csrf, "name": "lab",
                                                      "uses": "2"})
    assert "worker join token" in join.text
    tokens = web.get("/api/v1/join-tokens").json()["join_tokens"]
    lab = next(t for t in tokens if t["name"] == "lab")
    web.post(f"/account/join-tokens/{lab['id']}/revoke", data={"csrf_token": csrf})
    assert "revoked" in web.get("/account").text
    web.cookies.clear()
    login(web, "carol", PASSWORD)
    assert "Worker join tokens" not in web.get("/account").text


def test_a_file_over_the_upload_limit_is_refused(tmp_path: Path) -> None:
    coord = make_coordinator(f"sqlite:///{tmp_path / 'pilot.db'}", tmp_path,
                             cookie_secure=False, max_upload_bytes=1000)
    with coord.client as web:
        web.headers["accept"] = "text/html"
        csrf = login(web, "admin", _password(coord))
        response = submit(web, csrf, {"frames": "1-2"})
        assert response.status_code == 413
        assert "at most 1000 bytes" in response.text
    assert coord.services.blobs.partial_uploads() == []
    coord.services.engine.dispose()


def test_a_sweep_shows_its_results_failure_and_the_workers(coordinator: Coordinator,
                                                          web: TestClient) -> None:
    login(web, "admin", _password(coordinator))
    job = web.post("/api/v1/jobs", headers=coordinator.user(), json={
        "kind": "sweep", "params": {"command": ["echo", "{item}"], "items": "a,b,c"}}).json()
    # trusted: its "a retry cannot help" is final at once
    worker = trusted.register(coordinator, "gpu-box", kinds=["sweep"], trusted=True)
    leased = web.post("/api/v1/workers/lease", headers=worker,
                      json={"slots": 3, "wait_seconds": 0}).json()["tasks"]
    assert len(leased) == 3
    running = web.get("/workers").text
    assert "gpu-box" in running and 'class="badge st-busy"' in running
    assert f"/jobs/{job['id']}?task=" in running  # its current task, linked
    for task, item in zip(leased[:2], "ab", strict=True):
        web.post(f"/api/v1/attempts/{task['task_id']}/{task['attempt']}/heartbeat",
                 headers=worker, json={"log_lines": [f"working on {item}"]})
        web.post(f"/api/v1/attempts/{task['task_id']}/{task['attempt']}/complete",
                 headers=worker, json={"result": {"item": item, "exit_code": 0,
                                                  "stdout": f"out-{item}\n", "files": {}}})
    last = leased[2]
    web.post(f"/api/v1/attempts/{last['task_id']}/{last['attempt']}/fail", headers=worker,
             json={"reason": "disk full on gpu-box", "retryable": False})
    page = web.get(f"/jobs/{job['id']}").text
    table = page.split('aria-label="Sweep results"', 1)[1]
    assert "out-a" in table and "out-b" in table and table.count('class="badge st-done"') == 2
    assert "disk full on gpu-box" in page  # the failure reason, next to the failed task
    assert 'class="cell st-failed selected"' in page  # the failed task is shown first
    # the worker said a retry cannot help: no retry is offered, and the page says why
    assert "Retry failed tasks" not in page and "Cancel job" not in page
    assert "the failure is not one a retry can fix" in page and 'id="no-retry"' in page
    numbers = {t["id"]: t["index"] + 1 for t in web.get(
        f"/api/v1/jobs/{job['id']}/tasks", headers=coordinator.user()).json()["tasks"]}
    first_log = web.get(f"/jobs/{job['id']}?task={numbers[leased[0]['task_id']]}").text
    assert "working on a" in first_log  # ?task= is the task's number in the job
    assert web.get("/jobs/999999").status_code == 404
    assert web.get("/jobs/abc").status_code == 404


def test_the_workers_page_shows_gpu_slots(coordinator: Coordinator, web: TestClient) -> None:
    login(web, "admin", _password(coordinator))
    gpu = {"name": "RTX 4090", "memory_bytes": 24 * 2**30}
    trusted.register(coordinator, "two-gpus", slots=3, gpus=[gpu, gpu])
    trusted.register(coordinator, "one-gpu", gpus=[gpu])
    trusted.register(coordinator, "cpu-only")
    rows = {row.split('class="name">', 1)[1].split("<", 1)[0]: row
            for row in web.get("/workers").text.split("<tr>")[2:]}
    assert "RTX 4090 (24.0 GiB), RTX 4090 (24.0 GiB) · 2 GPU slots" in rows["two-gpus"]
    assert "3 slots" in rows["two-gpus"]
    assert "RTX 4090 (24.0 GiB) · 1 GPU slot<" in rows["one-gpu"]
    assert "GPU slot" not in rows["cpu-only"]


def test_login_warns_when_the_browser_would_drop_the_session_cookie(
        sqlite_coordinator: Coordinator) -> None:
    # plain http to a host that is not local: the cookie is Secure, the browser drops it
    page = sqlite_coordinator.client.get("/login")
    assert "PILOT_COOKIE_SECURE=false" in page.text


def test_a_training_job_shows_a_row_per_finished_round(coordinator: Coordinator,
                                                      web: TestClient) -> None:
    login(web, "admin", _password(coordinator))
    spec = b"def build_model(): ...\n"
    sha = hashlib.sha256(spec).hexdigest()
    assert web.put(f"/api/v1/blobs/{sha}", headers=coordinator.user(),
                   content=spec).status_code in (200, 201)
    job = web.post("/api/v1/jobs", headers=coordinator.user(), json={
        "kind": "train", "params": {"spec": sha, "workers": 2, "rounds": 2}}).json()
    page = web.get(f"/jobs/{job['id']}").text
    assert 'aria-label="Training rounds"' not in page  # nothing finished yet
    worker = coordinator.register_worker(kinds=["train"])
    (init,) = web.post("/api/v1/workers/lease", headers=worker,
                       json={"slots": 1, "wait_seconds": 0}).json()["tasks"]
    weights = b"not really safetensors"
    weights_sha = hashlib.sha256(weights).hexdigest()
    attempt = {"X-Pilot-Attempt": f"{init['task_id']}/{init['attempt']}"}
    assert web.put(f"/api/v1/blobs/{weights_sha}", headers={**worker, **attempt},
                   content=weights).status_code in (200, 201)
    for path in ("rounds/0000/model.safetensors", "model.safetensors"):
        added = web.post(f"/api/v1/attempts/{init['task_id']}/{init['attempt']}/outputs",
                         headers=worker, json={"path": path, "sha256": weights_sha,
                                               "size": len(weights)})
        assert added.status_code == 200, added.text
    done = web.post(f"/api/v1/attempts/{init['task_id']}/{init['attempt']}/complete",
                    headers=worker, json={"result": {
                        "step": "init", "eval": {"loss": 2.30171, "accuracy": 0.125}}})
    assert done.status_code == 200, done.text
    page = web.get(f"/jobs/{job['id']}").text
    # the model a task uploaded is offered; the rounds' working state is not
    assert "Download model.safetensors" in page and "rounds/0000" not in page
    table = page.split('aria-label="Training rounds"', 1)[1]
    table = table.split("</table>", 1)[0]
    assert "<th scope=\"col\">Accuracy</th>" in table
    assert "2.3017" in table and "0.125" in table and "(initial)" in table
    assert table.count("<tr>") == 2  # the header and round 0
