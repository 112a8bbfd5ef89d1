"""bench/train.py at a tiny size: all four arms run, and the bytes each worker sends are
what the protocol sends (one fp16 delta per round, one fp32 gradient per sync step)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench() -> object:
    spec = importlib.util.spec_from_file_location("pilot_bench_train", ROOT / "bench" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_runs_every_arm_and_counts_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    bench = load_bench()
    rounds, steps = 2, 3
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--rounds", str(rounds), "--inner-steps", str(steps),  # type: ignore[attr-defined]
                           "--workers", "2", "--json"]) == 0
    finally:
        torch.set_num_threads(threads)  # the bench pins one thread per simulated worker
    arms = {entry["arm"]: entry["runs"][0] for entry in json.loads(capsys.readouterr().out)}
    assert set(arms) == {"single", "diloco", "sync", "fedavg"}
    assert all(len(run["curve"]) == rounds for run in arms.values())
    params = 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10  # the digits classifier
    assert arms["single"]["bytes_per_worker"] == 0
    assert arms["sync"]["bytes_per_worker"] == rounds * steps * 4 * params
    delta_file = arms["diloco"]["bytes_per_worker"] / rounds
    assert 2 * params < delta_file < 2 * params + 1024  # fp16 values plus a small header
    assert arms["fedavg"]["bytes_per_worker"] == arms["diloco"]["bytes_per_worker"]
