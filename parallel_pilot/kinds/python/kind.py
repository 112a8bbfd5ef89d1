"""The ``python`` kind: chunks of calls of cloudpickled functions, one task per chunk.

On the coordinator the parameters name the function blobs, the calls blob and how it is cut
into chunks (or carry small calls themselves, ``calls_data``: each task is then leased with
its own chunk); ``plan`` makes one task per chunk. On a worker, ``run`` checks the Python
version and the packages the client said the function needs, lays the function, the chunk
and its shared argument blobs out in a folder of a ``runner.py --serve`` child process
reused across the job's tasks (``warm``; in bwrap when the worker sandboxes), and has it
run them. The worker process never unpickles anything itself. Small results come back
inline in the task's result; larger ones as an output blob.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import platform
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from parallel_pilot.core.protocol import TaskLease, check_sha256
from parallel_pilot.core.python_calls import INLINE_CALLS_BYTES, python_version
from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds.base import MAX_TASK_SECONDS, FinishedTask, RunContext, TaskSpec
from parallel_pilot.kinds.python.calls import (
    BLOBS_DIR,
    CALLS_FILE,
    FUNCTION_FILE,
    LOAD_ERROR_EXIT,
    RESULTS_FILE,
    SUMMARY_FILE,
)
from parallel_pilot.kinds.python.warm import POOL, WarmRunner

MAX_CHUNKS = 100_000  # tasks (chunks) one python job may have
MAX_CALLS_PER_CHUNK = 1_000_000  # calls one chunk may hold
INLINE_RESULT_BYTES = 48 * 1024  # results up to this size travel inside the task's result
MAX_RESULTS_BYTES = 4 * 1024**3  # bytes of one chunk's pickled results (its only output)
INLINE_CALLS_CHARS = -(-INLINE_CALLS_BYTES // 3) * 4  # calls_data's base64 at most
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NO_MODULE = re.compile(r"No module named '([^']+)'")


class Chunk(BaseModel):
    """One task: ``count`` calls of ``functions[function]``, at ``offset``/``length`` of the
    calls blob, using the shared argument blobs ``blobs`` (indexes into ``shared``)."""

    model_config = ConfigDict(extra="forbid")

    function: int = Field(ge=0)
    offset: int = Field(ge=0)
    length: int = Field(ge=1)
    count: int = Field(ge=1, le=MAX_CALLS_PER_CHUNK)
    blobs: list[int] = Field(default_factory=list)


class PythonParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    functions: list[str] = Field(min_length=1, max_length=1000,
                                 description="SHA-256 of each cloudpickled function")
    calls: str | None = Field(default=None,
                              description="SHA-256 of the calls blob (the chunks end to end)")
    calls_data: str | None = Field(
        default=None, max_length=INLINE_CALLS_CHARS,
        description=f"the calls themselves, base64 (at most {INLINE_CALLS_BYTES} bytes), "
                    "instead of a calls blob")
    chunks: list[Chunk] = Field(min_length=1, max_length=MAX_CHUNKS)
    shared: list[str] = Field(default_factory=list, max_length=10_000,
                              description="SHA-256 of large arguments uploaded once")
    python: str = Field(pattern=r"^\d+\.\d+$", description="the client's Python major.minor")
    packages: list[str] = Field(default_factory=list, max_length=200,
                                description="modules the function needs on the worker")
    timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_TASK_SECONDS)
    session: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$", description=(
        "a random key of the client's Executor: a worker reuses one child process for "
        "the tasks of all jobs that carry it"))

    @field_validator("functions", "shared")
    @classmethod
    def _shas(cls, value: list[str]) -> list[str]:
        for sha in value:
            check_sha256(sha)
        return value

    @field_validator("calls")
    @classmethod
    def _calls(cls, value: str | None) -> str | None:
        return None if value is None else check_sha256(value)

    @field_validator("calls_data")
    @classmethod
    def _calls_data(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except ValueError:
                raise ValueError("calls_data is not base64") from None
        return value

    def inline_calls(self) -> bytes | None:
        """The calls carried in the parameters (None: they are the ``calls`` blob)."""
        return None if self.calls_data is None else base64.b64decode(self.calls_data)

    @field_validator("packages")
    @classmethod
    def _packages(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _MODULE_NAME.match(name) or len(name) > 200:
                raise ValueError(f"{name!r} is not a Python module name (like numpy or "
                                 "scipy.integrate)")
        return value

    @model_validator(mode="after")
    def _indexes(self) -> PythonParams:
        if (self.calls is None) == (self.calls_data is None):
            raise ValueError("give the calls either as a blob (calls) or inline "
                             "(calls_data), one of the two")
        inline = self.inline_calls()
        for i, chunk in enumerate(self.chunks):
            if inline is not None and chunk.offset + chunk.length > len(inline):
                raise ValueError(f"chunk {i} ends at byte {chunk.offset + chunk.length}; "
                                 f"calls_data holds {len(inline)}")
            if chunk.function >= len(self.functions):
                raise ValueError(f"chunk {i} names function {chunk.function}; there are "
                                 f"{len(self.functions)}")
            bad = [b for b in chunk.blobs if not 0 <= b < len(self.shared)]
            if bad:
                raise ValueError(f"chunk {i} names shared blob {bad[0]}; there are "
                                 f"{len(self.shared)}")
        return self


def _chunk_of(payload: dict[str, Any], ctx: RunContext) -> bytes:
    """The task's chunk of calls: leased with it, or read from the job's calls blob."""
    if payload.get("calls_data") is not None:
        return base64.b64decode(str(payload["calls_data"]))
    with open(ctx.input_path("calls"), "rb") as f:
        f.seek(int(payload["offset"]))
        return f.read(int(payload["length"]))


def missing_packages(packages: list[str]) -> list[str]:
    """Those of ``packages`` this interpreter cannot import (found without importing)."""
    missing = []
    for name in packages:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def check_interpreter(payload: dict[str, Any]) -> None:
    """Refuse (not retryable) a task this worker's Python cannot run."""
    wanted = str(payload.get("python", ""))
    here = python_version()
    if wanted != here:
        raise InvalidInput(
            f"the function was pickled by Python {wanted} and this worker runs Python {here}; "
            "cloudpickled functions only load in the same major.minor version"
        )
    missing = missing_packages(list(payload.get("packages", [])))
    if missing:
        raise InvalidInput(
            f"this worker lacks the Python package(s) the function needs: "
            f"{', '.join(missing)} (No module named {missing[0]!r})"
        )


