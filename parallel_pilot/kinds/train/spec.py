"""Loading a user's training spec: the Python file that defines the model, data and loss.

A spec file defines four functions (the fourth optional)::

    build_model() -> torch.nn.Module
    shard_batches(shard, num_shards, batch_size, seed) -> Iterable[batch]   # may be finite
    compute_loss(model, batch) -> torch.Tensor                              # a scalar
    evaluate(model) -> dict[str, float]                                     # incl. "loss"

``load_spec`` imports it as a fresh, uniquely named module (so two specs, or two versions
of one spec, never share state) with the file's directory first on ``sys.path`` and as the
working directory while it is imported, so ``open("data.csv")`` at import time finds a data
file uploaded next to it. Code that reads files later should resolve them against
``Path(__file__).parent``. This module does not import torch: the client loads specs to
check them before submitting, and the coordinator never needs torch.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from parallel_pilot.errors import InvalidInput

if TYPE_CHECKING:
    import torch

REQUIRED_FUNCTIONS = ("build_model", "shard_batches", "compute_loss")
OPTIONAL_FUNCTIONS = ("evaluate",)
MODULE_PREFIX = "pilot_train_spec_"  # module names are this plus a counter, one per load

_load_counter = itertools.count(1)


class TrainSpecError(InvalidInput):
    """The training spec file is not valid."""


@dataclass
class TrainSpec:
    """The functions a spec file defines (``evaluate`` is None when the file has none)."""

    build_model: Callable[[], torch.nn.Module]
    # (shard, num_shards, batch_size, seed) -> batches
    shard_batches: Callable[[int, int, int, int], Iterable[Any]]
    compute_loss: Callable[[torch.nn.Module, Any], torch.Tensor]
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None


def load_spec(path: Path) -> TrainSpec:
    """Import the spec file at ``path`` and return its functions.

    Raises ``TrainSpecError`` when the file is missing, fails to import (the message holds
    the last lines of the traceback), or lacks a required function or has a name that is
    not callable.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise TrainSpecError(f"training spec {path.name}: no such file")
    module = _import_fresh(path)
    missing = [name for name in REQUIRED_FUNCTIONS if not hasattr(module, name)]
    if missing:
        raise TrainSpecError(
            f"training spec {path.name} must define {', '.join(missing)} "
            f"(required: {', '.join(REQUIRED_FUNCTIONS)}; optional: evaluate)"
        )
    not_callable = [
        name for name in REQUIRED_FUNCTIONS + OPTIONAL_FUNCTIONS
        if hasattr(module, name) and not callable(getattr(module, name))
    ]
    if not_callable:
        raise TrainSpecError(
            f"training spec {path.name}: {', '.join(not_callable)} must be a function"
        )
    return TrainSpec(
        build_model=module.build_model,
        shard_batches=module.shard_batches,
        compute_loss=module.compute_loss,
        evaluate=getattr(module, "evaluate", None),
    )


def _import_fresh(path: Path) -> ModuleType:
    name = f"{MODULE_PREFIX}{next(_load_counter)}_{_identifier(path.stem)}"
    import_spec = importlib.util.spec_from_file_location(name, path)
    if import_spec is None or import_spec.loader is None:
        raise TrainSpecError(f"training spec {path.name}: not a Python file")
    module = importlib.util.module_from_spec(import_spec)
    directory = str(path.parent)
    if not sys.path or sys.path[0] != directory:
        sys.path.insert(0, directory)  # stays: functions may import sibling modules lazily
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        with _working_directory(path.parent):
            import_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a spec calling sys.exit() is a bad spec too
        sys.modules.pop(name, None)
        raise TrainSpecError(
            f"training spec {path.name} failed to import: {_describe(exc, path)}"
        ) from exc
    return module


def _identifier(stem: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in stem)[:40]


def _describe(exc: BaseException, path: Path) -> str:
    """``Type: message (spec.py line N)``, N being the deepest line of the spec file."""
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__)
             if frame.filename == str(path)]
    where = f" ({path.name} line {lines[-1]})" if lines else ""
    return f"{type(exc).__name__}: {exc}{where}"


@contextmanager
def _working_directory(directory: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)
