"""Adaptive render chunks (issue 15): when the current attempt of a task was leased.

* ``tasks.leased_at``: the coordinator's clock when the task's current attempt was leased
  (``started_at`` keeps the first lease). A finished attempt took ``finished_at -
  leased_at`` on the coordinator's clock, lease to report, which is what
  ``coordinator/services/chunking.py`` learns a worker's speed on a job from; NULL for
  tasks leased before this migration (they teach nothing).

Only a column is added (no table rebuilt), so 0006's triggers stay.

Revision ID: 0014
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("leased_at", sa.Double))


def downgrade() -> None:
    # not batch_alter_table: on SQLite that rebuilds tasks and drops 0006's triggers
    op.execute("ALTER TABLE tasks DROP COLUMN leased_at")
