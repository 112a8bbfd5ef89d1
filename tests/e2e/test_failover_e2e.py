"""Two coordinators of one farm (one PostgreSQL database, one data folder) and workers
given both URLs (`pilot worker --server A --server B`): a sweep submitted through a
client that also knows both completes after coordinator A is SIGKILLed mid-job, the
workers carrying on through B; every item runs exactly once (executions are counted,
not only results). And chaos: workers SIGKILLed and restarted all along, each
coordinator SIGKILLed and restarted once; every result arrives exactly once."""

from __future__ import annotations

import collections
import json
import random
import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from parallel_pilot import Client
from parallel_pilot.client.local_cluster import LocalCluster
from tests.e2e.farm import wait_for

ITEMS = 60
QUICK = ["--allow", "sweep", "--no-render-sandbox"]



def sim_code(seconds: float) -> str:
    """An item's command: it notes each run (a file per run in $RUNS) and sleeps."""
    return textwrap.dedent(f"""
        import os, sys, time
        item = sys.argv[1]
        open(os.path.join(os.environ["RUNS"], f"{{item}}-{{os.getpid()}}"), "w").close()
        time.sleep({seconds})
        print(f"item={{item}}")
    """)


def two_coordinators(root: Path, url: str, *, lease: float, heartbeat: float,
                     **env: str) -> tuple[LocalCluster, LocalCluster]:
    """Clusters A and B (not started) of one farm: one database, one data dir; A starts
    the workers, which get B's URL too."""
    args = ["--database-url", url, "--lease-seconds", str(lease),
            "--heartbeat-seconds", str(heartbeat)]
    env = {"PILOT_TOKEN": "", **env}
    return (LocalCluster(root / "data", workers=0, server_args=args, env=env,
                         worker_args=QUICK),
            LocalCluster(root / "data", workers=0, server_args=args, env=env))


@pytest.mark.postgres
def test_workers_and_clients_carry_on_through_the_other_coordinator(
        tmp_path: Path, fresh_database: Callable[..., str]) -> None:
    url = fresh_database("postgres", migrated=True)
    runs = tmp_path / "runs"
    runs.mkdir()
    a, b = two_coordinators(tmp_path, url, lease=6, heartbeat=1, RUNS=str(runs))
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
            sim.write_text(sim_code(0.3))
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


CHAOS_ITEMS = 200
CHAOS_WORKERS = 4
CHAOS_SECONDS = 60.0  # the chaos stops by then whatever it reached (bounded test)


@pytest.mark.postgres
def test_chaos_of_workers_and_both_coordinators_loses_and_repeats_no_result(
        tmp_path: Path, fresh_database: Callable[..., str]) -> None:
    """A 200-item sweep while workers are SIGKILLed and restarted every second or so, and
    each coordinator is SIGKILLed and restarted once: the job completes and every item's
    result arrives exactly once (a killed worker's item may run again elsewhere)."""
    url = fresh_database("postgres", migrated=True)
    runs = tmp_path / "runs"
    runs.mkdir()
    a, b = two_coordinators(tmp_path, url, lease=3, heartbeat=0.5, RUNS=str(runs),
                            PILOT_JOIN_TOKEN_REGISTRATIONS_PER_MINUTE="1000")
    rng = random.Random(16)
    try:
        a.start_server()
        b.start_server()
        names = [f"w{i}" for i in range(1, CHAOS_WORKERS + 1)]
        live = {n: a.add_worker(n, slots=2, extra_args=["--server", b.url]) for n in names}
        with Client(f"{a.url},{b.url}", a.admin_token) as client:
            wait_for(lambda: len(client.workers()) == CHAOS_WORKERS, 60, "the workers")
            sim = tmp_path / "sim.py"
            sim.write_text(sim_code(0.1))
            job = client.submit_sweep(["python", "sim.py", "{item}"], f"1-{CHAOS_ITEMS}",
                                      files={"sim.py": sim})
            began, killed, coordinators = time.monotonic(), 0, [a, b]
            while client.job(job.id).state in ("queued", "running") \
                    and time.monotonic() - began < CHAOS_SECONDS:
                name = rng.choice(names)  # SIGKILL a worker, start it again at once
                a.stop_worker(live[name], signal.SIGKILL)
                live[name] = a.add_worker(name, slots=2, extra_args=["--server", b.url])
                killed += 1
                done = client.job(job.id).tasks_done
                if coordinators and done >= CHAOS_ITEMS * (3 - len(coordinators)) // 3:
                    coordinator = coordinators.pop(0)  # at a third, then two thirds
                    coordinator.stop_server(signal.SIGKILL)
                    coordinator.start_server()
                time.sleep(rng.uniform(0.5, 1.5))
            finished = client.wait(job.id, timeout=180)
            out = tmp_path / "download"
            client.download(job.id, out)
        assert finished.state == "completed", finished
        assert not coordinators, "the job ended before both coordinators were killed"
        assert killed >= 5
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert sorted(int(r["item"]) for r in rows) == list(range(1, CHAOS_ITEMS + 1))
        assert all(r["exit_code"] == 0 and r["stdout"] == f"item={r['item']}\n" for r in rows)
        ran = collections.Counter(p.name.split("-")[0] for p in runs.iterdir())
        assert set(ran) == {str(i) for i in range(1, CHAOS_ITEMS + 1)}  # every item ran
        print(f"\n{killed} worker kills, both coordinators killed once; "
              f"{sum(ran.values())} runs of {CHAOS_ITEMS} items")
    finally:
        a.stop()
        b.stop()
