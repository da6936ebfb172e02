"""What decide reads of a run besides the probes: issue views, worker views, the pauses that hold, settings.

The monitor's cycle, a launch's plan, a verb applying the queue and the status document read them alike.
"""
from __future__ import annotations

from lib.errors import OrchestratorError
from orchestrator import pauses, pulls
from orchestrator.config import IssueStatus
from orchestrator.decide import Pause, PrWork, Settings, WorkerView
from orchestrator.queue import IssueRef, IssueView
from orchestrator.run import Run
from orchestrator.state import WorkerRecord


def issue_views(run: Run, records: list[WorkerRecord]) -> tuple[IssueView, ...]:
    """Issues as decide sees them: an in_progress issue no worker holds is resumed first by the worker the config
    names (queue.IssueView.resume_worker), or is pending again when it names none (no issue lost)."""
    held = {IssueRef(r.project, r.issue_number) for r in records if r.project and r.issue_number is not None}
    views = []
    for cfg in run.configs:
        for issue in cfg.issues:
            ref = IssueRef(cfg.project, issue.number)
            status, resume_worker = issue.status, None
            if status == IssueStatus.IN_PROGRESS and ref not in held:
                if issue.assigned_worker is not None and not cfg.stages_done(issue):
                    resume_worker = issue.assigned_worker
                else:
                    status = IssueStatus.PENDING
            if status == IssueStatus.PENDING and cfg.stages_done(issue):
                status = IssueStatus.COMPLETED  # pipeline_stage past the last stage: all stages done (a config warning)
            views.append(IssueView(ref, status, issue.wave, issue.priority, issue.depends_on, len(cfg.pipeline),
                                   resume_worker))
    return tuple(views)


def settings_of(run: Run) -> Settings:
    return Settings(run.lead.max_retries, run.lead.stall_timeout, run.lead.wall_clock_timeout)


def worker_views(records: list[WorkerRecord], run: Run | None = None) -> tuple[WorkerView, ...]:
    def pr_work(record: WorkerRecord) -> PrWork | None:
        cfg = next((c for c in run.configs if c.project == record.project), None) if run else None
        return pulls.work_of(cfg, record) if cfg is not None and record.issue_number is not None else None

    return tuple(WorkerView(r.worker_id, IssueRef(r.project, r.issue_number)
                            if r.project and r.issue_number is not None else None,
                            r.stage_index, r.retry_count, r.nudged, r.launched, r.try_id, r.push_failures,
                            r.start_failures, r.lost_tries, pr_work(r))
                 for r in records)


def active_pauses(run: Run, now: float) -> tuple[Pause, ...]:
    """Every pause reason that holds now, per project of the run (decide's input: journalled, replayed)."""
    out: list[Pause] = []
    for cfg in run.configs:
        try:
            held = pauses.active(pauses.read(pauses.pause_file(run.state_root, cfg.project)), now)
        except OrchestratorError:
            out.append(Pause(cfg.project, None, "user"))  # unreadable: held until `resume` starts it afresh
            continue
        for issue in sorted(held, key=lambda n: -1 if n is None else n):
            out.extend(Pause(cfg.project, issue, entry["reason"]) for entry in held[issue])
    return tuple(out)
