"""Blender projects made the way users make them, for the render tests: files saved from
Blender's default startup with bpy, real linked libraries, textures, UDIM tiles, image
sequences, baked caches, an Alembic file, a font, a sound, absolute paths.

``python tests/blender_projects.py KIND ROOT`` builds one with the interpreter's ``bpy``
(each run is its own process: bpy holds one file at a time); ``make(kind, root)`` runs
that from a test and returns the .blend to render. Kinds:

- ``full``: ``ROOT/shots/shot.blend`` uses ``//../assets/lib/char.blend``, which links
  ``//deep/prop.blend`` (whose material has ``//prop_tex.png`` and, by an absolute path,
  ``ROOT_abs/glow.png``); ``//../textures/wood.png``;
  UDIM tiles ``//../textures/udim/tiles.<UDIM>.png``; an image sequence
  ``//../textures/seq/frame_####.png``; a particle system baked to
  ``//blendcache_shot/``; ``//../caches/anim.abc`` read through a mesh sequence cache;
  a text object in ``//../fonts/mono.woff2``; a speaker with ``//../sounds/beep.wav``; and
  an image by the absolute path ``ROOT_abs/abs_tex.png`` (outside the project folder).
- ``shared``: ``ROOT/a.blend`` and ``ROOT/b.blend``, two shots using one texture
  ``ROOT/tex/shared.png``.
- ``ffmpeg``: a scene whose output is FFmpeg video (``media_type`` VIDEO), with AgX and
  the "Punchy" look.
- ``sequencer``: a scene with no camera that is only a sequencer edit (an image strip and
  a movie strip made with ffmpeg).
- ``startup``: the default startup file saved as it is (cube, camera, light; the brush
  asset references it carries point into Blender's installation).
- ``nocamera``: the default scene with its camera deleted.
- ``caches``: a VDB volume sequence (``//vdb/smoke_####.vdb``, written with the openvdb
  module Blender ships), a mesh-cache modifier reading the PC2 file ``ROOT_abs/wave.pc2``
  by an absolute path, and a movie clip (the scene's active clip, ``//clips/clip.mp4``);
  rendered with Workbench.
- ``formats``: the default scene with AgX, the "High Contrast" look and an exposure,
  saved with 16-bit TIFF output, and a compositor File Output node aimed at the absolute
  folder ``ROOT_elsewhere/``.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import sys
import wave
from pathlib import Path

# the Python with bpy that builds the projects (and runs test Blender children): this one,
# or another Blender's, e.g. PILOT_TEST_BPY_PYTHON=/opt/bpy42/bin/python for 4.2 LTS
BPY_PYTHON = os.environ.get("PILOT_TEST_BPY_PYTHON") or sys.executable
SIZE = (160, 90)  # pixels of every test scene
SAMPLES = 4  # Cycles samples of every test scene
FRAMES = (1, 6)  # frame range of every test scene
GENERATE_TIMEOUT = 240.0  # seconds one project may take to build


def make(kind: str, root: Path) -> Path:
    """Build the project ``kind`` under ``root`` in a bpy child process; returns the .blend
    to render."""
    proc = subprocess.run([BPY_PYTHON, __file__, kind, str(root)], capture_output=True,
                          text=True, timeout=GENERATE_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"building the {kind} project failed:\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def local_render(blend: Path, frame: int, out: Path, *, cwd: Path | None = None) -> Path:
    """Render ``frame`` of ``blend`` here as a user would at home (one thread, PNG), into
    ``out``: the reference a farm's frame is compared with."""
    script = ("import bpy, sys\n"
              "blend, frame, out = sys.argv[-3], int(sys.argv[-2]), sys.argv[-1]\n"
              "bpy.ops.wm.open_mainfile(filepath=blend, load_ui=False, use_scripts=False)\n"
              "s = bpy.context.scene\n"
              "s.render.image_settings.media_type = 'IMAGE'\n"
              "s.render.image_settings.file_format = 'PNG'\n"
              "s.render.threads_mode, s.render.threads = 'FIXED', 1\n"
              "s.frame_set(frame)\n"
              "s.render.filepath = out\n"
              "bpy.ops.render.render(write_still=True)\n")
    subprocess.run([sys.executable, "-c", script, str(blend), str(frame), str(out)],
                   check=True, capture_output=True, timeout=GENERATE_TIMEOUT, cwd=cwd)
    return out


