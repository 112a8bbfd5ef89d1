"""The worker's side of a ``train`` task (no torch here): gather the files a step needs into
a task folder of a ``child.py --serve`` child process reused across the job's tasks on this
worker slot (``kinds/warm.py``; in bwrap when the worker sandboxes, which binds the child's
own directory once: the job's files and every task folder live under it), have it run the
step, stream its progress, and upload what it made.

- ``init``: uploads ``rounds/0000/model.safetensors`` and ``state.json`` (no cursors yet).
- ``train`` (round r, shard i): reads ``rounds/r/state.json`` for the shard's cursor and
  ``rounds/r/model.safetensors``; the AdamW state this worker kept for (job, shard), if
  any, goes in too; uploads Δ (fp16) as ``rounds/r/deltas/shard-i.safetensors`` and keeps
  the new AdamW state in its state folder (next to the blob cache).
- ``aggregate`` (round r): reads the round's model, momentum, state and the Δ of the train
  tasks that finished; uploads ``rounds/r+1/`` (model, momentum, state with the new
  cursors — a shard whose Δ did not arrive or was refused keeps its cursor, so it is
  trained again) and, after the last round, ``model.safetensors``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from parallel_pilot.core.protocol import TaskLease
from parallel_pilot.errors import InvalidInput, PilotError
from parallel_pilot.kinds.base import RunContext
from parallel_pilot.kinds.train.child import (
    DONE_MARKER,
    EXIT_SPEC_ERROR,
    PROGRESS_PREFIX,
    REQUEST_FILE,
    TASKS_DIR,
)
from parallel_pilot.kinds.train.params import (
    FINAL_MODEL,
    delta_path,
    deltas_dir,
    model_path,
    momentum_path,
    state_path,
)
from parallel_pilot.kinds.train.spec import TrainSpecError
from parallel_pilot.kinds.warm import ChildCommand, RunnerPool, WarmRunner

CHILD_MODULE = "parallel_pilot.kinds.train.child"
STATE_DIR_NAME = "train-state"  # next to the worker's blob cache: AdamW state per (job, shard)
KEPT_STATE_SECONDS = 7 * 24 * 3600.0  # a job's kept AdamW states untouched this long go
MAX_LOSSES_REPORTED = 200  # loss curve points kept in a train task's result
JOB_DIR = "job"  # in a child's directory: the job's spec and data files
IDLE_SECONDS = 120.0  # an idle child lives this long: a worker's tasks of a job are a round apart
MAX_IDLE = 4  # idle children (torch and a spec's data each) kept at most per worker process

COMMAND = ChildCommand(argv=(sys.executable, "-m", CHILD_MODULE), done_marker=DONE_MARKER,
                       tasks_dir=TASKS_DIR, prefix="pilot-train-",
                       env={"OMP_NUM_THREADS": "1"})  # one task per slot: no oversubscription
POOL = RunnerPool(COMMAND, idle_seconds=IDLE_SECONDS, max_idle=MAX_IDLE)


class TrainStepFailed(PilotError):
    """A step of a training job failed on the worker."""


def run_task(task: TaskLease, ctx: RunContext) -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("safetensors") is None:
        # not the job's fault: another worker may take it (this one is kept off the job
        # after a few such failures)
        raise TrainStepFailed("this worker allows train tasks but lacks torch or safetensors; "
                              "install the [train] extra (torch==2.13.0, safetensors)")
    runner = POOL.take(f"job-{task.job_id}", ctx.sandbox, ctx.workdir.parent, ctx.gpus)
    try:
        return _run_in(runner, task, ctx)
    finally:
        POOL.give_back(runner)  # closed (not reused) when it was stopped or died


def _run_in(runner: WarmRunner, task: TaskLease, ctx: RunContext) -> dict[str, Any]:
    payload = task.payload
    step = payload["step"]
    config = payload["config"]
    job_dir = runner.dir / JOB_DIR
    for name in task.inputs:  # the same for every task of the job: refreshed, not added to
        dest = (job_dir / name).resolve()
        if job_dir.resolve() not in dest.parents:
            raise InvalidInput(f"input {name!r} leaves the job's folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ctx.input_path(name), dest)
    request: dict[str, Any] = {"step": step, "config": config,
                               "spec": str(job_dir / config["spec_file"])}
    io_dir = runner.task_dir(f"{task.task_id}-{task.attempt}")
    try:
        if step == "train":
            return _train(runner, task, ctx, request, io_dir)
        if step == "aggregate":
            return _aggregate(runner, task, ctx, request, io_dir)
        return _init(runner, ctx, request, io_dir)
    finally:
        shutil.rmtree(io_dir, ignore_errors=True)


def _init(runner: WarmRunner, ctx: RunContext, request: dict[str, Any],
          io_dir: Path) -> dict[str, Any]:
    result = _run_child(runner, ctx, request, io_dir)
    ctx.upload_output(model_path(0), io_dir / "model.safetensors")
    _upload_json(ctx, io_dir, state_path(0), {"round": 0, "cursors": {},
                                               "eval": result.get("eval")})
    return {"step": "init", **result}


def _train(runner: WarmRunner, task: TaskLease, ctx: RunContext,
           request: dict[str, Any], io_dir: Path) -> dict[str, Any]:
    payload = task.payload
    r, shard = int(payload["round"]), int(payload["shard"])
    state = _read_json(ctx, state_path(r))
    request.update(round=r, shard=shard, cursor=state.get("cursors", {}).get(str(shard)),
                   model=str(_fetch_output(ctx, model_path(r), io_dir / "theta.safetensors")))
    kept = _optimizer_file(ctx, task.job_id, shard)
    if kept is not None:
        prune_kept_states(kept.parent.parent, time.time())
    if kept is not None and kept.is_file() and _kept_round(kept) < r:
        shutil.copyfile(kept, io_dir / "optimizer-in.safetensors")
        request["optimizer"] = str(io_dir / "optimizer-in.safetensors")
        ctx.log(f"resuming the AdamW state kept for shard {shard}")
    result = _run_child(runner, ctx, request, io_dir)
    sha = ctx.upload_output(delta_path(r, shard), io_dir / "delta.safetensors")
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        partial = kept.with_name(f".{kept.name}.{os.getpid()}")
        shutil.copyfile(io_dir / "optimizer.safetensors", partial)
        os.replace(partial, kept)
        kept.with_suffix(".json").write_text(json.dumps({"round": r}))
    losses: list[float] = result["losses"]
    return {"step": "train", "round": r, "shard": shard, "samples": result["samples"],
            "loss": sum(losses) / len(losses), "losses": _thin(losses, MAX_LOSSES_REPORTED),
            "cursor": result["cursor"], "delta": sha, "delta_bytes": result["delta_bytes"],
            "resumed_optimizer": "optimizer" in request, "child_pid": result["child_pid"]}


def _aggregate(runner: WarmRunner, task: TaskLease, ctx: RunContext,
               request: dict[str, Any], io_dir: Path) -> dict[str, Any]:
    payload = task.payload
    r = int(payload["round"])
    config = payload["config"]
    state = _read_json(ctx, state_path(r))
    listing = ctx.job_outputs(round_prefix := deltas_dir(r))
    deltas = []
    received = 0
    for path, sha in sorted(listing.items()):
        shard = int(path[len(round_prefix):].removeprefix("shard-").split(".")[0])
        local = io_dir / f"delta-{shard:04d}.safetensors"
        shutil.copyfile(ctx.fetch_blob(sha), local)
        received += local.stat().st_size
        deltas.append({"shard": shard, "path": str(local)})
    request.update(round=r, cursors=state.get("cursors", {}), deltas=deltas,
                   model=str(_fetch_output(ctx, model_path(r), io_dir / "theta.safetensors")))
    momentum = ctx.job_outputs(momentum_path(r)).get(momentum_path(r))
    if momentum is not None:
        shutil.copyfile(ctx.fetch_blob(momentum), io_dir / "momentum-in.safetensors")
        request["momentum"] = str(io_dir / "momentum-in.safetensors")
    ctx.log(f"round {r + 1}: {len(deltas)} of {config['workers']} deltas arrived")
    result = _run_child(runner, ctx, request, io_dir)
    ctx.upload_output(model_path(r + 1), io_dir / "model.safetensors")
    if (io_dir / "momentum.safetensors").is_file():
        ctx.upload_output(momentum_path(r + 1), io_dir / "momentum.safetensors")
    summary = {
        "step": "aggregate", "round": r, "train_loss": result.get("train_loss"),
        "eval": result.get("eval"), "deltas_accepted": len(result["accepted"]),
        "deltas_rejected": len(result["rejected"]), "rejected": result["rejected"],
        "active_workers": len(deltas), "samples": result["samples"],
        "bytes_received": received,
        "shards_retrained": int(config["workers"]) - len(result["accepted"]),
    }
    _upload_json(ctx, io_dir, state_path(r + 1), {"round": r + 1, "cursors": result["cursors"],
                                                   **summary})
    if payload.get("last"):
        ctx.upload_output(FINAL_MODEL, io_dir / "model.safetensors")
    for shard, reason in result["rejected"].items():
        ctx.log(f"round {r + 1}: delta of shard {shard} refused: {reason}")
    return {**summary, "child_pid": result["child_pid"]}


# ---------------------------------------------------------------- helpers


def _run_child(runner: WarmRunner, ctx: RunContext, request: dict[str, Any],
               io_dir: Path) -> dict[str, Any]:
    (io_dir / REQUEST_FILE).write_text(json.dumps(request))

    def on_line(line: str) -> None:  # stdout, and stderr as "[stderr] ..."
        if line.startswith(PROGRESS_PREFIX + " "):
            _, fraction, *message = line.split(" ", 2)
            try:
                ctx.progress(float(fraction), message[0] if message else None)
            except ValueError:
                ctx.log(line)
        else:
            ctx.log(line)

    outcome = runner.run(io_dir.name, log=on_line, stop_event=ctx.stop_event,
                         timeout_seconds=None)
    if outcome.stopped:
        raise TrainStepFailed(f"{request['step']} stopped")  # the worker drops or hands it back
    result_file = io_dir / "result.json"
    if outcome.status != 0 or not result_file.is_file():
        error_file = io_dir / "error.txt"
        reason = error_file.read_text() if error_file.is_file() else (
            f"the child process ended (exit code {outcome.exited}): {outcome.stderr[-2000:]}")
        if outcome.status == EXIT_SPEC_ERROR:
            raise TrainSpecError(reason)
        raise TrainStepFailed(f"{request['step']} failed: {reason}")
    result: dict[str, Any] = json.loads(result_file.read_text())
    return result


def _fetch_output(ctx: RunContext, path: str, dest: Path) -> Path:
    sha = ctx.job_outputs(path).get(path)
    if sha is None:
        raise TrainStepFailed(f"the job has no {path} yet")
    shutil.copyfile(ctx.fetch_blob(sha), dest)  # a copy: the sandbox may not see the cache
    return dest


def _read_json(ctx: RunContext, path: str) -> dict[str, Any]:
    sha = ctx.job_outputs(path).get(path)
    if sha is None:
        raise TrainStepFailed(f"the job has no {path} yet")
    data: dict[str, Any] = json.loads(ctx.fetch_blob(sha).read_text())
    return data


def _upload_json(ctx: RunContext, io_dir: Path, path: str, data: dict[str, Any]) -> None:
    local = io_dir / Path(path).name
    local.write_text(json.dumps(data, indent=1, sort_keys=True))
    ctx.upload_output(path, local)


def _optimizer_file(ctx: RunContext, job_id: int, shard: int) -> Path | None:
    """Where this worker keeps the AdamW state of (job, shard), or None when it has no
    blob cache to keep it next to (a test's fake context)."""
    cache = getattr(ctx, "cache", None)
    root = getattr(cache, "root", None)
    if root is None:
        return None
    return Path(root).parent / STATE_DIR_NAME / f"job-{job_id}" / f"shard-{shard:04d}.safetensors"


def prune_kept_states(root: Path, now: float, max_age: float = KEPT_STATE_SECONDS) -> None:
    """Remove the kept AdamW states of jobs this worker has not trained for ``max_age``
    seconds (the worker is not told when a job ends)."""
    if not root.is_dir():
        return
    for job_dir in root.glob("job-*"):
        try:
            newest = max((f.stat().st_mtime for f in job_dir.iterdir()),
                         default=job_dir.stat().st_mtime)
            if now - newest > max_age:
                shutil.rmtree(job_dir, ignore_errors=True)
        except OSError:
            continue  # another task of this worker removed it first


def _kept_round(kept: Path) -> int:
    """The round whose training left the kept AdamW state (a state from this round or a
    later one, e.g. of an attempt whose report was lost, is not resumed)."""
    try:
        return int(json.loads(kept.with_suffix(".json").read_text())["round"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1 << 62


def _thin(values: list[float], limit: int) -> list[float]:
    """At most ``limit`` evenly spaced points of a curve, always with its last one."""
    if len(values) <= limit:
        return [round(v, 6) for v in values]
    stride = len(values) / limit
    picked = [values[int(i * stride)] for i in range(limit - 1)] + [values[-1]]
    return [round(v, 6) for v in picked]
