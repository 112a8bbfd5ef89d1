"""The one JSON decode of request bodies: what it refuses (and where it says it is), and
what it escapes in worker reports."""

from __future__ import annotations

import pytest

from parallel_pilot.coordinator.strict_json import MAX_DEPTH, BadValue, Policy, decode


@pytest.mark.parametrize("body, where, words", [
    (b'{"a": ["x", "\\ud800"]}', ("a", 1), "lone surrogate"),
    (b'{"a": {"b": "x\\u0000y"}}', ("a", "b"), "NUL"),
    (b'{"k\\u0000": 1}', ("k\ufffd",), "a key"),
    (b'{"t": 1e309}', ("t",), "finite"),
    (b'{"t": [NaN]}', ("t", 0), "finite"),
    (b'{"t": -Infinity}', ("t",), "finite"),
    (b'{"n": 9223372036854775808}', ("n",), "integer"),
    (b'{"n": -9223372036854775809}', ("n",), "integer"),
    (b'"\xff"', (), "not valid UTF-8"),
])
def test_refused_with_the_place(body: bytes, where: tuple, words: str) -> None:
    with pytest.raises(BadValue) as caught:
        decode(body, Policy.REFUSE)
    assert caught.value.where == where and words in caught.value.message


@pytest.mark.parametrize("body, value", [
    (b'{"s": "\\ud83d\\ude00"}', {"s": "\U0001F600"}),  # a pair is one character
    (b'{"s": "a\\\\u0000"}', {"s": "a\\u0000"}),  # an escaped backslash, not a NUL
    (b'{"n": 9223372036854775807, "f": 1.5e308, "b": true}',
     {"n": 2**63 - 1, "f": 1.5e308, "b": True}),
])
def test_valid_input_passes_as_it_is(body: bytes, value: object) -> None:
    assert decode(body, Policy.REFUSE) == value == decode(body, Policy.ESCAPE)


def test_worker_reports_are_escaped_not_refused() -> None:
    body = b'{"out": "a\\u0000b\xffc\\udc80", "x\\u0000": [NaN, 1e999, 2]}'
    assert decode(body, Policy.ESCAPE) == {"out": "a\ufffdb\ufffdc\ufffd",
                                           "x\ufffd": [None, None, 2]}
    with pytest.raises(BadValue):  # ids and attempt numbers stay bounded in reports too
        decode(b'{"task_id": 99999999999999999999}', Policy.ESCAPE)


def test_nesting_is_bounded_for_everyone() -> None:
    """A result nested 300 deep was stored, then its job's task list could not be
    answered (the response encoder stops at 255 levels)."""
    ok = b'{"a": ' * (MAX_DEPTH - 1) + b"1" + b"}" * (MAX_DEPTH - 1)
    assert decode(ok, Policy.REFUSE)
    deep = b"[" * 300 + b"]" * 300
    for policy in Policy:
        with pytest.raises(BadValue) as caught:
            decode(deep, policy)
        assert caught.value.where == (0,) * MAX_DEPTH and "nested deeper" in str(caught.value)
    assert decode(b'"just text"', Policy.REFUSE) == "just text"


def test_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        decode(b'{"a": ', Policy.REFUSE)
