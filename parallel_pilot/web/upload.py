"""Reading the submit form as it streams in: a multipart body whose file parts go straight
to temporary files next to the blob store while they are hashed, so a multi-GB .blend or
.zip never sits in memory, and are then placed in the store under their SHA-256 like
``PUT /blobs``.

Fields are small and capped. A form may carry several file parts (several files chosen,
or a folder picked, where the browser sends each file's relative path as its name): they
are kept in order, at most ``max_files`` of them and ``max_file_bytes`` together, and only
one is open for writing at a time. ``before_file`` sees the fields that came before a file
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

from parallel_pilot.coordinator.strict_json import clean_text, text_problem
from parallel_pilot.coordinator.strict_route import StrictRefusal
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
    files: list[UploadedFile] = field(default_factory=list)  # in the order they came

    def named(self, *names: str) -> list[UploadedFile]:
        """The file parts of these fields that hold a chosen file (a browser sends an
        empty part with no name for a file input left empty)."""
        return [f for f in self.files if f.field_name in names and (f.filename or f.size)]

    def discard(self) -> None:
        """Remove the temporary files of every part not placed in the store."""
        for upload in self.files:
            upload.tmp.unlink(missing_ok=True)


class _Parser:
    """python-multipart callbacks collecting fields and streaming file parts to disk."""

    def __init__(self, tmp_dir: Path, max_file_bytes: int, max_files: int,
                 before_file: Callable[[dict[str, str]], None]) -> None:
        self.tmp_dir, self.max_file_bytes, self.before_file = tmp_dir, max_file_bytes, before_file
        self.max_files = max_files
        self._file_bytes = 0  # of every file part so far
        self.form = StreamedForm()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._data = bytearray()
        self._file: UploadedFile | None = None
        self._digest = hashlib.sha256()
        self.pending: list[tuple[UploadedFile, bytes]] = []  # parsed, not yet written

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
        self._name = _text("a form part's name", options[b"name"].decode("utf-8", "replace"))
        if b"filename" in options:
            if len(self.form.files) >= self.max_files:
                raise InvalidInput(f"send at most {self.max_files} "
                                   f"file{'' if self.max_files == 1 else 's'} in one submit")
            self.before_file(dict(self.form.fields))
            tmp = self.tmp_dir / f"web-upload.{uuid.uuid4().hex}.part"
            self._file = UploadedFile(self._name, _text(
                f"{self._name}.filename", options[b"filename"].decode("utf-8", "replace")), tmp)
            self.form.files.append(self._file)
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
        self._file_bytes += len(chunk)
        if self._file_bytes > self.max_file_bytes:
            raise PayloadTooLarge(f"the files of one submit may be at most "
                                  f"{self.max_file_bytes} bytes together")
        self._digest.update(chunk)
        self.pending.append((self._file, chunk))

    def on_part_end(self) -> None:
        if self._file is None:
            self.form.fields[self._name] = _text(self._name,
                                                 self._data.decode("utf-8", "replace"))
        else:
            self._file.sha256 = self._digest.hexdigest()


def _text(where: str, value: str) -> str:
    """A field's text, refused (422) with NUL in it, as every JSON body's is."""
    problem = text_problem(value)
    if problem is not None:
        raise StrictRefusal(("body", clean_text(where)), problem)
    return value


async def read_form(content_type: str, body: AsyncIterator[bytes], tmp_dir: Path, *,
                    max_file_bytes: int,
                    before_file: Callable[[dict[str, str]], None],
                    max_files: int = 1) -> StreamedForm:
    """Parse a multipart/form-data body; file parts land in ``tmp_dir`` (the caller
    places or discards them). Malformed bodies are ``InvalidInput``; more than
    ``max_files`` file parts too, more than ``max_file_bytes`` in them ``PayloadTooLarge``."""
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise InvalidInput("send the form as multipart/form-data")
    state = _Parser(tmp_dir, max_file_bytes, max_files, before_file)
    parser = MultipartParser(options[b"boundary"], {  # type: ignore[arg-type]
        "on_part_begin": state.on_part_begin, "on_part_data": state.on_part_data,
        "on_part_end": state.on_part_end, "on_header_field": state.on_header_field,
        "on_header_value": state.on_header_value, "on_header_end": state.on_header_end,
        "on_headers_finished": state.on_headers_finished,
    })
    writer = _Writer()
    try:
        async for chunk in body:
            parser.write(chunk)
            if state.pending:
                await run_in_threadpool(writer.write, state.pending)
                state.pending = []
        parser.finalize()
    except FormParserError:
        state.form.discard()
        raise InvalidInput("the form data is malformed") from None
    except BaseException:
        state.form.discard()
        raise
    finally:
        writer.close()
    for upload in state.form.files:
        if not upload.tmp.exists():
            upload.tmp.touch()  # an empty file part still gets a (empty) file
    return state.form


class _Writer:
    """Writes parsed file bytes to their part's temporary file, one file open at a time
    (parts come one after another); runs in a thread, off the event loop."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._handle: BinaryIO | None = None

    def write(self, chunks: list[tuple[UploadedFile, bytes]]) -> None:
        for upload, chunk in chunks:
            if upload.tmp != self._path:
                self.close()
                self._path, self._handle = upload.tmp, open(upload.tmp, "wb")  # noqa: SIM115
            assert self._handle is not None
            self._handle.write(chunk)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._path, self._handle = None, None


def place(store: BlobStore, upload: UploadedFile) -> str:
    """Move a hashed upload into the store under its SHA-256 (de-duplicated)."""
    store.adopt(upload.tmp, upload.sha256)
    return upload.sha256
