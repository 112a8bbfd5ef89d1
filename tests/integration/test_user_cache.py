"""The coordinator keeps a user's token for a few seconds (``UserCache``) so that a
client's requests are not each a query: revoking through this coordinator takes effect at
once; through another coordinator of the farm once the entry ages out; a cached token is
never used past its expiry."""

from __future__ import annotations

import time
from pathlib import Path

from tests.integration.conftest import make_coordinator

API = "/api/v1"


def test_a_revocation_elsewhere_takes_effect_once_the_entry_ages_out(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pilot.db'}"
    a, b = make_coordinator(url, tmp_path), make_coordinator(url, tmp_path)  # one farm
    a.services.user_cache.ttl = 0.3
    with a.client, b.client:
        made = a.client.post(f"{API}/tokens", headers=a.user(), json={}).json()
        token = a.user(made["token"])
        assert a.client.get(f"{API}/me", headers=token).status_code == 200  # now cached
        assert b.client.delete(f"{API}/tokens/{made['id']}", headers=b.user(made["token"])
                               ).status_code == 200  # revoked through the other one
        assert b.client.get(f"{API}/me", headers=token).status_code == 401  # there: at once
        deadline = time.monotonic() + 10
        while a.client.get(f"{API}/me", headers=token).status_code == 200:
            assert time.monotonic() < deadline, "A kept the revoked token"
            time.sleep(0.05)
        # through A itself a revocation takes effect at once, cached or not
        other = a.client.post(f"{API}/tokens", headers=a.user(), json={}).json()
        assert a.client.get(f"{API}/me", headers=a.user(other["token"])).status_code == 200
        assert a.client.delete(f"{API}/tokens/{other['id']}",
                               headers=a.user(other["token"])).status_code == 200
        assert a.client.get(f"{API}/me", headers=a.user(other["token"])).status_code == 401
    a.services.engine.dispose()
    b.services.engine.dispose()
