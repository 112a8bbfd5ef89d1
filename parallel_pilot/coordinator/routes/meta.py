"""Health check and the caller's identity."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from parallel_pilot import __version__
from parallel_pilot.coordinator.auth import CurrentUser
from parallel_pilot.coordinator.strict_route import StrictRoute
from parallel_pilot.core.protocol import Health, UserInfo

router = APIRouter(tags=["meta"], route_class=StrictRoute)

INSTANCE_HEADER = "X-Pilot-Instance"  # names the coordinator process that answered


@router.get("/health", response_model=Health)
def health(request: Request, response: Response) -> Health:
    # the process's instance id lets whoever started it tell it from another coordinator
    # answering on the same port (pilot up's readiness check)
    instance = getattr(request.app.state, "instance_id", None)
    if instance:
        response.headers[INSTANCE_HEADER] = instance
    return Health(ok=True, version=__version__)


@router.get("/me", response_model=UserInfo)
def me(user: CurrentUser) -> UserInfo:
    return UserInfo(name=user.name, is_admin=user.is_admin)
