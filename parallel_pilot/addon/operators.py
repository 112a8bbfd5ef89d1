"""The add-on's operators: render the current scene on the farm, open the job's page in
the dashboard, follow the scene's last job again (after reopening the file), download
its frames and video.

In the UI the render operator only does the checks, the save and the trace (what needs
``bpy``) and hands the upload to a thread (``follow.py``); in background mode (``blender
-b``, the bpy module) it submits before it returns, so that scripts get the job at once.
"""

from __future__ import annotations

import traceback
import webbrowser

import bpy

from . import follow, pack, results, submit
from .api import Api, ApiError, job_page
from .properties import job_settings, preferences

DOWNLOAD_DIR = "//parallel_pilot/"  # where results go by default: beside the .blend


def _report_failure(operator, message: str) -> set[str]:
    operator.report({"ERROR"}, message)
    return {"CANCELLED"}


class PARALLEL_PILOT_OT_render_on_farm(bpy.types.Operator):
    """Save the file, pack the project (every file the scene uses) and render it on the
    Parallel Pilot farm"""

    bl_idname = "parallel_pilot.render_on_farm"
    bl_label = "Render on Parallel Pilot"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if context.scene is None:
            return False
        key = submit.scene_key(context.scene)
        status = follow.STATUSES.get(key)
        if follow.busy(key) and status is not None and status.state == "uploading":
            cls.poll_message_set("This scene's project is being uploaded")
            return False
        return True

    def execute(self, context):
        try:
            submission = submit.prepare(context)
        except submit.Refused as exc:
            return _report_failure(self, str(exc))
        except RuntimeError as exc:  # saving failed: Blender's own message
            return _report_failure(self, f"could not save the file: {exc}")
        except Exception as exc:  # tracing met something it does not know: say what
            traceback.print_exc()
            return _report_failure(self, "could not list the files the scene uses: "
                                   f"{type(exc).__name__}: {exc}")
        if not bpy.app.background:
            follow.start(submission.scene_key, submission.server, submission.token,
                         submission=submission)
            files = len(set(submission.layout.files.values()))
            self.report({"INFO"}, f"Uploading {files} file(s) to {submission.server}")
            return {"FINISHED"}
        try:
            job, report = submit.send(submission)
        except ApiError as exc:
            return _report_failure(self, exc.message)
        submit.remember(context.scene, submission, job)
        status = follow.Status(key=submission.scene_key, server=submission.server,
                               report=pack.describe_report(report))
        for name, value in follow.job_fields(job).items():
            setattr(status, name, value)
        follow.STATUSES[submission.scene_key] = status
        self.report({"INFO"}, f"Submitted job {job['id']} ({pack.describe_report(report)}): "
                    f"{status.url}")
        return {"FINISHED"}


class PARALLEL_PILOT_OT_open_job(bpy.types.Operator):
    """Open the scene's last job in the farm's dashboard (a web browser)"""

    bl_idname = "parallel_pilot.open_job"
    bl_label = "Open in Dashboard"

    @classmethod
    def poll(cls, context):
        return context.scene is not None and job_settings(context.scene).job_id > 0

    def execute(self, context):
        settings = job_settings(context.scene)
        try:
            url = job_page(settings.job_server or preferences(context).server, settings.job_id)
        except ApiError as exc:
            return _report_failure(self, exc.message)
        try:
            bpy.ops.wm.url_open(url=url)
        except RuntimeError:  # no window manager to open it (background mode)
            webbrowser.open(url)
        self.report({"INFO"}, url)
        return {"FINISHED"}


class PARALLEL_PILOT_OT_follow_job(bpy.types.Operator):
    """Show the progress of the scene's last job again"""

    bl_idname = "parallel_pilot.follow_job"
    bl_label = "Follow Job"

    @classmethod
    def poll(cls, context):
        return context.scene is not None and job_settings(context.scene).job_id > 0

    def execute(self, context):
        settings = job_settings(context.scene)
        prefs = preferences(context)
        follow.start(submit.scene_key(context.scene), settings.job_server or prefs.server,
                     prefs.token, job_id=settings.job_id)
        return {"FINISHED"}


class PARALLEL_PILOT_OT_download_results(bpy.types.Operator):
    """Download the frames and video of the scene's last job next to the .blend"""

    bl_idname = "parallel_pilot.download_results"
    bl_label = "Download Frames and Video"

    directory: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Folder", subtype="DIR_PATH", options={"SKIP_SAVE"}, default="",
        description=f"Where to write them (default {DOWNLOAD_DIR}job_<id>)")

    @classmethod
    def poll(cls, context):
        return context.scene is not None and job_settings(context.scene).job_id > 0

    def execute(self, context):
        settings = job_settings(context.scene)
        prefs = preferences(context)
        server = settings.job_server or prefs.server
        folder = bpy.path.abspath(self.directory or f"{DOWNLOAD_DIR}job_{settings.job_id}")
        if not bpy.app.background:
            follow.start_download(submit.scene_key(context.scene), server, prefs.token,
                                  settings.job_id, folder)
            self.report({"INFO"}, f"Downloading job {settings.job_id} to {folder}")
            return {"FINISHED"}
        try:
            written = results.download(Api(server, prefs.token), settings.job_id, folder)
        except (ApiError, OSError) as exc:
            return _report_failure(self, getattr(exc, "message", None) or str(exc))
        self.report({"INFO"}, f"Downloaded {len(written)} file(s) to {folder}")
        return {"FINISHED"}


def show_error(message: str) -> None:
    """A popup with an error a thread found (the operator that started it has returned)."""
    print(f"Parallel Pilot: {message}")
    manager = bpy.context.window_manager
    windows = list(getattr(manager, "windows", []))
    if bpy.app.background or not windows:  # no screen to show it on (4.2 crashes trying)
        return

    def draw(menu, _context):
        menu.layout.label(text=message)

    with bpy.context.temp_override(window=windows[0]):
        manager.popup_menu(draw, title="Parallel Pilot", icon="ERROR")


CLASSES = (PARALLEL_PILOT_OT_render_on_farm, PARALLEL_PILOT_OT_open_job,
           PARALLEL_PILOT_OT_follow_job, PARALLEL_PILOT_OT_download_results)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    follow._notify.append(show_error)


def unregister() -> None:
    follow._notify.clear()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
