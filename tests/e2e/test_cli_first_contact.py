"""The CLI facing a coordinator that is not there, with real processes: commands answer
within seconds with one line (never started, and killed), long waits and workers ride out
a restart and say so, ``--server`` without a scheme works, and another server without a
login says how to log in."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from parallel_pilot.client.local_cluster import free_port
from tests.e2e.farm import PILOT, Farm, wait_for

ANSWER_SECONDS = 5.0  # an interactive command facing no coordinator answers within this
HINT = "is it running? (pilot up, or pilot server)"


def unreachable(url: str) -> str:
    return f"error: cannot reach the coordinator at {url} (connection refused); {HINT}"


@pytest.fixture(scope="module")
def blend(tmp_path_factory: pytest.TempPathFactory,
          requirement: Callable[[str | None], None]) -> Path:
    requirement(None if importlib.util.find_spec("bpy") else
                "the bpy package is not installed (pip install 'parallel-pilot[render]')")
    out = tmp_path_factory.mktemp("scene") / "x.blend"
    subprocess.run([sys.executable, "-m", "parallel_pilot.scenes.sample_scene", str(out),
                    "--frames", "2", "--width", "32", "--height", "18", "--samples", "1"],
                   check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A user's home of its own, so ``pilot login`` saves its file there."""
    path = tmp_path / "user-home"
    path.mkdir()
    return path


def pilot(home: Path, *args: str, stdin: str = "", cwd: Path | None = None,
          **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI as a user in ``home`` (``PILOT_*`` only as given); also its seconds."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PILOT_")}
    started = time.monotonic()
    proc = subprocess.run([*PILOT, *args], capture_output=True, text=True, timeout=120,
                          input=stdin, cwd=cwd or home,
                          env={**clean, "HOME": str(home), "COLUMNS": "120", **env})
    return proc, time.monotonic() - started


def assert_one_line_at_once(proc: subprocess.CompletedProcess[str], seconds: float,
                            line: str) -> None:
    assert seconds < ANSWER_SECONDS, f"answered after {seconds:.1f} s: {proc.stderr}"
    assert proc.returncode != 0
    assert proc.stderr.splitlines() == [line], proc.stderr
    assert proc.stdout == ""


def interactive_commands(url: str, blend: Path) -> Iterator[list[str]]:
    yield ["jobs"]
    yield ["show", "1"]
    yield ["render", str(blend), "--no-wait"]
    yield ["login", "--server", url, "--token", "any-token"]


def test_no_coordinator_ever_started_is_said_at_once(farm: Farm, home: Path,
                                                     blend: Path) -> None:
    for args in interactive_commands(farm.url, blend):
        proc, seconds = pilot(home, *args, PILOT_SERVER=farm.url, PILOT_TOKEN="any-token")
        assert_one_line_at_once(proc, seconds, unreachable(farm.url))


def test_a_killed_coordinator_is_said_at_once(farm: Farm, home: Path, blend: Path) -> None:
    farm.start_server()
    login, _ = pilot(home, "login", "--server", farm.url, stdin=farm.admin_token + "\n")
    assert login.returncode == 0, login.stderr
    listed, _ = pilot(home, "jobs", "--json")  # the saved login, nothing in the environment
    assert listed.returncode == 0 and json.loads(listed.stdout)["jobs"] == []
    farm.kill_server()
    for args in interactive_commands(farm.url, blend):
        proc, seconds = pilot(home, *args)
        assert_one_line_at_once(proc, seconds, unreachable(farm.url))


