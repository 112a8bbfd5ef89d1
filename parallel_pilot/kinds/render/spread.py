"""How a render without a chunk size is cut, and how its chunks are cut again as they are
leased (the coordinator's ``services/chunking.py`` decides how many frames; this module
owns what a cut chunk's payload is).

The plan: first one frame in each of ``SPREAD_PARTS`` equal parts of the range (every Nth
frame, N = frames / 24), so a preview of the whole animation exists early and every
worker's first task is short (it measures the worker's speed); then the frames between
them as one range per part. Every chunk of the plan is marked ``adaptive``: the
coordinator learns the workers' speeds from them and cuts a range when a worker takes
it, the worker keeping the first frames and the rest staying queued as a new task.
A job that gave ``chunk`` is cut into fixed chunks and never again."""

from __future__ import annotations

import math
from typing import Any

from parallel_pilot.kinds.base import TaskPart
from parallel_pilot.kinds.render.assemble import FRAMES_PREFIX, VIDEO_FRAMES_PREFIX, format_frames

SPREAD_PARTS = 24  # parts of the range whose first frames render before the rest
SPREAD_MIN_PART = 4  # frames a part has at least (a shorter range gets fewer parts)
ADAPTIVE = "adaptive"  # payload key: the coordinator may cut this chunk as it is leased
_FRAME_PREFIXES = (FRAMES_PREFIX, VIDEO_FRAMES_PREFIX)  # outputs named by their frame


def spread_chunks(frames: list[int]) -> tuple[list[list[int]], list[list[int]]]:
    """(probes, ranges): one frame at the start of each part, then the rest of each part."""
    parts = min(SPREAD_PARTS, len(frames) // SPREAD_MIN_PART)
    if parts < 2:
        return [], [frames] if frames else []
    size = math.ceil(len(frames) / parts)
    starts = range(0, len(frames), size)
    probes = [[frames[s]] for s in starts]
    ranges = [frames[s + 1:s + size] for s in starts if frames[s + 1:s + size]]
    return probes, ranges


def chunk_name(frames: list[int]) -> str:
    return f"frames {format_frames(frames)}"


def work_units(payload: dict[str, Any]) -> int:
    """Frames of a chunk the coordinator may cut; 0 for a fixed chunk or the assembly."""
    if payload.get("role") != "chunk" or not payload.get(ADAPTIVE):
        return 0
    return len(payload.get("frames") or [])


def unit_keys(payload: dict[str, Any]) -> list[int]:
    """A chunk's frame numbers in order: the keys the coordinator learns frame costs by
    (neighbouring frames of a shot cost alike)."""
    return [int(f) for f in payload.get("frames") or []] if work_units(payload) else []


def output_unit(path: str) -> int | None:
    """The frame an output reports rendered (``frames/0012.png`` -> 12); None for
    anything else (a video copy, a preview, a File Output node's file)."""
    if not path.startswith(FRAMES_PREFIX):
        return None
    stem = path[len(FRAMES_PREFIX):].split(".", 1)[0]
    return int(stem) if stem.isdigit() else None


def split(payload: dict[str, Any], units: int) -> tuple[TaskPart, TaskPart]:
    """The chunk's first ``units`` frames, and the rest (still adaptive)."""
    frames = list(payload["frames"])
    head, rest = frames[:units], frames[units:]
    return (TaskPart(chunk_name(head), {**payload, "frames": head}),
            TaskPart(chunk_name(rest), {**payload, "frames": rest}))


def allows_output(payload: dict[str, Any], path: str) -> bool:
    """A chunk reports frames (and their video copies) of its own frames only; what else
    it writes (the preview, the scene's facts, File Output nodes) is not per frame here."""
    if payload.get("role") != "chunk":
        return True
    for prefix in _FRAME_PREFIXES:
        if path.startswith(prefix):
            stem = path[len(prefix):].split(".", 1)[0]
            return stem.isdigit() and int(stem) in set(payload.get("frames") or [])
    return True
