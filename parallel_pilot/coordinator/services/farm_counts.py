"""The farm's counts for ``/metrics`` (``coordinator/metrics.py``): tasks and jobs per
state, and workers per state as ``pilot workers`` shows them."""

from __future__ import annotations

from collections import Counter
from typing import get_args

from parallel_pilot.coordinator.metrics import FarmCounts
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.workers import list_workers
from parallel_pilot.core.protocol import WorkerState
from parallel_pilot.store.queries import metrics as qm


def farm_counts(svc: Services) -> FarmCounts:
    with svc.transaction() as conn:
        tasks, jobs = qm.task_counts(conn), qm.job_counts(conn)
    seen = Counter(w.state for w in list_workers(svc))
    return {"tasks": tasks, "jobs": jobs,
            "workers": {state: seen.get(state, 0) for state in get_args(WorkerState)}}
