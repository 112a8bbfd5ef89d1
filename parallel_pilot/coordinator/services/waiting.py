"""A job's ``waiting_reason``: for a job with ready tasks and none leased, why no online
worker takes them (``core.waiting.explain`` over the online workers' capabilities).
Cheap by construction: nothing is read for a job that has a task leased or none ready;
for a list of jobs the online workers are read once, one ready task per job stands for
its requirements (one statement for the list), and jobs alike are explained once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sqlalchemy as sa

from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.core.protocol import Capabilities
from parallel_pilot.core.requirements import Requirements
from parallel_pilot.core.states import JobState, TaskState
from parallel_pilot.core.waiting import OnlineWorker, explain
from parallel_pilot.store.queries import matching as qm
from parallel_pilot.store.queries import workers as qw

MAX_EXPLAINED = 100  # jobs of one list whose waiting is explained (the rest get None)


def waiting_reasons(conn: sa.Connection, svc: Services, rows: Sequence[sa.Row],
                    counts: Mapping[int, Mapping[str, int]]) -> dict[int, str]:
    """job id -> why it waits, for the jobs of ``rows`` that wait on no worker."""
    waiting = [r for r in rows if r.state in (JobState.QUEUED, JobState.RUNNING)
               and not counts.get(r.id, {}).get(TaskState.LEASED)
               and counts.get(r.id, {}).get(TaskState.READY)][:MAX_EXPLAINED]
    if not waiting:
        return {}
    online = _alike(qw.online_workers(conn, svc.clock() - svc.settings.offline_seconds))
    ready = qm.waiting_sets(conn, [r.id for r in waiting])
    sets = qm.set_requirements(conn, [s for s in ready.values() if s])
    said: dict[tuple[str, int], str | None] = {}  # jobs alike are explained once
    out: dict[int, str] = {}
    for row in waiting:
        set_id = ready.get(row.id)
        if set_id is None:
            continue
        key = (row.kind, set_id)  # a job's tasks are of its kind
        if key not in said:
            needs = Requirements.model_validate(sets.get(set_id) or {})
            said[key] = explain(row.kind, needs, online)
        reason = said[key]
        if reason is not None:
            out[row.id] = reason
    return out


# what of a worker its shortfalls read (not its name, platform or versions)
_MATCHED = {"cpu_cores", "ram_bytes", "gpus", "blender_version", "kinds", "tags", "sandbox",
            "render_devices"}


def _alike(rows: Sequence[sa.Row]) -> list[OnlineWorker]:
    """Online workers grouped by what the match reads of them, each group once with its
    count: a farm of many identical machines is explained at the cost of one."""
    groups: dict[tuple[str, bool, bool], OnlineWorker] = {}
    for row in rows:
        caps = Capabilities.model_validate(row.capabilities)
        key = (caps.model_dump_json(include=_MATCHED), bool(row.trusted), bool(row.pending))
        known = groups.get(key)
        groups[key] = OnlineWorker(caps, trusted=key[1], pending=key[2],
                                   count=1 if known is None else known.count + 1)
    return list(groups.values())
