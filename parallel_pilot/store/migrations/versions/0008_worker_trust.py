"""What a worker may do to a job and to the farm (issue 14).

* ``join_tokens.approval_required``: workers joining with the token wait (``workers.pending``)
  until an admin approves them; ``join_tokens.max_slots``: the most slots a worker joining
  with it is given, whatever it claims.
* ``workers.join_token_id``: the join token a worker joined with, its identity beyond its
  own row (a new registration with the same token is a new row, not a new identity);
  ``workers.slots``: the slots the coordinator allows it (its claim capped at joining);
  ``workers.trusted``: an admin vouched for it (its sandbox claim is believed, its
  ``retryable=false`` is final); ``workers.paused_until``: it gets no new tasks until
  then (it reported failures faster than the per-minute limit).
* ``token_job_failures``: failed attempts per (join token, job), which keep every
  untrusted worker of the token off the job past ``join_token_block_failures``.
* ``nonretryable_reports``: the attempts whose worker said a retry cannot help, with the
  identity it spoke for; a task fails on that word only when enough identities agree.
* ``rate_counts``: counters per (scope, subject, one-minute window) for the rate limits
  on registrations per join token and failure reports per worker.

No table is rebuilt (only columns added), so 0006's triggers on ``tasks`` stay.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.Double


def upgrade() -> None:
    with op.batch_alter_table("join_tokens") as batch:
        batch.add_column(sa.Column("approval_required", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("max_slots", sa.Integer))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("join_token_id", Id))
        batch.add_column(sa.Column("slots", sa.Integer))
        batch.add_column(sa.Column("trusted", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("pending", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("paused_until", Time))
    op.create_table(
        "token_job_failures",
        sa.Column("join_token_id", Id, primary_key=True),
        sa.Column("job_id", Id, primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
    )
    op.create_table(
        "nonretryable_reports",
        sa.Column("task_id", Id, primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("job_id", Id, nullable=False),
        sa.Column("worker_id", Id, nullable=False),
        sa.Column("identity", sa.String(40), nullable=False),
        sa.Column("at", Time, nullable=False),
    )
    op.create_table(
        "rate_counts",
        sa.Column("scope", sa.String(40), primary_key=True),
        sa.Column("subject", Id, primary_key=True),
        sa.Column("window_start", Time, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_counts")
    op.drop_table("nonretryable_reports")
    op.drop_table("token_job_failures")
    with op.batch_alter_table("workers") as batch:
        for column in ("paused_until", "pending", "trusted", "slots", "join_token_id"):
            batch.drop_column(column)
    with op.batch_alter_table("join_tokens") as batch:
        batch.drop_column("max_slots")
        batch.drop_column("approval_required")
