"""dashboard: a live, read-only view (rich Live) of the same document `status --json` prints."""
from __future__ import annotations

import time
from typing import Any, Callable

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from lib.views import visible
from orchestrator.heartbeat import monitor_line
from orchestrator.report import (IssueState, agent_text, alert_line, count_text, paused_line, pr_text, usage_text,
                                 wait_lines)

STATE_STYLE = {IssueState.COMPLETED: "green", IssueState.FAILED: "red", IssueState.BLOCKED: "red",
               IssueState.IN_PROGRESS: "yellow", IssueState.PENDING: "white", IssueState.WAITING: "dim",
               IssueState.MERGED: "green", IssueState.PR_OPEN: "cyan", IssueState.CI_FAILED: "red",
               IssueState.CHANGES_REQUESTED: "magenta"}


def render(doc: dict[str, Any]) -> Group:
    """One frame. Every title, log line and reason is a Text (never parsed as markup)."""
    monitor = doc["monitor"]
    workers = Table(title=Text(f"session {doc['session']}   " + monitor_line(monitor, time.time()),
                               style="" if monitor["running"] else "bold red"), expand=True)
    for column in ("worker", "issue", "stage", "status", "time", "retries", "agent", "last log line"):
        workers.add_column(column, overflow="ellipsis", no_wrap=column not in ("agent", "last log line"))
    for w in doc["workers"]:
        workers.add_row(f"worker-{w['worker']}",
                        Text(visible(f"#{w['issue']} {w['title'] or ''}") if w["issue"] else "-"),
                        w["stage"] or "-", w["status"], f"{w['seconds']:.0f}s" if w["seconds"] is not None else "-",
                        str(w["retries"]),
                        Text(visible(agent_text(w.get("agent"))),
                             style="bold red" if (w.get("agent") or {}).get("rate_limited") else ""),
                        Text(visible(w["last_log_line"] or "")))
    parts: list[Any] = [workers]
    for project in doc["projects"]:
        finished = sum(project["counts"].get(s, 0) for s in (IssueState.COMPLETED, IssueState.FAILED,
                                                              IssueState.BLOCKED))
        issues = Table(expand=True, show_edge=False)
        with_prs = any(i.get("pr") for i in project["issues"])
        columns = ("issue", "title", "state", "stage", "wave", "depends on", "usage") + (("pr",) if with_prs else ())
        for column in columns:
            issues.add_column(column, overflow="ellipsis", no_wrap=True)
        for i in project["issues"]:
            issues.add_row(f"#{i['number']}", Text(visible(i["title"].replace("\n", " "))),
                           Text(i["state"], style=STATE_STYLE.get(i["state"], "")), i["stage"], str(i["wave"]),
                           ",".join(f"#{d}" for d in i["depends_on"]) or "-", usage_text(i),
                           *([Text(visible(pr_text(i.get("pr"))))] if with_prs else []))
        header = Text(f"{project['project']}: {count_text(project)}   pipeline: "
                      + " -> ".join(project["pipeline"]) + "   waves: " + ", ".join(map(str, project["waves"]))
                      + "   " + usage_text(project))
        paused = [Text(visible(f"{project['project']} " + paused_line(project["paused"])), style="bold yellow")
                  ] if project.get("paused") else []
        paused += [Text(visible(f"#{i['number']} " + paused_line(i["paused"])), style="yellow")
                   for i in project["issues"] if i.get("paused")]
        paused += [Text(visible(line), style="cyan") for line in wait_lines(project)]
        # A bare ProgressBar ends without a line break, and the table's header row was drawn over by it.
        bar = Table.grid(expand=True)
        bar.add_row(ProgressBar(total=max(project["total"], 1), completed=finished))
        parts.append(Panel(Group(header, *paused, bar, issues)))
    if doc["next_eligible"]:
        parts.append(Text("next eligible: " + ", ".join(f"#{n['number']}" for n in doc["next_eligible"])))
    for failure in doc["failures"]:
        reason = failure.get("reason") or failure.get("error")
        parts.append(Text(visible(f"failure #{failure.get('issue')}: {reason}"), style="red"))
    parts += [Text(visible(alert_line(alert)), style="bold red") for alert in doc.get("alerts", [])[-10:]]
    return Group(*parts)


def run_dashboard(load: Callable[[], dict[str, Any]], interval: float = 2.0, console: Console | None = None,
                  frames: int | None = None) -> None:
    """Redraw every `interval` seconds until Ctrl-C (or `frames` redraws, for tests)."""
    shown = 0
    try:
        with Live(render(load()), console=console, refresh_per_second=4, screen=False) as live:
            while frames is None or shown < frames:
                time.sleep(interval)
                live.update(render(load()))
                shown += 1
    except KeyboardInterrupt:
        pass
