"""A farm of real processes for end-to-end tests: ``pilot server`` and ``pilot worker``
processes on 127.0.0.1, stopped by pid; waits are on conditions with time limits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from parallel_pilot.client.local_cluster import Child, LocalCluster

T = TypeVar("T")
PILOT = [sys.executable, "-m", "parallel_pilot"]


def wait_for(check: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Farm:
    """A ``LocalCluster`` (the code behind ``pilot up``) started piece by piece, with named
    workers, plus helpers to run the CLI and read the API as the admin."""

    def __init__(self, root: Path, *, database_url: str | None = None,
                 lease_seconds: float = 6.0, heartbeat_seconds: float = 1.0) -> None:
        self.root = root
        server_args = ["--lease-seconds", str(lease_seconds),
                       "--heartbeat-seconds", str(heartbeat_seconds)]
        if database_url:
            server_args += ["--database-url", database_url]
        self.cluster = LocalCluster(root / "data", workers=0, server_args=server_args,
                                    env={"PILOT_TOKEN": ""})
        self.data_dir = self.cluster.data_dir
        self.url = self.cluster.url
        self.workers: dict[str, Child] = {}

    def setenv(self, name: str, value: str) -> None:
        """An environment variable for processes started from now on."""
        self.cluster.env[name] = value

    def start_server(self) -> None:
        self.cluster.start_server()

    def kill_server(self) -> None:
        self.cluster.stop_server(signal.SIGKILL)

    @property
    def admin_token(self) -> str:
        return self.cluster.admin_token

    def start_worker(self, name: str, *, slots: int = 1,
                     extra: list[str] | None = None) -> Child:
        proc = self.cluster.add_worker(name, slots=slots, extra_args=extra or [])
        self.workers[name] = proc
        return proc

    def wait_workers_joined(self, count: int) -> None:
        wait_for(lambda: len(self.api("GET", "/workers")["workers"]) >= count, 60,
                 f"{count} workers to join")

    def log(self, name: str) -> str:
        path = self.cluster.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        self.cluster.stop()

    # ------------------------------------------------------------ clients

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.url}/api/v1{path}", timeout=30,
                                 headers={"Authorization": f"Bearer {self.admin_token}"},
                                 **kwargs)
        assert response.status_code < 400, response.text
        return response.json()

    def pilot(self, *args: str, check: bool = True, timeout: float = 300,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the ``pilot`` CLI as a user would, with server and token in the environment."""
        env = {**os.environ, "PILOT_SERVER": self.url, "PILOT_TOKEN": self.admin_token,
               "HOME": str(self.root / "home"), "COLUMNS": "120"}
        proc = subprocess.run([*PILOT, *args], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=cwd or self.root, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"pilot {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def tasks(self, job_id: int) -> list[dict[str, Any]]:
        return self.api("GET", f"/jobs/{job_id}/tasks")["tasks"]

    def job(self, job_id: int) -> dict[str, Any]:
        return self.api("GET", f"/jobs/{job_id}")
