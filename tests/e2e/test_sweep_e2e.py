"""A sweep across real worker processes survives a worker killed mid-task, and a
cancelled job stops its running commands within seconds."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

from tests.e2e.farm import Farm, wait_for

SIM = textwrap.dedent("""
    import json, os, sys, time
    seed = int(sys.argv[1])
    os.makedirs("out", exist_ok=True)
    with open(os.path.join(os.environ["PIDS"], f"{seed}-{os.getpid()}"), "w") as f:
        f.write("running")
    time.sleep(float(os.environ.get("SIM_SECONDS", "0.4")))
    json.dump({"seed": seed, "square": seed * seed}, open("out/result.json", "w"))
    print(f"square={seed * seed}")
""")


def write_sim(farm: Farm) -> Path:
    project = farm.root / "project"
    project.mkdir()
    (project / "sim.py").write_text(SIM)
    return project


def submit_sweep(farm: Farm, project: Path, items: str) -> int:
    out = farm.pilot("sweep", "--items", items, "--file", "sim.py", "--collect", "out/*.json",
                     "--no-wait", "--json", "--", "python", "sim.py", "{item}", cwd=project)
    return int(json.loads(out.stdout)["job"])


def test_forty_items_survive_a_killed_worker(farm: Farm) -> None:
    pids = farm.root / "pids"
    pids.mkdir()
    farm.setenv("PIDS", str(pids))
    farm.start_server()
    for name in ("w1", "w2", "w3"):
        farm.start_worker(name)
    farm.wait_workers_joined(3)
    project = write_sim(farm)
    job_id = submit_sweep(farm, project, "1-40")

    # SIGKILL w2 while it holds a task
    wait_for(lambda: any(t["worker"] == "w2" and t["state"] == "leased"
                         for t in farm.tasks(job_id)), 60, "w2 to hold a task")
    farm.workers["w2"].send_signal(signal.SIGKILL)
    farm.workers["w2"].wait(10)

    waited = farm.pilot("wait", str(job_id), "--json", timeout=240)
    assert json.loads(waited.stdout)["state"] == "completed"
    tasks = farm.tasks(job_id)
    assert any(t["attempt"] >= 2 for t in tasks), "the killed worker's task was not retried"

    out = farm.root / "download"
    farm.pilot("download", str(job_id), "--out", str(out))
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["item"] for r in rows] == [str(i) for i in range(1, 41)]
    for row in rows:
        seed = int(row["item"])
        assert row["exit_code"] == 0 and row["stdout"] == f"square={seed * seed}\n"
        assert row["files"] == ["out/result.json"]
        result = json.loads((out / "items" / row["item"] / "out" / "result.json").read_text())
        assert result == {"seed": seed, "square": seed * seed}


def test_cancel_stops_running_tasks_within_seconds(farm: Farm) -> None:
    pids = farm.root / "pids"
    pids.mkdir()
    farm.setenv("PIDS", str(pids))
    farm.setenv("SIM_SECONDS", "300")
    farm.start_server()
    farm.start_worker("w1", slots=2)
    farm.wait_workers_joined(1)
    job_id = submit_sweep(farm, write_sim(farm), "1-4")
    running = wait_for(lambda: len(list(pids.iterdir())) >= 2 and list(pids.iterdir()), 60,
                       "two commands to start")
    child_pids = [int(p.name.split("-")[1]) for p in running]

    cancelled = json.loads(farm.pilot("cancel", str(job_id), "--json").stdout)
    assert cancelled["state"] == "cancelled"

    def gone() -> bool:
        for pid in child_pids:
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                continue
        return True

    wait_for(gone, 10, "the cancelled commands to be killed")
    wait_for(lambda: farm.api("GET", "/workers")["workers"][0]["state"] == "idle", 10,
             "the worker to be idle again")
    assert farm.pilot("wait", str(job_id), "--json", check=False).returncode != 0


def test_coordinator_restart_mid_job(farm: Farm) -> None:
    pids = farm.root / "pids"
    pids.mkdir()
    farm.setenv("PIDS", str(pids))
    farm.setenv("SIM_SECONDS", "0.5")
    farm.start_server()
    farm.start_worker("w1")
    farm.start_worker("w2")
    farm.wait_workers_joined(2)
    job_id = submit_sweep(farm, write_sim(farm), "1-16")
    wait_for(lambda: farm.job(job_id)["tasks_done"] >= 3, 60, "some items to finish")

    farm.kill_server()
    farm.start_server()  # same data directory and port

    waited = farm.pilot("wait", str(job_id), "--json", timeout=240)
    assert json.loads(waited.stdout)["state"] == "completed"
    assert farm.workers["w1"].poll() is None and farm.workers["w2"].poll() is None
    out = farm.root / "download"
    farm.pilot("download", str(job_id), "--out", str(out))
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(int(r["item"]) for r in rows) == list(range(1, 17))
    assert all(r["exit_code"] == 0 for r in rows)


def test_worker_sigterm_hands_back_its_task(farm: Farm) -> None:
    pids = farm.root / "pids"
    pids.mkdir()
    farm.setenv("PIDS", str(pids))
    farm.setenv("SIM_SECONDS", "2")
    farm.start_server()
    farm.start_worker("w1", extra=["--drain-seconds", "0"])
    farm.wait_workers_joined(1)
    job_id = submit_sweep(farm, write_sim(farm), "1")
    wait_for(lambda: any(t["state"] == "leased" for t in farm.tasks(job_id)), 60,
             "the task to start")
    farm.workers["w1"].send_signal(signal.SIGTERM)
    assert farm.workers["w1"].wait(30) == 0
    [task] = farm.tasks(job_id)
    assert task["state"] == "ready" and task["failures"] == 0
    farm.start_worker("w2")
    waited = farm.pilot("wait", str(job_id), "--json", timeout=120)
    assert json.loads(waited.stdout)["state"] == "completed"
