"""Content-addressed blob files on disk: ``ROOT/ab/abcdef…`` named by their SHA-256.

Writes stream through a temporary file while hashing, so memory stays constant for
multi-GB files, and a blob appears under its name only once its bytes are verified.
Temporary files live in this process's own folder under ``ROOT/tmp`` (``core/folders.py``):
at start the folders of coordinators that died mid-upload are removed, never those of one
that runs beside this one. Blob files are 0600, folders 0700.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from parallel_pilot.core.folders import (
    LOCK_NAME,
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    claim_folder,
    private_dir,
    remove_stale_folders,
    tighten,
)
from parallel_pilot.core.protocol import SHA256_RE
from parallel_pilot.errors import BlobMismatch, InvalidInput, PayloadTooLarge

TMP_FOLDER_PREFIX = "uploads-"  # a coordinator's folder of partial uploads (locked)
LEGACY_PART_SUFFIX = ".part"  # partial uploads written straight into ROOT/tmp before


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        private_dir(root)
        for shard in root.glob("[0-9a-f][0-9a-f]"):
            tighten(shard, PRIVATE_DIR_MODE)  # an older version made them 0755
        tmp_root = private_dir(root / "tmp")
        self.stale_removed = remove_stale_folders(tmp_root, TMP_FOLDER_PREFIX)
        for leftover in tmp_root.glob(f"*{LEGACY_PART_SUFFIX}"):
            leftover.unlink(missing_ok=True)  # from a version that kept no folder lock
            self.stale_removed.append(leftover)
        self._held = claim_folder(tmp_root, TMP_FOLDER_PREFIX)
        self.tmp = self._held.path

    def partial_uploads(self) -> list[Path]:
        """What this process's partial uploads folder holds now (its lock aside)."""
        return sorted(p for p in self.tmp.iterdir() if p.name != LOCK_NAME)

    def close(self) -> None:
        """Remove this process's partial uploads folder and let go of it."""
        self._held.release()

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
            final.parent.mkdir(exist_ok=True, mode=PRIVATE_DIR_MODE)
            os.chmod(tmp, PRIVATE_FILE_MODE)
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
        final.parent.mkdir(exist_ok=True, mode=PRIVATE_DIR_MODE)
        os.chmod(tmp, PRIVATE_FILE_MODE)
        os.replace(tmp, final)
