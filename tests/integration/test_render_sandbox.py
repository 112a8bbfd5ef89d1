"""A hostile .blend on a worker, for real: bpy renders it through the render kind (a chunk
run in-process with a fake context, as in test_render_worker.py) with and without the
render sandbox, and probes run through the very argv builder the chunk uses
(``kinds.render.sandbox.sandbox_argv``) show what Blender could see from inside.

The files are made with bpy: each scene's compositor shows one "secret" image (pure red)
and has a File Output node aimed at an absolute folder outside the task. The
secrets lie where a worker keeps things a job must not read: the work root next to the
task folders (``//../../../x.png`` from the project's ``shots/``), the blob cache (an
absolute path to a cached blob of another job) and the worker's home. So that the
hiding of the cache and work root is tested on its own (``/tmp`` is hidden anyway), they
live in ``test-artifacts/`` of the checkout, outside ``/tmp`` where the checkout is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from parallel_pilot.core.protocol import TaskLease
from parallel_pilot.kinds import get_kind
from parallel_pilot.kinds.base import TaskSpec, parse_params
from parallel_pilot.kinds.render import chunk
from parallel_pilot.kinds.render.blender import installed_blender
from parallel_pilot.kinds.render.sandbox import render_sandbox_decision, sandbox_argv
from parallel_pilot.kinds.sandbox import interpreter_paths

REPO = Path(__file__).resolve().parents[2]
SCRATCH_PARENT = REPO / "test-artifacts"  # git-ignored
SIZE = (32, 18)  # pixels of the test frames
BPY_TIMEOUT = 120  # seconds one bpy child may take
RED = (1.0, 0.0, 0.0)  # the colour of every secret image

RED_PNG = """
import sys, bpy, numpy as np
w, h = int(sys.argv[-3]), int(sys.argv[-2])
img = bpy.data.images.new("secret", w, h)
px = np.zeros((h, w, 4), np.float32); px[..., 0] = 1; px[..., 3] = 1
img.pixels.foreach_set(px.ravel())
img.filepath_raw = sys.argv[-1]; img.file_format = "PNG"; img.save()
"""

# a scene whose compositor shows the image at SECRET and writes the rendered layer to the
# folder OUTSIDE with a File Output node
HOSTILE_BLEND = """
import sys, bpy
out, outside, secret, w, h = sys.argv[-5:]
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.samples = 1
scene.render.resolution_x, scene.render.resolution_y = int(w), int(h)
scene.render.resolution_percentage = 100
scene.view_settings.view_transform = "Standard"  # red stays (1, 0, 0) in the frame
scene.frame_start = scene.frame_end = 1
cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
scene.collection.objects.link(cam)
scene.camera = cam
tree = bpy.data.node_groups.new("Compositing", "CompositorNodeTree")
scene.compositing_node_group = tree
tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
group_out = tree.nodes.new("NodeGroupOutput")
image = bpy.data.images.new("secret", 4, 4)
image.source, image.filepath = "FILE", secret
node = tree.nodes.new("CompositorNodeImage")
node.image = image
tree.links.new(node.outputs["Image"], group_out.inputs[0])
file_output = tree.nodes.new("CompositorNodeOutputFile")
file_output.file_output_items.new("RGBA", "Image")
file_output.directory = outside
file_output.file_name = "stolen_"
layers = tree.nodes.new("CompositorNodeRLayers")  # always an image to write
tree.links.new(layers.outputs["Image"], file_output.inputs["Image"])
bpy.ops.wm.save_as_mainfile(filepath=out, relative_remap=False)  # paths as written
"""

# what the pixels of a PNG are: the fraction that is the secret's red, and the mean
PIXELS = """
import sys, json, bpy, numpy as np
im = bpy.data.images.load(sys.argv[-1])
px = np.array(im.pixels[:]).reshape(-1, im.channels)[:, :3]
red = (px[:, 0] > 0.9) & (px[:, 1] < 0.1) & (px[:, 2] < 0.1)
print("PIXELS " + json.dumps({"red": float(red.mean()), "mean": px.mean(axis=0).tolist()}))
"""

# a naive render (no pilot script, no path relocation): what Blender alone would do with
# the file; REDIRECT (optional) moves the File Output node, for a control run
NAIVE_RENDER = """
import sys, bpy, numpy as np
blend, out = sys.argv[-3], sys.argv[-2]
redirect = sys.argv[-1]
bpy.ops.wm.open_mainfile(filepath=blend, load_ui=False, use_scripts=False)
scene = bpy.context.scene
if redirect != "-":
    for n in scene.compositing_node_group.nodes:
        if n.bl_idname == "CompositorNodeOutputFile":
            n.directory = redirect
