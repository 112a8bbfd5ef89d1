"""The examples in ``examples/`` run as a user runs them, against a real coordinator and
real workers (small sizes): Monte Carlo pi over 1,000 chunks, the SciPy ODE sweep through
the Executor, and the same sweep as a ``pilot sweep`` shell command (same table)."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.e2e.farm import Farm

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def example_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(tmp_path_factory.mktemp("examples-farm"))
    try:
        farm.start_server()
        for name in ("w1", "w2"):
            farm.start_worker(name, extra=["--allow", "python,sweep"])
        farm.wait_workers_joined(2)
        yield farm
    finally:
        farm.stop()


def run_example(farm: Farm, argv: list[str], cwd: Path) -> str:
    env = {**os.environ, "PILOT_SERVER": farm.url, "PILOT_TOKEN": farm.admin_token,
           "HOME": str(farm.root / "home"), "PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_monte_carlo_pi_over_1000_chunks(example_farm: Farm, tmp_path: Path) -> None:
    out = run_example(example_farm, [sys.executable, str(EXAMPLES / "monte_carlo_pi.py"),
                                     "--chunks", "1000", "--samples", "4000",
                                     "--per-task", "50"], tmp_path)
    match = re.search(r"^1000 chunks, 4,000,000 points: pi ~ ([0-9.]+)", out, re.M)
    assert match, out
    assert abs(float(match.group(1)) - math.pi) < 0.01


def read_table(text: str) -> list[list[str]]:
    lines = [line.split() for line in text.splitlines() if line.strip()]
    start = next(i for i, cells in enumerate(lines) if cells and cells[0] == "alpha")
    return [cells for cells in lines[start:] if len(cells) == len(lines[start])]


def test_ode_sweep_as_executor_and_as_pilot_sweep_give_one_table(example_farm: Farm,
                                                                  tmp_path: Path) -> None:
    require(None if importlib.util.find_spec("scipy") else
            "the ODE example needs scipy (extra 'examples')")
    table_csv = tmp_path / "sweep.csv"
    out = run_example(example_farm, [sys.executable, str(EXAMPLES / "ode_sweep.py"),
                                     "--grid", "3", "--csv", str(table_csv)], tmp_path)
    executor_table = read_table(out)
    assert len(executor_table) == 1 + 9, out
    with open(table_csv) as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["alpha"]), float(r["beta"])) for r in rows][:2] == [(0.6, 0.2), (0.6, 0.35)]
    # mean prey over whole cycles is gamma/delta = 4 for every point of the grid
    assert all(abs(float(r["prey_mean"]) - 4.0) < 0.6 for r in rows)

    shell_out = run_example(example_farm, ["sh", str(EXAMPLES / "ode_sweep.sh"), "3",
                                           str(tmp_path / "results")], tmp_path)
    assert read_table(shell_out) == executor_table
