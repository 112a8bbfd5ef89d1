"""Worker endpoints: join, the exchange (sync, long poll), lease (long poll), leave; and
the farm list for users."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool

from parallel_pilot.coordinator.auth import CurrentUser, CurrentWorker, ServicesDep
from parallel_pilot.coordinator.services import claim as claims
from parallel_pilot.coordinator.services import leasing, sync
from parallel_pilot.coordinator.services import workers as worker_service
from parallel_pilot.coordinator.services.context import Services, Waiter
from parallel_pilot.coordinator.strict_route import StrictRoute, worker_report
from parallel_pilot.core.protocol import (
    Ack,
    LeaseRequest,
    LeaseResponse,
    RegisterRequest,
    RegisterResponse,
    SyncRequest,
    SyncResponse,
    TaskLease,
    WorkerList,
)

router = APIRouter(tags=["workers"], route_class=StrictRoute)

# a waiting poll re-checks the queue this often without being woken: it finds tasks made
# ready by another coordinator process (this one wakes it at once)
RECHECK_SECONDS = 3.0

WorkerId = Annotated[int, Path(ge=1, le=2**62)]


@router.post("/workers/register", response_model=RegisterResponse)
def register(svc: ServicesDep, body: RegisterRequest) -> RegisterResponse:
    return leasing.register(svc, body)


@router.post("/workers/sync", response_model=SyncResponse)
@worker_report
async def sync_worker(svc: ServicesDep, worker: CurrentWorker, body: SyncRequest,
                      request: Request) -> SyncResponse:
    """The worker's one exchange: reports in; leases, stops and its lease expiry out. An
    answer with nothing in it waits up to ``wait_seconds`` for work this worker can take."""
    wait = min(body.wait_seconds, svc.settings.long_poll_seconds,
               svc.settings.lease_seconds / 2)  # its held leases were renewed for a period
    kinds = worker.capabilities.get("kinds") or []
    waiter = svc.notifier.enlist(kinds) if wait > 0 and not body.leaving else None
    try:
        done = await run_in_threadpool(sync.exchange, svc, worker, body)
    except BaseException:
        if waiter is not None:
            waiter.close()
        raise
    _wake_others(svc, done)
    if waiter is None or not done.empty or not done.live:
        if waiter is not None:
            waiter.close()
        return done.response
    async def claim() -> tuple[list[TaskLease], bool]:
        return await run_in_threadpool(sync.poll, svc, worker, body)

    done.response.tasks = await _long_poll(svc, request, waiter, wait, claim)
    return done.response


@router.post("/workers/lease", response_model=LeaseResponse)
async def lease(svc: ServicesDep, worker: CurrentWorker, body: LeaseRequest,
                request: Request) -> LeaseResponse:
    """Hand out up to ``slots`` tasks; with none ready, wait up to ``wait_seconds`` for one."""
    wait = min(body.wait_seconds, svc.settings.long_poll_seconds)

    async def claim() -> tuple[list[TaskLease], bool]:
        tasks = await run_in_threadpool(claims.claim, svc, worker, body.slots)
        return tasks, True

    if wait <= 0:
        return LeaseResponse(tasks=(await claim())[0])
    waiter = svc.notifier.enlist(worker.capabilities.get("kinds") or [])
    try:
        tasks, _ = await claim()
    except BaseException:
        waiter.close()
        raise
    if tasks:
        waiter.close()
        return LeaseResponse(tasks=tasks)
    return LeaseResponse(tasks=await _long_poll(svc, request, waiter, wait, claim))


async def _long_poll(svc: Services, request: Request, waiter: Waiter, wait: float,
                     claim: Callable[[], Awaitable[tuple[list[TaskLease], bool]]],
                     ) -> list[TaskLease]:
    """Wait (``waiter`` already enlisted, its first claim found nothing) until woken for
    tasks of the worker's kinds, or RECHECK_SECONDS, then claim again; until ``wait``
    seconds are over or the client went away."""
    deadline = time.monotonic() + wait
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            woken = await waiter.wait(min(remaining, RECHECK_SECONDS))
            waiter.close()
            if not woken and time.monotonic() >= deadline:
                return []  # nothing appeared: the answer stays empty, without a claim
            if await request.is_disconnected():
                return []
            waiter = svc.notifier.enlist(waiter.kinds)
            tasks, live = await claim()
            if tasks or not live:
                return tasks
    finally:
        waiter.close()


def _wake_others(svc: Services, done: sync.Exchange) -> None:
    """Tasks this sync put back in the queue (hand-backs, retries, unblocked dependents)
    may be for other waiting workers."""
    if done.ready:
        svc.notifier.tasks_ready(done.ready)
    if done.changed_unknown:
        svc.notifier.notify()


@router.post("/workers/leave", response_model=Ack)
def leave(svc: ServicesDep, worker: CurrentWorker) -> Ack:
    leasing.leave(svc, worker)
    return Ack()


@router.get("/workers", response_model=WorkerList)
def list_workers(svc: ServicesDep, user: CurrentUser) -> WorkerList:
    """The farm; ``capabilities`` and ``claimed`` are what each worker says of itself,
    ``trusted`` and ``slots`` what the coordinator decided."""
    return WorkerList(workers=worker_service.list_workers(svc))


@router.post("/workers/{worker_id}/approve", response_model=Ack)
def approve_worker(svc: ServicesDep, user: CurrentUser, worker_id: WorkerId) -> Ack:
    """Let a pending worker (joined with an approval-required join token) get tasks (admin)."""
    worker_service.approve(svc, user, worker_id)
    return Ack()


@router.post("/workers/{worker_id}/trust", response_model=Ack)
def trust_worker(svc: ServicesDep, user: CurrentUser, worker_id: WorkerId) -> Ack:
    """Vouch for a worker (admin): its sandbox claim is believed, its word that a retry
    cannot help is final."""
    worker_service.set_trusted(svc, user, worker_id, True)
    return Ack()


@router.post("/workers/{worker_id}/untrust", response_model=Ack)
def untrust_worker(svc: ServicesDep, user: CurrentUser, worker_id: WorkerId) -> Ack:
    worker_service.set_trusted(svc, user, worker_id, False)
    return Ack()
