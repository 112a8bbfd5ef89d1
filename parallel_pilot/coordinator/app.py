"""``create_app``: the coordinator's FastAPI application — routes, error bodies, reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from parallel_pilot import __version__, web
from parallel_pilot.coordinator import passwords
from parallel_pilot.coordinator.body_guard import BodyGuard
from parallel_pilot.coordinator.bootstrap import tighten_data_dir
from parallel_pilot.coordinator.log_context import RequestLog
from parallel_pilot.coordinator.routes import (
    accounts,
    attempts,
    blobs,
    jobs,
    meta,
    ops,
    session,
    workers,
)
from parallel_pilot.coordinator.services import leasing
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.farm_bus import FarmBus
from parallel_pilot.coordinator.services.farm_counts import farm_counts
from parallel_pilot.core.folders import private_dir
from parallel_pilot.core.protocol import API_PREFIX, ErrorBody
from parallel_pilot.core.settings import CoordinatorSettings
from parallel_pilot.errors import PilotError, error_body, http_status
from parallel_pilot.store.blobs import BlobStore
from parallel_pilot.store.database import open_database

log = logging.getLogger("pilot.coordinator")

STATUS_CODES = {400: "invalid_input", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 408: "request_timeout", 409: "conflict",
                413: "payload_too_large"}
# every 4xx an endpoint may answer, declared with the one error body so the OpenAPI schema
# tells clients (and the API fuzz test) the truth; 422 replaces FastAPI's own body
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": code.replace("_", " ")}
    for status, code in {**STATUS_CODES, 422: "invalid_input"}.items() if status != 405
}


def build_services(settings: CoordinatorSettings,
                   clock: Callable[[], float] | None = None) -> Services:
    private_dir(settings.data_dir)
    if passwords.INSECURE_FAST_HASH:
        log.warning("%s=1: passwords are hashed with argon2's cheapest parameters, for tests"
                    " only; unset it on a farm", passwords.INSECURE_FAST_HASH_ENV)
    engine = open_database(settings.resolved_database_url())
    tighten_data_dir(settings)
    services = Services(engine=engine, blobs=BlobStore(settings.blob_dir), settings=settings)
    if clock is not None:
        services.clock = clock
    return services


async def _reaper(services: Services) -> None:
    while True:
        await asyncio.sleep(services.settings.reaper_seconds)
        try:
            await run_in_threadpool(leasing.reap, services)
        except Exception:  # keep reaping even if one pass fails (e.g. database restarting)
            log.exception("reaper pass failed")


def create_app(services: Services, *, run_reaper: bool = True) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.notifier.bind(asyncio.get_running_loop())
        await run_in_threadpool(leasing.grant_restart_grace, services)
        task = asyncio.create_task(_reaper(services)) if run_reaper else None
        bus = FarmBus(services.engine, services.notifier) \
            if FarmBus.applies(services.engine) else None
        if bus is not None:  # the farm's other coordinators wake our long polls
            bus.start()
        try:
            yield
        finally:
            if bus is not None:
                await run_in_threadpool(bus.stop)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="Parallel Pilot coordinator", version=__version__, lifespan=lifespan,
                  docs_url=f"{API_PREFIX}/docs", redoc_url=None,
                  openapi_url=f"{API_PREFIX}/openapi.json")
    app.state.services = services
    for module in (meta, workers, attempts, jobs, blobs, accounts, session):
        app.include_router(module.router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
    app.include_router(ops.router, responses=ERROR_RESPONSES)  # /healthz, /readyz, /metrics
    services.metrics.watch(lambda: farm_counts(services))
    web.mount(app)  # the dashboard: pages at /, live streams at /events, /static
    if services.settings.trusted_proxies:
        # the client is the last hop of X-Forwarded-For that is not a trusted proxy
        app.add_middleware(ProxyHeadersMiddleware,
                           trusted_hosts=list(services.settings.trusted_proxies))
    _install_error_handlers(app)
    # every body bounded in size and time before it is read (routes narrow the limit)
    app.add_middleware(BodyGuard, max_body_bytes=services.settings.max_body_bytes,
                       max_upload_bytes=services.settings.max_upload_bytes,
                       stall_seconds=services.settings.body_stall_seconds)
    # outermost: every line logged for a request carries its id; its duration goes into the
    # metrics (and, in JSON, an access line)
    app.add_middleware(RequestLog, metrics=services.metrics, unmeasured=("/static/",),
                       access=services.settings.log_format == "json")
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PilotError)
    async def pilot_error(request: Request, exc: PilotError) -> JSONResponse:
        retry_after = getattr(exc, "retry_after", None)
        return JSONResponse(error_body(exc), status_code=http_status(exc),
                            headers={"Retry-After": str(retry_after)} if retry_after else None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:10]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}")
        return JSONResponse({"error": "invalid_input", "message": "; ".join(parts)},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse({"error": code, "message": str(exc.detail)},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal", "message": "internal error; the coordinator "
                             "log has the details"}, status_code=500)