def test_wait_rides_out_a_restart_and_says_so(farm: Farm, home: Path) -> None:
    farm.start_server()
    (farm.root / "p").mkdir()
    job = json.loads(farm.pilot("sweep", "--items", "1-2", "--no-wait", "--json", "--",
                                "echo", "{item}", cwd=farm.root / "p").stdout)["job"]
    waiting = subprocess.Popen(
        [*PILOT, "wait", str(job), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "HOME": str(home), "PILOT_SERVER": farm.url,
                        "PILOT_TOKEN": farm.admin_token})
    try:
        time.sleep(2)  # it has polled the queued job
        farm.kill_server()
        time.sleep(2)
        farm.start_server()  # same data directory and port
        farm.start_worker("w1")  # now the job can finish
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, err
    assert json.loads(out)["state"] == "completed"
    lines = err.splitlines()
    # a poll in flight when the coordinator dies sees the connection dropped, one after sees
    # it refused: either way, one line that says it retries
    assert lines[0] in (f"cannot reach the coordinator at {farm.url} ({why}); "
                        f"retrying for up to 120 s…"
                        for why in ("connection refused", "the connection was dropped")), err
    assert lines[1].startswith(f"the coordinator at {farm.url} answers again (after ")
    assert len(lines) == 2, err


def test_a_worker_keeps_retrying_its_report_and_says_so(farm: Farm) -> None:
    farm.start_server()
    worker = farm.start_worker("w1")
    farm.wait_workers_joined(1)
    (farm.root / "p").mkdir()
    job = json.loads(farm.pilot("sweep", "--items", "1", "--no-wait", "--json", "--",
                                "python", "-c", "import time; time.sleep(2)",
                                cwd=farm.root / "p").stdout)["job"]
    wait_for(lambda: farm.job(job)["task_counts"].get("leased"), 30, "the task to start")
    farm.kill_server()  # the task ends while the coordinator is away
    wait_for(lambda: "retrying for up to 120 s" in farm.log("worker-w1"), 30,
             "the worker to say it retries")
    assert worker.poll() is None
    farm.start_server()
    wait_for(lambda: farm.job(job)["state"] == "completed", 60, "the report to get through")
    log = farm.log("worker-w1")
    # the reason depends on when the kill caught the exchange (refused, reset, ...)
    assert re.search(rf"cannot reach the coordinator at {re.escape(farm.url)} \([^)]+\); "
                     r"retrying for up to 120 s…", log), log
    assert "answers again" in log
    assert worker.poll() is None


def test_server_without_a_scheme_and_a_token_per_server(tmp_path: Path, farm: Farm,
                                                        home: Path) -> None:
    other = Farm(tmp_path / "other")
    try:
        farm.start_server()
        other.start_server()
        bare = farm.url.removeprefix("http://")
        login, _ = pilot(home, "login", "--server", bare, stdin=farm.admin_token + "\n")
        assert login.returncode == 0, login.stderr
        assert login.stdout.startswith(f"logged in to {farm.url} as admin")
        listed, _ = pilot(home, "jobs", "--server", bare, "--json")
        assert listed.returncode == 0, listed.stderr

        # another coordinator: not logged in there yet, and the command says how
        proc, seconds = pilot(home, "jobs", "--server", other.url)
        assert_one_line_at_once(proc, seconds, (
            f"error: not logged in to {other.url}: run pilot login --server {other.url}, "
            f"or pass --token"))
        assert pilot(home, "login", "--server", other.url,
                     stdin=other.admin_token + "\n")[0].returncode == 0
        # each server gets its own token; the last login is the default
        for args in (["--server", farm.url], ["--server", other.url], []):
            proc, _ = pilot(home, "jobs", "--json", *args)
            assert proc.returncode == 0, (args, proc.stderr)
    finally:
        other.stop()


@pytest.mark.parametrize("url", ["http://", "ftp://x"])  # the rest: tests/unit
def test_a_malformed_server_is_a_usage_error(home: Path, url: str) -> None:
    proc, seconds = pilot(home, "jobs", "--server", url, PILOT_TOKEN="t")
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"error: --server {url!r}: ")
    assert line.endswith("write it as http://HOST:PORT (e.g. http://127.0.0.1:8330)")
    assert seconds < ANSWER_SECONDS


def test_an_unused_port_is_not_a_login(home: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc, seconds = pilot(home, "login", "--server", url, stdin="some-token\n")
    assert_one_line_at_once(proc, seconds, unreachable(url))
    assert not (home / ".config" / "parallel-pilot" / "config.json").exists()
