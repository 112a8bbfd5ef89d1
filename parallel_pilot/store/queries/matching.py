"""Capability matching in SQL: a requirement set's columns (written with the set) and
the one statement that picks the sets a worker meets, from its capabilities bound as
parameters (its GPUs as a small derived table). It is ``core.requirements.shortfalls``
said in SQL; ``tests/integration/test_matching.py`` checks the two agree on random
requirement and capability pairs."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from parallel_pilot.core.protocol import Capabilities
from parallel_pilot.core.requirements import (
    GPU_VENDORS,
    MAX_GPU_COUNT,
    Requirements,
    gpu_vendor,
    gpus_held_by,
    version_key,
)
from parallel_pilot.core.states import TaskState
from parallel_pilot.store.queries._common import _chunks
from parallel_pilot.store.tables import jobs, requirement_set_tags, requirement_sets, tasks

_b = sa.bindparam
rs, rst = requirement_sets, requirement_set_tags


def set_columns(requirements: Mapping[str, Any]) -> dict[str, Any]:
    """The matching columns of a requirement set (canonical requirements dict)."""
    r = Requirements.model_validate(dict(requirements))
    blender = None if not r.min_blender else (version_key(r.min_blender) or 0)
    return {"gpu_count": r.gpus_needed, "min_vram_bytes": r.min_vram_bytes or 0,
            "gpu_vendor": r.gpu_vendor, "min_ram_bytes": r.min_ram_bytes or 0,
            "min_cpu_cores": r.min_cpu_cores or 0, "min_blender_key": blender,
            "sandbox": r.sandbox, "render_gpu": r.render_gpu,
            "cycles_device": r.cycles_device}


def insert_set(conn: sa.Connection, digest: str, requirements: Mapping[str, Any]) -> None:
    """One requirement set with its columns and tags."""
    set_id = conn.execute(rs.insert().values(
        digest=digest, requirements=dict(requirements),
        **set_columns(requirements))).inserted_primary_key[0]  # type: ignore[index]
    tags = sorted(set(requirements.get("tags") or []))
    if tags:
        conn.execute(rst.insert(), [{"set_id": set_id, "tag": t} for t in tags])


def worker_terms(caps: Capabilities, trusted: bool) -> tuple[Any, ...]:
    """What of a worker the match reads, as one hashable value (equal for workers that
    meet the same sets: ``FitCache`` keys on it)."""
    gpus = tuple(sorted(((g.memory_bytes or 0), VENDOR_CODES.get(gpu_vendor(g), 0))
                        for g in caps.gpus[:MAX_GPU_COUNT]))
    return (caps.ram_bytes, caps.cpu_cores, version_key(caps.blender_version),
            bool(caps.sandbox and trusted),  # a sandbox is believed only of the trusted
            any(d.type != "CPU" for d in caps.render_devices),
            tuple(sorted({d.type for d in caps.render_devices})),
            gpus, tuple(sorted(set(caps.tags))))


# vendors as small integers in the GPUs' derived table (no string collations to mix on
# MariaDB); 0: a GPU whose vendor its name does not say
VENDOR_CODES: dict[str | None, int] = {v: i + 1 for i, v in enumerate(GPU_VENDORS)}
_VENDOR_CODE = sa.case({v: c for v, c in VENDOR_CODES.items() if v}, value=rs.c.gpu_vendor,
                       else_=-1)


@functools.lru_cache(maxsize=MAX_GPU_COUNT + 1)
def _fitting_statement(n_gpus: int) -> sa.Select:
    if n_gpus:
        rows = [sa.select(sa.cast(_b(f"m{i}"), sa.BigInteger).label("mem"),
                          sa.cast(_b(f"v{i}"), sa.Integer).label("vendor"))
                for i in range(n_gpus)]
        gpus = (sa.union_all(*rows) if n_gpus > 1 else rows[0]).subquery("g")
    else:  # a derived table with no rows
        gpus = (sa.select(sa.literal(0, sa.BigInteger).label("mem"),
                          sa.literal(0, sa.Integer).label("vendor"))
                .where(sa.false())).subquery("g")
    fitting_gpus = (sa.select(sa.func.count()).select_from(gpus)
                    .where(gpus.c.mem >= rs.c.min_vram_bytes,
                           sa.or_(rs.c.gpu_vendor.is_(None), gpus.c.vendor == _VENDOR_CODE))
                    .scalar_subquery())
    return (sa.select(rs.c.id)
            .where(rs.c.id > _b("after"), rs.c.id <= _b("upto"),
                   rs.c.min_ram_bytes <= _b("ram"),
                   rs.c.min_cpu_cores <= _b("cores"),
                   sa.or_(rs.c.min_blender_key.is_(None), rs.c.min_blender_key <= _b("blender")),
                   sa.or_(rs.c.sandbox == sa.false(), _b("sandbox_ok") == 1),
                   sa.or_(rs.c.render_gpu == sa.false(), _b("render_gpu") == 1),
                   sa.or_(rs.c.cycles_device.is_(None),
                          rs.c.cycles_device.in_(_b("devices", expanding=True))),
                   sa.or_(rs.c.gpu_count == 0, fitting_gpus >= rs.c.gpu_count),
                   ~sa.exists().where(rst.c.set_id == rs.c.id,
                                      rst.c.tag.not_in(_b("tags", expanding=True))))
            .order_by(rs.c.id))


def fitting_set_ids(conn: sa.Connection, terms: tuple[Any, ...], *, after: int,
                    upto: int) -> list[int]:
    """The ids in (after, upto] of the sets a worker (``worker_terms``) meets."""
    ram, cores, blender, sandbox_ok, render_gpu, devices, gpus, tags = terms
    params: dict[str, Any] = {
        "after": after, "upto": upto, "ram": ram, "cores": cores,
        "blender": -1 if blender is None else blender, "sandbox_ok": int(sandbox_ok),
        "render_gpu": int(render_gpu), "devices": list(devices), "tags": list(tags)}
    for i, (memory, vendor) in enumerate(gpus):
        params[f"m{i}"], params[f"v{i}"] = memory, vendor
    return list(conn.execute(_fitting_statement(len(gpus)), params).scalars())


_MAX_SET = sa.select(sa.func.coalesce(sa.func.max(rs.c.id), 0))


def max_set_id(conn: sa.Connection) -> int:
    return int(conn.execute(_MAX_SET).scalar_one())


_GPUS_HELD = (sa.select(rs.c.id, rs.c.gpu_count, rs.c.render_gpu, rs.c.cycles_device)
              .where(rs.c.id.in_(sa.bindparam("ids", expanding=True))))


def set_gpus_held(conn: sa.Connection, set_ids: Sequence[int]) -> dict[int, int]:
    """id -> the GPUs a task of the set holds while it runs (``gpus_held_by``); sets
    absent from the result (no requirements) hold none."""
    out: dict[int, int] = {}
    for part in _chunks(sorted(set(set_ids))):
        out.update((i, gpus_held_by(n, bool(render), device))
                   for i, n, render, device in conn.execute(_GPUS_HELD, {"ids": list(part)}))
    return out


def set_requirements(conn: sa.Connection, set_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """id -> canonical requirements of these sets (for explanations)."""
    if not set_ids:
        return {}
    return {i: r for i, r in conn.execute(
        sa.select(rs.c.id, rs.c.requirements).where(rs.c.id.in_(sorted(set(set_ids)))))}


def waiting_sets(conn: sa.Connection, job_ids: Sequence[int]) -> dict[int, int]:
    """job id -> the requirement set of one of its ready tasks (a job's ready tasks mostly
    share one), in one statement: per job a LIMIT 1 read through ``ix_tasks_job_state``,
    whatever the job's size. Jobs with no ready task are left out."""
    one_ready = (sa.select(tasks.c.requirement_set_id)
                 .where(tasks.c.job_id == jobs.c.id, tasks.c.state == TaskState.READY)
                 .limit(1).correlate(jobs).scalar_subquery())
    out: dict[int, int] = {}
    for part in _chunks(sorted(set(job_ids))):
        out.update((j, s) for j, s in conn.execute(
            sa.select(jobs.c.id, one_ready).where(jobs.c.id.in_(part))) if s is not None)
    return out
