"""Reading the header of a .blend file without Blender: is it one, and which Blender saved it.

Two header layouts exist (Blender's ``BLO_core_blend_header.hh``):

- format 0 (before Blender 5.0), 12 bytes: ``BLENDER`` + ``-``/``_`` (8- or 4-byte
  pointers) + ``v``/``V`` (little/big endian) + 3 digits of the file version
  (``BLENDER-v279`` is Blender 2.79, ``BLENDER-v405`` is 4.5);
- format 1 (Blender 5.0 and later), 17 bytes: ``BLENDER`` + 2 digits of header size
  (``17``) + ``-`` + 2 digits of format version (``01``) + ``v`` + 4 digits of the file
  version (``BLENDER17-01v0500`` is Blender 5.0).

The file may be compressed as a whole: gzip (before Blender 3.0) or Zstandard (3.0 and
later); the start is decompressed to reach the header. Zstandard needs the ``zstandard``
package (a dependency of ``bpy``); without it a Zstandard file is taken to be a .blend
from Blender 3.0 or later, which is the earliest Blender that writes them.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from parallel_pilot.errors import InvalidInput

BLEND_MAGIC = b"BLENDER"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Bytes of a file read to find its header: a whole Zstandard block (at most 128 KiB) must
# be in the prefix before any of it can be decompressed.
HEADER_READ_BYTES = 256 * 1024
HEADER_DECOMPRESSED_BYTES = 64  # bytes of decompressed data needed for either header
ZSTD_FLOOR_CODE = 300  # Zstandard-compressed .blend files start with Blender 3.0

_FORMAT_0 = re.compile(rb"^BLENDER([-_])([vV])(\d{3})")
_FORMAT_1 = re.compile(rb"^BLENDER(\d{2})-(\d{2})([vV])(\d{4})")


@dataclass(frozen=True)
class BlendHeader:
    """What the first bytes of a .blend file say."""

    version: str  # the Blender version that saved the file, "major.minor" ("5.0", "2.79")
    version_code: int  # as written: 500, 405, 279
    format_version: int  # 0: 12-byte header, 1: 17-byte header (Blender 5.0+)
    pointer_size: int  # bytes: 4 or 8
    little_endian: bool
    compression: str | None  # None, "gzip" or "zstd"
    exact: bool = True  # False when the version is only a floor (zstd without the package)


def version_from_code(code: int) -> str:
    """500 -> "5.0", 405 -> "4.5", 279 -> "2.79" (Blender's ``BLENDER_FILE_VERSION``)."""
    return f"{code // 100}.{code % 100}"


def parse_header(prefix: bytes, *, name: str = "the file") -> BlendHeader:
    """The header of a .blend file from its first bytes (``HEADER_READ_BYTES`` are enough);
    raises ``InvalidInput`` naming ``name`` when it is not a .blend file."""
    compression: str | None = None
    data = prefix
    if prefix.startswith(GZIP_MAGIC):
        compression = "gzip"
        data = _gunzip_start(prefix)
    elif prefix.startswith(ZSTD_MAGIC):
        compression = "zstd"
        unzstd = _unzstd_start(prefix)
        if unzstd is None:  # no zstandard package here: trust the compression's magic
            return BlendHeader(version_from_code(ZSTD_FLOOR_CODE), ZSTD_FLOOR_CODE, 0, 8, True,
                               compression, exact=False)
        data = unzstd
    header = _decode(data, compression)
    if header is None:
        raise InvalidInput(_not_blend_message(name, prefix, compression))
    return header


def read_header(path: Path, *, name: str | None = None) -> BlendHeader:
    """``parse_header`` of a file on disk."""
    with open(path, "rb") as fh:
        prefix = fh.read(HEADER_READ_BYTES)
    return parse_header(prefix, name=name or path.name)


def _decode(data: bytes, compression: str | None) -> BlendHeader | None:
    match = _FORMAT_1.match(data)
    if match:
        code = int(match.group(4))
        return BlendHeader(version_from_code(code), code, int(match.group(2)), 8,
                           match.group(3) == b"v", compression)
    match = _FORMAT_0.match(data)
    if match:
        code = int(match.group(3))
        return BlendHeader(version_from_code(code), code, 0,
                           8 if match.group(1) == b"-" else 4, match.group(2) == b"v",
                           compression)
    return None


def _gunzip_start(prefix: bytes) -> bytes:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(
            prefix, HEADER_DECOMPRESSED_BYTES)
    except zlib.error:
        return b""


def _unzstd_start(prefix: bytes) -> bytes | None:
    """The start of a Zstandard stream, b"" when it is not one, None without the package."""
    try:
        import zstandard
    except ImportError:
        return None
    try:
        return zstandard.ZstdDecompressor().decompressobj().decompress(prefix)[:256]
    except zstandard.ZstdError:
        return b""


def _not_blend_message(name: str, prefix: bytes, compression: str | None) -> str:
    if not prefix:
        what = "it is empty"
    elif compression:
        what = f"it is {compression}-compressed but does not hold a Blender file"
    elif prefix.startswith(BLEND_MAGIC):
        what = f"its header {prefix[:17]!r} is not one Blender writes"
    else:
        what = f"it starts with {prefix[:16]!r}, not 'BLENDER'"
    return (f"{name} is not a .blend file ({what}); "
            "upload the file that Blender's File ▸ Save writes")
