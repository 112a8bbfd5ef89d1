"""Worker endpoints: join, lease (long poll), leave; and the farm list for users."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from parallel_pilot.coordinator.auth import CurrentUser, CurrentWorker, ServicesDep
from parallel_pilot.coordinator.services import leasing
from parallel_pilot.coordinator.services import workers as worker_service
from parallel_pilot.core.protocol import (
    Ack,
    LeaseRequest,
    LeaseResponse,
    RegisterRequest,
    RegisterResponse,
    WorkerList,
)

router = APIRouter(tags=["workers"])

RECHECK_SECONDS = 1.0  # a waiting lease re-checks the queue at least this often


@router.post("/workers/register", response_model=RegisterResponse)
def register(svc: ServicesDep, body: RegisterRequest) -> RegisterResponse:
    return leasing.register(svc, body)


@router.post("/workers/lease", response_model=LeaseResponse)
async def lease(svc: ServicesDep, worker: CurrentWorker, body: LeaseRequest,
                request: Request) -> LeaseResponse:
    """Hand out up to ``slots`` tasks; with none ready, wait up to ``wait_seconds`` for one."""
    wait = min(body.wait_seconds, svc.settings.long_poll_seconds)
    deadline = time.monotonic() + wait
    while True:
        tasks = await run_in_threadpool(leasing.claim, svc, worker, body.slots)
        remaining = deadline - time.monotonic()
        if tasks or remaining <= 0:
            return LeaseResponse(tasks=tasks)
        await svc.notifier.wait(min(remaining, RECHECK_SECONDS))
        if await request.is_disconnected():
            return LeaseResponse(tasks=[])


@router.post("/workers/leave", response_model=Ack)
def leave(svc: ServicesDep, worker: CurrentWorker) -> Ack:
    leasing.leave(svc, worker)
    return Ack()


@router.get("/workers", response_model=WorkerList)
def list_workers(svc: ServicesDep, user: CurrentUser) -> WorkerList:
    return WorkerList(workers=worker_service.list_workers(svc))
