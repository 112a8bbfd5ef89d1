"""Training benchmark: DiLoCo against one worker, synchronous data parallel and FedAvg.

Four arms train the same model from the same initial weights, with the same inner AdamW
settings and the same number of inner steps per worker (rounds x H):
  (a) single  one worker alone on all the data, no communication;
  (b) diloco  k workers on k shards, H AdamW steps each, fp16 deltas averaged (weighted by
              samples) and applied with outer SGD, Nesterov momentum (lr 0.7, 0.9);
  (c) sync    k workers averaging fp32 gradients every step, one shared AdamW step;
  (d) fedavg  as (b) with outer lr 1.0 and no momentum (plain averaging of the weights).
Workers are simulated one after another in this one process, with the code a worker runs
(``kinds.train.diloco``): each delta really goes through an fp16 safetensors file, and its
size is the bytes that worker sends. "wall" is measured; "parallel" estimates the wall time
of k real workers as the slowest worker of each round plus the aggregation (for sync: the
slowest worker of each step). Bytes for sync count each worker sending its fp32 gradient to
an averager once per step (a ring all-reduce would send about twice that).

    python bench/train.py [--quick] [--rounds R] [--inner-steps H] [--workers K]
                          [--inner-lr 1e-3,3e-3] [--seeds N] [--spec FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from parallel_pilot.kinds.train.diloco import (
    InnerConfig,
    OuterConfig,
    average_deltas,
    batch_samples,
    check_delta,
    inner_train,
    load_safetensors,
    load_tensors_into,
    model_tensors,
    outer_step,
    save_safetensors,
    shard_stream,
)
from parallel_pilot.kinds.train.spec import TrainSpec, load_spec

DEFAULT_SPEC = Path(__file__).resolve().parent.parent / "examples" / "train_digits.py"
TAIL_ROUNDS = 5  # rounds averaged for the "last-N" loss, which also picks each arm's lr


@dataclass
class ArmResult:
    """One arm's outcome: eval metrics after each round, bytes each worker sent, times."""

    name: str
    inner_lr: float
    curve: list[dict[str, float]] = field(default_factory=list)
    bytes_per_worker: int = 0
    wall_s: float = 0.0
    parallel_s: float = 0.0


@dataclass
class Setup:
    spec: TrainSpec
    workers: int
    rounds: int
    inner_steps: int
    batch_size: int
    seed: int
    inner: InnerConfig

    def fresh_model(self) -> torch.nn.Module:
        torch.manual_seed(self.seed)  # every arm starts from the same weights
        return self.spec.build_model()

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        assert self.spec.evaluate is not None, "the spec needs evaluate() for the benchmark"
        return self.spec.evaluate(model)


def run_single(setup: Setup) -> ArmResult:
    """(a) one worker, all the data, rounds x H steps; evaluated every H steps."""
    result = ArmResult("single", setup.inner.lr)
    model = setup.fresh_model()
    cursor: dict[str, int] | None = None
    state: dict[str, Any] | None = None
    started = time.perf_counter()
    for _ in range(setup.rounds):
        inner = inner_train(setup.spec, model, shard=0, num_shards=1,
                            batch_size=setup.batch_size, seed=setup.seed, cursor=cursor,
                            steps=setup.inner_steps, config=setup.inner, optimizer_state=state)
        cursor, state = inner.cursor, inner.optimizer_state
        result.curve.append(setup.evaluate(model))
    result.wall_s = result.parallel_s = time.perf_counter() - started
    return result


