"""Tables and lines the front doors print: status, run outcomes, sync outcomes, host checks, tasks."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable, Sequence

from lib.gitstatus import RepoStatus
from lib.runstatus import RunStatus

if TYPE_CHECKING:
    from datetime import date

    from lib.backlog import Task
    from lib.batch import Outcome
    from lib.remote.connection import HostCheck
    from lib.sync import SyncOutcome


# Characters that would drive the terminal (ESC, BEL, CSI, backspace, line breaks, DEL) or reorder what
# it shows (bidi overrides): a table shows them escaped, as Python writes them; JSON keeps the raw text.
_INVISIBLE = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}
_INVISIBLE.update({c: f"\\u{c:04x}" for c in (*range(0x202a, 0x202f), *range(0x2066, 0x206a), 0x200e, 0x200f,
                                               0x061c)})
_INVISIBLE.update({0x09: "\\t", 0x0a: "\\n", 0x0d: "\\r"})


def visible(text: str) -> str:
    """`text` with every control or bidi character written as an escape (`\\x1b`, `\\n`, `\\u202e`)."""
    return text.translate(_INVISIBLE)


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
    """`clean`, or the counts; an operation under way first, a stale index.lock last."""
    if status.error:
        return f"error: {status.error}"
    parts = [f"{status.operation} in progress"] if status.operation else []
    if status.clean:
        parts.append("clean")
    else:
        counts = (("staged", status.staged), ("modified", status.modified),
                  ("untracked", status.untracked), ("conflicted", status.conflicted))
        parts.append(", ".join(f"{n} {label}" for label, n in counts if n))
    if status.stashes:
        parts.append(f"{status.stashes} stashed")
    if status.index_lock == "stale":
        parts.append("stale index.lock")
    return "; ".join(parts)


def ahead_behind_cell(status: RepoStatus) -> str:
    if status.upstream is None:
        return "-" if status.error else "no upstream"
    if status.ahead is None:
        return "upstream gone"
    if not status.ahead and not status.behind:
        return "="
    return f"+{status.ahead}/-{status.behind}"


def status_table(statuses: Iterable[RepoStatus], now: datetime | None = None, width: int = 40) -> str:
    rows = []
    for s in statuses:
        branch = s.branch or (f"(detached {s.head[:7]})" if s.head else "-")
        last = "-"
        if s.last_commit:
            last = f"{s.last_commit.sha[:7]} {cut(s.last_commit.subject, width)} ({commit_age(s.last_commit.date, now)})"
        rows.append([s.name, cut(branch, 30), cut(status_cell(s), width + 20), ahead_behind_cell(s), last])
    return plain_table(rows, ["REPO", "BRANCH", "STATUS", "AHEAD/BEHIND", "LAST COMMIT"])


def load_tables_meanwhile() -> None:
    """Import tabulate in a thread of its own while a long run works, so the run's table at its end does not
    wait for it (about 5 ms). `plain_table` waits for that import if it is still under way (Python's import
    lock), or imports it itself if the thread could not start."""
    import importlib
    import threading

    try:
        threading.Thread(target=importlib.import_module, args=("tabulate",), name="load-tabulate",
                         daemon=True).start()
    except RuntimeError:  # no thread to spare: imported when the table is printed
        pass


def plain_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A simple table that shows every cell as given (a branch `1.10` stays `1.10`, a repo `007` stays `007`),
    control characters escaped (a commit subject cannot drive the terminal)."""
    from tabulate import tabulate

    shown = [[visible(cell) if isinstance(cell, str) else cell for cell in row] for row in rows]
    return tabulate(shown, headers=[visible(h) for h in headers], tablefmt="simple", disable_numparse=True)


def outcomes_table(outcomes: Iterable["Outcome"]) -> str:
    outcomes = list(outcomes)
    rows = [[o.repo, o.language, o.status.upper(), f"{o.duration_s:.1f}s", cut(detail_cell(o), 80), o.log or "-"]
            for o in outcomes]
    headers = ["REPO", "LANGUAGE", "STATUS", "TIME", "DETAIL", "LOG"]
    if any(o.host != "local" for o in outcomes):  # a HOST column only when some ran on a build host
        rows = [[*row[:2], o.host, *row[2:]] for row, o in zip(rows, outcomes)]
        headers.insert(2, "HOST")
    return plain_table(rows, headers)


def detail_cell(outcome: "Outcome") -> str:
    """The test runner's counts (`2 failed, 615 passed`), then why it did not pass (`exit 1`)."""
    from lib.testcounts import counts_text

    return "; ".join(part for part in (counts_text(outcome.counts), outcome.reason or "") if part)


def headline(workflow: str, outcome: "Outcome") -> str:
    """The original's one-line verdict: `BUILD PASSED (1.2s)`, `BUILD FAILED (exit 2, 3.4s)`; control characters
    in the reason (a build host's words) escaped, as in the tables."""
    word = workflow.upper()
    time = f"{outcome.duration_s:.1f}s"
    if outcome.status == RunStatus.PASSED:
        return f"{word} PASSED ({time})"
    if outcome.status == RunStatus.FAILED:
        return f"{word} FAILED ({visible(outcome.reason or f'exit {outcome.exit_code}')}, {time})"
    return f"{word} {outcome.status.upper()} ({visible(str(outcome.reason))}, {time})"


def sync_table(outcomes: Iterable["SyncOutcome"]) -> str:
    rows = []
    for o in outcomes:
        moved = f"{o.before[:7]} -> {o.after[:7]}" if o.before and o.after and o.before != o.after else ""
        branch = (o.branch or "-") + (f" (on {o.checked_out})" if o.checked_out and o.checked_out != o.branch else "")
        rows.append([o.repo, branch, o.status + (f": {cut(o.reason, 60)}" if o.reason else ""), moved])
    # The branch sync moves is the default one; the checked-out one is shown beside it where it differs.
    return plain_table(rows, ["REPO", "DEFAULT BRANCH", "OUTCOME", "MOVED"])


def tasks_table(tasks: Iterable["Task"], today: "date") -> str:
    rows = []
    for t in tasks:
        age = t.age_days(today)
        rows.append([t.id, cut(t.title, 50), t.get("repo") or "-", t.get("priority") or "-", t.state,
                     "-" if age is None else f"{age}d"])
    return plain_table(rows, ["ID", "TITLE", "REPO", "PRIORITY", "STATE", "AGE"])


def host_check_table(checks: Sequence["HostCheck"]) -> str:
    """`inv host.check`'s table: each host's verdict (`ok`, or its problems; `unreachable: ` first when the host
    did not answer), its login time and workspace."""
    rows = []
    for check in checks:
        problems = check.problems
        verdict = "ok" if not problems else ("unreachable: " if not check.reachable else "") + "; ".join(problems)
        login = "-" if check.login_s is None else f"{check.login_s:.1f}s"
        rows.append([check.host.name, check.host.address, verdict, login, check.workspace or "-"])
    return plain_table(rows, ["HOST", "ADDRESS", "CHECK", "LOGIN", "WORKSPACE"])


def host_versions_lines(checks: Sequence["HostCheck"]) -> list[str]:
    """One line per host that answered: its tools' versions, in the host's words, escaped as in the table."""
    from lib.remote.connection import PROBE_TOOLS

    return [visible(f"{check.host.name}: " + "; ".join(f"{t} {check.tools.get(t, '?')}" for t in PROBE_TOOLS))
            for check in checks if check.tools]