def mean_abs_difference(a: Path, b: Path) -> float:
    """Mean absolute difference of two images' pixels, channels in 0..1 (bpy reads them)."""
    script = ("import bpy, sys, numpy as np\n"
              "def load(p):\n"
              "    im = bpy.data.images.load(p)\n"
              "    return np.array(im.pixels[:]).reshape(im.size[1], im.size[0], -1)\n"
              "a, b = load(sys.argv[-2]), load(sys.argv[-1])\n"
              "assert a.shape == b.shape, (a.shape, b.shape)\n"
              "print(float(np.abs(a - b).mean()))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(a), str(b)], check=True,
                          capture_output=True, text=True, timeout=GENERATE_TIMEOUT)
    return float(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- inside bpy


def _png(path: Path, w: int, h: int, color: tuple[float, float, float]) -> None:
    import bpy
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    img = bpy.data.images.new("tmp", w, h)
    px = np.zeros((h, w, 4), dtype=np.float32)
    px[..., :3] = color
    px[..., 3] = 1
    px[::2, ::2, :3] = [1 - c for c in color]  # a checker, so a wrong texture shows
    img.pixels.foreach_set(px.ravel())
    img.filepath_raw = str(path)
    img.file_format = "PNG"
    img.save()
    bpy.data.images.remove(img)


def _material(name: str, image):
    import bpy

    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:
        mat.use_nodes = True  # Blender before 5.0 makes materials without nodes
    tree = mat.node_tree
    tex = tree.nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Closest"
    tree.links.new(tex.outputs["Color"], tree.nodes["Principled BSDF"].inputs["Base Color"])
    return mat


def _scene_settings(scene) -> None:
    scene.render.resolution_x, scene.render.resolution_y = SIZE
    scene.render.resolution_percentage = 100
    scene.render.engine = "CYCLES"
    scene.cycles.samples = SAMPLES
    scene.cycles.device = "CPU"
    scene.cycles.use_denoising = False
    scene.frame_start, scene.frame_end = FRAMES


def _aim_camera(scene) -> None:
    import bpy

    scene.camera.location = (0, -11, 4.5)
    scene.camera.rotation_euler = (math.radians(72), 0, 0)
    scene.camera.data.lens = 30
    sun = bpy.data.lights.new("Sun", "SUN")
    sun.energy = 3
    sun_object = bpy.data.objects.new("Sun", sun)
    scene.collection.objects.link(sun_object)
    sun_object.rotation_euler = (math.radians(40), 0, math.radians(30))


def _libraries(root: Path) -> None:
    """assets/lib/char.blend (a monkey) whose material is linked from
    assets/lib/deep/prop.blend, which uses //prop_tex.png."""
    import bpy

    deep = root / "assets" / "lib" / "deep"
    glow = Path(f"{root}_abs") / "glow.png"
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_cone_add()
    _png(deep / "prop_tex.png", 8, 8, (0.1, 0.8, 0.2))
    _png(glow, 4, 4, (0.9, 0.1, 0.6))
    image = bpy.data.images.load(str(deep / "prop_tex.png"))
    material = _material("PropMat", image)
    emission = material.node_tree.nodes.new("ShaderNodeTexImage")
    emission.image = bpy.data.images.load(str(glow))  # by an absolute path, in a library
    bsdf = material.node_tree.nodes["Principled BSDF"]
    material.node_tree.links.new(emission.outputs["Color"], bsdf.inputs["Emission Color"])
    bsdf.inputs["Emission Strength"].default_value = 0.5
    bpy.context.object.data.materials.append(material)
    bpy.ops.wm.save_as_mainfile(filepath=str(deep / "prop.blend"))
    image.filepath = "//prop_tex.png"
    emission.image.filepath = str(glow)
    bpy.ops.wm.save_as_mainfile(filepath=str(deep / "prop.blend"), relative_remap=False)

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_monkey_add(location=(-2.6, 0.5, 1.6), size=1.2)
    bpy.context.object.name = "Char"
    with bpy.data.libraries.load(str(deep / "prop.blend"), link=True) as (_src, dst):
        dst.materials = ["PropMat"]
    bpy.context.object.data.materials.append(dst.materials[0])
    char = root / "assets" / "lib" / "char.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(char))
    bpy.data.libraries[0].filepath = "//deep/prop.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(char))


def _wav(path: Path, seconds: float = 0.25, rate: int = 8000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                      for i in range(int(seconds * rate)))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)


