"""The job-kind plugin protocol: validate parameters, plan tasks, run a task, gather results.

A kind is one module exposing one object that satisfies ``Kind``. The coordinator calls
``parse_params``, ``input_blobs``, ``plan`` and ``finalize`` (pure, no I/O); the worker calls
``run`` with a ``RunContext`` that owns all I/O (blob cache, heartbeats, uploads).

Optional: ``max_output_bytes(payload, default)``, the bytes one output of a task with that
payload may have (a render chunk's frames, a python chunk's results); the coordinator
refuses a bigger upload for the attempt (413). Without it, ``default`` (the coordinator's
``max_output_bytes``) applies; see ``output_limit``.

What every task of a job shares (a sweep's command, a python job's interpreter) is stored
once, in the job's parameters, not in each task: a kind that plans tasks carrying only
their own part defines ``shared_payload(params) -> dict`` (params as stored, JSON), and
the payload a worker leases is ``task_payload(kind, params, own)``: the shared part with
the task's own over it. Kinds without the hook keep their whole payload in each task.

A kind whose tasks are runs of equal units of work (a render chunk's frames) may let the
coordinator cut a task as it is leased (``coordinator/services/chunking.py``): it defines
``work_units(payload) -> int`` (the units of a task the coordinator may cut; 0 for one it
may not) and ``split(payload, units) -> (head, rest)``, two ``TaskPart``s: the first
``units`` units, which the leased attempt keeps, and the rest, a new task of the job with
the same inputs. ``work_units`` and ``split_task`` below call them; kinds without them
keep their tasks whole. Such a kind may also name its units, so the coordinator learns
what each costs (``coordinator/services/chunk_costs.py``): ``unit_keys(payload) ->
list[int]`` (a render chunk's frame numbers, in order; neighbouring keys cost alike) and
``output_unit(path) -> int | None`` (the unit an output reports done: ``frames/0012.png``
-> 12), called through ``unit_keys`` and ``output_unit`` below. The same kind may say
which outputs a task may report (``allows_output(payload, path) -> bool``, see
``allows_output``): a cut attempt reports only its own units.

A result is what a worker says, and workers are strangers: a kind whose results the
coordinator reads in SQL (a sweep's exit code) defines ``clean_result(result) -> dict``,
which ``clean_result(kind, result)`` applies before a result is stored, so a value of the
wrong type cannot break a read for everyone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ValidationError

from parallel_pilot.core.protocol import TaskLease
from parallel_pilot.errors import InvalidInput

MAX_TASK_SECONDS = 30 * 86400.0  # the longest time limit a job may give its tasks (30 days)


@dataclass
class TaskSpec:
    """One task a plan asks for; ``depends_on`` holds indexes of earlier specs in the plan."""

    name: str
    payload: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    depends_on: list[int] = field(default_factory=list)
    requirements: dict[str, Any] = field(default_factory=dict)  # core.requirements fields
    # ready once ``quorum`` deps are done and ``deadline_seconds`` passed since the first
    # was (coordinator/services/quorum.py); None: wait for all deps
    quorum: int | None = None
    deadline_seconds: float | None = None
    affinity: str | None = None  # a worker prefers tasks whose key matches ones it did


@dataclass(frozen=True)
class TaskPart:
    """One side of a cut task (``split``): the name users see and the payload."""

    name: str
    payload: dict[str, Any]


@dataclass
class FinishedTask:
    """What ``finalize`` sees of each task of a completed job, in plan order."""

    index: int
    name: str
    payload: dict[str, Any]
    result: dict[str, Any]


class RunContext(Protocol):
    """What a running task may do; the worker implements it, tests use a fake."""

    workdir: Path
    stop_event: threading.Event
    # the worker runs commands in a sandbox (kinds.sandbox): no network, only workdir writable
    sandbox: bool
    # Blender runs in the render sandbox (kinds.render.sandbox); it hides private_paths
    render_sandbox: bool
    private_paths: tuple[Path, ...]  # the worker's folders a sandboxed task must not see
    # the worker's GPUs this attempt may use (): none, a CPU task; None: no worker assigns
    # GPUs here); children get them through ``kinds.gpu_env.with_gpus``
    gpus: tuple[int, ...] | None

    def input_path(self, name: str) -> Path:
        """A read-only path to an input file (in the worker's blob cache)."""
        ...

    def copy_input(self, name: str, dest: Path) -> Path:
        """Copy an input into ``dest`` (a path inside the working directory)."""
        ...

    def link_input(self, name: str, dest: Path) -> Path:
        """Put an input at ``dest`` (inside the working directory) without copying where
        the file system allows (a hard link to the cached blob, read-only); else a copy."""
        ...

    def job_outputs(self, prefix: str = "") -> dict[str, str]:
        """Outputs of this task's job so far (path -> SHA-256), e.g. under ``frames/``."""
        ...

    def fetch_blob(self, sha256: str) -> Path:
        """A read-only local path to any blob, fetched through the worker's cache."""
        ...

    def progress(self, fraction: float | None, message: str | None = None) -> None: ...

    def log(self, line: str) -> None: ...

    def upload_output(self, path: str, file: Path) -> str:
        """Upload ``file`` as the job output ``path``; returns its SHA-256."""
        ...


class Kind(Protocol):
    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]
    # True for trivial built-in kinds that run inside the worker process itself
    in_process: ClassVar[bool]

    def input_blobs(self, params: BaseModel) -> dict[str, str]:
        """Every blob (name -> SHA-256) the job needs; the coordinator checks they exist."""
        ...

    def check_inputs(self, params: BaseModel,
                     read_prefix: Callable[[str, int], bytes]) -> BaseModel:
        """At submit, look at the first bytes of input blobs (``read_prefix(sha, n)``) to
        refuse wrong files early; may return the parameters completed from them."""
        ...

    def plan(self, params: BaseModel) -> list[TaskSpec]: ...

    def run(self, task: TaskLease, ctx: RunContext) -> dict[str, Any]: ...

    def finalize(self, params: BaseModel, tasks: list[FinishedTask]) -> dict[str, bytes]:
        """Job-level output files (path -> content) made from the finished tasks."""
        ...


