"""Loading a training spec file: fresh module, relative data files, named errors."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds.train.spec import TrainSpecError, load_spec

VALID = """
    from pathlib import Path
    import helper_module

    ROWS = open("data.csv").read().split()   # relative to the spec's directory at import
    CALLS = []

    def build_model():
        return "model"

    def shard_batches(shard, num_shards, batch_size, seed):
        CALLS.append(shard)
        return iter(ROWS[shard::num_shards])

    def compute_loss(model, batch):
        return helper_module.VALUE

    def evaluate(model):
        return {"loss": 1.0}
"""


def write_spec(directory: Path, body: str, name: str = "spec.py") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def valid_spec(tmp_path: Path) -> Path:
    (tmp_path / "data.csv").write_text("a b c d")
    (tmp_path / "helper_module.py").write_text("VALUE = 42\n")
    return write_spec(tmp_path, VALID)


def test_loads_functions_with_relative_data_and_sibling_import(valid_spec: Path) -> None:
    cwd = os.getcwd()
    spec = load_spec(valid_spec)
    assert os.getcwd() == cwd  # the temporary chdir is undone
    assert spec.build_model() == "model"
    assert list(spec.shard_batches(1, 2, 8, 0)) == ["b", "d"]
    assert spec.compute_loss("model", None) == 42
    assert spec.evaluate is not None and spec.evaluate("model") == {"loss": 1.0}


def test_each_load_is_a_fresh_module(valid_spec: Path) -> None:
    first = load_spec(valid_spec)
    second = load_spec(valid_spec)
    list(first.shard_batches(0, 1, 1, 0))
    assert first.shard_batches.__module__ != second.shard_batches.__module__
    assert first.shard_batches.__globals__["CALLS"] == [0]
    assert second.shard_batches.__globals__["CALLS"] == []


def test_evaluate_is_optional(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, """
        def build_model(): return None
        def shard_batches(shard, num_shards, batch_size, seed): return []
        def compute_loss(model, batch): return 0.0
    """))
    assert spec.evaluate is None


def test_missing_functions_are_named(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "def build_model(): return None\n")
    with pytest.raises(TrainSpecError, match="shard_batches, compute_loss") as info:
        load_spec(path)
    assert isinstance(info.value, InvalidInput) and info.value.status == 400


def test_non_callable_is_named(tmp_path: Path) -> None:
    path = write_spec(tmp_path, """
        def build_model(): return None
        def shard_batches(shard, num_shards, batch_size, seed): return []
        compute_loss = 3
        evaluate = "no"
    """)
    with pytest.raises(TrainSpecError, match="compute_loss, evaluate must be a function"):
        load_spec(path)


def test_import_error_is_reported_with_its_cause(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "import no_such_module_for_pilot\n")
    with pytest.raises(TrainSpecError, match="failed to import: ModuleNotFoundError.*"
                                             "no_such_module_for_pilot.*spec.py line 1"):
        load_spec(path)
    exiting = write_spec(tmp_path, "import sys\nsys.exit(3)\n", name="exits.py")
    with pytest.raises(TrainSpecError, match="exits.py failed to import"):
        load_spec(exiting)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TrainSpecError, match="nothing.py: no such file"):
        load_spec(tmp_path / "nothing.py")
