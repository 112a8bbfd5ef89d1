"""The dashboard's streamed form upload: a large file part goes to disk while it is hashed
(memory stays flat), a forged form is refused before any file byte is written, and a file
over the coordinator's upload limit is refused."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from parallel_pilot.errors import Forbidden, InvalidInput, PayloadTooLarge
from parallel_pilot.web.upload import read_form

BOUNDARY = "pilotboundary42"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
CHUNK = 1024 * 1024  # bytes per body chunk, as a server receives them


def _pattern(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (CHUNK // 32)


def _parts(fields: dict[str, str], file_chunks: int, *, file_first: bool = False
           ) -> Iterator[bytes]:
    head = "".join(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n"
                   f"{v}\r\n" for k, v in fields.items()).encode()
    file_head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"scene\"; "
                 "filename=\"big.blend\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                 ).encode()
    yield file_head if file_first else head + file_head
    for i in range(file_chunks):
        yield _pattern(i)
    yield b"\r\n" + (head if file_first else b"") + f"--{BOUNDARY}--\r\n".encode()


async def _stream(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _expected_sha(file_chunks: int) -> str:
    digest = hashlib.sha256()
    for i in range(file_chunks):
        digest.update(_pattern(i))
    return digest.hexdigest()


def _check_csrf(fields: dict[str, str]) -> None:
    if fields.get("csrf_token") != "t0ken":
        raise Forbidden("missing or wrong CSRF token")


def test_a_large_file_streams_to_disk_with_flat_memory(tmp_path: Path) -> None:
    chunks = 64  # 64 MiB
    tracemalloc.start()
    try:
        form = asyncio.run(read_form(CONTENT_TYPE, _stream(_parts(
            {"csrf_token": "t0ken", "frames": "1-240"}, chunks)), tmp_path,
            max_file_bytes=2**40, before_file=_check_csrf))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    upload, = form.named("scene")
    assert form.fields == {"csrf_token": "t0ken", "frames": "1-240"}
    assert upload.filename == "big.blend" and upload.size == chunks * CHUNK
    assert upload.sha256 == _expected_sha(chunks)
    assert upload.tmp.stat().st_size == chunks * CHUNK
    assert peak < 8 * CHUNK, f"parsing held {peak / CHUNK:.1f} MiB at its peak"


def test_a_forged_form_is_refused_before_the_file_is_written(tmp_path: Path) -> None:
    with pytest.raises(Forbidden):
        asyncio.run(read_form(CONTENT_TYPE, _stream(_parts({"frames": "1"}, 4)), tmp_path,
                              max_file_bytes=2**40, before_file=_check_csrf))
    # the token after the file does not count either: it must come first
    with pytest.raises(Forbidden):
        asyncio.run(read_form(CONTENT_TYPE, _stream(_parts({"csrf_token": "t0ken"}, 4,
                                                           file_first=True)),
                              tmp_path, max_file_bytes=2**40, before_file=_check_csrf))
    assert list(tmp_path.iterdir()) == []


def test_too_large_and_malformed_bodies_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_form(CONTENT_TYPE, _stream(_parts({"csrf_token": "t0ken"}, 3)),
                              tmp_path, max_file_bytes=2 * CHUNK, before_file=_check_csrf))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidInput, match="multipart/form-data"):
        asyncio.run(read_form("application/json", _stream(iter([b"{}"])), tmp_path,
                              max_file_bytes=10, before_file=_check_csrf))
    long_field = {"csrf_token": "t0ken", "name": "x" * 100_000}
    with pytest.raises(InvalidInput, match="longer than"):
        asyncio.run(read_form(CONTENT_TYPE, _stream(_parts(long_field, 1)), tmp_path,
                              max_file_bytes=2**40, before_file=_check_csrf))


def _several(fields: dict[str, str], files: list[tuple[str, str, int]]) -> Iterator[bytes]:
    """A form with several file parts: (field, file name, MiB of content) each."""
    yield "".join(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n"
                  f"{v}\r\n" for k, v in fields.items()).encode()
    for n, (name, filename, chunks) in enumerate(files):
        yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; "
               f"filename=\"{filename}\"\r\n\r\n").encode()
        for i in range(chunks):
            yield _pattern(1000 * n + i)
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def test_several_file_parts_stream_in_order_with_flat_memory(tmp_path: Path) -> None:
    files = [("folder", "proj/shots/shot.blend", 16), ("folder", "proj/tex/wood.png", 16),
             ("folder", "proj/empty.txt", 0), ("scene", "", 0), ("folder", "proj/c.bin", 16)]
    tracemalloc.start()
    try:
        form = asyncio.run(read_form(CONTENT_TYPE, _stream(_several(
            {"csrf_token": "t0ken"}, files)), tmp_path, max_file_bytes=2**40, max_files=10,
            before_file=_check_csrf))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(f.field_name, f.filename, f.size) for f in form.files] == [
        (name, filename, chunks * CHUNK) for name, filename, chunks in files]
    # the empty part of a file input left empty is not a chosen file; an empty file is
    assert [f.filename for f in form.named("folder", "scene")] == [
        "proj/shots/shot.blend", "proj/tex/wood.png", "proj/empty.txt", "proj/c.bin"]
    for n, upload in enumerate(form.files):
        digest = hashlib.sha256()
        for i in range(files[n][2]):
            digest.update(_pattern(1000 * n + i))
        assert upload.sha256 == digest.hexdigest()
        assert hashlib.sha256(upload.tmp.read_bytes()).hexdigest() == upload.sha256
    assert peak < 8 * CHUNK, f"parsing held {peak / CHUNK:.1f} MiB at its peak"
    form.discard()
    assert list(tmp_path.iterdir()) == []


def test_too_many_file_parts_or_bytes_together_are_refused(tmp_path: Path) -> None:
    three = [("folder", f"p/{i}.png", 1) for i in range(3)]
    with pytest.raises(InvalidInput, match="at most 2 files"):
        asyncio.run(read_form(CONTENT_TYPE, _stream(_several({"csrf_token": "t0ken"}, three)),
                              tmp_path, max_file_bytes=2**40, max_files=2,
                              before_file=_check_csrf))
    assert list(tmp_path.iterdir()) == []
    # each file is under the limit, together they are over it
    with pytest.raises(PayloadTooLarge, match="together"):
        asyncio.run(read_form(CONTENT_TYPE, _stream(_several({"csrf_token": "t0ken"}, three)),
                              tmp_path, max_file_bytes=2 * CHUNK + 10, max_files=10,
                              before_file=_check_csrf))
    assert list(tmp_path.iterdir()) == []
    # one file part is still the default: a form that expects one gets one
    with pytest.raises(InvalidInput, match="at most 1 file in"):
        asyncio.run(read_form(CONTENT_TYPE, _stream(_several({"csrf_token": "t0ken"}, three)),
                              tmp_path, max_file_bytes=2**40, before_file=_check_csrf))
