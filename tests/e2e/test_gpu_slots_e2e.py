"""GPU slots with real processes: ``pilot worker --gpus 2:8G --slots 1`` offers one CPU slot
and two GPU slots; a GPU sweep of 4 items whose command prints ``CUDA_VISIBLE_DEVICES``
and sleeps runs at most 2 at once, each seeing exactly one GPU index, two at once never
the same; a CPU sweep of 2 items beside it runs on the CPU slot and sees no GPU (empty). No real GPU
is needed: the GPUs are told by hand."""

from __future__ import annotations

import json
import sys

from tests.e2e.farm import Farm, wait_for

SLEEP_SECONDS = 1.2  # how long each item holds its GPU
PROBE = ("import os, sys, time; start = time.time(); "
         "print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')), start, flush=True); "
         f"time.sleep({SLEEP_SECONDS}); print(time.time())")


def runs(farm: Farm, job_id: int) -> list[tuple[str, float, float]]:
    """(CUDA_VISIBLE_DEVICES as the item saw it, start, end) per item."""
    out = []
    for task in farm.tasks(job_id):
        first, end = task["result"]["stdout"].split("\n")[:2]
        devices, start = first.rsplit(" ", 1)
        out.append((eval(devices), float(start), float(end)))  # repr of a str or None
    return out


def test_a_two_gpu_worker_runs_two_gpu_items_at_once_each_on_its_own_gpu(farm: Farm) -> None:
    farm.start_server()
    farm.start_worker("gpu", slots=1, extra=["--gpus", "2:8G"])
    farm.wait_workers_joined(1)
    line = wait_for(lambda: next((ln for ln in farm.log("worker-gpu").splitlines()
                                  if "registered with" in ln), None), 30, "the startup line")
    assert "slots: 1 CPU + 2 GPU" in line
    print(line)
    listed = farm.pilot("workers").stdout
    assert "1+2 GPU" in listed
    print(listed)

    def sweep(items: str, *extra: str) -> int:
        submitted = farm.pilot("sweep", "--items", items, *extra, "--no-wait", "--json",
                               "--", sys.executable, "-c", PROBE, "{item}")
        return int(json.loads(submitted.stdout)["job"])

    gpu_job = sweep("1-4", "--requires", "gpu")
    cpu_job = sweep("1-2")
    for job_id in (gpu_job, cpu_job):
        finished = json.loads(farm.pilot("wait", str(job_id), "--json", timeout=120).stdout)
        assert finished["state"] == "completed", finished

    gpu_runs = runs(farm, gpu_job)
    assert all(d in ("0", "1") for d, _, _ in gpu_runs)  # exactly one index each
    overlapping = [(a, b) for i, a in enumerate(gpu_runs) for b in gpu_runs[i + 1:]
                   if a[1] < b[2] and b[1] < a[2]]
    assert overlapping, gpu_runs  # two GPUs: two ran at once
    assert all(a[0] != b[0] for a, b in overlapping), gpu_runs  # never on the same GPU
    for _, start, _ in gpu_runs:  # at most two at any moment
        assert sum(1 for _, s, e in gpu_runs if s <= start < e) <= 2, gpu_runs

    cpu_runs = runs(farm, cpu_job)
    assert [d for d, _, _ in cpu_runs] == ["", ""]  # CPU items see no GPU
    for _, start, _ in cpu_runs:  # one CPU slot: one at a time
        assert sum(1 for _, s, e in cpu_runs if s <= start < e) == 1, cpu_runs
    print("GPU items (CUDA_VISIBLE_DEVICES, start, end):",
          *sorted(gpu_runs, key=lambda r: r[1]), sep="\n  ")
