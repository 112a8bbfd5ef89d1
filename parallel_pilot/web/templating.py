"""The dashboard's Jinja2 environment: templates, the filters pages use (durations, sizes,
times), and rendering a page or a fragment with what every page needs (viewer, CSRF)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from parallel_pilot.coordinator.services.jobs import Caller
from parallel_pilot.coordinator.sessions import CSRF_COOKIE, CSRF_FORM_FIELD
from parallel_pilot.core.units import human_bytes

TEMPLATE_DIR = Path(__file__).parent / "templates"
# pages load only their own scripts, styles and media, and may not be framed
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATIC_DIR = Path(__file__).parent / "static"


def duration(seconds: float | None) -> str:
    """``42s``, ``3m 05s``, ``2h 07m``; a dash when unknown."""
    if seconds is None:
        return "–"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def ago(timestamp: float | None, now: float | None = None) -> str:
    if timestamp is None:
        return "never"
    return f"{duration((now or time.time()) - timestamp)} ago"


def size(n: int | None) -> str:
    return human_bytes(n, missing="–")


def clock(timestamp: float | None) -> str:
    if timestamp is None:
        return "–"
    return time.strftime("%b %d %H:%M", time.localtime(timestamp))


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(duration=duration, ago=ago, size=size, clock=clock)
    return env


ENV = _environment()
TEMPLATES = Jinja2Templates(env=ENV)


def page(request: Request, name: str, context: dict[str, Any], *,
         viewer: Caller | None, status_code: int = 200,
         headers: dict[str, str] | None = None) -> HTMLResponse:
    """A full page: the template plus the viewer, the CSRF token for its forms and the path
    (to mark the current section in the navigation)."""
    full = {"viewer": viewer, "csrf_token": request.cookies.get(CSRF_COOKIE, ""),
            "csrf_field": CSRF_FORM_FIELD, "path": request.url.path, **context}
    return TEMPLATES.TemplateResponse(request, name, full, status_code=status_code,
                                      headers={**PAGE_HEADERS, **(headers or {})})


def fragment(name: str, context: dict[str, Any]) -> str:
    """A piece of a page (also sent by the live-update streams), rendered to a string."""
    return ENV.get_template(f"fragments/{name}.html").render(**context)