scene.render.image_settings.file_format = "PNG"
scene.render.filepath = out
bpy.ops.render.render(write_still=True)
im = bpy.data.images.load(out)
px = np.array(im.pixels[:]).reshape(-1, im.channels)[:, :3]
red = (px[:, 0] > 0.9) & (px[:, 1] < 0.1) & (px[:, 2] < 0.1)
print("RED", float(red.mean()))
"""

# whether each path exists, and what writing it does, seen from where the probe runs
SEE_AND_WRITE = """
import json, os, sys
# a path: False when absent, the names in it for a folder, True for a file
seen = {p: os.path.exists(p) and (sorted(os.listdir(p)) if os.path.isdir(p) else True)
        for p in json.loads(sys.argv[-2])}
wrote = {}
for p in json.loads(sys.argv[-1]):
    try:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "ab") as fh:
            fh.write(b"x")
        wrote[p] = "wrote"
    except OSError as exc:
        wrote[p] = exc.strerror
print("PROBE " + json.dumps({"seen": seen, "wrote": wrote}))
"""

CONNECT = """
import json, socket, sys
tcp, unix = int(sys.argv[-2]), sys.argv[-1]
out = {}
for name, family, address in (("tcp", socket.AF_INET, ("127.0.0.1", tcp)),
                              ("unix", socket.AF_UNIX, unix)):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(address)
        out[name] = "connected"
    except OSError as exc:
        out[name] = type(exc).__name__
print("NET " + json.dumps(out))
"""


def bpy_run(code: str, *args: object) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=BPY_TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def tagged(output: str, tag: str) -> str:
    (line,) = [ln for ln in output.splitlines() if ln.startswith(tag + " ")]
    return line.split(" ", 1)[1]


def pixels(png: Path) -> dict:
    return json.loads(tagged(bpy_run(PIXELS, png), "PIXELS"))


@dataclass
class Worker:
    """One worker's folders as a real worker has them, with secrets planted in them."""

    root: Path
    cache: Path  # the blob cache
    work_root: Path  # where task folders are made
    elsewhere: Path  # the absolute folder the File Output nodes aim at
    secrets: dict[str, Path]  # where -> a red PNG a job must not read
    blends: dict[str, Path]  # where -> a .blend showing that secret
    tasks: int = 0

    def add_blob(self, file: Path) -> str:
        sha = hashlib.sha256(file.read_bytes()).hexdigest()
        stored = self.cache / sha
        if not stored.exists():
            shutil.copyfile(file, stored)
            stored.chmod(0o444)  # as worker/cache.py keeps them
        return sha


