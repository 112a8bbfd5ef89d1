"""``StrictRoute``: the route class of every API and dashboard router, the one place where
a request's input is checked before any endpoint, dependency or database sees it.

In order, before FastAPI's own handler runs:
1. path and query parameters: text without NUL (``strict_json.text_problem``);
2. the body's budget (``body_guard``): ``max_body_bytes`` for JSON and form bodies,
   ``UNAUTHENTICATED_BODY_BYTES`` on routes that take no token (registering, logging in),
   ``max_upload_bytes`` on routes marked ``@streamed_body`` (they read their own stream);
   a declared length over it is a 413 before a byte is read;
3. the caller's token or session, on routes that have a body and need one: an unknown
   token is a 401 before its body is read (so a stranger's body costs nothing);
4. the body itself, read within its budget and decoded once by ``strict_json`` (FastAPI
   then uses the decoded value): JSON under the route's text policy (``REFUSE``, or
   ``ESCAPE`` on routes marked ``@worker_report``), a form's fields without NUL.
Anything refused is a 422 naming the field (``params.command.0: text must not contain
NUL``), the same body as every other validation error."""

from __future__ import annotations

import email.message
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.params import Form
from fastapi.routing import APIRoute

from parallel_pilot.coordinator import strict_json
from parallel_pilot.coordinator.body_guard import SCOPE_KEY, BodyBudget
from parallel_pilot.coordinator.log_context import annotate
from parallel_pilot.coordinator.strict_json import BadValue, Policy

UNAUTHENTICATED_BODY_BYTES = 64 * 1024  # body bytes a route that takes no token reads

F = TypeVar("F", bound=Callable[..., Any])
EarlyAuth = Callable[[Request], Awaitable[object]]

_POLICY_ATTR = "__pilot_text_policy__"
_STREAMED_ATTR = "__pilot_streamed_body__"
# dependency (as routes declare it) -> the same check run on its own, before the body
_EARLY_AUTH: dict[Callable[..., Any], EarlyAuth] = {}


def worker_report(endpoint: F) -> F:
    """Mark an endpoint whose body is what a worker reports a task produced: its text is
    escaped (``strict_json.Policy.ESCAPE``), never refused."""
    setattr(endpoint, _POLICY_ATTR, Policy.ESCAPE)
    return endpoint


def streamed_body(endpoint: F) -> F:
    """Mark an endpoint that reads its own body as a stream (an upload): it may be up to
    ``max_upload_bytes`` and is not read ahead."""
    setattr(endpoint, _STREAMED_ATTR, True)
    return endpoint


_LOGGED_PARAMS = ("job_id", "task_id", "worker_id", "attempt")  # into the request's log fields


def authenticate_first(dependency: Callable[..., Any], early: EarlyAuth) -> None:
    """Routes depending on ``dependency`` (an auth dependency) run ``early`` first: it
    raises for a caller the dependency would refuse, before the body is read."""
    _EARLY_AUTH[dependency] = early


def _auth_checks(dependant: Dependant) -> list[EarlyAuth]:
    found: list[EarlyAuth] = []
    for sub in dependant.dependencies:
        if sub.call in _EARLY_AUTH:
            found.append(_EARLY_AUTH[sub.call])
        else:
            found.extend(_auth_checks(sub))
    return found


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type")
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json"))


class StrictRefusal(RequestValidationError):
    """Input this layer refuses (answered 422 like any validation error)."""

    def __init__(self, where: tuple[str | int, ...], message: str) -> None:
        super().__init__([{"type": "value_error", "loc": where, "msg": message,
                           "input": None}])
        shown = ".".join(str(p) for p in where if p != "body") or "body"
        self.message = f"{shown}: {message}"


def _refuse(where: tuple[str | int, ...], message: str) -> StrictRefusal:
    return StrictRefusal(where, message)


def _check_parameters(request: Request) -> None:
    for place, items in (("path", request.path_params.items()),
                         ("query", request.query_params.multi_items())):
        for name, value in items:
            problem = strict_json.text_problem(str(name)) or (
                strict_json.text_problem(value) if isinstance(value, str) else None)
            if problem is not None:
                raise _refuse((place, strict_json.clean_text(str(name))), problem)


async def _check_form(request: Request) -> None:
    form = await request.form()  # cached by Starlette: the endpoint reads the same one
    for name, value in form.multi_items():
        problem = strict_json.text_problem(name) or (
            strict_json.text_problem(value) if isinstance(value, str) else None)
        if problem is not None:
            raise _refuse(("body", strict_json.clean_text(name)), problem)


async def _decode_json(request: Request, policy: Policy) -> None:
    body = await request.body()
    if not body or not _is_json(request):
        return  # FastAPI answers what is not JSON (422) itself
    try:
        request._json = strict_json.decode(body, policy)  # what request.json() returns
    except BadValue as exc:
        raise _refuse(("body", *exc.where), exc.message) from None
    except RecursionError:
        raise _refuse(("body",), "the JSON is nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError, or an integer of 4300+ digits
        raise _refuse(("body",), f"not valid JSON ({exc})") from None


class StrictRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        policy: Policy = getattr(self.endpoint, _POLICY_ATTR, Policy.REFUSE)
        streamed: bool = getattr(self.endpoint, _STREAMED_ATTR, False)
        checks = _auth_checks(self.dependant)
        body_field = self.body_field
        is_form = body_field is not None and isinstance(body_field.field_info, Form)

        async def strict_handler(request: Request) -> Response:
            _check_parameters(request)
            annotate(**{k: int(v) for k, v in request.path_params.items()  # ids, as numbers
                        if k in _LOGGED_PARAMS and str(v).isdigit() and len(str(v)) <= 18})
            budget: BodyBudget | None = request.scope.get(SCOPE_KEY)
            settings = request.app.state.services.settings
            if budget is not None:
                if streamed:
                    budget.set_limit(settings.max_upload_bytes, "an upload")
                elif not checks:
                    budget.set_limit(min(UNAUTHENTICATED_BODY_BYTES, settings.max_body_bytes),
                                     "the body of a request without a token")
                else:
                    budget.set_limit(settings.max_body_bytes)
            if body_field is not None:
                for check in checks:
                    await check(request)
                if is_form:
                    await _check_form(request)
                else:
                    await _decode_json(request, policy)
            return await handler(request)

        return strict_handler
