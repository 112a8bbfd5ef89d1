"""The exception tree of Parallel Pilot, shared by coordinator, worker and SDK.

    PilotError
    ├── InvalidInput          (400) the request is well-formed JSON but its content is wrong
    │   ├── InvalidRange      (400) an item or frame range cannot be parsed
    │   ├── UnknownKind       (400) no job kind of that name
    │   ├── MissingBlob       (400) a job names a file the coordinator does not have
    │   └── OutputNotUploaded (400) a worker reports an output it did not upload for that
    │                               attempt (the same answer whether the blob exists or not)
    ├── Unauthorized          (401) no token, or a token that is not valid
    ├── Forbidden             (403) the token is valid but may not do this
    ├── NotFound              (404)
    │   ├── JobNotFound
    │   ├── TaskNotFound
    │   └── BlobNotFound
    ├── Conflict              (409)
    │   ├── StaleAttempt      a report from an attempt that no longer holds the task
    │   └── InvalidTransition a state change the transition table does not allow
    ├── BlobMismatch          (422) uploaded bytes do not hash to the name they were sent under
    ├── PayloadTooLarge       (413) a request body over the route's limit
    ├── RequestTimeout        (408) a request body that stopped arriving
    ├── RateLimited           (429) too many attempts (failed logins); retry later
    ├── ServerUnavailable     (503) client side: the coordinator could not be reached
    └── CannotListen          a coordinator's address cannot be listened on (a port in use)

The HTTP status of each class is set here and nowhere else (``http_status``); the wire
error body is ``{"error": code, "message": text}`` and ``error_from_body`` turns it back
into the same class in the SDK, worker and CLI.
"""

from __future__ import annotations


class PilotError(Exception):
    """Something went wrong in Parallel Pilot."""

    code = "error"
    status = 500

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.code).strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class InvalidInput(PilotError):
    """The request is not valid."""

    code = "invalid_input"
    status = 400


class InvalidRange(InvalidInput):
    """The range is not valid."""

    code = "invalid_range"


class UnknownKind(InvalidInput):
    """There is no job kind of that name."""

    code = "unknown_kind"


class MissingBlob(InvalidInput):
    """The job names a file that has not been uploaded."""

    code = "missing_blob"


class OutputNotUploaded(InvalidInput):
    """The output was not uploaded for this attempt."""

    code = "output_not_uploaded"


class Unauthorized(PilotError):
    """A valid token is required."""

    code = "unauthorized"
    status = 401


class Forbidden(PilotError):
    """This token may not do that."""

    code = "forbidden"
    status = 403


class NotFound(PilotError):
    """Not found."""

    code = "not_found"
    status = 404


class JobNotFound(NotFound):
    """No such job."""

    code = "job_not_found"


class TaskNotFound(NotFound):
    """No such task."""

    code = "task_not_found"


class BlobNotFound(NotFound):
    """No blob with that hash."""

    code = "blob_not_found"


class Conflict(PilotError):
    """The request conflicts with the current state."""

    code = "conflict"
    status = 409


class StaleAttempt(Conflict):
    """This attempt no longer holds the task."""

    code = "stale_attempt"


class InvalidTransition(Conflict):
    """That state change is not allowed."""

    code = "invalid_transition"


class BlobMismatch(PilotError):
    """The uploaded bytes do not match their SHA-256 name."""

    code = "blob_mismatch"
    status = 422


class PayloadTooLarge(PilotError):
    """The request body is too large."""

    code = "payload_too_large"
    status = 413


class RequestTimeout(PilotError):
    """The request body stopped arriving."""

    code = "request_timeout"
    status = 408


class ServerUnavailable(PilotError):
    """The coordinator could not be reached."""

    code = "server_unavailable"
    status = 503


class CannotListen(PilotError):
    """The coordinator cannot listen on that address (for ``pilot server``/``pilot up``,
    never on the wire)."""

    code = "cannot_listen"


def _all_subclasses(cls: type[PilotError]) -> list[type[PilotError]]:
    out: list[type[PilotError]] = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


ERRORS_BY_CODE: dict[str, type[PilotError]] = {c.code: c for c in _all_subclasses(PilotError)}


def http_status(exc: PilotError) -> int:
    """The HTTP status a coordinator answers for ``exc``."""
    return exc.status


def error_body(exc: PilotError) -> dict[str, str]:
    return {"error": exc.code, "message": exc.message}


def error_from_body(status: int, body: object) -> PilotError:
    """Rebuild the exception a coordinator sent (used by the SDK, CLI and worker)."""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        cls = ERRORS_BY_CODE.get(str(body.get("error")))
        if cls is None:
            cls = _class_for_status(status)
        return cls(body["message"])
    return _class_for_status(status)(f"HTTP {status}: {str(body)[:300]}")


def _class_for_status(status: int) -> type[PilotError]:
    for cls in (InvalidInput, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge,
                BlobMismatch, RateLimited):
        if cls.status == status:
            return cls
    return ServerUnavailable if status >= 500 else PilotError


class RateLimited(PilotError):
    """Too many attempts; try again later."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds, sent as the Retry-After header
