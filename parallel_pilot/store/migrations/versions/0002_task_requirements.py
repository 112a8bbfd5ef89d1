"""Tasks carry requirements (Blender version, RAM, GPU, tags) matched at claim time.

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


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("requirements")
