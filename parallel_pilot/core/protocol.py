"""The wire contract: request and response models used by coordinator, worker and SDK alike."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from parallel_pilot.core.states import JobState, TaskState

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
API_PREFIX = "/api/v1"
# a worker's blob upload names the attempt it is an output of: ``<task_id>/<attempt>``
ATTEMPT_HEADER = "X-Pilot-Attempt"
MAX_REPORTED_OUTPUTS = 10_000  # outputs one completion report may name


class Model(BaseModel):
    """Request model: unknown fields are an error, so typos are caught, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Reply(BaseModel):
    """Response model: unknown fields are ignored, so an older worker or SDK keeps working
    with a newer coordinator that answers with more."""

    model_config = ConfigDict(extra="ignore")


def check_sha256(value: str) -> str:
    if not SHA256_RE.match(value):
        raise ValueError("must be a SHA-256 hex digest (64 lowercase hex characters)")
    return value


def attempt_header(task_id: int, attempt: int) -> str:
    """The ``X-Pilot-Attempt`` value of an upload for ``attempt`` of ``task_id``."""
    return f"{task_id}/{attempt}"


def parse_attempt_header(value: str) -> tuple[int, int]:
    """(task_id, attempt) of an ``X-Pilot-Attempt`` value; ValueError if malformed."""
    task, sep, attempt = value.strip().partition("/")
    if not (sep and task.isascii() and task.isdigit() and attempt.isascii()
            and attempt.isdigit() and len(task) <= 19 and len(attempt) <= 9):
        raise ValueError(f"{ATTEMPT_HEADER} must be <task id>/<attempt>, not {value[:40]!r}")
    return int(task), int(attempt)


# ---------------------------------------------------------------- errors


class ErrorBody(Reply):
    error: str
    message: str


# ---------------------------------------------------------------- workers


class Gpu(Model):
    name: str
    memory_bytes: int | None = None


class RenderDevice(Model):
    """A device Cycles on this worker can render on (as its Blender lists them)."""

    type: str = Field(max_length=20, description="CPU, CUDA, OPTIX, HIP, ONEAPI or METAL")
    name: str = Field(max_length=200)
    id: str = Field(default="", max_length=200)
    memory_bytes: int | None = Field(default=None, ge=0)


class Capabilities(Model):
    """What a worker says about itself. Every field is its claim, unchecked: the
    coordinator caps ``slots`` (``WorkerInfo.slots`` is what it allows) and believes
    ``sandbox`` only of a worker an admin marked trusted."""

    cpu_cores: int = Field(ge=1)
    ram_bytes: int = Field(ge=0)
    gpus: list[Gpu] = Field(default_factory=list, max_length=64)
    blender_version: str | None = None
    kinds: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    platform: str = ""
    python: str = ""
    pilot_version: str = ""
    slots: int = Field(default=1, ge=1, le=64)
    sandbox: bool = False  # sweep commands run in bwrap: no network, only workdir writable
    # Blender runs in bwrap for render tasks (on by default where bwrap works)
    render_sandbox: bool = False
    render_devices: list[RenderDevice] = Field(default_factory=list, max_length=64)


class RegisterRequest(Model):
    join_token: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=100)
    capabilities: Capabilities
    # a worker that ran here before under this name sends the id and token it was given,
    # so that it takes its old row back instead of adding one (issue 12)
    worker_id: int | None = Field(default=None, ge=1)
    worker_token: str | None = Field(default=None, min_length=1, max_length=200)


class RegisterResponse(Reply):
    worker_id: int
    worker_token: str
    lease_seconds: float
    heartbeat_seconds: float
    slots: int | None = None  # the slots the coordinator allows (its claim, capped)
    gpu_slots: int | None = None  # the GPUs it may run tasks on (its GPUs, capped)
    pending: bool = False  # waiting for an admin's approval: no tasks until then


class LeaseRequest(Model):
    slots: int = Field(default=1, ge=1, le=64)
    wait_seconds: float = Field(default=30.0, ge=0, le=120)


class TaskLease(Reply):
    """One task handed to a worker under an attempt number (the fencing token)."""

    task_id: int
    attempt: int
    job_id: int
    kind: str
    name: str
    payload: dict[str, Any]
    inputs: dict[str, str] = Field(description="file name -> SHA-256 of the blob to fetch")
    lease_expires_at: float
    heartbeat_seconds: float
    gpus: int = Field(default=0, ge=0, description="GPUs the task's job needs: the worker "
                      "runs it on that many of its GPUs, none of them shared")


