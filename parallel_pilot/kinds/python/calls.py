"""How the worker lays a ``python`` task out for its child process: file names in the task
folder, the line that ends a reused child's task, its exit code for a function that cannot
be loaded. The calls' and results' byte format is ``core/python_calls.py`` (shared with the
SDK); its names are re-exported here for the child, which runs ``runner.py`` as a file
without importing the package and so loads that module by path.
"""

from __future__ import annotations

if __package__:
    from parallel_pilot.core.python_calls import (
        ERROR,
        OK,
        PICKLE_PROTOCOL,
        ArgSlot,
        EncodedCall,
        Outcome,
        decode_chunk,
        decode_outcomes,
        encode_chunk,
        encode_outcomes,
        python_version,
    )
else:  # imported by runner.py run as a file: load the format by path, not via sys.path
    import importlib.util as _util
    import sys as _sys
    from pathlib import Path as _Path

    _spec = _util.spec_from_file_location(
        "_pilot_python_calls", _Path(__file__).resolve().parents[2] / "core" / "python_calls.py")
    assert _spec is not None and _spec.loader is not None
    _format = _util.module_from_spec(_spec)
    _sys.modules[_spec.name] = _format
    _spec.loader.exec_module(_format)
    ERROR, OK, PICKLE_PROTOCOL = _format.ERROR, _format.OK, _format.PICKLE_PROTOCOL
    ArgSlot, EncodedCall, Outcome = _format.ArgSlot, _format.EncodedCall, _format.Outcome
    decode_chunk, decode_outcomes = _format.decode_chunk, _format.decode_outcomes
    encode_chunk, encode_outcomes = _format.encode_chunk, _format.encode_outcomes
    python_version = _format.python_version

__all__ = [
    "BLOBS_DIR", "CALLS_FILE", "DONE_MARKER", "ERROR", "FUNCTION_FILE", "LOAD_ERROR_EXIT",
    "OK", "PICKLE_PROTOCOL", "RESULTS_FILE", "SUMMARY_FILE", "TASKS_DIR", "ArgSlot",
    "EncodedCall", "Outcome", "decode_chunk", "decode_outcomes", "encode_chunk",
    "encode_outcomes", "python_version",
]

# file names in a task's working directory
FUNCTION_FILE = "function.pkl"
CALLS_FILE = "calls.pkl"
BLOBS_DIR = "blobs"
RESULTS_FILE = "results.pkl"
SUMMARY_FILE = "summary.json"
TASKS_DIR = "tasks"  # a reused child's task folders, under its own directory
DONE_MARKER = "\x1ePILOT-RUNNER-DONE"  # ends a task's output: "<marker> <task folder> <status>"
LOAD_ERROR_EXIT = 3  # the child's exit code when the function or arguments cannot be loaded