def run_rounds(setup: Setup, name: str, outer: OuterConfig, scratch: Path) -> ArmResult:
    """(b)/(d) k workers per round, deltas through fp16 safetensors, one outer step."""
    result = ArmResult(name, setup.inner.lr)
    model = setup.fresh_model()
    params = model_tensors(model)
    momentum: dict[str, torch.Tensor] | None = None
    cursors: list[dict[str, int] | None] = [None] * setup.workers
    states: list[dict[str, Any] | None] = [None] * setup.workers
    sent_total = 0  # bytes of all workers' deltas
    started = time.perf_counter()
    for round_number in range(setup.rounds):
        deltas, samples, slowest = [], [], 0.0
        for shard in range(setup.workers):
            worker_started = time.perf_counter()
            load_tensors_into(model, params)
            inner = inner_train(setup.spec, model, shard=shard, num_shards=setup.workers,
                                batch_size=setup.batch_size, seed=setup.seed,
                                cursor=cursors[shard], steps=setup.inner_steps,
                                config=setup.inner, optimizer_state=states[shard])
            cursors[shard], states[shard] = inner.cursor, inner.optimizer_state
            path = scratch / f"{name}-r{round_number}-s{shard}.safetensors"
            sent_total += save_safetensors(path, inner.delta, dtype=torch.float16)
            slowest = max(slowest, time.perf_counter() - worker_started)
            delta, _ = load_safetensors(path)
            reason = check_delta(delta, params)
            if reason is not None:
                raise RuntimeError(f"{name} round {round_number} shard {shard}: {reason}")
            deltas.append(delta)
            samples.append(float(inner.samples))
        aggregate_started = time.perf_counter()
        params, momentum = outer_step(params, average_deltas(deltas, samples), momentum, outer)
        load_tensors_into(model, params)
        result.curve.append(setup.evaluate(model))
        result.parallel_s += slowest + time.perf_counter() - aggregate_started
    result.wall_s = time.perf_counter() - started
    result.bytes_per_worker = sent_total // setup.workers
    return result


def run_sync(setup: Setup) -> ArmResult:
    """(c) k workers, gradients averaged (weighted by samples) every step, one AdamW."""
    result = ArmResult("sync", setup.inner.lr)
    model = setup.fresh_model()
    config = setup.inner
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  betas=(config.beta1, config.beta2), eps=config.eps,
                                  weight_decay=config.weight_decay)
    streams = [shard_stream(setup.spec, shard=shard, num_shards=setup.workers,
                            batch_size=setup.batch_size, seed=setup.seed, cursor=None)
               for shard in range(setup.workers)]
    gradient_bytes = 4 * sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    for _ in range(setup.rounds):
        model.train()
        for _ in range(setup.inner_steps):
            grads, samples, slowest = [], [], 0.0
            for stream in streams:
                worker_started = time.perf_counter()
                batch, _ = next(stream)
                model.zero_grad(set_to_none=True)
                setup.spec.compute_loss(model, batch).backward()
                grads.append([p.grad.detach().clone() if p.grad is not None
                              else torch.zeros_like(p) for p in model.parameters()])
                samples.append(batch_samples(batch))
                slowest = max(slowest, time.perf_counter() - worker_started)
            step_started = time.perf_counter()
            total = sum(samples)
            for index, parameter in enumerate(model.parameters()):
                averaged = torch.zeros_like(parameter)
                for grad, count in zip(grads, samples, strict=True):
                    averaged.add_(grad[index], alpha=count / total)
                parameter.grad = averaged
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            result.bytes_per_worker += gradient_bytes
            result.parallel_s += slowest + time.perf_counter() - step_started
        result.curve.append(setup.evaluate(model))
    result.wall_s = time.perf_counter() - started
    return result


@dataclass
class ArmSummary:
    """One arm at one inner lr, over seeds: means of the final figures."""

    name: str
    inner_lr: float
    runs: list[ArmResult]

    def mean(self, values: list[float]) -> float:
        return statistics.fmean(values)

    def final(self, key: str) -> list[float]:
        return [r.curve[-1][key] for r in self.runs]

    @property
    def loss(self) -> float:
        return self.mean(self.final("loss"))

    @property
    def tail_loss(self) -> float:
        """Mean eval loss over the last TAIL_ROUNDS rounds: less luck than the final one."""
        return self.mean([statistics.fmean(c["loss"] for c in r.curve[-TAIL_ROUNDS:])
                          for r in self.runs])

    def curve(self) -> list[float]:
        return [self.mean([r.curve[i]["loss"] for r in self.runs])
                for i in range(len(self.runs[0].curve))]


