"""One submission of the open file: ``prepare`` runs on Blender's main thread (checks,
save, trace, plan, the scene's facts: everything that reads ``bpy``) and refuses before
anything is sent; ``send`` runs anywhere (hash, upload, submit: no ``bpy``).
``submit_current_file`` does both at once, for scripts and background mode.

The job carries the facts Blender knows about the scene (frame range, fps, cameras,
whether it needs one) so that the coordinator refuses wrong frames at submit, as it
does for ``pilot render``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import bpy

from . import pack
from .api import Api, ApiError, is_loopback, normalise_server
from .properties import job_settings, preferences


class Refused(Exception):
    """The file cannot be submitted as it is; the message says why and what to do."""


@dataclass
class Submission:
    """What ``prepare`` read on the main thread, for ``send`` to carry out anywhere."""

    server: str
    token: str
    layout: pack.project.ProjectLayout
    params: dict
    name: str
    scene_key: str


def scene_key(scene) -> str:
    """Names a scene of a saved file across the threads (the panel's status is per scene)."""
    return f"{bpy.data.filepath}::{scene.name}"


def cameras_of(scene) -> list[str]:
    return sorted(o.name for o in scene.objects if o.type == "CAMERA")


def needs_camera(scene) -> bool:
    """Whether Blender needs a camera to render ``scene``: not when the sequencer is on and
    has strips to show (the same rule as ``kinds/render/script.py``, which the worker runs)."""
    editor = scene.sequence_editor
    if not scene.render.use_sequencer or editor is None:
        return True
    strips = getattr(editor, "strips_all", None)
    strips = strips if strips is not None else editor.sequences_all  # before Blender 4.4
    return not any(strip.type != "SOUND" for strip in strips)


def scene_facts(scene) -> dict:
    """The ``scene_*`` parameters of a render job, read from Blender itself."""
    render = scene.render
    facts = {
        "scene_name": scene.name,
        "scene_names": sorted(s.name for s in bpy.data.scenes),
        "scene_frame_start": scene.frame_start,
        "scene_frame_end": scene.frame_end,
        "scene_fps": render.fps / (render.fps_base or 1.0),
        "scene_cameras": cameras_of(scene),
        "scene_needs_camera": needs_camera(scene),
    }
    if scene.camera is not None:
        facts["scene_camera"] = scene.camera.name
    return facts


def frames_of(scene) -> str:
    """The frames the panel asks for: the scene's range (and step) by default."""
    settings = job_settings(scene)
    if not settings.use_scene_frames:
        frames = settings.frames.strip()
        if not frames:
            raise Refused("give the frames to render (like 1-240), or tick Scene's frames")
        return frames
    frames = f"{scene.frame_start}-{scene.frame_end}"
    return frames + (f"x{scene.frame_step}" if scene.frame_step > 1 else "")


def job_params(scene) -> dict:
    settings = job_settings(scene)
    params = {**scene_facts(scene), "frames": frames_of(scene),
              "device": settings.device.lower()}
    if settings.chunk:
        params["chunk"] = settings.chunk
    if settings.engine != "SCENE":
        params["engine"] = settings.engine
    if settings.samples:
        params["samples"] = settings.samples
    if settings.allow_missing_files:
        params["allow_missing_files"] = True
    return params


def check_camera(scene) -> None:
    if scene.camera is None and needs_camera(scene):
        cameras = cameras_of(scene)
        fix = (f"make one of its cameras ({', '.join(cameras)}) the scene's camera"
               if cameras else "add a camera, or sequencer strips to render")
        raise Refused(f"the scene {scene.name!r} has no active camera, so Blender would "
                      f"render nothing: {fix}")


def check_online(server: str) -> None:
    """Blender's "Allow Online Access" (4.2+) is honoured for any coordinator that is not
    on this machine."""
    if not getattr(bpy.app, "online_access", True) and not is_loopback(server):
        raise Refused("Blender's online access is off: turn on Allow Online Access in "
                      "Preferences > System > Network to reach the farm at " + server)


def prepare(context=None) -> Submission:
    """Check, save, trace and plan the open file for its current scene (main thread).
    Raises ``Refused`` (nothing sent) with what to do."""
    context = context or bpy.context
    scene = context.scene
    prefs = preferences(context)
    try:
        server = normalise_server(prefs.server)
    except ApiError as exc:
        raise Refused(exc.message) from None
    if not prefs.token.strip():
        raise Refused("set your API token in the add-on's preferences (make one with "
                      "`pilot tokens create` or on the dashboard's Account page)")
    check_online(server)
    check_camera(scene)
    params = job_params(scene)
    if not bpy.data.filepath:
        raise Refused("save the file first (File > Save As): the farm renders the saved "
                      ".blend and the files next to it")
    if bpy.data.is_dirty:
        bpy.ops.wm.save_mainfile()
    layout = pack.plan_open_file()
    if layout.missing and not job_settings(scene).allow_missing_files:
        raise Refused(f"the scene uses {len(layout.missing)} file(s) that are not on this "
                      f"machine: {pack.describe_missing(layout)}. Fix the paths, or tick "
                      "Allow missing files to render without them")
    return Submission(server=server, token=prefs.token, layout=layout, params=params,
                      name=os.path.basename(bpy.data.filepath), scene_key=scene_key(scene))


def send(submission: Submission, on_progress: Callable[[str, float], None] | None = None
         ) -> tuple[dict, pack.project.UploadReport]:
    """Upload the project and submit the job (any thread); its ``JobInfo`` and what was
    sent. Raises ``ApiError`` with the coordinator's message."""
    api = Api(submission.server, submission.token)
    api.me()  # a wrong server or token is said before hashing gigabytes
    manifest, report = pack.upload(api, submission.layout, on_progress)
    job = api.submit("render", {**submission.params, "project": manifest},
                     name=submission.name)
    return job, report


def remember(scene, submission: Submission, job: dict) -> None:
    """The job's id on its scene (main thread), for the panel and a reopened file."""
    settings = job_settings(scene)
    settings.job_id = int(job["id"])
    settings.job_server = submission.server


def submit_current_file(context=None) -> int:
    """Submit the current scene of the open file and wait until it is submitted (not
    rendered); its job id. Raises ``Refused`` or ``ApiError``."""
    context = context or bpy.context
    submission = prepare(context)
    job, _report = send(submission)
    remember(context.scene, submission, job)
    return int(job["id"])
