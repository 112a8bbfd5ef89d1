"""A project uploaded through the dashboard's form — one .zip, or several files (a folder
picked in the browser) — turned into blobs the user may read and the files of a manifest
(project path -> SHA-256). The coordinator has no Blender, so the project is what the user
sends: nothing is traced.

A zip is checked before anything is stored: its table of contents is counted before
``zipfile`` reads it into memory, every entry's path must pass ``check_project_path``
(no absolute paths, ``..`` or backslashes: no zip-slip), symlinks are refused, and the
bytes it unpacks to are counted while they are extracted (a zip bomb stops at
``max_upload_bytes``, whatever sizes it declares). Entries are hashed while they stream to
temporary files next to the blob store, one at a time; only a project that passes every
check is moved into the store. One top folder (what "compress folder" makes) is stripped;
``__MACOSX/``, ``.DS_Store`` and ``.blend1`` backups are skipped.

The files are also kept as a small JSON blob of the user's, so that a refused submit can be
fixed without uploading the project again; a kept project is checked again on resubmit
(``kept_project``: the user must be able to read it and every blob it names)."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import struct
import uuid
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from parallel_pilot.coordinator.services import blobs
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.core.project import (
    MAX_PROJECT_FILES,
    MAX_PROJECT_PATH,
    check_manifest,
    check_project_path,
)
from parallel_pilot.core.protocol import SHA256_RE
from parallel_pilot.core.units import human_bytes
from parallel_pilot.errors import InvalidInput
from parallel_pilot.store import queries as q
from parallel_pilot.web.upload import UploadedFile

COPY_CHUNK = 1024 * 1024  # bytes extracted from a zip entry at a time
MAX_ZIP_DIRECTORY_BYTES = 64 * 1024 * 1024  # bytes of a zip's table of contents (read whole)
MAX_LISTED_BLENDS = 20  # .blend files named when the form asks which one to render
KEPT_FORMAT = "pilot-web-project/1"  # the "format" of a kept project's JSON blob
# a kept project's JSON: a path, a hash and quotes per file at most
MAX_KEPT_BYTES = MAX_PROJECT_FILES * (MAX_PROJECT_PATH + 80) + 4096

_BACKUP = re.compile(r"\.blend\d+$", re.IGNORECASE)  # foo.blend1, foo.blend2: Blender's backups
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_HEADER = struct.Struct("<4s24xHHH12x")  # signature; name, extra, comment lengths


class ProjectRefused(InvalidInput):
    """The uploaded project cannot be rendered as it is."""


@dataclass
class UploadedProject:
    """A project whose files are blobs the user may read."""

    files: dict[str, str]  # project path -> SHA-256
    total_bytes: int  # of all its files (a file used twice counts twice)
    kept_sha: str  # the JSON blob that lets the form keep it for the next try

    def blends(self) -> list[str]:
        return sorted(p for p in self.files if p.lower().endswith(".blend"))

    def describe(self, main: str = "") -> str:
        count = len(self.files)
        text = f"project: {count} file{'' if count == 1 else 's'}, " \
               f"{human_bytes(self.total_bytes)}"
        return f"{text}, rendering {main}" if main else text


def _skipped(path: str) -> bool:
    """Files a zip or a folder carries that are no part of a project."""
    name = path.rsplit("/", 1)[-1]
    return path.split("/", 1)[0] == "__MACOSX" or name == ".DS_Store" \
        or bool(_BACKUP.search(name))


def _strip_top_folder(paths: list[str]) -> int:
    """How many characters to cut from every path: a single top folder holding all of
    them ("myproject/..."), else none."""
    tops = {p.split("/", 1)[0] for p in paths}
    if len(tops) == 1 and all("/" in p for p in paths):
        return len(next(iter(tops))) + 1
    return 0


def choose_main(files: dict[str, str], typed: str) -> str:
    """The .blend to render: the project path typed, else the one .blend at the shallowest
    level; ``ProjectRefused`` listing the candidates otherwise."""
    blends = sorted(p for p in files if p.lower().endswith(".blend"))
    listed = ", ".join(blends[:MAX_LISTED_BLENDS]) + (
        f" and {len(blends) - MAX_LISTED_BLENDS} more" if len(blends) > MAX_LISTED_BLENDS
        else "")
    typed = typed.strip().lstrip("/")
    if typed:
        if typed in files:
            return typed
        raise ProjectRefused(f"the project has no file {typed!r}; its .blend files: "
                             f"{listed or 'none'}")
    if not blends:
        raise ProjectRefused("the project has no .blend file")
    depth = min(p.count("/") for p in blends)
    shallowest = [p for p in blends if p.count("/") == depth]
    if len(shallowest) == 1:
        return shallowest[0]
    raise ProjectRefused(f"the project has {len(blends)} .blend files; type the one to "
                         f"render: {listed}")


def _check_files(files: dict[str, str]) -> None:
    """Refuse a set of files that cannot be a project (no .blend, a file that is also a
    folder, too many), before anything is stored."""
    blends = [p for p in files if p.lower().endswith(".blend")]
    if not blends:
        raise ProjectRefused("the upload holds no .blend file")
    try:
        check_manifest(blends[0], files, {})
    except ValueError as exc:
        raise ProjectRefused(str(exc)) from None


# ---------------------------------------------------------------- zip


def _zip_directory(fh: BinaryIO) -> tuple[int, int, int]:
    """Where a zip's central directory starts, its size and its declared entry count, from
    the end records (zip64 too); ``ProjectRefused`` when there are none."""
    fh.seek(0, 2)
    end = fh.tell()
    tail_start = max(0, end - _EOCD.size - 0xFFFF)  # the record, then a comment up to 64 KiB
    fh.seek(tail_start)
    tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise ProjectRefused("the file is not a zip archive")
    _sig, _d, _cd, _n, entries, size, _offset, _c = _EOCD.unpack_from(tail, at)
    record = tail_start + at
    if entries == 0xFFFF or 0xFFFFFFFF in (size, _offset):
        locator = record - _ZIP64_LOCATOR.size
        fh.seek(max(0, locator))
        sig, _d64, _where, _disks = _ZIP64_LOCATOR.unpack(fh.read(_ZIP64_LOCATOR.size))
        if sig != b"PK\x06\x07":
            raise ProjectRefused("the zip archive's end records are damaged")
        record = locator - _ZIP64_EOCD.size
        fh.seek(max(0, record))
        fields = _ZIP64_EOCD.unpack(fh.read(_ZIP64_EOCD.size))
        if fields[0] != b"PK\x06\x06":
            raise ProjectRefused("the zip archive's end records are damaged")
        entries, size = fields[7], fields[8]
    if size > record:
        raise ProjectRefused("the zip archive's table of contents is damaged")
    return record - size, size, entries


def _count_entries(path: Path) -> None:
    """Refuse a zip with more entries than a project may have, or a table of contents too
    large to read, before ``zipfile`` reads it whole (memory stays bounded)."""
    with open(path, "rb") as fh:
        start, size, declared = _zip_directory(fh)
        if declared > MAX_PROJECT_FILES:
            raise ProjectRefused(f"the zip holds {declared} entries; a project may have "
                                 f"at most {MAX_PROJECT_FILES} files")
        if size > MAX_ZIP_DIRECTORY_BYTES:
            raise ProjectRefused(f"the zip's table of contents is over "
                                 f"{MAX_ZIP_DIRECTORY_BYTES} bytes")
        fh.seek(start)
        seen, count = 0, 0
        while seen + _CENTRAL_HEADER.size <= size:
            header = fh.read(_CENTRAL_HEADER.size)
            if len(header) < _CENTRAL_HEADER.size:
                break
            sig, name, extra, comment = _CENTRAL_HEADER.unpack(header)
            if sig != b"PK\x01\x02":
                break  # zipfile says what is wrong with it
            count += 1
            if count > MAX_PROJECT_FILES:
                raise ProjectRefused(f"the zip holds more than {MAX_PROJECT_FILES} "
                                     "entries; a project may have fewer files")
            fh.seek(name + extra + comment, 1)
            seen += _CENTRAL_HEADER.size + name + extra + comment


def _zip_entries(archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str]]:
    """The entries that become project files, each with its project path."""
    kept: list[zipfile.ZipInfo] = []
    for info in archive.infolist():
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            raise ProjectRefused(f"the zip entry {info.filename!r} is a symbolic link; "
                                 "a project holds files only")
        if info.filename.endswith("/") or info.is_dir():
            continue
        try:
            check_project_path(info.filename.removesuffix("/"))
        except ValueError as exc:
            raise ProjectRefused(f"the zip holds a path that cannot be in a project: "
                                 f"{exc}") from None
        if not _skipped(info.filename):
            kept.append(info)
    cut = _strip_top_folder([i.filename for i in kept])
    entries: list[tuple[zipfile.ZipInfo, str]] = []
    seen: set[str] = set()
    for info in kept:
        path = info.filename[cut:]
        try:
            check_project_path(path)
        except ValueError as exc:
            raise ProjectRefused(f"the zip holds a path that cannot be in a project: "
                                 f"{exc}") from None
        if path in seen:
            raise ProjectRefused(f"the zip holds {path!r} twice")
        seen.add(path)
        entries.append((info, path))
    return entries


@dataclass
class _Extracted:
    path: str
    tmp: Path
    sha256: str
    size: int


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, tmp: Path,
             budget: int) -> tuple[str, int]:
    """Stream one entry to ``tmp`` while hashing it; at most ``budget`` bytes."""
    digest, size = hashlib.sha256(), 0
    try:
        with archive.open(info) as src, open(tmp, "wb") as out:
            while chunk := src.read(COPY_CHUNK):
                size += len(chunk)
                if size > budget:
                    raise ProjectRefused("the zip unpacks to more than the coordinator "
                                         "accepts in one upload (max_upload_bytes)")
                digest.update(chunk)
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ProjectRefused(f"the zip entry {info.filename!r} is damaged: {exc}") from None
    except NotImplementedError:
        raise ProjectRefused(f"the zip entry {info.filename!r} uses a compression method "
                             "this coordinator cannot read (use deflate)") from None
    except RuntimeError as exc:  # encrypted entries
        raise ProjectRefused(f"the zip entry {info.filename!r} cannot be read: {exc}"
                             ) from None
    return digest.hexdigest(), size


def unpack_zip(svc: Services, user: Caller, upload: UploadedFile) -> UploadedProject:
    """The project in an uploaded zip, its files stored as the user's blobs;
    ``ProjectRefused`` (nothing stored) when it is not a project the farm can take."""
    limit = svc.settings.max_upload_bytes
    _count_entries(upload.tmp)
    extracted: list[_Extracted] = []
    try:
        try:
            archive = zipfile.ZipFile(upload.tmp)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ProjectRefused(f"the file is not a readable zip archive: {exc}") from None
        with archive:
            entries = _zip_entries(archive)
            _check_files({path: "0" * 64 for _info, path in entries})
            if sum(info.file_size for info, _path in entries) > limit:
                raise ProjectRefused("the zip unpacks to more than the coordinator accepts "
                                     f"in one upload ({human_bytes(limit)})")
            total = 0
            for info, path in entries:
                tmp = svc.blobs.tmp / f"web-zip.{uuid.uuid4().hex}.part"
                extracted.append(_Extracted(path, tmp, "", 0))
                sha, size = _extract(archive, info, tmp, limit - total)
                extracted[-1].sha256, extracted[-1].size = sha, size
                total += size
        return _store(svc, user, extracted)
    finally:
        for entry in extracted:
            entry.tmp.unlink(missing_ok=True)  # what was not moved into the store


# ---------------------------------------------------------------- several files


def _relative_path(filename: str) -> str:
    """A browser's file name (a folder pick sends ``folder/sub/file``) as a project path;
    ``ProjectRefused`` when it cannot be one."""
    parts = [p for p in filename.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        raise ProjectRefused(f"the file name {filename!r} cannot be a path in a project")
    try:
        return check_project_path("/".join(parts))
    except ValueError as exc:
        raise ProjectRefused(str(exc)) from None


def from_files(svc: Services, user: Caller, uploads: list[UploadedFile]) -> UploadedProject:
    """Several uploaded files as a project at their relative paths (one top folder
    stripped); ``ProjectRefused`` (nothing stored) when they cannot be one."""
    named = [(upload, _relative_path(upload.filename)) for upload in uploads]
    named = [(upload, path) for upload, path in named if not _skipped(path)]
    cut = _strip_top_folder([path for _upload, path in named])
    files: dict[str, UploadedFile] = {}
    for upload, path in named:
        path = path[cut:]
        if path in files:
            raise ProjectRefused(f"two of the files are named {path!r}")
        files[path] = upload
    _check_files({path: upload.sha256 for path, upload in files.items()})
    return _store(svc, user, [_Extracted(path, upload.tmp, upload.sha256, upload.size)
                              for path, upload in files.items()])


# ---------------------------------------------------------------- storing and keeping


def _store(svc: Services, user: Caller, entries: list[_Extracted]) -> UploadedProject:
    """Move the checked files into the blob store and record the user as their reader,
    with the JSON blob that keeps the project for the next try."""
    files = {e.path: e.sha256 for e in sorted(entries, key=lambda e: e.path)}
    sizes = {e.sha256: e.size for e in entries}
    for entry in entries:
        svc.blobs.adopt(entry.tmp, entry.sha256)
    kept = json.dumps({"format": KEPT_FORMAT, "files": files}, separators=(",", ":"),
                      ensure_ascii=False).encode()
    kept_sha = svc.blobs.write_bytes(kept)
    sizes[kept_sha] = len(kept)
    now = svc.clock()
    with svc.transaction() as conn:
        blobs.record_user_blobs(conn, user.user_id, sizes, now)
    return UploadedProject(files, sum(e.size for e in entries), kept_sha)


def _readable(svc: Services, user: Caller, shas: Iterable[str]) -> bool:
    wanted = set(shas)
    with svc.transaction() as conn:
        if user.is_admin:
            return not q.missing_blobs(conn, wanted)
        return wanted <= q.blobs_readable_by_user(conn, user.user_id, wanted)


def kept_project(svc: Services, user: Caller, kept_sha: str) -> UploadedProject:
    """The project a refused submit kept, checked again: the user must be able to read its
    JSON blob and every blob it names, and its paths must be project paths."""
    gone = ProjectRefused("the project kept from your last try is not available; "
                          "upload it again")
    if not SHA256_RE.match(kept_sha) or not _readable(svc, user, [kept_sha]) \
            or not svc.blobs.exists(kept_sha) or svc.blobs.size(kept_sha) > MAX_KEPT_BYTES:
        raise gone
    try:
        kept = json.loads(svc.blobs.read_prefix(kept_sha, MAX_KEPT_BYTES))
        files = kept["files"]
        if kept.get("format") != KEPT_FORMAT or not isinstance(files, dict) or not all(
                isinstance(p, str) and isinstance(s, str) and SHA256_RE.match(s)
                for p, s in files.items()):
            raise ValueError("not a kept project")
        _check_files(files)
    except (ValueError, KeyError, TypeError, AttributeError, ProjectRefused):
        raise gone from None
    if not _readable(svc, user, files.values()) or not all(
            svc.blobs.exists(s) for s in set(files.values())):
        raise gone
    total = sum(svc.blobs.size(sha) for sha in files.values())
    return UploadedProject(dict(files), total, kept_sha)
