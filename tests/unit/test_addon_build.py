"""The Blender add-on's zip as ``pilot addon build`` writes it: one folder with the add-on's
modules and byte-identical copies of the packing modules, a manifest Blender 4.2+ accepts,
a ``bl_info`` that agrees with it, and nothing imported that Blender's Python lacks."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
import tomllib
import types
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from parallel_pilot import __version__
from parallel_pilot.client.cli import cli
from parallel_pilot.client.cli.addon import ADDON_NAME, build_addon, zip_name

PACKAGE = Path(__file__).resolve().parents[2] / "parallel_pilot"
BLENDER_MODULES = {"bpy", "bpy_extras", "addon_utils", "mathutils"}  # Blender's own
TERSE_MAX = 64  # characters Blender allows in a permission's reason
EXPECTED = {f"{ADDON_NAME}/{name}" for name in (
    "__init__.py", "blender_manifest.toml", "api.py", "follow.py", "operators.py",
    "pack.py", "panel.py", "properties.py", "results.py", "submit.py",
    "_carried/__init__.py", "_carried/project.py", "_carried/dependencies.py",
    "_carried/units.py")}


@pytest.fixture
def addon_zip(tmp_path: Path) -> Path:
    return build_addon(tmp_path / "dist")


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_zip_holds_one_folder_with_the_addon_and_its_carried_modules(
        addon_zip: Path) -> None:
    assert addon_zip.name == zip_name() == f"parallel_pilot_blender-{__version__}.zip"
    assert set(members(addon_zip)) == EXPECTED


def test_the_carried_modules_are_byte_identical_to_the_packages_own(addon_zip: Path) -> None:
    files = members(addon_zip)
    assert files[f"{ADDON_NAME}/_carried/project.py"] == \
        (PACKAGE / "core" / "project.py").read_bytes()
    assert files[f"{ADDON_NAME}/_carried/dependencies.py"] == \
        (PACKAGE / "kinds" / "render" / "dependencies.py").read_bytes()
    for name in EXPECTED - {f"{ADDON_NAME}/_carried/{n}" for n in
                            ("__init__.py", "project.py", "dependencies.py", "units.py")}:
        assert files[name] == (PACKAGE / "addon" / name.split("/", 1)[1]).read_bytes()


def test_the_manifest_is_what_blender_4_2_wants_and_agrees_with_bl_info(
        addon_zip: Path) -> None:
    files = members(addon_zip)
    manifest = tomllib.loads(files[f"{ADDON_NAME}/blender_manifest.toml"].decode())
    assert manifest["schema_version"] == "1.0.0"
    assert manifest["id"] == ADDON_NAME
    assert manifest["type"] == "add-on"
    assert manifest["version"] == __version__
    assert manifest["blender_version_min"] == "4.2.0"
    assert manifest["license"] == ["SPDX:MIT"]
    assert set(manifest["permissions"]) == {"network", "files"}
    for reason in manifest["permissions"].values():
        assert 0 < len(reason) <= TERSE_MAX and reason[-1].isalnum(), reason
    tree = ast.parse(files[f"{ADDON_NAME}/__init__.py"])
    (bl_info,) = [ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign) and node.targets[0].id == "bl_info"]
    assert ".".join(map(str, bl_info["version"])) == __version__
    assert bl_info["blender"] == (4, 2, 0) and bl_info["category"] == "Render"


def test_the_addon_imports_only_the_standard_library_bpy_and_itself(addon_zip: Path) -> None:
    files = members(addon_zip)
    modules = {name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
               for name in files if name.endswith(".py")}
    allowed = set(sys.stdlib_module_names) | BLENDER_MODULES
    for name, data in files.items():
        if not name.endswith(".py"):
            continue
        here = name.removesuffix(".py").replace("/", ".")
        package = here.removesuffix(".__init__") if name.endswith("__init__.py") \
            else here.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(data, filename=name)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed, f"{name} imports {alias.name}"
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module is not None
                top = node.module.split(".")[0]
                assert top in allowed or top == "__future__", f"{name} imports {node.module}"
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                wanted = ([f"{base}.{node.module}"] if node.module else
                          [f"{base}.{alias.name}" for alias in node.names])
                for target in wanted:
                    assert target in modules, f"{name}: {ast.unparse(node)} finds no {target}"


def test_two_builds_are_identical(tmp_path: Path) -> None:
    first = build_addon(tmp_path / "a").read_bytes()
    assert build_addon(tmp_path / "b").read_bytes() == first


def test_pilot_addon_build_writes_the_zip_where_asked(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["addon", "build", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / zip_name()).is_file()
    assert f"wrote {tmp_path / 'out' / zip_name()}" in result.output


def test_blenders_own_validator_accepts_the_zip(addon_zip: Path) -> None:
    spec = importlib.util.find_spec("bpy")
    if spec is None or spec.origin is None:
        pytest.skip("the bpy package is not installed (pip install 'parallel-pilot[render]')")
    validators = sorted(Path(spec.origin).parent.glob(
        "*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not validators:
        pytest.skip("this bpy has no extension tool (blender_ext.py)")
    # a standalone script of Blender's that needs only the standard library
    proc = subprocess.run([sys.executable, str(validators[-1]), "validate", str(addon_zip)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


def addon_modules(addon_zip: Path, tmp_path: Path) -> types.ModuleType:
    """The add-on's package from the zip, without running its ``__init__`` (which needs
    bpy): its bpy-free modules can then be imported here."""
    with zipfile.ZipFile(addon_zip) as archive:
        archive.extractall(tmp_path / "addon")
    name = f"_addon_under_test_{tmp_path.name}"
    package = types.ModuleType(name)
    package.__path__ = [str(tmp_path / "addon" / ADDON_NAME)]
    sys.modules[name] = package
    return package


def test_server_addresses_and_what_a_job_gave(addon_zip: Path, tmp_path: Path) -> None:
    package = addon_modules(addon_zip, tmp_path)
    try:
        api = importlib.import_module(f"{package.__name__}.api")
        results = importlib.import_module(f"{package.__name__}.results")
        assert api.normalise_server("farm:8330/") == "http://farm:8330"
        assert api.normalise_server(" https://farm.example/ ") == "https://farm.example"
        assert api.job_page("127.0.0.1:8330", 7) == "http://127.0.0.1:8330/jobs/7"
        assert api.is_loopback("localhost:8330") and api.is_loopback("http://127.0.0.2")
        assert not api.is_loopback("http://192.0.2.1:8330")
        for bad in ("", "ftp://farm", "http://"):
            with pytest.raises(api.ApiError):
                api.normalise_server(bad)
        with pytest.raises(api.ApiError, match="API token"):
            api.Api("farm:8330", " ")
        outputs = [{"path": p} for p in ("frames/0001.png", "frames/0002.png", "video.mp4",
                                         "frames.zip", "meta/scene.json", "meta/scene.json",
                                         "preview/latest.jpg")]
        assert results.summary(outputs) == "2 frame(s), frames.zip, video.mp4"
        assert [o["path"] for o in outputs if results.wanted(o["path"])] == [
            "frames/0001.png", "frames/0002.png", "video.mp4"]
    finally:
        for module in [m for m in sys.modules if m.startswith(package.__name__)]:
            del sys.modules[module]
