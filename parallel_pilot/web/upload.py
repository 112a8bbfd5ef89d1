"""Reading the submit form as it streams in: a multipart body whose file part goes straight
to a temporary file next to the blob store while it is hashed, so a multi-GB .blend never
sits in memory, and is then placed in the store under its SHA-256 like ``PUT /blobs``.

Fields are small and capped. ``before_file`` sees the fields that came before the file
part (the form puts its CSRF token first), so a forged post is refused before any file
byte is written."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from parallel_pilot.errors import InvalidInput, PayloadTooLarge
from parallel_pilot.store.blobs import BlobStore

MAX_FIELDS = 50  # form fields one submit may have
MAX_FIELD_BYTES = 64 * 1024  # bytes one form field may have


@dataclass
class UploadedFile:
    """A file part written to ``tmp`` and hashed; ``size`` 0 with no name: none chosen."""

    field_name: str
    filename: str
    tmp: Path
    size: int = 0
    sha256: str = ""


@dataclass
class StreamedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)

    def discard(self) -> None:
        for upload in self.files.values():
            upload.tmp.unlink(missing_ok=True)


class _Parser:
    """python-multipart callbacks collecting fields and streaming file parts to disk."""

    def __init__(self, tmp_dir: Path, max_file_bytes: int,
                 before_file: Callable[[dict[str, str]], None]) -> None:
        self.tmp_dir, self.max_file_bytes, self.before_file = tmp_dir, max_file_bytes, before_file
        self.form = StreamedForm()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._data = bytearray()
        self._file: UploadedFile | None = None
        self._digest = hashlib.sha256()
        self.pending: list[bytes] = []  # file bytes parsed but not yet written

    def on_part_begin(self) -> None:
        self._disposition, self._data, self._file = b"", bytearray(), None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidInput("a form part has no name")
        self._name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            if self.form.files:
                raise InvalidInput("send one file per submit")
            self.before_file(dict(self.form.fields))
            tmp = self.tmp_dir / f"web-upload.{uuid.uuid4().hex}.part"
            self._file = UploadedFile(self._name, options[b"filename"].decode("utf-8", "replace"),
                                      tmp)
            self.form.files[self._name] = self._file
            self._digest = hashlib.sha256()
        elif len(self.form.fields) >= MAX_FIELDS:
            raise InvalidInput(f"a form may have at most {MAX_FIELDS} fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is None:
            if len(self._data) + len(chunk) > MAX_FIELD_BYTES:
                raise InvalidInput(f"the form field {self._name!r} is longer than "
                                   f"{MAX_FIELD_BYTES} bytes")
            self._data.extend(chunk)
            return
        self._file.size += len(chunk)
        if self._file.size > self.max_file_bytes:
            raise PayloadTooLarge(f"a file may be at most {self.max_file_bytes} bytes")
        self._digest.update(chunk)
        self.pending.append(chunk)

    def on_part_end(self) -> None:
        if self._file is None:
            self.form.fields[self._name] = self._data.decode("utf-8", "replace")
        else:
            self._file.sha256 = self._digest.hexdigest()


async def read_form(content_type: str, body: AsyncIterator[bytes], tmp_dir: Path, *,
                    max_file_bytes: int,
                    before_file: Callable[[dict[str, str]], None]) -> StreamedForm:
    """Parse a multipart/form-data body; file parts land in ``tmp_dir`` (the caller
    places or discards them). Malformed bodies are ``InvalidInput``."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise InvalidInput("send the form as multipart/form-data")
    state = _Parser(tmp_dir, max_file_bytes, before_file)
    parser = MultipartParser(options[b"boundary"], {  # type: ignore[arg-type]
        "on_part_begin": state.on_part_begin, "on_part_data": state.on_part_data,
        "on_part_end": state.on_part_end, "on_header_field": state.on_header_field,
        "on_header_value": state.on_header_value, "on_header_end": state.on_header_end,
        "on_headers_finished": state.on_headers_finished,
    })
    handles: dict[Path, BinaryIO] = {}
    try:
        async for chunk in body:
            parser.write(chunk)
            if state.pending:
                await run_in_threadpool(_append, handles, state.form, state.pending)
                state.pending = []
        parser.finalize()
    except FormParserError:
        state.form.discard()
        raise InvalidInput("the form data is malformed") from None
    except BaseException:
        state.form.discard()
        raise
    finally:
        for handle in handles.values():
            handle.close()
    for upload in state.form.files.values():
        if not upload.tmp.exists():
            upload.tmp.touch()  # an empty file part still gets a (empty) file
    return state.form


def _append(handles: dict[Path, BinaryIO], form: StreamedForm, chunks: list[bytes]) -> None:
    """Write parsed bytes of the (one) file part; runs in a thread, off the event loop."""
    upload = next(iter(form.files.values()))
    handle = handles.get(upload.tmp)
    if handle is None:
        handle = handles[upload.tmp] = open(upload.tmp, "wb")  # noqa: SIM115
    for chunk in chunks:
        handle.write(chunk)


def place(store: BlobStore, upload: UploadedFile) -> str:
    """Move a hashed upload into the store under its SHA-256 (de-duplicated)."""
    store.adopt(upload.tmp, upload.sha256)
    return upload.sha256
