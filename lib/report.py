"""The weekly status report: fill reports/templates/weekly-status.md from state/ and the task files."""
from __future__ import annotations

import hashlib
import json
import math
import re
import stat
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

from lib.backlog import STATES, Task, TaskStore, readable
from lib.errors import OrchestratorError, clip
from lib.paths import CHECKOUT_ROOT, Paths
from lib.statefile import UnreadableFile, read_json, read_regular

TEMPLATE = Path("templates") / "weekly-status.md"
PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
PERIOD_DAYS = 7
MAX_WARNINGS = 20  # unknown placeholders named one by one
MAX_REPORT_CHARS = 64 * 2 ** 20
MISSING = object()  # a state file that does not exist (a file holding `null` is one of the wrong shape)


def parse_day(value: str, flag: str, default: date) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise OrchestratorError(f"{flag} {value!r}: expected a date like 2026-11-26") from None


def markdown_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A GitHub-flavoured markdown table; a `|` or line break inside a cell cannot break the table, and a
    control character (ESC, BEL, ...) shows escaped instead of driving the terminal that prints the report."""
    from tabulate import tabulate

    from lib.views import visible

    def cell(value: object) -> str:
        return visible(" ".join(str("-" if value is None or value == "" else value).split())).replace("|", "\\|")

    return tabulate([[cell(v) for v in row] for row in rows], headers=list(headers), tablefmt="github")


def from_state(path: Path, render: Callable[[Any], str], missing: str) -> str:
    """A state file rendered, `missing` without one; a file of another shape is a one-line error."""
    try:
        document = read_json(path, default=MISSING)
    except OSError as err:
        raise OrchestratorError(f"{path}: cannot read: {err.strerror}") from None
    if document is MISSING:
        return missing
    try:
        return render(document)
    except (AttributeError, TypeError, KeyError, ValueError):
        raise OrchestratorError(f"{path}: not the shape this tool writes (an older tool's file?); "
                                "run the command that writes it again") from None


def repo_statuses(document: Any) -> str:
    rows = []
    for repo in document.get("repos", []):
        if repo.get("error"):
            state = f"error: {repo['error']}"
        else:
            state = "clean" if repo.get("clean") else f"{repo.get('dirty')} changed"
        if repo.get("upstream") is None:
            ahead_behind = "no upstream"
        elif repo.get("ahead") is None:
            ahead_behind = "upstream gone"
        else:
            ahead_behind = f"+{repo['ahead']}/-{repo['behind']}"
        last = repo.get("last_commit") or {}
        rows.append([repo.get("name"), repo.get("branch") or ("(detached)" if repo.get("detached") else None),
                     state, ahead_behind,
                     f"{last.get('sha', '')[:7]} {last.get('subject', '')} ({last.get('date', '')[:10]})"
                     if last else None])
    table = markdown_table(rows, ["Repo", "Branch", "Status", "Ahead/Behind", "Last commit"])
    return f"Scanned {document.get('generated_at', '?')}.\n\n{table}"


def test_results(document: Any) -> str:
    rows = [[r.get("repo"), r.get("status"), f"{r.get('duration_s') or 0:.1f}s", r.get("reason"),
             (r.get("finished_at") or "")[:16]] for r in document.get("results", [])]
    summary = document.get("summary", {})
    counts = ", ".join(f"{summary[k]} {k}" for k in ("passed", "failed", "timeout", "skipped", "error")
                       if summary.get(k))
    table = markdown_table(rows, ["Repo", "Status", "Time", "Detail", "Finished"])
    total = summary.get("total", len(rows))
    return f"{total} repo{'' if total == 1 else 's'}: {counts or 'none'} " \
           f"(run {document.get('generated_at', '?')}).\n\n{table}"


WORKER_LOG_LIMIT = 256 * 2 ** 20  # orchestrator-log.jsonl grows with a run; far above any week's log


def _tally(value: Any, kind: type) -> float:
    """A cost or count as the monitor would add it: a negative, NaN, infinite or non-number value adds nothing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        return 0
    return value if math.isfinite(value) and value >= 0 else 0


def _worker_events(path: Path) -> list[tuple[str, int, str, int, str]]:
    """(timestamp, line, action, issue, project) of each mark_complete, skip and reassign line of a run's log;
    a line cut by a crash (or not JSON, or not UTF-8) is skipped, as the monitor skips it."""
    try:
        data = read_regular(path, WORKER_LOG_LIMIT)
    except UnreadableFile as err:
        raise OrchestratorError(f"{err} (the proof workers' event log)") from None
    out = []
    for index, line in enumerate((data or b"").decode("utf-8", "replace").splitlines()):
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError):  # cut by a crash, or nested too deep for json
            continue
        event = doc.get("event") if isinstance(doc, dict) else None
        if not isinstance(event, dict):
            continue
        action = event.get("action")
        number = event.get("new_issue") if action == "reassign" else event.get("issue")
        if action in ("mark_complete", "skip", "reassign") and isinstance(number, int) \
                and not isinstance(number, bool):
            project = event.get("project")
            out.append((str(doc.get("timestamp") or ""), index, action, number,
                        project if isinstance(project, str) else path.parent.name))
    return out


