"""Operations endpoints at the root, for load balancers, orchestrators and Prometheus:
``/healthz`` (the process answers), ``/readyz`` (and its database answers: 503 with the
reason when not), ``/metrics`` (Prometheus text format, for an admin's token: a scrape
config sends it as a bearer token)."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from parallel_pilot.coordinator.auth import CurrentUser, ServicesDep
from parallel_pilot.coordinator.metrics import CONTENT_TYPE
from parallel_pilot.coordinator.services.accounts import require_admin
from parallel_pilot.coordinator.services.context import Services

router = APIRouter(tags=["operations"])
log = logging.getLogger("pilot.coordinator")


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}


@router.get("/readyz", responses={503: {"description": "the database does not answer"}})
async def readyz(svc: ServicesDep) -> JSONResponse:
    reason = await run_in_threadpool(_database_reason, svc)
    if reason is not None:
        return JSONResponse({"ok": False, "reason": reason}, status_code=503)
    return JSONResponse({"ok": True})


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(svc: ServicesDep, caller: CurrentUser) -> Response:
    require_admin(caller)
    return Response(await run_in_threadpool(svc.metrics.text), media_type=CONTENT_TYPE)


def _database_reason(svc: Services) -> str | None:
    try:
        with svc.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        log.warning("readyz: the database does not answer: %s", exc)
        return f"the database does not answer ({type(exc).__name__})"
    return None
