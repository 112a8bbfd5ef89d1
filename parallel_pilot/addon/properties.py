"""What the user sets: the coordinator and API token once, in the add-on's preferences
(saved with Blender's preferences, the token shown masked), and per scene the job's
options in the Output properties (saved with the .blend, with the last job's id, so a
reopened file still knows its job)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from .api import DEFAULT_SERVER

ADDON = __package__  # "parallel_pilot_blender", or "bl_ext.<repo>.parallel_pilot_blender"

ENGINES = [
    ("SCENE", "Scene's", "Render with the engine the scene is set to"),
    ("CYCLES", "Cycles", "Cycles, on the device chosen below"),
    ("BLENDER_EEVEE", "EEVEE", "EEVEE (slow on workers without a GPU)"),
    ("BLENDER_WORKBENCH", "Workbench", "Workbench: fast previews"),
]
DEVICES = [
    ("ANY", "Any", "A GPU where the worker has one, else its CPU"),
    ("GPU", "GPU", "Only workers whose Blender sees a GPU"),
    ("CPU", "CPU", "Render on the workers' CPUs"),
]


class PilotPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON

    server: StringProperty(  # type: ignore[valid-type]
        name="Server", default=DEFAULT_SERVER,
        description="Address of the Parallel Pilot coordinator, like http://farm:8330")
    token: StringProperty(  # type: ignore[valid-type]
        name="API token", subtype="PASSWORD", default="",
        description="Your API token (pilot tokens create, or the dashboard's Account page)")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "server")
        layout.prop(self, "token")
        if not getattr(bpy.app, "online_access", True):
            layout.label(text="Online access is off: only a coordinator on this machine "
                         "(127.0.0.1) can be used", icon="INFO")


class PilotJobSettings(bpy.types.PropertyGroup):
    use_scene_frames: BoolProperty(  # type: ignore[valid-type]
        name="Scene's frames", default=True,
        description="Render the scene's frame range (start, end and step)")
    frames: StringProperty(  # type: ignore[valid-type]
        name="Frames", default="",
        description="Frames to render: 1-240, 1-10,20-30 or 1-240x2")
    chunk: IntProperty(  # type: ignore[valid-type]
        name="Frames per task", default=0, min=0, max=1000,
        description="Frames one worker renders in one task (0: chosen by the farm)")
    engine: EnumProperty(  # type: ignore[valid-type]
        name="Engine", items=ENGINES, default="SCENE")
    samples: IntProperty(  # type: ignore[valid-type]
        name="Samples", default=0, min=0, max=1_000_000,
        description="Render samples (0: the scene's own)")
    device: EnumProperty(  # type: ignore[valid-type]
        name="Device", items=DEVICES, default="ANY")
    allow_missing_files: BoolProperty(  # type: ignore[valid-type]
        name="Allow missing files", default=False,
        description="Render even when files the scene uses are not on this machine")
    job_id: IntProperty(  # type: ignore[valid-type]
        name="Last job", default=0, min=0,
        description="The job this scene was last submitted as")
    job_server: StringProperty(  # type: ignore[valid-type]
        name="Last job's server", default="",
        description="The coordinator the last job was submitted to")


def preferences(context=None) -> PilotPreferences:
    context = context or bpy.context
    return context.preferences.addons[ADDON].preferences


def job_settings(scene) -> PilotJobSettings:
    return scene.parallel_pilot


CLASSES = (PilotPreferences, PilotJobSettings)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.parallel_pilot = bpy.props.PointerProperty(type=PilotJobSettings)


def unregister() -> None:
    del bpy.types.Scene.parallel_pilot
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
