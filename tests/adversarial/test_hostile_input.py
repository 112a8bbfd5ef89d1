"""Hostile input, sent as raw bytes to a real coordinator (SQLite and PostgreSQL): text that
no database stores (a lone surrogate, NUL), numbers that are not numbers (1e309, NaN),
bodies too large or never ending, a job whose parameters are huge, and task output full
of bytes a program may print. Each is refused with a 4xx naming what is wrong (and
nothing is stored), or stored safely; the server stays healthy for everyone."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import sqlalchemy as sa

from parallel_pilot.client.local_cluster import LocalCluster
from tests.adversarial.conftest import API, Client, Coordinator, HostileWorker, running_coordinator

SWEEP = {"command": ["echo", "{item}"], "items": "1-3"}
MB = 1024 * 1024


def post_raw(client: Client, path: str, body: bytes) -> httpx.Response:
    """A JSON body sent as the bytes given (httpx cannot encode a lone surrogate)."""
    return client.request("POST", path, content=body,
                          headers={"Content-Type": "application/json"})


def refused(response: httpx.Response, *words: str) -> str:
    assert response.status_code == 422, f"{response.status_code} {response.text}"
    body = response.json()
    assert body["error"] == "invalid_input"
    for word in words:
        assert word in body["message"], body["message"]
    return str(body["message"])


def job_ids(client: Client) -> list[int]:
    return [j["id"] for j in client.ok("GET", "/jobs")["jobs"]]


def wait_for(check: Callable[[], Any], seconds: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


def server_rss(cluster: LocalCluster) -> int:
    assert cluster.server is not None
    proc = psutil.Process(cluster.server.pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    return sock


def read_answer(sock: socket.socket, seconds: float) -> tuple[int, bytes, bool]:
    """(status, whole answer, whether the server closed the connection after it)."""
    sock.settimeout(seconds)
    data = b""
    closed = False
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data, closed


def head(method: str, path: str, token: str | None, extra: list[str]) -> bytes:
    lines = [f"{method} {API}{path} HTTP/1.1", "Host: 127.0.0.1",
             "Content-Type: application/json", *extra]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---------------------------------------------------------------- text


def test_lone_surrogate_is_refused_and_breaks_nothing(coordinator: Coordinator) -> None:
    mallory = coordinator.user("mallory")
    worker = coordinator.worker("w1", slots=4)
    before = job_ids(coordinator.admin)
    for body, where in [
        (b'{"kind": "sweep", "params": {"command": ["echo", "\\ud800"], "items": "1-3"}}',
         "params.command.1"),
        (b'{"kind": "sweep", "params": {"command": ["echo"], "items": ["a"]}, '
         b'"name": "x\\udfff"}', "name"),
        (b'{"kind": "sweep", "params": {"command": ["echo"], "items": "1-2", '
         b'"files": {"\\ud83d": "' + b"a" * 64 + b'"}}}', "params.files"),
    ]:
        refused(post_raw(mallory, "/jobs", body), where, "lone surrogate")
    # raw surrogate bytes (CESU-style ED A0 80) are not UTF-8 at all
    refused(post_raw(mallory, "/jobs", b'{"kind": "sweep", "params": {"command": ["\xed\xa0'
                     b'\x80"], "items": "1"}}'), "not valid UTF-8")
    # nothing was stored: every reader and every lease still works
    assert job_ids(mallory) == [] and job_ids(coordinator.admin) == before
    assert worker.take(4) == []
    made = mallory.submit("sweep", SWEEP)
    assert {t["job_id"] for t in worker.take(4)} == {made["id"]}
    assert job_ids(mallory) == [made["id"]]
    # a proper pair (an emoji) is valid text and goes through
    ok = post_raw(mallory, "/jobs", b'{"kind": "sweep", "params": {"command": ["echo", '
                  b'"\\ud83d\\ude00"], "items": "1"}}')
    assert ok.status_code == 201, ok.text
    assert ok.json()["params"]["command"][1] == "\U0001F600"


def test_nul_is_refused_in_names_commands_and_queries(coordinator: Coordinator) -> None:
    mallory = coordinator.user("mallory")
    refused(mallory.request("POST", "/jobs", json={"kind": "sweep", "params": {
        "command": ["echo\x00rm"], "items": "1-2"}}),
        "params.command.0: text must not contain NUL")
    refused(mallory.request("POST", "/jobs", json={"kind": "sweep", "params": SWEEP,
                                                   "name": "evil\x00name"}),
            "name: text must not contain NUL")
    refused(mallory.request("POST", "/jobs", json={"kind": "sweep", "params": {
        **SWEEP, "items": ["a\x00"]}}), "params.items.0")
    refused(mallory.request("POST", "/jobs", json={"kind": "sweep\x00", "params": SWEEP}),
            "kind")
    refused(mallory.request("POST", "/tokens", json={"name": "t\x00"}), "name")
    refused(coordinator.admin.request("POST", "/users", json={"name": "eve\x00"}), "name")
    refused(coordinator.admin.request("POST", "/join-tokens", json={"name": "j\x00"}), "name")
    refused(coordinator.register("w\x00rker"), "name: text must not contain NUL")
    refused(coordinator.register("w1", tags=["gpu\x00"]), "capabilities.tags.0")
    refused(mallory.request("GET", "/jobs", params={"state": "queued\x00"}), "query.state")
    worker = coordinator.worker("w1")
    refused(worker.request("GET", "/attempts/1/1/job-outputs", params={"prefix": "a\x00"}),
            "query.prefix")
    assert job_ids(mallory) == []
    assert [w["name"] for w in coordinator.admin.ok("GET", "/workers")["workers"]] == ["w1"]
    # the dashboard's forms are held to the same rule
    web = httpx.Client(base_url=coordinator.url, timeout=30)
    login = web.post(f"{API}/session", json={"name": "admin\x00", "password": "x" * 8})
    refused(login, "name: text must not contain NUL")
    page = web.post("/login", data={"name": "adm\x00in", "password": "whatever1"})
    assert page.status_code == 422 and "must not contain NUL" in page.text
    web.close()


def test_nul_is_refused_in_the_dashboards_streamed_submit_form(
        coordinator: Coordinator) -> None:
    """The submit form (multipart, read as it streams) holds its fields to the rule."""
    password = (coordinator.cluster.data_dir / "admin-password").read_text().strip()
    web = httpx.Client(base_url=coordinator.url, timeout=30)
    session = web.post(f"{API}/session", json={"name": "admin", "password": password})
    assert session.status_code == 200, session.text
    csrf = session.json()["csrf_token"]
    page = web.post("/jobs/new", data={"csrf_token": csrf, "name": "scene\x00one",
                                       "frames": "1"}, files={"x": ("", b"")})
    assert page.status_code == 422 and "name: text must not contain NUL" in page.text
    # a file name with a raw NUL (httpx would escape it): the bytes as a browser may send
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n"
            f"{csrf}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"blend\"; "
            f"filename=\"a\x00.blend\"\r\n\r\nBLENDER\r\n--{boundary}--\r\n").encode()
    page = web.post("/jobs/new", content=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert page.status_code == 422 and "blend.filename: text must not contain NUL" in page.text
    web.close()
    assert job_ids(coordinator.admin) == []


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("raw, where", [
    (b'"timeout_seconds": 1e309', "params.timeout_seconds"),
    (b'"timeout_seconds": NaN', "params.timeout_seconds"),
    (b'"timeout_seconds": -Infinity', "params.timeout_seconds"),
    (b'"output_cap": 99999999999999999999999', "params.output_cap"),
])
def test_numbers_that_are_not_numbers_are_refused(coordinator: Coordinator, raw: bytes,
                                                  where: str) -> None:
    mallory = coordinator.user("mallory")
    body = b'{"kind": "sweep", "params": {"command": ["echo"], "items": "1-2", ' + raw + b"}}"
    message = refused(post_raw(mallory, "/jobs", body), where)
    assert "finite" in message or "integer must be between" in message
    assert job_ids(mallory) == []


def test_numbers_elsewhere_are_bounded(coordinator: Coordinator) -> None:
    mallory = coordinator.user("mallory")
    refused(post_raw(mallory, "/jobs", b'{"kind": "sweep", "params": {"command": ["e"], '
                     b'"items": "1"}, "priority": 1e400}'), "priority", "finite")
    refused(post_raw(mallory, "/jobs", b'{"kind": "sweep", "params": {"command": ["e"], '
                     b'"items": "1"}, "requirements": {"min_ram_bytes": '
                     + str(2**64).encode() + b"}}"), "requirements.min_ram_bytes")
    refused(coordinator.register("w1", ram_bytes=2**70), "capabilities.ram_bytes")
    # finite but absurd: a time limit past 30 days is a parameter error
    too_long = mallory.request("POST", "/jobs", json={"kind": "sweep", "params": {
        **SWEEP, "timeout_seconds": 1e12}})
    assert too_long.status_code == 400 and "timeout_seconds" in too_long.text
    assert job_ids(mallory) == []


# ---------------------------------------------------------------- what a task printed


def test_nul_and_bad_bytes_in_task_output_are_stored_escaped(
        coordinator: Coordinator) -> None:
    alice = coordinator.user("alice")
    job = alice.submit("sweep", {**SWEEP, "items": "1-2"})
    worker = coordinator.worker("w1", slots=2)
    first, second = sorted(worker.take(2), key=lambda t: t["task_id"])
    # a running report whose log and message hold NUL, a raw byte that is not UTF-8 and
    # a lone surrogate; then results with the same, and NaN where a number should be
    report = (b'{"reports": [{"task_id": %d, "attempt": %d, "outcome": "running", '
              b'"message": "half\\u0000way", "log_lines": ["out \\u0000 \xff\xfe end", '
              b'"\\udc80 alone"]}], "held": [{"task_id": %d, "attempt": %d}, '
              b'{"task_id": %d, "attempt": %d}]}') % (
        first["task_id"], first["attempt"], first["task_id"], first["attempt"],
        second["task_id"], second["attempt"])
    answer = post_raw(worker, "/workers/sync", report)
    assert answer.status_code == 200, answer.text
    assert [v["accepted"] for v in answer.json()["verdicts"]] == [True]
    done = (b'{"reports": [{"task_id": %d, "attempt": %d, "outcome": "completed", '
            b'"result": {"item": "1", "exit_code": 0, "stdout": "a\\u0000b\xffc\\ud800", '
            b'"stderr": "", "files": {}, "seconds": NaN, "timed_out": false}}], '
            b'"held": [{"task_id": %d, "attempt": %d}]}') % (
        first["task_id"], first["attempt"], second["task_id"], second["attempt"])
    answer = post_raw(worker, "/workers/sync", done)
    assert answer.status_code == 200, answer.text
    assert answer.json()["verdicts"][0]["accepted"] is True
    # the older per-attempt route escapes the same way
    legacy = (b'{"result": {"item": "2", "exit_code": 3, "stdout": "\\u0000\\u0000", '
              b'"stderr": "\xc3(", "files": {}}, "log_lines": ["bye\\u0000"]}')
    answer = post_raw(worker, f"/attempts/{second['task_id']}/{second['attempt']}/complete",
                      legacy)
    assert answer.status_code == 200, answer.text
    finished = wait_for(lambda: (j := alice.ok("GET", f"/jobs/{job['id']}"))["state"]
                        == "completed" and j, what="the job to complete")
    assert finished["failed_items"] == 1
    tasks = {t["id"]: t for t in alice.ok("GET", f"/jobs/{job['id']}/tasks")["tasks"]}
    assert tasks[first["task_id"]]["result"]["stdout"] == "a\ufffdb\ufffdc\ufffd"
    assert tasks[first["task_id"]]["result"]["seconds"] is None
    assert tasks[second["task_id"]]["result"]["stdout"] == "\ufffd\ufffd"
    assert tasks[second["task_id"]]["result"]["stderr"] == "\ufffd("
    lines = [line["line"] for line in alice.ok("GET", f"/jobs/{job['id']}/logs")["lines"]]
    assert "out \ufffd \ufffd\ufffd end" in lines and "\ufffd alone" in lines
    assert "bye\ufffd" in lines
    # the collected table is made from the escaped text, and everyone can still read
    assert job_ids(coordinator.admin) == [job["id"]]


def test_results_of_the_wrong_type_break_no_reads(coordinator: Coordinator) -> None:
    """A sweep result is counted in SQL (failed items): an exit code that is text, or past
    what the database casts to an integer, made every job list a 500 on PostgreSQL."""
    alice = coordinator.user("alice")
    job = alice.submit("sweep", SWEEP)
    worker = coordinator.worker("w1", slots=3)
    tasks = sorted(worker.take(3), key=lambda t: t["task_id"])
    results = [{"exit_code": "abc"}, {"exit_code": 2**40, "timed_out": "yes"},
               {"exit_code": 0, "error": {"nested": 1}}]
    answer = worker.sync(reports=[
        {"task_id": t["task_id"], "attempt": t["attempt"], "outcome": "completed",
         "result": r} for t, r in zip(tasks, results, strict=True)])
    assert all(v["accepted"] for v in answer["verdicts"])
    for reader in (alice, coordinator.admin):
        assert job["id"] in job_ids(reader)
    info = alice.ok("GET", f"/jobs/{job['id']}")
    assert info["state"] == "completed" and info["failed_items"] == 3
    stored = [t["result"] for t in alice.ok("GET", f"/jobs/{job['id']}/tasks")["tasks"]]
    assert stored[0]["exit_code"] == -1 and stored[0]["exit_code_reported"] == "abc"
    assert stored[1]["timed_out"] is True and stored[2]["error"] == "{'nested': 1}"


def test_a_result_nested_too_deep_is_refused(coordinator: Coordinator) -> None:
    """Stored, a result 300 levels deep made its job's task list unanswerable."""
    alice = coordinator.user("alice")
    job = alice.submit("sweep", {**SWEEP, "items": "1"})
    worker = coordinator.worker("w1")
    (task,) = worker.take(1)
    deep: Any = "x"
    for _ in range(300):
        deep = {"a": deep}
    answer = worker.request("POST", "/workers/sync", json={"reports": [{
        "task_id": task["task_id"], "attempt": task["attempt"], "outcome": "completed",
        "result": {"deep": deep}}], "held": []})
    refused(answer, "reports.0.result.deep.a", "nested deeper than 32 levels")
    tasks = alice.ok("GET", f"/jobs/{job['id']}/tasks")["tasks"]
    assert [t["state"] for t in tasks] == ["leased"]  # the report changed nothing


