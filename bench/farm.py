"""Farm benchmark: how close the coordinator's scheduling comes to the best possible
makespan of a render on a mixed, unreliable farm.

A simulated farm drives the real coordinator (``bench/_farm_sim.py``: its services over a
real database, a clock the simulation moves, simulated workers running the worker's own
state machine and the real exchange; no Blender). One render job of ``--frames`` frames
on ``--workers`` machines whose seconds per frame differ by up to 4x (seeded: the fastest
takes ``FASTEST_FRAME_SECONDS``, the slowest four times that, the rest between); frames
differ in cost along the shot (0.75..1.25). Every task costs ``--startup`` seconds before
its first frame (Blender starting, the scene loading). Scenarios:
  * ``steady``: every worker there from the start to the end;
  * ``churn``: 10 % of the workers vanish mid-job (killed: their leases expire and the
    reaper requeues what they held) and another 10 % join late.
Strategies (``STRATEGIES``; one row each, every scenario):
  * ``static``: one chunk per worker there at the submit (what the first prototype did);
  * ``coordinator``: the job says nothing about chunks: whatever the coordinator does by
    default (adaptive chunks: spread frames first, then ranges cut at lease time to take
    ``chunk_seconds`` on their worker, shrinking toward the end; docs/architecture.md);
  * ``adaptive-120``: the same with ``chunk_seconds`` 120 (the issue's example);
  * ``old-default``: fixed chunks of the render kind's ``default_chunk`` (what the
    coordinator did before adaptive chunks);
  * ``fixed N``: chunks of N frames in id order, one row per N in ``--chunk``.
The makespan runs from the submit to the last chunk done (every frame rendered; the
assembly into a video comes after and is not counted). The bound is the fluid lower bound:
the time by which the farm's speed, summed over the workers present at each moment, covers
the total work (``--frames`` x mean cost, in each worker's seconds per frame; start-up is
not work, it is what cutting a job into more tasks costs); with every
worker present throughout it is total work / total speed. The ratio makespan / bound is
what the issue's targets speak of (within 5 % steady, 10 % under churn). Each figure comes
from the coordinator's own records (task finish times, states, the job's outputs), and
each run checks that every frame was rendered and credited exactly once. Also shown: when
a preview of the whole animation exists (a frame in each 1/24th of the range).

The clock is simulated, so a seed gives the same figures on any machine and in every run;
only the real seconds (last column) depend on the machine.

    python bench/farm.py [--frames 1200] [--workers 30] [--seed 1] [--chunk 4,25]
                         [--strategies static,coordinator,fixed] [--scenarios steady,churn]
                         [--startup 10] [--heartbeat 20] [--database sqlite|postgresql]
                         [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _farm_sim import FarmJob, RunResult, Simulation, WorkerSpec
from _servers import postgres_databases, postgres_unavailable

from parallel_pilot.kinds.render.kind import default_chunk

FRAMES = 1200  # frames of the render job
WORKERS = 30  # simulated machines
SEED = 1  # seeds the farm's speeds, the frames' costs and the churn
FASTEST_FRAME_SECONDS = 20.0  # seconds a frame of cost 1.0 takes on the fastest machine
SPEED_SPREAD = 4.0  # the slowest machine takes this many times as long
FRAME_COST_WAVE = 0.15  # frames cost 1 +- this along the shot (a slow wave) ...
FRAME_COST_NOISE = 0.10  # ... +- this at random per frame
FRAME_COST_PERIOD = 400  # frames per period of the wave
STARTUP_SECONDS = 10.0  # seconds a task takes before its first frame (Blender, the scene)
ASSEMBLE_SECONDS = 30.0  # seconds the assembly task takes (after the makespan)
CHURN_FRACTION = 0.10  # of the workers vanish mid-job, and as many others join late
VANISH_WINDOW = (0.2, 0.7)  # vanish between these fractions of the steady bound
JOIN_WINDOW = (0.1, 0.5)  # late workers join between these fractions of the steady bound
CHUNKS = (4, 25)  # the fixed chunk sizes compared besides the old default
PREVIEW_PARTS = 24  # the preview: a frame rendered in each 1/24th of the range (see below)
LIMIT_FACTOR = 20.0  # a run is given up after this many times its bound (simulated)
TARGETS = {"steady": 1.05, "churn": 1.10}  # the issue's makespan / bound targets
QUICK = {"frames": 240, "workers": 10, "chunks": ()}  # --quick: seconds, for the test
# The coordinator's settings for the bench are its defaults (leases of 60 s, the reaper
# every 2 s, long polls of 30 s) but for the heartbeat: workers sync every
# HEARTBEAT_SECONDS while they hold work rather than every 3 s, a seventh of the exchanges
# to simulate. What it changes: a dead worker's lease, renewed up to that long before it
# died, expires up to 17 s sooner after its death than with 3 s, and what follows shifts
# with it (seed 1, churn, old-default: 2,203 s here, 2,246 s with --heartbeat 3; steady
# runs come out the same).
HEARTBEAT_SECONDS = 20.0


# ---------------------------------------------------------------- strategies

@dataclass(frozen=True)
class Strategy:
    """One way to run the job: what the job asks for and how the coordinator is set.

    ``params(frames, workers)`` gives the render job parameters (beyond the scene and the
    frames) for a job of ``frames`` frames submitted while ``workers`` workers are known;
    ``settings`` are ``CoordinatorSettings`` fields for the run. A strategy reaches the
    coordinator only through these, so a change to the coordinator's scheduling shows in
    every row, and a new scheduling mode is one more entry in ``STRATEGIES``."""

    name: str
    about: str
    params: Callable[[int, int], dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)


def _static(frames: int, workers: int) -> dict[str, Any]:
    return {"chunk": math.ceil(frames / max(1, workers))}


def fixed(size: int) -> Strategy:
    return Strategy(f"fixed {size}", f"chunks of {size} frames in id order",
                    lambda frames, workers: {"chunk": size})


STRATEGIES: dict[str, Strategy] = {
    "static": Strategy("static", "one chunk per worker at the submit (the first prototype)",
                       _static),
    "coordinator": Strategy("coordinator", "the job says nothing: the coordinator's default "
                            "(adaptive chunks of chunk_seconds, spread frames first)",
                            lambda frames, workers: {}),
    "adaptive-120": Strategy("adaptive-120", "the coordinator's adaptive chunks with "
                             "chunk_seconds 120 (the issue's example) instead of its default",
                             lambda frames, workers: {}, {"chunk_seconds": 120.0}),
    "old-default": Strategy("old-default", "fixed chunks of the render kind's default_chunk "
                            "(what the coordinator did before adaptive chunks)",
                            lambda frames, workers: {"chunk": default_chunk(frames)}),
}


def chosen_strategies(names: list[str], chunks: tuple[int, ...]) -> list[Strategy]:
    """The named strategies in order; ``fixed`` stands for one row per ``chunks`` size."""
    out: list[Strategy] = []
    for name in names:
        if name == "fixed":
            out.extend(fixed(size) for size in chunks)
        elif name in STRATEGIES:
            out.append(STRATEGIES[name])
        else:
            raise ValueError(f"unknown strategy {name!r}; known: "
                             f"{', '.join([*STRATEGIES, 'fixed'])}")
    return out


# ---------------------------------------------------------------- the farm

@dataclass(frozen=True)
class Farm:
    frames: list[int]
    cost: dict[int, float]
    machines: list[tuple[str, float]]  # (name, seconds per frame), in registration order


def make_farm(frames: int, workers: int, seed: int) -> Farm:
    rng = random.Random(seed)
    slowest = FASTEST_FRAME_SECONDS * SPEED_SPREAD
    speeds = [FASTEST_FRAME_SECONDS, slowest][:workers]
    speeds += [rng.uniform(FASTEST_FRAME_SECONDS, slowest) for _ in range(workers - len(speeds))]
    rng.shuffle(speeds)
    phase = rng.uniform(0, 2 * math.pi)
    numbers = list(range(1, frames + 1))
    cost = {f: 1.0 + FRAME_COST_WAVE * math.sin(2 * math.pi * f / FRAME_COST_PERIOD + phase)
            + rng.uniform(-FRAME_COST_NOISE, FRAME_COST_NOISE) for f in numbers}
    return Farm(numbers, cost, [(f"w{i + 1:02d}", round(s, 3)) for i, s in enumerate(speeds)])


def scenario_workers(farm: Farm, scenario: str, seed: int) -> list[WorkerSpec]:
    steady = [WorkerSpec(name, seconds) for name, seconds in farm.machines]
    if scenario == "steady":
        return steady
    if scenario != "churn":
        raise ValueError(f"unknown scenario {scenario!r}; known: steady, churn")
    rng = random.Random(f"churn {seed}")
    count = max(1, round(CHURN_FRACTION * len(steady)))
    if 2 * count >= len(steady):
        raise ValueError(f"churn needs more than {2 * count} workers")
    picked = rng.sample(range(len(steady)), 2 * count)
    vanish, late = set(picked[:count]), set(picked[count:])
    base = lower_bound(steady, sum(farm.cost.values()))
    out = []
    for i, w in enumerate(steady):
        if i in vanish:
            w = WorkerSpec(w.name, w.frame_seconds,
                           vanishes_at=round(rng.uniform(*VANISH_WINDOW) * base, 1))
        elif i in late:
            w = WorkerSpec(w.name, w.frame_seconds,
                           joins_at=round(rng.uniform(*JOIN_WINDOW) * base, 1))
        out.append(w)
    return out


def lower_bound(workers: list[WorkerSpec], work: float) -> float:
    """The first time the farm's capacity, integrated over the workers present, reaches
    ``work`` (frames of cost 1.0): no schedule can finish earlier."""
    cuts = sorted({0.0, *(w.joins_at for w in workers),
                   *(w.vanishes_at for w in workers if w.vanishes_at is not None)})
    done = 0.0
    for start, end in zip(cuts, [*cuts[1:], math.inf], strict=True):
        rate = sum(1.0 / w.frame_seconds for w in workers
                   if w.joins_at <= start and (w.vanishes_at is None or w.vanishes_at > start))
        if rate > 0 and done + rate * (end - start) >= work:
            return start + (work - done) / rate
        done += rate * (end - start)
    raise ValueError("no worker is left to do the work")


# ---------------------------------------------------------------- measuring

def preview_seconds(rendered_at: list[tuple[float, int]], frames: list[int],
                    parts: int = PREVIEW_PARTS) -> float | None:
    """When the frames rendered so far first hold one in each of ``parts`` equal parts of
    the range: a preview of the whole animation (None: never)."""
    size = math.ceil(len(frames) / parts)
    part = {f: i // size for i, f in enumerate(frames)}
    covered: set[int] = set()
    for when, frame in sorted(rendered_at):
        covered.add(part[frame])
        if len(covered) == len(set(part.values())):
            return when
    return None


def run_one(farm: Farm, scenario: str, strategy: Strategy, seed: int, startup: float,
            database_url: str, data_dir: Path, heartbeat: float = HEARTBEAT_SECONDS,
            ) -> dict[str, Any]:
    workers = scenario_workers(farm, scenario, seed)
    bound = lower_bound(workers, sum(farm.cost.values()))
    at_submit = sum(1 for w in workers if w.joins_at == 0)
    params = strategy.params(len(farm.frames), at_submit)
    job = FarmJob(frames=farm.frames, cost=farm.cost, params=params,
                  startup_seconds=startup, assemble_seconds=ASSEMBLE_SECONDS)
    sim = Simulation(database_url, data_dir, job, workers,
                     {"heartbeat_seconds": heartbeat, **strategy.settings})
    result: RunResult = asyncio.run(sim.run(LIMIT_FACTOR * bound))
    frames = farm.frames
    once = (all(result.frames_credited[f] == 1 for f in frames)
            and sum(result.frames_credited.values()) == len(frames)
            and all(result.frames_listed[f] == 1 for f in frames)
            and result.frames_assembled == len(frames))
    makespan = None if math.isnan(result.makespan) else result.makespan  # None: unfinished
    return {
        "scenario": scenario, "strategy": strategy.name, "about": strategy.about,
        "params": params, "tasks": result.tasks, "makespan": makespan, "bound": bound,
        "ratio": None if makespan is None else makespan / bound,
        "job_seconds": result.job_seconds,
        "job_state": result.job_state, "failed_tasks": result.failed_tasks,
        "lost_leases": result.lost_leases, "frames_rendered": result.frames_rendered,
        "frames_wasted": result.frames_rendered - len(frames), "frames_once": once,
        "first_frames": result.first_frames,
        "preview_seconds": preview_seconds(result.rendered_at, frames), "syncs": result.syncs,
        "backups_made": result.backups_made, "backups_won": result.backups_won,
        "workers": [{"name": w.name, "frame_seconds": w.frame_seconds, "joins_at": w.joins_at,
                     "vanishes_at": w.vanishes_at} for w in workers],
        "error": result.error, "real_seconds": result.real_seconds,
    }


def measure(frames: int = FRAMES, workers: int = WORKERS, seed: int = SEED,
            strategies: list[Strategy] | None = None,
            scenarios: tuple[str, ...] = ("steady", "churn"),
            startup: float = STARTUP_SECONDS, heartbeat: float = HEARTBEAT_SECONDS,
            database: str = "sqlite",
            new_database: Callable[[str], str] | None = None,
            log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Every scenario x strategy, each on a fresh database (``new_database(name)`` gives
    its URL; by default a SQLite file, or a database on a PostgreSQL server started here)."""
    strategies = strategies if strategies is not None else \
        chosen_strategies([*STRATEGIES, "fixed"], CHUNKS)
    farm = make_farm(frames, workers, seed)
    result: dict[str, Any] = {
        "frames": frames, "workers": workers, "seed": seed, "database": database,
        "fastest_frame_seconds": FASTEST_FRAME_SECONDS, "speed_spread": SPEED_SPREAD,
        "startup_seconds": startup, "default_chunk": default_chunk(frames),
        "heartbeat_seconds": heartbeat, "targets": TARGETS, "runs": []}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-farm-")))
        if new_database is None:
            if database == "postgresql":
                reason = postgres_unavailable()
                if reason:
                    return {**result, "missing": reason}
                new_database = stack.enter_context(postgres_databases())
            else:
                def new_database(name: str) -> str:
                    return f"sqlite:///{tmp / name}.db"
        for n, (scenario, strategy) in enumerate(
                (s, st) for s in scenarios for st in strategies):
            log(f"{scenario} / {strategy.name} ...")
            url = new_database(f"farm_{n}")
            run = run_one(farm, scenario, strategy, seed, startup, url, tmp / f"data-{n}",
                          heartbeat)
            result["runs"].append(run)
            log(f"  {_figure(run['makespan'], '.0f')} s, ratio {_figure(run['ratio'], '.3f')}"
                f", {run['real_seconds']:.1f} s real")
    return result


