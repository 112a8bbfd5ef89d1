"""Why a queued job waits: the online workers' capabilities held against what its tasks
need, through ``core.requirements.shortfalls`` (the rule the claim's SQL agrees with),
said in one line, e.g. ``waiting: no online worker has a GPU with >= 8 GiB; 3 workers
have GPUs with 6 GiB``. Pure: the coordinator gathers the workers and calls ``explain``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from parallel_pilot.core.protocol import Capabilities
from parallel_pilot.core.requirements import Requirements, Shortfall, shortfalls

MAX_HAVES_SHOWN = 3  # distinct "what the workers have" groups one reason names


@dataclass(frozen=True)
class OnlineWorker:
    """A worker heard from recently: what it claims, and what an admin decided."""

    caps: Capabilities
    trusted: bool = False
    pending: bool = False
    count: int = 1  # workers alike this one stands for (grouped: explained once)


def explain(kind: str, requirements: Requirements, online: list[OnlineWorker]) -> str | None:
    """Why no online worker can take a ready task of ``kind`` needing ``requirements``;
    None when one can (the job waits only for a free slot)."""
    if not online:
        return "waiting: no worker is online"
    runners = [w for w in online if kind in w.caps.kinds]
    if not runners:
        return (f"waiting: no online worker runs {kind} tasks "
                f"({_workers(sum(w.count for w in online))} online; a worker's owner "
                f"allows it with pilot worker --allow {kind})")
    missing = [(w, shortfalls(requirements, w.caps, trusted=w.trusted)) for w in runners]
    fitting = [w for w, short in missing if not short]
    if fitting:
        if all(w.pending for w in fitting):
            n = sum(w.count for w in fitting)
            who = "the only worker that fits waits" if n == 1 else \
                f"the {n} workers that fit wait"
            return f"waiting: {who} for an admin's approval (pilot workers approve ID)"
        return None
    by_term: dict[str, list[Shortfall]] = {}
    for w, short in missing:
        for s in short:
            by_term.setdefault(s.term, []).extend([s] * w.count)
    total = sum(w.count for w in runners)
    everyone = [t for t, shorts in by_term.items() if len(shorts) == total]
    if everyone:
        first, *others = everyone
        line = f"waiting: no online worker has {_need(first, by_term, requirements)}; " + \
            _haves(by_term[first])
        for term in others:
            line += f"; none has {_need(term, by_term, requirements)} either"
        return line
    parts = [f"{len(shorts)} of {total} lack {_need(t, by_term, requirements)}"
             for t, shorts in sorted(by_term.items(), key=lambda kv: -len(kv[1]))]
    return "waiting: no online worker meets every requirement: " + ", ".join(parts)


def _need(term: str, by_term: dict[str, list[Shortfall]], r: Requirements) -> str:
    if term == "tags":  # each worker may miss different ones: name them all
        return ("tag " if len(r.tags) == 1 else "tags ") + ", ".join(sorted(r.tags))
    return by_term[term][0].need


def _haves(shorts: list[Shortfall]) -> str:
    counts = Counter(s.have for s in shorts)
    parts = []
    for have, n in counts.most_common(MAX_HAVES_SHOWN):
        if n > 1 and have.startswith("a GPU with "):
            have = "GPUs with " + have.removeprefix("a GPU with ")
        parts.append(f"{_workers(n)} {'have' if n > 1 else 'has'} {have}")
    rest = len(shorts) - sum(n for _, n in counts.most_common(MAX_HAVES_SHOWN))
    if rest:
        parts.append(f"{_workers(rest)} other")
    return ", ".join(parts)


def _workers(n: int) -> str:
    return f"{n} worker{'s' if n != 1 else ''}"