class LeaseResponse(Reply):
    tasks: list[TaskLease]


class HeartbeatRequest(Model):
    progress: float | None = Field(default=None, ge=0, le=1)
    message: str | None = Field(default=None, max_length=1000)
    log_lines: list[str] = Field(default_factory=list, max_length=10_000)


class HeartbeatResponse(Reply):
    action: Literal["continue", "stop"]
    reason: str | None = None
    lease_expires_at: float


class OutputRequest(Model):
    """A file an attempt produced, already uploaded as a blob; ``path`` is where it goes
    in the job's download folder (e.g. ``items/7/out/a.csv``)."""

    path: str = Field(min_length=1, max_length=500)
    sha256: str
    size: int = Field(ge=0)

    _check = field_validator("sha256")(check_sha256)

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        parts = value.split("/")
        if value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts):
            raise ValueError("must be a relative path without '..', '.', '\\' or empty parts")
        return value


class CompleteRequest(Model):
    """The attempt's result; ``outputs`` may name files it did not report while running
    (each uploaded for this attempt, or one of its inputs), applied with the result or not
    at all."""

    result: dict[str, Any] = Field(default_factory=dict)
    outputs: list[OutputRequest] = Field(default_factory=list, max_length=MAX_REPORTED_OUTPUTS)
    log_lines: list[str] = Field(default_factory=list, max_length=10_000)


class FailRequest(Model):
    reason: str = Field(min_length=1, max_length=10_000)
    retryable: bool = True
    log_lines: list[str] = Field(default_factory=list, max_length=10_000)


class Ack(Reply):
    ok: bool = True


# ---------------------------------------------------------------- the worker exchange
# ``POST /workers/sync`` (issue 13): one request per round trip carries everything a worker
# has to say (finished attempts, progress and logs of running ones, what it holds, how many
# tasks it wants) and one answer everything the coordinator has for it (new leases, attempts
# to stop, the worker's lease expiry). Every report stays fenced by (task, attempt, worker).

MAX_SYNC_REPORTS = 1000  # attempt reports in one sync request
MAX_SYNC_HELD = 1000  # attempts a worker may list as held in one sync request
MAX_PREFETCH = 256  # tasks a worker may ask to hold beyond its free slots


class AttemptRef(Model):
    task_id: int = Field(ge=1)
    attempt: int = Field(ge=1)


class AttemptReport(Model):
    """What changed for one attempt the worker holds since its last sync.

    ``running``: progress/log of an attempt still running (its lease is renewed by the
    sync itself, so a running attempt with nothing new need not be reported);
    ``completed`` with ``result`` (and ``outputs`` it did not report while running, each
    uploaded for this attempt or one of its inputs: a report naming any other blob is
    refused whole); ``failed`` with ``reason`` (and ``retryable``); ``released``: handed
    back without a failure (shutting down, or not runnable here)."""

    task_id: int = Field(ge=1)
    attempt: int = Field(ge=1)
    outcome: Literal["running", "completed", "failed", "released"]
    result: dict[str, Any] | None = None
    outputs: list[OutputRequest] = Field(default_factory=list, max_length=MAX_REPORTED_OUTPUTS)
    reason: str | None = Field(default=None, max_length=10_000)
    retryable: bool = True
    progress: float | None = Field(default=None, ge=0, le=1)
    message: str | None = Field(default=None, max_length=1000)
    log_lines: list[str] = Field(default_factory=list, max_length=10_000)

    @model_validator(mode="after")
    def _outputs_with_a_result(self) -> AttemptReport:
        if self.outputs and self.outcome != "completed":
            raise ValueError(f"a {self.outcome} report cannot name outputs (only a "
                             "completed one; while running, POST them to the attempt)")
        return self


