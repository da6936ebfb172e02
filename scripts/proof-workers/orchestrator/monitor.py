"""The monitor: reconcile with reality, then per cycle probe -> decide -> journal -> act, until nothing is runnable."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from lib import procs
from lib.errors import OrchestratorError
from lib.statefile import write_json
from orchestrator import alerts, budgets, commands, hooks, pauses, probe, pulls, tmux, worktrees
from orchestrator import config as configs
from orchestrator.config import IssueStatus
from orchestrator.act import Executor, end_try
from orchestrator.decide import Command, Pause, PrView, Snapshot, State, cycle_to_json, decide, \
    ended_as_when_tmux_dies
from orchestrator.heartbeat import Heartbeat
from orchestrator.inputs import active_pauses, issue_views, settings_of, worker_views
from orchestrator.queue import IssueRef, IssueView, next_issue
from orchestrator.run import Run
from orchestrator.state import WorkerRecord
from orchestrator.windows import ensure_dashboard, worker_window
from orchestrator.worker import Worker


@dataclass
class CycleResult:
    actions: int
    finished: bool


def watch(run: Run, records: list[WorkerRecord], snapshots: list[Snapshot], now: float,
          say: Callable[[str], None]) -> list[Snapshot]:
    """This cycle's alert checks: each new alert is logged, shown, and pauses its project or issue when that
    project's on_alert is `pause` (the pause is written first: a kill never leaves an alert that paused nothing)."""
    def on_error(text: str) -> None:
        say(text)
        run.files.log_event({"action": "error", "during": "alert check", "error": text})

    def signal_time(record: WorkerRecord) -> float | None:
        try:
            return run.files.signal(record.worker_id, record.try_id).stat().st_mtime
        except OSError:
            return None

    try:
        doc = alerts.current(run.files.root, run.configs, now)
        snapshots, found, changed = alerts.check(doc, run.configs, records, snapshots, now, signal_time, on_error)
    except OrchestratorError as err:
        on_error(f"alert checks skipped this cycle: {err}")
        return snapshots

    def pausing(project: str) -> bool:
        try:
            return run.config_of(project).on_alert == "pause"
        except OrchestratorError:
            return False

    alerts.announce(run.files.root, found, pausing, now, say)
    if changed:
        write_json(alerts.run_file(run.files.root), doc)
    return snapshots


def release_finished(run: Run, records: list[WorkerRecord], say: Callable[[str], None]) -> None:
    """Free workers whose issue was completed, failed or removed behind their back (a crash, a user's edit)."""
    for record in records:
        if record.issue_number is None:
            continue
        if not record.project:  # edited by hand: decide sees a free worker, so nothing else lets it go
            end_try(run, record)
            say(f"worker {record.worker_id}: its record names #{record.issue_number} of no project: freed")
            Worker(record, run.files).free()
            continue
        try:
            issue = run.config_of(record.project).issue(record.issue_number)
        except OrchestratorError:
            issue = None
        if issue is not None and issue.status not in (IssueStatus.COMPLETED, IssueStatus.FAILED):
            continue
        end_try(run, record)
        say(f"worker {record.worker_id}: releases #{record.issue_number} (now {issue.status if issue else 'gone'})")
        Worker(record, run.files).release(issue.status if issue else "gone")