class FakeContext:
    """A ``RunContext`` on ``Worker``'s folders, outputs kept in memory."""

    def __init__(self, worker: Worker, task: TaskLease, sandbox: bool) -> None:
        self.worker, self.task = worker, task
        self.workdir = worker.work_root / f"task-{task.task_id}-{task.attempt}"
        self.workdir.mkdir(parents=True)
        self.render_sandbox = sandbox
        self.gpus: tuple[int, ...] | None = None  # no worker gives GPUs here
        self.private_paths = (worker.cache, worker.work_root)
        self.stop_event = threading.Event()
        self.lines: list[str] = []
        self.outputs: dict[str, bytes] = {}

    def input_path(self, name: str) -> Path:
        return self.worker.cache / self.task.inputs[name]

    def copy_input(self, name: str, dest: Path) -> Path:
        shutil.copyfile(self.input_path(name), dest)
        return dest

    def link_input(self, name: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(self.input_path(name), dest)
        return dest

    def job_outputs(self, prefix: str = "") -> dict[str, str]:
        return {}

    def fetch_blob(self, sha256: str) -> Path:
        return self.worker.cache / sha256

    def progress(self, fraction: float | None, message: str | None = None) -> None:
        pass

    def log(self, line: str) -> None:
        self.lines.append(line)

    def upload_output(self, path: str, file: Path) -> str:
        self.outputs[path] = file.read_bytes()
        return hashlib.sha256(self.outputs[path]).hexdigest()


@pytest.fixture(scope="module")
def bpy_here(requirement: Callable[[str | None], None]) -> None:
    requirement(None if importlib.util.find_spec("bpy") else
                "the bpy package is not installed (pip install 'parallel-pilot[render]')")


@pytest.fixture(scope="module")
def bwrap(bpy_here: None, requirement: Callable[[str | None], None]) -> None:
    requirement(render_sandbox_decision(True, installed_blender()).reason)


@pytest.fixture(scope="module")
def worker(bpy_here: None) -> Iterator[Worker]:
    SCRATCH_PARENT.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="render-sandbox-", dir=SCRATCH_PARENT))
    home_secret = Path.home() / f".pilot-sandbox-secret-{secrets.token_hex(4)}.png"
    try:
        cache, work_root = root / "cache", root / "work"
        for folder in (cache, work_root):
            folder.mkdir()
        red = root / "red.png"
        bpy_run(RED_PNG, *SIZE, red)
        shutil.copyfile(red, work_root / "x.png")  # next to the task folders
        shutil.copyfile(red, home_secret)
        w = Worker(root, cache, work_root, root / "elsewhere", {}, {})
        cached = cache / w.add_blob(red)  # another job's blob in the cache
        w.secrets = {"work root": work_root / "x.png", "cache": cached, "home": home_secret}
        written = {"work root": "//../../../x.png", "cache": str(cached),
                   "home": str(home_secret)}
        for where, path in written.items():
            blend = root / "blends" / f"{where.replace(' ', '-')}.blend"
            blend.parent.mkdir(exist_ok=True)
            bpy_run(HOSTILE_BLEND, blend, f"{w.elsewhere}/", path, *SIZE)
            w.blends[where] = blend
        yield w
    finally:
        home_secret.unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)


def plan(worker: Worker, blend: Path) -> TaskSpec:
    kind = get_kind("render")
    sha = worker.add_blob(blend)
    params = parse_params(kind, {"project": {"main": "shots/hostile.blend",
                                             "files": {"shots/hostile.blend": sha}},
                                 "frames": "1", "allow_missing_files": True})
    checked = kind.check_inputs(params, lambda s, n: (worker.cache / s).read_bytes()[:n])
    return kind.plan(checked)[0]