def output_limit(kind: Kind, payload: dict[str, Any], default: int) -> int:
    """Bytes one output of a task of ``kind`` with ``payload`` may have: the kind's own
    bound (``max_output_bytes``) where it has one, never more than ``default``."""
    bound = getattr(kind, "max_output_bytes", None)
    if bound is None:
        return default
    return min(default, int(bound(payload, default)))


def task_payload(kind: Kind, job_params: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """The payload a worker leases: the kind's ``shared_payload`` of the job's parameters
    with the task's own payload over it (a task stored before the split has it all)."""
    shared = shared_payload(kind, job_params)
    return {**shared, **own} if shared else own


def shared_payload(kind: Kind, job_params: dict[str, Any]) -> dict[str, Any]:
    """What every task of the job carries, taken from its parameters; {} for a kind whose
    tasks hold their whole payload."""
    hook: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(kind, "shared_payload",
                                                                      None)
    return hook(job_params) if hook is not None else {}


def clean_result(kind: Kind, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` as the kind stores it (its ``clean_result`` hook, if it has one)."""
    hook: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(kind, "clean_result",
                                                                      None)
    return hook(result) if hook is not None else result


def parse_params(kind: Kind, raw: dict[str, Any]) -> BaseModel:
    """Validate a user's parameters, turning pydantic's errors into one readable message."""
    try:
        return kind.params_model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"invalid {kind.name} parameters: {describe_validation(exc)}") from None


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)  # a check of the whole model
    return "; ".join(parts)


def work_units(kind: Kind, payload: dict[str, Any]) -> int:
    """Units of work of a task the coordinator may cut (the kind's ``work_units``); 0 for
    a task or a kind it may not."""
    hook: Callable[[dict[str, Any]], int] | None = getattr(kind, "work_units", None)
    return int(hook(payload)) if hook is not None else 0


def split_task(kind: Kind, payload: dict[str, Any],
               units: int) -> tuple[TaskPart, TaskPart] | None:
    """The task cut after its first ``units`` units (the kind's ``split``), or None when
    it has no more than that, or cannot be cut."""
    hook: Callable[[dict[str, Any], int], tuple[TaskPart, TaskPart]] | None = \
        getattr(kind, "split", None)
    if hook is None or not 0 < units < work_units(kind, payload):
        return None
    return hook(payload, units)


def unit_keys(kind: Kind, payload: dict[str, Any]) -> list[int] | None:
    """The keys of a cuttable task's units, in order (the kind's ``unit_keys``); None
    for a kind that does not name its units."""
    hook: Callable[[dict[str, Any]], list[int]] | None = getattr(kind, "unit_keys", None)
    return None if hook is None else [int(k) for k in hook(payload)]


def output_unit(kind: Kind, path: str) -> int | None:
    """The unit whose output ``path`` is (the kind's ``output_unit``); None when it
    reports no unit, or the kind does not say."""
    hook: Callable[[str], int | None] | None = getattr(kind, "output_unit", None)
    return None if hook is None else hook(path)


def allows_output(kind: Kind, payload: dict[str, Any], path: str) -> bool:
    """Whether an attempt of a task with ``payload`` may report an output at ``path`` (the
    kind's ``allows_output``; every path for kinds without one)."""
    hook: Callable[[dict[str, Any], str], bool] | None = getattr(kind, "allows_output", None)
    return True if hook is None else bool(hook(payload, path))
