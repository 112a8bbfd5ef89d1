"""Worker loss is not task failure; a failure that repeats fails fast (issue 15).

* ``tasks.losses``: how often the task's lease was lost through no report of its own (the
  worker vanished and the lease expired, it was revoked, left, restarted, or the answer
  granting it never arrived). ``tasks.failures`` keeps counting only failures the task's
  attempts reported; ``tasks.attempt`` stays the lease number (fencing token), one up per
  lease whatever ended the last. Past ``max_losses`` the task fails saying so.
* ``failure_reasons``: per failed attempt, the normalised reason (``core.reasons``) and the
  voice that reported it (``services.trust.voice``); the same reason from two voices fails
  the task at once (a scene error) instead of burning through every attempt.

Only a column and a table are added (no table rebuilt), so 0006's triggers stay.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.Double


def upgrade() -> None:
    op.add_column("tasks", sa.Column("losses", sa.Integer, nullable=False,
                                     server_default="0"))
    op.create_table(
        "failure_reasons",
        sa.Column("task_id", Id, primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("job_id", Id, nullable=False),
        sa.Column("worker_id", Id, nullable=False),
        sa.Column("voice", sa.String(40), nullable=False),
        sa.Column("reason_key", sa.String(64), nullable=False),
        sa.Column("at", Time, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("failure_reasons")
    # not batch_alter_table: on SQLite that rebuilds tasks and drops 0006's triggers
    # (SQLite >= 3.35 drops a plain column in place)
    op.execute("ALTER TABLE tasks DROP COLUMN losses")
