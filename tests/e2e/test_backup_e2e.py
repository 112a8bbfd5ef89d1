"""Backup and restore as docs/operations.md tells an operator: `pilot db backup` copies a
running coordinator's SQLite database; the copy, put back with the data dir's blobs and
tokens, gives a coordinator with the same jobs, results and logins. A backup never
overwrites, and a server database is pointed to its own tools."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

from parallel_pilot import Client
from parallel_pilot.client.local_cluster import LocalCluster

PILOT = [sys.executable, "-m", "parallel_pilot"]


def pilot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PILOT, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_a_backup_of_a_running_coordinator_restores_its_jobs(tmp_path: Path) -> None:
    data, backup = tmp_path / "data", tmp_path / "pilot-backup.db"
    quick = ["--allow", "sweep", "--no-render-sandbox"]
    with LocalCluster(data, workers=1, env={"PILOT_TOKEN": ""}, worker_args=quick) as cluster:
        client = cluster.client()
        job = client.submit_sweep(["echo", "{item}"], "1-4")
        assert client.wait(job.id, timeout=60).state == "completed"
        made = pilot("db", "backup", "--data-dir", str(data), "--out", str(backup))
        assert made.returncode == 0, made.stderr
        assert f"backed up {data / 'pilot.db'} to {backup}" in made.stdout
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        again = pilot("db", "backup", "--data-dir", str(data), "--out", str(backup))
        assert again.returncode == 2 and "never overwrites" in again.stderr
        admin = cluster.admin_token
    # disaster: the database is gone; restore the backup (blobs and tokens stay in data/)
    for name in ("pilot.db", "pilot.db-wal", "pilot.db-shm"):
        (data / name).unlink(missing_ok=True)
    shutil.copyfile(backup, data / "pilot.db")
    with LocalCluster(data, workers=0, env={"PILOT_TOKEN": ""}) as restored, \
            Client(restored.url, admin) as client:  # the old token still logs in
        back = client.job(job.id)
        assert back.state == "completed" and back.tasks_done == 4
        client.download(job.id, tmp_path / "out")  # results and blobs both there
        assert (tmp_path / "out" / "results.jsonl").read_text().count("\n") == 4


def test_server_databases_are_pointed_to_their_own_tools(tmp_path: Path) -> None:
    out = pilot("db", "backup", "--database-url", "postgresql+psycopg://u@127.0.0.1:9/x",
                "--out", str(tmp_path / "b"))
    assert out.returncode == 2 and "pg_dump" in out.stderr and "mariadb-dump" in out.stderr
