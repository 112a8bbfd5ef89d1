"""Dispatch benchmark: the farm against Ray, Dask, Celery and a process pool, in one run.

Every system runs 2 workers of one task at a time on this machine, started one system at
a time (none competes with another), with the same task (sleep N ms; 0 for a no-op):
  * the farm: ``LocalCluster`` (real ``pilot server`` and 2 ``pilot worker`` processes of
    one slot, ``sleep`` tasks run in the worker), on SQLite and, with ``--database
    postgresql``, on a PostgreSQL 15 server started from its binaries (fsync off, as the
    test suite's);
  * ``ProcessPoolExecutor(2)``, the floor; Ray, Dask (distributed) and Celery (Redis broker
    and result backend) as described in ``bench/_peers.py``. A peer whose package is not
    installed is reported as such and the rest still runs (``pip install -e '.[bench]'``).
Workloads:
  * throughput of 1,000 and of 10,000 no-op tasks: submit all, wait for all (tasks/s); the
    farm's figure runs from just before the submit to the job's ``finished_at``;
  * single-task round trip (submit -> result seen by the client) over ``--samples``: median
    and p95; the farm's client polls ``GET /jobs/{id}`` every 2 ms (and, in a second row,
    waits on the job's event stream, ``Client.watch``);
  * efficiency of 200 tasks of 50 ms: ideal makespan (200 x 50 ms / 2) over the actual.
Ratios are farm / peer (throughput and efficiency: higher is better; round trip: lower is
better). The machine is shared: run it more than once.

    python bench/dispatch.py [--database sqlite,postgresql] [--peers pool,ray,dask,celery]
                             [--samples 200] [--quick] [--queue] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _peers import PEERS, PeerMissing, Runner
from _servers import child_code_warning, postgres_server, postgres_unavailable

import parallel_pilot
from parallel_pilot.client.local_cluster import LocalCluster
from parallel_pilot.client.sdk import Client

WORKERS = 2  # workers of every system, one task at a time each
SIZES = (1_000, 10_000)  # no-op tasks per throughput batch
ROUND_TRIPS = 200  # single-task round trips timed (median, p95)
STREAM_ROUND_TRIPS = 50  # farm round trips timed through the job event stream
LONG_TASKS, LONG_MS = 200, 50  # the efficiency workload: tasks of LONG_MS milliseconds
ROUND_TRIP_POLL = 0.002  # seconds between a farm client's polls while timing a round trip
BATCH_POLL = 0.1  # seconds between polls of a batch (the figure comes from finished_at)
TIMEOUT = 1800.0  # seconds any one farm job may take
DATABASES = ("sqlite", "postgresql")


# ---------------------------------------------------------------- the farm

def _wait(client: Client, job_id: int, poll: float) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        info = client.job(job_id)
        if info.state.finished:
            if info.state != "completed":
                raise RuntimeError(f"job {job_id} ended {info.state}: {info.error}")
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not finish in {TIMEOUT} s")
        time.sleep(poll)


@contextlib.contextmanager
def farm(database: str) -> Iterator[tuple[Runner, Callable[[], float]]]:
    """The farm as a ``Runner``, and a round trip through the job's event stream."""
    with contextlib.ExitStack() as stack:
        server_args: list[str] = []
        if database == "postgresql":
            reason = postgres_unavailable()
            if reason:
                raise PeerMissing(reason)
            server_args = ["--database-url", stack.enter_context(postgres_server())]
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-farm-")))
        cluster = stack.enter_context(
            LocalCluster(tmp, workers=WORKERS, slots=1, server_args=server_args))
        client = stack.enter_context(cluster.client())

        def batch(n: int, ms: int) -> float:
            submitted = time.time()  # the coordinator's clock: same machine
            job = client.submit("sleep", {"tasks": n, "milliseconds": ms})
            info = _wait(client, job.id, BATCH_POLL)
            return float(info.finished_at - submitted)

        def one() -> float:
            started = time.perf_counter()
            job = client.submit("sleep", {"tasks": 1, "milliseconds": 0})
            _wait(client, job.id, ROUND_TRIP_POLL)
            return time.perf_counter() - started

        def one_streamed() -> float:
            started = time.perf_counter()
            job = client.submit("sleep", {"tasks": 1, "milliseconds": 0})
            for info in client.watch(job.id, timeout=TIMEOUT):
                last = info
            if last.state != "completed":
                raise RuntimeError(f"job {job.id} ended {last.state}")
            return time.perf_counter() - started

        yield Runner(f"farm {database}", batch, one), one_streamed


