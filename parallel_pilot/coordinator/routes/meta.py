"""Health check and the caller's identity."""

from __future__ import annotations

from fastapi import APIRouter

from parallel_pilot import __version__
from parallel_pilot.coordinator.auth import CurrentUser
from parallel_pilot.core.protocol import Health, UserInfo

router = APIRouter(tags=["meta"])


@router.get("/health", response_model=Health)
def health() -> Health:
    return Health(ok=True, version=__version__)


@router.get("/me", response_model=UserInfo)
def me(user: CurrentUser) -> UserInfo:
    return UserInfo(name=user.name, is_admin=user.is_admin)
