"""A project through the dashboard's form (the real app in-process, SQLite): a zip of a real
Blender project made with bpy becomes a job whose manifest holds its files at their project
paths; several files (a folder picked) do too; the .blend to render is typed or the only one
at the top; a refused project is kept for the next try and checked again; every bad zip
(not a zip, zip-slip paths, symlinks, too many entries, a zip bomb, no .blend) is a field
error with no job and no blob left behind; a large zip unpacks with flat memory."""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import struct
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.store import queries as q
from parallel_pilot.store.tables import jobs
from parallel_pilot.web import project_upload
from parallel_pilot.web.project_upload import ProjectRefused
from parallel_pilot.web.upload import UploadedFile
from tests.integration.conftest import Coordinator, make_coordinator
from tests.integration.test_web_pages import PASSWORD, login, make_user

BLEND = b"BLENDER17-01v0500" + b"\0" * 4096  # a header as Blender 5.0 writes it
PNG = b"\x89PNG\r\n\x1a\n" + b"texture" * 100
MiB = 1024 * 1024
Files = list[tuple[str, tuple[str, bytes, str]]]


def zip_of(entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def post(web: TestClient, csrf: str, data: dict[str, str], files: Files) -> Any:
    return web.post("/jobs/new", data={"csrf_token": csrf, **data}, files=files,
                    follow_redirects=False)


def post_zip(web: TestClient, csrf: str, content: bytes, data: dict[str, str] | None = None,
             name: str = "project.zip") -> Any:
    return post(web, csrf, {"frames": "1-2", **(data or {})},
                [("scene", (name, content, "application/zip"))])


def field_error(page: str, field: str) -> str:
    found = re.search(rf'id="{field}-error">([^<]*)<', page)
    assert found, f"no error by the {field} field"
    return found[1].replace("&#39;", "'").replace("&#34;", '"')


def stored_blobs(coord: Coordinator) -> set[str]:
    root = coord.services.blobs.root
    return {p.name for p in root.glob("*/*") if p.parent.name != "tmp"}


def job_count(coord: Coordinator) -> int:
    with coord.services.transaction() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar() or 0)


def user_id(coord: Coordinator, name: str) -> int:
    with coord.services.transaction() as conn:
        row = q.user_by_name(conn, name)
    assert row is not None
    return int(row.id)


def job_params(web: TestClient, response: Any) -> dict[str, Any]:
    assert response.status_code == 303, field_errors(response.text)
    job_id = int(response.headers["location"].rsplit("/", 1)[1])
    params: dict[str, Any] = web.get(f"/api/v1/jobs/{job_id}").json()["params"]
    return params


def field_errors(page: str) -> list[str]:
    return re.findall(r'class="(?:field-error|alert alert-error)"[^>]*>([^<]*)<', page)


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    coord = make_coordinator(f"sqlite:///{tmp_path / 'pilot.db'}", tmp_path,
                             cookie_secure=False, max_upload_bytes=4 * MiB)
    with coord.client:
        coord.client.headers["accept"] = "text/html"
        make_user(coord, "alice")
        make_user(coord, "bob")
        yield coord
    coord.services.engine.dispose()


@pytest.fixture
def web(coordinator: Coordinator) -> TestClient:
    return coordinator.client


@pytest.fixture(scope="module")
def full_project(tmp_path_factory: pytest.TempPathFactory,
                 requirement: Callable[[str | None], None]) -> Path:
    """ROOT with shots/shot.blend, linked libraries, textures, caches (tests/blender_projects)."""
    import importlib.util

    requirement(None if importlib.util.find_spec("bpy") else "the bpy package is not installed")
    from tests import blender_projects

    root = tmp_path_factory.mktemp("full") / "myproject"
    blender_projects.make("full", root)
    return root


