"""A small simulation: the Lotka-Volterra predator-prey equations, solved with SciPy.

    dx/dt = alpha x - beta x y        (prey)
    dy/dt = delta x y - gamma y       (predators)

``simulate(alpha, beta)`` gives a row of the sweep's table. Run as a command it does one
grid point, as ``pilot sweep`` runs it (``examples/ode_sweep.sh``)::

    python ode_model.py 1.1:0.4        # writes out/result.json and prints it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DELTA, GAMMA = 0.1, 0.4  # fixed predator rates
START = (10.0, 10.0)  # prey, predators at t = 0
T_END = 100.0  # time units simulated
COLUMNS = ("alpha", "beta", "prey_mean", "prey_peak", "predator_mean", "steps")


def simulate(alpha: float, beta: float) -> dict[str, float]:
    """Populations over [0, T_END] for the prey growth ``alpha`` and predation ``beta``."""
    import numpy as np
    from scipy.integrate import solve_ivp

    def rates(_t: float, state: np.ndarray) -> list[float]:
        x, y = state
        return [alpha * x - beta * x * y, DELTA * x * y - GAMMA * y]

    times = np.linspace(0.0, T_END, 2001)
    solution = solve_ivp(rates, (0.0, T_END), START, t_eval=times, rtol=1e-8, atol=1e-8)
    prey, predators = solution.y
    return {"alpha": alpha, "beta": beta, "prey_mean": round(float(prey.mean()), 4),
            "prey_peak": round(float(prey.max()), 4),
            "predator_mean": round(float(predators.mean()), 4), "steps": int(solution.nfev)}


def grid(size: int) -> list[tuple[float, float]]:
    """``size`` x ``size`` (alpha, beta) points."""
    alphas = [round(0.6 + 0.8 * i / max(size - 1, 1), 3) for i in range(size)]
    betas = [round(0.2 + 0.3 * j / max(size - 1, 1), 3) for j in range(size)]
    return [(a, b) for a in alphas for b in betas]


def table(rows: list[dict[str, float]]) -> str:
    """Rows as an aligned text table."""
    lines = ["  ".join(f"{c:>13}" for c in COLUMNS)]
    lines += ["  ".join(f"{row[c]:>13}" for c in COLUMNS) for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    alpha_text, beta_text = sys.argv[1].split(":")
    row = simulate(float(alpha_text), float(beta_text))
    Path("out").mkdir(exist_ok=True)
    Path("out/result.json").write_text(json.dumps(row))
    print(json.dumps(row))