def proof_workers(state_dir: Path) -> str:
    """Per project: issues completed and failed so far, and turns and cost summed over every try (and resumed
    session), from each run's state/<lead project>/ files (usage.json, orchestrator-log.jsonl); tmux is never
    asked. A log line naming no project (written by an older monitor) counts for its run's lead project."""
    try:
        runs = sorted(p for p in state_dir.iterdir() if p.is_dir())
    except OSError:
        runs = []
    usage: dict[str, list[float]] = {}
    lines: list[tuple[str, int, int, str, int, str]] = []
    for order, run_dir in enumerate(runs):
        path = run_dir / "usage.json"
        try:
            document = read_json(path, default=MISSING)
        except OSError as err:
            raise OrchestratorError(f"{path}: cannot read: {err.strerror}") from None
        if document is not MISSING:
            tries = document.get("tries") if isinstance(document, dict) else None
            if not isinstance(tries, dict) or not all(isinstance(e, dict) for e in tries.values()):
                raise OrchestratorError(f"{path}: not the shape the proof workers' monitor writes; "
                                        "move it away to report without it")
            for entry in tries.values():
                if isinstance(entry.get("project"), str) and isinstance(entry.get("issue"), int):
                    total = usage.setdefault(entry["project"], [0, 0.0])
                    total[0] += _tally(entry.get("turns"), int)
                    total[1] += _tally(entry.get("cost_usd"), float)
        lines += [(at, order, index, action, number, project)
                  for at, index, action, number, project in _worker_events(run_dir / "orchestrator-log.jsonl")]
    state: dict[tuple[str, int], str] = {}
    for _, _, _, action, number, project in sorted(lines):  # a project led one run and joined another: by time
        state[(project, number)] = action
    projects = sorted(set(usage) | {project for project, _ in state})
    if not projects:
        return "_No proof-worker runs yet._"
    rows = []
    for name in projects:
        turns, cost = usage.get(name, [0, 0.0])
        ends = [a for (p, _), a in state.items() if p == name]
        rows.append([name, ends.count("mark_complete"), ends.count("skip"), turns, f"${cost:.4f}"])
    table = markdown_table(rows, ["Project", "Completed", "Failed", "Turns", "Cost"])
    all_turns, all_cost = sum(u[0] for u in usage.values()), sum(u[1] for u in usage.values())
    return f"Issues completed and failed so far; turns and cost over every try. " \
           f"Total: {all_turns} turns, ${all_cost:.4f}.\n\n{table}"


def active_tasks(tasks: list[Task], today: date) -> str:
    if not tasks:
        return "_No active tasks._"
    return markdown_table([[t.id, t.title, t.get("repo"), t.get("priority"), t.get("assigned"), t.get("started"),
                            None if t.age_days(today) is None else f"{t.age_days(today)}d"] for t in tasks],
                          ["ID", "Title", "Repo", "Priority", "Assigned", "Started", "Age"])


def completed_tasks(tasks: list[Task], since: date, until: date) -> str:
    done = [t for t in tasks if (when := t.stamp_date("completed")) and since <= when <= until]
    period = f"{since.isoformat()} to {until.isoformat()}"
    if not done:
        return f"_No tasks completed from {period}._"
    table = markdown_table([[t.id, t.title, t.get("repo"), t.get("type"), t.get("completed")] for t in done],
                           ["ID", "Title", "Repo", "Type", "Completed"])
    return f"{len(done)} completed from {period}.\n\n{table}"


def find_template(paths: Paths) -> Path:
    """The home's template if it has one, else the shipped one."""
    own = paths.reports_dir / TEMPLATE
    return own if own.exists() else CHECKOUT_ROOT / "reports" / TEMPLATE


def fill(template: str, values: dict[str, Callable[[], str]], where: str) -> tuple[str, list[str]]:
    """Replace every known {{name}}; leave unknown ones as they are and say where each one is."""
    warnings = []
    unknown, line, counted = 0, 1, 0
    for match in PLACEHOLDER_RE.finditer(template):
        if match.group(1) not in values:
            unknown += 1
            if unknown <= MAX_WARNINGS:
                line += template.count("\n", counted, match.start())  # counted once: linear in the template
                counted = match.start()
                warnings.append(f"{where}:{line}: unknown placeholder {clip(match.group(0))} left as is "
                                f"(known: {', '.join('{{' + k + '}}' for k in values)})")
    if unknown > MAX_WARNINGS:
        warnings.append(f"{where}: ... and {unknown - MAX_WARNINGS} more unknown placeholders left as they are")
    cache: dict[str, str] = {}
    size = len(template)

    def replace(match: re.Match[str]) -> str:
        nonlocal size
        name = match.group(1)
        if name not in values:
            return match.group(0)
        if name not in cache:
            cache[name] = values[name]()
        size += len(cache[name]) - len(match.group(0))
        if size > MAX_REPORT_CHARS:  # a placeholder repeated a million times must not fill the memory
            raise OrchestratorError(f"{where}: the report would be larger than {MAX_REPORT_CHARS // 2 ** 20} M "
                                    f"characters ({{{{{name}}}}} and others repeated); shorten the template")
        return cache[name]

    return PLACEHOLDER_RE.sub(replace, template), warnings