class SyncRequest(Model):
    """One exchange. ``held`` lists every attempt the worker holds after applying its
    previous answer (running or prefetched, not the ones reported finished here): a task
    leased to the worker that it does not list was lost on the way (an answer that never
    arrived) and is requeued at once. ``free_slots`` + ``prefetch`` is how many tasks it
    would take now of tasks that need no GPU; the coordinator grants at most the worker's
    registered slots plus the prefetch it allows, whatever is asked. Tasks that need GPUs
    come on top, only as many GPUs' worth as are free (never prefetched: the GPUs its
    registration claimed, capped, less those its held attempts need). ``wait_seconds`` > 0
    lets an answer with nothing in it wait (long poll) for new work; ``leaving`` hands back
    everything held and marks the worker gone."""

    reports: list[AttemptReport] = Field(default_factory=list, max_length=MAX_SYNC_REPORTS)
    held: list[AttemptRef] = Field(default_factory=list, max_length=MAX_SYNC_HELD)
    free_slots: int = Field(default=0, ge=0, le=64)
    prefetch: int = Field(default=0, ge=0, le=MAX_PREFETCH)
    # GPUs with no attempt on them (None: a worker that assigns no GPUs); it can only
    # lower what the coordinator grants, which counts the GPUs of held attempts itself
    free_gpus: int | None = Field(default=None, ge=0, le=64)
    wait_seconds: float = Field(default=0.0, ge=0, le=120)
    leaving: bool = False


class ReportVerdict(Reply):
    """The coordinator's answer to one report: ``accepted`` false means the attempt is
    not this worker's any more (fenced: lease lost, job cancelled, already settled); the
    worker drops it either way, it never resends a report that got a verdict."""

    task_id: int
    attempt: int
    accepted: bool
    reason: str | None = None


class AttemptStop(Reply):
    """An attempt the worker listed as held that it must stop (job cancelled, task
    settled elsewhere, lease lost); its result would not be accepted."""

    task_id: int
    attempt: int
    reason: str


class SyncResponse(Reply):
    tasks: list[TaskLease] = Field(default_factory=list)
    verdicts: list[ReportVerdict] = Field(default_factory=list)
    stop: list[AttemptStop] = Field(default_factory=list)
    lease_expires_at: float = Field(
        description="coordinator clock: every attempt this worker holds is its until then")
    sync_seconds: float = Field(
        description="sync at least this often while holding attempts (the heartbeat)")
    lease_seconds: float = Field(description="how long a lease lasts without a sync")
    prefetch_granted: int = Field(
        default=0, description="tasks beyond its slots this worker may hold now")


# ---------------------------------------------------------------- jobs


class JobSubmit(Model):
    kind: str = Field(min_length=1, max_length=40)
    params: dict[str, Any]
    requirements: dict[str, Any] = Field(
        default_factory=dict, description="what every task needs of a worker: min_blender, "
        "min_ram_bytes, min_cpu_cores, gpu, gpu_count, min_vram_bytes, gpu_vendor, "
        "cycles_device, render_gpu, tags, sandbox (see core.requirements)")
    priority: int = Field(default=0, ge=-100, le=100)
    max_attempts: int | None = Field(default=None, ge=1, le=20)
    name: str | None = Field(default=None, max_length=200)


class JobInfo(Reply):
    id: int
    name: str
    kind: str
    state: JobState
    owner: str
    priority: int
    params: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    tasks_total: int
    tasks_done: int
    task_counts: dict[str, int]
    progress: float = Field(description="0..1, counting running tasks' own progress")
    active_workers: int
    eta_seconds: float | None
    # items whose command exited non-zero or could not start (sweeps); None for kinds
    # without items: a "completed" job with failed items says so everywhere (issue 12)
    failed_items: int | None = None
    # whether retrying the failed tasks could help (False when every failure was final)
    retryable: bool = True
    # why a job with ready tasks and none running waits (no online worker fits, none
    # online, ...): "waiting: no online worker has a GPU with >= 8 GiB; ..."; else None
    waiting_reason: str | None = None


class JobList(Reply):
    jobs: list[JobInfo]


class TaskInfo(Reply):
    id: int
    job_id: int
    index: int  # 0-based place in the job's plan; users see task number index + 1
    name: str
    kind: str
    state: TaskState
    attempt: int
    failures: int  # failed attempts its workers reported
    losses: int = 0  # leases lost with their worker (no attempt used: services.losses)
    worker: str | None
    progress: float | None
    message: str | None
    error: str | None
    result: dict[str, Any] | None
    started_at: float | None
    finished_at: float | None


class TaskList(Reply):
    tasks: list[TaskInfo]


MAX_TASKS_CANCELLED = 100_000  # task ids one per-task cancel request may name


class TaskCancel(Model):
    """Cancel some tasks of a job (e.g. the SDK's cancelled futures); the others go on."""

    task_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] = Field(
        min_length=1, max_length=MAX_TASKS_CANCELLED)


class TaskCancelled(Reply):
    cancelled: list[int] = Field(description="the named tasks that were open and are now "
                                 "cancelled; finished ones are left as they are")
    job: JobInfo


