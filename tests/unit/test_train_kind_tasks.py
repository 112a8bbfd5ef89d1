"""The worker's side of ``train`` tasks with real torch in the real child process, behind a
fake ``RunContext`` (an in-memory job output store): init, train, aggregate, the kept
AdamW state, a refused delta whose shard keeps its cursor, and a broken spec."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from parallel_pilot.core.protocol import TaskLease
from parallel_pilot.kinds.base import parse_params
from parallel_pilot.kinds.train import TrainKind
from parallel_pilot.kinds.train.params import (
    FINAL_MODEL,
    TrainParams,
    delta_path,
    model_path,
    state_path,
)
from parallel_pilot.kinds.train.spec import TrainSpecError
from parallel_pilot.kinds.train.tasks import run_task
from tests.conftest import require

SPEC = """
    import torch

    def build_model():
        return torch.nn.Linear(3, 1)

    def shard_batches(shard, num_shards, batch_size, seed):
        g = torch.Generator().manual_seed(100 + shard)
        x = torch.randn(24, 3, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
        for i in range(0, 24, batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]

    def compute_loss(model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    def evaluate(model):
        x = torch.ones(4, 3)
        return {"loss": float(((model(x) - (-0.5)) ** 2).mean())}
"""


class FakeCache:
    def __init__(self, root: Path) -> None:
        self.root = root


class FakeContext:
    """A RunContext over a dict of blobs and a dict of the job's outputs."""

    def __init__(self, root: Path, blobs: dict[str, Path], outputs: dict[str, str],
                 task: TaskLease) -> None:
        self.workdir = root / f"work-{task.task_id}"
        self.workdir.mkdir()
        self.stop_event = threading.Event()
        self.sandbox = False
        self.gpus: tuple[int, ...] | None = None  # no worker gives GPUs here
        self.cache = FakeCache(root / "cache")
        self.blobs, self.outputs, self.task = blobs, outputs, task
        self.lines: list[str] = []
        self.progress_seen: list[float] = []

    def input_path(self, name: str) -> Path:
        return self.blobs[self.task.inputs[name]]

    def copy_input(self, name: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.input_path(name), dest)
        return dest

    def job_outputs(self, prefix: str = "") -> dict[str, str]:
        return {p: s for p, s in self.outputs.items() if p.startswith(prefix)}

    def fetch_blob(self, sha256: str) -> Path:
        return self.blobs[sha256]

    def progress(self, fraction: float | None, message: str | None = None) -> None:
        if fraction is not None:
            self.progress_seen.append(fraction)

    def log(self, line: str) -> None:
        self.lines.append(line)

    def upload_output(self, path: str, file: Path) -> str:
        return store(self.blobs, file, self.outputs, path, self.workdir.parent / "blobs")


def store(blobs: dict[str, Path], file: Path, outputs: dict[str, str], path: str,
          blob_dir: Path) -> str:
    data = file.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    kept = blob_dir / sha
    kept.parent.mkdir(exist_ok=True)
    kept.write_bytes(data)
    blobs[sha] = kept
    outputs[path] = sha
    return sha


class Job:
    """One train job's tasks run in plan order through ``run_task``."""

    def __init__(self, root: Path, spec_text: str, job_id: int = 7, **extra: Any) -> None:
        self.root, self.job_id = root, job_id
        spec = root / "spec.py"
        spec.write_text(textwrap.dedent(spec_text))
        self.blobs: dict[str, Path] = {}
        sha = hashlib.sha256(spec.read_bytes()).hexdigest()
        self.blobs[sha] = spec
        params = parse_params(TrainKind(), {"spec": sha, **extra})
        assert isinstance(params, TrainParams)
        self.specs = TrainKind().plan(params)
        self.outputs: dict[str, str] = {}
        self.contexts: list[FakeContext] = []
        self.sandboxed = False
        self.init: dict[str, Any] = {}
        self.first: list[dict[str, Any]] = []

    def run(self, index: int, stop_after: float | None = None) -> dict[str, Any]:
        spec = self.specs[index]
        lease = TaskLease(task_id=len(self.contexts) + 1, attempt=1, job_id=self.job_id,
                          kind="train", name=spec.name, payload=spec.payload,
                          inputs=spec.inputs, lease_expires_at=0.0, heartbeat_seconds=1.0)
        ctx = FakeContext(self.root, self.blobs, self.outputs, lease)
        ctx.sandbox = self.sandboxed
        self.contexts.append(ctx)
        if stop_after is not None:
            threading.Timer(stop_after, ctx.stop_event.set).start()
        return run_task(lease, ctx)

    def read_json(self, path: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.blobs[self.outputs[path]].read_text())
        return data


@pytest.fixture(scope="module")
def first_round(tmp_path_factory: pytest.TempPathFactory) -> Job:
    """A job of 2 workers whose init and round-1 train tasks ran (in one reused child)."""
    require(None if importlib.util.find_spec("torch") else "torch is not installed")
    job = Job(tmp_path_factory.mktemp("train"), SPEC, workers=2, inner_steps=3, rounds=2,
              batch_size=4, inner_lr=0.05)
    job.init = job.run(0)
    job.first = [job.run(1), job.run(2)]
    return job


def test_train_tasks_send_fp16_deltas_with_samples_and_cursor(first_round: Job) -> None:
    from parallel_pilot.kinds.train.diloco import load_safetensors

    job = first_round
    assert job.init["eval"]["loss"] > 0 and job.read_json(state_path(0))["cursors"] == {}
    assert [r["samples"] for r in job.first] == [12, 12] and len(job.first[0]["losses"]) == 3
    assert job.first[0]["cursor"] == {"epoch": 0, "batch": 3}
    assert not job.first[0]["resumed_optimizer"]
    delta, meta = load_safetensors(job.blobs[job.outputs[delta_path(0, 0)]])
    assert set(delta) == {"weight", "bias"} and meta["samples"] == "12"
    raw = job.blobs[job.outputs[delta_path(0, 0)]].read_bytes()
    assert b'"F16"' in raw  # sent in half precision
    assert any(f == 1.0 for f in job.contexts[1].progress_seen)


def test_aggregate_then_the_next_round_resumes_stream_and_optimizer(first_round: Job) -> None:
    job = first_round
    job.outputs = dict(job.outputs)  # the other test sees round 1 as it was
    agg = job.run(3)
    assert (agg["deltas_accepted"], agg["active_workers"], agg["shards_retrained"]) == (2, 2, 0)
    assert agg["eval"]["loss"] < job.init["eval"]["loss"]
    state = job.read_json(state_path(1))
    assert state["cursors"] == {"0": {"epoch": 0, "batch": 3}, "1": {"epoch": 0, "batch": 3}}
    assert model_path(1) in job.outputs and FINAL_MODEL not in job.outputs  # not the last
    # round 2: shard 0 resumes its stream where it stopped (24 rows / 4 = 6 batches, so
    # 3 more steps end the epoch) and the AdamW state this worker kept for it
    again = job.run(4)
    assert again["resumed_optimizer"] and again["cursor"] == {"epoch": 0, "batch": 6}


def test_a_refused_delta_leaves_its_shard_to_be_trained_again(first_round: Job,
                                                              tmp_path: Path) -> None:
    import torch

    from parallel_pilot.kinds.train.diloco import load_safetensors, save_safetensors

    job = first_round
    job.outputs = {p: s for p, s in job.outputs.items() if p.startswith("rounds/0000/")}
    delta, meta = load_safetensors(job.blobs[job.outputs[delta_path(0, 1)]])
    delta["weight"][0, 0] = float("nan")  # shard 1's delta arrives broken
    bad = tmp_path / "upload" / "x" / "bad.safetensors"
    bad.parent.mkdir(parents=True)
    save_safetensors(bad, delta, dtype=torch.float16, metadata=meta)
    store(job.blobs, bad, job.outputs, delta_path(0, 1), tmp_path / "blobs")
    agg = job.run(3)
    assert (agg["deltas_accepted"], agg["deltas_rejected"], agg["shards_retrained"]) == (1, 1, 1)
    assert "non-finite" in agg["rejected"]["1"]
    cursors = job.read_json(state_path(1))["cursors"]
    assert cursors == {"0": {"epoch": 0, "batch": 3}}  # shard 1 starts again where it was


def test_a_jobs_tasks_reuse_one_child_and_another_job_gets_its_own(first_round: Job,
                                                                   tmp_path: Path) -> None:
    job = first_round
    pids = {job.init["child_pid"], *(r["child_pid"] for r in job.first)}
    assert len(pids) == 1  # init and both train tasks ran in one warm child
    other = Job(tmp_path, SPEC, job_id=8, workers=1, rounds=1)
    assert other.run(0)["child_pid"] not in pids


def test_a_killed_warm_child_is_replaced(tmp_path: Path) -> None:
    import os
    import signal

    require(None if importlib.util.find_spec("torch") else "torch is not installed")
    job = Job(tmp_path, SPEC, job_id=9, workers=1, inner_steps=2, rounds=1, batch_size=4)
    first = job.run(0)["child_pid"]
    os.kill(first, signal.SIGKILL)  # dies while idle, between two tasks of the job
    _wait_dead(first)
    second = job.run(1)
    assert second["child_pid"] != first and second["samples"] == 8
    assert job.run(2)["child_pid"] == second["child_pid"]  # the new one is reused in turn


def _wait_dead(pid: int) -> None:
    """Until the killed child (of this process) can be reaped: SIGKILL is delivered, and its
    threads end, asynchronously. WNOWAIT leaves the reaping to its Popen."""
    import os
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return
        time.sleep(0.02)


def test_a_stop_kills_the_warm_child_at_once(tmp_path: Path) -> None:
    import os
    import time

    from parallel_pilot.kinds.train.tasks import TrainStepFailed

    require(None if importlib.util.find_spec("torch") else "torch is not installed")
    slow = SPEC.replace("x, y = batch", "x, y = batch\n        __import__('time').sleep(60)")
    job = Job(tmp_path, slow, job_id=10, workers=1, inner_steps=2, rounds=1)
    pid = job.run(0)["child_pid"]
    started = time.monotonic()
    with pytest.raises(TrainStepFailed, match="stopped"):
        job.run(1, stop_after=1.0)
    assert time.monotonic() - started < 15
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped, not left running the 60 s step
    assert job.run(0)["child_pid"] != pid  # the job's next task gets a fresh child


def test_a_spec_without_compute_loss_fails_without_retry(tmp_path: Path) -> None:
    broken = "def build_model():\n    return None\n"
    job = Job(tmp_path, broken, workers=1, rounds=1)
    with pytest.raises(TrainSpecError, match="compute_loss"):
        job.run(0)


def test_init_runs_inside_the_sandbox_when_the_worker_sandboxes(tmp_path: Path) -> None:
    from parallel_pilot.kinds.sandbox import sandbox_unavailable_reason

    require(sandbox_unavailable_reason())
    escape = tmp_path / "escaped.txt"  # outside the task's working directory
    job = Job(tmp_path, SPEC + textwrap.indent(textwrap.dedent(f"""
        try:
            open({str(escape)!r}, "w").write("out")
        except OSError:
            pass
    """), "    "), workers=1, rounds=1)
    job.sandboxed = True
    result = job.run(0)
    assert result["parameters"] == 4 and model_path(0) in job.outputs
    assert not escape.exists()


def test_sandboxed_tasks_of_a_job_share_one_warm_child_and_stay_confined(
        tmp_path: Path) -> None:
    from parallel_pilot.kinds.sandbox import sandbox_unavailable_reason

    require(sandbox_unavailable_reason())
    escape = tmp_path / "escaped.txt"  # outside the child's directory
    returned = '''        return {"loss": float(((model(x) - (-0.5)) ** 2).mean())}'''
    assert returned in SPEC
    counted = SPEC.replace(returned, f'''
        import builtins
        builtins.evals = getattr(builtins, "evals", 0) + 1  # lives as long as the process
        try:
            open({str(escape)!r}, "w").write("out")
        except OSError:
            pass
        return {{"loss": float(((model(x) - (-0.5)) ** 2).mean()), "evals": builtins.evals}}''')
    job = Job(tmp_path, counted, job_id=11, workers=1, inner_steps=2, rounds=1, batch_size=4)
    job.sandboxed = True
    assert job.run(0)["eval"]["evals"] == 1
    assert job.run(1)["samples"] == 8  # a new task folder, seen by the same sandboxed child
    assert job.run(2)["eval"]["evals"] == 2  # the init's child evaluated again
    assert not escape.exists()
