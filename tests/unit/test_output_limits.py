"""What a worker's upload is for and how big it may be (issue 14): the ``X-Pilot-Attempt``
value, each kind's output bound under the coordinator's default, and a sync report that
names outputs only with a result."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from parallel_pilot.core.protocol import AttemptReport, attempt_header, parse_attempt_header
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import output_limit
from parallel_pilot.kinds.python.kind import MAX_RESULTS_BYTES
from parallel_pilot.kinds.render.kind import MAX_FRAME_OUTPUT_BYTES

GIB = 1024**3
OUTPUT = {"path": "a.txt", "sha256": "a" * 64, "size": 1}


def test_attempt_header_round_trip() -> None:
    assert attempt_header(12, 3) == "12/3"
    assert parse_attempt_header("12/3") == (12, 3)
    assert parse_attempt_header(" 12/3 ") == (12, 3)


@pytest.mark.parametrize("value", ["", "12", "12/", "/3", "a/3", "12/b", "-1/3", "1/2/3",
                                   "\uff11\uff12/3", "1" * 20 + "/1", "1/" + "1" * 10])
def test_malformed_attempt_headers_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="X-Pilot-Attempt"):
        parse_attempt_header(value)


def test_render_chunks_are_bound_to_a_frame_and_the_assembly_is_not() -> None:
    render = get_kind("render")
    assert output_limit(render, {"role": "chunk"}, 20 * GIB) == MAX_FRAME_OUTPUT_BYTES
    assert output_limit(render, {"role": "assemble"}, 20 * GIB) == 20 * GIB


def test_python_results_are_bound() -> None:
    assert output_limit(get_kind("python"), {"chunk": 0}, 20 * GIB) == MAX_RESULTS_BYTES


@pytest.mark.parametrize("kind", ["sleep", "sweep", "train"])
def test_kinds_without_a_bound_take_the_default(kind: str) -> None:
    assert output_limit(get_kind(kind), {}, 20 * GIB) == 20 * GIB


@pytest.mark.parametrize("kind", ["render", "python", "sweep"])
def test_a_kind_never_raises_the_coordinators_default(kind: str) -> None:
    assert output_limit(get_kind(kind), {"role": "chunk"}, 1000) == 1000


def test_only_a_completed_report_names_outputs() -> None:
    report = AttemptReport(task_id=1, attempt=1, outcome="completed", outputs=[OUTPUT])
    assert report.outputs[0].sha256 == "a" * 64
    for outcome in ("running", "failed", "released"):
        with pytest.raises(ValidationError, match="cannot name outputs"):
            AttemptReport(task_id=1, attempt=1, outcome=outcome, outputs=[OUTPUT])
