"""Every file the open .blend uses, as Blender itself sees it. Runs INSIDE Blender (the
standard library and ``bpy`` only): ``script.py`` calls it in a child Blender for the CLI
and SDK, the add-on in the user's own Blender.

Blender's own list of paths (``bpy.data.file_path_map``) names each path with the data
that uses it; this module turns each path into the files it stands for: one file; the
tiles of a UDIM image (``<UDIM>``, ``<UVTILE>``); the frames of an image, clip, volume or
cache sequence; every file of a cache folder (fluid, ocean, geometry-node bakes); and
the ``blendcache_<file>/`` files of point caches (particles, cloth, soft bodies, dynamic
paint, rigid bodies), which Blender names by the .blend and not by any path. Sequencer
strips are read from the scenes. Packed files travel inside the .blend and are skipped;
paths into Blender's own installation (the brush assets a file saved from the default
startup refers to) are ``bundled``: every Blender has its own.

``trace()`` returns::

    {"blend": "/home/ann/proj/shots/shot.blend",
     "dependencies": [{"path": "//../textures/wood.png",      # as written in the file
                       "resolved": "/home/ann/proj/textures/wood.png",
                       "blend": "/home/ann/proj/shots/shot.blend",  # where it is written
                       "used_by": "image \\"wood.png\\"", "kind": "image",
                       "files": ["/home/ann/proj/textures/wood.png"], "missing": [],
                       "bundled": false}, ...]}
"""

from __future__ import annotations

import glob
import os
import re

import bpy

MAX_FOLDER_FILES = 100_000  # files taken from one cache folder at most
POINT_CACHE_DIR = "blendcache_"  # Blender's folder for point caches: blendcache_<file stem>
_FRAME_DIGITS = re.compile(r"^(.*?)(\d+)(\D*)$")  # frame_0001.png -> frame_, 0001, .png
_TILE_TOKENS = ("<UDIM>", "<UVTILE>")
# where paths into a Blender installation point: its datafiles (brushes, studio lights)
_BUNDLED = re.compile(r"[/\\]datafiles[/\\](assets|studiolights|fonts|colormanagement)[/\\]")


def _abs(path: str, library=None) -> str:
    return os.path.normpath(bpy.path.abspath(path, library=library))


def _describe(idb) -> str:
    kind = type(idb).__name__
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", kind).lower()
    return f'{words} "{idb.name}"'


def _blend_of(idb) -> str:
    library = getattr(idb, "library", None)
    if library is not None:
        return _abs(library.filepath)
    return bpy.data.filepath


def _sequence_files(resolved: str) -> list[str]:
    """The frames of a sequence whose first (or any) frame is ``resolved``: same folder,
    same text around the frame number, any number of digits."""
    folder, name = os.path.split(resolved)
    match = _FRAME_DIGITS.match(name)
    if match is None:
        return [resolved] if os.path.isfile(resolved) else []
    head, _digits, tail = match.groups()
    pattern = re.compile(re.escape(head) + r"\d+" + re.escape(tail) + "$")
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return []
    return sorted(os.path.join(folder, n) for n in names if pattern.match(n)
                  and os.path.isfile(os.path.join(folder, n)))


def _tile_files(resolved: str, image) -> list[str]:
    """The tiles of a UDIM image: the image's tiles, and any file the pattern matches."""
    found = set()
    numbers = [tile.number for tile in getattr(image, "tiles", [])] if image else []
    for number in numbers:
        u, v = (number - 1001) % 10 + 1, (number - 1001) // 10 + 1
        for candidate in (resolved.replace("<UDIM>", str(number)),
                          resolved.replace("<UVTILE>", f"u{u}_v{v}")):
            if os.path.isfile(candidate):
                found.add(candidate)
    wildcard = glob.escape(resolved)
    for token in _TILE_TOKENS:
        wildcard = wildcard.replace(glob.escape(token), "*")
    found.update(f for f in glob.glob(wildcard) if os.path.isfile(f))
    return sorted(found)


def _folder_files(folder: str) -> list[str]:
    files: list[str] = []
    for here, _dirs, names in os.walk(folder):
        for name in sorted(names):
            files.append(os.path.join(here, name))
            if len(files) >= MAX_FOLDER_FILES:
                return files
    return files


