"""Capability matching with real processes: ``pilot sweep --requires gpu`` waits while
only a CPU worker (``pilot worker --gpus 0``) is online and ``pilot show`` says why;
``pilot jobs`` says it short; a worker told ``--gpus 1:8G`` joins and the job finishes on
it alone. A bad ``--requires`` is a usage error naming the term."""

from __future__ import annotations

import json

from tests.e2e.farm import Farm, wait_for

WAITING = "waiting: no online worker has a GPU; 1 worker has no GPU"


def test_a_gpu_sweep_waits_for_a_gpu_worker_then_finishes_on_it(farm: Farm) -> None:
    farm.start_server()
    farm.start_worker("cpu", extra=["--gpus", "0"])
    farm.wait_workers_joined(1)
    submitted = farm.pilot("sweep", "--items", "1-6", "--requires", "gpu", "--no-wait",
                           "--json", "--", "python", "-c", "print({item} * 2)")
    job_id = int(json.loads(submitted.stdout)["job"])

    shown = wait_for(lambda: (lambda out: out if WAITING in out else None)(
        farm.pilot("show", str(job_id)).stdout), 30, "pilot show to say why the job waits")
    assert "queued" in shown
    print(f"pilot show {job_id} while only a CPU worker is online:\n{shown}")
    listed = farm.pilot("jobs").stdout
    assert "WAITING" in listed and "no online worker has a GPU" in listed
    print(f"pilot jobs:\n{listed}")
    # the CPU worker is asked again and again; none of the job's tasks goes to it
    assert all(t["state"] == "ready" for t in farm.tasks(job_id))

    farm.start_worker("gpu", extra=["--gpus", "1:8G"])
    waited = farm.pilot("wait", str(job_id), "--json", timeout=240)
    finished = json.loads(waited.stdout)
    assert finished["state"] == "completed" and finished["waiting_reason"] is None
    done_by = {w["name"]: w["tasks_done"] for w in farm.api("GET", "/workers")["workers"]}
    assert done_by == {"cpu": 0, "gpu": 6}
    gpus = {w["name"]: w["capabilities"]["gpus"] for w in farm.api("GET", "/workers")["workers"]}
    assert gpus["cpu"] == [] and [g["memory_bytes"] for g in gpus["gpu"]] == [8 * 1024 ** 3]
    results = sorted(int(t["result"]["stdout"].strip()) for t in farm.tasks(job_id))
    assert results == [2, 4, 6, 8, 10, 12]


def test_a_bad_requires_is_refused_before_anything_is_sent(farm: Farm) -> None:
    farm.start_server()
    bad = farm.pilot("sweep", "--items", "1-2", "--requires", "gpu,vrm>=8G", "--",
                     "true", check=False)
    assert bad.returncode == 2
    assert "cannot read requirement 'vrm>=8G'" in bad.stderr and "vram>=SIZE" in bad.stderr
    assert farm.api("GET", "/jobs")["jobs"] == []
    worker = farm.pilot("worker", "--gpus", "2:lots", check=False, timeout=60)
    assert worker.returncode == 2 and "--gpus: cannot read '2:lots'" in worker.stderr
