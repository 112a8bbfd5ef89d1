"""Property-based fuzzing of the whole API against its own OpenAPI schema (schemathesis):
every operation gets generated requests, valid and not, with an admin token (a worker token
on worker endpoints); no answer may be a 5xx, and every answer must match the declared
status codes, content types and body schemas. On SQLite, PostgreSQL and MariaDB (what
one database stores, another may refuse: NUL, huge integers)."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
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

# generated requests per operation, valid and not each: the full count on SQLite, fewer on the
# servers, where the point is what one database stores and another refuses (NUL, big numbers)
MAX_EXAMPLES = {"sqlite": 30, "postgres": 10, "mariadb": 10}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
WORKER_PATHS = (f"{API_PREFIX}/attempts/", f"{API_PREFIX}/workers/lease",
                f"{API_PREFIX}/workers/leave")

cases_run: Counter[str] = Counter()  # per database, printed at the end of the module
server_errors: Counter[str] = Counter()  # 5xx answers per database (must stay 0)


def _coordinator(database_url: str | None = None) -> Coordinator:
    tmp = Path(tempfile.mkdtemp(prefix="pilot-fuzz-"))
    coord = make_coordinator(database_url or f"sqlite:///{tmp / 'pilot.db'}", tmp)
    coord.services.settings.long_poll_seconds = 0  # a lease answers at once
    coord.services.settings.max_event_stream_seconds = 0.2  # event streams end at once
    return coord


# built at import: schemathesis makes one test per operation from the loaded schema (the
# same on every database); each database's own app answers the generated requests
SCHEMA_SOURCE = _coordinator()
schema = schemathesis.openapi.from_asgi(f"{API_PREFIX}/openapi.json", SCHEMA_SOURCE.client.app)


@dataclass
class Fuzzed:
    database: str
    coordinator: Coordinator
    worker_headers: dict[str, str]


@pytest.fixture(scope="module", params=[
    "sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mariadb)])
def fuzzed(request: pytest.FixtureRequest) -> Iterator[Fuzzed]:
    name = f"fuzz_{secrets.token_hex(6)}"
    server = None if request.param == "sqlite" else \
        request.getfixturevalue(f"{request.param}_server")
    coord = _coordinator(server.create_database(name) if server else None)
    try:
        yield Fuzzed(request.param, coord, coord.register_worker())
    finally:
        coord.services.engine.dispose()
        shutil.rmtree(coord.data_dir.parent, ignore_errors=True)
        if server is not None:
            server.drop_database(name)
        print(f"\nAPI fuzz on {request.param}: {cases_run[request.param]} generated requests "
              f"checked, {server_errors[request.param]} server errors")


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    SCHEMA_SOURCE.services.engine.dispose()
    shutil.rmtree(SCHEMA_SOURCE.data_dir.parent, ignore_errors=True)


# one test per operation, named for it: pytest-xdist schedules tests by their node ids, and
# schemathesis's own `schema.parametrize()` gives every operation's test the same one
OPERATIONS = {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_api_answers_conform_to_its_schema(label: str, fuzzed: Fuzzed) -> None:
    operation = OPERATIONS[label]
    worker_side = operation.path.startswith(WORKER_PATHS)
    headers = fuzzed.worker_headers if worker_side else fuzzed.coordinator.user()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):  # valid, then not

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=MAX_EXAMPLES[fuzzed.database], deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers_conform(case: schemathesis.Case) -> None:
            cases_run[fuzzed.database] += 1
            response = case.call(headers=headers, app=fuzzed.coordinator.client.app)
            if response.status_code >= 500:
                server_errors[fuzzed.database] += 1
            case.validate_response(response, checks=CHECKS)

        try:
            answers_conform()
        except Unsatisfiable:  # nothing to get wrong (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE, label
