"""The sample scene: a small animated .blend built procedurally with ``bpy``.

Run ``python -m parallel_pilot.scenes.sample_scene OUT.blend [--frames 48]`` with an
interpreter that has the ``bpy`` package. It builds a ground, a few shaded objects that
move, spin and bounce, a camera that orbits them, a sun and an area light, and saves the
file (uncompressed). ``make demo`` and the render tests use it; nothing here imports ``bpy``
until ``build_scene`` runs, so importing this module is cheap.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_FRAMES = 48  # frames of animation
DEFAULT_FPS = 24  # frames per second of the scene
DEFAULT_WIDTH = 320  # pixels, at 100 % resolution
DEFAULT_HEIGHT = 180  # pixels, at 100 % resolution
DEFAULT_SAMPLES = 16  # Cycles samples per pixel
DEFAULT_ENGINE = "CYCLES"
CAMERA_NAME = "Camera"
SCENE_NAME = "Scene"

# (name, primitive, location, RGB base colour) of the objects that move
_OBJECTS: tuple[tuple[str, str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("Cube", "cube", (-2.2, 0.0, 1.0), (0.85, 0.25, 0.15)),
    ("Sphere", "sphere", (0.0, 0.0, 1.0), (0.2, 0.45, 0.85)),
    ("Torus", "torus", (2.2, 0.0, 1.0), (0.95, 0.75, 0.2)),
    ("Cone", "cone", (0.0, 2.4, 0.9), (0.3, 0.75, 0.35)),
)


def build_scene(out: Path, *, frames: int = DEFAULT_FRAMES, fps: int = DEFAULT_FPS,
                width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                samples: int = DEFAULT_SAMPLES, engine: str = DEFAULT_ENGINE) -> dict[str, Any]:
    """Build the scene from factory settings and save it to ``out``; returns its facts."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = SCENE_NAME
    scene.frame_start, scene.frame_end = 1, frames
    scene.render.fps, scene.render.fps_base = fps, 1.0
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.engine = engine
    scene.render.image_settings.file_format = "PNG"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False  # denoising costs more than it saves at 16 samples
    scene.cycles.max_bounces = 4
    scene.eevee.taa_render_samples = samples

    world = bpy.data.worlds.new("World")
    if world.node_tree is None:
        world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.05, 0.06, 0.09, 1)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 1.0
    scene.world = world

    _add_ground(bpy, scene)
    for index, (name, primitive, location, color) in enumerate(_OBJECTS):
        obj = _add_object(bpy, scene, name, primitive, location, color)
        _animate_object(obj, index, frames)
    _add_lights(bpy, scene)
    camera = _add_camera(bpy, scene, frames)
    scene.camera = camera

    out.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(out.resolve()), compress=False)
    return {"path": str(out), "frames": frames, "fps": fps, "resolution": [width, height],
            "engine": engine, "samples": samples, "camera": CAMERA_NAME, "scene": SCENE_NAME}


def _material(bpy: Any, name: str, color: tuple[float, float, float],
              roughness: float = 0.4) -> Any:
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:  # Blender before 5.0 makes node trees only when asked
        mat.use_nodes = True
    bsdf = mat.node_tree.nodes.get("Principled BSDF")
    bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    return mat


def _link(scene: Any, obj: Any) -> Any:
    scene.collection.objects.link(obj)
    return obj


def _add_ground(bpy: Any, scene: Any) -> None:
    mesh = bpy.data.meshes.new("Ground")
    size = 12.0
    mesh.from_pydata([(-size, -size, 0), (size, -size, 0), (size, size, 0), (-size, size, 0)],
                     [], [(0, 1, 2, 3)])
    ground = _link(scene, bpy.data.objects.new("Ground", mesh))
    ground.data.materials.append(_material(bpy, "Ground", (0.42, 0.44, 0.48), roughness=0.8))


def _add_object(bpy: Any, scene: Any, name: str, primitive: str,
                location: tuple[float, float, float], color: tuple[float, float, float]) -> Any:
    import bmesh

    bm = bmesh.new()
    if primitive == "cube":
        bmesh.ops.create_cube(bm, size=1.4)
    elif primitive == "sphere":
        bmesh.ops.create_uvsphere(bm, u_segments=32, v_segments=16, radius=0.9)
    elif primitive == "cone":
        bmesh.ops.create_cone(bm, cap_ends=True, segments=32, radius1=0.8, radius2=0.0,
                              depth=1.8)
    else:  # torus: a ring of small circles swept around the z axis
        _torus(bm, major=0.8, minor=0.3, rings=48, sides=16)
    mesh = bpy.data.meshes.new(name)
    bm.to_mesh(mesh)
    bm.free()
    for poly in mesh.polygons:
        poly.use_smooth = primitive != "cube"
    obj = _link(scene, bpy.data.objects.new(name, mesh))
    obj.location = location
    obj.data.materials.append(_material(bpy, name, color))
    return obj


