"""The training examples (examples/train_*.py) run at small size on a real farm: a real
coordinator and two real workers training with torch on the CPU through ``pilot train``.
Each finishes, its eval loss falls round over round, and (digits) the downloaded model
reproduces the reported accuracy."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.farm import Farm
from tests.e2e.test_train_e2e import require_torch, start_farm

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def train_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    require_torch()
    farm = Farm(tmp_path_factory.mktemp("train-examples"))
    try:
        start_farm(farm, ["w1", "w2"])
        yield farm
    finally:
        farm.stop()


def train(farm: Farm, cwd: Path, *args: str) -> dict[str, Any]:
    out = farm.pilot("train", *args, "--workers", "2", "--json", cwd=cwd, timeout=300)
    report = json.loads(out.stdout)
    assert report["state"] == "completed", (report, farm.log("worker-w1"))
    losses = [row["eval_loss"] for row in report["metrics"]]
    assert len(losses) == report["rounds"] + 1  # the initial model, then one per round
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    return report


def test_digits_classifier_trains_and_its_model_reproduces_the_accuracy(
        train_farm: Farm, tmp_path: Path) -> None:
    import torch

    from parallel_pilot.kinds.train.diloco import load_safetensors, load_tensors_into
    from parallel_pilot.kinds.train.spec import load_spec

    report = train(train_farm, EXAMPLES, "train_digits.py", "--inner-steps", "15",
                   "--rounds", "2", "--batch-size", "32", "--inner-lr", "0.003")
    final = report["metrics"][-1]
    assert final["eval_accuracy"] > 0.5  # ten classes: chance is 0.1

    train_farm.pilot("download", str(report["job"]), "--out", str(tmp_path / "result"))
    with open(tmp_path / "result" / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    spec = load_spec(EXAMPLES / "train_digits.py")
    model = spec.build_model()
    weights, _ = load_safetensors(tmp_path / "result" / "model.safetensors")
    load_tensors_into(model, weights)
    assert spec.evaluate is not None
    with torch.no_grad():
        again = spec.evaluate(model)
    assert again["accuracy"] == pytest.approx(final["eval_accuracy"], abs=1e-9)
    assert again["loss"] == pytest.approx(final["eval_loss"], rel=1e-5)


def test_character_language_model_trains_on_the_shipped_text(train_farm: Farm) -> None:
    # run from examples/, as its docstring says, so the text lands at data/sonnets.txt
    report = train(train_farm, EXAMPLES, "train_charlm.py", "--file", "data/sonnets.txt",
                   "--inner-steps", "10", "--rounds", "2", "--batch-size", "8",
                   "--inner-lr", "0.003")
    first, last = report["metrics"][0], report["metrics"][-1]
    assert last["eval_bits_per_char"] < first["eval_bits_per_char"] - 0.5