def build_full(root: Path) -> Path:
    import bpy

    _libraries(root)
    outside = Path(f"{root}_abs")
    shots = root / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    _png(root / "textures" / "wood.png", 16, 16, (0.6, 0.3, 0.1))
    _png(root / "textures" / "udim" / "tiles.1001.png", 16, 16, (0.9, 0.1, 0.1))
    _png(root / "textures" / "udim" / "tiles.1002.png", 16, 16, (0.1, 0.1, 0.9))
    for i in range(1, 7):
        _png(root / "textures" / "seq" / f"frame_{i:04d}.png", 8, 8, (i / 6, 0.5, 1 - i / 6))
    _png(outside / "abs_tex.png", 8, 8, (0.9, 0.9, 0.1))
    fonts = Path(bpy.utils.system_resource("DATAFILES", path="fonts"))
    (root / "fonts").mkdir(parents=True, exist_ok=True)
    shutil.copy(fonts / "DejaVuSansMono.woff2", root / "fonts" / "mono.woff2")
    _wav(root / "sounds" / "beep.wav")

    def rel(path: Path | str) -> str:
        return bpy.path.relpath(str(path), start=str(shots))

    bpy.ops.wm.read_homefile(app_template="")
    scene = bpy.context.scene
    _scene_settings(scene)
    with bpy.data.libraries.load(str(root / "assets/lib/char.blend"), link=True) as (_s, dst):
        dst.objects = ["Char"]
    for obj in dst.objects:
        scene.collection.objects.link(obj)

    cube = bpy.data.objects["Cube"]
    wood = bpy.data.images.load(str(root / "textures" / "wood.png"))
    cube.data.materials.clear()
    cube.data.materials.append(_material("Wood", wood))

    bpy.ops.mesh.primitive_grid_add(x_subdivisions=2, y_subdivisions=1, size=2,
                                    location=(-2.5, 0, 0))
    grid = bpy.context.object
    uv = grid.data.uv_layers.active.data
    for poly in grid.data.polygons:
        if poly.center.x > 0:
            for loop in poly.loop_indices:
                uv[loop].uv.x += 1.0  # this half of the plane shows tile 1002
    udim = bpy.data.images.load(str(root / "textures" / "udim" / "tiles.1001.png"))
    udim.source = "TILED"
    udim.filepath = str(root / "textures" / "udim" / "tiles.<UDIM>.png")
    udim.tiles.new(1002)
    grid.data.materials.append(_material("Udim", udim))

    bpy.ops.mesh.primitive_plane_add(size=1.5, location=(2.5, 0, 0))
    plane = bpy.context.object
    frames = bpy.data.images.load(str(root / "textures" / "seq" / "frame_0001.png"))
    frames.source = "SEQUENCE"
    mat = _material("Seq", frames)
    node = next(n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE")
    node.image_user.frame_duration = 6
    node.image_user.use_auto_refresh = True
    plane.data.materials.append(mat)

    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.6, location=(0, 0, 2))
    absolute = bpy.data.images.load(str(outside / "abs_tex.png"))
    bpy.context.object.data.materials.append(_material("Abs", absolute))

    bpy.ops.object.text_add(location=(-1.6, -3.2, 0.1), rotation=(math.radians(90), 0, 0))
    text = bpy.context.object
    text.data.body = "PILOT"
    text.data.size = 1.2
    text.data.font = bpy.data.fonts.load(str(root / "fonts" / "mono.woff2"))

    bpy.ops.object.speaker_add(location=(3, 3, 0))
    bpy.context.object.data.sound = bpy.data.sounds.load(str(root / "sounds" / "beep.wav"))

    # Alembic: an animated cube exported, then read back through a cache file
    bpy.ops.mesh.primitive_cube_add(size=0.5, location=(0, -2, 0.5))
    anim = bpy.context.object
    anim.location.z = 0.0
    anim.keyframe_insert("location", frame=1)
    anim.location.z = 1.5
    anim.keyframe_insert("location", frame=6)
    bpy.ops.object.select_all(action="DESELECT")
    anim.select_set(True)
    bpy.context.view_layer.objects.active = anim
    (root / "caches").mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.alembic_export(filepath=str(root / "caches" / "anim.abc"), selected=True,
                              start=1, end=6)
    bpy.data.objects.remove(anim)
    bpy.ops.wm.alembic_import(filepath=str(root / "caches" / "anim.abc"))

    bpy.ops.mesh.primitive_plane_add(size=2, location=(0, 2, 2))
    emitter = bpy.context.object
    emitter.modifiers.new("particles", "PARTICLE_SYSTEM")
    system = emitter.particle_systems[0]
    system.settings.count, system.settings.lifetime = 50, 50
    system.settings.frame_start, system.settings.frame_end = 1, 3
    system.settings.render_type = "OBJECT"
    system.settings.particle_size = 0.08
    bpy.ops.mesh.primitive_ico_sphere_add(radius=0.08, location=(10, 10, 10))
    system.settings.instance_object = bpy.context.object
    system.point_cache.name = "parts"

    _aim_camera(scene)
    blend = shots / "shot.blend"
    # saved once so that the relative paths and the disk cache have a file to belong to
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    for datablock in (wood, udim, frames, text.data.font, bpy.data.sounds[0],
                      *bpy.data.cache_files):
        datablock.filepath = rel(bpy.path.abspath(datablock.filepath))
    absolute.filepath = str(outside / "abs_tex.png")  # stays absolute
    system.point_cache.use_disk_cache = True
    with bpy.context.temp_override(scene=scene, active_object=emitter,
                                   point_cache=system.point_cache):
        bpy.ops.ptcache.bake(bake=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), relative_remap=False)
    (shots / "shot.blend1").unlink(missing_ok=True)
    return blend