def run_chunk(worker: Worker, blend: Path, *, sandbox: bool,
              monkeypatch: pytest.MonkeyPatch) -> tuple[dict, FakeContext, list[str]]:
    """One chunk of a render job of ``blend``; returns its result, context and the argv
    Blender was started with."""
    spec = plan(worker, blend)
    worker.tasks += 1
    task = TaskLease(task_id=worker.tasks, attempt=1, job_id=1, kind="render", name=spec.name,
                     payload=spec.payload, inputs=spec.inputs, lease_expires_at=0.0,
                     heartbeat_seconds=10.0)
    started: list[list[str]] = []
    real = chunk.run_process

    def spy(argv: list[str], **kwargs: object):  # type: ignore[no-untyped-def]
        started.append(argv)
        return real(argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(chunk, "run_process", spy)
    ctx = FakeContext(worker, task, sandbox)
    result = get_kind("render").run(task, ctx)
    (argv,) = started
    return result, ctx, argv


def probe_argv(ctx: FakeContext, argv: list[str]) -> list[str]:
    """``argv`` in the sandbox a chunk of ``ctx`` runs Blender in (same builder, same
    arguments as chunk.py)."""
    install = installed_blender()
    assert install is not None
    return sandbox_argv(argv, install, ctx.workdir, hide=ctx.private_paths,
                        read_only=[ctx.workdir / chunk.PROJECT_DIR])


def run(argv: list[str], cwd: Path) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=BPY_TIMEOUT,
                          cwd=cwd, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def nothing_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*")) if folder.exists() else []


# ---------------------------------------------------------------- (a) File Output


@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "sandboxed"])
def test_a_file_output_node_aimed_outside_writes_nothing_there(
        worker: Worker, sandbox: bool, monkeypatch: pytest.MonkeyPatch,
        requirement: Callable[[str | None], None]) -> None:
    if sandbox:
        requirement(render_sandbox_decision(True, installed_blender()).reason)
    result, ctx, argv = run_chunk(worker, worker.blends["work root"], sandbox=sandbox,
                                  monkeypatch=monkeypatch)
    assert list(result["frames"]) == ["1"]
    assert Path(argv[0]).name == "bwrap" if sandbox else Path(argv[0]).name != "bwrap"
    assert nothing_in(worker.elsewhere) == []
    # the node did write: into the task folder, sent back as a job output
    assert [p for p in ctx.outputs if p.startswith("file-output/")], sorted(ctx.outputs)


def test_inside_the_sandbox_the_folder_cannot_be_written_at_all(
        bwrap: None, worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    _result, ctx, _argv = run_chunk(worker, worker.blends["cache"], sandbox=True,
                                    monkeypatch=monkeypatch)
    target = worker.elsewhere / "stolen_0001.png"
    project_file = ctx.workdir / chunk.PROJECT_DIR / "shots" / "hostile.blend"
    before = project_file.read_bytes()
    new_in_project = project_file.with_name("new.txt")
    probe = [sys.executable, "-I", "-c", SEE_AND_WRITE, "[]",
             json.dumps([str(target), str(project_file), str(new_in_project),
                         str(ctx.workdir / "mine.txt")])]
    wrote = json.loads(tagged(run(probe_argv(ctx, probe), ctx.workdir), "PROBE"))["wrote"]
    assert wrote[str(target)] == "Read-only file system"
    # the project's files are hard links into the blob cache (mode 0444): not writable
    # through, and the project folder is a read-only mount
    assert wrote[str(project_file)] in ("Read-only file system", "Permission denied")
    assert project_file.read_bytes() == before
    assert wrote[str(new_in_project)] == "Read-only file system"
    assert wrote[str(ctx.workdir / "mine.txt")] == "wrote"
    assert nothing_in(worker.elsewhere) == []
    # a naive render (no relocation, no redirection) in the sandbox writes nothing there
    # either; out of it, the same file's node writes wherever it points (the control)
    install = installed_blender()
    assert install is not None
    naive = [install.path, "-I", "-c", NAIVE_RENDER, str(project_file),
             str(ctx.workdir / "naive.png"), "-"]
    run(probe_argv(ctx, naive), ctx.workdir)
    assert nothing_in(worker.elsewhere) == []
    control = worker.root / "control-output"
    run(naive[:-1] + [f"{control}/"], ctx.workdir)
    assert nothing_in(control), "the control File Output wrote nothing"


# ---------------------------------------------------------------- (b) image paths


@pytest.mark.parametrize("where", ["work root", "cache", "home"])
@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "sandboxed"])
def test_an_image_outside_the_task_reads_nothing_from_the_worker(
        worker: Worker, where: str, sandbox: bool, monkeypatch: pytest.MonkeyPatch,
        requirement: Callable[[str | None], None]) -> None:
    if sandbox:
        requirement(render_sandbox_decision(True, installed_blender()).reason)
    result, ctx, _argv = run_chunk(worker, worker.blends[where], sandbox=sandbox,
                                   monkeypatch=monkeypatch)
    frame = worker.root / f"frame-{where}-{sandbox}.png"
    frame.write_bytes(ctx.outputs["frames/0001.png"])
    seen = pixels(frame)
    assert seen["red"] == 0.0, seen  # not one pixel of the secret
    # the path was moved inside the project (and named), not read
    missing = [line for line in ctx.lines if line.startswith("missing: ")]
    assert len(missing) == 1 and missing[0].endswith(": outside the project)"), ctx.lines[-20:]


