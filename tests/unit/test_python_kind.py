"""The ``python`` kind without sockets: parameters, plan, worker-side checks, the child
runner on a real working directory, and the SDK's encoding and decoding of calls."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from parallel_pilot.client.python_calls import (
    CallEncoder,
    RemoteError,
    chunk_outcomes,
    outcome_value,
    rebuild_exception,
)
from parallel_pilot.errors import InvalidInput
from parallel_pilot.kinds.base import parse_params, task_payload
from parallel_pilot.kinds.python import PythonKind, PythonParams
from parallel_pilot.kinds.python import calls as fmt
from parallel_pilot.kinds.python.kind import check_interpreter, load_failure
from parallel_pilot.kinds.python.warm import RUNNER, RunnerPool

SHA = "a" * 64


def test_inline_calls_give_each_task_its_own_chunk() -> None:
    kind = PythonKind()
    data = bytes(range(13))
    params = parse_params(kind, {
        "functions": [SHA], "calls_data": base64.b64encode(data).decode(), "python": "3.11",
        "chunks": [{"function": 0, "offset": 0, "length": 10, "count": 5},
                   {"function": 0, "offset": 10, "length": 3, "count": 1}]})
    assert kind.input_blobs(params) == {"function-0": SHA}  # no calls blob to check
    specs = kind.plan(params)
    assert [s.inputs for s in specs] == [{"function": SHA}, {"function": SHA}]
    assert [base64.b64decode(s.payload["calls_data"]) for s in specs] == [data[:10], data[10:]]


@pytest.mark.parametrize(("calls", "words"), [
    ({"calls": SHA, "calls_data": "AAAA"}, "one of the two"),
    ({}, "one of the two"),
    ({"calls_data": "not base64!"}, "not base64"),
    ({"calls_data": base64.b64encode(b"12345").decode()}, "calls_data holds 5"),
    ({"calls_data": "A" * 70_000}, "at most"),
])
def test_inline_calls_are_checked_at_submit(calls: dict[str, str], words: str) -> None:
    raw = {"functions": [SHA], "python": "3.11", **calls,
           "chunks": [{"function": 0, "offset": 0, "length": 10, "count": 1}]}
    with pytest.raises(InvalidInput, match=words):
        parse_params(PythonKind(), raw)


def test_plan_makes_one_task_per_chunk_with_its_blobs() -> None:
    kind = PythonKind()
    params = parse_params(kind, {
        "functions": [SHA, "b" * 64], "calls": "c" * 64, "python": "3.11",
        "shared": ["d" * 64], "packages": ["numpy", "scipy.integrate"],
        "chunks": [{"function": 0, "offset": 0, "length": 10, "count": 5},
                   {"function": 1, "offset": 10, "length": 3, "count": 1, "blobs": [0]}],
    })
    specs = kind.plan(params)
    assert [s.payload["count"] for s in specs] == [5, 1]
    assert specs[0].inputs == {"function": SHA, "calls": "c" * 64}
    assert specs[1].inputs == {"function": "b" * 64, "calls": "c" * 64,
                               "blobs/" + "d" * 64: "d" * 64}
    # what every chunk shares is kept once, in the job; the lease puts it back
    assert specs[1].payload == {"chunk": 1, "offset": 10, "length": 3, "count": 1}
    leased = task_payload(kind, params.model_dump(mode="json"), specs[1].payload)
    assert leased["offset"] == 10 and leased["packages"][1] == "scipy.integrate"
    assert leased["python"] == "3.11" and leased["timeout_seconds"] is None
    assert set(kind.input_blobs(params).values()) == {SHA, "b" * 64, "c" * 64, "d" * 64}


@pytest.mark.parametrize("change, expected", [
    ({"python": "3"}, "python"),
    ({"packages": ["os; rm"]}, "module name"),
    ({"functions": ["nope"]}, "SHA-256"),
    ({"chunks": []}, "chunks"),
    ({"chunks": [{"function": 0, "offset": 0, "length": 1, "count": 1, "blobs": [2]}]},
     "shared blob 2"),
    ({"chunks": [{"function": 0, "offset": 0, "length": 0, "count": 1}]}, "length"),
])
def test_bad_parameters_are_refused(change: dict[str, Any], expected: str) -> None:
    raw = {"functions": [SHA], "calls": SHA, "python": "3.11",
           "chunks": [{"function": 0, "offset": 0, "length": 1, "count": 1}], **change}
    with pytest.raises(InvalidInput, match=expected):
        parse_params(PythonKind(), raw)


def test_worker_refuses_missing_packages_and_other_python_versions() -> None:
    here = fmt.python_version()
    check_interpreter({"python": here, "packages": ["json", "cloudpickle"]})
    with pytest.raises(InvalidInput, match="no_such_module_zz"):
        check_interpreter({"python": here, "packages": ["json", "no_such_module_zz"]})
    with pytest.raises(InvalidInput, match="no_such_parent.child"):
        check_interpreter({"python": here, "packages": ["no_such_parent.child"]})
    with pytest.raises(InvalidInput, match=r"Python 2\.7 .* same major\.minor"):
        check_interpreter({"python": "2.7", "packages": []})


def test_load_failure_names_the_missing_module() -> None:
    stderr = ("cannot load the function or its arguments: ModuleNotFoundError: "
              "No module named 'astropy'\nTraceback ...\n")
    assert "'astropy'" in load_failure(stderr)
    assert load_failure("") == "the function or its arguments could not be loaded on this worker"


def encode(fn: Any, calls: list[tuple[tuple, dict]], share_bytes: int = 1 << 20
           ) -> tuple[dict[str, Any], bytes, dict[str, bytes]]:
    uploaded: dict[str, bytes] = {}

    def upload(data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        uploaded[sha] = data
        return sha

    encoder = CallEncoder(upload, share_bytes=share_bytes, packages=["json"])
    params, blob = encoder.params([(fn, calls)])
    if blob is None:  # small calls travel in the parameters
        blob = base64.b64decode(params["calls_data"])
    return params, blob, uploaded


def run_child(tmp_path: Path, params: dict[str, Any], blob: bytes,
              uploaded: dict[str, bytes]) -> list[fmt.Outcome]:
    """Lay out a task's directory as the kind does and run the real child process."""
    chunk = params["chunks"][0]
    (tmp_path / fmt.FUNCTION_FILE).write_bytes(uploaded[params["functions"][0]])
    (tmp_path / fmt.CALLS_FILE).write_bytes(blob[chunk["offset"]:chunk["offset"]
                                                 + chunk["length"]])
    (tmp_path / fmt.BLOBS_DIR).mkdir()
    for index in chunk["blobs"]:
        sha = params["shared"][index]
        (tmp_path / fmt.BLOBS_DIR / sha).write_bytes(uploaded[sha])
    proc = subprocess.run([sys.executable, str(RUNNER), str(tmp_path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / fmt.SUMMARY_FILE).read_text())
    data = (tmp_path / fmt.RESULTS_FILE).read_bytes()
    outcomes = chunk_outcomes({"results": base64.b64encode(data).decode()}, lambda s: b"")
    assert summary["count"] == len(outcomes)
    return outcomes


def test_a_closure_runs_in_the_child_and_errors_come_back_typed(tmp_path: Path) -> None:
    offset = 100

    def shift(x: int, *, scale: int = 1) -> int:
        if x < 0:
            raise ValueError(f"negative: {x}")
        return (x + offset) * scale

    params, blob, uploaded = encode(shift, [((1,), {}), ((2,), {"scale": 3}), ((-5,), {})])
    assert params["python"] == fmt.python_version() and params["packages"] == ["json"]
    outcomes = run_child(tmp_path, params, blob, uploaded)
    assert [outcome_value(o) for o in outcomes[:2]] == [101, 306]
    with pytest.raises(ValueError, match="negative: -5") as caught:
        outcome_value(outcomes[2])
    assert "Remote traceback" in str(caught.value) and "in shift" in str(caught.value)


def test_a_large_shared_argument_is_uploaded_once(tmp_path: Path) -> None:
    big = list(range(50_000))
    params, blob, uploaded = encode(lambda xs, i: xs[i] * 2, [((big, i), {}) for i in range(4)],
                                    share_bytes=10_000)
    assert len(params["shared"]) == 1 and params["chunks"][0]["blobs"] == [0]
    assert len(blob) < 2_000  # the list travels once, as its own blob
    outcomes = run_child(tmp_path, params, blob, uploaded)
    assert [outcome_value(o) for o in outcomes] == [0, 2, 4, 6]


def test_an_exception_that_cannot_be_rebuilt_is_a_remote_error() -> None:
    outcome = (fmt.ERROR, b"not a pickle", "somewhere.Strange", "it broke", "Traceback: ...")
    error = rebuild_exception(outcome)
    assert isinstance(error, RemoteError)
    assert "somewhere.Strange: it broke" in str(error) and error.remote_traceback

    key_error = rebuild_exception((fmt.ERROR, cloudpickle.dumps(KeyError("k")), "KeyError",
                                   "'k'", "TB"))
    assert isinstance(key_error, KeyError) and key_error.args == ("k",)
    assert any("TB" in note for note in key_error.__notes__)
    assert key_error.remote_traceback == "TB"  # type: ignore[attr-defined]


def test_params_model_is_the_kinds_model() -> None:
    assert PythonKind.params_model is PythonParams


def test_a_reused_child_runs_tasks_of_one_job_and_a_stopped_one_is_not_reused(
        tmp_path: Path) -> None:
    import threading

    pool = RunnerPool()
    params, blob, uploaded = encode(lambda x: x + 1, [((41,), {})])
    lines: list[str] = []
    try:
        runner = pool.take("job-7", False, tmp_path)
        for name in ("1-1", "2-1"):
            task_dir = runner.task_dir(name)
            (task_dir / fmt.FUNCTION_FILE).write_bytes(uploaded[params["functions"][0]])
            (task_dir / fmt.CALLS_FILE).write_bytes(blob)
            outcome = runner.run(name, log=lines.append, stop_event=threading.Event(),
                                 timeout_seconds=30)
            assert outcome.status == 0, outcome.stderr
            data = (task_dir / fmt.RESULTS_FILE).read_bytes()
            assert outcome_value(fmt.decode_outcomes(data)[0]) == 42
        pool.give_back(runner)
        assert pool.take("job-7", False, tmp_path) is runner  # the same job reuses the child
        assert pool.take("job-8", False, tmp_path) is not runner  # another job gets its own

        stop = threading.Event()
        stop.set()
        task_dir = runner.task_dir("3-1")
        sleep = cloudpickle.dumps(lambda s: __import__("time").sleep(s))
        (task_dir / fmt.FUNCTION_FILE).write_bytes(sleep)
        calls = [([("v", cloudpickle.dumps(60))], {})]
        (task_dir / fmt.CALLS_FILE).write_bytes(fmt.encode_chunk(calls))  # type: ignore[arg-type]
        assert runner.run("3-1", log=lines.append, stop_event=stop, timeout_seconds=None).stopped
        assert not runner.alive()
        pool.give_back(runner)
        assert pool.take("job-7", False, tmp_path) is not runner
    finally:
        pool.close()



def test_a_reused_child_ends_when_its_worker_is_killed_mid_call(tmp_path: Path) -> None:
    import os
    import signal
    import textwrap

    root = tmp_path / "runner"
    task_dir = root / fmt.TASKS_DIR / "1-1"
    task_dir.mkdir(parents=True)
    (task_dir / fmt.FUNCTION_FILE).write_bytes(
        cloudpickle.dumps(lambda s: __import__("time").sleep(s)))
    calls = [([("v", cloudpickle.dumps(120))], {})]
    (task_dir / fmt.CALLS_FILE).write_bytes(fmt.encode_chunk(calls))  # type: ignore[arg-type]
    # a stand-in worker: starts the child, hands it a 2-minute call, prints its pid, waits
    worker = textwrap.dedent(f"""
        import subprocess, sys, time
        import os
        child = subprocess.Popen([sys.executable, {str(RUNNER)!r}, "--serve", {str(root)!r},
                                  "--worker-pid", str(os.getpid())],
                                 stdin=subprocess.PIPE, start_new_session=True)
        child.stdin.write(b"1-1\\n"); child.stdin.flush()
        print(child.pid, flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", worker], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
            assert time.monotonic() < deadline, "the child outlived its worker"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except (OSError, IndexError):
        return "Z"
