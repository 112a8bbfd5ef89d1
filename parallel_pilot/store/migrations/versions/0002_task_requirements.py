"""Tasks carry requirements (Blender version, RAM, GPU, tags) matched at claim time;
an index for counting a job's tasks by state; the claim index in the claim's own order
(priority descending, then id), so a claim reads 8 rows instead of sorting the queue.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("requirements", sa.JSON))
    op.create_index("ix_tasks_job_state", "tasks", ["job_id", "state"])
    op.drop_index("ix_tasks_claim", table_name="tasks")
    op.create_index("ix_tasks_claim", "tasks", ["state", sa.text("priority DESC"), "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_job_state", table_name="tasks")
    op.drop_index("ix_tasks_claim", table_name="tasks")
    op.create_index("ix_tasks_claim", "tasks", ["state", "priority", "id"])
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("requirements")
