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
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from parallel_pilot.core.protocol import API_PREFIX
from tests.integration.conftest import Coordinator, make_coordinator

MAX_EXAMPLES = 30  # generated requests per operation, valid and not each
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


# one test per operation, named for it: pytest-xdist schedules tests by their node ids, and
# schemathesis's own `schema.parametrize()` gives every operation's test the same one
OPERATIONS = {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_api_answers_conform_to_its_schema(label: str) -> None:
    operation = OPERATIONS[label]
    worker_side = operation.path.startswith(WORKER_PATHS)
    headers = WORKER_HEADERS if worker_side else FUZZED.user()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):  # valid, then not

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers_conform(case: schemathesis.Case) -> None:
            global cases_run
            cases_run += 1
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            answers_conform()
        except Unsatisfiable:  # nothing to get wrong (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE, label
