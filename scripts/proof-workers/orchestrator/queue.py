"""Which issue a free worker takes: an in_progress issue left on it first, then pending ones; unclaimed, every
dependency completed; (wave, priority, number)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True, order=True)
class IssueRef:
    project: str
    number: int

    def __str__(self) -> str:
        return f"{self.project}#{self.number}"


@dataclass(frozen=True)
class IssueView:
    """What scheduling needs to know of an issue (a plain value: journals record and replay it)."""

    ref: IssueRef
    status: str
    wave: int = 1
    priority: int = 1
    depends_on: tuple[int, ...] = ()
    stage_count: int = 1
    # in_progress in the config on this worker, but held by no worker record (a restart, an original's file):
    # resumed first, by that worker (by any worker when the run has no such worker)
    resume_worker: int | None = None

    @property
    def resuming(self) -> bool:
        return self.status == "in_progress" and self.resume_worker is not None


def completed(issues: Iterable[IssueView]) -> set[IssueRef]:
    return {i.ref for i in issues if i.status == "completed"}


def blocked(issue: IssueView, issues: Iterable[IssueView]) -> list[int]:
    """The failed issues `issue` waits on, directly or through its dependencies (it cannot run while they stay
    failed)."""
    by_ref = {i.ref: i for i in issues}
    found: set[int] = set()
    seen: set[IssueRef] = set()
    todo = [IssueRef(issue.ref.project, d) for d in issue.depends_on]
    while todo:
        ref = todo.pop()
        if ref in seen or ref not in by_ref:
            continue
        seen.add(ref)
        if by_ref[ref].status == "failed":
            found.add(ref.number)
        else:
            todo.extend(IssueRef(ref.project, d) for d in by_ref[ref].depends_on)
    return sorted(found)


def eligible(issues: Iterable[IssueView], claimed: set[IssueRef]) -> list[IssueView]:
    """Runnable issues, best first. `claimed`: held by a worker or taken earlier in this cycle."""
    issues = list(issues)
    done = completed(issues)
    ready = [i for i in issues
             if (i.status == "pending" or i.resuming) and i.ref not in claimed
             and all(IssueRef(i.ref.project, d) in done for d in i.depends_on)]
    return sorted(ready, key=lambda i: (not i.resuming, i.wave, i.priority, i.ref.number, i.ref.project))


def next_issue(issues: Iterable[IssueView], claimed: set[IssueRef], worker: int | None = None,
               workers: Iterable[int] = ()) -> IssueView | None:
    """The best issue for `worker` (None: for any worker): an issue left on another of the run's `workers` waits
    for that one."""
    others = set(workers) - {worker} if worker is not None else set()
    return next((i for i in eligible(issues, claimed) if not (i.resuming and i.resume_worker in others)), None)
