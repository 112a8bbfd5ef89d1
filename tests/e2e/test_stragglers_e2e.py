"""A straggler on real processes (issue 15): a ``pilot server`` and two ``pilot worker``s,
one of them a machine on which the sweep's command hangs. The other worker does the rest
of the job, then takes a backup copy of the hung item and finishes it; the job completes,
every item's result arrives exactly once, and the hung worker is told to stop: its child
process is killed."""

from __future__ import annotations

import collections
import json
import os
import textwrap
from pathlib import Path

import httpx

from tests.e2e.farm import Farm, wait_for

ITEMS = 6
HANG_SECONDS = 600  # the hung machine's item would take this long: far past the test

SIM = textwrap.dedent(f"""
    import json, os, sys, time
    item = int(sys.argv[1])
    role = os.environ["ROLE"]
    open(os.path.join(os.environ["RUNS"], f"{{item}}-{{role}}-{{os.getpid()}}"), "w").close()
    if role == "hung":
        time.sleep({HANG_SECONDS})
    os.makedirs("out", exist_ok=True)
    json.dump({{"item": item, "by": role}}, open("out/result.json", "w"))
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_backup_copy_finishes_the_hung_item_and_the_straggler_is_stopped(
        tmp_path: Path) -> None:
    farm = Farm(tmp_path, lease_seconds=6.0, heartbeat_seconds=1.0)
    runs = tmp_path / "runs"
    runs.mkdir()
    farm.setenv("RUNS", str(runs))
    farm.setenv("PILOT_BACKUP_MIN_SECONDS", "2")  # the server's: back up after 2 s
    try:
        farm.start_server()
        quick = ["--allow", "sweep", "--no-render-sandbox"]  # no Blender probe at start
        farm.setenv("ROLE", "hung")
        farm.start_worker("hung", extra=quick)
        farm.wait_workers_joined(1)
        project = tmp_path / "project"
        project.mkdir()
        (project / "sim.py").write_text(SIM)
        out = farm.pilot("sweep", "--items", f"1-{ITEMS}", "--file", "sim.py", "--collect",
                         "out/*.json", "--no-wait", "--json", "--", "python", "sim.py",
                         "{item}", cwd=project)
        job_id = int(json.loads(out.stdout)["job"])
        [hung_run] = wait_for(lambda: list(runs.glob("*-hung-*")), 30,
                              "the hung worker to start an item")
        hung_item, _, hung_pid = hung_run.name.split("-")
        farm.setenv("ROLE", "fast")
        farm.start_worker("fast", extra=quick)
        info = wait_for(lambda: (j := farm.job(job_id))["state"] != "running" and j, 40,
                        "the job to finish")
        assert info["state"] == "completed", info
        # the hung item was run again on the fast worker, whose result won
        ran = collections.Counter(tuple(p.name.split("-")[:2]) for p in runs.iterdir())
        assert ran[(hung_item, "hung")] == 1 and ran[(hung_item, "fast")] == 1
        tasks = {t["name"]: t for t in farm.tasks(job_id)}
        assert all(t["state"] == "done" and t["failures"] == 0 for t in tasks.values())
        assert [t["attempt"] for t in tasks.values()].count(2) == 1
        # every item's result once, the hung item's from the fast worker
        outputs = [o for o in farm.api("GET", f"/jobs/{job_id}/outputs")["outputs"]
                   if o["path"].endswith("result.json")]
        assert collections.Counter(o["path"] for o in outputs) == {
            f"items/{i}/out/result.json": 1 for i in range(1, ITEMS + 1)}, outputs
        [hung_output] = [o for o in outputs if o["path"].startswith(f"items/{hung_item}/")]
        blob = httpx.get(f"{farm.url}/api/v1/blobs/{hung_output['sha256']}", timeout=30,
                         headers={"Authorization": f"Bearer {farm.admin_token}"})
        assert json.loads(blob.content) == {"item": int(hung_item), "by": "fast"}
        # the straggler is told to stop at its next exchange: its child is killed
        wait_for(lambda: not alive(int(hung_pid)), 20, "the hung item's process to end")
        lines = farm.api("GET", f"/jobs/{job_id}/logs")["lines"]
        text = "\n".join(line["line"] for line in lines)
        assert "backup copy: attempt 2 on worker fast; attempt 1 on worker hung" in text
        assert "backup copy attempt 2 on worker fast finished first" in text
        # the winning copy's log lines are stored once
        assert [line["line"] for line in lines if line["attempt"] == 2].count(
            f"$ python sim.py {hung_item}") == 1, text
        assert "the coordinator said stop" in farm.log("worker-hung")
        # the stopped worker was not blamed: it is idle, ready for the next job
        wait_for(lambda: {w["name"]: w["state"] for w in farm.api("GET", "/workers")[
            "workers"]}.get("hung") == "idle", 20, "the hung worker to be idle")
    finally:
        farm.stop()