def zip_folder(root: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """ROOT zipped as "compress folder" does (one top folder), with a Mac's extras."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            archive.write(path, f"{root.name}/{path.relative_to(root).as_posix()}")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_zipped_blender_project_becomes_a_job_with_its_manifest(
        coordinator: Coordinator, web: TestClient, full_project: Path) -> None:
    files = {p.relative_to(full_project).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in full_project.rglob("*") if p.is_file()
             and not re.search(r"\.blend\d+$", p.name)}  # Blender's backups stay home
    assert any(p.name.endswith(".blend1") for p in full_project.rglob("*"))
    assert {"shots/shot.blend", "assets/lib/char.blend", "assets/lib/deep/prop.blend",
            "textures/udim/tiles.1002.png", "caches/anim.abc"} <= set(files)
    assert any(p.startswith("shots/blendcache_shot/") for p in files)
    content = zip_folder(full_project, {
        "__MACOSX/myproject/._shot.blend": b"mac", "myproject/.DS_Store": b"mac",
        "myproject/shots/shot.blend1": BLEND, "myproject/textures/.DS_Store": b"mac"})
    csrf = login(web, "alice", PASSWORD)
    # a refused try (frames outside the field's rules) keeps the project for the next one
    refused = post_zip(web, csrf, content, {"frames": "5-1"})
    assert refused.status_code == 400
    kept = re.search(r'name="project_sha" value="([0-9a-f]{64})"', refused.text)
    assert kept, refused.text
    assert f"project: {len(files)} files" in refused.text
    assert "rendering shots/shot.blend" in refused.text
    assert field_error(refused.text, "frames")
    # fixed without sending the zip again: the same project, its .blend found by itself
    params = job_params(web, post(web, csrf, {"frames": "1-2", "project_sha": kept[1],
                                              "allow_missing_files": "1"},
                                  [("scene", ("", b"", "application/octet-stream"))]))
    assert params["project"]["main"] == "shots/shot.blend"
    assert params["project"]["files"] == files
    assert params["scene"] == files["shots/shot.blend"]
    assert params["allow_missing_files"] is True and params["blender_version"] == "5.0"
    # alice may read every blob of her project; bob none of them
    assert web.get(f"/api/v1/blobs/{files['textures/wood.png']}").status_code == 200
    web.cookies.clear()
    login(web, "bob", PASSWORD)
    assert web.get(f"/api/v1/blobs/{files['textures/wood.png']}").status_code == 404
    assert coordinator.services.blobs.partial_uploads() == []


def test_the_blend_to_render_is_typed_or_the_only_one_at_the_top(
        coordinator: Coordinator, web: TestClient) -> None:
    csrf = login(web, "alice", PASSWORD)
    shot = post_zip(web, csrf, zip_of({"shot.blend": BLEND, "lib/char.blend": BLEND + b"c",
                                       "tex/wood.png": PNG}))
    assert job_params(web, shot)["project"]["main"] == "shot.blend"
    # two at the top: the form asks, naming them, and keeps the project
    two = post_zip(web, csrf, zip_of({"a.blend": BLEND, "b.blend": BLEND + b"b",
                                      "tex/shared.png": PNG}))
    assert two.status_code == 400
    assert "a.blend, b.blend" in field_error(two.text, "main_blend")
    kept = re.search(r'name="project_sha" value="([0-9a-f]{64})"', two.text)
    assert kept
    resend = {"frames": "1-2", "project_sha": kept[1]}
    nothing: Files = [("scene", ("", b"", "application/octet-stream"))]
    wrong = post(web, csrf, {**resend, "main_blend": "c.blend"}, nothing)
    assert "no file 'c.blend'" in field_error(wrong.text, "main_blend")
    not_blend = post(web, csrf, {**resend, "main_blend": "tex/shared.png"}, nothing)
    assert "not a .blend" in field_error(not_blend.text, "main_blend")
    assert 'name="project_sha"' in not_blend.text  # still kept: another file may be it
    params = job_params(web, post(web, csrf, {**resend, "main_blend": "b.blend"}, nothing))
    assert params["project"]["main"] == "b.blend" and len(params["project"]["files"]) == 3
    # many candidates: the first 20 are listed
    many = post_zip(web, csrf, zip_of({f"s{i:02d}.blend": BLEND + bytes([i])
                                       for i in range(25)}))
    message = field_error(many.text, "main_blend")
    assert "25 .blend files" in message and "s19.blend and 5 more" in message


def test_several_files_and_a_picked_folder(coordinator: Coordinator, web: TestClient) -> None:
    csrf = login(web, "alice", PASSWORD)
    folder: Files = [("folder", (f"myproject/{path}", data, "application/octet-stream"))
                     for path, data in (("shots/shot.blend", BLEND), ("textures/wood.png", PNG),
                                        (".DS_Store", b"mac"), ("shots/shot.blend1", BLEND))]
    params = job_params(web, post(web, csrf, {"frames": "1-2"}, folder))
    assert params["project"] == {"main": "shots/shot.blend", "absolute": {}, "files": {
        "shots/shot.blend": hashlib.sha256(BLEND).hexdigest(),
        "textures/wood.png": hashlib.sha256(PNG).hexdigest()}}
    # several files chosen in the file field: plain names, at the top of the project
    chosen: Files = [("scene", ("shot.blend", BLEND, "application/x-blender")),
                     ("scene", ("wood.png", PNG, "image/png"))]
    params = job_params(web, post(web, csrf, {"frames": "1-2"}, chosen))
    assert sorted(params["project"]["files"]) == ["shot.blend", "wood.png"]
    before = stored_blobs(coordinator)
    for files, wanted in (
            ([("folder", ("p/../../etc/passwd", PNG, "x")), ("folder", ("p/a.blend", BLEND, "x"))],
             "cannot be a path"),
            ([("scene", ("a.png", PNG, "x")), ("scene", ("b.png", PNG, "x"))], "no .blend"),
            ([("scene", ("a.blend", BLEND, "x")), ("scene", ("./a.blend", BLEND + b"2", "x"))],
             "two of the files"),
            ([("folder", ("p/.pilot/x", PNG, "x")), ("folder", ("p/a.blend", BLEND, "x"))],
             ".pilot")):
        refused = post(web, csrf, {"frames": "1-2"}, files)
        assert refused.status_code == 400
        assert wanted in field_error(refused.text, "scene")
    assert stored_blobs(coordinator) == before and job_count(coordinator) == 2
    assert coordinator.services.blobs.partial_uploads() == []


def _patch_sizes(content: bytes, size: int) -> bytes:
    """The zip with every entry's uncompressed size said to be ``size`` (a lying zip)."""
    data = bytearray(content)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        while at >= 0:
            struct.pack_into("<L", data, at + offset, size)
            at = data.find(signature, at + 4)
    return bytes(data)


def _symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("shot.blend", BLEND)
        link = zipfile.ZipInfo("textures")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc")
    return buffer.getvalue()


def _twice() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("shot.blend", BLEND)
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("shot.blend", BLEND + b"2")
    return buffer.getvalue()


def _entry_count_lies() -> bytes:
    data = bytearray(zip_of({f"f{i}.blend": BLEND for i in range(12)}))
    at = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, at + 8, 1, 1)  # "one entry"
    return bytes(data)


