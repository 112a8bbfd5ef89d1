"""Capability matching in SQL (issue 15): a requirement set's requirements as columns
(GPU count, GPU memory and vendor, RAM, CPU cores, Blender version as one integer,
sandbox, a GPU for Cycles, a Cycles device type) and its tags as rows of
``requirement_set_tags``, so that the claim matches a worker's capabilities in SQL
(``store.queries.matching``). Existing sets get their columns from their JSON here.

Revision ID: 0012
Revises: 0011
"""

import json
import re
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_VERSION = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def _version_key(text: str | None) -> int | None:
    """``core.requirements.version_key`` as it was when this was written (copied)."""
    match = _VERSION.search(text or "")
    if not match:
        return None
    a, b, c = (min(int(g or 0), 999) for g in match.groups())
    return (a * 1000 + b) * 1000 + c


def _columns(r: dict[str, Any]) -> dict[str, Any]:
    """``store.queries.matching.set_columns`` for the fields sets had before 0011."""
    return {"gpu_count": 1 if r.get("gpu") else 0,
            "min_ram_bytes": int(r.get("min_ram_bytes") or 0),
            "min_blender_key": (_version_key(r["min_blender"]) or 0)
            if r.get("min_blender") else None,
            "sandbox": bool(r.get("sandbox")), "render_gpu": bool(r.get("render_gpu"))}


def upgrade() -> None:
    with op.batch_alter_table("requirement_sets") as batch:
        batch.add_column(sa.Column("gpu_count", sa.Integer, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("min_vram_bytes", sa.BigInteger, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("gpu_vendor", sa.String(20)))
        batch.add_column(sa.Column("min_ram_bytes", sa.BigInteger, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("min_cpu_cores", sa.Integer, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("min_blender_key", sa.BigInteger))
        batch.add_column(sa.Column("sandbox", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("render_gpu", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("cycles_device", sa.String(20)))
    op.create_table(
        "requirement_set_tags",
        sa.Column("set_id", Id, sa.ForeignKey("requirement_sets.id"), primary_key=True),
        sa.Column("tag", sa.String(200), primary_key=True),
    )
    conn = op.get_bind()
    sets = sa.table("requirement_sets", sa.column("id", Id), sa.column("requirements", sa.JSON),
                    *(sa.column(c) for c in ("gpu_count", "min_ram_bytes", "min_blender_key",
                                             "sandbox", "render_gpu")))
    tags = sa.table("requirement_set_tags", sa.column("set_id", Id), sa.column("tag"))
    for set_id, requirements in list(conn.execute(sa.select(sets.c.id, sets.c.requirements))):
        r = json.loads(requirements) if isinstance(requirements, str) else requirements
        conn.execute(sets.update().where(sets.c.id == set_id).values(**_columns(r)))
        names = sorted({str(t)[:200] for t in r.get("tags") or []})
        if names:
            conn.execute(tags.insert(), [{"set_id": set_id, "tag": t} for t in names])


def downgrade() -> None:
    op.drop_table("requirement_set_tags")
    with op.batch_alter_table("requirement_sets") as batch:
        for column in ("cycles_device", "render_gpu", "sandbox", "min_blender_key",
                       "min_cpu_cores", "min_ram_bytes", "gpu_vendor", "min_vram_bytes",
                       "gpu_count"):
            batch.drop_column(column)