def reconcile(run: Run, say: Callable[[str], None]) -> list[WorkerRecord]:
    """Make records, config and panes agree after a crash or kill -9 (run at monitor start)."""
    for extra in (n for n in run.files.recorded_workers() if n > run.num_workers):
        record = run.files.load_worker(extra)
        if record.issue_number is not None:
            # A previous run had more workers: stop this one's agent, its issue goes back to the queue.
            end_try(run, record)
            say(f"worker {extra} is beyond --workers {run.num_workers}: #{record.issue_number} goes back to the queue")
            Worker(record, run.files).free()
    records = run.files.load_workers(run.num_workers)
    release_finished(run, records, say)
    for record in records:
        if record.issue_number is None or not record.project:
            continue
        cfg = run.config_of(record.project)
        issue = cfg.issue(record.issue_number)
        assert issue is not None
        if issue.status != IssueStatus.IN_PROGRESS or issue.assigned_worker != record.worker_id or \
                issue.pipeline_stage != record.stage_index:
            configs.set_issue(cfg.path, issue.number, status=IssueStatus.IN_PROGRESS, assigned_worker=record.worker_id,
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
            # One on a worker is resumed first, and one past its last stage counts as completed (issue_views):
            # both are left as the config says.
            if issue.status == IssueStatus.IN_PROGRESS and (cfg.project, issue.number) not in held and \
                    issue.assigned_worker is None and not cfg.stages_done(issue):
                configs.set_issue(cfg.path, issue.number, status=IssueStatus.PENDING, assigned_worker=None)
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
    table = procs.process_table()
    snapshots: list[Snapshot] = []
    for record in records:
        if record.issue_number is not None and not record.pr.get("watching"):  # a watched PR has no try to probe
            try:
                snapshots.append(probe.snapshot(record, panes.get(worker_window(record.worker_id)), table, run.files,
                                                now))
            except OrchestratorError as err:
                # Its git failed (the worktree removed under it, a timeout): this worker is not judged this
                # cycle (decide never judges without a snapshot), and the monitor goes on for the others.
                say(f"worker {record.worker_id}: not judged this cycle: {err}")
                run.files.log_event({"action": "probe_failed", "worker": record.worker_id,
                                     "issue": record.issue_number, "error": str(err)})
                continue
            Worker(record, run.files).save()  # the probe's marks
    snapshots = confirm_panes(run, records, snapshots, say)
    snapshots = watch(run, records, snapshots, now, say)
    snapshots = budgets.check(run, records, snapshots, now, say)
    polled = pulls.poll(run.state_root, run.config_of, records, now, lambda r: Worker(r, run.files).save(), say)
    steered = steering(run, now)
    done = decide_and_apply(run, records, snapshots, polled, steered, number, say)
    return CycleResult(done, finished=_finished(run))


def confirm_panes(run: Run, records: list[WorkerRecord], snapshots: list[Snapshot],
                  say: Callable[[str], None]) -> list[Snapshot]:
    """A try that ended as one does when tmux dies, while the cycle's listing showed its pane: tmux may have died
    after that listing, before the probe read the try's end. A second listing, taken after the probe, tells (a
    try's end never comes before what caused it): its pane gone or new is a try lost to tmux, no retry used, and
    the session is re-made first; when tmux does not answer, that worker is not judged this cycle."""
    launched = {r.worker_id for r in records if r.launched}  # a prepared try (after a hold) has not ended: no doubt
    doubtful = {s.worker_id for s in snapshots
                if s.worker_id in launched and not s.pane_lost and ended_as_when_tmux_dies(s)}
    if not doubtful:
        return snapshots
    try:
        panes = tmux.panes(run.server, run.session)
        if len(panes) <= run.num_workers:
            ensure_session(run)
    except OrchestratorError as err:
        for worker in sorted(doubtful):
            say(f"worker {worker}: not judged this cycle: tmux did not answer: {err}")
            run.files.log_event({"action": "probe_failed", "worker": worker, "error": str(err)})
        return [s for s in snapshots if s.worker_id not in doubtful]
    started_in = {r.worker_id: r.pane for r in records}

    def lost(worker: int) -> bool:  # as the probe judges it: the pane gone, or another than the try started in
        pane = panes.get(worker_window(worker))
        return pane is None or started_in.get(worker) not in (None, pane.identity)

    return [replace(s, pane_exists=worker_window(s.worker_id) in panes, pane_lost=True)
            if s.worker_id in doubtful and lost(s.worker_id) else s for s in snapshots]


@dataclass
class Steered:
    """A cycle's commands, taken: the ones for decide (pause and resume are applied already), the ids a killed
    holder had taken before, and the pauses that hold after them."""
    given: list[Command]
    retaken: set[str]
    held: tuple[Pause, ...]


def steering(run: Run, now: float) -> Steered:
    """Take the user's commands (the lock's holder only): pause and resume applied at once, before the pauses are
    read; the paused / resumed lines are journalled from that same read, the one decide takes."""
    given, retaken = commands.take(run)
    given = commands.apply_pauses(run, given, now)
    held = active_pauses(run, now)
    pauses.journal_changes(run.files, held)
    return Steered(given, retaken, held)


def decide_and_apply(run: Run, records: list[WorkerRecord], snapshots: list[Snapshot], polled: tuple[PrView, ...],
                     steered: Steered, cycle: int | str, say: Callable[[str], None],
                     commands_only: bool = False) -> int:
    """decide on the cycle's input, journal it (it replays) and carry out its actions, each command's outcome
    written after its own; returns how many were carried out. With `commands_only` (a verb applying the queue,
    no monitor running) only the commands' own actions are, and the journal says so: the monitor does the rest."""
    state = State(worker_views(records, run), issue_views(run, records), steered.held, polled, tuple(steered.given))
    settings = settings_of(run)
    decided = decide(snapshots, state, settings)
    actions = [a for a in decided if a.command] if commands_only else decided
    if decided:
        only = {"applied": "commands only"} if commands_only else {}
        run.files.record_cycle({"cycle": cycle, **only, **cycle_to_json(snapshots, state, settings, decided)})
    by_worker = {r.worker_id: r for r in records}
    commands.execute(run, Executor(run, by_worker, say), by_worker, actions, steered.given, steered.retaken, say)
    return len(actions)


def _finished(run: Run) -> bool:
    """Nothing runs and nothing can: every worker idle, no eligible issue, and nothing paused (a paused run waits
    for resume)."""
    records = run.files.load_workers(run.num_workers)
    if any(r.issue_number is not None for r in records):
        return False
    try:
        run.reload()
    except OrchestratorError:
        return False
    views = issue_views(run, records)
    return next_issue(views, set()) is None and not pause_holds_run(active_pauses(run, run.clock()), views) \
        and not commands.waiting(run)


def pause_holds_run(paused: tuple[Pause, ...], views: tuple[IssueView, ...]) -> bool:
    """A paused project, or a paused issue still to finish, keeps the run going (waiting for resume)."""
    over = {v.ref for v in views if v.status in (IssueStatus.COMPLETED, IssueStatus.FAILED)}
    return any(p.issue is None or IssueRef(p.project, p.issue) not in over for p in paused)


def say_warnings(run: Run, said: set[str], say: Callable[[str], None]) -> set[str]:
    """Say the configs' warnings not said yet (a pipeline_stage past the last stage: that issue counts as
    completed); returns every one said."""
    for warning in (w for cfg in run.configs for w in cfg.warnings if w not in said):
        say(f"warning: {warning}")
        run.files.log_event({"action": "config_warning", "warning": warning})
    return said | {w for cfg in run.configs for w in cfg.warnings}


def monitor(run: Run, cycle: float | None = None, once: bool = False, no_delay: bool = False,
            say: Callable[[str], None] = print) -> int:
    """Run until nothing is runnable (or one cycle with `once`); returns the number of failed issues."""
    interval = cycle if cycle is not None else run.lead.cycle_interval
    with commands.monitor_lock_after_verbs(run, say):  # a verb applying commands may hold it a moment
        alerts.current(run.files.root, run.configs, run.clock())  # a new run snapshots its repositories now
        beat = Heartbeat.start(run.files.monitor, run.clock())
        code = 1  # what an unexpected exception leaves in the heartbeat
        events = hooks.Dispatcher(run)  # on_event: in the background, never waited for by a cycle
        try:
            said = say_warnings(run, set(), say)
            reconcile(run, say)
            if not no_delay and not once:
                commands.wait(run, min(interval, 60.0))
            number = 0
            while True:
                number += 1
                result = run_cycle(run, number, say)
                said = say_warnings(run, said, say)  # an edited config's new ones
                beat.cycle(run.files.monitor, run.clock())
                events.cycle()
                if result.finished:
                    run.files.log_event({"action": "shutdown", "reason": "all_done"})
                    alerts.end(run.files.root)
                    say("nothing left to run: monitor exits")
                    break
                if once:
                    break
                commands.wait(run, interval)  # a steering command ends the wait early
            failed = sum(1 for cfg in run.configs for i in cfg.issues if i.status == IssueStatus.FAILED)
            code = 1 if failed else 0
        except OrchestratorError as err:
            code = err.exit_code
            raise
        except KeyboardInterrupt:
            code = 130
            raise
        finally:
            events.close(kill=code != 0 and code != 1)  # a stopped monitor stops its hooks; a done one lets them end
            beat.exit(run.files.monitor, run.clock(), code)
    return failed
