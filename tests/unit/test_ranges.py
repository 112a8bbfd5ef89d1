"""Item and frame ranges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parallel_pilot.core.ranges import parse_int_range, parse_items, parse_items_file
from parallel_pilot.errors import InvalidRange


@pytest.mark.parametrize("text, expected", [
    ("1-5", [1, 2, 3, 4, 5]),
    ("1,5,9", [1, 5, 9]),
    ("1-3,10-11", [1, 2, 3, 10, 11]),
    ("1-10x3", [1, 4, 7, 10]),
    ("7", [7]),
    (" 2 - 4 ", [2, 3, 4]),
    ("1-3,2-4", [1, 2, 3, 4]),
])
def test_int_ranges(text: str, expected: list[int]) -> None:
    assert parse_int_range(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("a-b", "cannot read"), ("5-1", "ends before"), ("1-9x0", "step"),
    ("1-", "cannot read"), ("1-2000000", "more than"),
])
def test_bad_int_ranges(text: str, message: str) -> None:
    with pytest.raises(InvalidRange, match=message):
        parse_int_range(text)


def test_items_mix_ranges_and_words() -> None:
    assert parse_items("1-3,alpha,beta") == ["1", "2", "3", "alpha", "beta"]
    with pytest.raises(InvalidRange, match="cannot read"):
        parse_items("1-x")
    with pytest.raises(InvalidRange, match="empty item"):
        parse_items("a,,b")


def test_items_file() -> None:
    assert parse_items_file("# seeds\n3\n\n4\n3\n") == ["3", "4"]
    with pytest.raises(InvalidRange):
        parse_items_file("# nothing\n\n")


@given(st.integers(-1000, 1000), st.integers(0, 500), st.integers(1, 50))
def test_range_matches_python_range(start: int, length: int, step: int) -> None:
    end = start + length
    assert parse_int_range(f"{start}-{end}x{step}") == list(range(start, end + 1, step))
