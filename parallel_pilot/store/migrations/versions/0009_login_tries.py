"""Login tries counted in the database (issue 14): the limiter takes a try with one
conditional UPDATE per login, so concurrent wrong passwords cannot pass the limit, and
several coordinators share one count.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_tries",
        sa.Column("login_key", sa.String(64), primary_key=True),
        sa.Column("tries", sa.Integer, nullable=False),
        sa.Column("window_start", sa.Double, nullable=False),
    )
    op.create_index("ix_login_tries_window_start", "login_tries", ["window_start"])


def downgrade() -> None:
    op.drop_index("ix_login_tries_window_start", table_name="login_tries")
    op.drop_table("login_tries")
