"""Executor benchmark: the round trip of one call and ``map`` throughput of no-op calls over
2 workers, side by side with ``concurrent.futures.ProcessPoolExecutor(2)`` and Dask's
distributed ``LocalCluster`` (2 worker processes, 1 thread each, on 127.0.0.1), in one run.

Workloads (the same function, ``noop(x) -> x``, everywhere):
  * the round trip of one ``submit(...).result()``: median and p95 over ``ROUND_TRIPS``;
  * ``map`` of 10,000 calls with ``chunksize=100`` (Dask gets one task per call: its
    ``Client.map`` has no chunks);
  * ``map`` of 1,000 calls with ``chunksize=1`` (one task per call).
Ratios are the farm's figure over each peer's (throughput: higher is better; round trip:
lower is better). Targets of issue 13: round trip under 10 ms, 10,000 calls in chunks of
100 above 20,000 calls/s.

    python bench/executor.py [--quick] [--json] [--only pilot]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor as FuturesExecutor
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from parallel_pilot.client.executor import Executor
from parallel_pilot.client.local_cluster import LocalCluster

WORKERS = 2  # worker processes on every side
ROUND_TRIPS = 100  # single calls timed for the round trip
CHUNKED = (10_000, 100)  # calls, chunksize of the chunked map
SINGLE = (1_000, 1)  # calls, chunksize of the one-task-per-call map
PILOT = "Parallel Pilot Executor"
TARGET_ROUND_TRIP_MS = 10.0
TARGET_CHUNKED_PER_S = 20_000.0


def noop(x: Any) -> Any:
    return x


@contextmanager
def pilot_pool() -> Iterator[FuturesExecutor]:
    with tempfile.TemporaryDirectory(prefix="pilot-bench-") as tmp, \
            LocalCluster(Path(tmp), workers=WORKERS, allow=("python",)) as cluster, \
            Executor(client=cluster.client()) as pool:
        pool.submit(noop, 0).result(120)  # warm: workers joined, function uploaded
        list(pool.map(noop, range(4), chunksize=1))  # both workers' children started
        yield pool


@contextmanager
def process_pool() -> Iterator[FuturesExecutor]:
    with ProcessPoolExecutor(WORKERS) as pool:
        list(pool.map(noop, range(4)))
        yield pool


class DaskPool:
    """The two calls the benchmark needs, on a ``distributed.Client``."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def map(self, fn: Callable[..., Any], items: list[Any], chunksize: int = 1) -> list[Any]:
        return list(self.client.gather(self.client.map(fn, items, pure=False)))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)


@contextmanager
def dask_pool() -> Iterator[DaskPool]:
    from distributed import Client
    from distributed import LocalCluster as DaskCluster

    with DaskCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                     host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.submit(noop, 0, pure=False).result()
        yield DaskPool(client)


def time_map(pool: Any, calls: int, chunksize: int) -> dict[str, float]:
    items = list(range(calls))
    started = time.perf_counter()
    results = list(pool.map(noop, items, chunksize=chunksize))
    wall = time.perf_counter() - started
    assert results == items, "results differ from the builtin map"
    return {"seconds": wall, "calls_per_s": calls / wall}


def time_round_trip(pool: Any, samples: int) -> dict[str, float]:
    times = []
    for i in range(samples):
        started = time.perf_counter()
        assert pool.submit(noop, i).result() == i
        times.append(time.perf_counter() - started)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {"median_ms": statistics.median(times) * 1000, "p95_ms": p95 * 1000}


def measure(name: str, make: Callable[[], Any], sizes: dict[str, Any]) -> dict[str, Any]:
    print(f"{name}…", file=sys.stderr, flush=True)
    with make() as pool:
        figures = {
            "round trip": time_round_trip(pool, sizes["round_trips"]),
            "chunked": time_map(pool, *sizes["chunked"]),
            "single": time_map(pool, *sizes["single"]),
        }
        # said before the pool is torn down (a Dask cluster can be slow to close)
        print(f"  {json.dumps(figures)}", file=sys.stderr, flush=True)
    return figures


def ratios(figures: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The farm's figures over each peer's."""
    ours = figures[PILOT]
    out = {}
    for name, f in figures.items():
        if name == PILOT:
            continue
        out[name] = {
            "round trip": ours["round trip"]["median_ms"] / f["round trip"]["median_ms"],
            "chunked": ours["chunked"]["calls_per_s"] / f["chunked"]["calls_per_s"],
            "single": ours["single"]["calls_per_s"] / f["single"]["calls_per_s"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--only", choices=("pilot",), help="measure the farm alone")
    args = parser.parse_args()
    sizes: dict[str, Any] = {"round_trips": ROUND_TRIPS, "chunked": CHUNKED, "single": SINGLE}
    if args.quick:
        sizes = {"round_trips": 20, "chunked": (2_000, 100), "single": (200, 1)}
    peers = {PILOT: pilot_pool}
    if args.only is None:
        peers.update({"ProcessPoolExecutor(2)": process_pool, "Dask LocalCluster(2)": dask_pool})
    figures = {name: measure(name, make, sizes) for name, make in peers.items()}
    if args.json:
        print(json.dumps({"sizes": sizes, "figures": figures,
                          "ratios": ratios(figures) if len(figures) > 1 else {}}, indent=2))
        return
    (n_chunked, c_chunked), (n_single, _) = sizes["chunked"], sizes["single"]
    print(f"no-op calls over {WORKERS} workers: round trip of one call (median, p95 of "
          f"{sizes['round_trips']}); map of {n_chunked} calls in chunks of {c_chunked}; "
          f"map of {n_single} calls, one task each")
    print(f"{'':26} {'round trip':>11} {'p95':>9} {'chunked':>12} {'1 task/call':>12}")
    for name, f in figures.items():
        trip, chunked, single = f["round trip"], f["chunked"], f["single"]
        print(f"{name:26} {trip['median_ms']:>9.1f}ms {trip['p95_ms']:>7.1f}ms "
              f"{chunked['calls_per_s']:>10.0f}/s {single['calls_per_s']:>10.0f}/s")
    for name, r in ratios(figures).items() if len(figures) > 1 else ():
        print(f"farm / {name:19} round trip x{r['round trip']:.2f}, chunked "
              f"x{r['chunked']:.2f}, one task per call x{r['single']:.2f}")
    ours = figures[PILOT]
    print(f"targets: round trip < {TARGET_ROUND_TRIP_MS:g} ms: "
          f"{'met' if ours['round trip']['median_ms'] < TARGET_ROUND_TRIP_MS else 'missed'}; "
          f"chunked > {TARGET_CHUNKED_PER_S:,.0f}/s: "
          f"{'met' if ours['chunked']['calls_per_s'] > TARGET_CHUNKED_PER_S else 'missed'}")


if __name__ == "__main__":
    main()
