"""Settings of each process, read once at its entry point from flags and ``PILOT_*``
environment variables. Nothing else in the project reads ``os.environ``."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 8330  # coordinator HTTP port
DEFAULT_LEASE_SECONDS = 60.0  # seconds a lease lasts without a heartbeat
DEFAULT_HEARTBEAT_SECONDS = 3.0  # seconds between a worker's heartbeats for one task
DEFAULT_REAPER_SECONDS = 2.0  # seconds between sweeps for expired leases
DEFAULT_LONG_POLL_SECONDS = 30.0  # seconds a lease request waits for a task at most
DEFAULT_MAX_ATTEMPTS = 3  # failed attempts its workers reported before a task fails
DEFAULT_MAX_LOSSES = 20  # leases lost with the worker (vanished, left, revoked) before a task fails
DEFAULT_REPEAT_FAILURE_VOICES = 2  # voices reporting one failure reason that fail a task at once
DEFAULT_WORKER_BLOCK_FAILURES = 3  # failures of one job after which a worker is kept off it
DEFAULT_OFFLINE_SECONDS = 90.0  # seconds of silence after which a worker is shown offline
DEFAULT_MAX_LOG_LINE = 4000  # characters kept of one log line
DEFAULT_CACHE_BYTES = 10 * 1024**3  # bytes a worker's blob cache may hold
DEFAULT_SLOTS = 1  # tasks a worker runs at once
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024**3  # bytes one uploaded blob may have
# bytes one output a worker uploads for an attempt may have, unless its kind bounds it
# lower (kinds.base.output_limit: a render frame, a python chunk's results)
DEFAULT_MAX_OUTPUT_BYTES = 20 * 1024**3
# bytes of one JSON or form request body (a sync of many results, a job's parameters);
# uploads have max_upload_bytes instead
DEFAULT_MAX_BODY_BYTES = 128 * 1024**2
DEFAULT_BODY_STALL_SECONDS = 30.0  # seconds a request body may stop arriving before a 408
# seconds a task of a job the coordinator cuts (a render without a chunk size) should
# take on its worker, start-up included (coordinator/services/chunking.py)
DEFAULT_CHUNK_SECONDS = 600.0
DEFAULT_MAX_TASKS_PER_JOB = 100_000  # tasks one job may plan
DEFAULT_MAX_LOG_BYTES_PER_TASK = 10 * 1024**2  # log characters kept per task (all attempts)
DEFAULT_SESSION_SECONDS = 12 * 3600.0  # seconds a web session (login cookie) lasts
DEFAULT_LOGIN_MAX_FAILURES = 5  # failed logins per (client IP, user name) and window
DEFAULT_LOGIN_WINDOW_SECONDS = 300.0  # seconds over which failed logins are counted
DEFAULT_MAX_PREFETCH = 64  # tasks a worker may hold beyond its slots (sync's prefetch)
DEFAULT_MAX_WORKER_SLOTS = 64  # slots a worker is given at most, whatever it claims
DEFAULT_JOIN_TOKEN_BLOCK_FAILURES = 6  # failures of one job by one join token's untrusted workers
DEFAULT_NONRETRYABLE_AGREEMENT = 2  # identities that must say "a retry cannot help" to end a task
DEFAULT_JOIN_TOKEN_REGISTRATIONS_PER_MINUTE = 60  # new workers one join token may register a minute
DEFAULT_WORKER_FAILURES_PER_MINUTE = 30  # failure reports a minute before a worker is paused
# backup copies of stragglers (coordinator/services/stragglers.py)
DEFAULT_BACKUP_FACTOR = 1.5  # how far behind (x the job's median task time) an attempt must be
DEFAULT_BACKUP_AFTER_SECONDS = 600.0  # seconds an attempt runs before a backup, none finished yet
DEFAULT_BACKUP_MIN_SECONDS = 60.0  # seconds an attempt runs before it may get a backup at all


class CoordinatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PILOT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path("pilot-data")
    # text: lines for people; json: one object a line with request, job, user and worker
    # ids, and an access line per request (coordinator/log_context.py)
    log_format: Literal["text", "json"] = "text"
    database_url: str | None = None
    lease_seconds: float = Field(default=DEFAULT_LEASE_SECONDS, gt=0)
    heartbeat_seconds: float = Field(default=DEFAULT_HEARTBEAT_SECONDS, gt=0)
    reaper_seconds: float = Field(default=DEFAULT_REAPER_SECONDS, gt=0)
    long_poll_seconds: float = Field(default=DEFAULT_LONG_POLL_SECONDS, ge=0)
    # tasks a worker may hold beyond its registered slots, whatever prefetch it asks
    max_prefetch: int = Field(default=DEFAULT_MAX_PREFETCH, ge=0)
    # an API event stream (GET /jobs/{id}/events) lasts at most this; clients reconnect
    max_event_stream_seconds: float = Field(default=3600.0, gt=0)
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    # a lease lost with its worker (lease expired, revoked, left, restarted) uses no
    # attempt; this many losses of one task fail it (services.losses)
    max_losses: int = Field(default=DEFAULT_MAX_LOSSES, ge=1)
    # the same normalised failure reason from this many voices fails a task with
    # attempts left (a scene error; services.trust.weigh_failure)
    repeat_failure_voices: int = Field(default=DEFAULT_REPEAT_FAILURE_VOICES, ge=2)
    worker_block_failures: int = Field(default=DEFAULT_WORKER_BLOCK_FAILURES, ge=1)
    # what a worker may do to a job and to the farm (docs/security.md): the slots a worker
    # is given at most; failures of a job by the untrusted workers of one join token that
    # keep them all off it; how many identities (join tokens) must agree that a retry
    # cannot help before a task fails with attempts left (a trusted worker's word is
    # enough); registrations per join token and failure reports per worker, a minute
    max_worker_slots: int = Field(default=DEFAULT_MAX_WORKER_SLOTS, ge=1, le=64)
    join_token_block_failures: int = Field(default=DEFAULT_JOIN_TOKEN_BLOCK_FAILURES, ge=1)
    nonretryable_agreement: int = Field(default=DEFAULT_NONRETRYABLE_AGREEMENT, ge=1)
    join_token_registrations_per_minute: int = Field(
        default=DEFAULT_JOIN_TOKEN_REGISTRATIONS_PER_MINUTE, ge=1)
    worker_failures_per_minute: int = Field(default=DEFAULT_WORKER_FAILURES_PER_MINUTE, ge=1)
    backup_copies: bool = True  # idle workers take backup copies of a job's stragglers
    backup_factor: float = Field(default=DEFAULT_BACKUP_FACTOR, ge=1.0)
    backup_after_seconds: float = Field(default=DEFAULT_BACKUP_AFTER_SECONDS, gt=0)
    backup_min_seconds: float = Field(default=DEFAULT_BACKUP_MIN_SECONDS, ge=0)
    offline_seconds: float = Field(default=DEFAULT_OFFLINE_SECONDS, gt=0)
    max_upload_bytes: int = Field(default=DEFAULT_MAX_UPLOAD_BYTES, ge=1)
    max_output_bytes: int = Field(default=DEFAULT_MAX_OUTPUT_BYTES, ge=1)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    body_stall_seconds: float = Field(default=DEFAULT_BODY_STALL_SECONDS, gt=0)
    max_tasks_per_job: int = Field(default=DEFAULT_MAX_TASKS_PER_JOB, ge=1)
    chunk_seconds: float = Field(default=DEFAULT_CHUNK_SECONDS, gt=0)
    max_log_bytes_per_task: int = Field(default=DEFAULT_MAX_LOG_BYTES_PER_TASK, ge=0)
    session_seconds: float = Field(default=DEFAULT_SESSION_SECONDS, gt=0)
    # Secure flag of the session cookies; None (auto): set unless the request is plain
    # http to 127.0.0.1 / localhost
    cookie_secure: bool | None = None
    login_max_failures: int = Field(default=DEFAULT_LOGIN_MAX_FAILURES, ge=1)
    login_window_seconds: float = Field(default=DEFAULT_LOGIN_WINDOW_SECONDS, gt=0)
    # addresses (or networks, 10.0.0.0/8) of reverse proxies whose X-Forwarded-For and
    # X-Forwarded-Proto are believed; none by default: the peer's address is the client's
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"trusted proxy {entry!r} is not an IP address or "
                                 "network (e.g. 127.0.0.1, 10.0.0.0/8)") from None
        return [entry.strip() for entry in value]

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pilot.db').resolve()}"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PILOT_", extra="ignore")

    server: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    join_token: str = ""
    name: str | None = None
    slots: int = Field(default=DEFAULT_SLOTS, ge=1, le=64)
    # volunteer safety: kinds that run arbitrary commands (sweep) are off unless allowed
    allow: list[str] = Field(default_factory=lambda: ["render"])
    blender: str | None = None  # a Blender executable to render with (default: bpy or PATH)
    cache_dir: Path | None = None
    cache_bytes: int = Field(default=DEFAULT_CACHE_BYTES, ge=0)
    work_dir: Path | None = None
    tags: list[str] = Field(default_factory=list)
    # GPUs told by hand instead of detected: N[:MEM[:VENDOR]],... (core.requirements.parse_gpus)
    gpus: str | None = None
    drain_seconds: float = Field(default=10.0, ge=0)  # grace for running tasks on SIGTERM
    sandbox: bool = False  # run sweep commands inside bwrap (kinds.sandbox)
    # run Blender inside bwrap for render tasks where bwrap works (kinds.render.sandbox)
    render_sandbox: bool = True


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PILOT_", extra="ignore")

    server: str | None = None
    token: str | None = None
    config_file: Path = Path.home() / ".config" / "parallel-pilot" / "config.json"
