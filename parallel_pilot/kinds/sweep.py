"""``sweep``: a command template run once per item, with attached files in the working
directory; each item's exit code, output and collected files form a table of results.

An item whose command exits non-zero, runs past its time limit or cannot start at all is
a *failed item*: a result (the task is done, never retried), with ``error`` saying why a
command could not start. ``item_failure`` is the one definition of a failed item; the
coordinator counts them with the SQL mirror of it (``store/queries/tasks.py``
``failed_item_counts``)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from parallel_pilot.core.protocol import TaskLease, check_sha256
from parallel_pilot.core.ranges import parse_items
from parallel_pilot.errors import InvalidRange
from parallel_pilot.kinds.base import MAX_TASK_SECONDS, FinishedTask, RunContext, TaskSpec
from parallel_pilot.kinds.gpu_env import with_gpus
from parallel_pilot.kinds.process import run_process
from parallel_pilot.kinds.sandbox import bwrap_argv

MAX_SWEEP_ITEMS = 100_000  # items one sweep job may have
DEFAULT_OUTPUT_CAP = 64 * 1024  # bytes of stdout and of stderr kept per item
MAX_OUTPUT_CAP = 1024 * 1024  # the most a job may ask to keep
ITEM_PLACEHOLDER = "{item}"
NOT_FOUND_EXIT = 127  # the exit code a shell gives a command it cannot find
NOT_EXECUTABLE_EXIT = 126  # ... and one it finds but may not run

_SAFE_ITEM = re.compile(r"^[A-Za-z0-9_.+=@%-][A-Za-z0-9 _.+=@%,:-]{0,199}$")


def check_relative_path(value: str) -> str:
    parts = value.replace("\\", "/").split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in value:
        raise ValueError(f"{value!r} must be a relative path without '..' or empty parts")
    return value


class SweepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(min_length=1, description="argv; {item} is replaced per item")
    items: list[str] | str = Field(description="a list of items, or a range like 1-100")
    files: dict[str, str] = Field(default_factory=dict, description="name in workdir -> SHA-256")
    collect: list[str] = Field(default_factory=list, description="globs of output files")
    timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_TASK_SECONDS)
    output_cap: int = Field(default=DEFAULT_OUTPUT_CAP, ge=0, le=MAX_OUTPUT_CAP)

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("the command is empty")
        if any("\x00" in a for a in value):
            raise ValueError("arguments may not contain NUL bytes")
        return value

    @field_validator("items")
    @classmethod
    def _items(cls, value: list[str] | str) -> list[str]:
        try:
            items = parse_items(value, limit=MAX_SWEEP_ITEMS) if isinstance(value, str) else value
        except InvalidRange as exc:
            raise ValueError(exc.message) from None
        if not items:
            raise ValueError("no items")
        if len(items) > MAX_SWEEP_ITEMS:
            raise ValueError(f"more than {MAX_SWEEP_ITEMS} items")
        if len(set(items)) != len(items):
            raise ValueError("items must be unique")
        for item in items:
            if not _SAFE_ITEM.match(item) or item in (".", ".."):
                raise ValueError(
                    f"item {item!r} may use only letters, digits, spaces and _.+=@%,:- "
                    "(at most 200 characters), since it names a results folder"
                )
        return items

    @field_validator("files")
    @classmethod
    def _files(cls, value: dict[str, str]) -> dict[str, str]:
        for name, sha in value.items():
            check_relative_path(name)
            check_sha256(sha)
        return value

    @field_validator("collect")
    @classmethod
    def _collect(cls, value: list[str]) -> list[str]:
        for pattern in value:
            check_relative_path(pattern)
        return value


class SweepKind:
    name: ClassVar[str] = "sweep"
    params_model: ClassVar[type[BaseModel]] = SweepParams
    in_process: ClassVar[bool] = False

    def input_blobs(self, params: BaseModel) -> dict[str, str]:
        assert isinstance(params, SweepParams)
        return dict(params.files)

    def check_inputs(self, params: BaseModel,
                     read_prefix: Callable[[str, int], bytes]) -> BaseModel:
        return params

    def plan(self, params: BaseModel) -> list[TaskSpec]:
        assert isinstance(params, SweepParams)
        assert isinstance(params.items, list)
        # the command and the rest every item shares stay in the job (shared_payload)
        return [TaskSpec(name=f"item {item}", payload={"item": item},
                         inputs=dict(params.files))
                for item in params.items]

    def shared_payload(self, params: dict[str, Any]) -> dict[str, Any]:
        """What each item's task is leased with besides its item, from the job's
        parameters (as stored): the command and how to run it."""
        return {"command": params["command"], "collect": params.get("collect", []),
                "timeout_seconds": params.get("timeout_seconds"),
                "output_cap": params.get("output_cap", DEFAULT_OUTPUT_CAP)}

    def clean_result(self, result: dict[str, Any]) -> dict[str, Any]:
        """The fields the coordinator counts failed items by (in SQL: ``failed_item_counts``)
        with the types it reads them as, whatever a worker sent: an exit code that is not
        a 32-bit integer is kept as text in ``exit_code_reported`` and counts as failed."""
        out = dict(result)
        code = out.get("exit_code")
        if code is not None and not (type(code) is int and -2**31 <= code < 2**31):
            out["exit_code"], out["exit_code_reported"] = -1, str(code)[:100]
        if "timed_out" in out and type(out["timed_out"]) is not bool:
            out["timed_out"] = bool(out["timed_out"])
        if out.get("error") is not None and not isinstance(out["error"], str):
            out["error"] = str(out["error"])[:1000]
        return out

    def run(self, task: TaskLease, ctx: RunContext) -> dict[str, Any]:
        payload = task.payload
        item = str(payload["item"])
        for name in task.inputs:
            ctx.copy_input(name, ctx.workdir / name)
        argv = [arg.replace(ITEM_PLACEHOLDER, item) for arg in payload["command"]]
        env = with_gpus(os.environ, ctx.gpus)  # only the GPUs given to this attempt
        env.update({"PILOT_ITEM": item, "PILOT_JOB": str(task.job_id),
                    "PILOT_TASK": str(task.task_id)})
        ctx.log(f"$ {' '.join(argv)}")
        problem = start_problem(argv[0], ctx.workdir, env.get("PATH"))
        if problem is not None:
            ctx.log(f"[stderr] cannot run {argv[0]!r}: {problem[1]}")
            return not_started(item, argv[0], *problem)
        if ctx.sandbox:
            # the worker sandboxes: no network, read-only system, only the workdir writable
            argv = bwrap_argv(argv, ctx.workdir)
        proc = run_process(
            argv, cwd=ctx.workdir, env=env, stop_event=ctx.stop_event,
            timeout_seconds=payload.get("timeout_seconds"),
            output_cap=payload.get("output_cap", DEFAULT_OUTPUT_CAP),
            on_stdout=ctx.log, on_stderr=lambda line: ctx.log(f"[stderr] {line}"),
        )
        failed_start = None if proc.stopped else exec_failure(proc.exit_code, proc.stdout,
                                                              proc.stderr)
        if failed_start is not None:  # found here, but e.g. the sandbox does not show it
            return not_started(item, *failed_start)
        files: dict[str, str] = {}
        if not proc.stopped:
            for rel in collect_files(ctx.workdir, payload.get("collect", [])):
                files[rel] = ctx.upload_output(f"items/{item}/{rel}", ctx.workdir / rel)
        return {
            "item": item, "exit_code": proc.exit_code, "stdout": proc.stdout,
            "stderr": proc.stderr, "files": files, "seconds": round(proc.seconds, 3),
            "timed_out": proc.timed_out, "truncated": proc.stdout_truncated
            or proc.stderr_truncated,
        }

    def finalize(self, params: BaseModel, tasks: list[FinishedTask]) -> dict[str, bytes]:
        lines = []
        for task in sorted(tasks, key=lambda t: t.index):
            r = task.result
            row = {
                "item": r.get("item", task.payload.get("item")), "exit_code": r.get("exit_code"),
                "stdout": r.get("stdout", ""), "stderr": r.get("stderr", ""),
                "files": sorted(r.get("files", {})),
            }
            if r.get("timed_out"):
                row["timed_out"] = True
            if r.get("error"):
                row["error"] = r["error"]  # the command could not start
            lines.append(json.dumps(row))
        return {"results.jsonl": ("\n".join(lines) + "\n").encode()}


def collect_files(workdir: Path, patterns: list[str]) -> list[str]:
    """Relative paths of regular files under ``workdir`` matching the globs, never a link
    or anything outside the working directory."""
    root = workdir.resolve()
    found: set[str] = set()
    for pattern in patterns:
        for path in workdir.glob(pattern):
            if path.is_symlink() or not path.is_file():
                continue
            resolved = path.resolve()
            if root not in resolved.parents:
                continue
            found.add(resolved.relative_to(root).as_posix())
    return sorted(found)


def start_problem(program: str, workdir: Path, path: str | None) -> tuple[int, str] | None:
    """Why ``program`` cannot start, as (the exit code a shell gives, what ``execvp``
    says: ``No such file or directory``); None when it can. A name with a ``/`` is looked
    up from the working directory, any other name on ``path`` (the command's ``PATH``)."""
    if "/" in program:
        candidate = workdir / program
        if not candidate.exists():
            return NOT_FOUND_EXIT, "No such file or directory"
        if candidate.is_dir():
            return NOT_EXECUTABLE_EXIT, "Is a directory"
        if not os.access(candidate, os.X_OK):
            return NOT_EXECUTABLE_EXIT, "Permission denied"
        return None
    if shutil.which(program, path=path) is None:
        return NOT_FOUND_EXIT, "No such file or directory"
    return None


# the one line of stderr when bwrap, or Popen in kinds/process.py, could not exec the command
_EXEC_FAILURE = re.compile(r"(?:bwrap: execvp (?P<bwrap>.+?)|cannot run '(?P<popen>.+?)'): "
                           r"(?P<why>[^\n]+)\n?")


def exec_failure(exit_code: int, stdout: str, stderr: str) -> tuple[str, int, str] | None:
    """(program, exit code, reason) when a command that was found could not be executed
    after all (e.g. a program the sandbox does not show); None when it ran."""
    match = _EXEC_FAILURE.fullmatch(stderr)
    if match is None or stdout or exit_code == 0:
        return None
    why = match.group("why")
    code = NOT_FOUND_EXIT if "No such file" in why else NOT_EXECUTABLE_EXIT
    return match.group("bwrap") or match.group("popen"), code, why


def not_started(item: str, program: str, exit_code: int, why: str) -> dict[str, Any]:
    """The result of an item whose command could not start: a result, not a task failure
    (every worker would be given the same command line), with ``error`` saying why."""
    return {"item": item, "exit_code": exit_code, "stdout": "",
            "stderr": f"cannot run {program!r}: {why}\n", "files": {}, "seconds": 0.0,
            "timed_out": False, "truncated": False, "error": f"{program}: {why}"}


def item_failure(result: dict[str, Any] | None) -> str | None:
    """How an item failed, in a few words (``exit 2``, ``timed out``, ``could not start:
    nosuchcmd: No such file or directory``); None for an item that exited 0 (or has no
    result yet)."""
    if not result:
        return None
    if result.get("error"):
        return f"could not start: {result['error']}"
    if result.get("timed_out"):
        return "timed out"
    code = result.get("exit_code")
    if code not in (0, None):
        return f"exit {code}"
    return None
