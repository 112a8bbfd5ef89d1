"""GPU slots (issue 15): ``workers.gpu_slots``, the GPUs the coordinator lets a worker run
tasks on (the GPUs it claims, capped like its slots by the farm's ``max_worker_slots`` and
its join token's ``max_slots``); None on rows from before, which count the GPUs claimed.

Only a column of ``workers`` is added (no table rebuilt), so 0006's triggers on ``tasks``
stay.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("gpu_slots", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("gpu_slots")
