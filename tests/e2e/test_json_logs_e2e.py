"""`pilot server --log-format json` as an operator's log pipeline reads it: every line of
the coordinator's log is one JSON object; each request is an access line with its id (the
caller's X-Request-Id, sent back), route template, status and time; a worker's requests
carry its worker id, a job's requests the job id and user."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from parallel_pilot.client.local_cluster import LocalCluster
from tests.e2e.farm import wait_for


def test_every_line_is_json_with_the_request_job_user_and_worker(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "data", workers=1, env={"PILOT_TOKEN": ""},
                      server_args=["--log-format", "json"],
                      worker_args=["--allow", "sweep", "--no-render-sandbox"]) as cluster:
        client = cluster.client()
        job = client.submit_sweep(["echo", "{item}"], "1-3")
        assert client.wait(job.id, timeout=60).state == "completed"
        answer = httpx.get(f"{cluster.url}/api/v1/jobs/{job.id}",
                           headers={"Authorization": f"Bearer {cluster.admin_token}",
                                    "X-Request-Id": "trace-42"}, timeout=30)
        assert answer.headers["X-Request-Id"] == "trace-42"
        made_up = httpx.get(f"{cluster.url}/healthz", headers={"X-Request-Id": "no spaces!"})
        assert made_up.headers["X-Request-Id"] != "no spaces!"  # not a plain token: replaced
        log = cluster.log_dir / "server.log"

        def lines() -> list[dict]:
            text = log.read_text().splitlines()
            return [json.loads(line) for line in text if line.strip()]

        wait_for(lambda: any(r.get("request_id") == "trace-42" for r in lines()), 30,
                 "the access line of the traced request")
    records = lines()  # every line parses: nothing but JSON in the log
    assert any(r["message"].startswith("Parallel Pilot coordinator on") for r in records)
    [traced] = [r for r in records if r.get("request_id") == "trace-42"]
    assert traced["logger"] == "pilot.access" and traced["status"] == 200
    assert traced["route"] == "/api/v1/jobs/{job_id}" and traced["method"] == "GET"
    assert traced["job_id"] == job.id and traced["user"] == "admin"
    assert isinstance(traced["ms"], float) and traced["time"].endswith("+00:00")
    syncs = [r for r in records if r.get("route") == "/api/v1/workers/sync"]
    assert syncs and all(isinstance(r["worker_id"], int) for r in syncs)
    assert len({r["request_id"] for r in records if "request_id" in r}) > 3  # one id each
