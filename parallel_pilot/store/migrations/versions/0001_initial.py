"""The first schema: users, tokens, workers, jobs, tasks, outputs, logs, blobs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.Double


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
        sa.Column("password_hash", sa.String(255)),
        sa.Column("disabled", sa.Boolean, nullable=False, default=False),
        sa.Column("created_at", Time, nullable=False),
    )

    op.create_table(
        "api_tokens",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(100), nullable=False, default=""),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("expires_at", Time),
        sa.Column("revoked_at", Time),
    )

    op.create_table(
        "join_tokens",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(100), nullable=False, default=""),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("expires_at", Time),
        sa.Column("uses_left", sa.Integer),
        sa.Column("revoked_at", Time),
    )

    op.create_table(
        "workers",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("capabilities", sa.JSON, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("last_seen", Time, nullable=False),
        sa.Column("left_at", Time),
        sa.Column("revoked_at", Time),
        sa.Column("tasks_done", sa.Integer, nullable=False, default=0),
    )

    op.create_table(
        "jobs",
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
    )

    op.create_table(
        "tasks",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("job_id", Id, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, default=0),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("inputs", sa.JSON, nullable=False),
        sa.Column("deps_left", sa.Integer, nullable=False, default=0),
        sa.Column("attempt", sa.Integer, nullable=False, default=0),
        sa.Column("failures", sa.Integer, nullable=False, default=0),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("worker_id", Id),
        sa.Column("lease_expires_at", Time),
        sa.Column("progress", sa.Double),
        sa.Column("message", sa.String(1000)),
        sa.Column("error", sa.Text),
        sa.Column("result", sa.JSON),
        sa.Column("started_at", Time),
        sa.Column("finished_at", Time),
        sa.UniqueConstraint("job_id", "idx", name="uq_tasks_job_idx"),
        sa.Index("ix_tasks_claim", "state", "priority", "id"),
        sa.Index("ix_tasks_lease", "state", "lease_expires_at"),
        sa.Index("ix_tasks_worker", "worker_id"),
    )

    op.create_table(
        "task_deps",
        sa.Column("task_id", Id, sa.ForeignKey("tasks.id"), primary_key=True),
        sa.Column("depends_on_id", Id, sa.ForeignKey("tasks.id"), primary_key=True),
        sa.Index("ix_task_deps_depends_on", "depends_on_id"),
    )

    op.create_table(
        "task_outputs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("job_id", Id, sa.ForeignKey("jobs.id"), nullable=False, index=True),
        sa.Column("task_id", Id),  # NULL for job-level outputs made when the job completes
        sa.Column("attempt", sa.Integer, nullable=False, default=0),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", Time, nullable=False),
    )

    op.create_table(
        "task_logs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("job_id", Id, nullable=False),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", Time, nullable=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.Index("ix_task_logs_job", "job_id", "id"),
        sa.Index("ix_task_logs_task", "task_id", "id"),
    )

    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("user_id", Id),
        sa.Column("worker_id", Id),
    )

    op.create_table(
        "worker_job_failures",
        sa.Column("worker_id", Id, primary_key=True),
        sa.Column("job_id", Id, primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False, default=0),
    )

def downgrade() -> None:
    op.drop_table("worker_job_failures")
    op.drop_table("blobs")
    op.drop_table("task_logs")
    op.drop_table("task_outputs")
    op.drop_table("task_deps")
    op.drop_table("tasks")
    op.drop_table("jobs")
    op.drop_table("workers")
    op.drop_table("join_tokens")
    op.drop_table("api_tokens")
    op.drop_table("users")
