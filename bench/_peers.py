"""The task systems the farm is measured against, each behind one small interface.

Every peer runs 2 workers of one task at a time on this machine and the same task (sleep
some milliseconds, 0 for a no-op):
  * ``ProcessPoolExecutor(2)``: the floor, no network or database in between;
  * Ray: ``ray.init(num_cpus=2)`` on 127.0.0.1, remote functions of one CPU each;
  * Dask: distributed ``LocalCluster``, 2 worker processes of 1 thread;
  * Celery: a Redis broker and result backend (``redis-server`` started here), 2 worker
    processes with ``--pool=solo`` (the task runs in the worker process itself, as the
    farm's in-process ``sleep`` kind, Ray's and Dask's workers do; prefork with
    concurrency 1 would add a parent-to-child pipe hop per task) and Celery's default
    prefetch (4 per worker).
A peer whose package is missing raises ``PeerMissing``; the benchmark prints it and goes on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from _servers import BENCH_DIR, redis_server, redis_unavailable, stop_process

INSTALL_HINT = "not installed (pip install -e '.[bench]')"
CELERY_READY_TIMEOUT = 60.0  # seconds Celery's workers may take to answer a ping
WAIT_TIMEOUT = 900.0  # seconds one batch may take


class PeerMissing(RuntimeError):
    """A peer cannot run here (its package or server is missing); the message says why."""


@dataclass
class Runner:
    """``batch(n, ms)``: submit n tasks, wait for all, seconds taken; ``one()``: seconds
    from submitting one no-op task to its result in the caller's hands."""

    name: str
    batch: Callable[[int, int], float]
    one: Callable[[], float]


def sleep_ms(ms: int) -> int:
    if ms:
        time.sleep(ms / 1000)
    return ms


def _require(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise PeerMissing(INSTALL_HINT)


def _pythonpath() -> str:
    """PYTHONPATH for peer worker processes: the caller's, then bench/ (these helpers)."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([*parts, str(BENCH_DIR)] if str(BENCH_DIR) not in parts else parts)


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[Runner]:
    with ProcessPoolExecutor(workers) as pool:
        def batch(n: int, ms: int) -> float:
            return _timed(lambda: list(pool.map(sleep_ms, [ms] * n, chunksize=1)))

        def one() -> float:
            return _timed(lambda: pool.submit(sleep_ms, 0).result())

        yield Runner("ProcessPoolExecutor", batch, one)


@contextlib.contextmanager
def ray_peer(workers: int) -> Iterator[Runner]:
    _require("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PYTHONPATH"] = _pythonpath()  # Ray's workers import this module by name
    import ray

    ray.init(num_cpus=workers, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    try:
        remote = ray.remote(num_cpus=1)(sleep_ms)

        def batch(n: int, ms: int) -> float:
            return _timed(lambda: ray.get([remote.remote(ms) for _ in range(n)]))

        def one() -> float:
            return _timed(lambda: ray.get(remote.remote(0)))

        yield Runner("Ray", batch, one)
    finally:
        ray.shutdown()


@contextlib.contextmanager
def dask_peer(workers: int) -> Iterator[Runner]:
    _require("distributed")
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        def batch(n: int, ms: int) -> float:
            return _timed(lambda: client.gather(client.map(sleep_ms, [ms] * n, pure=False)))

        def one() -> float:
            return _timed(lambda: client.submit(sleep_ms, 0, pure=False).result())

        yield Runner("Dask", batch, one)


@contextlib.contextmanager
def celery_peer(workers: int) -> Iterator[Runner]:
    _require("celery", "redis")
    reason = redis_unavailable()
    if reason:
        raise PeerMissing(reason)
    with redis_server() as url, tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp:
        env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": _pythonpath()}
        os.environ["BENCH_REDIS_URL"] = url
        import _celery_app as celery_app
        from celery import group

        celery_app.app.conf.broker_url = url
        celery_app.app.conf.result_backend = url
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "_celery_app", "worker",
                 "--pool=solo", "--concurrency=1", "-n", f"w{i}@bench", "-Q", "bench",
                 "--without-gossip", "--without-mingle", "--loglevel=WARNING"],
                env=env, cwd=str(BENCH_DIR), stdout=open(Path(tmp) / f"w{i}.log", "wb"),
                stderr=subprocess.STDOUT)
            for i in range(workers)
        ]
        try:
            _wait_for_celery(celery_app.app, workers, procs)
            task = celery_app.sleep_ms

            def batch(n: int, ms: int) -> float:
                return _timed(lambda: group(task.s(ms) for _ in range(n)).apply_async()
                              .get(timeout=WAIT_TIMEOUT))

            def one() -> float:
                return _timed(lambda: task.delay(0).get(timeout=WAIT_TIMEOUT))

            yield Runner("Celery", batch, one)
        finally:
            for proc in procs:
                stop_process(proc)


def _wait_for_celery(app: object, workers: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + CELERY_READY_TIMEOUT
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a Celery worker exited with {proc.returncode}")
        answers = app.control.ping(timeout=0.5) or []  # type: ignore[attr-defined]
        if len(answers) >= workers:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(answers)} of {workers} Celery workers answered a ping")


PEERS: dict[str, Callable[[int], contextlib.AbstractContextManager[Runner]]] = {
    "pool": process_pool,
    "ray": ray_peer,
    "dask": dask_peer,
    "celery": celery_peer,
}
