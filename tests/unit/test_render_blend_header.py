"""Reading .blend headers: both layouts, compression, and what is not a .blend."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds.render.blend_file import parse_header, read_header, version_from_code


@pytest.mark.parametrize("start, version, fmt, pointer, little", [
    (b"BLENDER17-01v0500", "5.0", 1, 8, True),  # Blender 5.0's 17-byte header
    (b"BLENDER17-01v0501", "5.1", 1, 8, True),
    (b"BLENDER-v405", "4.5", 0, 8, True),
    (b"BLENDER-v279", "2.79", 0, 8, True),
    (b"BLENDER_v293", "2.93", 0, 4, True),
    (b"BLENDER-V300", "3.0", 0, 8, False),
])
def test_uncompressed_headers(start: bytes, version: str, fmt: int, pointer: int,
                              little: bool) -> None:
    header = parse_header(start + b"REND" + bytes(40))
    assert (header.version, header.format_version, header.pointer_size,
            header.little_endian, header.compression, header.exact) == (
        version, fmt, pointer, little, None, True)


def test_version_codes() -> None:
    assert [version_from_code(c) for c in (500, 405, 300, 279)] == ["5.0", "4.5", "3.0",
                                                                   "2.79"]


def test_compressed_headers() -> None:
    zstandard = pytest.importorskip("zstandard")
    body = b"BLENDER17-01v0500REND" + bytes(200_000)
    assert parse_header(gzip.compress(body)).compression == "gzip"
    zst = zstandard.ZstdCompressor().compress(body)
    header = parse_header(zst)
    assert (header.version, header.compression) == ("5.0", "zstd")
    # only a prefix of a large compressed file is read
    big = zstandard.ZstdCompressor().compress(b"BLENDER-v361" + bytes(5_000_000))
    assert parse_header(big[:256 * 1024]).version == "3.61"
    with pytest.raises(InvalidInput, match="zstd-compressed but does not hold a Blender"):
        parse_header(zstandard.ZstdCompressor().compress(b"PK\x03\x04" + bytes(100)))
    with pytest.raises(InvalidInput, match="zstd-compressed"):
        parse_header(b"\x28\xb5\x2f\xfd" + b"garbage" * 10)


def test_read_header_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "a.blend"
    path.write_bytes(b"BLENDER-v402" + bytes(100))
    assert read_header(path).version == "4.2"


@pytest.mark.parametrize("content, words", [
    (b"", "it is empty"),
    (b"hello", "starts with b'hello'"),
    (b"BLENDER", "not one Blender writes"),
    (b"BLENDER-x123", "not one Blender writes"),
    (gzip.compress(b"PK\x03\x04", mtime=0), "gzip-compressed"),
])
def test_not_a_blend(content: bytes, words: str) -> None:
    with pytest.raises(InvalidInput, match=words) as info:
        parse_header(content, name="scene.blend")
    assert info.value.message.startswith("scene.blend is not a .blend file")
