"""Who may read a blob as a user: one row per (blob, user) that uploaded its bytes, so a
blob's SHA-256 is no longer a capability (a job may name only blobs its owner may read).
Filled from blobs.user_id, the first uploader of each blob so far.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "blob_readers",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("user_id", Id, primary_key=True),
    )
    op.execute("INSERT INTO blob_readers (sha256, user_id) "
               "SELECT sha256, user_id FROM blobs WHERE user_id IS NOT NULL")


def downgrade() -> None:
    op.drop_table("blob_readers")
