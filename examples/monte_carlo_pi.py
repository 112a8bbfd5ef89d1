"""Estimate pi by Monte Carlo over 1,000 chunks of random points, on the farm's workers.

    python examples/monte_carlo_pi.py --local 2                  # a farm on this machine
    PILOT_SERVER=... PILOT_TOKEN=... python examples/monte_carlo_pi.py --chunks 1000

Each chunk draws ``--samples`` points in the unit square with its own seed and counts
those inside the quarter circle; ``Executor.map`` sends the chunks ``--per-task`` at a
time and returns the counts in order, exactly as the builtin ``map`` would.
"""

from __future__ import annotations

import argparse
import math
import time

from pilot_farm import add_farm_arguments, farm_client

from parallel_pilot import Executor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1000, help="chunks of points (1000)")
    parser.add_argument("--samples", type=int, default=200_000, help="points per chunk")
    parser.add_argument("--per-task", type=int, default=20, help="chunks per farm task")
    add_farm_arguments(parser)
    args = parser.parse_args()
    samples = args.samples

    def hits(seed: int) -> int:  # a closure: cloudpickle sends it with `samples`
        import numpy as np

        points = np.random.default_rng(seed).random((samples, 2))
        return int(np.count_nonzero((points ** 2).sum(axis=1) <= 1.0))

    started = time.monotonic()
    with farm_client(args) as client, Executor(client=client, requirements=("numpy",)) as pool:
        counts = list(pool.map(hits, range(args.chunks), chunksize=args.per_task))
    total = args.chunks * samples
    estimate = 4 * sum(counts) / total
    print(f"{len(counts)} chunks, {total:,} points: pi ~ {estimate:.6f} "
          f"(error {abs(estimate - math.pi):.2e}) in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
