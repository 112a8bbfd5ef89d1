"""Property-based fuzzing of the whole API against its own OpenAPI schema (schemathesis):
every operation gets generated requests, valid and not, with an admin token (a worker token
on worker endpoints); no answer may be a 5xx, and every answer must match the declared
status codes, content types and body schemas."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from parallel_pilot.core.protocol import API_PREFIX
from tests.integration.conftest import Coordinator, make_coordinator

MAX_EXAMPLES = 30  # generated requests per operation
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
WORKER_PATHS = (f"{API_PREFIX}/attempts/", f"{API_PREFIX}/workers/lease",
                f"{API_PREFIX}/workers/leave")

cases_run = 0  # summed over every operation, printed at the end of the module


def _coordinator() -> Coordinator:
    # built at import: schemathesis makes one test per operation from the loaded schema
    tmp = Path(tempfile.mkdtemp(prefix="pilot-fuzz-"))
    coord = make_coordinator(f"sqlite:///{tmp / 'pilot.db'}", tmp)
    coord.services.settings.long_poll_seconds = 0  # a lease answers at once
    coord.services.settings.max_event_stream_seconds = 0.2  # event streams end at once
    return coord


FUZZED = _coordinator()
WORKER_HEADERS = FUZZED.register_worker()
schema = schemathesis.openapi.from_asgi(f"{API_PREFIX}/openapi.json", FUZZED.client.app)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    FUZZED.services.engine.dispose()
    shutil.rmtree(FUZZED.data_dir.parent, ignore_errors=True)
    print(f"\nAPI fuzz: {cases_run} generated requests checked")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_answers_conform_to_its_schema(case: schemathesis.Case) -> None:
    global cases_run
    worker_side = case.path.startswith(WORKER_PATHS) or case.formatted_path.startswith(
        WORKER_PATHS)
    headers = WORKER_HEADERS if worker_side else FUZZED.user()
    cases_run += 1
    case.call_and_validate(headers=headers, checks=CHECKS)
