"""Matching a task's requirements against a worker's capabilities."""

from __future__ import annotations

from parallel_pilot.core.protocol import Capabilities, Gpu
from parallel_pilot.core.requirements import Requirements, satisfies, unmet, version_tuple


def caps(**kw: object) -> Capabilities:
    return Capabilities.model_validate({"cpu_cores": 4, "ram_bytes": 8 * 2**30, **kw})


def test_version_tuple() -> None:
    assert version_tuple("5.0.1") == (5, 0, 1)
    assert version_tuple("Blender 4.2 LTS") == (4, 2, 0)
    assert version_tuple(None) is None and version_tuple("none") is None


def test_blender_version_must_be_at_least_the_saving_one() -> None:
    need = {"min_blender": "5.0"}
    assert satisfies(need, caps(blender_version="5.0.1"))
    assert not satisfies(need, caps(blender_version="3.4.1"))
    assert not satisfies(need, caps())
    assert unmet(Requirements(min_blender="5.0"), caps(blender_version="3.4.1")) == [
        "Blender 3.4.1 < 5.0"]


def test_gpu_ram_and_tags() -> None:
    assert not satisfies({"gpu": True}, caps())
    assert satisfies({"gpu": True}, caps(gpus=[Gpu(name="H100")]))
    assert not satisfies({"min_ram_bytes": 2**40}, caps())
    assert satisfies({"tags": ["a"]}, caps(tags=["a", "b"]))
    assert satisfies(None, caps()) and satisfies({}, caps())
