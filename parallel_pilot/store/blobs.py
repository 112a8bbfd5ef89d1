"""Content-addressed blob files on disk: ``ROOT/ab/abcdef…`` named by their SHA-256.

Writes stream through a temporary file while hashing, so memory stays constant for
multi-GB files, and a blob appears under its name only once its bytes are verified.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from parallel_pilot.core.protocol import SHA256_RE
from parallel_pilot.errors import BlobMismatch, InvalidInput, PayloadTooLarge


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise InvalidInput("a blob name must be a SHA-256 hex digest (64 lowercase hex)")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    async def write_stream(self, sha256: str, chunks: AsyncIterator[bytes],
                           max_bytes: int | None = None) -> int:
        """Store the streamed bytes under ``sha256``; refuses bytes that hash otherwise."""
        final = self.path(sha256)
        tmp = self.tmp / f"{sha256}.{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise PayloadTooLarge(f"a blob may be at most {max_bytes} bytes")
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != sha256:
                raise BlobMismatch(
                    f"the uploaded bytes hash to {digest.hexdigest()}, not to {sha256}"
                )
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            return size
        finally:
            tmp.unlink(missing_ok=True)

    def read_prefix(self, sha256: str, size: int) -> bytes:
        """The first ``size`` bytes of a stored blob."""
        with open(self.path(sha256), "rb") as f:
            return f.read(size)

    def write_bytes(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.exists(sha256):
            tmp = self.tmp / f"{sha256}.{uuid.uuid4().hex}.part"
            tmp.write_bytes(data)
            self.adopt(tmp, sha256)
        return sha256

    def adopt(self, tmp: Path, sha256: str) -> None:
        """Move a file whose SHA-256 the caller computed into the store (on the same file
        system, e.g. under ``self.tmp``); when the blob exists already the file is dropped."""
        final = self.path(sha256)
        if final.is_file():
            tmp.unlink(missing_ok=True)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