def _torus(bm: Any, *, major: float, minor: float, rings: int, sides: int) -> None:
    verts = []
    for i in range(rings):
        a = 2 * math.pi * i / rings
        for j in range(sides):
            b = 2 * math.pi * j / sides
            r = major + minor * math.cos(b)
            verts.append(bm.verts.new((r * math.cos(a), r * math.sin(a), minor * math.sin(b))))
    for i in range(rings):
        for j in range(sides):
            bm.faces.new((verts[i * sides + j], verts[((i + 1) % rings) * sides + j],
                          verts[((i + 1) % rings) * sides + (j + 1) % sides],
                          verts[i * sides + (j + 1) % sides]))


def _animate_object(obj: Any, index: int, frames: int) -> None:
    """Spin each object a full turn and bounce it, phase-shifted per object."""
    base_z = obj.location.z
    steps = max(2, min(frames, 12))
    for step in range(steps + 1):
        frame = 1 + round((frames - 1) * step / steps)
        t = step / steps
        obj.rotation_euler = (0.0, 0.0, 2 * math.pi * t * (1 if index % 2 else -1))
        obj.keyframe_insert("rotation_euler", frame=frame)
        obj.location.z = base_z + 0.8 * abs(math.sin(2 * math.pi * t + index * 0.8))
        obj.keyframe_insert("location", frame=frame)


def _add_lights(bpy: Any, scene: Any) -> None:
    sun = bpy.data.lights.new("Sun", type="SUN")
    sun.energy = 2.5
    sun_obj = _link(scene, bpy.data.objects.new("Sun", sun))
    sun_obj.rotation_euler = (math.radians(50), math.radians(10), math.radians(30))
    area = bpy.data.lights.new("Fill", type="AREA")
    area.energy = 400.0
    area.size = 4.0
    area_obj = _link(scene, bpy.data.objects.new("Fill", area))
    area_obj.location = (-4.0, -4.0, 5.0)
    area_obj.rotation_euler = (math.radians(45), 0.0, math.radians(-45))


def _add_camera(bpy: Any, scene: Any, frames: int) -> Any:
    """A camera on a half orbit around the objects, always looking at their centre."""
    target = _link(scene, bpy.data.objects.new("CameraTarget", None))
    target.location = (0.0, 0.5, 1.0)
    cam = bpy.data.cameras.new(CAMERA_NAME)
    cam.lens = 35
    cam_obj = _link(scene, bpy.data.objects.new(CAMERA_NAME, cam))
    track = cam_obj.constraints.new("TRACK_TO")
    track.target = target
    track.track_axis, track.up_axis = "TRACK_NEGATIVE_Z", "UP_Y"
    steps = max(2, min(frames, 12))
    for step in range(steps + 1):
        angle = math.radians(-120 + 120 * step / steps)
        cam_obj.location = (9.0 * math.sin(angle), -9.0 * math.cos(angle), 4.5)
        cam_obj.keyframe_insert("location", frame=1 + round((frames - 1) * step / steps))
    return cam_obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m parallel_pilot.scenes.sample_scene",
        description="Write a small animated sample scene (needs the bpy package).")
    parser.add_argument("out", type=Path, help="the .blend file to write")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    parser.add_argument("--fps", type=int, default=DEFAULT_FPS)
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--engine", default=DEFAULT_ENGINE,
                        choices=["CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH"])
    args = parser.parse_args(argv)
    if args.frames < 1 or args.fps < 1 or args.width < 2 or args.height < 2 or args.samples < 1:
        parser.error("frames, fps and samples must be at least 1, width and height at least 2")
    try:
        import bpy  # noqa: F401
    except ImportError:
        print("the sample scene needs the bpy package: pip install 'parallel-pilot[render]'",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    facts = build_scene(args.out, frames=args.frames, fps=args.fps, width=args.width,
                        height=args.height, samples=args.samples, engine=args.engine)
    print(f"wrote {facts['path']}: {facts['frames']} frames at {facts['fps']} fps, "
          f"{args.width}x{args.height}, {args.engine} in {time.monotonic() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