class PythonKind:
    name: ClassVar[str] = "python"
    params_model: ClassVar[type[BaseModel]] = PythonParams
    in_process: ClassVar[bool] = False

    def input_blobs(self, params: BaseModel) -> dict[str, str]:
        assert isinstance(params, PythonParams)
        blobs = {} if params.calls is None else {"calls": params.calls}
        blobs.update({f"function-{i}": sha for i, sha in enumerate(params.functions)})
        blobs.update({f"shared-{i}": sha for i, sha in enumerate(params.shared)})
        return blobs

    def check_inputs(self, params: BaseModel,
                     read_prefix: Callable[[str, int], bytes]) -> BaseModel:
        return params

    def plan(self, params: BaseModel) -> list[TaskSpec]:
        assert isinstance(params, PythonParams)
        specs = []  # what every chunk shares stays in the job (shared_payload)
        total = sum(chunk.count for chunk in params.chunks)
        first = 1  # calls are numbered 1..total in the order they were made
        inline = params.inline_calls()
        for i, chunk in enumerate(params.chunks):
            inputs = {"function": params.functions[chunk.function]}
            payload: dict[str, Any] = {"chunk": i, "offset": chunk.offset,
                                       "length": chunk.length, "count": chunk.count}
            if inline is None:
                inputs["calls"] = str(params.calls)
            else:  # the task's own chunk only
                payload["calls_data"] = base64.b64encode(
                    inline[chunk.offset:chunk.offset + chunk.length]).decode()
            inputs.update({f"{BLOBS_DIR}/{params.shared[b]}": params.shared[b]
                           for b in chunk.blobs})
            specs.append(TaskSpec(name=calls_name(first, chunk.count, total), payload=payload,
                                  inputs=inputs))
            first += chunk.count
        return specs

    def max_output_bytes(self, payload: dict[str, Any], default: int) -> int:
        """A chunk uploads one file, its calls' pickled results."""
        return MAX_RESULTS_BYTES

    def shared_payload(self, params: dict[str, Any]) -> dict[str, Any]:
        """What each chunk's task is leased with besides its calls, from the job's
        parameters (as stored): the interpreter, packages, time limit and session."""
        return {key: params.get(key) for key in ("python", "packages", "timeout_seconds",
                                                 "session")}

    def run(self, task: TaskLease, ctx: RunContext) -> dict[str, Any]:
        payload = task.payload
        check_interpreter(payload)
        reuse = str(payload.get("session") or f"job-{task.job_id}")
        runner = POOL.take(reuse, bool(ctx.sandbox), ctx.workdir.parent, ctx.gpus)
        try:
            return self._run_in(runner, task, ctx)
        finally:
            POOL.give_back(runner)  # closed (not reused) when it was stopped or died

    def _run_in(self, runner: WarmRunner, task: TaskLease, ctx: RunContext) -> dict[str, Any]:
        payload = task.payload
        name = f"{task.task_id}-{task.attempt}"
        task_dir = runner.task_dir(name)
        try:
            ctx.copy_input("function", ctx.workdir / FUNCTION_FILE)
            shutil.copyfile(ctx.workdir / FUNCTION_FILE, task_dir / FUNCTION_FILE)
            chunk = _chunk_of(payload, ctx)
            if len(chunk) != int(payload["length"]):
                raise InvalidInput("the calls blob is shorter than the task's chunk")
            (task_dir / CALLS_FILE).write_bytes(chunk)
            for input_name in task.inputs:
                shared = runner.dir / input_name
                if input_name.startswith(BLOBS_DIR + "/") and not shared.exists():
                    shared.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(ctx.input_path(input_name), shared)
            outcome = runner.run(name, log=ctx.log, stop_event=ctx.stop_event,
                                 timeout_seconds=payload.get("timeout_seconds"))
            if outcome.stopped:
                return {}
            if outcome.timed_out:
                raise InvalidInput(f"the calls ran past the time limit of "
                                   f"{payload.get('timeout_seconds')} s")
            if outcome.status == LOAD_ERROR_EXIT:
                raise InvalidInput(load_failure(outcome.stderr))
            results = task_dir / RESULTS_FILE
            if outcome.status != 0 or not results.is_file():
                tail = "\n".join(outcome.stderr.strip().splitlines()[-15:])
                raise RuntimeError(f"the Python child process ended (exit code "
                                   f"{outcome.exited}, status {outcome.status}) without "
                                   f"results\n{tail}".rstrip())
            return self._result(payload, ctx, task_dir)
        finally:
            shutil.rmtree(task_dir, ignore_errors=True)

    def _result(self, payload: dict[str, Any], ctx: RunContext,
                task_dir: Path) -> dict[str, Any]:
        summary = json.loads((task_dir / SUMMARY_FILE).read_text())
        result: dict[str, Any] = {"count": int(summary["count"]),
                                  "errors": int(summary["errors"]),
                                  "seconds": float(summary["seconds"]),
                                  "python": platform.python_version()}  # the worker's
        results = task_dir / RESULTS_FILE
        if results.stat().st_size <= INLINE_RESULT_BYTES:
            result["results"] = base64.b64encode(results.read_bytes()).decode()
        else:
            kept = ctx.workdir / RESULTS_FILE  # outlives the task folder while uploading
            shutil.copyfile(results, kept)
            result["results_blob"] = ctx.upload_output(f"results/{payload['chunk']}.pkl", kept)
        return result

    def finalize(self, params: BaseModel, tasks: list[FinishedTask]) -> dict[str, bytes]:
        return {}


def calls_name(first: int, count: int, total: int) -> str:
    """A task's name from the calls it runs, numbered from 1 as users count them:
    ``call 7 of 100``, ``calls 1-5 of 100``."""
    if count == 1:
        return f"call {first} of {total}"
    return f"calls {first}-{first + count - 1} of {total}"


def load_failure(stderr: str) -> str:
    """The reason a child could not load the function: names a missing module plainly."""
    missing = _NO_MODULE.search(stderr)
    first = next((line for line in stderr.splitlines() if line.strip()), "")
    if missing:
        return (f"this worker lacks the Python module {missing.group(1)!r} that the "
                f"function needs (declare it with requirements=(...) in Executor); {first}")
    return first or "the function or its arguments could not be loaded on this worker"
