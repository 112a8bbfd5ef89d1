"""The Executor's ``concurrent.futures`` contract against a real coordinator and worker:
calls submitted just before the interpreter exits (or before ``shutdown(wait=False)``) run
on the farm, ``submit`` from an exit handler raises, and
``cloudpickle.register_pickle_by_value`` takes effect for a module only the client has,
also for a function submitted before the registration."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from parallel_pilot import Client, Executor
from parallel_pilot.client.python_calls import TaskFailed
from tests.e2e.farm import Farm, wait_for

CHILD = """
import atexit, sys
from parallel_pilot import Client, Executor
from parallel_pilot.client.python_calls import TaskFailed

out = sys.argv[1]
pool = Executor(client=Client({url!r}, {token!r}))

def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)

def late() -> None:
    try:
        pool.submit(write, out + "/late-ran", "no")
    except RuntimeError as exc:
        write(out + "/late-refused", str(exc))

atexit.register(late)
{calls}
"""


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(tmp_path_factory.mktemp("executor-contract"))
    try:
        farm.start_server()
        farm.start_worker("w1", extra=["--allow", "python"])
        farm.wait_workers_joined(1)
        yield farm
    finally:
        farm.stop()


def run_child(farm: Farm, out: Path, calls: str) -> None:
    out.mkdir()
    script = out / "child.py"
    script.write_text(CHILD.format(url=farm.url, token=farm.admin_token,
                                   calls=textwrap.dedent(calls)))
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_calls_submitted_just_before_exit_run(farm: Farm, tmp_path: Path) -> None:
    out = tmp_path / "exit"
    run_child(farm, out, """
        for i in range(3):
            pool.submit(write, f"{out}/ran-{i}", str(i))
    """)  # the interpreter exits at once: the calls are not sent yet
    for i in range(3):
        wait_for(lambda i=i: (out / f"ran-{i}").exists() or None, 60, f"call {i} to run")
    assert "interpreter shutdown" in (out / "late-refused").read_text()
    assert not (out / "late-ran").exists()


def test_calls_submitted_before_shutdown_without_wait_run(farm: Farm, tmp_path: Path) -> None:
    out = tmp_path / "shutdown"
    run_child(farm, out, """
        pool.submit(write, f"{out}/ran", "yes")
        pool.shutdown(wait=False)
    """)
    wait_for(lambda: (out / "ran").exists() or None, 60, "the call to run")
    assert "after shutdown" in (out / "late-refused").read_text()


def test_register_pickle_by_value_for_a_module_only_the_client_has(
        farm: Farm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "client_only_helpers.py").write_text(textwrap.dedent("""
        OFFSET = 40

        def shift(x):
            return x + OFFSET + _two()

        def _two():
            return 2
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import client_only_helpers  # type: ignore[import-not-found]

    with Executor(client=Client(farm.url, farm.admin_token)) as pool:
        # pickled by reference, the worker cannot import it ...
        with pytest.raises(TaskFailed, match="client_only_helpers"):
            pool.submit(client_only_helpers.shift, 0).result(120)
        # ... by value once registered, though the same function was sent before
        cloudpickle.register_pickle_by_value(client_only_helpers)
        try:
            assert pool.submit(client_only_helpers.shift, 0).result(120) == 42
            assert list(pool.map(client_only_helpers.shift, [1, 2])) == [43, 44]
        finally:
            cloudpickle.unregister_pickle_by_value(client_only_helpers)
            sys.modules.pop("client_only_helpers", None)
