"""Laying a traced Blender project out (core/project.py): the root, project paths, the
absolute paths that move, missing files named as the user wrote them. Pure: the traces
are written here the way kinds/render/dependencies.py reports them."""

from __future__ import annotations

import pytest

from parallel_pilot.core.project import (
    check_manifest,
    check_project_path,
    common_root,
    plan_project,
    project_path_for,
    split_absolute,
)

SHA = "a" * 64


def dep(path: str, files: list[str], *, resolved: str | None = None,
        blend: str = "/home/ann/proj/shots/shot.blend", missing: list[str] | None = None,
        bundled: bool = False) -> dict:
    return {"path": path, "resolved": resolved or (files[0] if files else path),
            "blend": blend, "used_by": 'image "x"', "kind": "image", "files": files,
            "missing": missing or [], "bundled": bundled}


def test_the_root_holds_the_blend_and_everything_named_relatively() -> None:
    trace = {"blend": "/home/ann/proj/shots/shot.blend", "dependencies": [
        dep("//../textures/wood.png", ["/home/ann/proj/textures/wood.png"]),
        dep("//../assets/lib/char.blend", ["/home/ann/proj/assets/lib/char.blend"]),
        dep("//prop.png", ["/home/ann/proj/assets/lib/prop.png"],
            blend="/home/ann/proj/assets/lib/char.blend"),
    ]}
    layout = plan_project(trace)
    assert layout.root == "/home/ann/proj" and layout.main == "shots/shot.blend"
    assert sorted(layout.files) == ["assets/lib/char.blend", "assets/lib/prop.png",
                                    "shots/shot.blend", "textures/wood.png"]
    assert layout.absolute == {} and layout.missing == []  # relative paths keep working


def test_absolute_paths_move_into_the_project() -> None:
    trace = {"blend": "/home/ann/proj/shot.blend", "dependencies": [
        dep("/mnt/library/oak.png", ["/mnt/library/oak.png"]),
        dep("/home/ann/proj/tex/in.png", ["/home/ann/proj/tex/in.png"]),
        dep("/mnt/udim/t.<UDIM>.png", ["/mnt/udim/t.1001.png", "/mnt/udim/t.1002.png"],
            resolved="/mnt/udim/t.<UDIM>.png"),
    ]}
    layout = plan_project(trace)
    assert layout.root == "/home/ann/proj"
    assert layout.absolute == {"/mnt/library/oak.png": "_abs/mnt/library/oak.png",
                               "/home/ann/proj/tex/in.png": "tex/in.png",
                               "/mnt/udim/t.<UDIM>.png": "_abs/mnt/udim/t.<UDIM>.png"}
    assert {"_abs/mnt/udim/t.1001.png", "_abs/mnt/udim/t.1002.png",
            "_abs/mnt/library/oak.png", "tex/in.png"} <= set(layout.files)


def test_missing_files_are_named_by_the_users_path_and_file() -> None:
    trace = {"blend": "/home/ann/proj/shots/shot.blend", "dependencies": [
        dep("//../textures/gone.png", [], resolved="/home/ann/proj/textures/gone.png",
            missing=["/home/ann/proj/textures/gone.png"]),
    ]}
    (missing,) = plan_project(trace).missing
    assert missing.describe() == '//../textures/gone.png (image "x", in shots/shot.blend)'


def test_blenders_own_assets_do_not_travel() -> None:
    trace = {"blend": "/home/ann/proj/shot.blend", "dependencies": [
        dep("//../../../usr/lib/bpy/5.0/datafiles/assets/brushes/essentials.blend", [],
            resolved="/usr/lib/bpy/5.0/datafiles/assets/brushes/essentials.blend",
            bundled=True),
    ]}
    layout = plan_project(trace)
    assert layout.root == "/home/ann/proj" and list(layout.files) == ["shot.blend"]
    assert layout.missing == []


def test_windows_paths() -> None:
    assert split_absolute("C:\\Users\\ann\\tex\\a.png") == ["C", "Users", "ann", "tex",
                                                           "a.png"]
    assert split_absolute("//textures/a.png") is None  # Blender's "relative to the .blend"
    assert project_path_for("D:\\lib\\oak.png", "C:\\Users\\ann\\proj") == "_abs/D/lib/oak.png"
    assert project_path_for("C:\\Users\\ann\\proj\\t\\a.png", "C:\\Users\\ann\\proj") == "t/a.png"
    assert common_root(["C:\\Users\\ann\\proj\\shots", "C:\\Users\\ann\\proj\\tex"]) == \
        "C:\\Users\\ann\\proj"
    with pytest.raises(ValueError, match="different drives"):
        common_root(["C:\\a", "D:\\b"])


def test_a_path_that_only_looks_like_the_root_is_outside_it() -> None:
    assert project_path_for("/home/ann/project2/x.png", "/home/ann/proj") == \
        "_abs/home/ann/project2/x.png"
    assert project_path_for("/home/ann/proj/../x.png", "/home/ann/proj") == "_abs/home/ann/x.png"


@pytest.mark.parametrize("path", ["", "/etc/passwd", "a/../b", "./a", "a//b", "a\\b",
                                  "C:/x", ".pilot-outside/x", "x\x00y", "a/" * 600])
def test_project_paths_stay_inside(path: str) -> None:
    with pytest.raises(ValueError):
        check_project_path(path)


def test_a_manifest_needs_its_main_file() -> None:
    check_manifest("a.blend", {"a.blend": SHA, "tex/b.png": SHA}, {"/x/b.png": "tex/b.png"})
    with pytest.raises(ValueError, match="not among"):
        check_manifest("b.blend", {"a.blend": SHA}, {})
