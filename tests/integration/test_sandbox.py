"""Sandboxed sweep tasks under a real bwrap: no network (not even the coordinator's port on
loopback), nothing writable outside the working directory, and Python still runs. And a
job that requires a sandbox is never leased to a worker that does not sandbox."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from parallel_pilot.core.protocol import TaskLease
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.sandbox import sandbox_unavailable_reason
from tests.integration.conftest import Coordinator

API = "/api/v1"


class FakeContext:
    def __init__(self, workdir: Path, sandbox: bool = True) -> None:
        self.workdir = workdir
        self.sandbox = sandbox
        self.gpus: tuple[int, ...] | None = None  # no worker gives GPUs here
        self.stop_event = threading.Event()
        self.lines: list[str] = []

    def copy_input(self, name: str, dest: Path) -> Path:
        raise NotImplementedError

    def progress(self, fraction: float | None, message: str | None = None) -> None:
        pass

    def log(self, line: str) -> None:
        self.lines.append(line)

    def upload_output(self, path: str, file: Path) -> str:
        return "f" * 64


@pytest.fixture(scope="module")
def bwrap(requirement: Callable[[str | None], None]) -> None:
    requirement(sandbox_unavailable_reason())


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP server on 127.0.0.1 in the test process (standing in for the coordinator)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


def run_python(workdir: Path, code: str, sandbox: bool = True) -> dict:
    task = TaskLease(task_id=1, attempt=1, job_id=1, kind="sweep", name="item 1",
                     payload={"item": "1", "command": [sys.executable, "-c", code],
                              "collect": [], "timeout_seconds": 60, "output_cap": 10000},
                     inputs={}, lease_expires_at=0, heartbeat_seconds=1)
    return get_kind("sweep").run(task, FakeContext(workdir, sandbox))


CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(5)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
    print("connected")
except OSError as exc:
    print("refused", type(exc).__name__)
"""

WRITE = """
import sys
try:
    open(sys.argv[1], "w").write("escaped")
    print("wrote")
except OSError as exc:
    print("denied", type(exc).__name__)
"""


def test_unsandboxed_control_reaches_the_port(tmp_path: Path, listener: int) -> None:
    # the probe itself works: without the sandbox the same command connects
    result = run_python(tmp_path, CONNECT.replace("sys.argv[1]", str(listener)), sandbox=False)
    assert result["stdout"].strip() == "connected", result


def test_sandboxed_task_cannot_reach_a_loopback_port(bwrap: None, tmp_path: Path,
                                                     listener: int) -> None:
    result = run_python(tmp_path, CONNECT.replace("sys.argv[1]", str(listener)))
    assert result["exit_code"] == 0, result
    assert result["stdout"].startswith("refused"), result


def test_sandboxed_task_cannot_write_outside_its_workdir(bwrap: None, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    home = Path.home()
    targets = [outside / "x.txt", home / f"pilot-sandbox-escape-{id(workdir)}.txt",
               Path("/var/tmp") / f"pilot-sandbox-escape-{id(workdir)}.txt"]
    for target in targets:
        result = run_python(workdir, WRITE.replace("sys.argv[1]", repr(str(target))))
        assert result["stdout"].startswith("denied"), (target, result)
        assert not target.exists()


def test_sandboxed_task_writes_in_its_workdir_and_private_tmp(bwrap: None,
                                                              tmp_path: Path) -> None:
    code = ("import os, tempfile\n"
            "open('inside.txt', 'w').write('ok')\n"
            "with tempfile.NamedTemporaryFile(dir='/tmp', delete=False) as f: f.write(b'x')\n"
            "print(os.getcwd(), os.path.exists(f.name))\n")
    result = run_python(tmp_path, code)
    assert result["exit_code"] == 0, result
    assert result["stdout"].split() == [str(tmp_path), "True"]
    assert (tmp_path / "inside.txt").read_text() == "ok"


def test_sandboxed_task_still_runs_python(bwrap: None, tmp_path: Path) -> None:
    result = run_python(tmp_path, "import sys, json; print(json.dumps(sys.version_info[:2]))")
    assert result["exit_code"] == 0, result
    assert result["stdout"].strip() == f"[{sys.version_info[0]}, {sys.version_info[1]}]"


def register(coord: Coordinator, name: str, sandbox: bool, trusted: bool = False,
             ) -> dict[str, str]:
    r = coord.client.post(f"{API}/workers/register", json={
        "join_token": coord.join_token, "name": name,
        "capabilities": {"cpu_cores": 2, "ram_bytes": 2**30, "kinds": ["sweep"],
                         "sandbox": sandbox},
    })
    assert r.status_code == 200, r.text
    if trusted:  # an admin vouches for the machine (pilot workers trust ID)
        t = coord.client.post(f"{API}/workers/{r.json()['worker_id']}/trust",
                              headers=coord.user())
        assert t.status_code == 200, t.text
    return {"Authorization": f"Bearer {r.json()['worker_token']}"}


def lease(coord: Coordinator, worker: dict[str, str]) -> list:
    r = coord.client.post(f"{API}/workers/lease", headers=worker,
                          json={"slots": 4, "wait_seconds": 0})
    assert r.status_code == 200, r.text
    return r.json()["tasks"]


def test_job_requiring_sandbox_goes_only_to_sandboxing_workers(
        sqlite_coordinator: Coordinator) -> None:
    coord = sqlite_coordinator
    r = coord.client.post(f"{API}/jobs", headers=coord.user(), json={
        "kind": "sweep", "params": {"command": ["echo", "{item}"], "items": "1-2"},
        "requirements": {"sandbox": True}})
    assert r.status_code == 201, r.text
    plain = register(coord, "plain", sandbox=False, trusted=True)
    claims = register(coord, "claims", sandbox=True)  # says so; nobody vouched for it
    boxed = register(coord, "boxed", sandbox=True, trusted=True)
    assert lease(coord, plain) == []
    assert lease(coord, claims) == []
    tasks = lease(coord, boxed)
    assert len(tasks) == 2 and {t["job_id"] for t in tasks} == {r.json()["id"]}
