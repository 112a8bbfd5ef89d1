"""Job task counts kept on the job row, and idempotent job submission (issue 13).

* ``jobs.count_<state>`` for each task state: how many of the job's tasks are in it. Tasks
  inserted are counted by the statement that inserts them (``insert_tasks``, one UPDATE
  per job); every later state change or delete is counted by triggers on ``tasks`` in the
  same transaction, whoever writes it (the query modules, the worker exchange's bulk
  statements, an operator's SQL). A read of a job then costs the same with 10 tasks or
  100,000 (no aggregate over its tasks). SQLite and MariaDB count per row; PostgreSQL per
  statement, from its transition tables, so a bulk write updates each job row once. (An
  insert trigger on SQLite doubled the time to submit 100,000 tasks: 16 s -> 30 s.)
* ``jobs.idempotency_key``: the ``Idempotency-Key`` a client sent with its submission,
  unique per owner, so a submit retried after a lost answer finds the job it made.

Existing jobs get their counts here. Note for later migrations: on SQLite a
``batch_alter_table("tasks")`` that recreates the table drops these triggers; create them
again after it (``_create_triggers``).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# the task states, as they were when this migration was written
STATES = ("blocked", "ready", "leased", "done", "failed", "cancelled")
TRIGGERS = ("tasks_count_update", "tasks_count_delete")
PG_FUNCTIONS = ("pilot_count_tasks_update", "pilot_count_tasks_delete")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for state in STATES:
            batch.add_column(sa.Column(f"count_{state}", sa.Integer, nullable=False,
                                       server_default="0"))
        batch.add_column(sa.Column("idempotency_key", sa.String(100)))
    op.create_index("uq_jobs_owner_idempotency_key", "jobs", ["owner_id", "idempotency_key"],
                    unique=True)
    _backfill()
    _create_triggers(op.get_bind().dialect.name)


def _backfill() -> None:
    counts = ", ".join(
        f"count_{s} = (SELECT COUNT(*) FROM tasks WHERE tasks.job_id = jobs.id "
        f"AND tasks.state = '{s}')" for s in STATES)
    op.execute(f"UPDATE jobs SET {counts}")


def _row_delta(sign_new: str, sign_old: str) -> str:
    """``count_x = count_x + (NEW.state = 'x') - (OLD.state = 'x')`` for each state."""
    parts = []
    for s in STATES:
        delta = "".join(f" {sign} (CASE WHEN {row}.state = '{s}' THEN 1 ELSE 0 END)"
                        for sign, row in ((sign_new, "NEW"), (sign_old, "OLD")) if sign)
        parts.append(f"count_{s} = count_{s}{delta}")
    return ", ".join(parts)


def _create_triggers(dialect: str) -> None:
    if dialect == "postgresql":
        _create_pg_triggers()
        return
    update, delete = _row_delta("+", "-"), _row_delta("", "-")
    if dialect == "sqlite":
        op.execute("CREATE TRIGGER tasks_count_update AFTER UPDATE OF state ON tasks "
                   "WHEN OLD.state IS NOT NEW.state BEGIN "
                   f"UPDATE jobs SET {update} WHERE id = NEW.job_id; END")
        op.execute("CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks BEGIN "
                   f"UPDATE jobs SET {delete} WHERE id = OLD.job_id; END")
        return
    # MariaDB / MySQL: row triggers; an unchanged state leaves the job row alone
    op.execute("CREATE TRIGGER tasks_count_update AFTER UPDATE ON tasks FOR EACH ROW "
               "BEGIN IF NOT (OLD.state <=> NEW.state) THEN "
               f"UPDATE jobs SET {update} WHERE id = NEW.job_id; END IF; END")
    op.execute("CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks FOR EACH ROW "
               f"UPDATE jobs SET {delete} WHERE id = OLD.job_id")


def _pg_sums(source: str) -> str:
    return ", ".join(f"SUM(CASE WHEN state = '{s}' THEN n ELSE 0 END) AS d_{s}"
                     for s in STATES) + f" FROM ({source}) AS moved GROUP BY job_id"


def _create_pg_triggers() -> None:
    """Statement triggers: one UPDATE per job touched, from the rows the statement
    changed or deleted (PostgreSQL's transition tables)."""
    sets = ", ".join(f"count_{s} = jobs.count_{s} + d.d_{s}" for s in STATES)
    changed = " OR ".join(f"d.d_{s} <> 0" for s in STATES)
    sources = {
        "update": "SELECT job_id, state, 1 AS n FROM new_rows "
                  "UNION ALL SELECT job_id, state, -1 AS n FROM old_rows",
        "delete": "SELECT job_id, state, -1 AS n FROM old_rows",
    }
    referencing = {"update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                   "delete": "OLD TABLE AS old_rows"}
    for event, source in sources.items():
        # the job rows are locked in id order first: two bulk writes over the same jobs
        # wait for each other instead of deadlocking
        op.execute(
            f"CREATE FUNCTION pilot_count_tasks_{event}() RETURNS trigger LANGUAGE plpgsql "
            f"AS $$ BEGIN WITH d AS (SELECT job_id, {_pg_sums(source)}), "
            f"locked AS (SELECT jobs.id FROM jobs JOIN d ON jobs.id = d.job_id "
            f"WHERE {changed} ORDER BY jobs.id FOR UPDATE OF jobs) "
            f"UPDATE jobs SET {sets} FROM d WHERE jobs.id = d.job_id "
            f"AND jobs.id IN (SELECT id FROM locked); RETURN NULL; END $$")
        op.execute(
            f"CREATE TRIGGER tasks_count_{event} AFTER {event.upper()} ON tasks "
            f"REFERENCING {referencing[event]} FOR EACH STATEMENT "
            f"EXECUTE FUNCTION pilot_count_tasks_{event}()")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}"
                   + (" ON tasks" if dialect == "postgresql" else ""))
    if dialect == "postgresql":
        for function in PG_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.drop_index("uq_jobs_owner_idempotency_key", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("idempotency_key")
        for state in STATES:
            batch.drop_column(f"count_{state}")
