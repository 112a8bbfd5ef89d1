"""The payload a worker leases: a task's own part (its item) under what its job's tasks
share (``kinds.base.task_payload``), which is stored once, in the job's parameters.

A job's parameters never change once it is submitted, so the shared part of each job is
remembered per database for the next lease; parts too large to be worth the memory
(a deliberately huge command) are read again when needed."""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import shared_payload
from parallel_pilot.store import queries as q

CACHED_JOBS = 1024  # jobs whose shared task payload is remembered per database
MAX_CACHED_CHARS = 256 * 1024  # a shared payload larger than this (as JSON) is not kept


class SharedPayloads:
    """Job id -> the shared part of its tasks' payloads, for one database."""

    def __init__(self) -> None:
        self._known: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def of_jobs(self, conn: sa.Connection, jobs: dict[int, str]) -> dict[int, dict[str, Any]]:
        """The shared payload of each job (id -> its kind); {} for kinds without one."""
        wanted = {j: k for j, k in jobs.items() if hasattr(get_kind(k), "shared_payload")}
        out: dict[int, dict[str, Any]] = {j: {} for j in jobs}
        with self._lock:
            for job_id in list(wanted):
                if job_id in self._known:
                    self._known.move_to_end(job_id)
                    out[job_id] = self._known[job_id]
                    del wanted[job_id]
        if not wanted:
            return out
        fresh = {job_id: shared_payload(get_kind(wanted[job_id]), params)
                 for job_id, params in q.job_params(conn, sorted(wanted)).items()}
        with self._lock:
            for job_id, shared in fresh.items():
                out[job_id] = shared
                if len(json.dumps(shared)) <= MAX_CACHED_CHARS:
                    self._known[job_id] = shared
            while len(self._known) > CACHED_JOBS:
                self._known.popitem(last=False)
        return out


_caches: weakref.WeakKeyDictionary[sa.Engine, SharedPayloads] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def _cache(conn: sa.Connection) -> SharedPayloads:
    with _caches_lock:
        found = _caches.get(conn.engine)
        if found is None:
            found = _caches[conn.engine] = SharedPayloads()
        return found


def task_payloads(conn: sa.Connection, rows: Sequence[Any]) -> list[dict[str, Any]]:
    """The full payload of each task row (``job_id``, ``kind``, ``payload``), in order."""
    shared = _cache(conn).of_jobs(conn, {r.job_id: r.kind for r in rows})
    return [{**shared[r.job_id], **r.payload} if shared[r.job_id] else r.payload
            for r in rows]