class OutputInfo(Reply):
    path: str
    sha256: str
    size: int
    task_id: int | None


class OutputList(Reply):
    outputs: list[OutputInfo]


class LogLine(Reply):
    id: int
    task_id: int
    attempt: int
    at: float
    line: str


class LogList(Reply):
    lines: list[LogLine]


WorkerState = Literal["idle", "busy", "offline", "revoked", "pending"]


class WorkerClaims(Reply):
    """What a worker says it has that the coordinator cannot check, labelled as such:
    ``sandbox`` is believed (a ``sandbox`` requirement leases to it) only when
    ``WorkerInfo.trusted``."""

    sandbox: bool
    render_sandbox: bool
    gpus: int
    render_gpus: int


class WorkerInfo(Reply):
    id: int
    name: str
    state: WorkerState
    capabilities: Capabilities = Field(description="what the worker claims about itself")
    claimed: WorkerClaims | None = None
    trusted: bool = False  # an admin vouched for this worker (pilot workers trust ID)
    slots: int | None = None  # the slots the coordinator allows it (claimed slots capped)
    gpu_slots: int | None = None  # the GPUs it may run GPU tasks on (claimed GPUs capped)
    join_token_id: int | None = None  # the join token it joined with: its identity
    # no new tasks until then: it reported failures faster than the farm allows
    paused_until: float | None = None
    current_tasks: list[int]
    tasks_done: int
    last_seen: float
    created_at: float


class WorkerList(Reply):
    workers: list[WorkerInfo]


class BlobInfo(Reply):
    sha256: str
    size: int


class UserInfo(Reply):
    name: str
    is_admin: bool


class Health(Reply):
    ok: bool
    version: str


# ---------------------------------------------------------------- accounts

USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # letters, digits, . _ - (1-100)
MIN_PASSWORD_CHARS = 8  # shortest password accepted
MAX_PASSWORD_CHARS = 1024  # longest password accepted (argon2 hashes any length; cap the work)
MAX_TOKEN_SECONDS = 10 * 365 * 86400  # longest expiry a token may be given (ten years)

Password = Annotated[str, Field(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)]


class UserCreate(Model):
    name: str = Field(pattern=USER_NAME_PATTERN)
    is_admin: bool = False
    password: Password | None = None


class UserCreated(Reply):
    id: int
    user: str
    token: str  # the user's first API token; shown only this once


class PasswordSet(Model):
    password: Password


class UserSummary(Reply):
    id: int
    name: str
    is_admin: bool
    disabled: bool
    created_at: float


class UserList(Reply):
    users: list[UserSummary]


class TokenCreate(Model):
    name: str = Field(default="", max_length=100)
    expires_seconds: int | None = Field(default=None, ge=1, le=MAX_TOKEN_SECONDS)


class TokenCreated(Reply):
    id: int
    name: str
    token: str  # shown only this once; the coordinator keeps a hash
    expires_at: float | None


class TokenInfo(Reply):
    id: int
    name: str
    created_at: float
    expires_at: float | None
    expired: bool


class TokenList(Reply):
    tokens: list[TokenInfo]


class JoinTokenCreate(Model):
    name: str = Field(default="", max_length=100)
    uses: int | None = Field(default=None, ge=1, le=1_000_000)
    expires_seconds: int | None = Field(default=None, ge=1, le=MAX_TOKEN_SECONDS)
    # workers joining with it get no tasks until an admin approves them
    approval_required: bool = False
    # slots a worker joining with it is given at most (the farm's max_worker_slots too)
    max_slots: int | None = Field(default=None, ge=1, le=64)


class JoinTokenCreated(Reply):
    id: int
    name: str
    token: str  # shown only this once; the coordinator keeps a hash
    uses_left: int | None
    expires_at: float | None
    approval_required: bool = False
    max_slots: int | None = None


JoinTokenState = Literal["active", "used_up", "expired", "revoked"]


class JoinTokenInfo(Reply):
    id: int
    name: str
    created_at: float
    expires_at: float | None
    uses_left: int | None  # None: unlimited
    state: JoinTokenState
    approval_required: bool = False
    max_slots: int | None = None


class JoinTokenList(Reply):
    join_tokens: list[JoinTokenInfo]


# ---------------------------------------------------------------- web sessions


class SessionLogin(Model):
    name: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)


class SessionInfo(Reply):
    user: str
    is_admin: bool


class SessionCreated(SessionInfo):
    csrf_token: str  # also in the pilot_csrf cookie; send it back as X-CSRF-Token
