"""Submitting a render from the browser: the form's fields turned into the ``render`` kind's
parameters, checked by the kind's own model and ``check_inputs`` (the .blend header) with
each error placed next to its field, then submitted through the jobs service.

What is rendered is a lone .blend, a project in one .zip, or several files (a folder
picked): the last two become ``params["project"]`` (``project_upload.py``), the .blend to
render being the one typed in "blend file in the project" or the only one at the
shallowest level. An upload that arrived but whose job was refused is kept (the form
carries the .blend's hash, or the hash of the project's kept file list), so fixing a field
does not mean uploading a large file again; a kept upload is checked again on resubmit."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from parallel_pilot.coordinator import sessions
from parallel_pilot.coordinator.services import blobs, jobs
from parallel_pilot.coordinator.services.context import Services
from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.core.project import MAX_PROJECT_FILES
from parallel_pilot.core.protocol import SHA256_RE, JobInfo, JobSubmit
from parallel_pilot.core.requirements import RequirementsSyntaxError, parse_requires
from parallel_pilot.errors import Forbidden, InvalidInput
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.render.kind import RenderParams
from parallel_pilot.store import queries as q
from parallel_pilot.web import project_upload
from parallel_pilot.web.project_upload import ProjectRefused, UploadedProject
from parallel_pilot.web.upload import StreamedForm, UploadedFile, place, read_form

FILE_FIELD = "scene"  # a .blend, a .zip, or several files
FOLDER_FIELD = "folder"  # a folder picked (webkitdirectory): files with relative names
MAIN_FIELD = "main_blend"  # the .blend to render, as a project path
INT_FIELDS = ("chunk", "samples", "resolution")
TEXT_FIELDS = ("frames", "engine", "format", "name", "requires", MAIN_FIELD)
BOOL_FIELDS = ("allow_missing_files",)  # checkboxes: sent as "1" when ticked
ENGINES = [("", "as saved in the file"), ("CYCLES", "Cycles"), ("BLENDER_EEVEE", "EEVEE"),
           ("BLENDER_EEVEE_NEXT", "EEVEE Next"), ("BLENDER_WORKBENCH", "Workbench")]
FORMATS = [("PNG", "PNG"), ("JPEG", "JPEG"), ("OPEN_EXR", "OpenEXR")]
# where a parameter's error is shown when the field the user typed into is another one
PARAM_FIELDS = {"scene": FILE_FIELD, "scene_file": FILE_FIELD, "blender_version": FILE_FIELD,
                "project": FILE_FIELD}


@dataclass
class SubmitForm:
    """What the form shows: the values typed, errors by field, the kept upload."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    scene_sha: str = ""
    scene_file: str = ""
    scene_size: int | None = None
    project: UploadedProject | None = None  # a project uploaded (or kept) instead
    main: str = ""  # the project's .blend to render, once chosen

    def project_summary(self) -> str:
        """What was uploaded, e.g. "project: 12 files, 3.4 MiB, rendering shots/a.blend"."""
        return self.project.describe(self.main) if self.project else ""


def _csrf_checker(request: Request) -> Any:
    expected = request.cookies.get(sessions.CSRF_COOKIE, "")
    header = request.headers.get(sessions.CSRF_HEADER)

    def check(fields: dict[str, str]) -> None:
        sent = header if header is not None else fields.get(sessions.CSRF_FORM_FIELD)
        if not expected or not sent or not hmac.compare_digest(expected.encode(),
                                                               sent.encode()):
            raise Forbidden("missing or wrong CSRF token (reload the page and try again)")

    return check


async def receive(request: Request, svc: Services, user: Caller) -> StreamedForm:
    """Stream the posted form in; the CSRF token is checked before the file is written
    and again after the body (for a form without a file part)."""
    check = _csrf_checker(request)
    form = await read_form(request.headers.get("content-type", ""), request.stream(),
                           svc.blobs.tmp, max_file_bytes=svc.settings.max_upload_bytes,
                           max_files=MAX_PROJECT_FILES, before_file=check)
    try:
        check(form.fields)
    except Forbidden:
        form.discard()
        raise
    return form


def _record(svc: Services, user: Caller, sha256: str, size: int) -> None:
    with svc.transaction() as conn:
        blobs.record_user_blobs(conn, user.user_id, {sha256: size}, svc.clock())


def _lone_file(svc: Services, user: Caller, upload: UploadedFile, state: SubmitForm) -> None:
    place(svc.blobs, upload)
    _record(svc, user, upload.sha256, upload.size)
    state.scene_sha, state.scene_file, state.scene_size = (
        upload.sha256, upload.filename.replace("\\", "/").rsplit("/", 1)[-1], upload.size)


