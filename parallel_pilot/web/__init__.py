"""The web dashboard: server-rendered pages (Jinja2), live updates by server-sent events,
and the vendored CSS and JavaScript, served by the coordinator next to the API.

``mount(app)`` adds the pages at ``/`` (``/login``, ``/jobs``, ``/jobs/new``,
``/jobs/{id}``, ``/workers``, ``/account``), the streams under ``/events`` and the static
files under ``/static``. Pages call the same services as the JSON API and use its web
session (``coordinator.sessions``)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from parallel_pilot.web import account_pages, events, pages
from parallel_pilot.web.templating import STATIC_DIR

STATIC_PATH = "/static"


def mount(app: FastAPI) -> None:
    """Serve the dashboard from ``app``."""
    for module in (account_pages, pages, events):
        app.include_router(module.router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")
