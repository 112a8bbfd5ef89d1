"""Reports from a worker on the attempt it holds: heartbeat, outputs, complete, fail, release."""

from __future__ import annotations

from fastapi import APIRouter, Query

from parallel_pilot.coordinator.auth import CurrentWorker, ServicesDep
from parallel_pilot.coordinator.limits import AttemptNumber, TaskId
from parallel_pilot.coordinator.services import leasing
from parallel_pilot.coordinator.strict_route import StrictRoute, worker_report
from parallel_pilot.core.protocol import (
    Ack,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    OutputInfo,
    OutputList,
    OutputRequest,
)

router = APIRouter(prefix="/attempts/{task_id}/{attempt}", tags=["attempts"],
                   route_class=StrictRoute)


@router.post("/heartbeat", response_model=HeartbeatResponse)
@worker_report
def heartbeat(svc: ServicesDep, worker: CurrentWorker, task_id: TaskId, attempt: AttemptNumber,
              body: HeartbeatRequest) -> HeartbeatResponse:
    return leasing.heartbeat(svc, worker, task_id, attempt, body)


@router.post("/outputs", response_model=Ack)
def add_output(svc: ServicesDep, worker: CurrentWorker, task_id: TaskId, attempt: AttemptNumber,
               body: OutputRequest) -> Ack:
    leasing.add_output(svc, worker, task_id, attempt, body)
    return Ack()


@router.get("/job-outputs", response_model=OutputList)
def job_outputs(svc: ServicesDep, worker: CurrentWorker, task_id: TaskId, attempt: AttemptNumber,
                prefix: str = Query("", max_length=500)) -> OutputList:
    """Outputs of the held task's job so far (paths starting with ``prefix``)."""
    return OutputList(outputs=[
        OutputInfo(path=r.path, sha256=r.sha256, size=r.size, task_id=r.task_id)
        for r in leasing.job_outputs(svc, worker, task_id, attempt, prefix)
    ])


@router.post("/complete", response_model=Ack)
@worker_report
def complete(svc: ServicesDep, worker: CurrentWorker, task_id: TaskId, attempt: AttemptNumber,
             body: CompleteRequest) -> Ack:
    leasing.complete(svc, worker, task_id, attempt, body)
    return Ack()


@router.post("/fail", response_model=Ack)
@worker_report
def fail(svc: ServicesDep, worker: CurrentWorker, task_id: TaskId, attempt: AttemptNumber,
         body: FailRequest) -> Ack:
    leasing.fail(svc, worker, task_id, attempt, body)
    return Ack()


@router.post("/release", response_model=Ack)
def release(svc: ServicesDep, worker: CurrentWorker, task_id: TaskId,
            attempt: AttemptNumber) -> Ack:
    leasing.release(svc, worker, task_id, attempt)
    return Ack()
