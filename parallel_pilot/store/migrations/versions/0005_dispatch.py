"""Dispatch in SQL (issue 13): each distinct set of task requirements is a row of
``requirement_sets`` (canonical JSON, named by its SHA-256), and every task points at
its set (``requirement_set_id``; 0 is "no requirements", which every worker meets). A
claim then asks for the sets a worker satisfies by id, through ``ix_tasks_dispatch``
(state, kind, set, priority descending, id): one short index range per (kind, set).

Existing tasks are given their set here. On SQLite the claim index gets back the DESC
that 0004's table rebuild dropped.

Revision ID: 0005
Revises: 0004
"""

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BACKFILL_CHUNK = 500  # task ids per UPDATE while backfilling


def _canonical(requirements: Any) -> str | None:
    """The same rule as ``store.queries.sync.canonical_requirements`` (copied, so this
    migration keeps meaning what it meant when the code moves on)."""
    if isinstance(requirements, str):
        requirements = json.loads(requirements)
    if not isinstance(requirements, dict):
        return None
    kept = {k: v for k, v in requirements.items() if v not in (None, False, [], "")}
    if "tags" in kept:
        kept["tags"] = sorted(set(kept["tags"]))
    return json.dumps(kept, sort_keys=True, separators=(",", ":")) if kept else None


def upgrade() -> None:
    op.create_table(
        "requirement_sets",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("requirements", sa.JSON, nullable=False),
    )
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("requirement_set_id", Id, nullable=False,
                                   server_default="0"))
    op.create_index("ix_tasks_dispatch", "tasks",
                    ["state", "kind", "requirement_set_id", sa.text("priority DESC"), "id"])
    # SQLite: 0004's table rebuild (batch mode) recreated the claim index without DESC
    op.drop_index("ix_tasks_claim", table_name="tasks")
    op.create_index("ix_tasks_claim", "tasks", ["state", sa.text("priority DESC"), "id"])
    _backfill()


def _backfill() -> None:
    conn = op.get_bind()
    tasks = sa.table("tasks", sa.column("id", Id), sa.column("requirements", sa.JSON),
                     sa.column("requirement_set_id", Id))
    sets = sa.table("requirement_sets", sa.column("id", Id), sa.column("digest", sa.String),
                    sa.column("requirements", sa.JSON))
    by_canonical: dict[str, list[int]] = {}
    for task_id, requirements in conn.execute(
            sa.select(tasks.c.id, tasks.c.requirements)
            .where(tasks.c.requirements.is_not(None))):
        canonical = _canonical(requirements)
        if canonical is not None:
            by_canonical.setdefault(canonical, []).append(task_id)
    for canonical, ids in by_canonical.items():
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        conn.execute(sets.insert().values(digest=digest, requirements=json.loads(canonical)))
        set_id = conn.execute(sa.select(sets.c.id).where(sets.c.digest == digest)).scalar_one()
        for start in range(0, len(ids), BACKFILL_CHUNK):
            conn.execute(tasks.update().where(tasks.c.id.in_(ids[start:start + BACKFILL_CHUNK]))
                         .values(requirement_set_id=set_id))


def downgrade() -> None:
    op.drop_index("ix_tasks_dispatch", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("requirement_set_id")
    op.drop_table("requirement_sets")
