"""``sleep``: each task sleeps some milliseconds; for tests and benchmarks of the machinery."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from parallel_pilot.core.protocol import TaskLease
from parallel_pilot.kinds.base import FinishedTask, RunContext, TaskSpec

MAX_SLEEP_TASKS = 100_000  # tasks one sleep job may have


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: int = Field(default=1, ge=1, le=MAX_SLEEP_TASKS)
    milliseconds: int = Field(default=0, ge=0, le=24 * 3600 * 1000)


class SleepKind:
    name: ClassVar[str] = "sleep"
    params_model: ClassVar[type[BaseModel]] = SleepParams
    in_process: ClassVar[bool] = True

    def input_blobs(self, params: BaseModel) -> dict[str, str]:
        return {}

    def check_inputs(self, params: BaseModel,
                     read_prefix: Callable[[str, int], bytes]) -> BaseModel:
        return params

    def plan(self, params: BaseModel) -> list[TaskSpec]:
        assert isinstance(params, SleepParams)
        return [
            TaskSpec(name=f"sleep {i}", payload={"milliseconds": params.milliseconds})
            for i in range(params.tasks)
        ]

    def run(self, task: TaskLease, ctx: RunContext) -> dict[str, Any]:
        seconds = task.payload["milliseconds"] / 1000.0
        if seconds > 0:
            # wait on the stop event so a cancelled job stops at once
            ctx.stop_event.wait(seconds)
        return {"slept_ms": task.payload["milliseconds"], "stopped": ctx.stop_event.is_set(),
                "at": time.time()}

    def finalize(self, params: BaseModel, tasks: list[FinishedTask]) -> dict[str, bytes]:
        return {}