def _is_sequence(idb) -> bool:
    source = getattr(idb, "source", None)
    return source == "SEQUENCE" or bool(getattr(idb, "is_sequence", False))


def _expand(idb, resolved: str) -> tuple[list[str], list[str]]:
    """(files, missing) that the path ``resolved`` of ``idb`` stands for."""
    if any(token in resolved for token in _TILE_TOKENS):
        files = _tile_files(resolved, idb if isinstance(idb, bpy.types.Image) else None)
        return files, [] if files else [resolved]
    if _is_sequence(idb):
        files = _sequence_files(resolved)
        return files, [] if files else [resolved]
    if os.path.isdir(resolved):
        return _folder_files(resolved), []
    if os.path.isfile(resolved):
        return [resolved], []
    return [], [resolved]


def _is_packed(idb) -> bool:
    return bool(getattr(idb, "packed_file", None) or getattr(idb, "packed_files", None))


def _entry(path: str, resolved: str, idb, kind: str, files: list[str],
           missing: list[str]) -> dict:
    return {"path": path, "resolved": resolved, "blend": _blend_of(idb),
            "used_by": _describe(idb), "kind": kind, "files": files, "missing": missing,
            "bundled": bool(_BUNDLED.search(resolved))}


# data with a ``filepath`` of its own, walked where Blender has no ``file_path_map`` (4.2)
_FILE_DATA = ("libraries", "images", "movieclips", "sounds", "fonts", "cache_files",
              "volumes")


def _walked_paths() -> dict:
    """What ``bpy.data.file_path_map`` gives (ID -> its paths), by walking the data
    that has paths: their own ``filepath``, and the paths their objects' modifiers name."""
    found: dict = {}
    for collection in _FILE_DATA:
        for idb in getattr(bpy.data, collection, []):
            if getattr(idb, "filepath", ""):
                found.setdefault(idb, set()).add(idb.filepath)
    for obj in bpy.data.objects:
        for modifier in obj.modifiers:
            for holder, attr in _modifier_paths(modifier):
                if getattr(holder, attr, ""):
                    found.setdefault(obj, set()).add(getattr(holder, attr))
    return found


def _id_paths(found: dict | None = None):
    """(ID, path as written) for every path the file's data names, linked data too."""
    if found is None:
        mapping = getattr(bpy.data, "file_path_map", None)
        found = mapping(include_libraries=True) if mapping is not None else _walked_paths()
    for idb, paths in found.items():
        library = getattr(idb, "library", None)
        for path in sorted(paths):
            if not path or (library is not None and path == library.filepath):
                continue  # the library's own path, listed under the library
            if _is_packed(idb) or path == "<builtin>":
                continue
            yield idb, path


def _paths_of_ids() -> list[dict]:
    entries = []
    for idb, path in _id_paths():
        library = getattr(idb, "library", None)
        base = None if isinstance(idb, bpy.types.Library) else library
        resolved = _abs(path, base)
        if _BUNDLED.search(resolved):
            entries.append(_entry(path, resolved, idb, "bundled", [], []))
            continue
        files, missing = _expand(idb, resolved)
        kind = "library" if isinstance(idb, bpy.types.Library) else type(idb).__name__
        entries.append(_entry(path, resolved, idb, kind.lower(), files, missing))
    return entries


def _point_caches():
    """(owner, point cache) for every cache kept on disk."""
    for obj in bpy.data.objects:
        for system in getattr(obj, "particle_systems", []):
            yield obj, system.point_cache
        for modifier in obj.modifiers:
            cache = getattr(modifier, "point_cache", None)
            if cache is not None:
                yield obj, cache
            canvas = getattr(modifier, "canvas_settings", None)
            for surface in getattr(canvas, "canvas_surfaces", []) or []:
                yield obj, surface.point_cache
    for scene in bpy.data.scenes:
        world = scene.rigidbody_world
        if world is not None and world.point_cache is not None:
            yield scene, world.point_cache


