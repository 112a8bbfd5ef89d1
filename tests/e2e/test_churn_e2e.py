"""A 300-item sweep on real processes while workers are SIGKILLed a hundred times (a new
worker started for each): losing a worker uses no attempt, so the job completes, and every
item's result arrives exactly once (issue 15). On SQLite and PostgreSQL. Like every
`pilot` process the tests' clusters start, the workers are forked from a warm interpreter
(``tests/warm_processes.py``: real `pilot worker` processes without a second of imports
each), so a new worker leases within about half a second."""

from __future__ import annotations

import collections
import json
import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from parallel_pilot.client.local_cluster import Child
from tests.e2e.farm import Farm

ITEMS = 300
KILLS = 100
CHURN_SLOTS = 6  # churned workers alive at once, each killed once it holds a task
KILL_PHASE_SECONDS = 150.0  # the kills stop by then whatever their count (bounded test)

SIM = textwrap.dedent("""
    import json, os, sys, time
    item = int(sys.argv[1])
    os.makedirs("out", exist_ok=True)
    open(os.path.join(os.environ["RUNS"], f"{item}-{os.getpid()}"), "w").close()
    # slow while the kills go on (so the job outlasts them), quick afterwards
    time.sleep(1.0 if os.path.exists(os.environ["SLOW"]) else 0.02)
    json.dump({"item": item, "square": item * item}, open("out/result.json", "w"))
    print(f"square={item * item}")
""")


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_sweep_survives_a_hundred_killed_workers(
        tmp_path: Path, fresh_database: Callable[[str], str], db: str) -> None:
    farm = Farm(tmp_path, database_url=None if db == "sqlite" else fresh_database(db),
                lease_seconds=2.0, heartbeat_seconds=0.5)
    try:
        _run(farm, tmp_path)
    finally:
        farm.stop()


def _run(farm: Farm, root: Path) -> None:
    runs, slow = root / "runs", root / "slow"
    runs.mkdir()
    slow.touch()
    farm.setenv("RUNS", str(runs))
    farm.setenv("SLOW", str(slow))
    # 107 registrations under one join token: past the default 60 a minute the kills would
    # wait on the registration limit (tests/adversarial test that limit), not on the farm
    farm.setenv("PILOT_JOIN_TOKEN_REGISTRATIONS_PER_MINUTE", "1000")
    farm.start_server()
    quick = ["--allow", "sweep", "--no-render-sandbox"]  # no Blender probe at start
    farm.start_worker("steady", slots=4, extra=quick)  # the rest goes quickly after the kills
    runs, slow = root / "runs", root / "slow"
    churn: dict[str, Child] = {}
    started = 0
    for _ in range(CHURN_SLOTS):
        started += 1
        churn[f"c{started}"] = farm.start_worker(f"c{started}", extra=quick)
    project = root / "project"
    project.mkdir()
    (project / "sim.py").write_text(SIM)
    out = farm.pilot("sweep", "--items", f"1-{ITEMS}", "--file", "sim.py", "--collect",
                     "out/*.json", "--no-wait", "--json", "--", "python", "sim.py", "{item}",
                     cwd=project)
    job_id = int(json.loads(out.stdout)["job"])

    began = time.monotonic()
    kills = 0
    while kills < KILLS and time.monotonic() - began < KILL_PHASE_SECONDS:
        holding = {t["worker"] for t in farm.tasks(job_id) if t["state"] == "leased"}
        for name in [n for n in churn if n in holding][:KILLS - kills]:
            # SIGKILL mid-task: no hand-back, its lease expires
            farm.cluster.stop_worker(churn.pop(name), signal.SIGKILL)
            kills += 1
            started += 1
            churn[f"c{started}"] = farm.start_worker(f"c{started}", extra=quick)
        assert farm.job(job_id)["state"] in ("queued", "running"), farm.job(job_id)
        time.sleep(0.2)
    kill_seconds = time.monotonic() - began
    done_while_killing = farm.job(job_id)["tasks_done"]
    slow.unlink()

    waited = farm.pilot("wait", str(job_id), "--json", timeout=180)
    total = time.monotonic() - began
    state = json.loads(waited.stdout)["state"]
    tasks = farm.tasks(job_id)
    executions = collections.Counter(p.name.split("-")[0] for p in runs.iterdir())
    print(f"\n{KILLS} kills wanted, {kills} done in {kill_seconds:.0f} s (meanwhile "
          f"{done_while_killing} items done); job {state} after "
          f"{total:.0f} s; {sum(t['losses'] for t in tasks)} leases lost (most on one "
          f"task: {max(t['losses'] for t in tasks)}), {sum(t['failures'] for t in tasks)} "
          f"failures, {sum(executions.values())} runs of {ITEMS} items")
    assert state == "completed", farm.job(job_id)
    assert kills == KILLS, f"only {kills} kills in {KILL_PHASE_SECONDS:.0f} s"
    assert all(t["failures"] == 0 for t in tasks)  # no worker loss used an attempt
    assert sum(t["losses"] for t in tasks) >= 1

    # every item's result exactly once: one row each, one output each, none twice
    download = root / "download"
    farm.pilot("download", str(job_id), "--out", str(download))
    rows = [json.loads(line) for line in (download / "results.jsonl").read_text().splitlines()]
    assert [r["item"] for r in rows] == [str(i) for i in range(1, ITEMS + 1)]
    for row in rows:
        item = int(row["item"])
        assert row["exit_code"] == 0 and row["stdout"] == f"square={item * item}\n"
        assert row["files"] == ["out/result.json"]
        result = json.loads((download / "items" / row["item"] / "out" / "result.json")
                            .read_text())
        assert result == {"item": item, "square": item * item}
    outputs = farm.api("GET", f"/jobs/{job_id}/outputs")
    listed = outputs["outputs"] if isinstance(outputs, dict) else outputs
    paths = [o["path"] for o in listed]
    twice = [p for p, n in collections.Counter(paths).items() if n > 1]
    assert not twice, twice
    assert sum(p.endswith("/out/result.json") for p in paths) == ITEMS, paths[:5]