@pytest.mark.parametrize("where", ["work root", "cache", "home"])
def test_inside_the_sandbox_the_secret_is_not_even_visible(
        bwrap: None, worker: Worker, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _result, ctx, _argv = run_chunk(worker, worker.blends[where], sandbox=True,
                                    monkeypatch=monkeypatch)
    secret = worker.secrets[where]
    own = [worker.cache / sha for sha in ctx.task.inputs.values()]  # the job's own blobs
    files = [str(secret), *map(str, own)]
    folders = [str(worker.cache), str(worker.work_root), str(Path.home())]
    probe = [sys.executable, "-I", "-c", SEE_AND_WRITE, json.dumps(files + folders), "[]"]
    inside = json.loads(tagged(run(probe_argv(ctx, probe), ctx.workdir), "PROBE"))["seen"]
    outside = json.loads(tagged(run(probe, ctx.workdir), "PROBE"))["seen"]
    assert all(outside[p] is True for p in files), outside
    assert all(outside[p] for p in folders), outside  # none of them is empty here
    assert {p: inside[p] for p in files} == {p: False for p in files}
    # the cache is empty (or not there at all, where it lies under the private /tmp: a
    # checkout in /tmp), the home shows only the way to an interpreter living in it
    # (here pyenv's), of the work root only this task's folder shows
    assert inside[str(worker.cache)] in ([], False)
    home = Path.home()
    readable = {p.relative_to(home).parts[0] for p in interpreter_paths()
                if p.is_relative_to(home) and p != home}
    assert set(inside[str(home)] or []) <= readable, inside[str(home)]
    assert inside[str(worker.work_root)] == [ctx.workdir.name]
    # the job's own file is there, through the project folder
    project_file = ctx.workdir / chunk.PROJECT_DIR / "shots" / "hostile.blend"
    probe = [sys.executable, "-I", "-c", SEE_AND_WRITE, json.dumps([str(project_file)]), "[]"]
    assert json.loads(tagged(run(probe_argv(ctx, probe), ctx.workdir), "PROBE"))["seen"] == {
        str(project_file): True}
    # Blender alone, without the relocation of paths: the secret shows outside the
    # sandbox (the control) and not inside
    install = installed_blender()
    assert install is not None
    naive = [install.path, "-I", "-c", NAIVE_RENDER, str(project_file),
             str(ctx.workdir / "naive.png"), f"{ctx.workdir}/naive-output/"]
    assert float(tagged(run(naive, ctx.workdir), "RED")) == 1.0
    assert float(tagged(run(probe_argv(ctx, naive), ctx.workdir), "RED")) == 0.0


# ---------------------------------------------------------------- (c) network


@pytest.fixture
def listeners(worker: Worker) -> Iterator[tuple[int, Path]]:
    """A TCP server on 127.0.0.1 and a Unix socket in the worker's work root."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    unix_path = worker.work_root / f"s-{secrets.token_hex(3)}.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(unix_path))
    stop = threading.Event()

    def accept(server: socket.socket) -> None:
        server.listen(8)
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    threads = [threading.Thread(target=accept, args=(s,), daemon=True) for s in (tcp, unix)]
    for thread in threads:
        thread.start()
    yield tcp.getsockname()[1], unix_path
    stop.set()
    for thread in threads:
        thread.join(2)
    tcp.close()
    unix.close()
    unix_path.unlink(missing_ok=True)


def test_no_network_from_inside(bwrap: None, worker: Worker,
                                listeners: tuple[int, Path]) -> None:
    port, unix_path = listeners
    workdir = worker.work_root / "net-probe"
    workdir.mkdir()
    install = installed_blender()
    assert install is not None
    probe = [sys.executable, "-I", "-c", CONNECT, str(port), str(unix_path)]
    outside = json.loads(tagged(run(probe, workdir), "NET"))
    boxed = sandbox_argv(probe, install, workdir, hide=(worker.cache, worker.work_root))
    inside = json.loads(tagged(run(boxed, workdir), "NET"))
    assert outside == {"tcp": "connected", "unix": "connected"}
    assert inside["tcp"] in ("ConnectionRefusedError", "OSError", "TimeoutError"), inside
    assert inside["unix"] in ("FileNotFoundError", "ConnectionRefusedError"), inside


# ---------------------------------------------------------------- stopping


def test_a_stopped_sandboxed_render_leaves_no_process(
        bwrap: None, worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    blend = worker.root / "blends" / "long.blend"
    subprocess.run([sys.executable, "-m", "parallel_pilot.scenes.sample_scene", str(blend),
                    "--frames", "12", "--width", "64", "--height", "36", "--samples", "64"],
                   check=True, capture_output=True, timeout=BPY_TIMEOUT)
    kind = get_kind("render")
    sha = worker.add_blob(blend)
    params = parse_params(kind, {"project": {"main": "long.blend",
                                             "files": {"long.blend": sha}},
                                 "frames": "1-12", "chunk": 12})
    spec = kind.plan(kind.check_inputs(
        params, lambda s, n: (worker.cache / s).read_bytes()[:n]))[0]
    worker.tasks += 1
    task = TaskLease(task_id=worker.tasks, attempt=1, job_id=1, kind="render", name=spec.name,
                     payload=spec.payload, inputs=spec.inputs, lease_expires_at=0.0,
                     heartbeat_seconds=10.0)
    ctx = FakeContext(worker, task, sandbox=True)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(kind.run(task, ctx)))
    runner.start()
    deadline = time.monotonic() + 60
    while "frames/0001.png" not in ctx.outputs and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "frames/0001.png" in ctx.outputs, ctx.lines[-20:]
    stopped_at = time.monotonic()
    ctx.stop_event.set()
    runner.join(10)
    assert not runner.is_alive() and time.monotonic() - stopped_at < 5
    assert outcome["stopped"] is True and "frames/0012.png" not in ctx.outputs
    assert not {p.pid for p in psutil.Process().children(recursive=True)} - before


# ---------------------------------------------------------------- the dashboard


def test_the_workers_page_shows_what_each_worker_sandboxes(tmp_path: Path) -> None:
    from tests.integration.conftest import make_coordinator

    coord = make_coordinator(f"sqlite:///{tmp_path / 'pilot.db'}", tmp_path,
                             cookie_secure=False)
    with coord.client as web:
        for name, caps in (("boxed", {"render_sandbox": True, "sandbox": True}),
                           ("plain", {})):
            response = web.post("/api/v1/workers/register", json={
                "join_token": coord.join_token, "name": name,
                "capabilities": {"cpu_cores": 2, "ram_bytes": 2**30, "kinds": ["render"],
                                 **caps}})
            assert response.status_code == 200, response.text
        password = (coord.data_dir / "admin-password").read_text().strip()
        login = web.post("/login", data={"name": "admin", "password": password,
                                         "next": "/workers"}, follow_redirects=False)
        assert login.status_code == 303, login.text
        page = web.get("/workers", headers={"accept": "text/html"}).text
    coord.services.engine.dispose()
    assert '<th scope="col" title="What runs inside bubblewrap (bwrap), as the worker claims' \
        in page
    cells = {}
    for row in page.split("<tr>")[2:]:
        found = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        cells[re.sub(r"<[^>]+>", "", found[0])] = found
    sandbox_column = 8  # name, state, task, CPU, RAM, GPU, Blender, kinds, sandbox
    assert cells["boxed"][sandbox_column] == \
        'render, commands <span class="muted">(claimed)</span>'  # no admin trusts it
    assert cells["plain"][sandbox_column] == '<span class="muted">none</span>'