def test_real_task_printing_nul_and_bad_bytes_completes(coordinator: Coordinator) -> None:
    """A real worker runs a command whose output holds NUL and bytes that are not UTF-8
    (PostgreSQL refused such a result before, and the job failed as 'worker lost')."""
    alice = coordinator.user("alice")
    script = alice.upload(b"import sys\nsys.stdout.buffer.write(b'a\\x00b\\xff\\xfec\\n')\n"
                          b"sys.stderr.buffer.write(b'e\\x00\\n')\n")
    job = alice.submit("sweep", {"command": ["python3", "p.py", "{item}"], "items": "1-2",
                                 "files": {"p.py": script}})
    coordinator.cluster.add_worker("real")
    finished = wait_for(lambda: (j := alice.ok("GET", f"/jobs/{job['id']}"))["state"]
                        in ("completed", "failed") and j, 120, "the job to finish")
    assert finished["state"] == "completed", finished
    assert finished["failed_items"] == 0
    for task in alice.ok("GET", f"/jobs/{job['id']}/tasks")["tasks"]:
        assert task["result"]["stdout"] == "a\ufffdb\ufffd\ufffdc\n", task
        assert task["result"]["stderr"] == "e\ufffd\n"


# ---------------------------------------------------------------- bodies


def test_oversized_bodies_are_refused_unread_and_cost_no_memory(
        coordinator: Coordinator) -> None:
    cluster = coordinator.cluster
    before = server_rss(cluster)
    # 300 MB declared, no token: 413 at once, before a byte of it is read; closed
    for token in (None, "not-a-token", coordinator.admin.token):
        sock = connect(coordinator.url)
        started = time.monotonic()
        sock.sendall(head("POST", "/jobs", token, [f"Content-Length: {300 * MB}"]))
        status, answer, closed = read_answer(sock, 10)
        assert status == 413 and closed, answer[:300]
        assert b"payload_too_large" in answer
        took = time.monotonic() - started
        print(f"\n300 MB declared, token {token!r:.12}: 413 in {took * 1000:.0f} ms")
        assert took < 5
        sock.close()
    # chunked, without a length and without a (valid) token: 401 before the body is
    # read, and the connection closes (a stranger cannot make the server take 300 MB)
    for token in (None, "not-a-token"):
        sock = connect(coordinator.url)
        sock.sendall(head("POST", "/jobs", token, ["Transfer-Encoding: chunked"])
                     + b"%x\r\n%s\r\n" % (1024, b" " * 1024))
        status, answer, closed = read_answer(sock, 10)
        assert status == 401 and closed, answer[:300]
        sock.close()
    # a worker endpoint with a user's token: refused (403) unread as well
    sock = connect(coordinator.url)
    sock.sendall(head("POST", "/workers/sync", coordinator.admin.token,
                      [f"Content-Length: {100 * MB}"]))
    status, answer, closed = read_answer(sock, 10)
    assert status == 403 and closed, answer[:300]
    sock.close()
    grown = server_rss(cluster) - before
    print(f"\n{coordinator.database}: 300 MB bodies refused unread; server RSS "
          f"{before / MB:.0f} MB -> {(before + grown) / MB:.0f} MB")
    assert grown < 30 * MB, f"the server grew by {grown / MB:.0f} MB"


