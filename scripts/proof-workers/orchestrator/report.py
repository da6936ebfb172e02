"""The status document: what `status --json` prints and the dashboard draws (one source for both)."""
from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, Callable

from lib import procs
from lib.errors import OrchestratorError, clip
from lib.statefile import read_json
from lib.views import plain_table, visible
from orchestrator import agents, alerts, commands, heartbeat, pauses, pulls, resume, worktree_setup
from orchestrator.act import agent_log
from orchestrator.config import Issue, ProjectConfig
from orchestrator.decide import Pause
from orchestrator.inputs import active_pauses, issue_views
from orchestrator.monitor import pause_holds_run
from orchestrator.probe import read_pid
from orchestrator.queue import IssueRef, IssueView, blocked, completed, eligible
from orchestrator.run import Run
from orchestrator.state import WorkerRecord, read_lines
from orchestrator.windows import try_tag
from orchestrator.wrapper import TRY_VAR

MAX_ALERT_LINES = 20


class IssueState(StrEnum):
    """An issue's `state` in the status document: its config status, what it waits on, or its PR's phase; in the
    order text status counts them (the value is what `status --json` says)."""

    COMPLETED = "completed"
    MERGED = "merged"
    FAILED = "failed"
    BLOCKED = "blocked"  # waits on a failed issue
    IN_PROGRESS = "in_progress"
    PR_OPEN = "pr_open"
    CI_FAILED = "ci_failed"
    CHANGES_REQUESTED = "changes_requested"
    WAITING = "waiting"  # waits on an issue not complete yet
    PENDING = "pending"


STATE_ORDER = tuple(IssueState)


class WorkerStatus(StrEnum):
    """What a worker's try is really doing (`_try_state`); the value is what `status --json` says."""

    IDLE = "idle"
    WAITING = "waiting"  # its try is prepared, not launched yet
    STARTING = "starting"
    SETTING_UP = "setting_up"
    RUNNING = "running"
    EXITED = "exited"
    WATCHING_PR = "watching_pr"
    GONE = "gone"


