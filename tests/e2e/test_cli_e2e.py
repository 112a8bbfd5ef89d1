"""The ``pilot`` CLI as a user runs it against a real coordinator and worker, on SQLite
and on a PostgreSQL server started by the suite."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.farm import Farm


def test_sweep_with_json_outputs_and_download(farm: Farm) -> None:
    farm.start_server()
    farm.start_worker("solo", slots=2)
    farm.wait_workers_joined(1)
    project = farm.root / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "base.txt").write_text("10\n")
    (project / "items.txt").write_text("# items\nalpha\nbeta\n7\n")
    (project / "calc.py").write_text(
        "import sys, pathlib\n"
        "base = int(pathlib.Path('data/base.txt').read_text())\n"
        "item = sys.argv[1]\n"
        "pathlib.Path('out').mkdir()\n"
        "pathlib.Path('out/len.txt').write_text(str(base + len(item)))\n"
        "print(item.upper())\n"
        "sys.exit(1 if item == 'beta' else 0)\n")

    # submit and wait (the default), with a progress bar on a non-terminal stderr
    done = farm.pilot("sweep", "--items-file", "items.txt", "--file", "calc.py",
                      "--file", "data", "--collect", "out/*.txt", "--", "python", "calc.py",
                      "{item}", cwd=project)
    assert "3" in done.stdout  # the summary names the items done
    jobs = json.loads(farm.pilot("jobs", "--json").stdout)
    [job] = jobs["jobs"] if isinstance(jobs, dict) else jobs
    assert job["state"] == "completed" and job["tasks_total"] == 3

    shown = json.loads(farm.pilot("show", str(job["id"]), "--json").stdout)
    assert shown["id"] == job["id"] and shown["kind"] == "sweep"
    waited = farm.pilot("wait", str(job["id"]), "--json")
    assert json.loads(waited.stdout)["state"] == "completed"

    workers = json.loads(farm.pilot("workers", "--json").stdout)
    listed = workers["workers"] if isinstance(workers, dict) else workers
    assert [w["name"] for w in listed] == ["solo"]
    assert listed[0]["capabilities"]["cpu_cores"] >= 1

    logs = farm.pilot("logs", str(job["id"])).stdout
    assert "ALPHA" in logs and "BETA" in logs

    out = farm.root / "results"
    farm.pilot("download", str(job["id"]), "--out", str(out))
    lines = (out / "results.jsonl").read_text().splitlines()
    rows = {r["item"]: r for r in map(json.loads, lines)}
    assert set(rows) == {"alpha", "beta", "7"}
    assert rows["beta"]["exit_code"] == 1 and rows["alpha"]["stdout"] == "ALPHA\n"
    assert (out / "items" / "alpha" / "out" / "len.txt").read_text() == "15"
    assert (out / "items" / "7" / "out" / "len.txt").read_text() == "11"


def test_submit_no_wait_prints_only_json(farm: Farm) -> None:
    farm.start_server()
    project = farm.root / "p"
    project.mkdir()
    out = farm.pilot("sweep", "--items", "1-5", "--no-wait", "--json", "--", "echo", "{item}",
                     cwd=project)
    submitted = json.loads(out.stdout)
    assert submitted["job"] >= 1 and submitted["tasks"] == 5


@pytest.mark.parametrize("args, words", [
    (["sweep", "--items", "1-x", "--no-wait", "--", "echo"], "1-x"),
    (["sweep", "--items", "1-3", "--file", "missing.py", "--", "python", "missing.py"],
     "missing.py"),
    (["show", "4242"], "no job 4242"),
    (["cancel", "4242"], "no job 4242"),
])
def test_cli_errors_are_clear(farm: Farm, args: list[str], words: str) -> None:
    farm.start_server()
    (farm.root / "p").mkdir()
    proc = farm.pilot(*args, check=False, cwd=farm.root / "p")
    assert proc.returncode != 0
    assert words in proc.stderr and "Traceback" not in proc.stderr


def test_sweep_on_postgresql(tmp_path: Path, fresh_database: Callable[[str], str]) -> None:
    farm = Farm(tmp_path, database_url=fresh_database("postgres"))
    try:
        farm.start_server()
        farm.start_worker("pg1")
        farm.start_worker("pg2")
        farm.wait_workers_joined(2)
        project = tmp_path / "p"
        project.mkdir()
        out = farm.pilot("sweep", "--items", "1-12", "--no-wait", "--json", "--", "python",
                         "-c", "import sys; print(int(sys.argv[1]) ** 3)", "{item}", cwd=project)
        job_id = json.loads(out.stdout)["job"]
        assert json.loads(farm.pilot("wait", str(job_id), "--json").stdout)["state"] == \
            "completed"
        farm.pilot("download", str(job_id), "--out", str(tmp_path / "dl"))
        rows = [json.loads(line)
                for line in (tmp_path / "dl" / "results.jsonl").read_text().splitlines()]
        assert [r["stdout"] for r in rows] == [f"{i ** 3}\n" for i in range(1, 13)]
        done = sum(w["tasks_done"] for w in farm.api("GET", "/workers")["workers"])
        assert done == 12
        assert "postgresql+psycopg://***@127.0.0.1" in farm.log("server")
    finally:
        farm.stop()
