"""The panel in Properties > Output: the job's options, "Render on Parallel Pilot", and
the scene's job as it goes (state, a progress bar, what came back, errors in red) with
"Open in Dashboard" and, once it is done, "Download Frames and Video"."""

from __future__ import annotations

import bpy

from . import follow, submit
from .properties import job_settings, preferences


def _progress(layout, fraction: float, text: str) -> None:
    if hasattr(layout, "progress"):  # Blender 4.0+
        layout.progress(factor=fraction, type="BAR", text=text)
    else:
        layout.label(text=f"{text} ({fraction:.0%})")


class PARALLEL_PILOT_PT_render_on_farm(bpy.types.Panel):
    bl_label = "Parallel Pilot"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "output"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        scene = context.scene
        settings = job_settings(scene)
        prefs = preferences(context)

        column = layout.column()
        column.label(text=f"Server: {prefs.server or '(set in preferences)'}",
                     icon="WORLD")
        if not prefs.token:
            column.label(text="Set your API token in the add-on's preferences", icon="ERROR")
        column.prop(settings, "use_scene_frames")
        if settings.use_scene_frames:
            step = f" x{scene.frame_step}" if scene.frame_step > 1 else ""
            column.label(text=f"Frames {scene.frame_start}-{scene.frame_end}{step}")
        else:
            column.prop(settings, "frames")
        column.prop(settings, "chunk")
        column.prop(settings, "engine")
        column.prop(settings, "samples")
        column.prop(settings, "device")
        column.prop(settings, "allow_missing_files")
        layout.operator("parallel_pilot.render_on_farm", icon="RENDER_ANIMATION")

        status = follow.STATUSES.get(submit.scene_key(scene)) if bpy.data.filepath else None
        if status is None and settings.job_id:
            row = layout.row()
            row.label(text=f"Job {settings.job_id}")
            row.operator("parallel_pilot.follow_job", icon="FILE_REFRESH")
            row = layout.row()
            row.operator("parallel_pilot.open_job", icon="URL")
            row.operator("parallel_pilot.download_results", icon="IMPORT")
            return
        if status is None:
            return
        box = layout.box()
        title = f"Job {status.job_id}" if status.job_id else "Submitting"
        box.label(text=f"{title}: {status.state}", icon=_icon(status.state))
        _progress(box, status.progress, status.text or status.state)
        if status.report:
            box.label(text=status.report)
        if status.error:
            for line in _wrap(status.error):
                row = box.row()
                row.alert = True
                row.label(text=line)
        if status.download:
            box.label(text=status.download, icon="IMPORT")
        if status.job_id:
            row = box.row()
            row.operator("parallel_pilot.open_job", icon="URL")
            if status.state == "completed":
                row.operator("parallel_pilot.download_results", icon="IMPORT")


def _icon(state: str) -> str:
    return {"completed": "CHECKMARK", "failed": "ERROR", "error": "ERROR",
            "cancelled": "CANCEL"}.get(state, "TIME")


def _wrap(text: str, width: int = 60) -> list[str]:
    """A long message as lines (a label shows one line)."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def register() -> None:
    bpy.utils.register_class(PARALLEL_PILOT_PT_render_on_farm)


def unregister() -> None:
    bpy.utils.unregister_class(PARALLEL_PILOT_PT_render_on_farm)