BAD_ZIPS: dict[str, tuple[Callable[[], bytes], str]] = {
    "not a zip": (lambda: b"PK but no zip at all" * 100, "not a zip"),
    "truncated": (lambda: zip_of({"shot.blend": BLEND})[:-30], "not a zip"),
    "absolute path": (lambda: zip_of({"shot.blend": BLEND, "/etc/cron.d/x": b"x"}),
                      "relative to the project"),
    "dot-dot": (lambda: zip_of({"shot.blend": BLEND, "../../x.png": PNG}), "'..' parts"),
    "dot-dot inside": (lambda: zip_of({"p/shot.blend": BLEND, "p/a/../../../x": PNG}),
                       "'..' parts"),
    "backslash": (lambda: zip_of({"shot.blend": BLEND, "..\\..\\x.png": PNG}), "backslash"),
    "windows drive": (lambda: zip_of({"shot.blend": BLEND, "C:/x.png": PNG}),
                      "relative to the project"),
    "the worker's own folder": (lambda: zip_of({"shot.blend": BLEND, ".pilot/x": PNG}),
                                ".pilot"),
    "symlink": (_symlink_zip, "symbolic link"),
    "no blend": (lambda: zip_of({"readme.txt": b"hi", "shot.blend1": BLEND}), "no .blend"),
    "twice": (_twice, "twice"),
    "file and folder": (lambda: zip_of({"shot.blend": BLEND, "tex": PNG, "tex/a.png": PNG}),
                        "both a file and a folder"),
    "too many entries": (lambda: zip_of({f"f{i}.blend": BLEND for i in range(12)}),
                         "at most 10 files"),
    "entry count lies": (_entry_count_lies, "more than 10"),
    "zip bomb": (lambda: zip_of({"shot.blend": BLEND, "bomb.bin": b"\0" * (40 * MiB)}),
                 "unpacks to more than"),
    "sizes lie": (lambda: _patch_sizes(zip_of({"shot.blend": BLEND,
                                               "bomb.bin": b"\0" * (40 * MiB)}), 1000),
                  "damaged"),
}



