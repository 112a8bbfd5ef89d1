"""What a task needs of a worker (Blender version, RAM, GPU, tags), and the pure check
the scheduler applies to a worker's reported capabilities."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from parallel_pilot.core.protocol import Capabilities

_VERSION = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


class Requirements(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_blender: str | None = Field(
        default=None, description="the worker's Blender must be at least this version")
    min_ram_bytes: int | None = Field(default=None, ge=0)
    gpu: bool = False
    tags: list[str] = Field(default_factory=list, max_length=20)
    sandbox: bool = Field(
        default=False, description="the worker must run commands in a sandbox (bwrap)")
    render_gpu: bool = Field(
        default=False, description="the worker's Blender must see a GPU Cycles renders on")


def version_tuple(text: str | None) -> tuple[int, int, int] | None:
    """``"5.0.1"`` -> (5, 0, 1); ``"Blender 4.2 LTS"`` -> (4, 2, 0); None if no version."""
    if not text:
        return None
    match = _VERSION.search(text)
    if not match:
        return None
    return tuple(int(g or 0) for g in match.groups())  # type: ignore[return-value]


def unmet(requirements: Requirements, caps: Capabilities, *, trusted: bool = False,
          ) -> list[str]:
    """Why a worker cannot take a task (empty when it can). ``caps`` are the worker's
    claims; a sandbox is believed only of a worker an admin marked ``trusted``."""
    reasons = []
    if requirements.min_blender:
        have, need = version_tuple(caps.blender_version), version_tuple(requirements.min_blender)
        if have is None:
            reasons.append("no Blender")
        elif need is not None and have < need:
            reasons.append(f"Blender {caps.blender_version} < {requirements.min_blender}")
    if requirements.min_ram_bytes and caps.ram_bytes < requirements.min_ram_bytes:
        reasons.append("not enough RAM")
    if requirements.gpu and not caps.gpus:
        reasons.append("no GPU")
    if requirements.sandbox and not caps.sandbox:
        reasons.append("no sandbox")
    elif requirements.sandbox and not trusted:
        reasons.append("sandbox claimed, but no admin marked the worker trusted")
    if requirements.render_gpu and not any(d.type != "CPU" for d in caps.render_devices):
        reasons.append("no GPU for Cycles")
    missing = set(requirements.tags) - set(caps.tags)
    if missing:
        reasons.append(f"missing tags {sorted(missing)}")
    return reasons


def satisfies(requirements: dict | None, caps: Capabilities, *, trusted: bool = False) -> bool:
    if not requirements:
        return True
    return not unmet(Requirements.model_validate(requirements), caps, trusted=trusted)
