"""The worker's one loop around its state machine (``worker/state.py``).

``SyncLoop`` is the part of ``Worker`` that runs on the loop thread: it takes events from
one queue (finished attempts from the slot threads, answers from the sender threads, stop
requests), feeds them to ``WorkerState``, and carries out its instructions: start an
attempt on a slot, stop one, hand a sync to a sender, leave. It never waits on the
network itself, and it is the only thread that touches the state.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parallel_pilot.core.folders import HeldFolder
from parallel_pilot.core.protocol import SyncResponse
from parallel_pilot.core.settings import WorkerSettings
from parallel_pilot.errors import Forbidden, PilotError, ServerUnavailable, Unauthorized
from parallel_pilot.kinds.render.sandbox import RenderSandboxDecision
from parallel_pilot.worker.cache import BlobCache
from parallel_pilot.worker.link import CoordinatorLink
from parallel_pilot.worker.runners import Runners
from parallel_pilot.worker.sender import Sender
from parallel_pilot.worker.state import (
    OUTAGE_FAST_SECONDS,
    Leave,
    Send,
    Start,
    Stop,
    StopReason,
    WorkerState,
)
from parallel_pilot.worker.task_run import TaskRun

log = logging.getLogger(__name__)


class SyncLoop:
    """The loop-thread half of ``Worker`` (see the module docstring)."""

    settings: WorkerSettings
    state: WorkerState
    link: CoordinatorLink
    sync_link: CoordinatorLink
    cache: BlobCache
    work_folder: HeldFolder  # this worker's own folder for task folders
    render_sandbox: RenderSandboxDecision
    private_paths: tuple[Path, ...]
    clock: Callable[[], float]
    fatal: PilotError | None
    _events: queue.SimpleQueue[tuple[Any, ...]]
    _stopping: threading.Event
    _runs: dict[tuple[int, int], TaskRun]
    _runners: Runners | None
    _sender: Sender | None
    _poller: Sender | None
    _announced: str | None

    def _register(self) -> bool:
        raise NotImplementedError

    def _fail_fatally(self, message: str) -> None:
        raise NotImplementedError

    @property
    def running(self) -> list[TaskRun]:
        """Attempts started here and not over yet."""
        return [run for run in self._runs.copy().values() if run.report is None]

    def _drive(self) -> None:
        state = self.state
        while self.fatal is None:
            now = self.clock()
            state.tick(now)
            if state.wants_progress(now):
                for key, run in self._runs.items():
                    fraction, message = run.ctx.snapshot()
                    state.progress(key, fraction, message, run.ctx.logs.drain())
            while True:
                instructions = state.decide(now)
                self._say_notes()
                if not instructions:
                    break
                for instruction in instructions:
                    if isinstance(instruction, Leave):
                        self._left(instruction.told)
                        return
                    self._carry_out(instruction)
                if self.fatal is not None:
                    return
                now = self.clock()
            wake = state.wake_at()
            timeout = None if wake is None else max(0.0, wake - self.clock())
            try:
                event = self._events.get(timeout=timeout)
                while True:  # everything that is there already: one decision for all
                    self._apply(event)
                    event = self._events.get_nowait()
            except queue.Empty:
                pass

    def _apply(self, event: tuple[Any, ...]) -> None:
        what = event[0]
        if what == "finished":
            run: TaskRun = event[1]
            self._runs.pop(run.key, None)
            report = run.report
            if report is not None:
                self.state.finished(report, run.seconds)
        elif what == "stop":
            if not self.state.stopping:
                running = len(self.state.running)
                if running and not event[1]:
                    log.info("stopping: letting %d running task(s) finish (up to %.0f s; "
                             "signal again to stop now)", running, self.settings.drain_seconds)
                else:
                    log.info("stopping")
            elif event[1] and not self.state.hard:
                log.info("handing running tasks back now")
            self.state.stop_requested(event[1], self.clock(), self.settings.drain_seconds)
        elif what == "answered":
            self._answered(event[1], event[2])
        elif what == "failed":
            self._sync_failed(event[1], event[2])

    def _carry_out(self, instruction: Start | Stop | Send) -> None:
        if isinstance(instruction, Start):
            lease = instruction.lease
            run = TaskRun(lease, gpus=instruction.gpus, link=self.link, cache=self.cache,
                          allowed=self.settings.allow,
                          work_root=self.work_folder.path, on_finished=self._finished,
                          sandbox=self.settings.sandbox,
                          render_sandbox=self.render_sandbox.enabled,
                          private_paths=self.private_paths, clock=self.clock)
            self._runs[run.key] = run
            log.debug("%s started (attempt %d%s)", run.label, lease.attempt,
                      f", GPU {','.join(map(str, instruction.gpus))}" if instruction.gpus
                      else "")
            assert self._runners is not None
            self._runners.submit(run)
        elif isinstance(instruction, Stop):
            found = self._runs.get((instruction.task_id, instruction.attempt))
            if found is not None:
                if instruction.reason is not StopReason.SHUTDOWN:
                    log.info("%s: stopping: %s", found.label, instruction.detail)
                found.stop(instruction.reason, instruction.detail)
        else:
            sender = self._poller if instruction.request.wait_seconds > 0 else self._sender
            assert sender is not None
            sender.send(instruction.sync_id, instruction.request)

    def _finished(self, run: TaskRun) -> None:
        """On a slot thread: the attempt is over."""
        self._events.put(("finished", run))

    # ------------------------------------------------------------ syncs

    def _answered(self, sync_id: int, answer: SyncResponse) -> None:
        if self._announced is not None and self.state.outage_since is not None:
            log.warning("the coordinator at %s answers again (after %.0f s)",
                        self.sync_link.server, self.clock() - self.state.outage_since)
        self._announced = None
        self.state.answered(sync_id, answer, self.clock())

    def _sync_failed(self, sync_id: int, exc: BaseException) -> None:
        if isinstance(exc, Forbidden):
            self._fail_fatally(f"the coordinator refuses this worker: {exc}")
            self._stop_all("the coordinator refuses this worker")
            return
        if isinstance(exc, Unauthorized) and not self.state.stopping:
            log.warning("coordinator no longer knows this worker (%s); registering again", exc)
            self.state.lost("the coordinator no longer knows this worker")
            if not self._register():
                self._stop_all("could not register again")
            return
        self.state.sync_failed(sync_id, self.clock())
        since = self.state.outage_since
        if not isinstance(exc, ServerUnavailable):
            log.warning("sync refused: %s: %s", type(exc).__name__, exc)
        elif self._announced is None:
            self._announced = "fast"
            log.warning("cannot reach the coordinator at %s (%s); retrying for up to %.0f s…",
                        self.sync_link.server, _outage_reason(exc), OUTAGE_FAST_SECONDS)
        elif self._announced == "fast" and since is not None and \
                self.clock() - since >= OUTAGE_FAST_SECONDS:
            self._announced = "slow"
            log.warning("no answer from the coordinator at %s for %.0f s; still trying, "
                        "less often", self.sync_link.server, OUTAGE_FAST_SECONDS)

    def _say_notes(self) -> None:
        notes = self.state.notes
        while notes:
            log.warning("%s", notes.pop(0))

    # ------------------------------------------------------------ leaving

    def _left(self, told: bool) -> None:
        if told:
            log.info("left the coordinator")
        else:
            log.warning("could not tell the coordinator that this worker leaves")

    def _stop_all(self, detail: str) -> None:
        """The loop ends without leaving: stop every attempt where it is."""
        for run in self.running:
            run.stop(StopReason.SHUTDOWN, detail)


def _outage_reason(exc: BaseException) -> str:
    """``connection refused``: the few words ``Connection`` put in parentheses."""
    found = re.search(r"\(([^()]+)\)", str(exc))
    return found.group(1) if found else "no answer"