def build_shared(root: Path) -> Path:
    import bpy

    _png(root / "tex" / "shared.png", 64, 64, (0.2, 0.6, 0.9))
    for name, size in (("a", 2.0), ("b", 1.2)):
        bpy.ops.wm.read_homefile(app_template="")
        scene = bpy.context.scene
        _scene_settings(scene)
        cube = bpy.data.objects["Cube"]
        cube.scale = (size / 2,) * 3
        image = bpy.data.images.load(str(root / "tex" / "shared.png"))
        cube.data.materials.clear()
        cube.data.materials.append(_material("Shared", image))
        _aim_camera(scene)
        bpy.ops.wm.save_as_mainfile(filepath=str(root / f"{name}.blend"))
    return root / "a.blend"


def build_ffmpeg(root: Path) -> Path:
    import bpy

    bpy.ops.wm.read_homefile(app_template="")
    scene = bpy.context.scene
    _scene_settings(scene)
    _aim_camera(scene)
    settings = scene.render.image_settings
    settings.media_type = "VIDEO"
    settings.file_format = "FFMPEG"
    scene.render.ffmpeg.format = "MPEG4"
    scene.render.filepath = "//render/shot_"
    scene.view_settings.view_transform = "AgX"
    scene.view_settings.look = "AgX - Punchy"
    scene.view_settings.exposure = 0.7
    root.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(root / "video_output.blend"))
    return root / "video_output.blend"


def build_sequencer(root: Path) -> Path:
    import bpy
    import imageio_ffmpeg

    for i in range(1, 7):
        _png(root / "media" / "stills" / f"still_{i:03d}.png", 32, 18, (i / 6, 0.2, 0.4))
    movie = root / "media" / "clip.mp4"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-framerate", "24", "-i",
                    str(root / "media" / "stills" / "still_%03d.png"), "-vf",
                    "scale=160:90", "-pix_fmt", "yuv420p", str(movie)], check=True)
    bpy.ops.wm.read_homefile(app_template="")
    scene = bpy.context.scene
    _scene_settings(scene)
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)  # no camera: an edit, not a 3D scene
    editor = scene.sequence_editor_create()
    strips = editor.strips
    stills = strips.new_image("stills", str(root / "media" / "stills" / "still_001.png"),
                              channel=1, frame_start=1)
    for i in range(2, 4):
        stills.elements.append(f"still_{i:03d}.png")
    strips.new_movie("clip", str(movie), channel=1, frame_start=4)
    scene.render.use_sequencer = True
    blend = root / "edit.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    return blend


def build_startup(root: Path) -> Path:
    import bpy

    bpy.ops.wm.read_homefile(app_template="")
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = SIZE
    scene.cycles.samples = SAMPLES
    root.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(root / "untitled.blend"))
    return root / "untitled.blend"


def build_nocamera(root: Path) -> Path:
    import bpy

    bpy.ops.wm.read_homefile(app_template="")
    _scene_settings(bpy.context.scene)
    bpy.data.objects.remove(bpy.data.objects["Camera"])
    root.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(root / "nocamera.blend"))
    return root / "nocamera.blend"


def _openvdb():
    import importlib

    import bpy

    python = Path(bpy.utils.system_resource("PYTHON"))
    for candidate in python.glob("lib/python3*/site-packages"):
        sys.path.append(str(candidate))
    return importlib.import_module("openvdb")