@pytest.mark.parametrize("case", sorted(BAD_ZIPS))
def test_a_bad_zip_is_a_field_error_with_no_job_and_no_blob(
        coordinator: Coordinator, web: TestClient, monkeypatch: pytest.MonkeyPatch,
        case: str) -> None:
    monkeypatch.setattr(project_upload, "MAX_PROJECT_FILES", 10)
    make, wanted = BAD_ZIPS[case]
    content = make()
    csrf = login(web, "alice", PASSWORD)
    before = stored_blobs(coordinator)
    refused = post_zip(web, csrf, content)
    assert refused.status_code == 400, refused.text
    assert wanted in field_error(refused.text, "scene")
    assert 'name="project_sha"' not in refused.text
    assert job_count(coordinator) == 0
    assert stored_blobs(coordinator) == before  # nothing stored, so nothing hidden either
    assert coordinator.services.blobs.partial_uploads() == []


def test_a_kept_project_is_checked_again(coordinator: Coordinator, web: TestClient) -> None:
    csrf = login(web, "alice", PASSWORD)
    two = post_zip(web, csrf, zip_of({"a.blend": BLEND, "b.blend": BLEND + b"b"}))
    kept = re.search(r'name="project_sha" value="([0-9a-f]{64})"', two.text)
    assert kept
    alice_files = json.loads(coordinator.services.blobs.path(kept[1]).read_bytes())["files"]
    web.cookies.clear()
    csrf = login(web, "bob", PASSWORD)
    nothing: Files = [("scene", ("", b"", "application/octet-stream"))]
    stolen = post(web, csrf, {"frames": "1-2", "project_sha": kept[1],
                              "main_blend": "a.blend"}, nothing)
    assert "not available" in field_error(stolen.text, "scene")
    # bob's own kept list naming alice's blobs, or a path out of the project: refused too
    for files in (alice_files, {"a.blend": hashlib.sha256(BLEND).hexdigest(),
                                "../x": hashlib.sha256(BLEND).hexdigest()}):
        body = json.dumps({"format": project_upload.KEPT_FORMAT, "files": files}).encode()
        sha = hashlib.sha256(body).hexdigest()
        put = web.put(f"/api/v1/blobs/{sha}", content=body, headers={"X-CSRF-Token": csrf})
        assert put.status_code in (200, 201), put.text
        forged = post(web, csrf, {"frames": "1-2", "project_sha": sha,
                                  "main_blend": "a.blend"}, nothing)
        assert "not available" in field_error(forged.text, "scene")
    assert job_count(coordinator) == 0


def test_a_large_zip_unpacks_with_flat_memory(coordinator: Coordinator,
                                              tmp_path: Path) -> None:
    """64 MiB in a zip (one big stored entry, one deflated) to blobs without holding it."""
    coordinator.services.settings.max_upload_bytes = 2**40
    path = coordinator.services.blobs.tmp / "big.zip.part"
    block = hashlib.sha256(b"block").digest() * (MiB // 32)
    digest = hashlib.sha256()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("proj/shot.blend", BLEND)
        with archive.open(zipfile.ZipInfo("proj/caches/big.bin"), "w", force_zip64=True) as out:
            for i in range(48):
                chunk = block[i:] + block[:i]
                digest.update(chunk)
                out.write(chunk)
        info = zipfile.ZipInfo("proj/textures/deflated.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as out:
            for _ in range(16):
                out.write(block)
    upload = UploadedFile("scene", "big.zip", path, path.stat().st_size, "")
    alice = Caller(user_id(coordinator, "alice"), "alice", False)
    tracemalloc.start()
    try:
        project = project_upload.unpack_zip(coordinator.services, alice, upload)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(project.files) == ["caches/big.bin", "shot.blend", "textures/deflated.bin"]
    assert project.files["caches/big.bin"] == digest.hexdigest()
    assert project.total_bytes == 64 * MiB + len(BLEND)
    assert peak < 8 * MiB, f"unpacking held {peak / MiB:.1f} MiB at its peak"
    with coordinator.services.transaction() as conn:
        readable = q.blobs_readable_by_user(conn, alice.user_id, project.files.values())
    assert readable == set(project.files.values())


def test_extraction_stops_at_the_budget_whatever_the_zip_declares(tmp_path: Path) -> None:
    path = tmp_path / "p.zip"
    path.write_bytes(zip_of({"big.bin": b"\0" * (3 * MiB)}))
    with zipfile.ZipFile(path) as archive, pytest.raises(ProjectRefused, match="more than"):
        project_upload._extract(archive, archive.getinfo("big.bin"), tmp_path / "out", MiB)
