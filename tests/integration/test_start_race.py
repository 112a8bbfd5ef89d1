"""Two coordinators started at the same moment on one empty database both come up: the
migrations run under a lock (PostgreSQL advisory lock, MariaDB GET_LOCK, SQLite's write
lock), and only one of them creates the admin."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from parallel_pilot.client.local_cluster import free_port

START_SECONDS = 90.0  # both must answer /health within this (two cores, shared)
PAIRS = 2  # races run per database: each starts two coordinators at once


def _start(data_dir: Path, port: int, url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PILOT_TOKEN": ""}
    with open(data_dir.parent / f"{data_dir.name}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "parallel_pilot", "server", "--host", "127.0.0.1",
             "--port", str(port), "--data-dir", str(data_dir), "--database-url", url],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                                  pytest.param("mariadb", marks=pytest.mark.mariadb)])
def test_two_coordinators_started_at_once_both_come_up(kind: str, tmp_path: Path,
                                                      fresh_database) -> None:
    for n in range(PAIRS):
        url = fresh_database(kind)
        dirs = [tmp_path / f"{kind}-{n}-a", tmp_path / f"{kind}-{n}-b"]
        for d in dirs:
            d.mkdir()
        ports = [free_port(), free_port()]
        procs = [_start(d, p, url) for d, p in zip(dirs, ports, strict=True)]
        try:
            deadline = time.monotonic() + START_SECONDS
            up = [False, False]
            while not all(up) and time.monotonic() < deadline:
                for i, (proc, port) in enumerate(zip(procs, ports, strict=True)):
                    if proc.poll() is not None:
                        log = (dirs[i].parent / f"{dirs[i].name}.log").read_text()
                        raise AssertionError(f"{kind}: coordinator {i} exited with "
                                             f"{proc.returncode}:\n{log[-3000:]}")
                    up[i] = up[i] or _answers(port)
                time.sleep(0.1)
            assert all(up), f"{kind}: not both up within {START_SECONDS} s: {up}"
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                admins = conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one()
        finally:
            engine.dispose()
        assert admins == 1
        # the one that created the admin wrote its tokens; the other found it made
        assert sum((d / "admin-token").exists() for d in dirs) == 1