def _point_cache_entries() -> list[dict]:
    entries = []
    seen = set()
    for owner, cache in _point_caches():
        if not cache.use_disk_cache or id(cache) in seen:
            continue
        seen.add(id(cache))
        library = getattr(owner, "library", None)
        blend = _blend_of(owner)
        if cache.use_external:
            path = cache.filepath
            folder = _abs(path, library)
        else:
            stem = os.path.splitext(os.path.basename(blend))[0]
            path = f"//{POINT_CACHE_DIR}{stem}/"
            folder = os.path.join(os.path.dirname(blend), f"{POINT_CACHE_DIR}{stem}")
        prefix = f"{cache.name}_" if cache.name else ""
        files = [f for f in _folder_files(folder) if os.path.basename(f).startswith(prefix)]
        entries.append({"path": path, "resolved": folder, "blend": blend,
                        "used_by": f"point cache of {_describe(owner)}", "kind": "point_cache",
                        "files": files, "missing": [] if files else [folder],
                        "bundled": False})
    return entries


def _strip_entries() -> list[dict]:
    entries = []
    for scene in bpy.data.scenes:
        editor = scene.sequence_editor
        if editor is None:
            continue
        strips = getattr(editor, "strips_all", None)
        if strips is None:
            strips = editor.sequences_all  # Blender before 4.4
        for strip in strips:
            if strip.type == "IMAGE":
                folder = _abs(strip.directory, scene.library)
                wanted = [os.path.join(folder, e.filename) for e in strip.elements]
                files = [f for f in wanted if os.path.isfile(f)]
                entries.append(_entry(strip.directory, folder, scene, "strip", files,
                                      sorted(set(wanted) - set(files))))
                entries[-1]["used_by"] = f'image strip "{strip.name}"'
            elif strip.type == "MOVIE":
                resolved = _abs(strip.filepath, scene.library)
                ok = os.path.isfile(resolved)
                entries.append(_entry(strip.filepath, resolved, scene, "strip",
                                      [resolved] if ok else [], [] if ok else [resolved]))
                entries[-1]["used_by"] = f'movie strip "{strip.name}"'
    return entries


def trace() -> dict:
    """The files the open .blend uses (see the module docstring); the file must be saved."""
    entries = _paths_of_ids() + _point_cache_entries() + _strip_entries()
    unique: dict[tuple[str, str, str], dict] = {}
    for entry in entries:
        key = (entry["path"], entry["resolved"], entry["blend"])
        if key in unique:
            for name in ("files", "missing"):
                unique[key][name] = sorted(set(unique[key][name]) | set(entry[name]))
        else:
            unique[key] = entry
    return {"blend": bpy.data.filepath, "dependencies": list(unique.values())}


# ---------------------------------------------------------------- on the worker


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _bundled_target(resolved: str) -> str | None:
    """The same file of this Blender's own installation, when it has it."""
    match = _BUNDLED.search(resolved)
    if match is None:
        return None
    here = bpy.utils.system_resource("DATAFILES")
    candidate = os.path.join(here, resolved[match.start() + len("/datafiles/"):])
    return candidate if os.path.exists(candidate) else None


def _modifier_paths(modifier):
    """(holder, attribute) of each path a modifier names."""
    for attr in ("filepath", "bake_directory"):
        if hasattr(modifier, attr):
            yield modifier, attr
    domain = getattr(modifier, "domain_settings", None)
    if domain is not None:
        yield domain, "cache_directory"
    for bake in getattr(modifier, "bakes", []) or []:
        if hasattr(bake, "directory"):
            yield bake, "directory"


def _set_path(idb, resolved: str, new: str, moved_libraries: list) -> bool:
    """Point the path of ``idb`` that resolves to ``resolved`` at ``new`` (linked data
    too: Blender lets a linked image's or clip's path change); False when Blender refuses
    or the path is not found on it."""
    try:
        if isinstance(idb, bpy.types.Object):
            changed = False
            for modifier in idb.modifiers:
                for holder, attr in _modifier_paths(modifier):
                    value = getattr(holder, attr, "")
                    if value and _abs(value, idb.library) == resolved:
                        setattr(holder, attr, new)
                        changed = True
            return changed
        if not hasattr(idb, "filepath"):
            return False
        idb.filepath = new
    except (AttributeError, TypeError, RuntimeError, ValueError):
        return False
    if isinstance(idb, bpy.types.Library):
        moved_libraries.append(idb)
    return True


