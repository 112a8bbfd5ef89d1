"""Backup copies of stragglers (issue 15).

* ``task_copies``: every backup copy of a running task that the coordinator leased to a
  second worker (``services.stragglers``): its own attempt number (the fencing token, one
  up from every number the task used), its worker, its lease expiry, when it started, the
  attempt of the task it backs up (``backs_attempt``: the copy is live while the task is
  leased under that attempt), and once it ended, when and how (``outcome``).
* ``tasks.leased_at``: when the current attempt was leased (``started_at`` is the first
  lease ever): how long the attempt has run, and how long a finished task took.
* ``tasks.last_copy_attempt``: the highest attempt number a copy of the task took (NULL:
  none), so that the next lease of the task takes a number above it.

Only a column and a table are added (no table rebuilt), so 0006's triggers stay.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.Double


def upgrade() -> None:
    op.add_column("tasks", sa.Column("leased_at", Time))
    op.add_column("tasks", sa.Column("last_copy_attempt", sa.Integer))
    op.create_table(
        "task_copies",
        sa.Column("task_id", Id, primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("job_id", Id, nullable=False),
        sa.Column("worker_id", Id, nullable=False),
        sa.Column("backs_attempt", sa.Integer, nullable=False),
        sa.Column("lease_expires_at", Time, nullable=False),
        sa.Column("started_at", Time, nullable=False),
        sa.Column("ended_at", Time),
        sa.Column("outcome", sa.String(20)),
        sa.Index("ix_task_copies_worker", "worker_id", "ended_at"),
        sa.Index("ix_task_copies_job", "job_id"),
        sa.Index("ix_task_copies_open", "ended_at", "lease_expires_at"),
    )


def downgrade() -> None:
    op.drop_table("task_copies")
    # not batch_alter_table: on SQLite that rebuilds tasks and drops 0006's triggers
    # (SQLite >= 3.35 drops a plain column in place)
    op.execute("ALTER TABLE tasks DROP COLUMN leased_at")
    op.execute("ALTER TABLE tasks DROP COLUMN last_copy_attempt")
