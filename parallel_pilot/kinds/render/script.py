"""The script that runs INSIDE Blender for a ``render`` task (it never imports the package).

Run as ``blender -b --factory-startup --disable-autoexec --python script.py -- JOB``
or, with the ``bpy`` package, ``python script.py -- JOB``, where ``JOB`` is a JSON
file. It opens the .blend with auto-run scripts off, applies the overrides, and either
describes the file (``"mode": "inspect"``) or renders the listed frames one at a time,
writing each frame file as soon as it is finished. It speaks to the worker through lines
on stdout (the names are mirrored in ``blender.py``)::

    PILOT_SCENE {json}            the scene as it will be rendered (fps, resolution, ...)
    PILOT_STATS <frame> <text>    Blender's render status ("... | Sample 8/16")
    PILOT_VIDEO_FRAME <frame> <path>  (OpenEXR jobs) the frame as an 8-bit PNG, for the video
    PILOT_FRAME_DONE <frame> <seconds> <path>
    PILOT_PREVIEW <path>          a small JPEG of the frame just finished
    PILOT_MISSING <json>          a file the scene uses that is not in the project
                                  ({"path", "used_by", "blend", "why"})
    PILOT_FILE_OUTPUT <rel> <path>  a file the compositor's File Output nodes wrote
    PILOT_DEVICE <backend>: <names>   the GPU devices this render uses
    PILOT_INSPECT {json}          (inspect mode) scenes, cameras, frame range, versions
    PILOT_ERROR <what> <message>  what: invalid | open | missing | render | internal

Exit codes: 0 done, 3 invalid request (camera, scene, frames, missing files), 4 the file
cannot be opened, 5 the render failed, 1 anything else.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback

import bpy

EXIT_INVALID = 3
EXIT_OPEN = 4
EXIT_RENDER = 5
PREVIEW_MAX_PIXELS = 320  # the longer side of the preview JPEG
PREVIEW_QUALITY = 80  # JPEG quality of the preview
JPEG_QUALITY = 90  # JPEG quality of frames rendered as JPEG
# image settings that change with the file format, restored after saving a display PNG
# (media_type first: Blender 5 takes a format only of the media type set)
_FORMAT_SETTINGS = ("media_type", "file_format", "color_mode", "color_depth", "exr_codec",
                    "compression", "quality")
ENGINE_ALIASES = {"BLENDER_EEVEE": "BLENDER_EEVEE_NEXT", "BLENDER_EEVEE_NEXT": "BLENDER_EEVEE"}
# formats the video is made from directly; any other gets an 8-bit PNG copy for the video
VIDEO_READY = {("PNG", "8"), ("PNG", "16"), ("JPEG", "8")}
VIDEO_FORMATS = ("FFMPEG", "AVI_JPEG", "AVI_RAW")  # movie outputs: frames are PNG instead
OUTSIDE_DIR = ".pilot-outside"  # where paths leading out of the project are sent: nothing


def load_dependencies():
    """``dependencies.py`` beside this file (this script runs without the package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dependencies.py")
    spec = importlib.util.spec_from_file_location("pilot_dependencies", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Refused(Exception):
    """The job cannot be done as asked; ``what`` and the exit code say how."""

    def __init__(self, what: str, message: str, code: int) -> None:
        super().__init__(message)
        self.what, self.code = what, code


def say(tag: str, text: str) -> None:
    sys.stdout.write(f"{tag} {text}\n")
    sys.stdout.flush()


def job_from_argv(argv: list[str]) -> dict:
    args = argv[argv.index("--") + 1:] if "--" in argv else argv[1:]
    if len(args) != 1:
        raise Refused("internal", f"expected one job file argument, got {args!r}", 1)
    with open(args[0], encoding="utf-8") as fh:
        return json.load(fh)


def open_blend(path: str) -> None:
    """Open the file the way an untrusted file must be: no auto-run scripts, no UI."""
    bpy.context.preferences.filepaths.use_scripts_auto_execute = False
    try:
        bpy.ops.wm.open_mainfile(filepath=path, load_ui=False, use_scripts=False)
    except RuntimeError as exc:
        raise Refused("open", str(exc).strip().replace("\n", " "), EXIT_OPEN) from None


def cameras_of(scene) -> list[str]:
    return sorted(o.name for o in scene.objects if o.type == "CAMERA")


def needs_camera(scene) -> bool:
    """Whether Blender needs a camera to render ``scene``: not when the sequencer is on
    and has strips to show (an edit renders without one)."""
    editor = scene.sequence_editor
    if not scene.render.use_sequencer or editor is None:
        return True
    strips = getattr(editor, "strips_all", None)
    strips = strips if strips is not None else editor.sequences_all
    return not any(strip.type != "SOUND" for strip in strips)


def pick_scene(job: dict):
    name = job.get("scene_name")
    if not name:
        return bpy.context.scene
    scene = bpy.data.scenes.get(name)
    if scene is None:
        have = ", ".join(sorted(s.name for s in bpy.data.scenes))
        raise Refused("invalid", f"the file has no scene named {name!r}; its scenes: {have}",
                      EXIT_INVALID)
    if bpy.context.window is not None:
        bpy.context.window.scene = scene
    return scene


def apply_overrides(scene, job: dict) -> None:
    render = scene.render
    camera = job.get("camera")
    if camera:
        obj = scene.objects.get(camera)
        if obj is None or obj.type != "CAMERA":
            have = ", ".join(cameras_of(scene)) or "none"
            raise Refused("invalid", f"scene {scene.name!r} has no camera named {camera!r}; "
                          f"its cameras: {have}", EXIT_INVALID)
        scene.camera = obj
    if scene.camera is None and needs_camera(scene):
        have = ", ".join(cameras_of(scene)) or "none"
        raise Refused("invalid", f"scene {scene.name!r} has no active camera; choose one "
                      f"(its cameras: {have})", EXIT_INVALID)
    engine = job.get("engine")
    if engine:
        try:
            render.engine = engine
        except TypeError:
            try:
                render.engine = ENGINE_ALIASES.get(engine, engine)
            except TypeError:
                raise Refused("invalid", f"this Blender ({bpy.app.version_string}) has no "
                              f"render engine {engine!r}", EXIT_INVALID) from None
    samples = job.get("samples")
    if samples:
        if render.engine == "CYCLES":
            scene.cycles.samples = int(samples)
        elif render.engine.startswith("BLENDER_EEVEE"):
            scene.eevee.taa_render_samples = int(samples)
    if job.get("resolution"):
        render.resolution_percentage = int(job["resolution"])
    apply_format(render.image_settings, job)
    threads = int(job.get("threads", 1))
    if threads > 0:
        render.threads_mode, render.threads = "FIXED", threads
    else:
        render.threads_mode = "AUTO"


def apply_format(image, job: dict) -> None:
    """The frame format: the job's, else the scene's own; a movie output renders PNG
    frames. Blender 5 keeps movie, image and multilayer formats apart (``media_type``),
    and the kind must be set before the format."""
    has_media = hasattr(image, "media_type")
    if has_media and image.media_type == "VIDEO" or image.file_format in VIDEO_FORMATS:
        if has_media:
            image.media_type = "IMAGE"
        image.file_format = "PNG"
    wanted = job.get("format")
    if wanted:
        if has_media:
            image.media_type = "MULTI_LAYER_IMAGE" if wanted == "OPEN_EXR_MULTILAYER" \
                else "IMAGE"
        image.file_format = wanted
        if wanted == "JPEG":
            image.color_mode = "RGB"
            image.quality = JPEG_QUALITY
    depth = job.get("color_depth")
    if depth:
        try:
            image.color_depth = depth
        except TypeError:
            raise Refused("invalid", f"{image.file_format} has no {depth}-bit colour depth",
                          EXIT_INVALID) from None


def redirect_file_outputs(scene, folder: str) -> None:
    """Point the compositor's File Output nodes into ``folder`` (inside the task folder),
    whatever the file says: a file may not write where it likes on a worker."""
    trees = [scene.compositing_node_group if hasattr(scene, "compositing_node_group")
             else getattr(scene, "node_tree", None)]
    trees += list(bpy.data.node_groups)
    for tree in trees:
        if tree is None:
            continue
        for node in tree.nodes:
            if node.bl_idname != "CompositorNodeOutputFile":
                continue
            if tree.library is not None:
                raise Refused("invalid", f"the File Output node {node.name!r} of the linked "
                              f"node group {tree.name!r} writes files, and linked data "
                              "cannot be redirected into the task folder", EXIT_INVALID)
            attr = "directory" if hasattr(node, "directory") else "base_path"
            setattr(node, attr, os.path.join(folder, bpy.path.clean_name(node.name), ""))


def describe(scene) -> dict:
    render = scene.render
    pct = render.resolution_percentage / 100.0
    return {
        "scene": scene.name, "engine": render.engine,
        "fps": render.fps / (render.fps_base or 1.0),
        "frame_start": scene.frame_start, "frame_end": scene.frame_end,
        "frame_step": scene.frame_step,
        "resolution": [render.resolution_x, render.resolution_y,
                       render.resolution_percentage],
        "output_size": [max(1, int(render.resolution_x * pct)),
                        max(1, int(render.resolution_y * pct))],
        "camera": scene.camera.name if scene.camera else None, "cameras": cameras_of(scene),
        "needs_camera": needs_camera(scene),
        "samples": scene.cycles.samples if render.engine == "CYCLES" else None,
        "format": render.image_settings.file_format,
        "color_depth": render.image_settings.color_depth,
        "view_transform": scene.view_settings.view_transform,
    }


def inspect(job: dict) -> None:
    open_blend(job["blend"])
    active = bpy.context.scene
    info = {
        "blender_version": bpy.app.version_string,
        "file_version": f"{bpy.data.version[0]}.{bpy.data.version[1]}",  # as in the header
        "scene": active.name,
        "scenes": [describe(s) for s in sorted(bpy.data.scenes, key=lambda s: s.name)],
    }
    if job.get("dependencies", True):
        info.update(load_dependencies().trace())
    say("PILOT_INSPECT", json.dumps(info))


def write_preview(frame_path: str, path: str) -> None:
    """The finished frame (an 8-bit image) as a JPEG whose longer side is at most
    PREVIEW_MAX_PIXELS."""
    image = bpy.data.images.load(frame_path, check_existing=False)
    try:
        width, height = image.size
        scale = min(1.0, PREVIEW_MAX_PIXELS / max(width, height, 1))
        if scale < 1.0:
            image.scale(max(1, round(width * scale)), max(1, round(height * scale)))
        image.filepath_raw = path
        image.file_format = "JPEG"
        try:
            image.save(quality=PREVIEW_QUALITY)
        except TypeError:  # Blender before 4.0: save() takes no arguments
            image.save()
    finally:
        bpy.data.images.remove(image)


def save_display_png(result, scene, path: str) -> None:
    """The render result as an 8-bit PNG with the scene's view transform and look (what
    Blender shows), for a video of frames in another format (OpenEXR, TIFF...)."""
    settings = scene.render.image_settings
    kept = {name: getattr(settings, name) for name in _FORMAT_SETTINGS
            if hasattr(settings, name)}
    try:
        if "media_type" in kept:
            settings.media_type = "IMAGE"
        settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGB", "8"
        result.save_render(path, scene=scene)
    finally:
        for name, value in kept.items():
            setattr(settings, name, value)


def render_frames(job: dict) -> None:
    open_blend(job["blend"])
    scene = pick_scene(job)
    project = job.get("project_dir") or os.path.dirname(job["blend"])
    problems = load_dependencies().relocate(project, job.get("absolute") or {},
                                            os.path.join(project, OUTSIDE_DIR))
    for problem in problems:
        say("PILOT_MISSING", json.dumps(problem))
    if problems and not job.get("allow_missing_files"):
        raise Refused("missing", f"{len(problems)} file(s) the scene uses are not in the "
                      "project", EXIT_INVALID)
    outputs = job.get("file_output_dir") or os.path.join(job["out_dir"], "file-output")
    redirect_file_outputs(scene, outputs)
    apply_overrides(scene, job)
    setup_device(scene, job.get("device") or {})
    frames = [int(f) for f in job["frames"]]
    outside = [f for f in frames if not scene.frame_start <= f <= scene.frame_end]
    if outside:
        raise Refused("invalid", f"frame(s) {', '.join(map(str, outside[:10]))} outside the "
                      f"frame range {scene.frame_start}-{scene.frame_end} of scene "
                      f"{scene.name!r}", EXIT_INVALID)
    say("PILOT_SCENE", json.dumps(describe(scene)))
    current = {"frame": frames[0]}

    def on_stats(*args) -> None:
        text = args[0] if args and isinstance(args[0], str) else ""
        if text:
            say("PILOT_STATS", f"{current['frame']} {text}")

    bpy.app.handlers.render_stats.append(on_stats)
    out_dir, ext = job["out_dir"], scene.render.file_extension.lstrip(".")
    settings = scene.render.image_settings
    video_ready = (settings.file_format, settings.color_depth) in VIDEO_READY
    announced: set[str] = set()
    for frame in frames:
        current["frame"] = frame
        started = time.monotonic()
        scene.frame_set(frame)
        try:
            bpy.ops.render.render(write_still=False, scene=scene.name)
        except RuntimeError as exc:
            raise Refused("render", f"frame {frame}: {str(exc).strip()}", EXIT_RENDER) from None
        result = bpy.data.images["Render Result"]
        final = os.path.join(out_dir, f"{frame:04d}.{ext}")
        partial = os.path.join(out_dir, f".{frame:04d}.partial.{ext}")
        result.save_render(partial, scene=scene)
        os.replace(partial, final)  # the worker only ever sees whole frame files
        display = final
        if not video_ready:
            display = os.path.join(out_dir, f"video-{frame:04d}.png")
            save_display_png(result, scene, display + ".partial.png")
            os.replace(display + ".partial.png", display)
        preview = None
        if job.get("preview", True):  # before the frame is announced: the worker removes
            preview = os.path.join(out_dir, f"preview-{frame:04d}.jpg")  # it once uploaded
            write_preview(display, preview + ".partial.jpg")
            os.replace(preview + ".partial.jpg", preview)
        if display != final:
            say("PILOT_VIDEO_FRAME", f"{frame} {display}")
        announce_file_outputs(outputs, announced)
        say("PILOT_FRAME_DONE", f"{frame} {time.monotonic() - started:.3f} {final}")
        if preview is not None:
            say("PILOT_PREVIEW", preview)


def announce_file_outputs(folder: str, announced: set) -> None:
    """Tell the worker about files the File Output nodes wrote since the last frame."""
    for here, _dirs, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(here, name)
            if path not in announced:
                announced.add(path)
                say("PILOT_FILE_OUTPUT", f"{os.path.relpath(path, folder)} {path}")


def setup_device(scene, device: dict) -> None:
    """Render on the device the worker chose: the CPU, or a GPU backend (CUDA, OptiX,
    HIP, oneAPI, Metal) with the listed devices enabled. A GPU that cannot be set up is
    refused rather than left to Cycles, which would quietly render on the CPU."""
    if scene.render.engine != "CYCLES":
        return
    backend = device.get("type", "CPU")
    if backend == "CPU":
        scene.cycles.device = "CPU"
        return
    prefs = bpy.context.preferences.addons["cycles"].preferences
    try:
        prefs.compute_device_type = backend
    except TypeError:
        raise Refused("render", f"this Blender ({bpy.app.version_string}) has no {backend} "
                      "backend for Cycles", EXIT_RENDER) from None
    prefs.get_devices()
    wanted = set(device.get("ids") or [])
    if device.get("env_narrowed") and not any(
            dev.type == backend and dev.id in wanted for dev in prefs.devices):
        # this child's environment shows it only the cards its task was given
        wanted = set()
    used = []
    for dev in prefs.devices:
        dev.use = dev.type == backend and (not wanted or dev.id in wanted)
        if dev.use:
            used.append(dev.name)
    if not used:
        raise Refused("render", f"Cycles sees no {backend} device here (asked for "
                      f"{', '.join(sorted(wanted)) or 'any'})", EXIT_RENDER)
    scene.cycles.device = "GPU"
    say("PILOT_DEVICE", f"{backend}: {', '.join(used)}")


def main() -> int:
    try:
        job = job_from_argv(sys.argv)
        if job.get("mode") == "inspect":
            inspect(job)
        else:
            render_frames(job)
    except Refused as exc:
        say("PILOT_ERROR", f"{exc.what} {exc}")
        return exc.code
    except Exception as exc:  # the worker turns this into a reason a person can act on
        traceback.print_exc()
        say("PILOT_ERROR", f"internal {type(exc).__name__}: {exc}".replace("\n", " "))
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    if code:
        sys.exit(code)
