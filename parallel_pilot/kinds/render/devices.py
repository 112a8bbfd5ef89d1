"""Which device a render task renders on: the job's wish (``cpu``, ``gpu``, ``any``) against
the Cycles devices this worker's Blender sees."""

from __future__ import annotations

from typing import Any


def render_device(wish: str) -> dict[str, Any]:
    """What ``script.py`` sets up: ``{"type": "CPU"}``, or a GPU backend and its devices."""
    return {"type": "CPU", "wish": wish}
