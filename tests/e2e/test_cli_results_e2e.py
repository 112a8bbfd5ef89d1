"""What the command line says about results, with a real ``pilot server`` and workers:
a sweep's failed items (summary, ``--fail-on-nonzero``, a command that cannot start,
``pilot show`` and ``pilot jobs``), task numbers as the dashboard counts them
(``pilot logs JOB --task N``), and downloads counted and skipped by content (a sweep and a
render, each downloaded twice)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.farm import Farm

SIM = textwrap.dedent("""
    import json, os, sys
    item = int(sys.argv[1])
    os.makedirs("out", exist_ok=True)
    json.dump({"item": item, "square": item * item}, open("out/r.json", "w"))
    print("square", item * item)
""")


def start(farm: Farm, workers: int = 1, slots: int = 2) -> None:
    farm.start_server()
    for i in range(workers):
        farm.start_worker(f"w{i + 1}", slots=slots)
    farm.wait_workers_joined(workers)


def job_of(proc: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"submitted job (\d+)", proc.stderr + proc.stdout)
    assert match, proc.stderr + proc.stdout
    return int(match.group(1))


def test_failed_items_everywhere(farm: Farm) -> None:
    tools = farm.root / "bin"
    tools.mkdir()
    exit3 = tools / "exit3"
    exit3.write_text("#!/bin/sh\necho three >&2\nexit 3\n")
    exit3.chmod(0o755)
    # the item is the program: true exits 0, false 1, exit3 3, nosuchcmd cannot start
    farm.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    start(farm)
    items = "true,false,exit3,nosuchcmd,echo"

    plain = farm.pilot("sweep", "--items", items, "--", "{item}")
    assert plain.returncode == 0  # without --fail-on-nonzero, a completed job is success
    assert ("3 of 5 items failed: item false exit 1, item exit3 exit 3, item nosuchcmd "
            "could not start: nosuchcmd: No such file or directory") in plain.stdout
    assert "completed with 3 failed item(s)" in plain.stdout

    strict = farm.pilot("sweep", "--items", items, "--fail-on-nonzero", "--json", "--",
                        "{item}", check=False)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    result = json.loads(strict.stdout)
    assert result["state"] == "completed" and result["failed_items"] == 3
    job_id = int(result["job"])

    shown = farm.pilot("show", str(job_id)).stdout
    assert re.search(r"state\s+completed \(3 failed\)", shown), shown
    assert re.search(r"items\s+5 done, 3 failed", shown), shown
    assert "item false (task 2): exit 1" in shown
    assert "item exit3 (task 3): exit 3" in shown
    assert ("item nosuchcmd (task 4): could not start: nosuchcmd: No such file or directory"
            in shown)
    assert "completed (3 failed)" in farm.pilot("jobs").stdout
    assert farm.job(job_id)["failed_items"] == 3

    out = farm.root / "results"
    farm.pilot("download", str(job_id), "--out", str(out))
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["item"], r["exit_code"], r.get("error")) for r in rows] == [
        ("true", 0, None), ("false", 1, None), ("exit3", 3, None),
        ("nosuchcmd", 127, "nosuchcmd: No such file or directory"), ("echo", 0, None)]

    sweep_ok = farm.pilot("sweep", "--items", "1-2", "--fail-on-nonzero", "--", "true")
    assert "2 items done, all exited 0" in sweep_ok.stdout
    job_ok = job_of(sweep_ok)
    assert re.search(rf"^\s*{job_ok}\s.*completed\s", farm.pilot("jobs").stdout, re.M)
    assert re.search(r"items\s+2 done, none failed", farm.pilot("show", str(job_ok)).stdout)


def test_task_numbers_are_the_dashboards(farm: Farm) -> None:
    start(farm)
    # a first job, so that the second job's task ids are not its task numbers
    farm.pilot("sweep", "--items", "x,y", "--", "echo", "{item}")
    job_id = job_of(farm.pilot("sweep", "--items", "a,b,c", "--", "echo", "line-{item}"))
    tasks = farm.tasks(job_id)
    # the dashboard shows task `index + 1` (templates/fragments/task_grid.html)
    dashboard = {t["index"] + 1: t["name"] for t in tasks}
    assert dashboard == {1: "item a", 2: "item b", 3: "item c"}
    assert all(t["id"] != t["index"] + 1 for t in tasks)  # ids are not numbers

    second = farm.pilot("logs", str(job_id), "--task", "2").stdout.splitlines()
    assert second == ["$ echo line-b", "line-b"]
    every = farm.pilot("logs", str(job_id)).stdout.splitlines()
    assert "[task 2] line-b" in every and "[task 3] $ echo line-c" in every
    assert all(re.match(r"\[task [123]\] ", line) for line in every), every

    unknown = farm.pilot("logs", str(job_id), "--task", "4", check=False)
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.strip() == (f"error: job {job_id} has no task 4: its tasks are "
                                      "numbered 1 to 3")
    zero = farm.pilot("logs", str(job_id), "--task", "0", check=False)
    assert zero.returncode == 2 and "0 is not in the range x>=1" in zero.stderr


def written(proc: subprocess.CompletedProcess[str]) -> str:
    """The download's summary line (stderr's last line)."""
    return proc.stderr.strip().splitlines()[-1]


def test_a_sweep_downloaded_twice(farm: Farm) -> None:
    start(farm)
    project = farm.root / "project"
    project.mkdir()
    (project / "sim.py").write_text(SIM)
    job_id = job_of(farm.pilot("sweep", "--items", "1-3", "--file", "sim.py", "--collect",
                               "out/*.json", "--", "python", "sim.py", "{item}", cwd=project))
    out = farm.root / "dl"
    first = farm.pilot("download", str(job_id), "--out", str(out))
    assert written(first) == f"4 file(s) written to {out}"  # results.jsonl + 3 items
    assert sorted(first.stdout.split()) == sorted(
        str(out / p) for p in ("results.jsonl", "items/1/out/r.json", "items/2/out/r.json",
                               "items/3/out/r.json"))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    again = farm.pilot("download", str(job_id), "--out", str(out))
    assert written(again) == f"0 file(s) written to {out}, 4 already up to date"
    assert again.stdout == ""
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before

    (out / "items/2/out/r.json").write_text("changed here")  # a different content: fetched
    third = farm.pilot("download", str(job_id), "--out", str(out))
    assert written(third) == f"1 file(s) written to {out}, 3 already up to date"
    assert json.loads((out / "items/2/out/r.json").read_text()) == {"item": 2, "square": 4}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory,
          requirement: Callable[[str | None], None]) -> Path:
    requirement(None if importlib.util.find_spec("bpy") else
                "the bpy package is not installed (pip install 'parallel-pilot[render]')")
    requirement(None if importlib.util.find_spec("imageio_ffmpeg") else
                "imageio-ffmpeg is not installed (pip install 'parallel-pilot[render]')")
    out = tmp_path_factory.mktemp("scene") / "sample.blend"
    subprocess.run([sys.executable, "-m", "parallel_pilot.scenes.sample_scene", str(out),
                    "--frames", "4", "--width", "32", "--height", "18", "--samples", "1"],
                   check=True, capture_output=True, timeout=120)
    return out


def test_a_render_downloaded_twice(farm: Farm, scene: Path) -> None:
    start(farm, slots=1)
    rendered = farm.pilot("render", str(scene), "--frames", "1-4", "--chunk", "2",
                          "--engine", "CYCLES", "--samples", "1", "--no-wait", "--json",
                          timeout=240)
    job_id = int(json.loads(rendered.stdout)["job"])
    assert json.loads(farm.pilot("wait", str(job_id), "--json", timeout=240).stdout)[
        "state"] == "completed"
    listed = [o["path"] for o in farm.api("GET", f"/jobs/{job_id}/outputs")["outputs"]]
    # every chunk uploaded a preview after every frame and its scene facts: listed once each
    assert sorted(listed) == ["frames.zip", "frames/0001.png", "frames/0002.png",
                              "frames/0003.png", "frames/0004.png", "meta/scene.json",
                              "preview/latest.jpg", "video.mp4"]

    out = farm.root / "render"
    first = farm.pilot("download", str(job_id), "--out", str(out))
    assert written(first) == (f"6 file(s) written to {out}; 2 file(s) kept for the farm "
                              "left out (meta/, preview/; --all fetches them)")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "frames.zip", "frames/0001.png", "frames/0002.png", "frames/0003.png",
        "frames/0004.png", "video.mp4"]

    again = farm.pilot("download", str(job_id), "--out", str(out))
    assert written(again).startswith(f"0 file(s) written to {out}, 6 already up to date;")

    everything = farm.pilot("download", str(job_id), "--out", str(out), "--all")
    assert written(everything) == f"2 file(s) written to {out}, 6 already up to date"
    assert (out / "preview" / "latest.jpg").is_file() and (out / "meta" / "scene.json").is_file()
