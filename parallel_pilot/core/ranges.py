"""Parsing of item and frame ranges: ``1-100``, ``1,5,9``, ``1-10,20-30``, ``1-240x2``."""

from __future__ import annotations

import re

from parallel_pilot.errors import InvalidRange

MAX_RANGE_ITEMS = 1_000_000  # items one range may expand to, to refuse "1-999999999999"

_NUMERIC_START = re.compile(r"^-?\d")
_PART = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*(?:[x:]\s*(\d+)\s*)?)?$")


def parse_int_range(text: str, *, limit: int = MAX_RANGE_ITEMS) -> list[int]:
    """Expand ``"1-10,20-30x5"`` to a sorted-as-written list of ints without duplicates."""
    if not text or not text.strip():
        raise InvalidRange("the range is empty; write it like 1-100 or 1,5,9")
    out: list[int] = []
    seen: set[int] = set()
    for raw in text.split(","):
        part = raw.strip()
        match = _PART.match(part)
        if not match:
            raise InvalidRange(
                f"cannot read {part!r} in range {text!r}; write it like 1-100, 1,5,9 or 1-240x2"
            )
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
        step = int(match.group(3)) if match.group(3) is not None else 1
        if step < 1:
            raise InvalidRange(f"the step in {part!r} must be at least 1")
        if end < start:
            raise InvalidRange(f"{part!r} ends before it starts")
        if (end - start) // step + 1 + len(out) > limit:
            raise InvalidRange(f"range {text!r} has more than {limit} items")
        for value in range(start, end + 1, step):
            if value not in seen:
                seen.add(value)
                out.append(value)
    return out


def parse_items(text: str, *, limit: int = MAX_RANGE_ITEMS) -> list[str]:
    """Sweep items from the command line: integer ranges (``1-100``, ``1-99x2``) and words,
    comma separated. A part that starts with a digit must be a valid range."""
    if not text or not text.strip():
        raise InvalidRange("no items given; write them like 1-100 or a,b,c")
    out: list[str] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise InvalidRange(f"empty item in {text!r}")
        if _NUMERIC_START.match(part):
            out.extend(str(i) for i in parse_int_range(part, limit=limit))
        else:
            out.append(part)
        if len(out) > limit:
            raise InvalidRange(f"more than {limit} items")
    return _dedupe(out, limit)


def parse_items_file(content: str, *, limit: int = MAX_RANGE_ITEMS) -> list[str]:
    """One item per line; blank lines and lines starting with # are skipped."""
    items = [line.strip() for line in content.splitlines()]
    items = [i for i in items if i and not i.startswith("#")]
    if not items:
        raise InvalidRange("the items file has no items")
    return _dedupe(items, limit)


def _dedupe(items: list[str], limit: int) -> list[str]:
    if len(items) > limit:
        raise InvalidRange(f"more than {limit} items")
    seen: set[str] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out
