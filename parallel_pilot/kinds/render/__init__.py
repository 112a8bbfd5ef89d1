"""The ``render`` kind: Blender projects rendered in chunks on the workers, then assembled.

``kind.py`` (parameters, checks, plan), ``chunk.py`` (one chunk on a worker), ``script.py``
(runs inside Blender), ``blender.py`` (finding and running Blender), ``blend_file.py``
(.blend headers), ``assemble.py`` (frames -> video and zip)."""

from parallel_pilot.kinds.render.kind import RenderKind, RenderParams

__all__ = ["RenderKind", "RenderParams"]
