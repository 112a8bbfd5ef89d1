"""The dashboard's submit form takes worker requirements in the ``--requires`` syntax
(a bad term is shown next to the field, naming it), and the job page says why the job
waits."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.integration.conftest import Coordinator
from tests.integration.test_web_pages import _password, coordinator, login, submit, web

__all__ = ["coordinator", "web"]  # the fixtures, imported for this module's tests


def test_the_form_takes_requirements_and_the_page_says_why_it_waits(
        coordinator: Coordinator, web: TestClient) -> None:
    csrf = login(web, "admin", _password(coordinator))
    bad = submit(web, csrf, {"frames": "1-2", "requires": "gpu,vrm>=8G"})
    assert bad.status_code == 400
    error = re.search(r'id="requires-error">([^<]*)<', bad.text)
    assert error and "cannot read requirement &#39;vrm&gt;=8G&#39;" in error.group(1)
    assert "vram&gt;=SIZE" in error.group(1)
    assert 'value="gpu,vrm&gt;=8G"' in bad.text  # what was typed is kept
    good = submit(web, csrf, {"frames": "1-2", "requires": "vram>=8G, tag=studio-a"})
    assert good.status_code == 303, good.text
    job_id = int(good.headers["location"].rsplit("/", 1)[1])
    info = web.get(f"/api/v1/jobs/{job_id}").json()
    assert info["waiting_reason"] == "waiting: no worker is online"
    page = web.get(good.headers["location"]).text
    assert 'id="waiting-reason"' in page and "waiting: no worker is online" in page
    coordinator.register_worker(kinds=["render"])
    page = web.get(good.headers["location"]).text
    # the render needs the Blender that saved the file (5.0) as well
    assert re.search(r'id="waiting-reason"[^>]*>waiting: no online worker has Blender &gt;= '
                     r'5.0; 1 worker has no Blender; none has a GPU with &gt;= 8 GiB either; '
                     r'none has tag studio-a either<', page), page
