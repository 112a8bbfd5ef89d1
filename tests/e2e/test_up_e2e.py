"""``pilot up`` as a user runs it, as real processes (issue 12).

- A port in use (a plain listener, or another coordinator) is refused at once: exit 2, one
  line naming the port and ``--port``, nothing of a start printed, no admin token made.
- Ctrl-C twice while a task runs stops every process (coordinator, workers, the task's
  command) within a bound, though the workers were told to drain for minutes.
- Workers restarted under their names take their rows back (``pilot up`` again, or one
  worker with the same cache dir), keeping ``tasks_done``; another cache dir or a forged
  token in the state file gives a new row.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from parallel_pilot.client.local_cluster import LocalCluster, free_port
from parallel_pilot.client.sdk import Client
from parallel_pilot.errors import CannotListen
from tests.e2e.farm import Farm, wait_for

PILOT = [sys.executable, "-m", "parallel_pilot"]
UP_SECONDS = 120  # pilot up may take this long to print its banner (a loaded machine)
REFUSE_SECONDS = 15  # a busy port is refused within this (Python's start-up dominates)
HURRY_SECONDS = 10  # from the second Ctrl-C until every process of pilot up is gone
DRAIN_SECONDS = "300"  # the workers' drain time: only a second Ctrl-C stops them sooner
BANNER_END = "Ctrl-C stops the coordinator"


class Up:
    """A ``pilot up`` process in its own process group, its output in files."""

    def __init__(self, root: Path, port: int, *, workers: int = 1, run: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = root / "data"
        root.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = root / f"up-{run}.out", root / f"up-{run}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*PILOT, "up", "--workers", str(workers), "--port", str(port),
                 "--data-dir", "data"],
                cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env={**os.environ, "PILOT_TOKEN": "", "COLUMNS": "200", **(env or {})},
                start_new_session=True)
        self.seen: list[psutil.Process] = []  # every process below it we noticed

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_banner(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"pilot up exited:\n{self.stdout()}{self.stderr()}"
            return BANNER_END in self.stdout()
        wait_for(up, UP_SECONDS, "pilot up to print its banner")

    def token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def client(self) -> Client:
        return Client(self.url, self.token())

    def worker_log(self) -> str:
        logs = sorted((self.data_dir / "logs").glob("worker-*.log"))
        return "".join(p.read_text(errors="replace") for p in logs)

    def below(self) -> list[psutil.Process]:
        """Every process below pilot up now (remembered for the checks and the cleanup)."""
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        self.seen.extend(p for p in found if p not in self.seen)
        return found

    def interrupt(self) -> None:
        """Ctrl-C in its terminal: SIGINT to its process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        """Cleanup: kill whatever is left of it, by the pids it started."""
        self.below()
        for proc in self.seen:
            try:
                proc.kill()
            except psutil.Error:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    """``pilot up`` processes a test starts; whatever is left of them is killed after."""
    started: list[Up] = []
    try:
        yield started
    finally:
        for up in started:
            up.kill()


def check_refused(result: subprocess.CompletedProcess[str], seconds: float, port: int) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert seconds < REFUSE_SECONDS, f"took {seconds:.1f} s"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, output
    assert str(port) in lines[0] and "in use" in lines[0] and "--port" in lines[0]
    assert result.stdout == ""
    assert "is up" not in output and "pp_u_" not in output and "starting" not in output


