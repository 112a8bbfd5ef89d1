"""The owner on each task, for fair share across users (issue 15).

* ``tasks.owner_id``: the owner of the task's job, copied at insert (a job's owner never
  changes), so a claim reads each user's ready tasks from an index range of its own
  instead of joining every ready task to its job.
* ``ix_tasks_fair`` (state, kind, requirement_set_id, owner_id, priority DESC, job_id, id)
  replaces ``ix_tasks_dispatch``: one short range per (kind, set, owner), read in the order
  of the owner's own queue (higher priority, then older job, then task order).

Only a column is added and indexes swapped (no table rebuild), so 0006's triggers stay.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("tasks", sa.Column("owner_id", Id, nullable=False, server_default="0"))
    op.execute("UPDATE tasks SET owner_id = "
               "(SELECT jobs.owner_id FROM jobs WHERE jobs.id = tasks.job_id)")
    op.drop_index("ix_tasks_dispatch", table_name="tasks")
    op.create_index("ix_tasks_fair", "tasks",
                    ["state", "kind", "requirement_set_id", "owner_id", sa.text("priority DESC"),
                     "job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_fair", table_name="tasks")
    op.create_index("ix_tasks_dispatch", "tasks",
                    ["state", "kind", "requirement_set_id", sa.text("priority DESC"), "id"])
    if op.get_bind().dialect.name == "sqlite":  # no batch rebuild: it would drop 0006's triggers
        op.execute("ALTER TABLE tasks DROP COLUMN owner_id")
    else:
        op.drop_column("tasks", "owner_id")
