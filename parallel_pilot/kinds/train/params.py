"""Parameters of a ``train`` job (validated at submit) and the output paths of its rounds.

A job is the user's spec file and data files (blobs), *k* workers per round, *H* inner
steps per worker per round, a number of rounds (or a total step budget), the inner AdamW
and outer SGD settings, and the round's deadline and quorum. No torch here: the
coordinator validates and plans without it.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from parallel_pilot.core.protocol import check_sha256
from parallel_pilot.kinds.sweep import check_relative_path

MAX_WORKERS = 256  # workers (shards) per round
MAX_ROUNDS = 10_000  # rounds of one job
MAX_INNER_STEPS = 1_000_000  # inner steps per worker per round
MAX_BATCH_SIZE = 1_000_000  # samples per batch
DEFAULT_WORKERS = 4
DEFAULT_INNER_STEPS = 50
DEFAULT_ROUNDS = 10  # when neither rounds nor total_steps is given
DEFAULT_BATCH_SIZE = 32
DEFAULT_ROUND_DEADLINE = 600.0  # seconds the aggregate waits for late deltas once the
#                                 first delta of the round is in, when the quorum is met
DEFAULT_MAX_DELTA_NORM = 10.0  # a delta larger than this times the weights' norm is refused

_FILE_NAME = re.compile(r"^[A-Za-z0-9_.-][A-Za-z0-9_. -]{0,99}\.py$")


class TrainParams(BaseModel):
    """What a user submits for DiLoCo training (see kinds/train/diloco.py for the math)."""

    model_config = ConfigDict(extra="forbid")

    spec: str = Field(description="SHA-256 of the uploaded spec file (the Python file)")
    spec_file: str = Field(default="spec.py", description="its file name on the workers")
    files: dict[str, str] = Field(default_factory=dict,
                                  description="data files next to the spec: name -> SHA-256")
    workers: int = Field(default=DEFAULT_WORKERS, ge=1, le=MAX_WORKERS,
                         description="workers (and data shards) per round, k")
    inner_steps: int = Field(default=DEFAULT_INNER_STEPS, ge=1, le=MAX_INNER_STEPS,
                             description="AdamW steps per worker per round, H")
    rounds: int | None = Field(default=None, ge=1, le=MAX_ROUNDS)
    total_steps: int | None = Field(default=None, ge=1, description="a budget of inner "
                                    "steps over all workers: rounds = ceil(total / (k*H))")
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    inner_lr: float = Field(default=4e-4, gt=0, le=10)
    weight_decay: float = Field(default=0.1, ge=0, le=10)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    outer_lr: float = Field(default=0.7, gt=0, le=10)
    outer_momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    round_deadline_seconds: float = Field(default=DEFAULT_ROUND_DEADLINE, gt=0,
                                          le=7 * 24 * 3600)
    quorum: int | None = Field(default=None, ge=1, description="deltas a round needs once "
                               "its deadline passed (default: half the workers, rounded up)")
    max_delta_norm: float = Field(default=DEFAULT_MAX_DELTA_NORM, gt=0)

    _sha = field_validator("spec")(check_sha256)

    @field_validator("spec_file")
    @classmethod
    def _spec_file(cls, value: str) -> str:
        if not _FILE_NAME.match(value):
            raise ValueError("must be a plain Python file name, like spec.py")
        return value

    @field_validator("files")
    @classmethod
    def _files(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 1000:
            raise ValueError("at most 1000 data files")
        for name, sha in value.items():
            check_relative_path(name)
            check_sha256(sha)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        if self.rounds is not None and self.total_steps is not None:
            raise ValueError("give rounds or total_steps, not both")
        if self.spec_file in self.files:
            raise ValueError(f"a data file may not be named like the spec ({self.spec_file})")
        if self.quorum is not None and self.quorum > self.workers:
            raise ValueError(f"quorum {self.quorum} is more than the {self.workers} workers")
        if self.round_count() > MAX_ROUNDS:
            raise ValueError(f"{self.round_count()} rounds; at most {MAX_ROUNDS}")
        return self

    def round_count(self) -> int:
        if self.rounds is not None:
            return self.rounds
        if self.total_steps is not None:
            return max(1, math.ceil(self.total_steps / (self.workers * self.inner_steps)))
        return DEFAULT_ROUNDS

    def round_quorum(self) -> int:
        return self.quorum if self.quorum is not None else max(1, math.ceil(self.workers / 2))

    def inputs(self) -> dict[str, str]:
        """Every file the tasks need in their working directory: the spec and its data."""
        return {self.spec_file: self.spec, **self.files}

    def task_config(self) -> dict[str, Any]:
        """What every task of the job is told (its payload's ``config``)."""
        return self.model_dump(mode="json", exclude={"spec", "files", "rounds", "total_steps"})


# ---------------------------------------------------------------- output paths

FINAL_MODEL = "model.safetensors"  # the trained weights (job output, from the last round)
METRICS_CSV = "metrics.csv"  # one row per round (made when the job completes)


ROUNDS_PREFIX = "rounds/"  # working state of the rounds (not listed to users)


def round_dir(round_index: int) -> str:
    """Where the global state before round ``round_index`` lives (round 0: the init)."""
    return f"{ROUNDS_PREFIX}{round_index:04d}/"


def model_path(round_index: int) -> str:
    return f"{round_dir(round_index)}model.safetensors"


def momentum_path(round_index: int) -> str:
    return f"{round_dir(round_index)}momentum.safetensors"


def state_path(round_index: int) -> str:
    """JSON: each shard's stream cursor at the start of the round, and the round's metrics."""
    return f"{round_dir(round_index)}state.json"


def deltas_dir(round_index: int) -> str:
    return f"{round_dir(round_index)}deltas/"


def delta_path(round_index: int, shard: int) -> str:
    return f"{deltas_dir(round_index)}shard-{shard:04d}.safetensors"
