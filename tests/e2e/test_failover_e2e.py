"""Two coordinators of one farm (one PostgreSQL database, one data folder) and workers
given both URLs (`pilot worker --server A --server B`): a sweep submitted through a
client that also knows both completes after coordinator A is SIGKILLed mid-job, the
workers carrying on through B; every item runs exactly once (executions are counted,
not only results)."""

from __future__ import annotations

import collections
import signal
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from parallel_pilot import Client
from parallel_pilot.client.local_cluster import LocalCluster
from tests.e2e.farm import wait_for

ITEMS = 60
QUICK = ["--allow", "sweep", "--no-render-sandbox"]

SIM = textwrap.dedent("""
    import os, sys, time
    item = sys.argv[1]
    open(os.path.join(os.environ["RUNS"], f"{item}-{os.getpid()}"), "w").close()
    time.sleep(0.3)
    print(f"item={item}")
""")


@pytest.mark.postgres
def test_workers_and_clients_carry_on_through_the_other_coordinator(
        tmp_path: Path, fresh_database: Callable[..., str]) -> None:
    url = fresh_database("postgres", migrated=True)
    runs = tmp_path / "runs"
    runs.mkdir()
    args = ["--database-url", url, "--lease-seconds", "6", "--heartbeat-seconds", "1"]
    env = {"PILOT_TOKEN": "", "RUNS": str(runs)}
    a = LocalCluster(tmp_path / "data", workers=0, server_args=args, env=env,
                     worker_args=QUICK)
    b = LocalCluster(tmp_path / "data", workers=0, server_args=args, env=env)
    try:
        a.start_server()
        b.start_server()
        assert (a.admin_token, a.join_token) == (b.admin_token, b.join_token)
        for name in ("w1", "w2"):
            a.add_worker(name, slots=2, extra_args=["--server", b.url])
        both = f"{a.url},{b.url}"
        with Client(both, a.admin_token) as client:
            wait_for(lambda: len(client.workers()) == 2, 60, "both workers to join")
            sim = tmp_path / "sim.py"
            sim.write_text(SIM)
            job = client.submit_sweep(["python", "sim.py", "{item}"], f"1-{ITEMS}",
                                      files={"sim.py": sim})
            wait_for(lambda: client.job(job.id).tasks_done >= 10, 120, "10 items done")
            a.stop_server(signal.SIGKILL)  # mid-job, with leases and reports in flight
            done = client.wait(job.id, timeout=180)
            assert client.server == b.url  # the client moved on too
        assert done.state == "completed", done
        executions = collections.Counter(p.name.split("-")[0] for p in runs.iterdir())
        assert sorted(executions, key=int) == [str(i) for i in range(1, ITEMS + 1)]
        twice = {item: n for item, n in executions.items() if n > 1}
        assert not twice, f"items run more than once: {twice}"
        assert all(w.poll() is None for w in a.workers)  # no worker gave up
        logs = [(a.log_dir / f"worker-{n}.log").read_text() for n in ("w1", "w2")]
        assert any(f"trying {b.url}" in log for log in logs), logs
    finally:
        a.stop()
        b.stop()