def _vdb(path: Path, radius: int) -> None:
    vdb = _openvdb()
    grid = vdb.FloatGrid()
    grid.name = "density"
    access = grid.getAccessor()
    for i in range(-radius, radius):
        for j in range(-radius, radius):
            for k in range(-radius, radius):
                access.setValueOn((i, j, k), 1.0)
    grid.transform = vdb.createLinearTransform(voxelSize=0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    vdb.write(str(path), grids=[grid])


def _pc2(path: Path, points: list[tuple[float, float, float]], frames: int) -> None:
    """A PC2 point cache: the points rising 0.2 a frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(b"POINTCACHE2\0" + struct.pack("<iiffi", 1, len(points), 1.0, 1.0, frames))
        for frame in range(frames):
            for x, y, z in points:
                out.write(struct.pack("<fff", x, y, z + 0.2 * frame))


def build_caches(root: Path) -> Path:
    import bpy
    import imageio_ffmpeg

    outside = Path(f"{root}_abs")
    for frame, radius in ((1, 3), (2, 5), (3, 7)):
        _vdb(root / "vdb" / f"smoke_{frame:04d}.vdb", radius)
    bpy.ops.wm.read_homefile(app_template="")
    scene = bpy.context.scene
    _scene_settings(scene)
    scene.render.engine = "BLENDER_WORKBENCH"  # Cycles takes ~10 s for any volume here
    _aim_camera(scene)
    cube = bpy.data.objects["Cube"]
    _pc2(outside / "wave.pc2", [tuple(v.co) for v in cube.data.vertices], 6)
    cache = cube.modifiers.new("cache", "MESH_CACHE")
    cache.cache_format = "PC2"
    cache.filepath = str(outside / "wave.pc2")
    cache.frame_start = 1
    volume = bpy.data.volumes.new("smoke")
    volume.filepath = str(root / "vdb" / "smoke_0001.vdb")
    volume.is_sequence = True
    volume.frame_duration = 3
    smoke = bpy.data.objects.new("Smoke", volume)
    smoke.location = (2.5, 0, 1)
    scene.collection.objects.link(smoke)
    for i in range(1, 4):
        _png(root / "clips" / "src" / f"c_{i:03d}.png", 32, 18, (0.2, i / 3, 0.5))
    (root / "clips").mkdir(parents=True, exist_ok=True)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
                    "-framerate", "24", "-i", str(root / "clips" / "src" / "c_%03d.png"),
                    "-pix_fmt", "yuv420p", str(root / "clips" / "clip.mp4")], check=True)
    shutil.rmtree(root / "clips" / "src")
    scene.active_clip = bpy.data.movieclips.load(str(root / "clips" / "clip.mp4"))
    blend = root / "caches.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))  # makes the paths relative
    cache.filepath = str(outside / "wave.pc2")  # the one kept absolute
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), relative_remap=False)
    return blend


def build_formats(root: Path) -> Path:
    import bpy

    bpy.ops.wm.read_homefile(app_template="")
    scene = bpy.context.scene
    _scene_settings(scene)
    _aim_camera(scene)
    scene.view_settings.view_transform = "AgX"
    scene.view_settings.look = "AgX - High Contrast"
    scene.view_settings.exposure = 0.5
    settings = scene.render.image_settings
    settings.file_format, settings.color_depth = "TIFF", "16"
    scene.view_layers[0].use_pass_z = True  # a second pass, for multilayer OpenEXR
    tree = bpy.data.node_groups.new("Compositing", "CompositorNodeTree")
    scene.compositing_node_group = tree
    layers = tree.nodes.new("CompositorNodeRLayers")
    output = tree.nodes.new("CompositorNodeOutputFile")
    output.file_output_items.new("RGBA", "Image")
    output.directory = f"{root}_elsewhere/"
    output.file_name = "pass_"
    tree.links.new(layers.outputs["Image"], output.inputs["Image"])
    root.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(root / "formats.blend"))
    return root / "formats.blend"


BUILDERS = {"full": build_full, "shared": build_shared, "ffmpeg": build_ffmpeg,
            "sequencer": build_sequencer, "startup": build_startup,
            "nocamera": build_nocamera, "formats": build_formats,
            "caches": build_caches}


if __name__ == "__main__":
    kind, where = sys.argv[1], Path(sys.argv[2]).absolute()
    os.makedirs(where, exist_ok=True)
    print(BUILDERS[kind](where))
