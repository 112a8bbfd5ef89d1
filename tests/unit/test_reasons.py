"""Failure reasons normalised so the same error on two workers compares equal
(``core.reasons``)."""

from __future__ import annotations

import pytest

from parallel_pilot.core.reasons import MAX_REASON_CHARS, normalise_reason, reason_key


@pytest.mark.parametrize(("one", "other"), [
    ("Error: Cannot read file '/home/ann/.cache/pilot/tasks/17/scene.blend': line 42",
     "Error: Cannot read file '/srv/pilot/w2/tasks/9/scene.blend': line 43"),
    ("command exited with code 1 after 3.52 s; log in /tmp/pilot-x1/out.log",
     "command exited with code 2 after 10.1 s; log in /var/tmp/y/out.log"),
    ("Segmentation fault at 0x7ffde3a1c0 (pid 1234)", "segmentation fault at 0x55aa0010 (pid 99)"),
    (r"C:\Users\bob\scene.blend: no such file", r"D:\farm\w3\scene.blend: no such file"),
    ("KeyError: 'frame'   in   task", "keyerror: 'frame' in task"),
    ("worker 6f1c2a9e-77aa-4b1e-9c3d-0a1b2c3d4e5f ran out of memory",
     "worker 0e9d8c7b-1111-2222-3333-444455556666 ran out of memory"),
])
def test_what_differs_per_worker_is_taken_out(one: str, other: str) -> None:
    assert normalise_reason(one) == normalise_reason(other)
    assert reason_key(one) == reason_key(other) is not None


@pytest.mark.parametrize(("one", "other"), [
    ("Cannot read file 'scene.blend'", "Cannot read file 'texture.png'"),
    ("out of memory", "disk full"),
    ("KeyError: 'frame'", "KeyError: 'scene'"),
])
def test_different_errors_stay_different(one: str, other: str) -> None:
    assert reason_key(one) != reason_key(other)


def test_normalised_text_reads_as_the_error() -> None:
    assert normalise_reason("Error: Cannot read '/a/b/c.blend': line 42") == \
        "error: cannot read <path>: line <n>"
    assert normalise_reason("x" * 2000) == "x" * MAX_REASON_CHARS


@pytest.mark.parametrize("reason", [None, "", "   ", "123", "/a/b/c 42", "0xdeadbeef"])
def test_nothing_to_compare_gives_no_key(reason: str | None) -> None:
    assert reason_key(reason) is None
