"""The script run inside Blender that lists the devices Cycles can render on.

Like ``script.py`` it runs in Blender's own Python (the ``bpy`` package or a ``blender``
executable), uses the standard library and ``bpy`` only, and never imports the package. It
prints one line::

    PILOT_RENDER_DEVICES {"devices": [{"type": "OPTIX", "name": "...", "id": "..."}, ...],
                          "errors": {"METAL": "..."}}

with the devices of each GPU backend (CUDA, OPTIX, HIP, ONEAPI, METAL) this build knows,
then the CPU. A backend this build lacks, or whose driver is missing, lists no device;
what went wrong with it is in ``errors``. Arguments after ``--`` are ignored (the worker
starts every Blender script with a job file).
"""

import json
import sys

import bpy

TAG = "PILOT_RENDER_DEVICES"
GPU_BACKENDS = ("CUDA", "OPTIX", "HIP", "ONEAPI", "METAL")
MAX_TEXT = 200  # characters kept of a name, an id or an error


def devices_of(prefs, backend: str) -> list:
    """Cycles' devices of ``backend``; ``get_devices_for_type`` also appends the CPU to a
    GPU backend's list, so only entries of that type are kept."""
    found = []
    for device in prefs.get_devices_for_type(backend):
        if device.type == backend:
            found.append({"type": backend, "name": str(device.name)[:MAX_TEXT],
                          "id": str(device.id)[:MAX_TEXT]})
    return found


def probe() -> dict:
    addon = bpy.context.preferences.addons.get("cycles")
    if addon is None:
        return {"devices": [], "errors": {"CYCLES": "the Cycles add-on is not enabled"}}
    prefs = addon.preferences
    devices: list = []
    errors: dict = {}
    for backend in (*GPU_BACKENDS, "CPU"):
        try:
            devices.extend(devices_of(prefs, backend))
        except Exception as exc:  # an unknown backend raises ValueError; drivers anything
            errors[backend] = f"{type(exc).__name__}: {exc}"[:MAX_TEXT]
    return {"devices": devices, "errors": errors}


def main() -> None:
    try:
        found = probe()
    except Exception as exc:  # the worker then reports no device and logs this line
        found = {"devices": [], "errors": {"probe": f"{type(exc).__name__}: {exc}"[:MAX_TEXT]}}
    sys.stdout.write(f"{TAG} {json.dumps(found)}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
