"""Job kinds as plugins: one module per kind, looked up by name here."""

from __future__ import annotations

from parallel_pilot.errors import InvalidInput, UnknownKind
from parallel_pilot.kinds.base import Kind
from parallel_pilot.kinds.python import PythonKind
from parallel_pilot.kinds.render.kind import RenderKind
from parallel_pilot.kinds.sleep import SleepKind
from parallel_pilot.kinds.sweep import SweepKind
from parallel_pilot.kinds.train import TrainKind

KINDS: dict[str, Kind] = {k.name: k for k in (SleepKind(), SweepKind(), RenderKind(),
                                              PythonKind(), TrainKind())}


def get_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        known = ", ".join(sorted(KINDS))
        raise UnknownKind(f"unknown job kind {name!r}; known kinds: {known}") from None


def known_kinds() -> list[str]:
    return sorted(KINDS)


def check_allowed_kinds(allow: list[str]) -> list[str]:
    """A worker's allow list, refused when empty or naming a kind this installation lacks."""
    known = known_kinds()
    unknown = [kind for kind in allow if kind not in known]
    if unknown:
        raise InvalidInput(f"unknown kind(s) to allow: {', '.join(unknown)}; "
                           f"known kinds: {', '.join(known)}")
    if not allow:
        raise InvalidInput(f"the worker allows no kind; known kinds: {', '.join(known)}")
    return allow
