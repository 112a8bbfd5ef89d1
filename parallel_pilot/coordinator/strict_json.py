"""The one decode of every JSON body the coordinator reads, and the rules on its text and
numbers (issue 14).

Every database stores what this lets through: PostgreSQL refuses NUL in text and JSON,
no database (and no JSON encoder downstream) takes a lone surrogate (``"\\ud800"``), and
``NaN``, ``Infinity`` and ``1e309`` are not JSON numbers anywhere else. Two policies:

- ``REFUSE`` (what users, admins and workers *say*: names, commands, parameters,
  capabilities): text must be valid Unicode without NUL, numbers finite and integers in
  the signed 64-bit range; the first offender is a ``BadValue`` naming where it is
  (``params.command.0: text must not contain NUL``), answered 422 before anything runs.
- ``ESCAPE`` (what a worker *reports* a task printed: results, stdout/stderr tails, log
  lines, reasons, messages): the bytes come from a program nobody vetted, so they are kept,
  made safe, and never fail the report: bytes that are not UTF-8, NUL and lone surrogates
  become U+FFFD; a non-finite number becomes ``null``. Integers stay bounded (ids and
  attempt numbers live in the same bodies)."""

from __future__ import annotations

import json
import math
import re
from enum import Enum
from typing import Any

MAX_INT = 2**63 - 1  # the largest BIGINT on SQLite, PostgreSQL and MariaDB
MIN_INT = -(2**63)
# arrays and objects inside one another, at most: what is stored must also be answered
# (the response encoder stops at 255), and no request of this API needs more than a few
MAX_DEPTH = 32
REPLACEMENT = "\ufffd"  # what a NUL, a lone surrogate or a byte that is not UTF-8 becomes

_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")  # NUL, or half of a surrogate pair
# in the raw body: an escape that may decode to NUL or a surrogate, or a raw NUL byte
# (false positives, e.g. an escaped backslash before "u0000", only cost the full walk)
_SUSPECT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})|\x00")


class Policy(Enum):
    REFUSE = "refuse"
    ESCAPE = "escape"


class BadValue(ValueError):
    """A value the policy refuses; ``where`` is its path in the body (keys and indexes)."""

    def __init__(self, where: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.where, self.message = where, message

    def __str__(self) -> str:
        return f"{'.'.join(map(str, self.where)) or 'body'}: {self.message}"


class _NonFinite(float):
    """A number the scanner read as NaN or an infinity, marked for the walk to place."""


def text_problem(value: str) -> str | None:
    """Why ``value`` may not be stored (NUL, lone surrogate), or None when it may. (A str
    never holds a proper surrogate pair: JSON's ``\\ud83d\\ude00`` decodes to one
    character, so any surrogate left is half of a pair.)"""
    found = _BAD_CHAR.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "text must not contain NUL"
    return "text must be valid Unicode (it holds a lone surrogate)"


def clean_text(value: str) -> str:
    """``value`` with NUL and lone surrogates replaced by U+FFFD."""
    return _BAD_CHAR.sub(REPLACEMENT, value)


def decode(body: bytes, policy: Policy) -> Any:
    """Parse a JSON body under ``policy``; ``BadValue`` for what it refuses, ``ValueError``
    (``json.JSONDecodeError``) for what is not JSON."""
    suspicious = False

    def constant(name: str) -> float:  # NaN, Infinity, -Infinity
        nonlocal suspicious
        suspicious = True
        return _NonFinite(name)

    def number(text: str) -> float:
        nonlocal suspicious
        value = float(text)
        if math.isfinite(value):
            return value
        suspicious = True
        return _NonFinite(value)

    def integer(text: str) -> int:
        nonlocal suspicious
        value = int(text)
        if not MIN_INT <= value <= MAX_INT:
            suspicious = True
        return value

    if policy is Policy.ESCAPE:
        text = body.decode("utf-8", "replace")
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadValue((), f"the body is not valid UTF-8 (byte {exc.start})") from None
    value = json.loads(text, parse_constant=constant, parse_float=number, parse_int=integer)
    _check_depth(value)
    if suspicious or _SUSPECT.search(body) is not None:
        value = _walk(value, (), policy)
    return value


def _check_depth(value: Any) -> None:
    """``BadValue`` where arrays and objects nest deeper than ``MAX_DEPTH``."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = \
        [(value, ())] if isinstance(value, dict | list) else []
    while stack:
        item, where = stack.pop()
        if len(where) >= MAX_DEPTH:
            raise BadValue(where, f"nested deeper than {MAX_DEPTH} levels")
        children = item.items() if isinstance(item, dict) else enumerate(item)
        stack.extend((child, (*where, key)) for key, child in children
                     if isinstance(child, dict | list))


def _walk(value: Any, where: tuple[str | int, ...], policy: Policy) -> Any:
    """Check (REFUSE) or clean (ESCAPE) every string, key and number under ``value``."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is None:
            return value
        if policy is Policy.REFUSE:
            raise BadValue(where, problem)
        return clean_text(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            problem = text_problem(key)
            if problem is not None:
                if policy is Policy.REFUSE:
                    raise BadValue((*where, clean_text(key)), f"a key: {problem}")
                key = clean_text(key)
            out[key] = _walk(item, (*where, key), policy)
        return out
    if isinstance(value, list):
        return [_walk(item, (*where, i), policy) for i, item in enumerate(value)]
    if isinstance(value, _NonFinite):
        if policy is Policy.REFUSE:
            raise BadValue(where, "the number must be finite (not NaN, Infinity or past "
                                  "1.8e308)")
        return None
    if isinstance(value, int) and not isinstance(value, bool) \
            and not MIN_INT <= value <= MAX_INT:
        raise BadValue(where, f"the integer must be between {MIN_INT} and {MAX_INT}")
    return value
