"""bench/farm.py at its quick size: the simulated farm drives the real coordinator to the
end of every job, no makespan beats the lower bound, every frame is rendered and credited
exactly once, and the churn really costs leases. The script runs as ``make bench-farm``
runs it (SQLite); PostgreSQL and MariaDB go through its ``measure`` with the suite's
fresh databases. A seed gives the same figures twice (the clock is simulated)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
QUICK_SECONDS = 300  # the quick run takes seconds; this is the most it may take here


def load_bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # farm.py imports its siblings
    spec = importlib.util.spec_from_file_location("pilot_bench_farm", BENCH / "farm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def check_run(run: dict[str, Any], frames: int) -> None:
    where = f"{run['scenario']} / {run['strategy']}"
    assert run["error"] is None, where
    assert run["job_state"] == "completed", where
    assert run["frames_once"], where
    assert run["makespan"] >= run["bound"] > 0, where
    assert run["ratio"] >= 1.0, where
    assert run["frames_rendered"] >= frames, where
    assert run["failed_tasks"] == 0, where
    if run["scenario"] == "churn":
        vanished = [w for w in run["workers"] if w["vanishes_at"] is not None]
        assert vanished and any(w["joins_at"] > 0 for w in run["workers"]), where
        assert run["lost_leases"] >= 1, where  # the reaper found the dead worker's lease
    else:
        assert run["lost_leases"] == 0, where
    # frames beyond the job's come from lost leases and from the losing attempts of backup
    # copies of stragglers; without either, every frame was rendered once
    assert 0 <= run["backups_won"] <= run["backups_made"], where
    if run["lost_leases"] == 0 and run["backups_made"] == 0:
        assert run["frames_rendered"] == frames, where


def test_quick_run_never_beats_the_bound_and_renders_each_frame_once() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, str(BENCH / "farm.py"), "--quick", "--json",
                           "--strategies", "static,coordinator,old-default"],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=QUICK_SECONDS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    runs = {(r["scenario"], r["strategy"]): r for r in result["runs"]}
    assert set(runs) == {(s, st) for s in ("steady", "churn")
                         for st in ("static", "coordinator", "old-default")}
    for run in runs.values():
        check_run(run, result["frames"])
    workers, frames = result["workers"], result["frames"]
    # the static split cuts one chunk per worker there at the submit
    assert runs["steady", "static"]["tasks"] == workers
    at_submit = sum(1 for w in runs["churn", "static"]["workers"] if w["joins_at"] == 0)
    assert runs["churn", "static"]["tasks"] == at_submit < workers
    # the tail of a fixed-chunk run gets backup copies of its stragglers, and some win
    assert runs["steady", "old-default"]["backups_won"] >= 1
    # the fixed chunks the coordinator gave before adaptive chunks
    assert runs["steady", "old-default"]["tasks"] == math.ceil(
        frames / result["default_chunk"])
    # adaptive by default: 24 spread frames first (a preview of the whole range within
    # the first frames), then ranges cut as they are leased (more tasks than planned)
    coordinator = runs["steady", "coordinator"]
    assert coordinator["tasks"] > 49
    part = math.ceil(frames / 24)
    assert len({(f - 1) // part for f in coordinator["first_frames"]}) == 10
    assert coordinator["preview_seconds"] < runs["steady", "old-default"]["preview_seconds"]
    for scenario in ("steady", "churn"):  # better than the old fixed chunks
        assert runs[scenario, "coordinator"]["ratio"] < runs[scenario, "old-default"]["ratio"]


@pytest.mark.parametrize("kind", [pytest.param("postgres", marks=pytest.mark.postgres),
                                  pytest.param("mariadb", marks=pytest.mark.mariadb)])
def test_quick_run_on_a_database_server(kind: str, fresh_database: Callable[[str], str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    farm = load_bench(monkeypatch)
    result = farm.measure(frames=120, workers=10, strategies=[farm.STRATEGIES["coordinator"]],  # type: ignore[attr-defined]
                          new_database=lambda name: fresh_database(kind), database=kind)
    assert len(result["runs"]) == 2
    for run in result["runs"]:
        check_run(run, 120)


def test_a_seed_gives_the_same_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       ) -> None:
    farm = load_bench(monkeypatch)
    figures = []
    for _ in range(2):
        result = farm.measure(frames=60, workers=5, seed=7,  # type: ignore[attr-defined]
                              strategies=[farm.STRATEGIES["coordinator"]],  # type: ignore[attr-defined]
                              scenarios=("churn",))
        [run] = result["runs"]
        check_run(run, 60)
        figures.append({k: run[k] for k in ("makespan", "bound", "tasks", "lost_leases",
                                             "frames_rendered", "first_frames", "syncs",
                                             "backups_made", "backups_won")})
    assert figures[0] == figures[1]