def _last_line(run: Run, record: WorkerRecord) -> str:
    from lib.statefile import open_regular_file

    try:
        with open_regular_file(agent_log(run, record)) or open("/dev/null", "rb") as log:  # a FIFO there: no wait
            log.seek(max(0, log.seek(0, 2) - 4096))
            lines = [l for l in log.read().decode("utf-8", "replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _try_state(run: Run, record: WorkerRecord,
               ours: Callable[[], set[int]]) -> tuple[WorkerStatus, int | None, float | None]:
    """What this worker's try is really doing, from its own files and processes (never the record alone):
    (status, exit code, when it ended). A try with an exit signal is never running; a group is this try's
    only while a member carries this run's tag (a pid file can be hours old, its id someone else's)."""
    if record.issue_number is None:
        return WorkerStatus.IDLE, None, None
    if record.pr.get("watching"):
        return WorkerStatus.WATCHING_PR, None, None  # no try runs: its PR is watched (orchestrator.pulls)
    code = run.files.read_signal(record.worker_id, record.try_id)
    if code is not None:
        try:
            ended = run.files.signal(record.worker_id, record.try_id).stat().st_mtime
        except OSError:
            ended = None
        return WorkerStatus.EXITED, code, ended
    setup = worktree_setup.read_state(worktree_setup.state_path(run.files.signal(record.worker_id, record.try_id)))
    if setup.get("state") == "running":  # its wrapper runs the worktree's set-up command, the agent after it
        alive = procs.processes_tagged(TRY_VAR, try_tag(run, record.worker_id, record.try_id))
        return (WorkerStatus.SETTING_UP if alive else WorkerStatus.GONE), None, None
    group = read_pid(run.files.pid_file(record.worker_id, record.try_id))
    if group is None:
        return (WorkerStatus.STARTING if record.launched else WorkerStatus.WAITING), None, None
    if set(procs.group_members(group)) & ours():
        return WorkerStatus.RUNNING, None, None
    return WorkerStatus.GONE, None, None  # no exit code and no process: the wrapper died (tmux, the machine, a kill)


EVENTS_SHOWN = 20


def _last_reasons(names: list[str], events: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[str, Any]]:
    """(project, issue) -> (reason, at) of its last `skip`, in one pass over the event lines; a line without a
    project (written before lines named it) counts for every project. When pushes were given up, the reason
    gets the last push error since the issue was (re)assigned or last pushed."""
    push_errors: dict[tuple[str, int], str | None] = {}
    reasons: dict[tuple[str, int], tuple[str, Any]] = {}
    for line in events:
        event = line.get("event")
        if not isinstance(event, dict):
            continue
        action = event.get("action")
        number = event.get("new_issue") if action == "reassign" else event.get("issue")
        if not isinstance(number, int):
            continue
        for key in [(event["project"], number)] if isinstance(event.get("project"), str) else \
                [(name, number) for name in names]:
            if action in ("reassign", "push"):
                push_errors[key] = None
            elif action == "push_failed":
                push_errors[key] = str(event.get("error"))
            elif action == "skip":
                reason, error = str(event.get("reason") or "failed"), push_errors.get(key)
                if error and reason.startswith("push failed") and error not in reason:
                    reason += f" (last push error: {error})"  # decide gave up: say on what
                reasons[key] = (reason, line.get("timestamp"))
    return reasons


def failures(projects: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One current reason per failed or blocked issue: `{"project", "issue", "state", "reason", "at"}`; a blocked
    issue names the failed issues it waits on."""
    reasons = _last_reasons([p["project"] for p in projects], events)
    out: list[dict[str, Any]] = []
    for project in projects:
        name = project["project"]
        for issue in project["issues"]:
            if issue["state"] == IssueState.FAILED:
                reason, at = reasons.get((name, issue["number"]),
                                         (f"failed (no reason recorded; status set in {project['config']})", None))
                out.append({"project": name, "issue": issue["number"], "state": IssueState.FAILED, "reason": reason,
                            "at": at})
    failed_at = {(f["project"], f["issue"]): f["at"] for f in out}
    for project in projects:
        for issue in project["issues"]:
            if issue["state"] == IssueState.BLOCKED:
                deps = issue["blocked_by"] or []
                times = [t for d in deps if (t := failed_at.get((project["project"], d)))]
                out.append({"project": project["project"], "issue": issue["number"], "state": IssueState.BLOCKED,
                            "reason": "waits on failed " + ", ".join(f"#{d}" for d in deps),
                            "at": max(times) if times else None})
    return out


def recent_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The event log's last lines, oldest first: `{"at", "action", ...}`."""
    return [{"at": line.get("timestamp"), **line["event"]} for line in events[-EVENTS_SHOWN:]
            if isinstance(line.get("event"), dict)]


def status_document(run: Run, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    records = run.files.load_workers(run.num_workers)
    tagged: list[set[int]] = []

    def ours() -> set[int]:
        """Every process of any try of this run, from one pass over /proc, made only if some try needs it."""
        if not tagged:
            tagged.append(set(procs.processes_tagged(TRY_VAR, f"{run.files.root}/worker-", prefix=True)))
        return tagged[0]

    views = issue_views(run, records)
    done = completed(views)
    by_ref = {v.ref: v for v in views}
    workers = []
    for r in records:
        cfg = next((c for c in run.configs if c.project == r.project), None)
        issue = cfg.issue(r.issue_number) if cfg and r.issue_number is not None else None
        status, exit_code, ended = _try_state(run, r, ours)
        until = ended if ended is not None else now
        workers.append({
            "worker": r.worker_id, "status": status, "exit_code": exit_code, "project": r.project,
            "issue": r.issue_number, "title": issue.title if issue else None, "stage": r.stage or None,
            "stage_index": r.stage_index if issue else None, "branch": r.branch, "worktree": r.worktree,
            "retries": r.retry_count, "try": r.try_id,
            "seconds": round(max(0.0, until - r.started_at), 1) if r.started_at and issue else None,
            "last_reason": r.last_reason or None, "last_log_line": _last_line(run, r),
            "agent": agents.public(r.agent) if r.agent and issue else None})
    projects: list[dict[str, Any]] = []
    usage = usage_totals(run)
    pr_doubts: list[str] = []  # each project's pull-requests.json is read once: its PRs and its warning
    for cfg in run.configs:
        paused = _pauses_of(run, cfg.project, now)
        waits = commands.waits(run.state_root, cfg.project)
        recorded = pulls.read(run.state_root, cfg.project)
        pr_doubts += [recorded.doubt] if recorded.doubt else []
        prs = pulls.pr_states(recorded,
                              {i.number: by_ref[IssueRef(cfg.project, i.number)].status for i in cfg.issues},
                              {r.issue_number for r in records if r.project == cfg.project and r.pr})
        issues: list[dict[str, Any]] = []
        for issue in cfg.issues:
            view = by_ref[IssueRef(cfg.project, issue.number)]
            state = IssueState(view.status)  # the config's status (config.IssueStatus)
            failed_deps = blocked(view, views)
            if state == IssueState.PENDING or view.resuming:  # one left in progress waits on its dependencies too
                if failed_deps:
                    state = IssueState.BLOCKED
                elif not all(IssueRef(cfg.project, d) in done for d in issue.depends_on):
                    state = IssueState.WAITING
            resuming_at = _resuming_at(cfg, issue) if view.resuming else None  # taken first by its worker
            phase, pr = prs.get(issue.number, (state, None))  # a PR's phase (pulls.PHASES) or its status
            state = IssueState(phase)
            issues.append({"number": issue.number, "title": issue.title, "status": view.status, "state": state,
                           "resuming_at": resuming_at,
                           "wave": issue.wave, "priority": issue.priority, "depends_on": list(issue.depends_on),
                           "pipeline_stage": issue.pipeline_stage, "stage": cfg.stage_name(issue),
                           "assigned_worker": issue.assigned_worker,
                           "blocked_by": failed_deps or None, "paused": paused.get(issue.number, []), "pr": pr,
                           **waits.get(issue.number, commands.no_waits()),
                           **usage.get((cfg.project, issue.number), {"cost_usd": 0.0, "turns": 0})})
        counts: dict[str, int] = {}
        for item in issues:
            counts[item["state"]] = counts.get(item["state"], 0) + 1
        projects.append({"project": cfg.project, "config": str(cfg.path), "pipeline": list(cfg.pipeline),
                         "waves": sorted({i.wave for i in cfg.issues}), "total": len(issues),
                         "counts": counts, "issues": issues, "paused": paused.get(None, []),
                         "commands": waits.get(None, {"commands": []})["commands"],
                         "cost_usd": round(sum(i["cost_usd"] for i in issues), 6),
                         "turns": sum(i["turns"] for i in issues)})
    held = {IssueRef(r.project, r.issue_number) for r in records if r.project and r.issue_number is not None}
    holding = active_pauses(run, now)
    events = read_lines(run.files.events)
    return {
        "session": run.session, "state_dir": str(run.files.root),
        "monitor": heartbeat.monitor_status(run.files.monitor), "workers": workers, "projects": projects,
        "next_eligible": [{"project": v.ref.project, "number": v.ref.number}
                          for v in eligible(views, held | _paused_refs(holding, views))[:5]],
        "failures": failures(projects, events), "events": recent_events(events),
        "alerts": (alerts.load(run.files.root) or {}).get("alerts", []),
        "warnings": [w for cfg in run.configs for w in cfg.warnings]  # the configs' own, as launch prints them
        + pr_doubts,
        "done": all(i["status"] in (IssueState.COMPLETED, IssueState.FAILED) or i["state"] == IssueState.BLOCKED
                    for p in projects for i in p["issues"]) and not held
                and not pause_holds_run(holding, views),
    }


def usage_totals(run: Run) -> dict[tuple[str, int], dict[str, Any]]:
    """(project, issue) -> {cost_usd, turns} summed over every try (and resumed session) in usage.json."""
    try:
        doc = read_json(run.files.usage, {})
    except (OSError, OrchestratorError):
        doc = {}
    tries = doc.get("tries") if isinstance(doc, dict) else None
    totals: dict[tuple[str, int], dict[str, Any]] = {}
    for entry in (tries.values() if isinstance(tries, dict) else []):
        if not isinstance(entry, dict) or not isinstance(entry.get("issue"), int):
            continue
        total = totals.setdefault((str(entry.get("project")), entry["issue"]), {"cost_usd": 0.0, "turns": 0})
        cost, turns = entry.get("cost_usd"), entry.get("turns")
        total["cost_usd"] = round(total["cost_usd"] + (cost if isinstance(cost, (int, float)) else 0.0), 6)
        total["turns"] += turns if isinstance(turns, int) else 0
    return totals


def _paused_refs(paused: tuple[Pause, ...], views: tuple[IssueView, ...]) -> set[IssueRef]:
    """Issues no worker may take now: of a paused project, or paused themselves."""
    projects = {p.project for p in paused if p.issue is None}
    issues = {IssueRef(p.project, p.issue) for p in paused if p.issue is not None}
    return {v.ref for v in views if v.ref.project in projects or v.ref in issues}


def _pauses_of(run: Run, project: str, now: float) -> dict[int | None, list[dict[str, Any]]]:
    """The reasons that hold now, as {reason, since, until, detail}: None -> the project's, N -> issue N's."""
    try:
        held = pauses.active(pauses.read(pauses.pause_file(run.state_root, project)), now)
    except OrchestratorError as err:
        return {None: [{"reason": "user", "since": None, "until": None, "detail": str(err)}]}
    return {key: [{k: e.get(k) for k in ("reason", "since", "until", "detail")} for e in entries]
            for key, entries in held.items()}


def paused_line(entries: list[dict[str, Any]]) -> str:
    return "; ".join(f"paused: {e['reason']}" + (f" until {e['until']}" if e.get("until") else "")
                     + (f" ({clip(str(e['detail']), 100)})" if e.get("detail") else "") for e in entries)


def count_text(project: dict[str, Any]) -> str:
    """`5 completed, 3 failed, 1 blocked of 9`: every state counted apart (failed is never "done")."""
    counts = project["counts"]
    order = [s for s in STATE_ORDER if s in counts] + sorted(s for s in counts if s not in STATE_ORDER)
    return ", ".join(f"{counts[s]} {s}" for s in order) + f" of {project['total']}"


def pr_text(pr: dict[str, Any] | None) -> str:
    """An issue's pull request as a cell: `#7 open, checks failing <url>` (- when it has none)."""
    if not pr:
        return "-"
    return f"#{pr.get('number')} {pr.get('state')}, checks {pr.get('checks')} {pr.get('url') or ''}".strip()


def usage_text(item: dict[str, Any]) -> str:
    """A project's or an issue's `12 turns $0.4321` so far (every try and resumed session)."""
    return f"{item.get('turns', 0)} turns ${item.get('cost_usd', 0.0):.4f}"


def agent_text(agent: dict[str, Any] | None) -> str:
    """`3 turns $0.0123 Bash: git commit ...`, led by `RATE LIMITED (attempt 4/10)` while the agent waits."""
    if not agent or agent.get("kind") == "command":
        return "-"
    parts = []
    limited = agent.get("rate_limited")
    if limited:
        parts.append(f"RATE LIMITED (attempt {limited.get('attempt')}/{limited.get('max') or '?'})")
    parts.append(f"{agent.get('turns') or 0} turns ${agent.get('cost_usd') or 0:.4f}")
    if agent.get("last_tool"):
        parts.append(str(agent["last_tool"]))
    return " ".join(parts)


def status_lines(doc: dict[str, Any]) -> list[str]:
    """The status document as text; every table cell and free text shows control characters escaped
    (a title or an agent's log line cannot drive the terminal)."""
    rows = [[f"worker-{w['worker']}", f"#{w['issue']}" if w["issue"] is not None else "-", w["stage"] or "-",
             w["status"], f"{w['seconds']:.0f}s" if w["seconds"] is not None else "-", w["retries"],
             agent_text(w.get("agent"))[:60], (w["last_log_line"] or "")[:60]] for w in doc["workers"]]
    lines = [visible(f"session {doc['session']}  (state: {doc['state_dir']})"),
             heartbeat.monitor_line(doc["monitor"], time.time()),
             plain_table(rows, ["worker", "issue", "stage", "status", "time", "retries", "agent", "last log line"])]
    lines += [visible(f"warning: {w}") for w in doc.get("warnings", [])]
    for project in doc["projects"]:
        lines.append("")
        lines.append(visible(f"{project['project']}: {count_text(project)}  pipeline: "
                             + " -> ".join(project["pipeline"]) + f"  {usage_text(project)}"))
        if project["paused"]:
            lines.append(visible(paused_line(project["paused"])))
        lines.append(plain_table([[f"#{i['number']}", i["title"][:50], state_text(i), i["stage"] or "all done",
                                   i["wave"], i["priority"], ",".join(f"#{d}" for d in i["depends_on"]) or "-",
                                   usage_text(i)]
                                  + ([pr_text(i.get("pr"))] if any(j.get("pr") for j in project["issues"]) else [])
                                  for i in project["issues"]],
                                 ["issue", "title", "state", "stage", "wave", "prio", "depends on", "usage"]
                                 + (["pr"] if any(j.get("pr") for j in project["issues"]) else [])))
        lines += [visible(f"#{i['number']} {paused_line(i['paused'])}") for i in project["issues"] if i["paused"]]
        lines += [visible(line) for line in wait_lines(project)]
    if doc["next_eligible"]:
        lines.append("next: " + ", ".join(f"#{n['number']}" for n in doc["next_eligible"]))
    for failure in doc["failures"]:
        lines.append(visible(f"{failure['state']}: {failure['project']} #{failure['issue']}: {failure['reason']}"))
    if len(doc["alerts"]) > MAX_ALERT_LINES:
        lines.append(f"({len(doc['alerts']) - MAX_ALERT_LINES} earlier alert(s) of this run: status --json)")
    lines += [visible(alert_line(a)) for a in doc["alerts"][-MAX_ALERT_LINES:]]
    return lines


def _resuming_at(cfg: ProjectConfig, issue: Issue) -> str | None:
    """The stage an issue left in progress is resumed at: its own, or the first when neither its worktree nor its
    branch is left (the dry run's local guess, orchestrator.resume)."""
    try:
        source = resume.left_behind(cfg.repo_for(issue), cfg.worktree_for(issue), cfg.branch_for(issue), origin=True)
    except OrchestratorError:  # its repository is gone or git hangs: what the config says
        source = None
    return cfg.pipeline[0] if source == resume.FRESH else cfg.stage_name(issue)


def state_text(issue: dict[str, Any]) -> str:
    """An issue's state; `in_progress (resuming at write_tests)` for one left in progress that its worker takes
    first."""
    return f"{issue['state']} (resuming at {issue['resuming_at']})" if issue.get("resuming_at") else issue["state"]


def alert_line(alert: dict[str, Any]) -> str:
    where = f"#{alert.get('issue')}" if alert.get("issue") is not None else str(alert.get("project"))
    worker = f" worker-{alert['worker']}" if alert.get("worker") is not None else ""
    return f"alert: {alert.get('kind')} {where}{worker} at {alert.get('at')}: {clip(str(alert.get('detail')), 200)}"


def wait_lines(project: dict[str, Any]) -> list[str]:
    """What waits, a line each: commands not applied yet (`#3 waits: send queued at T`), a refusal not shown yet
    (`#3 refused: retry: ...`), follow-ups kept for an issue's next try (and when no try may come to take them)."""
    lines = []
    last = len(project["pipeline"]) - 1
    for where, item in [(project["project"], project)] + [(f"#{i['number']}", i) for i in project["issues"]]:
        pending = [c for c in item.get("commands") or [] if c["state"] in ("queued", "taken")]
        if pending:
            lines.append(f"{where} waits: " + ", ".join(f"{c['verb']} {c['state']} at {c['at']}" for c in pending))
        lines += [f"{where} refused: {c['error']} (at {c['at']})" for c in item.get("commands") or []
                  if c["state"] == "refused" and not c["reported"]]
        lines += [f"{where}: 1 follow-up given to {f['given_in']}, whose wrapper could not be stopped: its agent may "
                  f"or may not get it (send it again if no agent acts on it): \"{f['words']}\""
                  for f in item.get("followups_in_doubt") or []]
        kept = item.get("followups") or []
        if not kept:
            continue
        line = (f"{where}: {len(kept)} follow-up{'s' if len(kept) > 1 else ''} kept for its next try: "
                f"\"{kept[0]['words']}\"" + (f" (+{len(kept) - 1} more)" if len(kept) > 1 else ""))
        number = item.get("number")
        if item.get("status") == "completed":
            line += f"; #{number} completed before a try took them: none will"
        elif item.get("status") == "in_progress" and item.get("pipeline_stage", 0) >= last:
            line += (f"; its running try is its last stage: if it completes #{number}, no try takes "
                     f"{'them' if len(kept) > 1 else 'it'} (kill {number}, then retry {number}, to act on "
                     f"{'them' if len(kept) > 1 else 'it'} now)")
        lines.append(line)
    return lines


def unreported_refusals(doc: dict[str, Any]) -> dict[str, list[str]]:
    """project -> the ids of refused commands a text status shows now (then marked: shown once)."""
    out: dict[str, list[str]] = {}
    for project in doc["projects"]:
        for item in [project, *project["issues"]]:
            out.setdefault(project["project"], []).extend(
                c["id"] for c in item.get("commands") or [] if c["state"] == "refused" and not c["reported"])
    return out
