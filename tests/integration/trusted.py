"""Workers an admin vouched for, and workers of other join tokens, for tests of what a
worker's word decides (``coordinator.services.trust``)."""

from __future__ import annotations

from tests.integration.conftest import Coordinator

API = "/api/v1"


def new_join_token(coord: Coordinator, **fields: object) -> str:
    r = coord.client.post(f"{API}/join-tokens", headers=coord.user(), json=fields)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def register(coord: Coordinator, name: str, *, kinds: list[str] | None = None,
             join_token: str | None = None, trusted: bool = False,
             **caps: object) -> dict[str, str]:
    """A worker's auth headers; ``trusted``: an admin marks it trusted at once."""
    r = coord.client.post(f"{API}/workers/register", json={
        "join_token": join_token or coord.join_token, "name": name,
        "capabilities": {"cpu_cores": 2, "ram_bytes": 2**30,
                         "kinds": kinds or ["sleep", "sweep"], **caps}})
    assert r.status_code == 200, r.text
    if trusted:
        t = coord.client.post(f"{API}/workers/{r.json()['worker_id']}/trust",
                              headers=coord.user())
        assert t.status_code == 200, t.text
    return {"Authorization": f"Bearer {r.json()['worker_token']}"}
