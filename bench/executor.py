"""Executor benchmark: throughput and per-call overhead of ``Executor.map`` for no-op calls
over 2 workers, side by side with ``concurrent.futures.ProcessPoolExecutor(2)`` and Dask's
distributed ``LocalCluster`` (2 worker processes, 1 thread each, on 127.0.0.1), in one run.

Workloads (the same function, ``noop(x) -> x``, everywhere):
  * ``map`` of many calls, one task per call (``chunksize=1``);
  * ``map`` of many calls in chunks (``chunksize=100``; Dask gets one task per call, as
    its ``Client.map`` has no chunks);
  * the round trip of one ``submit(...).result()`` (median of several).
Overhead per call = wall time x workers / calls: the worker time each call costs.

    python bench/executor.py [--quick] [--json]
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
LATENCY_SAMPLES = 10  # single calls timed for the round trip


def noop(x: Any) -> Any:
    return x


@contextmanager
def pilot_pool() -> Iterator[FuturesExecutor]:
    with tempfile.TemporaryDirectory(prefix="pilot-bench-") as tmp, \
            LocalCluster(Path(tmp), workers=WORKERS, allow=("python",)) as cluster, \
            Executor(client=cluster.client()) as pool:
        pool.submit(noop, 0).result(120)  # warm: workers joined, function uploaded
        yield pool


@contextmanager
def process_pool() -> Iterator[FuturesExecutor]:
    with ProcessPoolExecutor(WORKERS) as pool:
        pool.submit(noop, 0).result()
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
    return {"seconds": wall, "calls_per_s": calls / wall,
            "overhead_ms": wall * WORKERS / calls * 1000}


def time_latency(pool: Any) -> dict[str, float]:
    samples = []
    for i in range(LATENCY_SAMPLES):
        started = time.perf_counter()
        assert pool.submit(noop, i).result() == i
        samples.append(time.perf_counter() - started)
    return {"median_ms": statistics.median(samples) * 1000, "max_ms": max(samples) * 1000}


def measure(name: str, make: Callable[[], Any], sizes: dict[str, int]) -> dict[str, Any]:
    print(f"{name}…", file=sys.stderr, flush=True)
    with make() as pool:
        return {
            "one task per call": time_map(pool, sizes["single"], 1),
            "chunks of 100": time_map(pool, sizes["chunked"], 100),
            "round trip": time_latency(pool),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    sizes = {"single": 100, "chunked": 2_000} if args.quick else \
        {"single": 300, "chunked": 10_000}
    figures = {
        "Parallel Pilot Executor": measure("Parallel Pilot Executor", pilot_pool, sizes),
        "ProcessPoolExecutor(2)": measure("ProcessPoolExecutor(2)", process_pool, sizes),
        "Dask LocalCluster(2)": measure("Dask LocalCluster(2)", dask_pool, sizes),
    }
    if args.json:
        print(json.dumps({"sizes": sizes, "figures": figures}, indent=2))
        return
    print(f"no-op calls over {WORKERS} workers "
          f"({sizes['single']} calls one task each; {sizes['chunked']} calls in chunks of 100)")
    print(f"{'':26} {'1 task/call':>12} {'overhead':>10} {'chunks of 100':>14} "
          f"{'overhead':>10} {'round trip':>11}")
    for name, f in figures.items():
        single, chunked, trip = f["one task per call"], f["chunks of 100"], f["round trip"]
        print(f"{name:26} {single['calls_per_s']:>8.0f}/s {single['overhead_ms']:>8.2f}ms "
              f"{chunked['calls_per_s']:>10.0f}/s {chunked['overhead_ms']:>8.3f}ms "
              f"{trip['median_ms']:>8.1f}ms")


if __name__ == "__main__":
    main()
