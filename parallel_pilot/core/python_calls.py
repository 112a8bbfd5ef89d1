"""The wire format of the ``python`` kind's calls and results: what the SDK's ``Executor``
writes and the worker's child process reads, and back (stdlib only).

A job carries one *calls blob*: the encoded chunks laid end to end; each task names its
chunk by offset and length. Up to ``INLINE_CALLS_BYTES`` the calls travel inside the job's
parameters instead (``calls_data``, base64) and each task is leased with its own chunk, so
a small call costs no upload and no download. A chunk is a plain pickle of
``[(args, kwargs), ...]`` whose leaves are argument slots: ``("v", cloudpickle bytes)`` or
``("b", sha256)`` for a large argument uploaded once as a blob of its own. Plain pickle
for the envelope keeps the worker process itself from ever unpickling user code: only the
child does that.

The child answers with a results file, a plain pickle of one outcome per call:
``("ok", cloudpickle bytes)`` or ``("error", cloudpickle bytes | None, type name, message,
remote traceback)``; the task's result carries it inline (``results``, base64) or names
it as an output blob (``results_blob``).

The worker's child runs this file without importing the package (``kinds/python/calls.py``
loads it by path), so it imports only the standard library.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any, Literal

ArgSlot = tuple[Literal["v", "b"], bytes | str]
EncodedCall = tuple[list[ArgSlot], dict[str, ArgSlot]]
Outcome = tuple[Any, ...]

PICKLE_PROTOCOL = 5  # the envelope's pickle protocol (Python >= 3.8)
INLINE_CALLS_BYTES = 48 * 1024  # a job's calls up to this size travel in its parameters
OK = "ok"
ERROR = "error"


def encode_chunk(calls: list[EncodedCall]) -> bytes:
    return pickle.dumps(calls, protocol=PICKLE_PROTOCOL)


def decode_chunk(data: bytes) -> list[EncodedCall]:
    calls = pickle.loads(data)
    if not isinstance(calls, list):
        raise ValueError("a chunk of calls must be a list")
    return calls


def encode_outcomes(outcomes: list[Outcome]) -> bytes:
    return pickle.dumps(outcomes, protocol=PICKLE_PROTOCOL)


def decode_outcomes(data: bytes) -> list[Outcome]:
    outcomes = pickle.loads(data)
    if not isinstance(outcomes, list):
        raise ValueError("the results of a chunk must be a list")
    return outcomes


def python_version(info: Any = None) -> str:
    """``major.minor`` of an interpreter (this one by default): cloudpickled functions only
    load in the same minor version."""
    v = info or sys.version_info
    return f"{v[0]}.{v[1]}"
