"""The monitor: reconcile with reality, then per cycle probe -> decide -> journal -> act, until nothing is runnable."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lib.errors import OrchestratorError
from orchestrator import config as configs
from orchestrator import probe, tmux, worktrees
from orchestrator.act import Executor, kill_try, worker_window
from orchestrator.decide import Settings, Snapshot, State, WorkerView, cycle_to_json, decide
from orchestrator.heartbeat import Heartbeat
from orchestrator.queue import IssueRef, IssueView, next_issue
from orchestrator.run import Run
from orchestrator.state import WorkerRecord, monitor_lock


@dataclass
class CycleResult:
    actions: int
    finished: bool


def issue_views(run: Run, records: list[WorkerRecord]) -> tuple[IssueView, ...]:
    """Issues as decide sees them: an in_progress issue no worker holds is pending again (no issue lost)."""
    held = {IssueRef(r.project, r.issue_number) for r in records if r.project and r.issue_number is not None}
    views = []
    for cfg in run.configs:
        for issue in cfg.issues:
            ref = IssueRef(cfg.project, issue.number)
            status = "pending" if issue.status == "in_progress" and ref not in held else issue.status
            views.append(IssueView(ref, status, issue.wave, issue.priority, issue.depends_on, len(cfg.pipeline)))
    return tuple(views)


def settings_of(run: Run) -> Settings:
    return Settings(run.lead.max_retries, run.lead.stall_timeout, run.lead.wall_clock_timeout)


def worker_views(records: list[WorkerRecord]) -> tuple[WorkerView, ...]:
    return tuple(WorkerView(r.worker_id, IssueRef(r.project, r.issue_number)
                            if r.project and r.issue_number is not None else None,
                            r.stage_index, r.retry_count, r.nudged, r.launched, r.try_id, r.push_failures,
                            r.start_failures, r.lost_tries)
                 for r in records)


def release_finished(run: Run, records: list[WorkerRecord], say: Callable[[str], None]) -> None:
    """Free workers whose issue was completed, failed or removed behind their back (a crash, a user's edit)."""
    for record in records:
        if record.issue_number is None or not record.project:
            continue
        try:
            issue = run.config_of(record.project).issue(record.issue_number)
        except OrchestratorError:
            issue = None
        if issue is not None and issue.status not in ("completed", "failed"):
            continue
        kill_try(run, record)
        say(f"worker {record.worker_id}: releases #{record.issue_number} (now {issue.status if issue else 'gone'})")
        run.files.log_event({"action": "release", "worker": record.worker_id, "issue": record.issue_number,
                             "status": issue.status if issue else "gone"})
        record.reset()
        run.files.save_worker(record)


def reconcile(run: Run, say: Callable[[str], None]) -> list[WorkerRecord]:
    """Make records, config and panes agree after a crash or kill -9 (run at monitor start)."""
    for extra in (n for n in run.files.recorded_workers() if n > run.num_workers):
        record = run.files.load_worker(extra)
        if record.issue_number is not None:
            # A previous run had more workers: stop this one's agent, its issue goes back to the queue.
            kill_try(run, record)
            say(f"worker {extra} is beyond --workers {run.num_workers}: #{record.issue_number} goes back to the queue")
            record.reset()
            run.files.save_worker(record)
    records = run.files.load_workers(run.num_workers)
    release_finished(run, records, say)
    for record in records:
        if record.issue_number is None or not record.project:
            continue
        cfg = run.config_of(record.project)
        issue = cfg.issue(record.issue_number)
        assert issue is not None
        if issue.status != "in_progress" or issue.assigned_worker != record.worker_id or \
                issue.pipeline_stage != record.stage_index:
            configs.set_issue(cfg.path, issue.number, status="in_progress", assigned_worker=record.worker_id,
                              pipeline_stage=record.stage_index)
        if record.worktree and record.branch:
            repo = cfg.repo_for(issue)
            try:
                worktrees.ensure_worktree(repo.path, repo.default_branch, repo.worktree_base, Path(record.worktree),
                                          record.branch)
            except worktrees.GitFailed as err:
                say(f"worker {record.worker_id}: worktree of #{issue.number} cannot be restored: {err}")
    held = {(r.project, r.issue_number) for r in records if r.issue_number is not None}
    for cfg in run.configs:
        for issue in cfg.issues:
            if issue.status == "in_progress" and (cfg.project, issue.number) not in held:
                configs.set_issue(cfg.path, issue.number, status="pending", assigned_worker=None)
                say(f"#{issue.number}: in_progress but held by no worker: pending again")
    run.reload()
    ensure_session(run)
    return records


def ensure_session(run: Run) -> None:
    """The session and every worker window exist (re-created if someone killed them)."""
    if not tmux.session_exists(run.server, run.session):
        tmux.create_session(run.server, run.session, "orchestrator", None)
    for n in range(1, run.num_workers + 1):
        tmux.ensure_window(run.server, run.session, worker_window(n), keep_dead=True)
    from orchestrator.launch import ensure_dashboard  # launch imports this module

    ensure_dashboard(run)


def run_cycle(run: Run, number: int, say: Callable[[str], None]) -> CycleResult:
    try:
        run.reload()
    except OrchestratorError as err:
        say(f"config error, keeping the last good config: {err}")
        run.files.log_event({"action": "config_error", "error": str(err)})
    records = run.files.load_workers(run.num_workers)
    release_finished(run, records, say)
    now = run.clock()
    try:
        panes = tmux.panes(run.server, run.session)
        if len(panes) <= run.num_workers:  # a window or the whole session is gone
            ensure_session(run)
    except OrchestratorError as err:
        # Deciding on a failed listing would restart every healthy agent: skip this cycle instead.
        say(f"tmux did not answer, cycle skipped: {err}")
        run.files.log_event({"action": "probe_failed", "error": str(err)})
        return CycleResult(0, finished=False)
    table = probe.process_table()
    snapshots: list[Snapshot] = []
    for record in records:
        if record.issue_number is not None:
            snapshots.append(probe.snapshot(record, panes.get(worker_window(record.worker_id)), table, run.files, now))
            run.files.save_worker(record)
    state = State(worker_views(records), issue_views(run, records))
    settings = settings_of(run)
    actions = decide(snapshots, state, settings)
    if actions:
        run.files.record_cycle({"cycle": number, **cycle_to_json(snapshots, state, settings, actions)})
    Executor(run, {r.worker_id: r for r in records}, say).execute(actions)
    return CycleResult(len(actions), finished=_finished(run))


def _finished(run: Run) -> bool:
    """Nothing runs and nothing can: every worker idle and no eligible issue."""
    records = run.files.load_workers(run.num_workers)
    if any(r.issue_number is not None for r in records):
        return False
    try:
        run.reload()
    except OrchestratorError:
        return False
    return next_issue(issue_views(run, records), set()) is None


def monitor(run: Run, cycle: float | None = None, once: bool = False, no_delay: bool = False,
            say: Callable[[str], None] = print) -> int:
    """Run until nothing is runnable (or one cycle with `once`); returns the number of failed issues."""
    interval = cycle if cycle is not None else run.lead.cycle_interval
    with monitor_lock(run.locks()):
        beat = Heartbeat.start(run.files.monitor, run.clock())
        code = 1  # what an unexpected exception leaves in the heartbeat
        try:
            reconcile(run, say)
            if not no_delay and not once:
                run.sleep(min(interval, 60.0))
            number = 0
            while True:
                number += 1
                result = run_cycle(run, number, say)
                beat.cycle(run.files.monitor, run.clock())
                if result.finished:
                    run.files.log_event({"action": "shutdown", "reason": "all_done"})
                    say("nothing left to run: monitor exits")
                    break
                if once:
                    break
                run.sleep(interval)
            failed = sum(1 for cfg in run.configs for i in cfg.issues if i.status == "failed")
            code = 1 if failed else 0
        except OrchestratorError as err:
            code = err.exit_code
            raise
        except KeyboardInterrupt:
            code = 130
            raise
        finally:
            beat.exit(run.files.monitor, run.clock(), code)
    return failed
