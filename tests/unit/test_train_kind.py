"""The ``train`` kind on the coordinator side (no torch): parameters, the plan of rounds
with quorum aggregates and shard affinity, metrics.csv, and the CLI's round lines."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest

from parallel_pilot.client.cli.train import format_row, round_row
from parallel_pilot.core.protocol import TaskInfo
from parallel_pilot.core.states import TaskState
from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import FinishedTask, parse_params
from parallel_pilot.kinds.train.kind import metrics_csv, metrics_rows
from parallel_pilot.kinds.train.params import TrainParams, delta_path, model_path
from parallel_pilot.kinds.train.tasks import _kept_round, _thin, prune_kept_states
from tests.unit.test_client_cli import fake, run  # noqa: F401 - the CLI fixtures

SHA = "a" * 64
DATA = "b" * 64


def params(**extra: object) -> TrainParams:
    parsed = parse_params(get_kind("train"), {"spec": SHA, **extra})
    assert isinstance(parsed, TrainParams)
    return parsed


def test_defaults_follow_opendiloco() -> None:
    p = params()
    assert (p.workers, p.inner_steps, p.round_count()) == (4, 50, 10)
    assert (p.inner_lr, p.outer_lr, p.outer_momentum, p.nesterov) == (4e-4, 0.7, 0.9, True)
    assert p.round_quorum() == 2


@pytest.mark.parametrize(("extra", "message"), [
    ({"rounds": 3, "total_steps": 100}, "rounds or total_steps, not both"),
    ({"workers": 2, "quorum": 3}, "quorum 3 is more than the 2 workers"),
    ({"spec_file": "../x.py"}, "spec_file"),
    ({"spec_file": "data.csv"}, "plain Python file name"),
    ({"files": {"../etc/passwd": DATA}}, "relative path"),
    ({"files": {"spec.py": DATA}}, "named like the spec"),
    ({"workers": 0}, "workers"),
    ({"outer_momentum": 1.0}, "outer_momentum"),
    ({"spec": "nope"}, "spec"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_parameters_are_refused_with_a_reason(extra: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        params(**extra)


def test_total_steps_sets_the_rounds() -> None:
    assert params(workers=4, inner_steps=50, total_steps=1000).round_count() == 5
    assert params(workers=4, inner_steps=50, total_steps=1001).round_count() == 6
    assert params(workers=4, inner_steps=50, total_steps=10).round_count() == 1


def test_plan_has_init_then_rounds_of_shards_and_a_quorum_aggregate() -> None:
    p = params(workers=3, rounds=2, quorum=2, round_deadline_seconds=30,
               files={"data.csv": DATA})
    specs = get_kind("train").plan(p)
    assert [s.name for s in specs] == [
        "init", "round 1 shard 0", "round 1 shard 1", "round 1 shard 2", "round 1 aggregate",
        "round 2 shard 0", "round 2 shard 1", "round 2 shard 2", "round 2 aggregate"]
    assert specs[0].depends_on == [] and specs[0].payload["step"] == "init"
    assert all(s.depends_on == [0] for s in specs[1:4])
    assert specs[4].depends_on == [1, 2, 3]
    assert (specs[4].quorum, specs[4].deadline_seconds) == (2, 30)
    assert all(s.depends_on == [4] for s in specs[5:8])
    assert specs[8].depends_on == [5, 6, 7]
    # the last round has no next one to retrain a late shard in: it waits for every shard
    assert (specs[8].quorum, specs[8].deadline_seconds) == (None, None)
    assert [s.affinity for s in specs[5:8]] == ["shard-0", "shard-1", "shard-2"]
    assert [s.payload.get("last") for s in (specs[4], specs[8])] == [False, True]
    assert all(s.inputs == {"spec.py": SHA, "data.csv": DATA} for s in specs)
    config = specs[1].payload["config"]
    assert config["workers"] == 3 and config["spec_file"] == "spec.py"
    assert "spec" not in config  # the blob travels as an input, not in the payload


def test_output_paths_sort_by_round_and_shard() -> None:
    assert model_path(0) == "rounds/0000/model.safetensors"
    assert delta_path(12, 3) == "rounds/0012/deltas/shard-0003.safetensors"


def finished(index: int, payload: dict, result: dict) -> FinishedTask:
    return FinishedTask(index=index, name="t", payload=payload, result=result)


def test_metrics_csv_has_a_row_per_round_with_eval_metrics() -> None:
    tasks = [
        finished(0, {"step": "init"}, {"eval": {"loss": 2.0, "accuracy": 0.1}}),
        finished(1, {"step": "train", "round": 0}, {"loss": 9.0}),
        finished(3, {"step": "aggregate", "round": 1},
                 {"train_loss": 0.9, "eval": {"loss": 1.0, "accuracy": 0.7},
                  "deltas_accepted": 1, "deltas_rejected": 1, "active_workers": 2,
                  "samples": 64, "bytes_received": 10, "shards_retrained": 1}),
        finished(2, {"step": "aggregate", "round": 0},
                 {"train_loss": 1.5, "eval": {"loss": 1.2, "accuracy": 0.5},
                  "deltas_accepted": 2, "deltas_rejected": 0, "active_workers": 2,
                  "samples": 128, "bytes_received": 20, "shards_retrained": 0}),
    ]
    rows = list(csv.DictReader(io.StringIO(metrics_csv(metrics_rows(tasks)).decode())))
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert list(rows[0]) == ["round", "train_loss", "eval_loss", "eval_accuracy",
                             "deltas_accepted", "deltas_rejected", "active_workers", "samples",
                             "bytes_received", "shards_retrained"]
    assert rows[0]["train_loss"] == "" and rows[0]["eval_loss"] == "2.0"
    assert (rows[2]["eval_loss"], rows[2]["shards_retrained"]) == ("1.0", "1")


def test_round_line_names_round_losses_metric_and_workers() -> None:
    task = TaskInfo(id=5, job_id=1, index=4, name="round 2 aggregate", kind="train",
                    state=TaskState.DONE, attempt=1, failures=0, worker=None, progress=1.0,
                    message=None, error=None, started_at=None, finished_at=None,
                    result={"step": "aggregate", "round": 1, "train_loss": 0.5,
                            "eval": {"loss": 0.25, "accuracy": 0.875},
                            "active_workers": 3, "deltas_accepted": 2})
    row = round_row(task)
    assert row is not None
    line = format_row(row, total_rounds=5, workers=4)
    assert line == ("round 2/5  train loss 0.5000  eval loss 0.2500  accuracy 0.875  "
                    "workers 3/4  accepted 2")
    assert round_row(task.model_copy(update={"state": TaskState.LEASED})) is None


def test_loss_curve_is_thinned_keeping_the_last_point() -> None:
    curve = [float(i) for i in range(1000)]
    thin = _thin(curve, 200)
    assert len(thin) == 200 and thin[0] == 0.0 and thin[-1] == 999.0
    assert _thin([1.0, 2.0], 200) == [1.0, 2.0]


def test_kept_optimizer_state_is_resumed_only_by_a_later_round(tmp_path: Path) -> None:
    kept = tmp_path / "shard-0000.safetensors"
    assert _kept_round(kept) > 10**9  # no record: never resumed
    kept.with_suffix(".json").write_text('{"round": 3}')
    assert _kept_round(kept) == 3  # resumed by round 4 on, not by a retry of round 3


def test_pilot_train_refuses_bad_command_lines_before_any_request(
    fake, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("train", "nope.py")
    assert result.exit_code == 2 and result.stderr.strip() == "error: no such file: nope.py"
    Path("spec.py").write_text("def build_model(): ...\n")
    result = run("train", "spec.py", "--rounds", "2", "--total-steps", "10")
    assert result.exit_code == 2 and "give --rounds or --total-steps, not both" in result.stderr
    result = run("train", "spec.py", "--file", "missing.csv")
    assert result.exit_code == 2 and "no such file: missing.csv" in result.stderr
    assert fake.requests == []


def test_kept_states_of_jobs_idle_for_a_week_are_removed(tmp_path: Path) -> None:
    old, recent = tmp_path / "job-1", tmp_path / "job-2"
    for job_dir in (old, recent):
        job_dir.mkdir()
        (job_dir / "shard-0000.safetensors").write_bytes(b"x")
    now = 2_000_000_000.0
    os.utime(old / "shard-0000.safetensors", (now - 8 * 86400, now - 8 * 86400))
    os.utime(recent / "shard-0000.safetensors", (now - 86400, now - 86400))
    prune_kept_states(tmp_path, now)
    assert not old.exists() and recent.exists()
    prune_kept_states(tmp_path / "missing", now)  # no folder yet: nothing to do
