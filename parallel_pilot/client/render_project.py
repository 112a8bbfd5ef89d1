"""Submitting a Blender project from this machine: the .blend is opened once in Blender
(scripts off) to read its scenes and trace every file it uses
(``kinds/render/dependencies.py``), the files are laid out as a project
(``core/project.py``), missing ones are named with the user's own paths, and each file is
uploaded unless the coordinator already has it.

Without Blender here nothing can be traced: the .blend travels alone, and ``on_event``
hears why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parallel_pilot.core.project import (
    ProjectLayout,
    UploadReport,
    plan_project,
    sha256_file,
)
from parallel_pilot.errors import InvalidInput
from parallel_pilot.http import Connection
from parallel_pilot.kinds.render.blend_file import HEADER_READ_BYTES, parse_header
from parallel_pilot.kinds.render.blender import inspect_blend, installed_blender
from parallel_pilot.kinds.render.kind import camera_problem

MAX_MISSING_LISTED = 20  # missing files named in the refusal


@dataclass
class PackedProject:
    """A project ready to submit: its manifest, the facts read from the file, the report."""

    manifest: dict[str, Any]
    info: dict[str, Any]  # inspect_blend's description ({} without Blender here)
    layout: ProjectLayout
    report: UploadReport


def describe_missing(layout: ProjectLayout) -> str:
    listed = "\n  ".join(m.describe() for m in layout.missing[:MAX_MISSING_LISTED])
    more = len(layout.missing) - MAX_MISSING_LISTED
    return listed + (f"\n  … and {more} more" if more > 0 else "")


def read_project(blend: Path, *, inspect: bool = True,
                 on_event: Callable[[str, Any], None] | None = None
                 ) -> tuple[ProjectLayout, dict[str, Any]]:
    """The project of ``blend`` (every file its scenes use, traced by Blender) and the
    description Blender gave of the file; the .blend alone where Blender is absent."""
    blend = Path(blend).absolute()
    if not blend.is_file():
        raise InvalidInput(f"no such file: {blend}")
    with open(blend, "rb") as f:
        parse_header(f.read(HEADER_READ_BYTES), name=blend.name)  # InvalidInput: not a .blend
    if not inspect or installed_blender() is None:
        if on_event is not None and inspect:
            on_event("untraced", "Blender is not installed here, so the files the scene "
                     "uses cannot be found: only the .blend is sent (install "
                     "'parallel-pilot[render]' to send the whole project)")
        return plan_project({"blend": str(blend), "dependencies": []}), {}
    info = inspect_blend(blend)
    return plan_project({**info, "blend": str(blend)}), info


def upload_project(connection: Connection, layout: ProjectLayout,
                   on_event: Callable[[str, Any], None] | None = None) -> tuple[
                       dict[str, Any], UploadReport]:
    """Hash and upload every file of the layout (each distinct file once, and only when
    the coordinator lacks it); the manifest and what was sent."""
    report = UploadReport()
    hashes: dict[str, str] = {}
    for path, local in sorted(layout.files.items()):
        if local in hashes:
            continue
        sha = sha256_file(local)
        size = Path(local).stat().st_size
        sent = [0]

        def count(n: int, sent: list[int] = sent) -> None:
            sent[0] += n

        connection.upload_blob(Path(local), sha, on_progress=count)
        hashes[local] = sha
        if sent[0]:
            report.uploaded_files += 1
            report.uploaded_bytes += sent[0]
        else:
            report.skipped_files += 1
            report.skipped_bytes += size
        if on_event is not None:
            on_event("uploaded" if sent[0] else "skipped", (path, size))
    return layout.manifest(hashes), report


def scene_facts(info: Mapping[str, Any], scene_name: str | None) -> dict[str, Any]:
    """The ``scene_*`` parameters of a render job from ``inspect_blend``'s description: the
    named scene's frame range, fps, cameras and whether it needs one (the file's default
    scene when the name is unknown, so that the coordinator's refusal names the scene,
    not the frames)."""
    scenes = [s for s in info.get("scenes") or [] if isinstance(s, Mapping)]
    names = [str(s.get("scene")) for s in scenes]
    wanted = scene_name if scene_name in names else info.get("scene")
    chosen = next((s for s in scenes if s.get("scene") == wanted), scenes[0] if scenes else {})
    facts: dict[str, Any] = {"scene_names": names}
    if "frame_start" in chosen and "frame_end" in chosen:
        facts["scene_frame_start"] = int(chosen["frame_start"])
        facts["scene_frame_end"] = int(chosen["frame_end"])
    if chosen.get("fps"):
        facts["scene_fps"] = float(chosen["fps"])
    if chosen.get("cameras") is not None:
        facts["scene_cameras"] = [str(c) for c in chosen["cameras"]]
    if chosen.get("needs_camera") is not None:
        facts["scene_needs_camera"] = bool(chosen["needs_camera"])
        if chosen.get("camera"):
            facts["scene_camera"] = str(chosen["camera"])
    step = int(chosen.get("frame_step") or 1)
    if step > 1 and "scene_frame_start" in facts:
        facts["default_frames"] = (f"{facts['scene_frame_start']}-{facts['scene_frame_end']}"
                                   f"x{step}")
    return facts


def pack_project(connection: Connection, blend: Path, *, scene_name: str | None = None,
                 camera: str | None = None, allow_missing_files: bool = False,
                 inspect: bool = True,
                 on_event: Callable[[str, Any], None] | None = None) -> PackedProject:
    """Trace, check and upload the project of ``blend``. Refused here, before a byte is
    sent: missing files, named as the user wrote them (unless ``allow_missing_files``),
    and a scene that has no camera to render from."""
    layout, info = read_project(blend, inspect=inspect, on_event=on_event)
    if layout.missing and not allow_missing_files:
        raise InvalidInput(
            f"the scene uses {len(layout.missing)} file(s) that are not on this machine:\n  "
            f"{describe_missing(layout)}\nfix the paths in Blender, or submit with "
            "--allow-missing-files (allow_missing_files=True) to render without them")
    facts = scene_facts(info, scene_name)
    problem = camera_problem(facts.get("scene_needs_camera"), camera,
                             facts.get("scene_camera"), facts.get("scene_cameras"),
                             scene_name)
    if problem:
        raise InvalidInput(problem)
    if on_event is not None:
        on_event("layout", layout)
    manifest, report = upload_project(connection, layout, on_event=on_event)
    return PackedProject(manifest=manifest, info=info, layout=layout, report=report)
