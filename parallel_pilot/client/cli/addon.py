"""``pilot addon build``: the Blender add-on as one installable zip.

The zip holds one folder, ``parallel_pilot_blender/``: the add-on's modules
(``parallel_pilot/addon/``) and, under ``_carried/``, byte-identical copies of the
standard-library modules it packs projects with (``core/project.py``,
``kinds/render/dependencies.py``, ``core/units.py``), which it imports relatively.
Blender 4.2+ installs it as an extension (its ``blender_manifest.toml``), older ones as a
legacy add-on (``bl_info``). The zip is
reproducible: fixed member times and order.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import click

from parallel_pilot import __version__
from parallel_pilot.client.cli.common import console

PACKAGE_DIR = Path(__file__).resolve().parents[2]  # parallel_pilot/
ADDON_DIR = PACKAGE_DIR / "addon"
ADDON_NAME = "parallel_pilot_blender"  # the folder in the zip; the extension's id
CARRIED_DIR = "_carried"
CARRIED = {  # name in _carried/ -> the package's file it is a copy of
    "project.py": PACKAGE_DIR / "core" / "project.py",
    "dependencies.py": PACKAGE_DIR / "kinds" / "render" / "dependencies.py",
    "units.py": PACKAGE_DIR / "core" / "units.py",
}
CARRIED_INIT = ('"""Copies of Parallel Pilot modules the add-on packs projects with, '
                'written by\n``pilot addon build``: edit the originals, not these."""\n')
ZIP_TIME = (2024, 1, 1, 0, 0, 0)  # every member's timestamp, so that builds are identical
ADDON_SUFFIXES = (".py", ".toml")


def zip_name(version: str = __version__) -> str:
    return f"{ADDON_NAME}-{version}.zip"


def addon_members() -> dict[str, bytes]:
    """Path in the zip -> bytes, in the order they are written."""
    members: dict[str, bytes] = {}
    for source in sorted(ADDON_DIR.iterdir()):
        if source.is_file() and source.suffix in ADDON_SUFFIXES:
            members[f"{ADDON_NAME}/{source.name}"] = source.read_bytes()
    members[f"{ADDON_NAME}/{CARRIED_DIR}/__init__.py"] = CARRIED_INIT.encode()
    for name, original in CARRIED.items():
        members[f"{ADDON_NAME}/{CARRIED_DIR}/{name}"] = original.read_bytes()
    return members


def build_addon(out_dir: Path) -> Path:
    """Write the add-on's zip into ``out_dir``; its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / zip_name()
    partial = target.with_name(target.name + ".part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, data in addon_members().items():
            info = zipfile.ZipInfo(path, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    partial.replace(target)
    return target


@click.group("addon")
def addon_group() -> None:
    """The Blender add-on (render on the farm from Blender's Output properties)."""


@addon_group.command("build")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("dist"), show_default=True, help="Folder to write the zip into.")
def build_command(out_dir: Path) -> None:
    """Build the add-on's installable zip.

    Install it in Blender 4.2 or later: Edit > Preferences > Get Extensions >
    (menu) Install from Disk…, then find the Parallel Pilot panel in Properties > Output.
    """
    target = build_addon(out_dir)
    members = addon_members()
    console.print(f"wrote {target} ({target.stat().st_size:,} bytes, {len(members)} files)")
    console.print("install: Blender 4.2+ > Edit > Preferences > Get Extensions > "
                  "Install from Disk…")