# ---------------------------------------------------------------- printing

def print_table(r: dict[str, Any]) -> None:
    if "missing" in r:
        print(f"farm, {r['database']}: {r['missing']}")
        return
    fastest, spread = r["fastest_frame_seconds"], r["speed_spread"]
    print(f"Farm simulation on {r['database']}: {r['frames']} frames, {r['workers']} workers "
          f"({fastest:g}-{fastest * spread:g} s a frame), seed {r['seed']}; "
          f"{r['startup_seconds']:g} s start-up a task; default chunk "
          f"{r['default_chunk']}; simulated seconds")
    head = (f"{'scenario':<9}{'strategy':<13}{'tasks':>6}{'makespan':>10}{'bound':>8}"
            f"{'ratio':>7}{'target':>8}{'failed':>7}{'lost':>6}{'wasted':>8}{'once':>6}"
            f"{'preview':>9}{'backups':>9}{'real s':>8}")
    print(head)
    for run in r["runs"]:
        target = r["targets"].get(run["scenario"])
        met = "" if target is None or run["ratio"] is None else \
            f"{'ok' if run['ratio'] <= target else 'no'} {target:.2f}"
        print(f"{run['scenario']:<9}{run['strategy']:<13}{run['tasks']:>6}"
              f"{_figure(run['makespan'], '.0f'):>10}{run['bound']:>8.0f}"
              f"{_figure(run['ratio'], '.3f'):>7}{met:>8}"
              f"{run['failed_tasks']:>7}{run['lost_leases']:>6}{run['frames_wasted']:>8}"
              f"{'yes' if run['frames_once'] else 'NO':>6}"
              f"{_figure(run['preview_seconds'], '.0f'):>9}"
              f"{run['backups_made']:>5}/{run['backups_won']:<3}{run['real_seconds']:>8.1f}")
        if run["error"]:
            print(f"  {run['error']}")
    print("failed: tasks failed; lost: leases the reaper found expired; wasted: frames "
          "rendered beyond the job's; once: every frame credited exactly once; preview: "
          f"seconds until a frame is rendered in each 1/{PREVIEW_PARTS} of the range; "
          "backups: copies of stragglers made/won (their result finished the task)")


