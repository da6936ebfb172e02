"""The status document: what `status --json` prints and the dashboard draws (one source for both)."""
from __future__ import annotations

import time
from typing import Any

from orchestrator.monitor import issue_views
from orchestrator.queue import IssueRef, blocked, completed, eligible
from orchestrator.run import Run
from orchestrator.state import read_lines


def _last_line(run: Run, worker: int) -> str:
    try:
        with open(run.files.log(worker), "rb") as log:
            log.seek(max(0, log.seek(0, 2) - 4096))
            lines = [l for l in log.read().decode("utf-8", "replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


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
            if issue["state"] == "failed":
                reason, at = reasons.get((name, issue["number"]),
                                         (f"failed (no reason recorded; status set in {project['config']})", None))
                out.append({"project": name, "issue": issue["number"], "state": "failed", "reason": reason, "at": at})
    failed_at = {(f["project"], f["issue"]): f["at"] for f in out}
    for project in projects:
        for issue in project["issues"]:
            if issue["state"] == "blocked":
                deps = issue["blocked_by"] or []
                times = [t for d in deps if (t := failed_at.get((project["project"], d)))]
                out.append({"project": project["project"], "issue": issue["number"], "state": "blocked",
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
                           "blocked_by": failed_deps or None})
        counts: dict[str, int] = {}
        for item in issues:
            counts[item["state"]] = counts.get(item["state"], 0) + 1
        projects.append({"project": cfg.project, "config": str(cfg.path), "pipeline": list(cfg.pipeline),
                         "waves": sorted({i.wave for i in cfg.issues}), "total": len(issues),
                         "counts": counts, "issues": issues})
    held = {IssueRef(r.project, r.issue_number) for r in records if r.project and r.issue_number is not None}
    events = read_lines(run.files.events)
    return {
        "session": run.session, "state_dir": str(run.files.root), "workers": workers, "projects": projects,
        "next_eligible": [{"project": v.ref.project, "number": v.ref.number} for v in eligible(views, held)[:5]],
        "failures": failures(projects, events), "events": recent_events(events),
        "done": all(i["status"] in ("completed", "failed") or i["state"] == "blocked"
                    for p in projects for i in p["issues"]) and not held,
    }


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
        lines.append(tabulate([[f"#{i['number']}", i["title"][:50], i["state"], i["stage"], i["wave"], i["priority"],
                                ",".join(f"#{d}" for d in i["depends_on"]) or "-"] for i in project["issues"]],
                              headers=["issue", "title", "state", "stage", "wave", "prio", "depends on"]))
    if doc["next_eligible"]:
        lines.append("next: " + ", ".join(f"#{n['number']}" for n in doc["next_eligible"]))
    for failure in doc["failures"]:
        lines.append(f"{failure['state']}: {failure['project']} #{failure['issue']}: {failure['reason']}")
    return lines
