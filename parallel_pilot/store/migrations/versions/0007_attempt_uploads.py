"""Upload grants per attempt (issue 14): one row per blob a worker uploaded for an attempt
it held then (``X-Pilot-Attempt``), so an output report is accepted only for bytes that
worker sent for that attempt (or the attempt's own inputs), never for any blob whose hash
it learned. Blobs uploaded by workers before this migration have no grant: reports naming
them are refused, which only concerns attempts running across the upgrade.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "attempt_uploads",
        sa.Column("task_id", Id, primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("worker_id", Id, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_attempt_uploads_worker", "attempt_uploads", ["worker_id", "sha256"])


def downgrade() -> None:
    op.drop_index("ix_attempt_uploads_worker", table_name="attempt_uploads")
    op.drop_table("attempt_uploads")
