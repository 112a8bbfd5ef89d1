"""Queue-depth benchmark: does a lease, and a client's look at a job, stay cheap as the queue
grows?

Starts a coordinator with no worker (``LocalCluster(workers=0)``), registers one worker over
HTTP and drives it by hand, then for a job of 1,000 and one of 100,000 no-op ``sleep`` tasks
(submitted, timed, and left queued):
  * lease latency: one worker's request for one task, median and p95 of ``SAMPLES``: the
    old ``POST /workers/lease`` (each leased attempt then completed, untimed) and, where the
    coordinator has it, ``POST /workers/sync`` (each carrying the previous task's result,
    the exchange a busy worker makes);
  * ``GET /api/v1/jobs/{id}`` by the client: median and p95 of ``SAMPLES``;
and prints both with the ratio 100k / 1k. Each job is cancelled before the next.

    python bench/queue_depth.py [--database sqlite|postgresql] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _servers import child_code_warning, postgres_server, postgres_unavailable

from parallel_pilot.client.local_cluster import LocalCluster

DEPTHS = (1_000, 100_000)  # tasks queued while timing
SAMPLES = 50  # requests timed per figure
API = "/api/v1"
HTTP_TIMEOUT = 600.0  # seconds one request may take (submitting 100,000 tasks included)


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _figure(samples: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(samples) * 1000, "p95_ms": _p95(samples) * 1000,
            "samples": len(samples)}


def _timed(call: Callable[..., httpx.Response], *args: Any,
           **kwargs: Any) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = call(*args, **kwargs)
    return time.perf_counter() - started, response


def _ok(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: "
                           f"{response.status_code} {response.text[:300]}")
    return response.json()


def _lease_samples(worker: httpx.Client) -> list[float] | None:
    """None when the coordinator has no ``/workers/lease`` any more."""
    samples = []
    for _ in range(SAMPLES):
        seconds, response = _timed(worker.post, f"{API}/workers/lease",
                                    json={"slots": 1, "wait_seconds": 0})
        if response.status_code in (404, 405):
            return None
        tasks = _ok(response)["tasks"]
        if not tasks:
            raise RuntimeError("a lease with tasks queued came back empty")
        samples.append(seconds)
        for t in tasks:
            _ok(worker.post(f"{API}/attempts/{t['task_id']}/{t['attempt']}/complete",
                            json={"result": {}}))
    return samples


def _sync_samples(worker: httpx.Client) -> list[float]:
    samples: list[float] = []
    reports: list[dict[str, Any]] = []
    for _ in range(SAMPLES + 1):
        body = {"reports": reports, "held": [], "free_slots": 1, "prefetch": 0,
                "wait_seconds": 0}
        seconds, response = _timed(worker.post, f"{API}/workers/sync", json=body)
        tasks = _ok(response)["tasks"]
        if not tasks:
            raise RuntimeError("a sync with tasks queued leased nothing")
        if reports:  # the first one reports nothing: not the steady exchange
            samples.append(seconds)
        reports = [{"task_id": t["task_id"], "attempt": t["attempt"], "outcome": "completed",
                    "result": {}} for t in tasks]
    _ok(worker.post(f"{API}/workers/sync", json={"reports": reports, "held": [],
                                                    "free_slots": 0, "wait_seconds": 0}))
    return samples


def _has_sync(worker: httpx.Client) -> bool:
    response = worker.post(f"{API}/workers/sync", json={"free_slots": 0, "wait_seconds": 0})
    return response.status_code not in (404, 405)


def measure(database: str = "sqlite", depths: tuple[int, ...] = DEPTHS) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        server_args: list[str] = []
        if database == "postgresql":
            reason = postgres_unavailable()
            if reason:
                return {"database": database, "missing": reason}
            server_args = ["--database-url", stack.enter_context(postgres_server())]
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-queue-")))
        cluster = stack.enter_context(
            LocalCluster(tmp, workers=0, server_args=server_args))
        user = stack.enter_context(httpx.Client(
            base_url=cluster.url, timeout=HTTP_TIMEOUT,
            headers={"Authorization": f"Bearer {cluster.admin_token}"}))
        registered = _ok(httpx.post(f"{cluster.url}{API}/workers/register", json={
            "join_token": cluster.join_token, "name": "bench-driver",
            "capabilities": {"cpu_cores": 2, "ram_bytes": 2**30, "kinds": ["sleep"]}}))
        worker = stack.enter_context(httpx.Client(
            base_url=cluster.url, timeout=HTTP_TIMEOUT,
            headers={"Authorization": f"Bearer {registered['worker_token']}"}))
        has_sync = _has_sync(worker)
        result: dict[str, Any] = {"database": database, "samples": SAMPLES,
                                  "sync_endpoint": has_sync, "depths": {}}
        for depth in depths:
            seconds, response = _timed(user.post, f"{API}/jobs", json={
                "kind": "sleep", "params": {"tasks": depth, "milliseconds": 0}})
            job_id = _ok(response)["id"]
            figures: dict[str, Any] = {"submit_seconds": seconds}
            gets = []
            for _ in range(SAMPLES):
                took, response = _timed(user.get, f"{API}/jobs/{job_id}")
                _ok(response)
                gets.append(took)
            figures["job_get"] = _figure(gets)
            lease = _lease_samples(worker)
            if lease is not None:
                figures["lease"] = _figure(lease)
            if has_sync:
                figures["sync"] = _figure(_sync_samples(worker))
            took, response = _timed(user.post, f"{API}/jobs/{job_id}/cancel")
            _ok(response)
            figures["cancel_seconds"] = took
            result["depths"][str(depth)] = figures
        return result


def print_table(r: dict[str, Any]) -> None:
    if "missing" in r:
        print(f"queue depth, {r['database']}: {r['missing']}")
        return
    lo, hi = list(r["depths"])[0], list(r["depths"])[-1]
    print(f"Queue depth on {r['database']}: median / p95 ms of {r['samples']} requests "
          f"(one worker driven by hand, no other worker)")
    print(f"{'measure':<34}{lo + ' queued':>18}{hi + ' queued':>18}{'ratio':>14}")
    keys = [("lease", "POST /workers/lease"), ("sync", "POST /workers/sync (+report)"),
            ("job_get", "GET /jobs/{id}")]
    for key, label in keys:
        if key not in r["depths"][lo]:
            continue
        a, b = r["depths"][lo][key], r["depths"][hi][key]
        print(f"{label:<34}{a['median_ms']:>10.1f} /{a['p95_ms']:>6.1f}"
              f"{b['median_ms']:>10.1f} /{b['p95_ms']:>6.1f}"
              f"{b['median_ms'] / a['median_ms']:>8.1f} /{b['p95_ms'] / a['p95_ms']:>4.1f}")
    print(f"{'submit the job, s':<34}{r['depths'][lo]['submit_seconds']:>18.2f}"
          f"{r['depths'][hi]['submit_seconds']:>18.2f}")
    print(f"{'cancel the job, s':<34}{r['depths'][lo]['cancel_seconds']:>18.2f}"
          f"{r['depths'][hi]['cancel_seconds']:>18.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument("--depths", default=",".join(str(d) for d in DEPTHS),
                        help="tasks queued, comma-separated (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print only JSON")
    args = parser.parse_args(argv)
    warning = child_code_warning()
    if warning:
        parser.error(warning)
    result = measure(args.database, tuple(int(d) for d in args.depths.split(",")))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
