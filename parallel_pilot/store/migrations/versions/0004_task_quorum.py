"""Quorum dependencies and worker affinity of tasks: a task may become ready once a quorum
of its dependencies is done and a deadline passed (training rounds); dependencies left out
that way are marked skipped; an affinity key lets a worker prefer tasks like the ones it
did before (a training shard whose optimiser state it keeps).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("quorum", sa.Integer))
        batch.add_column(sa.Column("deadline_seconds", sa.Double))
        batch.add_column(sa.Column("deadline_at", sa.Double))
        batch.add_column(sa.Column("skipped", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("affinity", sa.String(200)))
    op.create_index("ix_tasks_deadline", "tasks", ["state", "deadline_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_deadline", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        for name in ("affinity", "skipped", "deadline_at", "deadline_seconds", "quorum"):
            batch.drop_column(name)
