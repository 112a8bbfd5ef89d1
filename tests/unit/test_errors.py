"""One exception tree; status codes set in one place; the SDK rebuilds the same classes."""

from __future__ import annotations

from parallel_pilot import errors


def test_round_trip_through_wire_body() -> None:
    for cls in errors.ERRORS_BY_CODE.values():
        exc = cls("something specific")
        back = errors.error_from_body(errors.http_status(exc), errors.error_body(exc))
        assert type(back) is cls and back.message == "something specific"


def test_docstring_is_the_default_message() -> None:
    assert errors.JobNotFound().message == "No such job."


def test_unknown_code_falls_back_to_status() -> None:
    exc = errors.error_from_body(404, {"error": "mystery", "message": "gone"})
    assert isinstance(exc, errors.NotFound) and exc.message == "gone"
    assert isinstance(errors.error_from_body(502, "bad gateway"), errors.ServerUnavailable)
