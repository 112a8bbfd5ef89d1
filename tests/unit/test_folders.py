"""Held folders (``core/folders.py``): a folder whose holder was SIGKILLed is removed at the
next start; one held by a live process, one being made, and anything else are kept."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from parallel_pilot.core.folders import (
    LOCK_NAME,
    claim_folder,
    private_dir,
    remove_stale_folders,
    tighten,
)

PREFIX = "pilot-worker-"
HOLD = """
import sys, time
from pathlib import Path
from parallel_pilot.core.folders import claim_folder
held = claim_folder(Path(sys.argv[1]), sys.argv[2])
(held.path / "task").mkdir()
(held.path / "task" / "out.txt").write_text("x")
(held.path / "task" / "out.txt").chmod(0o400)
(held.path / "task").chmod(0o500)  # a task may leave read-only folders
print(held.path, flush=True)
time.sleep(300)
"""


def _holder(root: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), PREFIX],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_dead_holders_folder_goes_and_a_live_ones_stays(tmp_path: Path) -> None:
    dead, dead_folder = _holder(tmp_path)
    live, live_folder = _holder(tmp_path)
    try:
        dead.kill()
        dead.wait(10)
        making = tmp_path / f"{PREFIX}being-made"  # no lock file yet: someone is making it
        making.mkdir()
        other = tmp_path / "pilot-task-1-1-old"  # not a held folder: not ours to judge
        other.mkdir()
        mine = claim_folder(tmp_path, PREFIX)  # this process's own, held
        assert remove_stale_folders(tmp_path, PREFIX) == [dead_folder]
        assert not dead_folder.exists()
        assert live_folder.is_dir() and making.is_dir() and other.is_dir()
        assert mine.path.is_dir() and (mine.path / LOCK_NAME).is_file()
        mine.release()
        assert not mine.path.exists()
    finally:
        live.kill()
        live.wait(10)
    assert remove_stale_folders(tmp_path, PREFIX) == [live_folder]


def test_a_link_named_like_a_folder_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / LOCK_NAME).write_text("")
    (victim / "precious").write_text("keep me")
    root = tmp_path / "root"
    root.mkdir()
    (root / f"{PREFIX}link").symlink_to(victim)
    assert remove_stale_folders(root, PREFIX) == []
    assert (victim / "precious").read_text() == "keep me"


def test_held_folders_are_private_and_modes_are_tightened(tmp_path: Path) -> None:
    held = claim_folder(tmp_path / "new", PREFIX)
    assert stat.S_IMODE(held.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    (loose / "data").write_text("secret")
    os.chmod(loose / "data", 0o664)
    private_dir(loose)
    tighten(loose / "data", 0o600)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    assert stat.S_IMODE((loose / "data").stat().st_mode) == 0o600
    os.chmod(loose / "data", 0o400)  # tighter already: left as it is
    tighten(loose / "data", 0o600)
    assert stat.S_IMODE((loose / "data").stat().st_mode) == 0o400
    shared = tmp_path / "shared"  # like /tmp, given as a work dir by its root owner
    shared.mkdir()
    os.chmod(shared, 0o1777)
    private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    held.release()
