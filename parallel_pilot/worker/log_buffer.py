"""A task's log lines waiting to go to the coordinator: each line capped, the buffer bounded.

Lines are drained into the worker's syncs (and the attempt's final report; lines a failed
sync did not deliver are kept by the worker's state and sent again). When a task writes
faster than syncs carry lines away, the oldest lines are dropped and a ``[n lines dropped]``
marker takes their place, so memory stays bounded and the reader sees that lines are missing.
"""

from __future__ import annotations

import threading
from collections import deque

from parallel_pilot.core.settings import DEFAULT_MAX_LOG_LINE

MAX_BUFFERED_LINES = 5000  # lines held between two syncs (the wire allows 10,000)
MAX_BUFFERED_CHARS = 2 * 1024 * 1024  # characters held between two syncs
TRUNCATED_MARK = " [truncated]"


class LogBuffer:
    """Thread-safe FIFO of capped log lines with a drop-oldest bound."""

    def __init__(self, max_lines: int = MAX_BUFFERED_LINES,
                 max_chars: int = MAX_BUFFERED_CHARS,
                 max_line: int = DEFAULT_MAX_LOG_LINE) -> None:
        if max_lines < 2:
            raise ValueError("max_lines must leave room for the drop marker and one line")
        self.max_lines = max_lines
        self.max_chars = max_chars
        self.max_line = max_line
        self._lines: deque[str] = deque()
        self._chars = 0
        self._dropped = 0  # lines dropped since the last drain
        self._lock = threading.Lock()

    def append(self, text: str) -> None:
        """Add ``text``; several lines in it become several entries."""
        lines = text.splitlines() or [""]
        with self._lock:
            for line in lines:
                self._push(self._cap(line))

    def drain(self) -> list[str]:
        """Take every buffered line (with a drop marker first if lines were lost)."""
        with self._lock:
            lines = list(self._lines)
            if self._dropped:
                lines.insert(0, _marker(self._dropped))
            self._lines.clear()
            self._chars = 0
            self._dropped = 0
            return lines

    def __len__(self) -> int:
        with self._lock:
            return len(self._lines)

    def _cap(self, line: str) -> str:
        if len(line) <= self.max_line:
            return line
        return line[: max(0, self.max_line - len(TRUNCATED_MARK))] + TRUNCATED_MARK

    def _push(self, line: str) -> None:
        self._lines.append(line)
        self._chars += len(line)
        # one place is kept free for the drop marker that drain() puts in front
        while len(self._lines) > self.max_lines - 1 or (
            self._chars > self.max_chars and len(self._lines) > 1
        ):
            old = self._lines.popleft()
            self._chars -= len(old)
            self._dropped += _dropped_in(old)


def _marker(count: int) -> str:
    return f"[{count} lines dropped]"


def _dropped_in(line: str) -> int:
    """How many lines ``line`` stands for (a requeued marker stands for its count)."""
    if line.startswith("[") and line.endswith(" lines dropped]"):
        number = line[1: -len(" lines dropped]")]
        if number.isdigit():
            return int(number)
    return 1
