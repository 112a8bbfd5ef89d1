"""``train``: DiLoCo training of the user's PyTorch model across workers, in rounds.

The plan (static, made at submit; coordinator side, no torch):

- task 0, ``init``: builds the model with the job's seed, evaluates it, and stores the
  round-0 state (``rounds/0000/model.safetensors`` and ``state.json``);
- each round *r*: *k* ``train`` tasks (shard *i* of *k*, affinity ``shard-i``), each depending
  on the previous round's aggregate (or the init), and one ``aggregate`` task depending on
  the *k* with a quorum: it runs when all *k* deltas are in, or when ``quorum`` of them are
  and the round deadline passed (coordinator/services/quorum.py). The train tasks it went
  ahead without are cancelled; their shards keep their cursor and are trained again in the
  next round, so no data is skipped. The last round has no next one, so its aggregate
  waits for all *k* (a lost worker's task is retried elsewhere after its lease expires).
- the last aggregate also stores the final ``model.safetensors``; ``finalize`` writes
  ``metrics.csv`` from the aggregates' results.

Workers run the tasks in a child process (tasks.py, child.py).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel

from parallel_pilot.core.protocol import TaskLease
from parallel_pilot.kinds.base import FinishedTask, RunContext, TaskSpec
from parallel_pilot.kinds.train.params import METRICS_CSV, ROUNDS_PREFIX, TrainParams

INIT, TRAIN, AGGREGATE = "init", "train", "aggregate"
METRIC_COLUMNS = ("round", "train_loss", "eval_loss")  # then the other eval metrics, then:
COUNT_COLUMNS = ("deltas_accepted", "deltas_rejected", "active_workers", "samples",
                 "bytes_received", "shards_retrained")


def plan_rounds(params: TrainParams) -> list[TaskSpec]:
    """The init task, then per round k train tasks and one aggregate with a quorum."""
    k, rounds = params.workers, params.round_count()
    config = params.task_config()
    inputs = params.inputs()
    specs = [TaskSpec(name="init", inputs=inputs,
                      payload={"step": INIT, "config": config, "rounds": rounds})]
    previous = 0
    for r in range(rounds):
        first = len(specs)
        for shard in range(k):
            specs.append(TaskSpec(
                name=f"round {r + 1} shard {shard}", inputs=inputs, depends_on=[previous],
                affinity=f"shard-{shard}",
                payload={"step": TRAIN, "round": r, "shard": shard, "config": config}))
        last = r == rounds - 1
        specs.append(TaskSpec(
            name=f"round {r + 1} aggregate", inputs=inputs,
            depends_on=list(range(first, first + k)),
            # the last round has no next one to retrain a late shard in: it waits for all
            quorum=None if last else params.round_quorum(),
            deadline_seconds=None if last else params.round_deadline_seconds,
            payload={"step": AGGREGATE, "round": r, "last": last,
                     "config": config}))
        previous = len(specs) - 1
    return specs


def metrics_row(result: dict[str, Any]) -> dict[str, Any] | None:
    """A round's metrics from an init or aggregate task's result (round 0: the initial
    model); None for a train task's result. Shared by metrics.csv, pilot train and the
    dashboard."""
    step = result.get("step")
    if step not in (INIT, AGGREGATE):
        return None
    row: dict[str, Any] = {"round": 0 if step == INIT else int(result["round"]) + 1,
                           "train_loss": result.get("train_loss")}
    for name, value in (result.get("eval") or {}).items():
        row["eval_loss" if name == "loss" else f"eval_{name}"] = value
    for column in COUNT_COLUMNS:
        if column in result:
            row[column] = result[column]
    return row


def metrics_rows(tasks: list[FinishedTask]) -> list[dict[str, Any]]:
    """One row per round from the init and aggregate results, in round order."""
    rows = [row for task in tasks if (row := metrics_row(
        {**task.result, "step": task.payload.get("step"), "round": task.payload.get("round")}
    )) is not None]
    return sorted(rows, key=lambda r: r["round"])


def metrics_csv(rows: list[dict[str, Any]]) -> bytes:
    extra = sorted({c for r in rows for c in r} - set(METRIC_COLUMNS) - set(COUNT_COLUMNS))
    columns = [*METRIC_COLUMNS, *extra, *COUNT_COLUMNS]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    return out.getvalue().encode()


class TrainKind:
    name: ClassVar[str] = "train"
    params_model: ClassVar[type[BaseModel]] = TrainParams
    in_process: ClassVar[bool] = False
    # the rounds' weights, momentum, deltas and cursors are working state for the workers;
    # a user's listing (pilot download) shows the results: model.safetensors, metrics.csv
    internal_outputs: ClassVar[tuple[str, ...]] = (ROUNDS_PREFIX,)

    def input_blobs(self, params: BaseModel) -> dict[str, str]:
        assert isinstance(params, TrainParams)
        return params.inputs()

    def check_inputs(self, params: BaseModel,
                     read_prefix: Callable[[str, int], bytes]) -> BaseModel:
        return params

    def plan(self, params: BaseModel) -> list[TaskSpec]:
        assert isinstance(params, TrainParams)
        return plan_rounds(params)

    def run(self, task: TaskLease, ctx: RunContext) -> dict[str, Any]:
        from parallel_pilot.kinds.train.tasks import run_task

        return run_task(task, ctx)

    def finalize(self, params: BaseModel, tasks: list[FinishedTask]) -> dict[str, bytes]:
        return {METRICS_CSV: metrics_csv(metrics_rows(tasks))}
