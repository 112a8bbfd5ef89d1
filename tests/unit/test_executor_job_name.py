"""An Executor's job is named after what it runs: the function's ``__qualname__``
(``Model.step``, a nested ``simulate`` without its ``<locals>``), the first one plus how
many others for a batch of several; a name given to the Executor wins."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from parallel_pilot.client.executor import JOB_NAME_CHARS, Executor, function_name, job_name
from parallel_pilot.core.protocol import JobInfo
from tests.unit.test_executor import FakeFarm, run_until


def simulate(alpha: float) -> float:
    return alpha * 2


def score(x: int) -> int:
    return x + 1


class Model:
    def step(self, x: int) -> int:
        return x

    @staticmethod
    def build() -> str:
        return "built"


class Callable:
    def __call__(self, x: int) -> int:
        return x


class NamingFarm(FakeFarm):
    """The fake farm, keeping the name each job was submitted with."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.names: list[str | None] = []

    def submit_python(self, params: dict[str, Any], **options: Any) -> JobInfo:
        self.names.append(options.get("name"))
        return super().submit_python(params, **options)


def test_function_names_as_a_person_writes_them() -> None:
    def nested() -> None:
        pass

    assert function_name(simulate) == "simulate"
    assert function_name(Model().step) == "Model.step"
    assert function_name(Model.build) == "Model.build"
    assert function_name(nested) == "nested"
    assert function_name(lambda x: x) == "<lambda>"
    assert function_name(functools.partial(simulate, 0.5)) == "simulate"
    assert function_name(Callable()) == "Callable"
    assert function_name(print) == "print"


def test_a_batch_of_several_functions_says_how_many_more() -> None:
    assert job_name([simulate, simulate, simulate]) == "simulate"
    assert job_name([simulate, score, simulate, Model().step]) == "simulate +2 more"
    assert job_name([lambda x: x, lambda x: x]) == "<lambda> +1 more"  # two functions
    long = type("X" * 300, (), {"__call__": lambda self: None})()
    named = job_name([long, simulate])
    assert len(named) == JOB_NAME_CHARS and named.endswith(" +1 more")


def test_jobs_are_named_after_their_functions(tmp_path: Path) -> None:
    farm = NamingFarm(tmp_path)
    with Executor(client=farm, poll_max=0.05, batch_seconds=0.5) as pool:  # type: ignore[arg-type]
        results = pool.map(score, [1, 2])  # submitted before map returns
        farm.run_ready()
        assert list(results) == [2, 3]
        futures = [pool.submit(simulate, 0.5), pool.submit(Model().step, 3),
                   pool.submit(score, 1)]
        run_until(farm, futures)
    assert farm.names == ["score", "simulate +2 more"]
    farm = NamingFarm(tmp_path / "named")
    with Executor(client=farm, poll_max=0.05, name="nightly") as pool:  # type: ignore[arg-type]
        future = pool.submit(simulate, 1.0)
        run_until(farm, [future])
    assert farm.names == ["nightly"]
