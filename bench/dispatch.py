"""Dispatch benchmark: how fast the coordinator hands out and collects tasks.

Starts a real coordinator (SQLite) and 2 local workers with one slot each (``LocalCluster``,
the code behind ``pilot up``) and measures, with ``sleep`` tasks:
  * throughput and per-task overhead for 1,000 and 10,000 no-op (0 ms) tasks;
  * single-task round-trip latency (submit -> completed, seen by a client polling at 5 ms);
  * makespan efficiency of 200 tasks of 50 ms (ideal / actual).
The same workloads also run on ``concurrent.futures.ProcessPoolExecutor(2)`` on this
machine, as the floor a local pool gives without any network or database in between.

    python bench/dispatch.py [--json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from parallel_pilot.client.local_cluster import LocalCluster
from parallel_pilot.client.sdk import Client

WORKERS = 2  # local worker processes, one slot each
LATENCY_SAMPLES = 20  # single-task jobs timed for round-trip latency
POLL_SECONDS = 0.005  # client poll interval while timing
TIMEOUT = 900.0  # seconds any one measurement may take


def run_job(client: Client, tasks: int, ms: int) -> float:
    """Submit a sleep job and return seconds from submit to completed."""
    started = time.perf_counter()
    job = client.submit("sleep", {"tasks": tasks, "milliseconds": ms})
    deadline = started + TIMEOUT
    while True:
        info = client.job(job.id)
        if info.state.finished:
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"job {job.id} did not finish in {TIMEOUT} s")
        time.sleep(POLL_SECONDS if tasks == 1 else 0.05)
    elapsed = time.perf_counter() - started
    if info.state != "completed":
        raise RuntimeError(f"job {job.id} ended {info.state}: {info.error}")
    return elapsed


def _sleep_ms(ms: int) -> None:
    if ms:
        time.sleep(ms / 1000)


def pool_job(pool: ProcessPoolExecutor, tasks: int, ms: int) -> float:
    started = time.perf_counter()
    for _ in pool.map(_sleep_ms, [ms] * tasks, chunksize=1):
        pass
    return time.perf_counter() - started


def measure(quick: bool) -> dict:
    sizes = [1_000] if quick else [1_000, 10_000]
    results: dict = {"workers": WORKERS, "throughput": [], "latency": {}, "makespan": {}}
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(Path(tmp), workers=WORKERS, slots=1) as cluster, \
            ProcessPoolExecutor(WORKERS) as pool:
        client = cluster.client()
        run_job(client, 20, 0)  # warm-up: workers registered and polling
        pool_job(pool, 20, 0)
        for n in sizes:
            wall = run_job(client, n, 0)
            pool_wall = pool_job(pool, n, 0)
            results["throughput"].append({
                "tasks": n, "seconds": wall, "tasks_per_second": n / wall,
                "overhead_ms_per_task": wall * WORKERS / n * 1000,
                "pool_seconds": pool_wall, "pool_tasks_per_second": n / pool_wall,
            })
        samples = [run_job(client, 1, 0) for _ in range(LATENCY_SAMPLES)]
        pool_samples = [pool_job(pool, 1, 0) for _ in range(LATENCY_SAMPLES)]
        results["latency"] = {
            "samples": LATENCY_SAMPLES, "median_ms": statistics.median(samples) * 1000,
            "p90_ms": sorted(samples)[int(LATENCY_SAMPLES * 0.9) - 1] * 1000,
            "pool_median_ms": statistics.median(pool_samples) * 1000,
        }
        tasks, ms = 200, 50
        ideal = tasks * ms / 1000 / WORKERS
        wall = run_job(client, tasks, ms)
        pool_wall = pool_job(pool, tasks, ms)
        results["makespan"] = {"tasks": tasks, "task_ms": ms, "ideal_seconds": ideal,
                               "seconds": wall, "efficiency": ideal / wall,
                               "pool_seconds": pool_wall, "pool_efficiency": ideal / pool_wall}
    return results


def print_table(r: dict) -> None:
    print(f"Parallel Pilot dispatch, {r['workers']} local workers x 1 slot, SQLite "
          f"(baseline: ProcessPoolExecutor({r['workers']}))")
    print(f"{'measure':<34}{'pilot':>14}{'process pool':>16}")
    for t in r["throughput"]:
        print(f"{t['tasks']:>6} no-op tasks: tasks/s{'':<12}{t['tasks_per_second']:>14.0f}"
              f"{t['pool_tasks_per_second']:>16.0f}")
        print(f"{t['tasks']:>6} no-op tasks: wall s{'':<13}{t['seconds']:>14.2f}"
              f"{t['pool_seconds']:>16.2f}")
        print(f"{t['tasks']:>6} no-op tasks: ms/task/worker{'':<6}"
              f"{t['overhead_ms_per_task']:>14.2f}"
              f"{t['pool_seconds'] * r['workers'] / t['tasks'] * 1000:>16.2f}")
    lat = r["latency"]
    print(f"{'1-task round trip, median ms':<34}{lat['median_ms']:>14.1f}"
          f"{lat['pool_median_ms']:>16.1f}")
    print(f"{'1-task round trip, p90 ms':<34}{lat['p90_ms']:>14.1f}{'':>16}")
    m = r["makespan"]
    label = f"200 x 50 ms: wall s (ideal {m['ideal_seconds']:.1f})"
    print(f"{label:<34}{m['seconds']:>14.2f}{m['pool_seconds']:>16.2f}")
    print(f"{'200 x 50 ms: efficiency':<34}{m['efficiency']:>14.1%}{m['pool_efficiency']:>16.1%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only JSON")
    parser.add_argument("--quick", action="store_true", help="skip the 10,000-task run")
    args = parser.parse_args(argv)
    results = measure(args.quick)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