def _figure(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=None, help=f"default {FRAMES}")
    parser.add_argument("--workers", type=int, default=None, help=f"default {WORKERS}")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--chunk", default=None, help="fixed chunk sizes compared, "
                        f"comma-separated (default {','.join(map(str, CHUNKS))})")
    parser.add_argument("--strategies", default=",".join([*STRATEGIES, "fixed"]),
                        help="comma-separated (default %(default)s)")
    parser.add_argument("--scenarios", default="steady,churn")
    parser.add_argument("--startup", type=float, default=STARTUP_SECONDS,
                        help="seconds a task takes before its first frame")
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT_SECONDS,
                        help="the coordinator's heartbeat_seconds for the run (default "
                             "%(default)s; the coordinator's own default is 3)")
    parser.add_argument("--database", default="sqlite", choices=("sqlite", "postgresql"))
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['frames']} frames on {QUICK['workers']} workers, no "
                             "fixed rows unless --chunk: seconds")
    parser.add_argument("--json", action="store_true", help="print only JSON")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else {"frames": FRAMES, "workers": WORKERS, "chunks": CHUNKS}
    frames = args.frames or int(base["frames"])  # type: ignore[call-overload]
    workers = args.workers or int(base["workers"])  # type: ignore[call-overload]
    chunks = tuple(int(c) for c in args.chunk.split(",") if c) if args.chunk is not None \
        else tuple(base["chunks"])  # type: ignore[arg-type]
    if frames < 1 or workers < 1 or any(c < 1 for c in chunks):
        parser.error("frames, workers and chunk sizes must be at least 1")
    try:
        strategies = chosen_strategies([s for s in args.strategies.split(",") if s], chunks)
    except ValueError as exc:
        parser.error(str(exc))
    scenarios = tuple(s for s in args.scenarios.split(",") if s)
    log = (lambda line: None) if args.json else \
        (lambda line: print(line, file=sys.stderr, flush=True))
    result = measure(frames, workers, args.seed, strategies, scenarios, args.startup,
                     args.heartbeat, args.database, log=log)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
