"""The client side of the ``python`` kind: function calls -> job parameters, and the
results of a chunk -> values or the exceptions raised remotely.

``CallEncoder`` cloudpickles each distinct function once and uploads it as a blob (skipped
when the coordinator has it), pickles every argument separately, uploads an argument whose
pickle is larger than ``share_bytes`` once as a blob of its own (an object passed to many
calls is pickled and sent once), and lays every chunk of calls end to end in one calls
blob (the format is ``core.python_calls``).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cloudpickle

from parallel_pilot.core.protocol import TaskInfo
from parallel_pilot.core.python_calls import (
    ERROR,
    INLINE_CALLS_BYTES,
    OK,
    ArgSlot,
    EncodedCall,
    Outcome,
    decode_outcomes,
    encode_chunk,
    python_version,
)
from parallel_pilot.errors import PilotError

SHARE_BYTES = 1024 * 1024  # an argument whose pickle is larger is uploaded once as a blob
Call = tuple[Sequence[Any], dict[str, Any]]


class RemoteError(PilotError):
    """A call raised an exception on a worker whose type cannot be rebuilt here."""

    code = "remote_error"

    def __init__(self, message: str | None = None, *, type_name: str = "",
                 remote_traceback: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback


class TaskFailed(PilotError):
    """The task that ran the call failed on the farm (the call itself did not run to an
    end: a missing module, a Python version mismatch, a crash, a time limit)."""

    code = "task_failed"


def task_failed(task: TaskInfo) -> TaskFailed:
    """The error of a call whose task failed, naming the task as users number it (its
    place in the job, from 1, as the dashboard and ``pilot logs --task`` do)."""
    return TaskFailed(f"task {task.index + 1} ({task.name}) failed: {task.error}")


class CallEncoder:
    """Turns chunks of calls into ``python`` job parameters, uploading what they need."""

    def __init__(self, upload: Callable[[bytes], str], *, share_bytes: int = SHARE_BYTES,
                 packages: Iterable[str] = (), timeout_seconds: float | None = None,
                 session: str | None = None) -> None:
        self.upload = upload
        self.session = session
        self.share_bytes = share_bytes
        self.packages = list(packages)
        self.timeout_seconds = timeout_seconds
        # fn -> (the modules pickled by value then, its blob), held weakly: a function (and
        # what a bound method's object holds) is not kept alive by having been submitted
        self._functions: weakref.WeakKeyDictionary[Any, tuple[frozenset[str], str]] = \
            weakref.WeakKeyDictionary()
        self._uploaded: set[str] = set()
        self._lock = threading.Lock()

    def function_sha(self, fn: Callable[..., Any]) -> str:
        """The blob of ``fn``: pickled once while ``fn`` lives and the modules registered
        with ``cloudpickle.register_pickle_by_value`` stay the same (a registration made
        after ``fn`` was sent takes effect the next time), uploaded once per content."""
        by_value = frozenset(cloudpickle.list_registry_pickle_by_value())
        with self._lock:
            known = _weak_get(self._functions, fn)
        if known is not None and known[0] == by_value:
            return known[1]
        sha = self._upload(cloudpickle.dumps(fn))
        with self._lock:
            try:
                self._functions[fn] = (by_value, sha)
            except TypeError:  # neither hashable nor weakly referenceable: not cached
                pass
        return sha

    def _upload(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            if sha in self._uploaded:
                return sha
        self.upload(data)
        with self._lock:
            self._uploaded.add(sha)
        return sha

    def params(self, chunks: Sequence[tuple[Callable[..., Any], Sequence[Call]]]
               ) -> tuple[dict[str, Any], bytes | None]:
        """Job parameters and the calls blob for ``chunks`` (one task each); uploads the
        functions and large arguments, not the calls blob (the caller does). Calls of at
        most ``INLINE_CALLS_BYTES`` are in the parameters (``calls_data``): no blob then."""
        functions: list[str] = []
        shared: list[str] = []
        memo: dict[int, tuple[Any, ArgSlot]] = {}  # id -> (object, slot) for this job
        buf = bytearray()
        specs = []
        for fn, calls in chunks:
            sha = self.function_sha(fn)
            if sha not in functions:
                functions.append(sha)
            used: set[int] = set()
            encoded: list[EncodedCall] = []
            for args, kwargs in calls:
                arg_slots = [self._slot(a, memo, shared, used) for a in args]
                kw_slots = {str(k): self._slot(v, memo, shared, used) for k, v in kwargs.items()}
                encoded.append((arg_slots, kw_slots))
            data = encode_chunk(encoded)
            specs.append({"function": functions.index(sha), "offset": len(buf),
                          "length": len(data), "count": len(calls), "blobs": sorted(used)})
            buf += data
        params: dict[str, Any] = {
            "functions": functions, "chunks": specs, "shared": shared,
            "python": python_version(), "packages": self.packages,
        }
        inline = len(buf) <= INLINE_CALLS_BYTES
        if inline:
            params["calls_data"] = base64.b64encode(buf).decode()
        else:
            params["calls"] = hashlib.sha256(buf).hexdigest()
        if self.timeout_seconds is not None:
            params["timeout_seconds"] = self.timeout_seconds
        if self.session is not None:
            params["session"] = self.session
        return params, None if inline else bytes(buf)

    def _slot(self, obj: Any, memo: dict[int, tuple[Any, ArgSlot]], shared: list[str],
              used: set[int]) -> ArgSlot:
        hit = memo.get(id(obj))
        if hit is not None and hit[0] is obj:
            slot = hit[1]
        else:
            data = cloudpickle.dumps(obj)
            slot = ("b", self._upload(data)) if len(data) > self.share_bytes else ("v", data)
            memo[id(obj)] = (obj, slot)
        if slot[0] == "b":
            sha = str(slot[1])
            if sha not in shared:
                shared.append(sha)
            used.add(shared.index(sha))
        return slot


def _weak_get(cache: weakref.WeakKeyDictionary[Any, tuple[frozenset[str], str]],
              fn: Any) -> tuple[frozenset[str], str] | None:
    try:
        return cache.get(fn)
    except TypeError:  # unhashable, or no weak reference to it can be made
        return None


def chunk_outcomes(result: dict[str, Any], download: Callable[[str], bytes]) -> list[Outcome]:
    """The outcomes of a finished task from its result (inline, or a results blob)."""
    if "results" in result:
        data = base64.b64decode(result["results"])
    elif "results_blob" in result:
        data = download(str(result["results_blob"]))
    else:
        raise TaskFailed("the task finished without results (it was stopped)")
    return decode_outcomes(data)


def outcome_value(outcome: Outcome) -> Any:
    """The value a call returned, or raise the exception it raised remotely."""
    if outcome[0] == OK:
        return cloudpickle.loads(outcome[1])
    if outcome[0] == ERROR:
        raise rebuild_exception(outcome)
    raise TaskFailed(f"unknown outcome {outcome[0]!r} in the results")


def rebuild_exception(outcome: Outcome) -> BaseException:
    """The remote exception with its own type when it unpickles here (the remote traceback
    added to its message, or as a note where the message is not plain text, and kept as
    its ``remote_traceback``), else a ``RemoteError`` naming the type."""
    _, pickled, type_name, message, tb = outcome
    exc: BaseException | None = None
    if pickled is not None:
        try:
            loaded = cloudpickle.loads(pickled)
            exc = loaded if isinstance(loaded, BaseException) else None
        except Exception:
            exc = None
    if exc is None:
        return RemoteError(f"{type_name}: {message}\n\nRemote traceback:\n{tb}",
                           type_name=type_name, remote_traceback=tb)
    text = f"Remote traceback:\n{tb}"
    args = exc.args
    if len(args) == 1 and isinstance(args[0], str) and str(exc) == args[0]:
        exc.args = (f"{args[0]}\n\n{text}",)
    else:
        exc.add_note(text)
    exc.remote_traceback = tb  # type: ignore[attr-defined]  # also for code that looks
    return exc