def test_chunked_body_over_the_limit_from_a_user_is_cut_off(tight_server: Coordinator) -> None:
    """A valid token, no length, more than ``max_body_bytes``: cut off at the limit."""
    sock = connect(tight_server.url)
    sock.sendall(head("POST", "/jobs", tight_server.admin.token, ["Transfer-Encoding: chunked"]))
    piece = MB // 4
    chunk = b"%x\r\n%s\r\n" % (piece, b" " * piece)
    for _ in range(TIGHT_BODY_BYTES // piece + 1):  # just past the limit, then wait
        sock.sendall(chunk)
    status, answer, closed = read_answer(sock, 10)
    assert status == 413 and closed, answer[:300]
    assert b"at most %d bytes" % TIGHT_BODY_BYTES in answer
    sock.close()
    assert job_ids(tight_server.admin) == []


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_body_that_never_ends_is_closed_in_time(tight_server: Coordinator,
                                                  framing: str) -> None:
    mallory = tight_server.user("mallory")
    sockets = []
    started = time.monotonic()
    for _ in range(3):  # several at once: each is closed on its own
        sock = connect(tight_server.url)
        extra = ["Content-Length: 100000"] if framing == "length" else \
            ["Transfer-Encoding: chunked"]
        start = b'{"kind": "sweep", "params": '
        sock.sendall(head("POST", "/jobs", mallory.token, extra)
                     + (start if framing == "length" else b"%x\r\n%s\r\n" % (len(start), start)))
        sockets.append(sock)
    for sock in sockets:
        status, answer, closed = read_answer(sock, STALL_SECONDS + 10)
        assert status == 408 and closed, answer[:300]
        assert b"stopped arriving" in answer
        sock.close()
    assert time.monotonic() - started < STALL_SECONDS + 10
    # a stalled upload of blob bytes ends the same way
    sock = connect(tight_server.url)
    sock.sendall(head("PUT", f"/blobs/{'a' * 64}", mallory.token, ["Content-Length: 1000"])
                 .replace(b"application/json", b"application/octet-stream") + b"x" * 10)
    status, answer, closed = read_answer(sock, STALL_SECONDS + 10)
    assert status == 408 and closed, answer[:300]
    sock.close()
    # and the server serves everyone as before
    assert tight_server.admin.ok("GET", "/health")["ok"] is True
    made = mallory.submit("sweep", SWEEP)
    assert job_ids(mallory) == [made["id"]]


STALL_SECONDS = 1.5  # body_stall_seconds of tight_server
TIGHT_BODY_BYTES = 4 * MB  # max_body_bytes of tight_server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def tight_server(request: pytest.FixtureRequest, tmp_path: Path,
                 fresh_database: Callable[..., str]) -> Iterator[Coordinator]:
    """A coordinator with a short body stall time and a small body limit."""
    url = fresh_database(request.param, migrated=True)
    with running_coordinator(tmp_path / "tight", request.param, url,
                             body_stall_seconds=STALL_SECONDS,
                             max_body_bytes=TIGHT_BODY_BYTES) as coord:
        yield coord


