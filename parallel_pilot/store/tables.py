"""Table definitions (SQLAlchemy Core). The schema itself is created by alembic migrations
in ``store/migrations``; keep the two in step."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# BIGINT keys on PostgreSQL/MariaDB; SQLite needs INTEGER for its rowid autoincrement
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.Double  # seconds since the epoch, UTC

users = sa.Table(
    "users", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
    sa.Column("password_hash", sa.String(255)),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", Time, nullable=False),
)

api_tokens = sa.Table(
    "api_tokens", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=False, default=""),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("expires_at", Time),
    sa.Column("revoked_at", Time),
)

join_tokens = sa.Table(
    "join_tokens", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=False, default=""),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("expires_at", Time),
    sa.Column("uses_left", sa.Integer),
    sa.Column("revoked_at", Time),
    # workers joining with it wait for an admin's approval (workers.pending)
    sa.Column("approval_required", sa.Boolean, nullable=False, default=False,
              server_default=sa.false()),
    sa.Column("max_slots", sa.Integer),  # slots a worker joining with it gets at most
)

workers = sa.Table(
    "workers", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("capabilities", sa.JSON, nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("last_seen", Time, nullable=False),
    sa.Column("left_at", Time),
    sa.Column("revoked_at", Time),
    sa.Column("tasks_done", sa.Integer, nullable=False, default=0),
    sa.Column("join_token_id", Id),  # its identity beyond this row (migration 0008)
    sa.Column("slots", sa.Integer),  # slots the coordinator allows it (None: older rows)
    sa.Column("trusted", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("pending", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("paused_until", Time),  # no new tasks until then (failure reports too fast)
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("owner_id", Id, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("state", sa.String(20), nullable=False, index=True),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("started_at", Time),
    sa.Column("finished_at", Time),
    sa.Column("error", sa.Text),
    sa.Column("tasks_total", sa.Integer, nullable=False, default=0),
    sa.Column("tasks_done", sa.Integer, nullable=False, default=0),
    # how many of its tasks are in each state, kept by triggers on tasks (migration 0006)
    *(sa.Column(f"count_{state}", sa.Integer, nullable=False, default=0, server_default="0")
      for state in ("blocked", "ready", "leased", "done", "failed", "cancelled")),
    # the Idempotency-Key of the submission that made the job: a retried submit finds it
    sa.Column("idempotency_key", sa.String(100)),
    sa.Index("uq_jobs_owner_idempotency_key", "owner_id", "idempotency_key", unique=True),
)

tasks = sa.Table(
    "tasks", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("job_id", Id, sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("requirements", sa.JSON),  # core.requirements.Requirements, or NULL
    sa.Column("deps_left", sa.Integer, nullable=False, default=0),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("failures", sa.Integer, nullable=False, default=0),  # reported by its attempts
    # leases lost through no report of its own (worker vanished, revoked, left, restarted)
    sa.Column("losses", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("worker_id", Id),
    sa.Column("lease_expires_at", Time),
    sa.Column("progress", sa.Double),
    sa.Column("message", sa.String(1000)),
    sa.Column("error", sa.Text),
    sa.Column("result", sa.JSON),
    sa.Column("started_at", Time),  # its first lease
    sa.Column("finished_at", Time),
    sa.Column("leased_at", Time),  # its current attempt's lease (migration 0014)
    # quorum: ready once this many deps are done and the deadline (deadline_seconds after
    # the first dep is done, set then in deadline_at) passed, or all deps settled
    sa.Column("quorum", sa.Integer),
    sa.Column("deadline_seconds", sa.Double),
    sa.Column("deadline_at", Time),
    # left out by its dependent's quorum (late or failed): does not hold up the job
    sa.Column("skipped", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("affinity", sa.String(200)),  # a worker that did a task of the same key prefers it
    # requirement_sets.id of its requirements; 0: none (every worker meets them)
    sa.Column("requirement_set_id", Id, nullable=False, default=0, server_default="0"),
    # jobs.owner_id, copied at insert: a claim reads each user's queue apart (fair share)
    sa.Column("owner_id", Id, nullable=False, default=0, server_default="0"),
    sa.UniqueConstraint("job_id", "idx", name="uq_tasks_job_idx"),
    sa.Index("ix_tasks_claim", "state", sa.text("priority DESC"), "id"),
    sa.Index("ix_tasks_lease", "state", "lease_expires_at"),
    sa.Index("ix_tasks_deadline", "state", "deadline_at"),  # quorum deadlines (reaper)
    sa.Index("ix_tasks_worker", "worker_id"),
    sa.Index("ix_tasks_job_state", "job_id", "state"),
    # a claim: one short range per (kind, requirement set, owner) the worker can take, in
    # the owner's order (migration 0011)
    sa.Index("ix_tasks_fair", "state", "kind", "requirement_set_id", "owner_id",
             sa.text("priority DESC"), "job_id", "id"),
)

requirement_sets = sa.Table(  # each distinct set of task requirements, once
    "requirement_sets", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),  # SHA-256 of canonical
    sa.Column("requirements", sa.JSON, nullable=False),  # canonical: no defaults, tags sorted
    # the same requirements as columns the claim matches a worker against in SQL
    # (store.queries.matching; migration 0012); 0 / NULL / false: no such requirement
    sa.Column("gpu_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("min_vram_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("gpu_vendor", sa.String(20)),
    sa.Column("min_ram_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("min_cpu_cores", sa.Integer, nullable=False, server_default="0"),
    sa.Column("min_blender_key", sa.BigInteger),  # core.requirements.version_key; 0: any
    sa.Column("sandbox", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("render_gpu", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("cycles_device", sa.String(20)),
)

requirement_set_tags = sa.Table(  # the tags a requirement set asks for, one row each
    "requirement_set_tags", metadata,
    sa.Column("set_id", Id, sa.ForeignKey("requirement_sets.id"), primary_key=True),
    sa.Column("tag", sa.String(200), primary_key=True),
)

task_deps = sa.Table(
    "task_deps", metadata,
    sa.Column("task_id", Id, sa.ForeignKey("tasks.id"), primary_key=True),
    sa.Column("depends_on_id", Id, sa.ForeignKey("tasks.id"), primary_key=True),
    sa.Index("ix_task_deps_depends_on", "depends_on_id"),
)

task_outputs = sa.Table(
    "task_outputs", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("job_id", Id, sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("task_id", Id),  # NULL for job-level outputs made when the job completes
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("path", sa.String(500), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created_at", Time, nullable=False),
)

task_logs = sa.Table(
    "task_logs", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("job_id", Id, nullable=False),
    sa.Column("task_id", Id, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", Time, nullable=False),
    sa.Column("line", sa.Text, nullable=False),
    sa.Index("ix_task_logs_job", "job_id", "id"),
    sa.Index("ix_task_logs_task", "task_id", "id"),
)

blobs = sa.Table(
    "blobs", metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("user_id", Id),
    sa.Column("worker_id", Id),
)

blob_readers = sa.Table(  # users who may read a blob: every user who uploaded its bytes
    "blob_readers", metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("user_id", Id, primary_key=True),
)

attempt_uploads = sa.Table(  # what a worker uploaded for an attempt it held: its outputs
    "attempt_uploads", metadata,
    sa.Column("task_id", Id, primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("worker_id", Id, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.Index("ix_attempt_uploads_worker", "worker_id", "sha256"),
)

worker_job_failures = sa.Table(
    "worker_job_failures", metadata,
    sa.Column("worker_id", Id, primary_key=True),
    sa.Column("job_id", Id, primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False, default=0),
)

login_tries = sa.Table(  # password logins tried per (client address, user name) and window
    "login_tries", metadata,
    sa.Column("login_key", sa.String(64), primary_key=True),  # SHA-256 of address and name
    sa.Column("tries", sa.Integer, nullable=False),
    sa.Column("window_start", Time, nullable=False),
    sa.Index("ix_login_tries_window_start", "window_start"),
)

token_job_failures = sa.Table(  # failed attempts per (join token, job): see migration 0008
    "token_job_failures", metadata,
    sa.Column("join_token_id", Id, primary_key=True),
    sa.Column("job_id", Id, primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
)

nonretryable_reports = sa.Table(  # attempts whose worker said a retry cannot help
    "nonretryable_reports", metadata,
    sa.Column("task_id", Id, primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("job_id", Id, nullable=False),
    sa.Column("worker_id", Id, nullable=False),
    sa.Column("identity", sa.String(40), nullable=False),  # whose word: see services.trust
    sa.Column("at", Time, nullable=False),
)

failure_reasons = sa.Table(  # each failed attempt's normalised reason (core.reasons)
    "failure_reasons", metadata,
    sa.Column("task_id", Id, primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("job_id", Id, nullable=False),
    sa.Column("worker_id", Id, nullable=False),
    sa.Column("voice", sa.String(40), nullable=False),  # who reported it: services.trust.voice
    sa.Column("reason_key", sa.String(64), nullable=False),
    sa.Column("at", Time, nullable=False),
)

rate_counts = sa.Table(  # events per (scope, subject, window): services.rates
    "rate_counts", metadata,
    sa.Column("scope", sa.String(40), primary_key=True),
    sa.Column("subject", Id, primary_key=True),
    sa.Column("window_start", Time, primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)
