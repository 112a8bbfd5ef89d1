"""Failure reasons made comparable across workers: two workers that hit the same scene
error say it with different paths (their cache and task folders), numbers (pids, line
numbers, timings, attempt numbers) and ids; what is left after those are taken out is the
error itself. ``services.trust`` fails a task fast when two voices report one key."""

from __future__ import annotations

import hashlib
import re

MAX_REASON_CHARS = 500  # characters of a normalised reason that are compared
KEY_CHARS = 64  # length of a reason key (hex of SHA-256)

_QUOTED_PATH = re.compile(r"""(['"])(?:[A-Za-z]:)?[\\/][^'"]*\1""")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.~+@%-]*){2,}|~[\\/][\S]*")
_ADDRESS = re.compile(r"\b(?:0x[0-9a-f]+|[0-9a-f]{8,}(?:-[0-9a-f]{4,})*)\b")
_NUMBER = re.compile(r"[-+]?\d+(?:[.,:]\d+)*")
_SPACE = re.compile(r"\s+")


def normalise_reason(reason: str | None) -> str:
    """The reason with what differs per worker and per run replaced: quoted and bare paths
    by ``<path>``, hex addresses and long ids by ``<id>``, numbers by ``<n>``; lower case,
    runs of blanks as one space, at most ``MAX_REASON_CHARS``. Empty for no reason."""
    text = (reason or "").strip().lower()
    text = _QUOTED_PATH.sub("<path>", text)
    text = _PATH.sub("<path>", text)
    text = _ADDRESS.sub("<id>", text)
    text = _NUMBER.sub("<n>", text)
    return _SPACE.sub(" ", text).strip()[:MAX_REASON_CHARS]


def reason_key(reason: str | None) -> str | None:
    """A fixed-size key of the normalised reason; None when there is nothing to compare
    (no reason, or one that is only numbers and paths)."""
    text = normalise_reason(reason)
    if not re.search(r"[a-z]{3,}", text.replace("<path>", "").replace("<id>", "")
                     .replace("<n>", "")):
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]
