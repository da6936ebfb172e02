"""The status document: what `status --json` prints and the dashboard draws (one source for both)."""
from __future__ import annotations

import time
from typing import Any

from lib.errors import OrchestratorError, clip
from orchestrator import alerts, pauses
from orchestrator.monitor import active_pauses, issue_views, pause_holds_run
from orchestrator.decide import Pause
from orchestrator.queue import IssueRef, IssueView, blocked, completed, eligible
from orchestrator.run import Run
from orchestrator.state import read_lines

MAX_ALERT_LINES = 20


def _last_line(run: Run, worker: int) -> str:
    try:
        with open(run.files.log(worker), "rb") as log:
            log.seek(max(0, log.seek(0, 2) - 4096))
            lines = [l for l in log.read().decode("utf-8", "replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def status_document(run: Run, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    records = run.files.load_workers(run.num_workers)
    views = issue_views(run, records)
    done = completed(views)
    by_ref = {v.ref: v for v in views}
    workers = []
    for r in records:
        cfg = next((c for c in run.configs if c.project == r.project), None)
        issue = cfg.issue(r.issue_number) if cfg and r.issue_number is not None else None
        workers.append({
            "worker": r.worker_id, "status": r.status, "project": r.project, "issue": r.issue_number,
            "title": issue.title if issue else None, "stage": r.stage or None,
            "stage_index": r.stage_index if issue else None, "branch": r.branch, "worktree": r.worktree,
            "retries": r.retry_count, "try": r.try_id,
            "seconds": round(now - r.started_at, 1) if r.started_at and issue else None,
            "last_reason": r.last_reason or None, "last_log_line": _last_line(run, r.worker_id)})
    projects: list[dict[str, Any]] = []
    for cfg in run.configs:
        paused = _pauses_of(run, cfg.project, now)
        issues: list[dict[str, Any]] = []
        for issue in cfg.issues:
            view = by_ref[IssueRef(cfg.project, issue.number)]
            state = view.status
            failed_deps = blocked(view, views)
            if state == "pending":
                if failed_deps:
                    state = "blocked"
                elif not all(IssueRef(cfg.project, d) in done for d in issue.depends_on):
                    state = "waiting"
            issues.append({"number": issue.number, "title": issue.title, "status": view.status, "state": state,
                           "wave": issue.wave, "priority": issue.priority, "depends_on": list(issue.depends_on),
                           "pipeline_stage": issue.pipeline_stage, "stage": cfg.pipeline[issue.pipeline_stage],
                           "assigned_worker": issue.assigned_worker,
                           "blocked_by": failed_deps or None, "paused": paused.get(issue.number, [])})
        counts: dict[str, int] = {}
        for item in issues:
            counts[item["state"]] = counts.get(item["state"], 0) + 1
        projects.append({"project": cfg.project, "config": str(cfg.path), "pipeline": list(cfg.pipeline),
                         "waves": sorted({i.wave for i in cfg.issues}), "total": len(issues),
                         "counts": counts, "issues": issues, "paused": paused.get(None, [])})
    held = {IssueRef(r.project, r.issue_number) for r in records if r.project and r.issue_number is not None}
    holding = active_pauses(run, now)
    failures = [e["event"] for e in read_lines(run.files.events)[-200:]
                if e.get("event", {}).get("action") in ("skip", "push_failed", "error")]
    return {
        "session": run.session, "state_dir": str(run.files.root), "workers": workers, "projects": projects,
        "next_eligible": [{"project": v.ref.project, "number": v.ref.number}
                          for v in eligible(views, held | _paused_refs(holding, views))[:5]],
        "failures": failures[-10:],
        "alerts": (alerts.load(run.files.root) or {}).get("alerts", []),
        "done": all(i["status"] in ("completed", "failed") or i["state"] == "blocked"
                    for p in projects for i in p["issues"]) and not held
                and not pause_holds_run(holding, views),
    }


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


def status_lines(doc: dict[str, Any]) -> list[str]:
    from tabulate import tabulate

    rows = [[f"worker-{w['worker']}", f"#{w['issue']}" if w["issue"] is not None else "-", w["stage"] or "-",
             w["status"], f"{w['seconds']:.0f}s" if w["seconds"] is not None else "-", w["retries"],
             (w["last_log_line"] or "")[:60]] for w in doc["workers"]]
    lines = [f"session {doc['session']}  (state: {doc['state_dir']})",
             tabulate(rows, headers=["worker", "issue", "stage", "status", "time", "retries", "last log line"])]
    for project in doc["projects"]:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(project["counts"].items()))
        lines.append("")
        lines.append(f"{project['project']}: {counts} of {project['total']}  pipeline: "
                     + " -> ".join(project["pipeline"]))
        if project["paused"]:
            lines.append(paused_line(project["paused"]))
        lines.append(tabulate([[f"#{i['number']}", i["title"][:50], i["state"], i["stage"], i["wave"], i["priority"],
                                ",".join(f"#{d}" for d in i["depends_on"]) or "-"] for i in project["issues"]],
                              headers=["issue", "title", "state", "stage", "wave", "prio", "depends on"]))
        lines += [f"#{i['number']} {paused_line(i['paused'])}" for i in project["issues"] if i["paused"]]
    if doc["next_eligible"]:
        lines.append("next: " + ", ".join(f"#{n['number']}" for n in doc["next_eligible"]))
    for failure in doc["failures"]:
        lines.append(f"failure: #{failure.get('issue')}: {failure.get('reason') or failure.get('error')}")
    if len(doc["alerts"]) > MAX_ALERT_LINES:
        lines.append(f"({len(doc['alerts']) - MAX_ALERT_LINES} earlier alert(s) of this run: status --json)")
    lines += [alert_line(a) for a in doc["alerts"][-MAX_ALERT_LINES:]]
    return lines


def alert_line(alert: dict[str, Any]) -> str:
    where = f"#{alert.get('issue')}" if alert.get("issue") is not None else str(alert.get("project"))
    worker = f" worker-{alert['worker']}" if alert.get("worker") is not None else ""
    return f"alert: {alert.get('kind')} {where}{worker} at {alert.get('at')}: {clip(str(alert.get('detail')), 200)}"
