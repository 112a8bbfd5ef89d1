"""A Blender project as it travels: the manifest (path in the project -> blob) and the rules
that put every file the scene uses at a path inside the project.

Standard library only: the Blender add-on carries this file into Blender's own Python.

A **trace** (``kinds/render/dependencies.py``, run inside Blender) lists each path the scene uses
as written in the file (``//../textures/wood.png``, ``/mnt/tex/oak.png``), the file it is
written in, and the files on disk it stands for (one, or the tiles of a UDIM pattern, the
frames of a sequence, the files of a cache folder). ``plan_project`` turns it into a
**layout**: the project root (the deepest folder holding the .blend and everything the
scene names by a relative path), a project path for each file, and for each absolute path
the project path it moves to, so that on the worker, where the project lies in the task
folder, every path resolves inside it::

    {"main": "shots/shot.blend",
     "files": {"shots/shot.blend": "<sha256>", "textures/wood.png": "<sha256>", ...},
     "absolute": {"/mnt/tex/oak.png": "_abs/mnt/tex/oak.png"}}

Relative paths need no rewriting: the files keep their places relative to each other.
Files outside the root that the scene names by an absolute path go under ``_abs/`` with
their whole path (``C:\\tex\\oak.png`` -> ``_abs/C/tex/oak.png``).
"""

from __future__ import annotations

import hashlib
import ntpath
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

MAX_PROJECT_FILES = 100_000  # files one project may carry
MAX_PROJECT_PATH = 1024  # characters of one path in the project
ABSOLUTE_DIR = "_abs"  # where files named by an absolute path outside the root are laid out
RESERVED_PREFIX = ".pilot"  # top-level names the worker uses itself (never a project file)
HASH_CHUNK = 1024 * 1024  # bytes read at a time while hashing a file

_WINDOWS_DRIVE = re.compile(r"^([A-Za-z]):[\\/]")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_project_path(path: str) -> str:
    """``path`` if it is a plain relative POSIX path inside the project; ``ValueError``
    naming what is wrong otherwise (absolute, ``..``, empty parts, backslashes...)."""
    if not isinstance(path, str) or not path:
        raise ValueError("a project path may not be empty")
    if len(path) > MAX_PROJECT_PATH:
        raise ValueError(f"a project path may have at most {MAX_PROJECT_PATH} characters")
    if "\x00" in path or "\\" in path:
        raise ValueError(f"{path!r}: a project path uses / and no NUL or backslash")
    if path.startswith("/") or _WINDOWS_DRIVE.match(path):
        raise ValueError(f"{path!r}: a project path is relative to the project folder")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{path!r}: a project path has no empty, '.' or '..' parts")
    if parts[0].startswith(RESERVED_PREFIX):
        raise ValueError(f"{path!r}: names starting with {RESERVED_PREFIX} are the worker's")
    return path


def check_manifest(main: str, files: dict[str, str], absolute: dict[str, str]) -> None:
    """Refuse a manifest whose paths could leave the project or whose main file is not in
    it (``ValueError`` with the reason)."""
    if len(files) > MAX_PROJECT_FILES:
        raise ValueError(f"a project may carry at most {MAX_PROJECT_FILES} files; "
                         f"this one has {len(files)}")
    for path, sha in files.items():
        check_project_path(path)
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise ValueError(f"{path!r}: not a SHA-256 hex digest")
    check_project_path(main)
    if main not in files:
        raise ValueError(f"the main file {main!r} is not among the project's files")
    folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    clash = sorted(folders & set(files))
    if clash:
        raise ValueError(f"{clash[0]!r} is both a file and a folder of the project")
    if len(absolute) > MAX_PROJECT_FILES:
        raise ValueError(f"at most {MAX_PROJECT_FILES} absolute paths may be remapped")
    for original, target in absolute.items():
        if not isinstance(original, str) or not original or len(original) > MAX_PROJECT_PATH:
            raise ValueError("an absolute path to remap must be 1 to "
                             f"{MAX_PROJECT_PATH} characters")
        check_project_path(target)


def split_absolute(path: str) -> list[str] | None:
    """The parts of an absolute path (POSIX ``/a/b`` or Windows ``C:\\a\\b``), the drive
    letter first; None when ``path`` is not absolute (Blender's ``//`` means relative to
    the .blend)."""
    if path.startswith("//"):
        return None
    drive = _WINDOWS_DRIVE.match(path)
    if drive:
        rest = ntpath.normpath(path[2:]).replace("\\", "/")
        return [drive.group(1).upper(), *[p for p in rest.split("/") if p]]
    if path.startswith("/"):
        return [p for p in posixpath.normpath(path).split("/") if p]
    return None


