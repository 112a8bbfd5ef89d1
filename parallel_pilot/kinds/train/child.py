"""The child process of a ``train`` task: the only place the user's code and torch run.

``python -m parallel_pilot.kinds.train.child request.json`` reads what the worker prepared
in the task's working directory (the spec, the weights, the deltas), does one step —
``init`` (build and evaluate θ0), ``train`` (H AdamW steps on a shard, Δ in fp16) or
``aggregate`` (check, average, outer Nesterov step, evaluate) — writes its files and
``result.json`` next to the request, and prints ``PILOT_PROGRESS fraction message`` lines.
Exit code 2: the user's spec is at fault (retrying elsewhere cannot help).

``child.py --serve ROOT`` is the same child reused across a job's tasks (``kinds/warm.py``):
it reads task folder names (under ``ROOT/tasks``, each holding a ``request.json``) from
stdin and ends each task with a ``DONE_MARKER name status`` line, so torch is imported and
the spec loaded once per job on a worker slot, not once per task.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from parallel_pilot.kinds import warm_child
from parallel_pilot.kinds.train.spec import TrainSpec, TrainSpecError, load_spec

PROGRESS_PREFIX = "PILOT_PROGRESS"
EXIT_SPEC_ERROR = 2  # the spec (user code) is wrong: not retryable
EXIT_ERROR = 1
PROGRESS_EVERY = 0.5  # seconds between progress lines at most
TASKS_DIR = "tasks"  # a reused child's task folders, under its own directory
REQUEST_FILE = "request.json"  # in a task folder: what the worker asks of the child
DONE_MARKER = "\x1ePILOT-TRAIN-DONE"  # ends a task's output: "<marker> <task folder> <status>"

_specs: dict[tuple[str, str], TrainSpec] = {}  # (path, sha256 of the file) -> loaded spec


def spec_of(request: dict[str, Any]) -> TrainSpec:
    """The request's spec, imported once per process (a reused child serves one job; a
    changed file is imported again)."""
    path = Path(request["spec"])
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return load_spec(path)  # it says what is missing
    key = (str(path), digest)
    if key not in _specs:
        _specs[key] = load_spec(path)
    return _specs[key]


def progress(fraction: float, message: str) -> None:
    print(f"{PROGRESS_PREFIX} {fraction:.4f} {message}", flush=True)


def _safetensors_meta(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _finite_metrics(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise TrainSpecError(f"evaluate must return a dict of floats, got {type(raw).__name__}")
    out: dict[str, float] = {}
    for name, value in raw.items():
        number = float(value)
        out[str(name)] = number if math.isfinite(number) else float("nan")
    return out


def run_init(request: dict[str, Any], out: Path) -> dict[str, Any]:
    spec = spec_of(request)  # first: a broken spec fails before torch loads
    import torch

    from parallel_pilot.kinds.train.diloco import model_tensors, save_safetensors

    torch.manual_seed(int(request["config"]["seed"]))
    model = spec.build_model()
    size = save_safetensors(out / "model.safetensors", model_tensors(model))
    result: dict[str, Any] = {"model_bytes": size,
                              "parameters": sum(p.numel() for p in model.parameters())}
    if spec.evaluate is not None:
        model.eval()
        with torch.no_grad():
            result["eval"] = _finite_metrics(spec.evaluate(model))
    return result


def run_train(request: dict[str, Any], out: Path) -> dict[str, Any]:
    import torch

    from parallel_pilot.kinds.train.diloco import (
        InnerConfig,
        inner_train,
        load_safetensors,
        load_tensors_into,
        save_safetensors,
    )
    from parallel_pilot.kinds.train.optimizer_state import load_optimizer, save_optimizer

    config = request["config"]
    spec = spec_of(request)
    torch.manual_seed(int(config["seed"]))
    model = spec.build_model()
    weights, _ = load_safetensors(Path(request["model"]))
    load_tensors_into(model, weights)
    optimizer_state = None
    if request.get("optimizer"):
        optimizer_state = load_optimizer(Path(request["optimizer"]))
    steps = int(config["inner_steps"])
    last = [0.0]

    def on_step(step: int, loss: float) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY or step == steps:
            last[0] = now
            progress(step / steps, f"step {step}/{steps} loss {loss:.4f}")

    inner = InnerConfig(lr=config["inner_lr"], weight_decay=config["weight_decay"],
                        beta1=config["beta1"], beta2=config["beta2"],
                        grad_clip=config["grad_clip"])
    result = inner_train(
        spec, model, shard=int(request["shard"]), num_shards=int(config["workers"]),
        batch_size=int(config["batch_size"]), seed=int(config["seed"]),
        cursor=request.get("cursor"), steps=steps, config=inner,
        optimizer_state=optimizer_state, on_step=on_step)
    if not result.losses:
        raise RuntimeError("no inner step was taken")
    meta = {"shard": str(request["shard"]), "round": str(request["round"]),
            "samples": str(result.samples), "cursor": _safetensors_meta(result.cursor),
            "losses": _safetensors_meta([round(v, 6) for v in result.losses])}
    size = save_safetensors(out / "delta.safetensors", result.delta, dtype=torch.float16,
                            metadata=meta)
    save_optimizer(out / "optimizer.safetensors", result.optimizer_state)
    return {"samples": result.samples, "losses": result.losses, "cursor": result.cursor,
            "delta_bytes": size}


def run_aggregate(request: dict[str, Any], out: Path) -> dict[str, Any]:
    import torch

    from parallel_pilot.kinds.train.diloco import (
        OuterConfig,
        average_deltas,
        check_delta,
        load_safetensors,
        load_tensors_into,
        outer_step,
        save_safetensors,
    )

    config = request["config"]
    params, _ = load_safetensors(Path(request["model"]))
    momentum = None
    if request.get("momentum"):
        momentum, _ = load_safetensors(Path(request["momentum"]))
    cursors: dict[str, Any] = dict(request.get("cursors") or {})
    accepted: list[dict[str, Any]] = []
    rejected: dict[str, str] = {}
    for entry in request["deltas"]:
        delta, meta = load_safetensors(Path(entry["path"]))
        shard = str(entry["shard"])
        reason = check_delta(delta, params, max_relative_norm=float(config["max_delta_norm"]))
        samples = int(meta.get("samples", "0") or 0)
        if reason is None and samples <= 0:
            reason = "the delta reports no samples"
        if reason is not None:
            rejected[shard] = reason
            continue
        losses = json.loads(meta.get("losses", "[]"))
        accepted.append({"shard": shard, "delta": delta, "samples": samples,
                         "loss": sum(losses) / len(losses) if losses else None})
        cursors[shard] = json.loads(meta["cursor"])  # the shard moves on only if accepted
    progress(0.3, f"{len(accepted)} delta(s) accepted, {len(rejected)} rejected")
    result: dict[str, Any] = {"accepted": [a["shard"] for a in accepted], "rejected": rejected,
                              "cursors": cursors}
    if accepted:
        weights = [float(a["samples"]) for a in accepted]
        average = average_deltas([a["delta"] for a in accepted], weights)
        outer = OuterConfig(lr=config["outer_lr"], momentum=config["outer_momentum"],
                            nesterov=config["nesterov"])
        params, momentum = outer_step(params, average, momentum, outer)
        losses = [(a["loss"], a["samples"]) for a in accepted if a["loss"] is not None]
        if losses:
            result["train_loss"] = sum(v * n for v, n in losses) / sum(n for _, n in losses)
        result["samples"] = int(sum(weights))
    else:
        result["samples"] = 0  # nothing usable: the weights stay, every shard is retrained
    save_safetensors(out / "model.safetensors", params)
    if momentum is not None:
        save_safetensors(out / "momentum.safetensors", momentum)
    spec = spec_of(request)
    if spec.evaluate is not None:
        progress(0.6, "evaluating")
        torch.manual_seed(int(config["seed"]))
        model = spec.build_model()
        load_tensors_into(model, params)
        model.eval()
        with torch.no_grad():
            result["eval"] = _finite_metrics(spec.evaluate(model))
    return result


STEPS = {"init": run_init, "train": run_train, "aggregate": run_aggregate}


def run_request(request_path: Path) -> int:
    """Do the step ``request_path`` asks for; its exit status."""
    request = json.loads(request_path.read_text())
    out = request_path.parent
    try:
        result = STEPS[request["step"]](request, out)
    except Exception as exc:
        traceback.print_exc()
        spec_error = isinstance(exc, TrainSpecError)  # its message says what is wrong
        (out / "error.txt").write_text(str(exc) if spec_error else f"{type(exc).__name__}: {exc}")
        return EXIT_SPEC_ERROR if spec_error else EXIT_ERROR
    # the pid shows which tasks one reused child ran (inside bwrap: its PID namespace's)
    result["child_pid"] = os.getpid()
    (out / "result.json").write_text(json.dumps(result))
    return 0


def serve(root: Path, worker_pid: int | None = None) -> int:
    """Run the task folders named on stdin (``kinds/warm_child.py``), each holding a
    ``request.json``."""
    return warm_child.serve(root, lambda task_dir: run_request(task_dir / REQUEST_FILE),
                            tasks_dir=TASKS_DIR, done_marker=DONE_MARKER,
                            worker_pid=worker_pid)


def main(argv: list[str]) -> int:
    serving = warm_child.serve_args(argv)
    if serving is not None:
        return serve(*serving)
    return run_request(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
