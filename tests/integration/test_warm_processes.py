"""The tests' warm forker (``tests/warm_processes.py``) starts real `pilot` processes: the
command line, environment, working directory and log a ``LocalCluster`` gives them, their
own session, exit codes as ``subprocess`` reports them; and a cluster started through it
runs a job end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from parallel_pilot.client.local_cluster import LocalCluster
from tests.warm_processes import WarmForker

SECONDS = 30


@pytest.fixture
def forker() -> Iterator[WarmForker]:
    warm = WarmForker()
    try:
        yield warm
    finally:
        warm.close()


def test_exit_codes_and_output_are_those_of_pilot(forker: WarmForker, tmp_path: Path) -> None:
    log = tmp_path / "help.log"
    helped = forker.spawn(["--help"], log, dict(os.environ))
    assert helped.wait(SECONDS) == 0
    assert "Usage: pilot" in log.read_text()
    wrong = forker.spawn(["no-such-command"], tmp_path / "wrong.log", dict(os.environ))
    assert wrong.wait(SECONDS) == 2  # click's usage error
    assert "No such command" in (tmp_path / "wrong.log").read_text()


def test_a_child_has_the_environment_folder_and_session_it_was_given(
        forker: WarmForker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker started here is its own session leader; its environment is exactly the one
    given (nothing of the forker's); a signal ends it with the code subprocess reports."""
    monkeypatch.chdir(tmp_path)
    env = {"PATH": os.environ["PATH"], "PILOT_JOIN_TOKEN": "x", "ONLY_HERE": "1",
           "HOME": str(tmp_path)}
    # a worker whose coordinator never answers: it retries until stopped
    proc = forker.spawn(["worker", "--server", "http://127.0.0.1:9", "--slots", "1",
                         "--allow", "sweep", "--no-render-sandbox",
                         "--work-dir", str(tmp_path / "work")],
                        tmp_path / "worker.log", env)
    try:
        assert proc.poll() is None
        assert os.getsid(proc.pid) == proc.pid
        assert Path(f"/proc/{proc.pid}/cwd").resolve() == tmp_path.resolve()
        probe = tmp_path / "probe.py"
        probe.write_text(textwrap.dedent("""
            import json, os, sys
            print(json.dumps(dict(os.environ)))
        """))
        # what the child's own children inherit is its os.environ, as for a fresh process
        seen = subprocess.run(["python3", str(probe)], capture_output=True, text=True,
                              env=env, check=True)
        assert json.loads(seen.stdout)["ONLY_HERE"] == "1"
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait(SECONDS) == -signal.SIGKILL
    assert proc.poll() == -signal.SIGKILL


def test_a_cluster_started_through_it_runs_a_sweep(forker: WarmForker, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LocalCluster, "spawner", forker.spawn)
    with LocalCluster(tmp_path / "data", workers=1, env={"PILOT_TOKEN": ""},
                      worker_args=["--allow", "sweep", "--no-render-sandbox"]) as cluster:
        assert cluster.server is not None and cluster.server.poll() is None
        client = cluster.client()
        job = client.submit_sweep(command=["echo", "{item}"], items=["a", "b"])
        done = client.wait(job.id, timeout=SECONDS)
        assert done.state == "completed", done
    # as a fresh process: uvicorn shuts down, then re-raises SIGTERM
    assert cluster.server.poll() == -signal.SIGTERM
    assert all(w.poll() is not None for w in cluster.workers)