def is_absolute(path: str) -> bool:
    return split_absolute(path) is not None


def project_path_for(path: str, root: str) -> str:
    """Where a file of the user's machine (an absolute path) lies in the project: under
    ``root`` it keeps its place, elsewhere it goes under ``_abs/`` with its whole path."""
    parts, root_parts = split_absolute(path), split_absolute(root)
    if parts is None or root_parts is None:
        raise ValueError(f"{path!r} and {root!r} must be absolute paths")
    if parts[:len(root_parts)] == root_parts and len(parts) > len(root_parts):
        return "/".join(parts[len(root_parts):])
    return "/".join([ABSOLUTE_DIR, *parts])


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class UploadReport:
    """What sending a project did: files and bytes uploaded, and those the coordinator
    already had (a texture an earlier job sent is not sent again)."""

    uploaded_files: int = 0
    uploaded_bytes: int = 0
    skipped_files: int = 0
    skipped_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"uploaded_files": self.uploaded_files, "uploaded_bytes": self.uploaded_bytes,
                "skipped_files": self.skipped_files, "skipped_bytes": self.skipped_bytes}


# ---------------------------------------------------------------- layout


@dataclass
class Missing:
    """A path the scene uses whose file is not on the user's machine."""

    path: str  # as written in the file: //textures/wood.png
    used_by: str  # what uses it: image "wood.png"
    blend: str  # the .blend it is written in, relative to the project root when inside it

    def describe(self) -> str:
        return f"{self.path} ({self.used_by}, in {self.blend})"


@dataclass
class ProjectLayout:
    """Where each local file goes in the project, before any byte is hashed or sent."""

    root: str  # the user's project folder (absolute)
    main: str  # project path of the .blend to render
    files: dict[str, str] = field(default_factory=dict)  # project path -> local file
    absolute: dict[str, str] = field(default_factory=dict)  # absolute path -> project path
    missing: list[Missing] = field(default_factory=list)

    def manifest(self, hashes: dict[str, str]) -> dict[str, Any]:
        """The manifest, given the SHA-256 of each local file."""
        return {"main": self.main,
                "files": {path: hashes[local] for path, local in sorted(self.files.items())},
                "absolute": dict(sorted(self.absolute.items()))}

    def total_bytes(self) -> int:
        return sum(os.path.getsize(local) for local in set(self.files.values()))


def _dirname(path: str) -> str:
    return ntpath.dirname(path) if _WINDOWS_DRIVE.match(path) else posixpath.dirname(path)


def common_root(paths: list[str]) -> str:
    """The deepest folder holding every one of ``paths`` (absolute, one kind of path)."""
    split = [split_absolute(p) for p in paths]
    if any(s is None for s in split):
        raise ValueError("the project's paths must be absolute")
    parts = split[0] or []
    for other in split[1:]:
        other = other or []
        n = 0
        while n < min(len(parts), len(other)) and parts[n] == other[n]:
            n += 1
        parts = parts[:n]
    if parts and _WINDOWS_DRIVE.match(paths[0]):
        return parts[0] + ":\\" + "\\".join(parts[1:])
    if not parts and _WINDOWS_DRIVE.match(paths[0]):
        raise ValueError("the project's files lie on different drives")
    return "/" + "/".join(parts)


def plan_project(trace: dict[str, Any]) -> ProjectLayout:
    """The layout of a traced project (``kinds/render/dependencies.py``'s result): the root
    is the deepest folder holding the main .blend and every file named by a relative
    path (found or missing)."""
    main = str(trace["blend"])
    deps = [d for d in trace.get("dependencies") or [] if not d.get("bundled")]
    anchors = [_dirname(main)]
    for dep in deps:
        if not is_absolute(str(dep["path"])):
            anchors += [_dirname(f) for f in dep.get("files") or []]
            if dep.get("resolved") and is_absolute(str(dep["resolved"])):
                anchors.append(_dirname(str(dep["resolved"])))  # a missing file's place too
    root = common_root(anchors)
    layout = ProjectLayout(root=root, main=project_path_for(main, root))
    layout.files[layout.main] = main
    for dep in deps:
        for local in dep.get("files") or []:
            layout.files[project_path_for(local, root)] = local
        written = str(dep["path"])
        if is_absolute(written):
            layout.absolute[written] = project_path_for(str(dep.get("resolved") or written),
                                                        root)
        if dep.get("missing"):
            blend = str(dep.get("blend") or main)
            where = project_path_for(blend, root) if is_absolute(blend) else blend
            layout.missing += [Missing(path=written, used_by=str(dep.get("used_by") or ""),
                                       blend=where)]
    return layout