def run_pilot(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([*PILOT, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL,
                            env={**os.environ, "COLUMNS": "200"})
    return result, time.monotonic() - started


# ---------------------------------------------------------------- a port in use


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result, seconds = run_pilot("up", "--workers", "1", "--port", str(port),
                                    "--data-dir", "data", cwd=tmp_path)
        check_refused(result, seconds, port)
        assert not (tmp_path / "data").exists()  # no database, no tokens, no logs

        result, seconds = run_pilot("server", "--port", str(port), "--data-dir", "srv",
                                    cwd=tmp_path)
        check_refused(result, seconds, port)
        assert not (tmp_path / "srv").exists()


def test_a_port_another_coordinator_uses_is_refused(farm: Farm, tmp_path: Path) -> None:
    farm.start_server()
    port = farm.cluster.port
    result, seconds = run_pilot("up", "--workers", "1", "--port", str(port),
                                "--data-dir", "mine", cwd=tmp_path)
    check_refused(result, seconds, port)
    assert not (tmp_path / "mine").exists()
    # the other coordinator is untouched and still answers with its own token
    assert farm.api("GET", "/me")["name"] == "admin"

    cluster = LocalCluster(tmp_path / "cluster", port=port, workers=0)
    with pytest.raises(CannotListen, match=f"port {port} .*--port"):
        cluster.start()
    # the readiness check knows its own coordinator from another one on the same port
    cluster.instance_id = "not-the-one-answering"
    with httpx.Client(base_url=f"{farm.url}/api/v1") as http:
        assert not cluster._answers(http)
        assert farm.cluster._answers(http)


# ---------------------------------------------------------------- Ctrl-C twice, rows back


def test_ctrl_c_twice_stops_everything_and_workers_come_back(tmp_path: Path,
                                                            ups: list[Up]) -> None:
    port = free_port()
    up = Up(tmp_path, port, env={"PILOT_DRAIN_SECONDS": DRAIN_SECONDS})
    ups.append(up)
    up.wait_banner()
    banner = up.stdout()
    assert f"dashboard: {up.url}/" in banner and "data/admin-password" in banner
    assert "(in data/admin-token)" in banner

    with up.client() as client:
        quick = client.submit_sweep(["true"], "1")
        assert client.wait(quick.id, timeout=120).state == "completed"
        long = client.submit_sweep(["sleep", "300"], "1")
        wait_for(lambda: any(p.name() == "sleep" for p in alive(up.below())), 120,
                 "the task's command to run on the worker")
    everything = [psutil.Process(up.proc.pid), *up.below()]
    names = {p.name() for p in alive(everything)}
    assert "sleep" in names and len(everything) >= 4  # pilot up, coordinator, worker, task

    up.interrupt()  # once: the workers drain (for minutes, as told)
    wait_for(lambda: "letting 1 running task(s) finish" in up.worker_log(), 60,
             "the worker to start draining")
    assert alive(everything) and up.proc.poll() is None
    up.interrupt()  # twice: everything stops now
    hurried = time.monotonic()
    wait_for(lambda: not alive(everything), HURRY_SECONDS,
             "every process of pilot up to stop after the second Ctrl-C")
    up.proc.wait(5)
    assert time.monotonic() - hurried < HURRY_SECONDS
    assert up.proc.returncode == 0, up.stderr()
    assert "stopping now" in up.stderr()
    assert "second signal: handing running tasks back now" in up.worker_log()

    # pilot up again on the same data dir: the worker takes its old row back
    again = Up(tmp_path, port, run=2)
    ups.append(again)
    again.wait_banner()
    with again.client() as client:
        client.cancel(long.id)  # else the sleep handed back at the stop runs again
        wait_for(lambda: again.worker_log().count("registered with") == 2, 60,
                 "the worker to register again")
        workers = client.workers()
    assert len(workers) == 1, workers
    assert workers[0].tasks_done == 1 and workers[0].state != "offline"
    registered = [line for line in again.worker_log().splitlines() if "registered" in line]
    assert "as worker 1 again" in registered[-1]

    again.interrupt()  # once, nothing left to run: a clean stop
    again.proc.wait(60)
    assert again.proc.returncode == 0, again.stderr()


def test_a_worker_restarted_with_its_cache_dir_takes_its_row_back(farm: Farm) -> None:
    farm.start_server()
    first = farm.start_worker("box")
    farm.wait_workers_joined(1)
    farm.pilot("sweep", "--items", "1", "--", "true")
    farm.cluster.stop_worker(first)

    farm.start_worker("box")  # same name, same cache dir (LocalCluster's layout)
    wait_for(lambda: "as worker 1 again" in farm.log("worker-box"), 60,
             "the worker to take its row back")
    rows = farm.api("GET", "/workers")["workers"]
    assert [(w["id"], w["name"], w["tasks_done"]) for w in rows] == [(1, "box", 1)]
    state_file = farm.data_dir / "workers" / "box" / "cache" / "identity" / "box.json"
    assert state_file.stat().st_mode & 0o777 == 0o600
    saved = json.loads(state_file.read_text())["servers"][farm.url]
    assert saved["worker_id"] == 1 and saved["worker_token"].startswith("pp_w_")

    # the same name with another cache dir is another worker
    elsewhere = farm.root / "elsewhere"
    farm.cluster.add_worker("box", extra_args=["--cache-dir", str(elsewhere / "cache")])
    wait_for(lambda: len(farm.api("GET", "/workers")["workers"]) == 2, 60,
             "a second row for the worker with another cache dir")

    # a state file with the row's id and a forged token gets a new row, not row 1
    forged_cache = farm.root / "forged" / "cache"
    (forged_cache / "identity").mkdir(parents=True)
    (forged_cache / "identity" / "box.json").write_text(json.dumps({
        "name": "box", "servers": {farm.url: {"worker_id": 1,
                                              "worker_token": "pp_w_" + "x" * 43}}}))
    farm.cluster.add_worker("box", extra_args=["--cache-dir", str(forged_cache)])
    wait_for(lambda: len(farm.api("GET", "/workers")["workers"]) == 3, 60,
             "a third row for the worker with a forged token")
    rows = {w["id"]: w for w in farm.api("GET", "/workers")["workers"]}
    assert rows[1]["tasks_done"] == 1 and rows[1]["state"] == "idle"
    assert rows[3]["tasks_done"] == 0