# ---------------------------------------------------------------- huge parameters


def database_bytes(coordinator: Coordinator) -> int:
    """What the database holds on disk: SQLite's file after moving its write-ahead log
    in (the log keeps its largest size, whatever it holds now); PostgreSQL's own count."""
    url = server_url(coordinator)
    if coordinator.database == "sqlite":
        path = Path(url.removeprefix("sqlite:///"))
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        size = int(conn.execute(sa.text("SELECT pg_database_size(current_database())"))
                   .scalar_one())
    engine.dispose()
    return size


def server_url(coordinator: Coordinator) -> str:
    args = coordinator.cluster.server_args
    return str(args[list(args).index("--database-url") + 1])


def test_a_huge_parameter_is_stored_once_per_job(coordinator: Coordinator) -> None:
    alice = coordinator.user("alice")
    big = os.urandom(5 * MB).hex()  # 10 MB of text that does not compress to nothing
    items = 200
    before = database_bytes(coordinator)
    job = alice.submit("sweep", {"command": ["echo", big, "{item}"], "items": f"1-{items}"})
    assert job["tasks_total"] == items
    grown = database_bytes(coordinator) - before
    print(f"\n{coordinator.database}: {items} items of a {len(big) / MB:.0f} MB command grew "
          f"the database by {grown / MB:.1f} MB")
    # ~10 MB once, not 200 x 10 MB = 2 GB
    assert grown < 3 * len(big), f"the database grew by {grown / MB:.0f} MB"
    # the worker is leased the same payload as ever: the whole command with its item
    worker: HostileWorker = coordinator.worker("w1")
    (task,) = worker.take(1)
    assert task["payload"]["command"] == ["echo", big, "{item}"]
    assert task["payload"]["item"] == "1" and task["payload"]["output_cap"] == 64 * 1024
    result = {"item": "1", "exit_code": 0, "stdout": "ok\n", "stderr": "", "files": {}}
    answer = worker.sync(reports=[{"task_id": task["task_id"], "attempt": task["attempt"],
                                   "outcome": "completed", "result": result}])
    assert answer["verdicts"][0]["accepted"] is True
    info = alice.ok("GET", f"/jobs/{job['id']}")
    assert info["tasks_done"] == 1 and len(json.dumps(info["params"])) > len(big)