# ---------------------------------------------------------------- measuring

def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def measure(runner: Runner, sizes: tuple[int, ...], samples: int,
            streamed: Callable[[], float] | None = None,
            stream_samples: int = STREAM_ROUND_TRIPS) -> dict[str, Any]:
    runner.batch(20, 0)  # warm-up: workers up and connected
    result: dict[str, Any] = {"throughput": {}}
    for n in sizes:
        seconds = runner.batch(n, 0)
        result["throughput"][str(n)] = {"seconds": seconds, "tasks_per_second": n / seconds}
    trips = [runner.one() for _ in range(samples)]
    result["round_trip"] = {"samples": samples, "median_ms": statistics.median(trips) * 1000,
                            "p95_ms": percentile(trips, 0.95) * 1000}
    if streamed is not None and stream_samples > 0:
        trips = [streamed() for _ in range(stream_samples)]
        result["round_trip_stream"] = {"samples": len(trips),
                                       "median_ms": statistics.median(trips) * 1000,
                                       "p95_ms": percentile(trips, 0.95) * 1000}
    ideal = LONG_TASKS * LONG_MS / 1000 / WORKERS
    seconds = runner.batch(LONG_TASKS, LONG_MS)
    result["efficiency"] = {"tasks": LONG_TASKS, "task_ms": LONG_MS, "ideal_seconds": ideal,
                            "seconds": seconds, "efficiency": ideal / seconds}
    return result


PEER_NAMES = {"pool": "ProcessPoolExecutor", "ray": "Ray", "dask": "Dask", "celery": "Celery"}


