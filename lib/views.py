"""Tables and lines the front doors print: status, run outcomes, sync outcomes."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable, Sequence

from lib.gitstatus import RepoStatus


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def commit_age(iso_date: str, now: datetime | None = None) -> str:
    """'3 days ago' style age of an ISO-8601 date."""
    try:
        when = datetime.fromisoformat(iso_date)
    except ValueError:
        return iso_date
    seconds = int(((now or datetime.now(timezone.utc)) - when).total_seconds())
    for unit, size in (("year", 31536000), ("month", 2592000), ("week", 604800),
                       ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


def status_cell(status: RepoStatus) -> str:
    if status.error:
        return f"error: {status.error}"
    if status.clean:
        return "clean"
    counts = (("staged", status.staged), ("modified", status.modified),
              ("untracked", status.untracked), ("conflicted", status.conflicted))
    return ", ".join(f"{n} {label}" for label, n in counts if n)


def ahead_behind_cell(status: RepoStatus) -> str:
    if status.upstream is None:
        return "-" if status.error else "no upstream"
    if status.ahead is None:
        return "upstream gone"
    if not status.ahead and not status.behind:
        return "="
    return f"+{status.ahead}/-{status.behind}"


def status_table(statuses: Iterable[RepoStatus], now: datetime | None = None, width: int = 40) -> str:
    from tabulate import tabulate

    rows = []
    for s in statuses:
        branch = s.branch or (f"(detached {s.head[:7]})" if s.head else "-")
        last = "-"
        if s.last_commit:
            last = f"{s.last_commit.sha[:7]} {cut(s.last_commit.subject, width)} ({commit_age(s.last_commit.date, now)})"
        rows.append([s.name, cut(branch, 30), cut(status_cell(s), width), ahead_behind_cell(s), last])
    return tabulate(rows, headers=["REPO", "BRANCH", "STATUS", "AHEAD/BEHIND", "LAST COMMIT"], tablefmt="simple")


def plain_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=list(headers), tablefmt="simple")