def _problem(path: str, idb, why: str, project_dir: str) -> dict:
    blend = _blend_of(idb)
    if _inside(blend, project_dir):
        blend = os.path.relpath(blend, project_dir).replace(os.sep, "/")
    return {"path": path, "used_by": _describe(idb), "blend": blend, "why": why}


def relocate(project_dir: str, absolute: dict, outside_dir: str) -> list[dict]:
    """Make every path of the open file resolve inside ``project_dir`` (the project as the
    worker laid it out): absolute paths the manifest moved go to their project path;
    paths into a Blender installation go to this Blender's own files; any other path
    that leads outside the project is pointed into ``outside_dir``, where nothing is, so
    no file of the worker is ever read for the scene. Returns the problems, each
    ``{"path", "used_by", "blend", "why"}`` with ``why`` one of ``missing`` (not in the
    project), ``outside`` (leads out of it) or ``linked`` (Blender would not let the path
    change)."""
    project_dir = os.path.normpath(project_dir)
    problems: list[dict] = []
    moved_libraries: list = []
    for idb, path in _id_paths():
        library = getattr(idb, "library", None)
        base = None if isinstance(idb, bpy.types.Library) else library
        resolved = _abs(path, base)
        if _BUNDLED.search(resolved):
            target = _bundled_target(resolved)
            if target is not None and target != resolved:
                _set_path(idb, resolved, target, moved_libraries)
            continue  # Blender's own assets: never the user's to send
        if _inside(resolved, project_dir):
            target = resolved
        elif path in absolute:
            target = os.path.join(project_dir, absolute[path])
        else:
            nowhere = os.path.join(outside_dir, os.path.basename(resolved) or "file")
            _set_path(idb, resolved, nowhere, moved_libraries)
            problems.append(_problem(path, idb, "outside", project_dir))
            continue
        if target != resolved and not _set_path(idb, resolved, target, moved_libraries):
            problems.append(_problem(path, idb, "linked", project_dir))
            continue
        _files, missing = _expand(idb, target)
        if missing:
            problems.append(_problem(path, idb, "missing", project_dir))
    problems += _relocate_point_caches(project_dir, absolute, outside_dir)
    problems += _relocate_strips(project_dir, absolute, outside_dir)
    for library in moved_libraries:
        library.reload()
    return problems


def _relocate_point_caches(project_dir: str, absolute: dict, outside_dir: str) -> list[dict]:
    problems = []
    for owner, cache in _point_caches():
        if not (cache.use_disk_cache and cache.use_external and cache.filepath):
            continue  # blendcache_<file>/ lies next to the .blend, inside the project
        resolved = _abs(cache.filepath, getattr(owner, "library", None))
        if _inside(resolved, project_dir):
            continue
        editable = getattr(owner, "library", None) is None
        if cache.filepath in absolute and editable:
            cache.filepath = os.path.join(project_dir, absolute[cache.filepath])
            continue
        if editable:
            cache.filepath = outside_dir
        problems.append(_problem(cache.filepath, owner, "outside", project_dir))
    return problems


def _relocate_strips(project_dir: str, absolute: dict, outside_dir: str) -> list[dict]:
    problems = []
    for scene in bpy.data.scenes:
        editor = scene.sequence_editor
        if editor is None or scene.library is not None:
            continue
        strips = getattr(editor, "strips_all", None)
        for strip in strips if strips is not None else editor.sequences_all:
            attr = {"IMAGE": "directory", "MOVIE": "filepath"}.get(strip.type)
            if attr is None:
                continue
            written = getattr(strip, attr)
            resolved = _abs(written)
            if _inside(resolved, project_dir):
                continue
            key = written if written in absolute else written.rstrip("/\\")
            if key in absolute:
                setattr(strip, attr, os.path.join(project_dir, absolute[key]))
                continue
            setattr(strip, attr, outside_dir + (os.sep if attr == "directory" else ""))
            problems.append(_problem(written, scene, "outside", project_dir))
    return problems
