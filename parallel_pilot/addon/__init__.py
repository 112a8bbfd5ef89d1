"""Parallel Pilot for Blender: render the open project on a Parallel Pilot farm from a
panel in Properties > Output.

``pilot addon build`` zips this folder with ``core/project.py`` and
``kinds/render/dependencies.py`` carried into ``_carried/``, so the add-on packs a project
exactly as ``pilot render`` does. Blender's Python has only the standard library: the
add-on's own modules import nothing else but ``bpy``. It installs as an extension
(Blender 4.2+, ``blender_manifest.toml``) or as a legacy add-on (``bl_info``).
"""

bl_info = {
    "name": "Parallel Pilot",
    "author": "Parallel Pilot",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "Properties > Output > Parallel Pilot",
    "description": "Render the open project on a Parallel Pilot render farm",
    "category": "Render",
}

from . import follow, operators, panel, properties  # noqa: E402 - bl_info comes first

_MODULES = (properties, operators, panel)


def register() -> None:
    for module in _MODULES:
        module.register()


def unregister() -> None:
    follow.stop_all()
    for module in reversed(_MODULES):
        module.unregister()
