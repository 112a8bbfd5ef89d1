"""The worker's decisions as a pure state machine: events in, instructions out.

``WorkerState`` holds what a worker holds (attempts running or prefetched), its pending
reports (finished attempts not yet given a verdict, progress and log lines of running
ones), its slots and its view of the lease. It opens no socket, starts no thread and reads
no clock: every event carries ``now`` (seconds on one monotonic clock). The agent
(``worker/agent.py``) feeds it events (``answered``, ``sync_failed``, ``finished``,
``progress``, ``stop_requested``, ``tick``) and carries out what ``decide(now)`` returns:
``Start`` a task on a free slot, ``Stop`` an attempt, ``Send`` a sync, ``Leave``.

Slots come in two pools: ``slots`` CPU slots for tasks that need no GPU, and one GPU slot
per GPU (``gpus``: the worker's GPUs, numbered 0..gpus-1 as ``nvidia-smi`` lists them or
as ``--gpus`` told them). A task whose job needs n GPUs (``TaskLease.gpus``) starts only
when n GPUs are free and gets them (``Start.gpus``); a GPU is never given to two attempts
that run, and a stopped attempt keeps its GPUs until its child has ended (``finished``).
A leased task waits in the queue for its pool (a GPU task for a GPU) while later tasks
of the other pool start.

Rules it keeps:
- a finished report stays pending until a verdict for it comes back: a sync that fails
  (a dropped connection) sends it again; exactly-once is the coordinator's fencing;
- never more running CPU attempts than CPU slots, nor GPUs in use than GPUs; never more
  CPU attempts held than CPU slots plus the prefetch the coordinator granted, nor GPU
  attempts than GPUs (leases beyond that are handed back at once);
- prefetch adapts to what attempts of each kind took here (``worker/prefetch.py``): deep
  for millisecond tasks, none for tasks of a second or more (renders);
- a prefetched attempt that is stopped is dropped without running;
- no sync through for the lease time: the attempts are not ours any more; running ones are
  stopped and their results dropped;
- leaving hands back every held attempt at once (``released``), then ``leaving: true``.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from parallel_pilot.core.protocol import (
    MAX_SYNC_REPORTS,
    AttemptRef,
    AttemptReport,
    SyncRequest,
    SyncResponse,
    TaskLease,
)
from parallel_pilot.worker.prefetch import Prefetch

LONG_POLL_SECONDS = 30.0  # seconds an idle worker's sync waits on the coordinator for work
IDLE_PAUSE_SECONDS = 0.5  # pause after an empty long poll that came back at once
BACKOFF_START_SECONDS = 0.25  # first pause after a failed sync
BACKOFF_FAST_MAX_SECONDS = 5.0  # longest pause while the coordinator is away briefly
OUTAGE_FAST_SECONDS = 120.0  # seconds of outage retried at the fast pace
BACKOFF_SLOW_SECONDS = 30.0  # pause between tries after that
STOP_GRACE_SECONDS = 10.0  # seconds stopped attempts get to wind down on shutdown
LEAVE_RETRY_SECONDS = 10.0  # seconds a leaving sync is retried while unreachable
MAX_REPORT_LINES = 5000  # log lines one report carries (the wire allows 10,000)
DEFAULT_SYNC_SECONDS = 3.0  # heartbeat before the coordinator said otherwise
DEFAULT_LEASE_SECONDS = 60.0  # lease before the coordinator said otherwise

Key = tuple[int, int]  # (task id, attempt)


class StopReason(enum.StrEnum):
    """Why an attempt is stopped; decides what is reported afterwards."""

    COORDINATOR = "coordinator"  # the coordinator said stop, or refused the attempt: drop it
    LEASE_LOST = "lease lost"  # no sync got through for the lease time: not ours now
    SHUTDOWN = "shutdown"  # the worker is leaving: hand the attempt back


# ---------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Start:
    lease: TaskLease
    gpus: tuple[int, ...] = ()  # the GPUs the attempt runs on (none: a CPU task)


@dataclass(frozen=True)
class Stop:
    task_id: int
    attempt: int
    reason: StopReason
    detail: str


@dataclass(frozen=True)
class Send:
    sync_id: int
    request: SyncRequest


@dataclass(frozen=True)
class Leave:
    told: bool  # the coordinator acknowledged the leaving sync


Instruction = Start | Stop | Send | Leave


# ---------------------------------------------------------------- state


@dataclass
class _Held:
    lease: TaskLease
    running: bool = False
    stop: StopReason | None = None  # set once a stop was asked; the result is not reported
    progress: float | None = None
    message: str | None = None
    changed: bool = False  # progress or message not sent yet
    lines: list[str] = field(default_factory=list)  # log lines not sent yet
    gpus: tuple[int, ...] = ()  # GPUs given to it when it started, kept until it ends

    @property
    def needs_gpus(self) -> int:
        return self.lease.gpus


@dataclass
class _Flight:
    sync_id: int
    sent_at: float
    long_poll: bool
    leaving: bool
    finished: list[Key]  # finished reports it carries
    lines: dict[Key, list[str]]  # log lines of running attempts it carries
    # (free CPU slots, prefetch, CPU attempts held, free GPUs) if it asked for tasks
    asked: tuple[int, int, int, int] | None


class WorkerState:
    """What one worker holds and must say; see the module docstring."""

    def __init__(self, slots: int, *, gpus: int = 0,
                 sync_seconds: float = DEFAULT_SYNC_SECONDS,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, now: float = 0.0) -> None:
        self.slots = slots  # CPU slots
        self.gpus = gpus  # GPU slots: GPUs 0..gpus-1
        self.sync_seconds = sync_seconds
        self.lease_seconds = lease_seconds
        self.granted = 0  # prefetch the coordinator granted in its last answer
        self.held: dict[Key, _Held] = {}
        self.queue: deque[Key] = deque()  # prefetched attempts, in lease order
        self.reports: dict[Key, AttemptReport] = {}  # finished, waiting for a verdict
        self.outcomes: Counter[str] = Counter()  # attempts settled, by outcome
        self.prefetch = Prefetch(slots)  # the depth, from durations and round trips
        self.lease_deadline: float | None = None  # held attempts are ours until then
        self.outage_since: float | None = None  # first failed sync of the current outage
        self.stopping = False
        self.hard = False
        self.left = False
        self.notes: list[str] = []  # lines for the log, taken by the agent
        self._running = 0  # attempts started and not yet finished or handed back
        self._cpu_running = 0  # of those, the ones on CPU slots
        self._gpu_holder: dict[int, Key] = {}  # GPU index -> the attempt running on it
        self._flight: _Flight | None = None
        self._abandoned: set[int] = set()  # long polls given up on (shutdown)
        self._next_id = 0
        self._last_sent = now
        self._retry_at = 0.0
        self._backoff = BACKOFF_START_SECONDS
        self._dry = False  # the last ask for tasks brought none
        self._drain_until: float | None = None
        self._grace_until: float | None = None
        self._leave_until: float | None = None
        self._out: list[Instruction] = []

    # ------------------------------------------------------------ views

    @property
    def running(self) -> list[Key]:
        return [k for k, h in self.held.items() if h.running]

    def free_gpus(self) -> list[int]:
        """GPUs no running attempt holds, lowest first."""
        return [g for g in range(self.gpus) if g not in self._gpu_holder]

    def gpus_of(self, key: Key) -> tuple[int, ...]:
        """The GPUs the attempt ``key`` runs on (none if it is not running or needs none)."""
        held = self.held.get(key)
        return held.gpus if held is not None else ()

    def wants_progress(self, now: float) -> bool:
        """Whether a heartbeat sync is due, which carries running attempts' progress."""
        return bool(self._running) and self._flight is None and \
            now >= self._last_sent + self.sync_seconds

    @property
    def in_flight(self) -> bool:
        return self._flight is not None

    def prefetch_depth(self) -> int:
        """Tasks to hold beyond the slots, from what the recently leased kinds took here."""
        return self.prefetch.depth()

    def wake_at(self) -> float | None:
        """When ``tick`` has something to do next (None: only an event can change things)."""
        times: list[float] = []
        if self.held and self.lease_deadline is not None:
            times.append(self.lease_deadline)
        if self._drain_until is not None:
            times.append(self._drain_until)
        if self._grace_until is not None:
            times.append(self._grace_until)
        if self._flight is None and not self.left:
            if self._retry_at:
                times.append(self._retry_at)
            if self.held:
                times.append(self._last_sent + self.sync_seconds)
            if self._leave_until is not None:
                times.append(self._leave_until)
        return min(times) if times else None

    # ------------------------------------------------------------ events

    def answered(self, sync_id: int, response: SyncResponse, now: float) -> None:
        """A sync came back."""
        if sync_id in self._abandoned:
            self._abandoned.discard(sync_id)
            # a long poll given up on at shutdown: what it leased goes straight back
            if not self.left:
                for lease in response.tasks:
                    self._report(AttemptReport(task_id=lease.task_id, attempt=lease.attempt,
                                               outcome="released"))
            return
        flight = self._flight
        if flight is None or flight.sync_id != sync_id:
            return
        self._flight = None
        self.sync_seconds = response.sync_seconds
        self.lease_seconds = response.lease_seconds
        self.granted = response.prefetch_granted
        self.lease_deadline = flight.sent_at + response.lease_seconds
        if not flight.long_poll:
            self.prefetch.synced(max(0.0, now - flight.sent_at))
        self.outage_since = None
        self._retry_at = 0.0
        self._backoff = BACKOFF_START_SECONDS
        verdicts = {(v.task_id, v.attempt): v for v in response.verdicts}
        for key in flight.finished:
            verdict = verdicts.get(key)
            report = self.reports.get(key)
            if verdict is None or report is None:
                continue  # no verdict: it goes again in the next sync
            del self.reports[key]
            self.outcomes[report.outcome if verdict.accepted else "dropped"] += 1
            if not verdict.accepted:
                self.notes.append(f"task {key[0]}: {report.outcome} report refused "
                                  f"({verdict.reason or 'no reason given'})")
        for key in flight.lines:
            verdict = verdicts.get(key)
            if verdict is not None and not verdict.accepted:
                self._stop(key, StopReason.COORDINATOR,
                           f"the coordinator refused the attempt: {verdict.reason}")
        for stop in response.stop:
            self._stop((stop.task_id, stop.attempt), StopReason.COORDINATOR,
                       f"the coordinator said stop: {stop.reason}")
        if flight.leaving:
            self.left = True
            self._out.append(Leave(told=True))
            return
        if flight.asked is not None:
            # fewer tasks than the coordinator would have given: it has no more now
            free, prefetch, held_cpu, free_gpus = flight.asked
            want = min(free + prefetch,
                       self.slots + min(prefetch, response.prefetch_granted) - held_cpu)
            self._dry = len(response.tasks) < max(0, want) + free_gpus
        if flight.long_poll and not response.tasks and now - flight.sent_at < IDLE_PAUSE_SECONDS:
            self._retry_at = now + IDLE_PAUSE_SECONDS  # no long poll there: do not spin
        for lease in response.tasks:
            self._leased(lease)

    def sync_failed(self, sync_id: int, now: float) -> None:
        """A sync got no answer (unreachable, dropped, timed out): what it carried stays."""
        if sync_id in self._abandoned:
            self._abandoned.discard(sync_id)
            return
        flight = self._flight
        if flight is None or flight.sync_id != sync_id:
            return
        self._flight = None
        for key, lines in flight.lines.items():
            held = self.held.get(key)
            if held is not None:
                held.lines[:0] = lines
            elif key in self.reports:
                report = self.reports[key]
                self.reports[key] = report.model_copy(
                    update={"log_lines": _capped(lines + report.log_lines)})
        if self.outage_since is None:
            self.outage_since = flight.sent_at
        outage = now - self.outage_since
        self._retry_at = now + self._backoff
        top = BACKOFF_FAST_MAX_SECONDS if outage < OUTAGE_FAST_SECONDS else BACKOFF_SLOW_SECONDS
        self._backoff = min(self._backoff * 2, top)
        if flight.leaving and self._leave_until is not None and now >= self._leave_until:
            self.left = True
            self._out.append(Leave(told=False))

    def finished(self, report: AttemptReport, seconds: float) -> None:
        """A runner ended an attempt with ``report`` (completed or failed) after
        ``seconds``."""
        key = (report.task_id, report.attempt)
        held = self.held.pop(key, None)
        if held is None:
            return  # already handed back or dropped
        self._not_running(key, held)
        self.prefetch.finished(held.lease.kind, seconds)
        if held.stop is StopReason.SHUTDOWN:
            report = AttemptReport(task_id=key[0], attempt=key[1], outcome="released",
                                   log_lines=report.log_lines)
        elif held.stop is not None:
            self.outcomes["dropped"] += 1
            return
        if held.lines:
            report = report.model_copy(
                update={"log_lines": _capped(held.lines + report.log_lines)})
        self._report(report)

    def progress(self, key: Key, fraction: float | None, message: str | None,
                 lines: list[str]) -> None:
        """The latest progress and new log lines of a running attempt."""
        held = self.held.get(key)
        if held is None or held.stop is not None:
            return
        if (fraction, message) != (held.progress, held.message):
            held.progress, held.message, held.changed = fraction, message, True
        if lines:
            held.lines = _capped(held.lines + lines)

    def stop_requested(self, hard: bool, now: float, drain_seconds: float) -> None:
        """Leave: prefetched attempts go back at once; running ones get ``drain_seconds``
        (none if ``hard``), then are stopped and handed back."""
        if not self.stopping:
            self.stopping = True
            self._leave_until = None
            self._drain_until = now + drain_seconds
            if self._flight is not None and self._flight.long_poll:
                self._abandoned.add(self._flight.sync_id)
                self._flight = None
            self._retry_at = 0.0
            for key in list(self.queue):
                self._hand_back(key)
        if hard and not self.hard:
            self.hard = True
            for key in self.running:
                self._stop(key, StopReason.SHUTDOWN, "the worker is stopping now")
                self._hand_back(key)

    def lost(self, why: str) -> None:
        """Everything held is not ours any more (the coordinator forgot this worker)."""
        for key in list(self.held):
            self._stop(key, StopReason.LEASE_LOST, why)
        self.outcomes["dropped"] += len(self.reports)
        self.reports.clear()
        self._flight = None

    def tick(self, now: float) -> None:
        """Timers: the lease, the drain and the grace after it."""
        if self.held and self.lease_deadline is not None and now >= self.lease_deadline:
            silent = now - (self.lease_deadline - self.lease_seconds)
            self.notes.append(f"no sync got through for {silent:.0f} s: the lease is lost; "
                              f"{len(self.held)} task(s) dropped")
            self.lease_deadline = None
            for key in list(self.held):
                self._stop(key, StopReason.LEASE_LOST,
                           f"no sync got through for {silent:.0f} s")
        if self._drain_until is not None and now >= self._drain_until:
            self._drain_until = None
            if self.running:
                self._grace_until = now + STOP_GRACE_SECONDS
            for key in self.running:
                self._stop(key, StopReason.SHUTDOWN, "the worker is stopping")
        if self._grace_until is not None and now >= self._grace_until:
            self._grace_until = None
            for key in self.running:
                self._hand_back(key)  # it did not wind down in time: hand it back anyway

    # ------------------------------------------------------------ decisions

    def decide(self, now: float) -> list[Instruction]:
        """What to do now: the stops events asked for, starts on free slots, a sync."""
        for key in list(self.queue):
            held = self.held[key]
            need = held.needs_gpus
            if need:
                free = self.free_gpus()
                if len(free) < need:
                    continue  # it waits for a GPU; CPU tasks behind it may start
                held.gpus = tuple(free[:need])
                self._gpu_holder.update((g, key) for g in held.gpus)
            elif self._cpu_running >= self.slots:
                continue
            else:
                self._cpu_running += 1
            self.queue.remove(key)
            held.running = True
            self._running += 1
            self._out.append(Start(held.lease, held.gpus))
        send = self._sync_now(now)
        if send is not None:
            self._out.append(send)
        out, self._out = self._out, []
        return out

    def _sync_now(self, now: float) -> Send | None:
        if self._flight is not None or self.left:
            return None
        if self._retry_at and now < self._retry_at:
            return None
        if self.stopping:
            if not self._running or self.hard:
                if self._leave_until is None:
                    self._leave_until = now + (0.0 if self.hard else LEAVE_RETRY_SECONDS)
                return self._send(now, leaving=True)
            if self.reports or now >= self._last_sent + self.sync_seconds:
                return self._send(now)
            return None
        if not self.held and not self.reports:
            return self._send(now, wait=LONG_POLL_SECONDS)
        if now >= self._last_sent + self.sync_seconds:
            return self._send(now)
        depth = self.prefetch_depth()
        cpu_queued = sum(1 for k in self.queue if not self.held[k].needs_gpus)
        free = self.slots - self._cpu_running - cpu_queued + self._unclaimed_gpus()
        low = depth > 0 and cpu_queued <= depth // 2
        if self.reports and (free > 0 or low or not self.queue):
            # while prefetched work keeps every slot busy, results wait for the queue to
            # run low (or the heartbeat), so that one sync carries many
            return self._send(now)
        if not self._dry and (free > 0 or low):
            return self._send(now)
        return None

    def _send(self, now: float, *, wait: float = 0.0, leaving: bool = False) -> Send:
        finished = list(self.reports)[:MAX_SYNC_REPORTS]
        reports = [self.reports[k] for k in finished]
        lines: dict[Key, list[str]] = {}
        held_refs: list[AttemptRef] = []
        for key, held in self.held.items():
            if held.stop is not None and held.stop is not StopReason.SHUTDOWN:
                continue  # not ours any more
            held_refs.append(AttemptRef(task_id=key[0], attempt=key[1]))
            if held.running and (held.changed or held.lines) and \
                    len(reports) < MAX_SYNC_REPORTS:
                reports.append(AttemptReport(
                    task_id=key[0], attempt=key[1], outcome="running",
                    progress=held.progress, message=held.message, log_lines=held.lines))
                lines[key], held.lines, held.changed = held.lines, [], False
        asking = not self.stopping
        free = max(0, self.slots - self._cpu_running) if asking else 0
        prefetch = self.prefetch_depth() if asking else 0
        free_gpus = self._unclaimed_gpus() if asking else 0
        request = SyncRequest(reports=reports, held=held_refs, free_slots=free,
                              prefetch=prefetch, free_gpus=free_gpus if self.gpus else None,
                              wait_seconds=wait, leaving=leaving)
        self._next_id += 1
        held_cpu = sum(1 for ref in held_refs
                       if not self.held[(ref.task_id, ref.attempt)].needs_gpus)
        self._flight = _Flight(self._next_id, now, wait > 0, leaving, finished, lines,
                               asked=(free, prefetch, held_cpu, free_gpus) if asking else None)
        self._last_sent = now
        return Send(self._next_id, request)

    # ------------------------------------------------------------ helpers

    def _leased(self, lease: TaskLease) -> None:
        key = (lease.task_id, lease.attempt)
        if key in self.held or key in self.reports:
            return
        self.prefetch.leased(lease.kind)
        if lease.gpus > self.gpus:
            self.notes.append(f"task {key[0]} needs {lease.gpus} GPU(s), this worker has "
                              f"{self.gpus}: handed back")
        if self.stopping or lease.gpus > self.gpus or not self._room_for(lease):
            # more than this worker may hold (or it is leaving): straight back
            self._report(AttemptReport(task_id=key[0], attempt=key[1], outcome="released"))
            return
        self.held[key] = _Held(lease)
        self.queue.append(key)

    def _stop(self, key: Key, reason: StopReason, detail: str) -> None:
        held = self.held.get(key)
        if held is None or held.stop is not None:
            return
        if not held.running:
            # prefetched: dropped without running
            del self.held[key]
            self.queue.remove(key)
            self.outcomes["dropped"] += 1
            return
        held.stop = reason
        held.lines = []
        self._out.append(Stop(key[0], key[1], reason, detail))

    def _hand_back(self, key: Key) -> None:
        held = self.held.pop(key, None)
        if held is None:
            return
        self._not_running(key, held)
        if key in self.queue:
            self.queue.remove(key)
        if held.stop in (None, StopReason.SHUTDOWN):
            self._report(AttemptReport(task_id=key[0], attempt=key[1], outcome="released",
                                       log_lines=_capped(held.lines)))

    def _room_for(self, lease: TaskLease) -> bool:
        """Whether a new lease fits what this worker may hold: CPU tasks up to the CPU
        slots plus the granted prefetch; GPU tasks up to the GPUs, counting what its held
        GPU tasks need (stopped ones aside: the coordinator took them back, and a new task
        waits in the queue until their children end and free the GPUs)."""
        if lease.gpus:
            own = sum(h.needs_gpus for h in self.held.values() if h.stop is None)
            return own + lease.gpus <= self.gpus
        cpu_held = sum(1 for h in self.held.values() if not h.needs_gpus)
        return cpu_held < self.slots + self.granted

    def _unclaimed_gpus(self) -> int:
        """GPUs free now that no queued GPU task is waiting for."""
        waiting = sum(self.held[k].needs_gpus for k in self.queue)
        return max(0, len(self.free_gpus()) - waiting)

    def _not_running(self, key: Key, held: _Held) -> None:
        """``held`` left the worker: its slot and GPUs are free again."""
        if held.running:
            self._running -= 1
            self._cpu_running -= not held.needs_gpus
        for gpu in held.gpus:
            if self._gpu_holder.get(gpu) == key:
                del self._gpu_holder[gpu]

    def _report(self, report: AttemptReport) -> None:
        self.reports[(report.task_id, report.attempt)] = report


def _capped(lines: Iterable[str]) -> list[str]:
    """At most ``MAX_REPORT_LINES``: the newest, after a marker for those left out."""
    kept = list(lines)
    if len(kept) <= MAX_REPORT_LINES:
        return kept
    dropped = len(kept) - MAX_REPORT_LINES + 1
    return [f"[{dropped} lines dropped]", *kept[-(MAX_REPORT_LINES - 1):]]
