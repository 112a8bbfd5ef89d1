"""Tasks carry requirements (Blender version, RAM, GPU, tags) matched at claim time;
an index for counting a job's tasks by state.

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


def downgrade() -> None:
    op.drop_index("ix_tasks_job_state", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("requirements")
