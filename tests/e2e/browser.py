"""Headless Chromium for the dashboard tests: Debian's ``/usr/bin/chromium`` driven by
Playwright (never a downloaded browser), an accessibility check with axe-core, and
screenshots saved under ``test-artifacts/screenshots/`` (git ignores it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import require

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
VIEWPORT = {"width": 1366, "height": 900}  # a laptop screen
BLOCKING_IMPACTS = ("serious", "critical")  # axe findings that fail a test


def chromium_missing() -> str | None:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        return "Debian's chromium is not installed (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A running headless Chromium (a Playwright ``Browser``); skips, or fails under CI,
    when Chromium or Playwright is missing."""
    require(chromium_missing())
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, base_url: str, *, bypass_csp: bool = True,
             javascript: bool = True) -> Any:
    """A page in a fresh context (its own cookies), with downloads allowed. The test's own
    scripts (waits, axe-core) are let past the pages' Content-Security-Policy, which
    forbids evaluating strings."""
    context = browser.new_context(base_url=base_url, viewport=VIEWPORT, accept_downloads=True,
                                  bypass_csp=bypass_csp, java_script_enabled=javascript)
    context.set_default_timeout(20_000)
    return context.new_page()


def check_accessibility(page: Any, what: str) -> None:
    """Run axe-core on the page as it is now; fail on serious or critical violations."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    blocking = [v for v in results.response["violations"]
                if v.get("impact") in BLOCKING_IMPACTS]
    details = "\n".join(
        f"- {v['id']} ({v['impact']}): {v['help']} at "
        f"{', '.join(str(n['target']) for n in v['nodes'][:5])}" for v in blocking)
    assert not blocking, f"accessibility violations on {what}:\n{details}"


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
