"""A parameter sweep of a SciPy ODE (``ode_model.simulate``) over a grid, on the farm,
collected into a table.

    python examples/ode_sweep.py --local 2 --grid 6 --csv sweep.csv

``ode_model`` is not installed on the workers, so it is pickled by value: the function
travels with the calls. Workers need numpy and scipy (they say so if they lack them).
"""

from __future__ import annotations

import argparse
import csv
import time

import cloudpickle
import ode_model
from pilot_farm import add_farm_arguments, farm_client

from parallel_pilot import Executor

cloudpickle.register_pickle_by_value(ode_model)  # send the module's code, not its name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=6, help="points per axis (6: 36 runs)")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    add_farm_arguments(parser)
    args = parser.parse_args()
    points = ode_model.grid(args.grid)
    alphas, betas = zip(*points, strict=True)
    started = time.monotonic()
    with farm_client(args) as client, \
            Executor(client=client, requirements=("numpy", "scipy")) as pool:
        rows = list(pool.map(ode_model.simulate, alphas, betas, chunksize=4))
    print(ode_model.table(rows))
    print(f"{len(rows)} simulations in {time.monotonic() - started:.1f} s")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=ode_model.COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