def print_table(summaries: list[ArmSummary], setup: Setup, seeds: list[int],
                out: Callable[[str], None]) -> None:
    out(f"workers k={setup.workers}, rounds={setup.rounds}, inner steps H={setup.inner_steps} "
        f"(= {setup.rounds * setup.inner_steps} steps per worker), batch {setup.batch_size}, "
        f"seeds {','.join(map(str, seeds))} (figures are means over seeds)")
    metric = next((k for k in summaries[0].runs[0].curve[-1] if k != "loss"), None)
    head = (f"{'arm':<7} {'inner lr':>8} {'eval loss':>9} {'(sd)':>7} {(metric or '')[:9]:>9} "
            f"{'last-' + str(TAIL_ROUNDS):>7} {'best loss':>9} {'bytes/worker':>13} "
            f"{'wall s':>7} {'parallel s':>10}")
    out(head)
    out("-" * len(head))
    for s in summaries:
        losses = s.final("loss")
        spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
        value = f"{s.mean(s.final(metric)):.4f}" if metric else ""
        best = s.mean([min(c["loss"] for c in r.curve) for r in s.runs])
        out(f"{s.name:<7} {s.inner_lr:>8g} {s.loss:>9.4f} {spread:>7.4f} {value:>9} "
            f"{s.tail_loss:>7.4f} {best:>9.4f} {s.runs[0].bytes_per_worker:>13,} "
            f"{s.mean([r.wall_s for r in s.runs]):>7.1f} "
            f"{s.mean([r.parallel_s for r in s.runs]):>10.1f}")
    out("mean eval loss after each round:")
    for s in summaries:
        out(f"  {s.name:<7} " + " ".join(f"{v:.3f}" for v in s.curve()))


def run_arm(arm: str, setup: Setup, args: argparse.Namespace, scratch: Path) -> ArmResult:
    if arm == "single":
        return run_single(setup)
    if arm == "diloco":
        outer = OuterConfig(lr=args.outer_lr, momentum=args.outer_momentum)
        return run_rounds(setup, "diloco", outer, scratch)
    if arm == "sync":
        return run_sync(setup)
    if arm == "fedavg":
        return run_rounds(setup, "fedavg", OuterConfig(lr=1.0, momentum=0.0, nesterov=False),
                          scratch)
    raise SystemExit(f"unknown arm {arm!r} (single, diloco, sync, fedavg)")


def warm_up(setup: Setup) -> None:
    """One untimed step and evaluation, so the first arm does not pay torch's start-up."""
    inner_train(setup.spec, setup.fresh_model(), shard=0, num_shards=1,
                batch_size=setup.batch_size, seed=setup.seed, cursor=None, steps=2,
                config=setup.inner)
    setup.evaluate(setup.fresh_model())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="training spec file")
    parser.add_argument("--workers", type=int, default=4, help="k, workers per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--inner-steps", type=int, default=25, help="H, inner steps per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--inner-lr", default="1e-3",
                        help="AdamW lr, or a comma-separated grid: every arm runs with each "
                             "and reports the lr with its best mean loss over the last rounds")
    parser.add_argument("--outer-lr", type=float, default=0.7, help="DiLoCo outer SGD lr")
    parser.add_argument("--outer-momentum", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, default=1,
                        help="runs per arm and lr, with seeds 0..N-1 (model init and data)")
    parser.add_argument("--arms", default="single,diloco,sync,fedavg",
                        help="comma-separated subset of single,diloco,sync,fedavg")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 10 steps")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.inner_steps = 3, 10
    torch.set_num_threads(1)  # one core per simulated worker, as on a volunteer's machine
    grid = [float(value) for value in args.inner_lr.split(",")]
    seeds = list(range(args.seeds))
    setup = Setup(spec=load_spec(args.spec), workers=args.workers, rounds=args.rounds,
                  inner_steps=args.inner_steps, batch_size=args.batch_size, seed=0,
                  inner=InnerConfig(lr=grid[0]))
    warm_up(setup)
    summaries: list[ArmSummary] = []
    with tempfile.TemporaryDirectory(prefix="pilot-bench-train-") as scratch:
        for arm in args.arms.split(","):
            tried = []
            for lr in grid:
                runs = []
                for seed in seeds:
                    setup.inner, setup.seed = InnerConfig(lr=lr), seed
                    runs.append(run_arm(arm, setup, args, Path(scratch)))
                tried.append(ArmSummary(arm, lr, runs))
                print(f"... {arm} lr {lr:g}: mean eval loss {tried[-1].loss:.4f} in "
                      f"{sum(r.wall_s for r in runs):.1f} s", file=sys.stderr)
            # every arm gets its own best lr of the same grid, chosen the same way: by the
            # mean loss of the last rounds, so that one lucky final round does not decide
            summaries.append(min(tried, key=lambda summary: summary.tail_loss))
    if args.json:
        print(json.dumps([{"arm": s.name, "inner_lr": s.inner_lr,
                           "runs": [r.__dict__ for r in s.runs]} for s in summaries], indent=2))
    else:
        print_table(summaries, setup, seeds, print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