def build_report(paths: Paths, day: date, since: date, notes: str, template_path: Path) -> tuple[str, list[str]]:
    if since > day:
        raise OrchestratorError(f"--since {since.isoformat()} is after the report date {day.isoformat()}")
    try:
        data = read_regular(template_path)  # a FIFO would hang the report, /dev/zero fill the memory
        if data is None:
            raise OrchestratorError(f"{template_path}: cannot read the report template: not found")
        template = data.decode("utf-8")
    except UnreadableFile as err:
        raise OrchestratorError(f"{err} (the report template)") from None
    except UnicodeDecodeError as err:
        raise OrchestratorError(f"{template_path}: cannot read the report template ({err})") from None
    tasks = TaskStore(paths.tasks_dir).list()
    by_state = {state: [t for t in tasks if t.state == state] for state in STATES}
    values: dict[str, Callable[[], str]] = {
        "date": day.isoformat,
        "repo_statuses": lambda: from_state(paths.repo_status_file, repo_statuses, "_No scan yet: run `inv scan`._"),
        "active_tasks": lambda: active_tasks(by_state["active"], day),
        "completed_tasks": lambda: completed_tasks(by_state["completed"], since, day),
        "test_results": lambda: from_state(paths.test_results_file, test_results,
                                           "_No test run yet: run `inv test-all`._"),
        "proof_workers": lambda: proof_workers(paths.state_dir),
        "notes": lambda: readable(notes.strip()) or "_No notes._",  # argv bytes that are not UTF-8: U+FFFD
    }
    text, warnings = fill(template, values, str(template_path))
    unreadable = [t for t in by_state["completed"] if t.get("completed") and not t.stamp_date("completed")]
    return text, warnings + [f"{t.path}:{t.line}: {t.id} has completed {t.get('completed')!r}, not a YYYY-MM-DD "
                             "date: left out of the report" for t in unreadable]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _edited_by_hand(out: Path, written: Path) -> bool:
    """Whether `out` exists with bytes other than the ones this tool last wrote there (a user's edits)."""
    try:
        if stat.S_ISDIR(out.stat().st_mode):
            return False  # the write below says what is wrong
    except OSError:
        return False  # absent, or a path that cannot exist (reports/ is a file): the write below says so
    try:
        data = read_regular(out)
    except UnreadableFile:
        return True  # a FIFO, a device, a huge or unreadable file: not the report this tool wrote
    if data is None:
        return False
    current = _digest(data)
    record = read_json(written, default={})
    return not (isinstance(record, dict) and record.get(out.name) == current)


def write_report(paths: Paths, day_text: str = "", since_text: str = "", notes: str = "",
                 today: date | None = None, force: bool = False) -> tuple[Path, list[str]]:
    """Write reports/weekly-status-DATE.md under the home; returns its path and the warnings.

    A report of that date that was changed since this tool wrote it (a user's
    notes added by hand) is never replaced without `force`.
    """
    from lib.statefile import update_json, write_text

    day = parse_day(day_text, "--date", today or date.today())
    try:
        since = parse_day(since_text, "--since", day) if since_text else day - timedelta(days=PERIOD_DAYS - 1)
    except OverflowError:
        raise OrchestratorError(f"--date {day.isoformat()}: its {PERIOD_DAYS}-day period would start before "
                                "year 1 (give --since)") from None
    text, warnings = build_report(paths, day, since, notes, find_template(paths))
    out = paths.reports_dir / f"weekly-status-{day.isoformat()}.md"
    written = paths.state_dir / "reports-written.json"
    if not force and _edited_by_hand(out, written):
        raise OrchestratorError(f"{out}: exists and was changed since `inv report` wrote it (or was not written "
                                "by it); not replaced: move it away, or pass --force to replace it")
    try:
        write_text(out, text)
    except OSError as err:
        raise OrchestratorError(f"{out}: cannot write the report: {err.strerror}") from None
    try:
        update_json(written, lambda record: {**(record if isinstance(record, dict) else {}),
                                             out.name: _digest(text.encode())}, default={})
    except OSError as err:
        warnings.append(f"{written}: cannot record the report's checksum ({err.strerror}); "
                        "the next `inv report` of this date will need --force")
    return out, warnings
