"""The schema in ``store/tables.py`` and the one the migrations build agree (tables,
columns, defaults, keys, indexes with their order), on SQLite; and migration 0005 gives
existing tasks the requirement sets the running code would give them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from parallel_pilot.store.database import MIGRATIONS_DIR, make_engine, migrate
from parallel_pilot.store.queries import sync as qs
from parallel_pilot.store.tables import metadata


def _normal_sql(sql: str | None) -> str:
    return re.sub(r"\s+", " ", (sql or "").replace('"', "")).strip().lower()


def describe(engine: sa.Engine) -> dict[str, Any]:
    """Everything about the schema a query depends on, comparably."""
    inspector = sa.inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        if table == "alembic_version":
            continue
        out[table] = {
            "columns": {c["name"]: (str(c["type"]), c["nullable"],
                                    _normal_sql(c.get("default")).strip("'"))
                        for c in inspector.get_columns(table)},
            "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
            "unique": sorted(tuple(u["column_names"])
                             for u in inspector.get_unique_constraints(table)),
            "foreign keys": sorted((tuple(f["constrained_columns"]), f["referred_table"])
                                   for f in inspector.get_foreign_keys(table)),
        }
    with engine.connect() as conn:  # index SQL keeps the column order and DESC
        for table, name, sql in conn.exec_driver_sql(
                "SELECT tbl_name, name, sql FROM sqlite_master WHERE type = 'index' "
                "AND sql IS NOT NULL"):
            out.setdefault(table, {}).setdefault("indexes", {})[name] = _normal_sql(sql)
    return out


def test_tables_and_migrations_agree(tmp_path: Path) -> None:
    migrated = make_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    migrate(migrated)
    declared = sa.create_engine(f"sqlite:///{tmp_path / 'declared.db'}")
    metadata.create_all(declared)
    a, b = describe(migrated), describe(declared)
    assert sorted(a) == sorted(b)
    for table in a:
        for aspect in a[table]:
            assert a[table][aspect] == b[table].get(aspect), f"{table}: {aspect} differ"
    assert "ix_tasks_fair" in a["tasks"]["indexes"]
    migrated.dispose()
    declared.dispose()


def test_migration_0005_gives_existing_tasks_their_requirement_sets(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")
    requirements: list[Any] = [None, {}, {"gpu": True}, {"tags": ["b", "a"]},
                               {"tags": ["a", "b"], "gpu": False}, {"gpu": False},
                               {"min_blender": "4.2", "sandbox": True}]
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (id, name, is_admin, disabled, created_at) "
                             "VALUES (1, 'u', 0, 0, 0)")
        conn.exec_driver_sql(
            "INSERT INTO jobs (id, owner_id, name, kind, params, state, priority, "
            "max_attempts, created_at, tasks_total, tasks_done) "
            "VALUES (1, 1, 'j', 'sleep', '{}', 'queued', 0, 3, 0, 7, 0)")
        tasks = sa.table("tasks", *(sa.column(c) for c in (
            "id", "job_id", "idx", "name", "kind", "state", "priority", "payload", "inputs",
            "deps_left", "attempt", "failures", "max_attempts")),
            sa.column("requirements", sa.JSON))
        conn.execute(tasks.insert(), [
            {"id": i + 1, "job_id": 1, "idx": i, "name": f"t{i}", "kind": "sleep",
             "state": "ready", "priority": 0, "payload": "{}", "inputs": "{}", "deps_left": 0,
             "attempt": 0, "failures": 0, "max_attempts": 3, "requirements": r}
            for i, r in enumerate(requirements)])
    migrate(engine)
    with engine.begin() as conn:
        got = dict(conn.exec_driver_sql(
            "SELECT id, requirement_set_id FROM tasks ORDER BY id").all())
        sets = dict(conn.exec_driver_sql("SELECT id, digest FROM requirement_sets").all())
        assert len(sets) == 3  # gpu; tags a, b (either order); min_blender + sandbox
        assert [got[i] for i in (1, 2, 6)] == [0, 0, 0]  # none, empty, only defaults
        assert got[4] == got[5] != got[3]
        # the code that inserts new tasks finds the same sets, adding none
        assert qs.requirement_set_ids(conn, requirements) == [got[i + 1] for i in
                                                                  range(len(requirements))]
        assert conn.exec_driver_sql("SELECT count(*) FROM requirement_sets").scalar() == 3
    engine.dispose()


def test_migration_0011_gives_existing_tasks_their_owner_and_keeps_the_counts(
        tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0010")  # the one before fair share
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (id, name, is_admin, disabled, created_at) "
                             "VALUES (7, 'u', 0, 0, 0)")
        conn.exec_driver_sql(
            "INSERT INTO jobs (id, owner_id, name, kind, params, state, priority, "
            "max_attempts, created_at, tasks_total, tasks_done, count_ready) "
            "VALUES (1, 7, 'j', 'sleep', '{}', 'queued', 0, 3, 0, 1, 0, 1)")
        conn.exec_driver_sql(
            "INSERT INTO tasks (id, job_id, idx, name, kind, state, priority, payload, "
            "inputs, deps_left, attempt, failures, max_attempts) "
            "VALUES (1, 1, 0, 't', 'sleep', 'ready', 0, '{}', '{}', 0, 0, 0, 3)")
    migrate(engine)
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT owner_id FROM tasks").scalar() == 7
        conn.exec_driver_sql("UPDATE tasks SET state = 'leased'")  # 0006's trigger counts it
        assert conn.exec_driver_sql(
            "SELECT count_ready, count_leased FROM jobs").one() == (0, 1)
    engine.dispose()