def run_all(databases: list[str], peers: list[str], sizes: tuple[int, ...], samples: int,
            stream_samples: int, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every system in turn; ``save`` sees the results after each (a long run that fails
    later keeps what it measured). A system that fails is reported, and the rest runs."""
    systems: dict[str, Any] = {}
    results = {"machine": machine(), "workers": WORKERS, "sizes": list(sizes),
               "systems": systems, "ratios": {}}
    for database in databases:
        name = f"farm {database}"
        log(f"measuring {name} ...")
        try:
            with farm(database) as (runner, streamed):
                systems[name] = measure(runner, sizes, samples, streamed, stream_samples)
        except PeerMissing as exc:
            systems[name] = {"missing": str(exc)}
        except Exception as exc:  # one system failing is a result
            systems[name] = {"missing": f"failed: {type(exc).__name__}: {exc}"}
        save(results)
    for peer in peers:
        log(f"measuring {peer} ...")
        try:
            with PEERS[peer](WORKERS) as runner:
                systems[runner.name] = measure(runner, sizes, samples)
        except PeerMissing as exc:
            systems[PEER_NAMES[peer]] = {"missing": str(exc)}
        except Exception as exc:
            systems[PEER_NAMES[peer]] = {"missing": f"failed: {type(exc).__name__}: {exc}"}
        save(results)
    results["ratios"] = ratios(systems, sizes)
    return results


def ratios(systems: dict[str, Any], sizes: tuple[int, ...]) -> dict[str, Any]:
    """farm / peer for every farm database and every peer that ran."""
    out: dict[str, Any] = {}
    for farm_name, f in systems.items():
        if not farm_name.startswith("farm") or "missing" in f:
            continue
        for peer, p in systems.items():
            if peer.startswith("farm") or "missing" in p:
                continue
            row = {f"throughput_{n}": f["throughput"][str(n)]["tasks_per_second"]
                   / p["throughput"][str(n)]["tasks_per_second"] for n in sizes}
            row["round_trip_median"] = (f["round_trip"]["median_ms"]
                                        / p["round_trip"]["median_ms"])
            row["round_trip_p95"] = f["round_trip"]["p95_ms"] / p["round_trip"]["p95_ms"]
            row["efficiency"] = f["efficiency"]["efficiency"] / p["efficiency"]["efficiency"]
            out[f"{farm_name} / {peer}"] = row
    return out


def machine() -> dict[str, Any]:
    pilot_dir = Path(parallel_pilot.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(pilot_dir), "describe", "--always",
                                 "--dirty"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"pilot": str(Path(parallel_pilot.__file__).resolve().parent), "commit": commit,
            "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
            "python": sys.version.split()[0],
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


# ---------------------------------------------------------------- printing

def print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"Dispatch, {r['workers']} workers x 1 task each, one system at a time; "
          f"{m['cpus']} CPUs shared with other work (load {m['load_average_at_start'][0]:.1f} "
          f"at start), {m['when']}")
    print(f"parallel_pilot from {m['pilot']} ({m['commit']})")
    names = list(r["systems"])
    width = max(14, *(len(n) + 2 for n in names))
    print(f"{'measure':<30}" + "".join(f"{n:>{width}}" for n in names))

    def row(label: str, value: Callable[[dict[str, Any]], str]) -> None:
        cells = []
        for n in names:
            s = r["systems"][n]
            try:
                cells.append("-" if "missing" in s else value(s))
            except KeyError:
                cells.append("")
        print(f"{label:<30}" + "".join(f"{c:>{width}}" for c in cells))

    for n in r["sizes"]:
        row(f"{n} no-op: tasks/s",
            lambda s, n=n: f"{s['throughput'][str(n)]['tasks_per_second']:.0f}")
    row("round trip median ms", lambda s: f"{s['round_trip']['median_ms']:.1f}")
    row("round trip p95 ms", lambda s: f"{s['round_trip']['p95_ms']:.1f}")
    row("  (event stream) median ms", lambda s: f"{s['round_trip_stream']['median_ms']:.1f}")
    row("  (event stream) p95 ms", lambda s: f"{s['round_trip_stream']['p95_ms']:.1f}")
    row(f"{LONG_TASKS} x {LONG_MS} ms efficiency",
        lambda s: f"{s['efficiency']['efficiency']:.3f}")
    for n, s in r["systems"].items():
        if "missing" in s:
            print(f"{n}: {s['missing']}")
    if r["ratios"]:
        print()
        keys = list(next(iter(r["ratios"].values())))
        print(f"{'farm / peer':<36}" + "".join(f"{k:>20}" for k in keys))
        for pair, values in r["ratios"].items():
            print(f"{pair:<36}" + "".join(f"{values[k]:>20.2f}" for k in keys))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="sqlite",
                        help="farm databases, comma-separated: sqlite, postgresql")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"peers, comma-separated ({', '.join(PEERS)}; '' for none)")
    parser.add_argument("--samples", type=int, default=ROUND_TRIPS,
                        help="single-task round trips timed")
    parser.add_argument("--stream-samples", type=int, default=STREAM_ROUND_TRIPS,
                        help="farm round trips timed through the job event stream")
    parser.add_argument("--quick", action="store_true", help="skip the 10,000-task batch")
    parser.add_argument("--queue", action="store_true",
                        help="also lease and job GET latency with 1,000 and 100,000 queued")
    parser.add_argument("--json", action="store_true", help="print only JSON")
    parser.add_argument("--save", metavar="FILE", type=Path, help="also write the JSON here")
    parser.add_argument("--show", metavar="FILE", type=Path,
                        help="print the tables of a saved run and exit")
    args = parser.parse_args(argv)
    if args.show:
        show(json.loads(args.show.read_text()))
        return 0
    warning = child_code_warning()
    if warning:
        parser.error(warning)
    databases = [d.strip() for d in args.database.split(",") if d.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for d in databases:
        if d not in DATABASES:
            parser.error(f"unknown database {d!r}; known: {', '.join(DATABASES)}")
    for p in peers:
        if p not in PEERS:
            parser.error(f"unknown peer {p!r}; known: {', '.join(PEERS)}")
    sizes = SIZES[:1] if args.quick else SIZES
    def save(results: dict[str, Any]) -> None:
        if args.save:
            args.save.write_text(json.dumps(results, indent=2))

    results = run_all(databases, peers, sizes, args.samples, args.stream_samples, save)
    if args.queue:
        import queue_depth

        results["queue"] = {}
        for d in databases:
            log(f"queue depth on {d} ...")
            try:
                results["queue"][d] = queue_depth.measure(d)
            except Exception as exc:
                results["queue"][d] = {"database": d,
                                       "missing": f"failed: {type(exc).__name__}: {exc}"}
            save(results)
    save(results)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        show(results)
    return 0


def show(results: dict[str, Any]) -> None:
    print_table(results)
    if "queue" in results:
        import queue_depth

        for r in results["queue"].values():
            print()
            queue_depth.print_table(r)


if __name__ == "__main__":
    sys.exit(main())