def _kept_scene(svc: Services, user: Caller, form: StreamedForm, state: SubmitForm) -> None:
    """The .blend kept from a refused submit (only if this user may read it)."""
    sha = form.fields.get("scene_sha", "")
    if SHA256_RE.match(sha):
        with svc.transaction() as conn:
            readable = user.is_admin or sha in q.blobs_readable_by_user(conn, user.user_id, [sha])
            size = q.blob_size(conn, sha)
        if readable and size is not None:
            state.scene_sha, state.scene_size = sha, size
            state.scene_file = form.fields.get("scene_file", "") or "scene.blend"


def _take_upload(svc: Services, user: Caller, form: StreamedForm, state: SubmitForm) -> None:
    """What this submit renders: the files just sent (a .zip, several files or one
    .blend), else what a refused submit kept. A refused project is an error by the file
    field, with nothing stored."""
    uploads = form.named(FILE_FIELD, FOLDER_FIELD)
    try:
        if len(uploads) == 1 and uploads[0].filename.lower().endswith(".zip"):
            state.project = project_upload.unpack_zip(svc, user, uploads[0])
        elif len(uploads) > 1:
            state.project = project_upload.from_files(svc, user, uploads)
        elif uploads:
            _lone_file(svc, user, uploads[0], state)
        elif form.fields.get("project_sha"):
            state.project = project_upload.kept_project(svc, user, form.fields["project_sha"])
        else:
            _kept_scene(svc, user, form, state)
    except ProjectRefused as exc:
        state.errors[FILE_FIELD] = exc.message


def _params(state: SubmitForm) -> dict[str, Any]:
    params: dict[str, Any] = {"scene": state.scene_sha, "scene_file": state.scene_file}
    if state.project is not None:
        try:
            state.main = project_upload.choose_main(state.project.files,
                                                    state.values.get(MAIN_FIELD, ""))
        except ProjectRefused as exc:
            state.errors[MAIN_FIELD] = exc.message
        params = {"project": {"main": state.main, "files": state.project.files}}
    for name in ("frames", "engine", "format"):
        value = state.values.get(name, "").strip()
        if value:
            params[name] = value
    for name in BOOL_FIELDS:
        if state.values.get(name):
            params[name] = True
    for name in INT_FIELDS:
        raw = state.values.get(name, "").strip()
        if not raw:
            continue
        try:
            params[name] = int(raw)
        except ValueError:
            state.errors[name] = "must be a whole number"
    return params


def _field_errors(exc: ValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for err in exc.errors():
        loc = err.get("loc") or ("",)
        name = PARAM_FIELDS.get(str(loc[0]), str(loc[0]))
        message = str(err.get("msg", "not valid")).removeprefix("Value error, ")
        errors.setdefault(name or "form", message)
    return errors


def submit_render(svc: Services, user: Caller, form: StreamedForm) -> tuple[JobInfo | None,
                                                                             SubmitForm]:
    """Validate and submit; a refused form comes back with its errors by field."""
    state = SubmitForm(values={k: form.fields.get(k, "")
                               for k in (*TEXT_FIELDS, *INT_FIELDS, *BOOL_FIELDS)})
    _take_upload(svc, user, form, state)
    params = _params(state)
    if not state.scene_sha and state.project is None:
        state.errors.setdefault(FILE_FIELD, "choose a .blend file, a .zip of the project "
                                "or the project's folder to render")
    try:  # the same syntax and message as pilot render --requires
        requirements = parse_requires(state.values.get("requires", ""))
    except RequirementsSyntaxError as exc:
        state.errors["requires"] = exc.message
    if state.errors:
        return None, state
    kind = get_kind("render")
    try:
        checked = kind.check_inputs(RenderParams.model_validate(params), svc.blobs.read_prefix)
    except ValidationError as exc:
        state.errors.update(_field_errors(exc))
        return None, state
    except InvalidInput as exc:  # the header says it is not a .blend
        if state.project is not None:  # another file of the project may be the one
            state.errors[MAIN_FIELD] = exc.message
            return None, state
        state.errors[FILE_FIELD] = exc.message
        state.scene_sha = state.scene_file = ""
        return None, state
    name = state.values.get("name", "").strip() or state.main or state.scene_file
    body = JobSubmit(kind="render", params=checked.model_dump(mode="json", exclude_none=True),
                     name=name[:200], requirements=requirements)
    try:
        return jobs.submit(svc, user, body), state
    except InvalidInput as exc:  # e.g. more tasks than the coordinator allows
        state.errors["form"] = exc.message
        return None, state


async def handle(request: Request, svc: Services, user: Caller) -> tuple[JobInfo | None,
                                                                          SubmitForm]:
    form = await receive(request, svc, user)
    try:
        return await run_in_threadpool(submit_render, svc, user, form)
    finally:
        form.discard()  # whatever was not placed in the store
