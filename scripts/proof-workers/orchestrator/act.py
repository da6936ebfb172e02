"""Carry out decided actions: worktrees, pushes, issue status, and tries started or killed in tmux panes.

Every step is written so that a monitor killed between two steps resumes
correctly: the worker record changes before the pane does (each change one
transition of orchestrator.worker.Worker), and the config's issue status
follows the record (reconcile repairs the gap).

Over 500 lines, one job: one method per action kind decide() returns.
"""
from __future__ import annotations

import copy
import os
import shlex
import signal
import sys
import time
from contextlib import suppress
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

from lib import procs
from lib.errors import ConfigError, OrchestratorError, clip
from lib.paths import Paths
from lib.statefile import open_regular_file, write_json
from orchestrator import config as configs
from orchestrator import agents, alerts, budgets, commands, pauses, pins, prompts, pulls, sandbox, show, tmux
from orchestrator import worktree_setup, worktrees
from orchestrator import resume as resume_from
from orchestrator.config import Issue, IssueStatus, ProjectConfig
from orchestrator.decide import Action, ActionKind
from orchestrator.probe import read_events, read_pid
from orchestrator.queue import IssueRef
from orchestrator.run import Run
from orchestrator.state import WorkerRecord
from orchestrator.worker import Worker
from orchestrator.windows import try_tag, worker_window
from orchestrator.wrapper import TRY_VAR, WRAPPER_VAR

PR_STAGE_KINDS = (ActionKind.FIX_CI, ActionKind.ADDRESS_REVIEW)  # each begins the worker's next try
WRAPPER = Path(__file__).resolve().with_name("wrapper.py")
RATE_LIMIT_BACKOFF = (60.0, 1800.0)  # first pause, longest pause (seconds) when the agent gave no reset time
MAX_RESET_WAIT = 24 * 3600.0  # a reset time further away than this is not believed
WRAPPER_EXIT_WAIT = 5.0  # seconds an ended try's wrapper has to write its agent's last events (its own wait)
WRAPPER_STOP_WAIT = 15.0  # seconds a try's wrapper, stopped before its agent, has to end (its set-up's kill)
RESUME_PROMPT = ("Continue the task of this session where it stopped. The rules given at its start still hold. "
                 "Finish the work and commit it.\n\n")


def render_agent_command(template: str, values: dict[str, str]) -> str:
    """The agent_command with every placeholder replaced by its shell-quoted value (data, never code)."""
    return configs.PLACEHOLDER.sub(lambda m: shlex.quote(values[m.group(1)]), template)


def kill_try(run: Run, record: WorkerRecord, grace: float = 1.0) -> None:
    """Kill this try's agent process group, as recorded by its wrapper, and every process carrying the try's
    tag (what left the group: `setsid cmd &`, daemons): TERM, then KILL after `grace`."""
    tagged = procs.processes_tagged(TRY_VAR, try_tag(run, record.worker_id, record.try_id))
    group = read_pid(run.files.pid_file(record.worker_id, record.try_id))
    # The pid file may be hours old: its group is killed only while a member still carries this try's tag.
    groups = [group] if group is not None and group > 1 and set(procs.group_members(group)) & set(tagged) else []
    if groups or tagged:
        procs.kill_processes(groups, [p for p in tagged if p not in groups], grace)


def end_try(run: Run, record: WorkerRecord, grace: float = 1.0, held: bool = False) -> dict[str, Any] | None:
    """The try is over: its wrapper stopped if it has not started its agent yet (a set-up that exits 0 on SIGTERM
    never starts one after a kill), then what is left of it killed (kill_try). The follow-ups in its prompt count
    as given only when its agent took the prompt and worked on it (agent_worked); else they are kept again for the
    issue's next try, and so are those of the ended try whose session it was to continue (`resume_session`: after
    a hold or a restart; a prepared try killed before it started, say) when they were not carried to it yet.
    `held`: the try ended on a missing login or a rate limit (do_hold): they count as given only when its session
    also goes on in the try after the hold (it cannot without a session id, or when this config cannot resume it:
    that try starts afresh, and gets them again). Returns the agent's state with what it did
    (agent_worked: its turns and session, events the probe had not read included) when they count as given, else
    None."""
    pid_file = run.files.pid_file(record.worker_id, record.try_id)
    stopped = not pid_file.exists() and _wrapper_stopped(run, record)
    kill_try(run, record, grace)
    if record.issue_number is None or not record.project:
        return None
    stem = run.files.try_stem(record.worker_id, record.try_id)
    if pid_file.exists():
        worked = agent_worked(run, record)
        if worked is not None:
            _note_session(run, record, stem, worked)
        if worked is not None and (not held or _session_goes_on(run, record, worked)):
            return worked  # given (never twice)
    elif not stopped:  # not even SIGKILL ended its wrapper: it may still start its agent with them (never twice)
        _followup_events(run, record, commands.mark_in_doubt(run.state_root, record.project, record.issue_number,
                                                             stem), None, {"wrapper_unstopped": stem})
        return None
    give_back(run, record, stem)
    if record.resume_session is not None:  # it was to go on in the ended try's session: what rode on it comes back
        give_back(run, record, run.files.try_stem(record.worker_id, record.try_id - 1), in_doubt_too=False)
    return None


def _note_session(run: Run, record: WorkerRecord, stem: str, worked: dict[str, Any]) -> None:
    """The try's follow-ups are in the session it worked in (even one given back: a hold its config could not go
    on from), so that session is never resumed with them again (start_try). A safeguard: a note that cannot be
    written is an `error` event, not the end of the try's judgement."""
    session = worked.get("session_id")
    if not isinstance(session, str) or not session:
        return
    try:
        commands.note_session(run.state_root, record.project or "", record.issue_number or 0, stem, session)
    except OrchestratorError as err:
        run.files.log_event({"action": "error", "worker": record.worker_id, "issue": record.issue_number,
                             "during": "noting a follow-up's session", "error": str(err)})


def give_back(run: Run, record: WorkerRecord, stem: str, in_doubt_too: bool = True) -> None:
    """The follow-ups given in try `stem` of the record's issue are kept again for its next try, each said; without
    `in_doubt_too`, not those in doubt (a try ended earlier, whose wrapper may still give them to its agent)."""
    _followup_events(run, record, commands.give_back(run.state_root, record.project or "", record.issue_number or 0,
                                                     stem, in_doubt_too), False, {"given_back": stem})


def resume_args(cfg: ProjectConfig, session: str) -> list[str]:
    """The flags that continue `session` with this config's agent; [] when it cannot go on here (no session id, a
    kind that cannot resume, resume_sessions off, an agent_command flags cannot be appended to)."""
    return agents.resume_flags(cfg.agent, session) if session and cfg.resume_sessions and \
        configs.agent_kind(cfg.agent_command) == cfg.agent and agents.plain_command(cfg.agent_command) else []


def _session_goes_on(run: Run, record: WorkerRecord, agent: dict[str, Any]) -> bool:
    try:
        return bool(resume_args(run.config_of(record.project or ""), str(agent.get("session_id") or "")))
    except ConfigError:
        return False


def _followup_events(run: Run, record: WorkerRecord, ids: list[str], delivered: bool | None,
                     more: dict[str, str]) -> None:
    for command_id in ids:
        run.files.log_event({"action": "followup", "issue": record.issue_number, "project": record.project,
                             "id": command_id, "delivered": delivered, **more})


def agent_worked(run: Run, record: WorkerRecord) -> dict[str, Any] | None:
    """The ended try's agent state when its agent (it started) took its prompt and worked on it, else None. An
    agent with events: when they show it did (agents.worked: a turn; codex's a completed turn or a reply), in its
    tally or with the events the probe has not read yet folded in, read as the probe reads them (whole lines, never
    through a symlink; the state returned has them); a plain command says nothing of it: it ran, so yes."""
    if record.agent.get("kind") not in agents.STRUCTURED or agents.worked(record.agent):
        return dict(record.agent)
    _wait_for_wrapper(run, record)
    seen = replace(record, agent=copy.deepcopy(record.agent))  # read on a copy: the record's marks stay the probe's
    while not agents.worked(seen.agent) and read_events(run.files, seen, run.clock()):
        pass
    return seen.agent if agents.worked(seen.agent) else None


def _wait_for_wrapper(run: Run, record: WorkerRecord) -> None:
    """The agent is killed, but its wrapper may still be writing the last events it printed (a reply among them):
    wait until the wrapper has ended (or written its exit code), WRAPPER_EXIT_WAIT at most. Its processes are looked
    for in every process's environment once; then only they are looked at (a stat each), never the whole table."""
    signal_written = partial(run.files.read_signal, record.worker_id, record.try_id)
    if signal_written() is not None:
        return
    deadline = time.monotonic() + WRAPPER_EXIT_WAIT
    running = {pid: procs.start_tick(pid) for pid in _try_wrappers(run, record, None)}
    while running and signal_written() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        # A pid now naming another process (its start differs) is no wrapper of this try.
        running = {pid: tick for pid, tick in running.items() if tick is not None and procs.start_tick(pid) == tick}


def _wrapper_stopped(run: Run, record: WorkerRecord) -> bool:
    """Stop this try's wrapper while it has not started its agent: SIGTERM (in its set-up it stops the set-up and
    starts no agent), SIGKILL if it has not ended within WRAPPER_STOP_WAIT (stuck; its watchdog kills the set-up).
    True once no wrapper of the try runs and none started an agent."""
    pid_file = run.files.pid_file(record.worker_id, record.try_id)
    in_pane = _wrapper_in_pane(run, record)
    term_until = time.monotonic() + WRAPPER_STOP_WAIT
    sent: set[tuple[int, int]] = set()
    while not pid_file.exists():
        running = _try_wrappers(run, record, in_pane)
        if not running:
            return True
        now = time.monotonic()
        if now > term_until + WRAPPER_STOP_WAIT:
            return False  # not even SIGKILL ends it (a process stuck in the kernel): it may still start its agent
        signum = signal.SIGTERM if now <= term_until else signal.SIGKILL
        for pid in running:
            if (pid, signum) not in sent:
                with suppress(ProcessLookupError):
                    os.kill(pid, signum)
                sent.add((pid, signum))
        time.sleep(0.1)
    return False


def _try_wrappers(run: Run, record: WorkerRecord, in_pane: int | None) -> list[int]:
    """The live processes of this try's wrapper: those carrying its WRAPPER_VAR tag (set on the pane's command at
    respawn; the wrapper passes it on to nothing it starts), and the worker's pane's own process while it still runs
    this try's spec (a wrapper of a version without the tag). Never a process whose arguments merely name the
    wrapper or the spec (`tail -f`, an editor): neither can be faked by a command's arguments."""
    found = procs.processes_tagged(WRAPPER_VAR, try_tag(run, record.worker_id, record.try_id))
    if in_pane is not None and in_pane not in found and _runs_spec(in_pane, run, record):
        found.append(in_pane)
    return found


def _wrapper_in_pane(run: Run, record: WorkerRecord) -> int | None:
    """The pid of the worker's pane's process when it runs this try's spec (the pane's command is `exec python
    wrapper.py SPEC`, from whichever checkout started it); None otherwise, or when tmux does not answer."""
    try:
        pane = tmux.panes(run.server, run.session).get(worker_window(record.worker_id))
    except OrchestratorError:
        return None
    if pane is None or pane.dead or pane.pid is None or not _runs_spec(pane.pid, run, record):
        return None
    return pane.pid


def _runs_spec(pid: int, run: Run, record: WorkerRecord) -> bool:
    """Whether a process's last argument is exactly this try's spec (another try's, or a file naming it, is not)."""
    args = (procs.cmdline(pid) or b"").removesuffix(b"\0").split(b"\0")
    return len(args) >= 2 and args[-1] == os.fsencode(run.files.try_spec(record.worker_id, record.try_id))


def kill_run_processes(run: Run, grace: float = 1.0) -> list[int]:
    """Kill every process left by any try of this run (found by the tag's prefix); returns their pids."""
    tagged = procs.processes_tagged(TRY_VAR, f"{run.files.root}/worker-", prefix=True)
    if tagged:
        procs.kill_processes([], tagged, grace)
    return tagged


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        with open_regular_file(path) or open(os.devnull, "rb") as log:  # a FIFO there would block the monitor
            log.seek(max(0, log.seek(0, 2) - 8192))
            return "\n".join(log.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""


def agent_log(run: Run, record: WorkerRecord) -> Path:
    """Where this try's agent output reads as text: its own log (logs/issue-N/worker-W-try-T.log)."""
    if record.issue_number is not None:
        return run.files.try_log(record.worker_id, record.try_id, record.issue_number)
    return run.files.log(record.worker_id)


def check_worktree(cfg: ProjectConfig, issue: Issue, worktree: Path) -> None:
    """Refuse a worktree path an agent has replaced by a symlink (to the main checkout, a sibling): nothing of
    ours runs there, no branch is switched there, no agent is started there."""
    base = cfg.repo_for(issue).worktree_base
    if worktree.is_symlink() or (worktree.exists() and not worktrees.inside(worktree, base)):
        raise worktrees.GitFailed(f"worktree {worktree} is now a symlink or lies outside {base} (to "
                                  f"{os.path.realpath(worktree)}): not starting or switching anything there")


def start_try(run: Run, record: WorkerRecord, continuation: str = "", session: str = "") -> None:
    """Write this try's prompt and spec, then start the wrapper in the worker's pane (paths only). With a
    `session`, the agent continues it and the prompt is only the continuation."""
    cfg = run.config_of(record.project or "")
    issue = cfg.issue(record.issue_number or 0)
    assert issue is not None and record.worktree and record.branch
    check_worktree(cfg, issue, Path(record.worktree))
    files, w, t = run.files, record.worker_id, record.try_id
    prompt = files.prompt(w, t)
    prompt.parent.mkdir(parents=True, exist_ok=True)
    # `send` while none ran; and those this try's prompt had already, when it is prepared again (never ran)
    followups = commands.pending_followups(run.state_root, cfg.project, issue.number, again_for=files.try_stem(w, t))
    for place in commands.unusable_followups(run.state_root, cfg.project, issue.number):
        files.log_event({"action": "followup_skipped", "issue": issue.number, "project": cfg.project,
                         "warning": f"{commands.followups_file(run.state_root, cfg.project)}: #{issue.number}'s entry "
                                    f"{place} has no id or no text (a hand edit?): given to no try; fix or remove it"})
    before = record.agent or {}
    continues_last_try = bool(session)  # the ended try's session (a restart, the try after a hold)
    if followups and not session:  # a follow-up goes on in the stage's last session (a try after `retry`)
        session, before = commands.last_session(files, cfg.project, issue.number, record.stage)
        if session and commands.in_session(followups, session):
            # One of them is in that session already (given back by a try that resumed it and got nothing done):
            # a fresh session gets them once, never that one twice.
            session = ""
    resume = resume_args(cfg, session)
    text = (RESUME_PROMPT + continuation if resume else
            prompts.render(cfg, issue, record.stage_index, record.worktree, record.branch, continuation,
                           *((record.stage, str(record.pr.get("task") or "")) if record.stage in configs.PR_STAGES
                             else ())))
    prompt.write_text(text + commands.followup_text(followups), encoding="utf-8")
    files.signal(w, t).unlink(missing_ok=True)
    worktree_setup.state_path(files.signal(w, t)).unlink(missing_ok=True)
    files.pid_file(w, t).unlink(missing_ok=True)
    files.agent_events(w, t).unlink(missing_ok=True)
    worker = Worker(record, files)
    worker.prepare_try(agents.resumed_state(cfg.agent, before, session) if resume else agents.new_state(cfg.agent))
    if resume and continues_last_try:  # what the ended try was given goes on in its session: counted in this try,
        # before its pane runs it (a kill at any later step leaves them given here: given back if it never starts)
        commands.carry_given(run.state_root, cfg.project, issue.number, files.try_stem(w, t - 1), files.try_stem(w, t))
    # Given here before its pane runs it (a kill at any later step leaves them given here: in its prompt when it is
    # prepared again, given back if it never starts: end_try), never given twice.
    given = [e["id"] for e in followups]
    commands.mark_given(run.state_root, cfg.project, issue.number, given, files.try_stem(w, t))
    command = render_agent_command(cfg.agent_command, {
        "prompt_file": str(prompt), "worktree": record.worktree, "issue.number": str(issue.number),
        "stage": record.stage})
    used = budgets.issue_spent(budgets.usage_by_try(files), cfg.project, issue.number, but=files.try_stem(w, t))
    command += budgets.agent_flags(cfg, issue, used)
    if resume:
        command += " " + shlex.join(resume)
    spec = {"worker": w, "try": t, "issue": issue.number, "stage": record.stage, "command": command,
            "cwd": record.worktree, "log": str(files.log(w)), "signal": str(files.signal(w, t)),
            "pid_file": str(files.pid_file(w, t)), "agent": cfg.agent,
            "events": str(files.agent_events(w, t)), "try_log": str(files.try_log(w, t, issue.number)),
            "max_log_bytes": cfg.max_log_bytes, "project": cfg.project,
            "env": {"ORCHESTRATOR_WORKER": str(w), "ORCHESTRATOR_ISSUE": str(issue.number),
                    "ORCHESTRATOR_STAGE": record.stage, TRY_VAR: try_tag(run, w, t)},
            "sandbox": sandbox.try_sandbox(cfg, cfg.repo_for(issue).path, Path(record.worktree), record.branch,
                                           prompt)}
    setup = cfg.repo_for(issue).setup
    if setup is not None and setup.run and not worktree_setup.done(Path(record.worktree)):
        # Run by the wrapper in the pane, before the agent: a long `npm ci` never holds up the monitor.
        spec["setup"] = worktree_setup.try_spec(setup, cfg.repo_for(issue).path, Path(record.worktree),
                                                worktree_setup.log_path(files.root, issue.number),
                                                {"ORCHESTRATOR_WORKER": str(w), "ORCHESTRATOR_ISSUE": str(issue.number),
                                                 "ORCHESTRATOR_PROJECT": cfg.project})
    if commands.streams_input(cfg):  # the prompt goes in as the first message; `send` can add more while it runs
        spec["input"] = {"prompt": str(prompt), **commands.inbox_paths(files, w, t)}
    write_json(files.try_spec(w, t), spec)
    window = worker_window(w)
    try:
        tmux.ensure_window(run.server, run.session, window, keep_dead=True)
        pane = tmux.panes(run.server, run.session)[window]
        line = "exec " + shlex.join([sys.executable, str(WRAPPER), str(files.try_spec(w, t))])
        # The tag names this try's wrapper alone (it passes it on to nothing): end_try finds it by it, never by its
        # arguments, which any command naming the same files has too.
        tmux.respawn(run.server, pane.pane_id, line, cwd=record.worktree, env={WRAPPER_VAR: try_tag(run, w, t)})
    except OrchestratorError:
        # tmux refused: kept again for the next start (status shows them kept); a mark that cannot be undone
        # stays, and the next start of this try has them in its prompt all the same.
        with suppress(OrchestratorError):
            commands.unmark_given(run.state_root, cfg.project, issue.number, given, files.try_stem(w, t))
        raise
    worker.started(pane.identity, run.clock())


class Executor:
    """Runs one cycle's actions in order; a failed push stops the rest of that worker's actions."""

    def __init__(self, run: Run, records: dict[int, WorkerRecord], say: Callable[[str], None]) -> None:
        self.run = run
        self.records = records
        self.say = say
        self.stopped: set[int] = set()
        self.assigned = 0  # issues taken this cycle (stagger_delay waits between them)

    def execute(self, actions: list[Action]) -> None:
        for action in actions:
            if action.worker in self.stopped:
                continue
            record = self.records[action.worker]
            try:
                HANDLERS[action.kind](self, action, record)
            except OrchestratorError as err:
                self.stopped.add(action.worker)
                # decide stops resuming a try that never starts; a PR stage that cannot begin counts as one
                # (not for want of the network: a new issue waits for it too)
                self._worker(record).action_failed(str(err), starting=action.kind in PR_STAGE_KINDS and
                                                   not worktrees.is_network_error(str(err)))
                self.run.files.log_event({"action": "error", "worker": action.worker, "issue": _num(action.issue),
                                          "during": action.kind, "error": str(err)})
                self.say(f"worker {action.worker}: {action.kind} failed: {err}")

    def _worker(self, record: WorkerRecord) -> Worker:
        return Worker(record, self.run.files)

    def _issue(self, ref: IssueRef) -> tuple[ProjectConfig, Issue]:
        cfg = self.run.config_of(ref.project)
        issue = cfg.issue(ref.number)
        if issue is None:
            raise ConfigError(f"{cfg.path}: issue #{ref.number} is no longer in the issue list")
        return cfg, issue

    def do_push(self, action: Action, record: WorkerRecord) -> None:
        """Push the issue's own branch to its repo's pinned url (never where .git/config points now), then check
        the url has the local commit. A network error is retried next cycle; any other failure fails the issue."""
        branch = record.branch or ""
        try:
            cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
            repo = cfg.repo_for(issue)
            if branch != cfg.branch_for(issue):
                raise worktrees.PushFailed(f"worker holds branch {branch!r}, the issue's is {cfg.branch_for(issue)}",
                                           retry=False)
            try:
                kept_base = not record.stage_base or worktrees.is_ancestor(repo.path, record.stage_base,
                                                                           f"refs/heads/{branch}")
            except worktrees.GitFailed as err:
                raise worktrees.PushFailed(str(err), retry=worktrees.is_network_error(str(err))) from None
            if not kept_base:
                # Its commits count from the stage's base, so a replaced history (an orphan branch) would pass.
                raise worktrees.PushFailed(f"{branch} no longer contains {str(record.stage_base)[:12]}, where this "
                                           "stage began: its history was replaced or rewritten", retry=False)
            pin = pins.pinned(self.run.state_root, cfg.project, repo.name)
            sha, pushed = worktrees.push_pinned(repo.path, branch, pin.url, pin.settings)
        except (worktrees.PushFailed, ConfigError) as err:
            retry = getattr(err, "retry", False)  # a pin to fix (ConfigError) will not fix itself
            self._push_failed(action, record, branch, str(err), retry)
            return
        self._worker(record).pushed()
        if pushed:
            self.run.files.log_event({"action": "push", "worker": action.worker, "issue": _num(action.issue),
                                      "project": cfg.project, "branch": branch, "sha": sha, "url": pin.url})
            self.say(f"worker {action.worker}: pushed {branch} to {clip(pin.url)}")

    def _push_failed(self, action: Action, record: WorkerRecord, branch: str, error: str, retry: bool) -> None:
        self.stopped.add(action.worker)
        self._worker(record).push_failed(error, retry)
        if retry:
            self.say(f"worker {action.worker}: push of {branch} failed, retrying next cycle: {error}")
        else:
            self.do_skip(Action(ActionKind.SKIP, action.worker, action.issue, f"push failed: {error}"), record)

    def do_advance_stage(self, action: Action, record: WorkerRecord) -> None:
        cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
        base = worktrees.branch_head(Path(record.worktree or ""), record.branch or "")  # before: whole or not at all
        self._worker(record).advance_stage(pipeline=cfg.pipeline, stage_base=base, now=self.run.clock())
        configs.set_issue(cfg.path, issue.number, pipeline_stage=record.stage_index)
        self.say(f"worker {action.worker}: #{issue.number} advances to {record.stage}")
        start_try(self.run, record)

    def do_mark_complete(self, action: Action, record: WorkerRecord) -> None:
        cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
        configs.set_issue(cfg.path, issue.number, status=IssueStatus.COMPLETED)
        self._worker(record).complete()
        self.say(f"worker {action.worker}: #{issue.number} completed")

    # --- the pull-request loop (orchestrator.pulls does the work) ---------------------------------------------

    def do_open_pr(self, action: Action, record: WorkerRecord) -> None:
        cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
        try:
            created = pulls.open_pr(self.run.state_root, cfg, issue, record, self.run.clock())
        except OrchestratorError as err:  # the branch stays, pushed: the PR can be opened by hand
            if pulls.open_failed(record, err, self.run.clock(), cfg.review.poll_seconds):
                self._worker(record).save()
                self.run.files.log_event({"action": "pr_open_failed", "worker": action.worker, "issue": issue.number,
                                          "project": cfg.project, "error": str(err),
                                          "failures": record.pr["open_failures"]})
                self.say(f"worker {action.worker}: #{issue.number} {record.last_reason}")
                return
            self.do_skip(Action(ActionKind.SKIP, action.worker, action.issue, f"pull request not opened: {err}"),
                         record)
            return
        self._worker(record).save()
        self.run.files.log_event({"action": "pr_opened" if created else "pr_adopted", "worker": action.worker,
                                  "issue": issue.number, "project": cfg.project, "url": record.pr["url"]})
        self.say(f"worker {action.worker}: #{issue.number} {'opened' if created else 'adopted'} {record.pr['url']}")

    def do_watch_pr(self, action: Action, record: WorkerRecord) -> None:
        cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
        self._worker(record).watch_pr(cfg.pipeline, pr_part=partial(pulls.watch_again, self.run.state_root, cfg,
                                                                     issue, record, self.run.clock()))

    def _pr_stage(self, action: Action, record: WorkerRecord) -> None:
        """A fix_ci / address_review stage: its worktree brought back first (removed while the PR was watched, no
        try ran to notice), as before any try. A stage that cannot begin counts as a try that could not start:
        the max_retries-th fails the issue with the reason (never the same error at every poll)."""
        cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
        try:
            if not self._restore_worktree(action, record):
                return  # its set-up failed, and so did the issue
            base = worktrees.branch_head(Path(record.worktree or ""), record.branch or "")
        except OrchestratorError as err:
            attempts = record.start_failures + 1
            if attempts < max(self.run.lead.max_retries, 1) or worktrees.is_network_error(str(err)):
                raise  # counted by execute's action_failed (the network's never: it waits); tried at the next poll
            self.do_skip(Action(ActionKind.SKIP, action.worker, action.issue,
                                f"{action.kind} could not begin ({attempts} attempts): {err}"), record)
            return
        self._worker(record).enter_pr_stage(
            kind=action.kind, stage_base=base, reason=action.reason, now=self.run.clock(),
            pr_part=partial(pulls.start_stage, self.run.state_root, cfg, issue, record, action.kind))
        self.say(f"worker {action.worker}: #{issue.number} {action.kind}: {action.reason}")
        start_try(self.run, record)

    do_fix_ci = do_address_review = _pr_stage

    def do_merge_pr(self, action: Action, record: WorkerRecord) -> None:
        cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
        record.pr["merging"] = True  # saved first: a merge that went through but was never answered is ours too
        self._worker(record).save()
        try:
            outcome = pulls.merge(self.run.state_root, cfg, issue, record)
        except OrchestratorError as err:
            if pulls.merge_unconfirmed(err, self._worker(record), self.say):
                return
            record.pr["merge_failures"] = int(record.pr.get("merge_failures") or 0) + 1
            self._worker(record).save()
            self.run.files.log_event({"action": "merge_failed", "worker": action.worker, "issue": issue.number,
                                      "project": cfg.project, "error": str(err)})
            if record.pr["merge_failures"] >= pulls.MAX_MERGE_ATTEMPTS:
                self.do_skip(Action(ActionKind.SKIP, action.worker, action.issue, f"merge failed: {err}"), record)
            else:
                self.say(f"worker {action.worker}: #{issue.number} merge failed, tried at the next poll: {err}")
            return
        if outcome == "queued":
            # A merge queue or auto-merge took it: watched (merging stays set) until the forge shows it merged,
            # closed, or dropped from the queue; the wait counts against no limit.
            record.pr.update(merge_queued=str(record.pr.get("head") or "") or "?", merge_failures=0)
            self._worker(record).note("PR open, checks passing, merging (queued)")
            self.run.files.log_event({"action": "merge_queued", "worker": action.worker, "issue": issue.number,
                                      "project": cfg.project, "url": record.pr.get("url")})
            self.say(f"worker {action.worker}: #{issue.number} merging (queued): {record.pr.get('url')}")
            return
        self.do_pr_done(Action(ActionKind.PR_DONE, action.worker, action.issue, "merged"), record)

    def do_pr_done(self, action: Action, record: WorkerRecord) -> None:
        cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
        if action.reason == "merged" and record.pr.get("merging"):
            # Our own merge moved the default branch: recorded here, not alerted.
            moved = alerts.accept_default_head(self.run.files.root, cfg, issue, record.pr.get("head") or "",
                                               self.records.values(), self.say)
            self.run.files.log_event({"action": "pr_merged", "worker": action.worker, "issue": issue.number,
                                      "project": cfg.project, "url": record.pr.get("url"), "default_head": moved})
        if action.reason == "merged":
            pulls.save(self.run.state_root, cfg.project, issue.number, state="merged", phase="merged",
                       checks="passing")
        configs.set_issue(cfg.path, issue.number, status=IssueStatus.COMPLETED)
        self._worker(record).complete(pr=action.reason)
        self.say(f"worker {action.worker}: #{issue.number} completed (PR {action.reason})")

    def do_skip(self, action: Action, record: WorkerRecord) -> None:
        cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
        end_try(self.run, record)  # before the issue fails: a kill between repeats the skip, loses nothing
        configs.set_issue(cfg.path, issue.number, status=IssueStatus.FAILED)
        self._worker(record).fail(action.reason)
        self.say(f"worker {action.worker}: #{issue.number} failed: {action.reason}")

    def do_idle(self, action: Action, record: WorkerRecord) -> None:
        self.run.files.log_event({"action": "idle", "worker": action.worker})

    def do_resume(self, action: Action, record: WorkerRecord) -> None:
        self.say(f"worker {action.worker}: starting try {record.try_id} again ({action.reason})")
        if not self._restore_worktree(action, record):
            return
        session = record.resume_session  # the ended try's (a hold's, a restart's), whose follow-ups went on there
        if session is not None and not resume_args(self.run.config_of(record.project or ""), session):
            # The config no longer resumes it (edited since), or no session is named (a hand edit): this try starts
            # afresh and gets them again, those carried to it already (a preparation its pane never ran) too.
            for stem in (self.run.files.try_stem(record.worker_id, n) for n in (record.try_id, record.try_id - 1)):
                give_back(self.run, record, stem, in_doubt_too=False)
            session = ""
        start_try(self.run, record, session=session or "")

    def _restore_worktree(self, action: Action, record: WorkerRecord) -> bool:
        """An agent may delete its own worktree, or switch it to another branch: before the next try, bring it
        back from its branch (and set it up again), or put it back on its branch (the other branch is kept for
        inspection). False: the set-up failed and so did the issue."""
        if record.worktree:
            cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
            check_worktree(cfg, issue, Path(record.worktree))
            worktrees.refuse_unfinished(cfg.repo_for(issue).path, Path(record.worktree))  # a stopped re-make
        if record.worktree and not Path(record.worktree).is_dir():
            cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
            repo = cfg.repo_for(issue)
            worktrees.ensure_worktree(repo.path, repo.default_branch, repo.worktree_base, Path(record.worktree),
                                      record.branch or cfg.branch_for(issue))
            if not self._set_up(action, cfg, issue, Path(record.worktree)):
                # The issue failed in _set_up (its skip journalled there); the follow-ups riding on the session this
                # try was to continue come back for the try after `retry` (end_try).
                end_try(self.run, record)
                self._worker(record).free()
                return False
        elif record.worktree and record.branch:
            worktree = Path(record.worktree)
            if record.stage_base and worktrees.branch_head(worktree, record.branch) is None:
                # The agent deleted its branch: a retry on an unborn branch would commit a root commit, an
                # unrelated history. Back where the stage began ("" as the old value: only if still absent).
                worktrees.git(worktree, "update-ref", "-m", "orchestrator: branch deleted by the agent",
                              f"refs/heads/{record.branch}", record.stage_base, "")
                self.run.files.log_event({"action": "branch_restored", "worker": action.worker,
                                          "issue": _num(action.issue), "branch": record.branch, "was_on": None,
                                          "recreated_at": record.stage_base})
                self.say(f"worker {action.worker}: {record.branch} was deleted; recreated where its stage began "
                         f"({record.stage_base[:12]})")
            was_on = alerts.put_back_on_branch(worktree, record.branch)
            if was_on is not None:
                self.run.files.log_event({"action": "branch_restored", "worker": action.worker,
                                          "issue": _num(action.issue), "branch": record.branch, "was_on": was_on})
                self.say(f"worker {action.worker}: worktree put back on {record.branch} (it was on {was_on}, "
                         "which is kept)")
        return True

    def _set_up(self, action: Action, cfg: ProjectConfig, issue: Issue, path: Path) -> bool:
        """Copy the repo's worktree_setup files into a new worktree (its command, if any, runs in the try's pane
        before the agent: start_try); a failure fails the issue (no try, no retry used) and keeps the worktree.
        True when there is nothing to set up or the copies went well."""
        setup = cfg.repo_for(issue).setup
        if setup is None:
            return True
        log = worktree_setup.log_path(self.run.files.root, issue.number)
        try:
            worktree_setup.copy_files(setup, cfg.repo_for(issue).path, path, log)
        except worktree_setup.SetupFailed as err:
            reason = f"setup failed: {err}"
            configs.set_issue(cfg.path, issue.number, status=IssueStatus.FAILED)
            self.run.files.log_event({"action": "skip", "worker": action.worker, "issue": issue.number,
                                      "project": cfg.project, "reason": reason, "setup_log": str(log),
                                      "worktree": str(path)})
            self.say(f"worker {action.worker}: #{issue.number} failed: {reason} (worktree kept: {path})")
            return False
        self.run.files.log_event({"action": "setup", "worker": action.worker, "issue": issue.number,
                                  "project": cfg.project, "worktree": str(path), "copied": list(setup.copy),
                                  "run": setup.run or None, "setup_log": str(log)})
        if setup.run:
            self.say(f"worker {action.worker}: #{issue.number}'s worktree is set up by its try, before the agent "
                     f"(log {log})")
        return True

    def do_restart(self, action: Action, record: WorkerRecord) -> None:
        cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
        # The old try's own files and tag: before try_id moves on. What its agent did, with the events the probe
        # had not read yet: a follow-up counted as given there must go on in that session.
        agent = end_try(self.run, record) or record.agent
        ended_log = agent_log(self.run, record)  # the ended try's: its tail goes into the continuation
        # The session goes on only if the try got somewhere in it (a resume that failed at once starts afresh) and
        # this config can resume it.
        session = agent.get("session_id") if action.continuation and agent.get("turns") else ""
        session = session if isinstance(session, str) and resume_args(cfg, session) else ""
        # Counted and the next try recorded in one save, before anything can fail: a restart that breaks
        # halfway still used one retry (its try is then resumed, in that session: resume_session), and a monitor
        # killed at any step never judges the ended try again, so never counts it twice.
        self._worker(record).restart(counted=action.counted, nudge=action.nudge, reason=action.reason,
                                     continuation=action.continuation, session=session or None, now=self.run.clock())
        if not self._restore_worktree(action, record):
            return
        continuation = ""
        if action.continuation:
            try:
                commits, stat = worktrees.continuation_facts(Path(record.worktree or ""),
                                                             cfg.repo_for(issue).default_branch, record.branch or "")
            except worktrees.GitFailed as err:
                commits, stat = f"(unavailable: {err})", ""
            continuation = prompts.continuation_text(action.reason, commits, stat, _log_tail(ended_log),
                                                     action.nudge)
        self.say(f"worker {action.worker}: restarting #{issue.number}: {action.reason}")
        start_try(self.run, record, continuation, session)

    def do_hold(self, action: Action, record: WorkerRecord) -> None:
        """The try ended on a rate limit or a missing login: pause the project (rate_limit until the reset the
        agent gave, else a backoff; auth until resume) and prepare the next try, started once the pause lapses.
        No retry is used."""
        cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
        now = self.run.clock()
        path = pauses.pause_file(self.run.state_root, cfg.project)
        kind = record.agent.get("kind") or cfg.agent
        rate_limited = action.reason.startswith("rate_limit")
        if rate_limited:
            reset = agents.reset_at(record.agent)
            first, longest = RATE_LIMIT_BACKOFF
            wait = reset - now if reset and 0 < reset - now <= MAX_RESET_WAIT else \
                min(first * 2 ** record.rate_limits, longest)  # this limit is the (rate_limits + 1)th in a row
            until = now + wait
            pauses.add(path, "rate_limit", f"worker {record.worker_id} #{issue.number}: {action.reason}", now,
                       until=until)
            said = f"rate limited: project {cfg.project} paused for {wait:.0f}s"
        else:
            until = None
            pauses.add(path, "auth", f"agent not logged in: {agents.LOGIN_HINTS.get(kind, 'log the agent in')}",
                       now)
            said = f"agent not logged in: project {cfg.project} paused until resume"
        # Its session goes on in the try after the hold when it can (its follow-ups stay given there), else they
        # are given back and that try starts afresh with them.
        worked = end_try(self.run, record, held=True)
        self._worker(record).hold(reason=action.reason, rate_limited=rate_limited,
                                  until=pauses.stamp(until) if until else None, now=self.run.clock(),
                                  session=str(worked["session_id"]) if worked else None)
        self.say(f"worker {action.worker}: #{issue.number} {said} (not counted as a retry)")

    def do_reassign(self, action: Action, record: WorkerRecord) -> None:
        cfg, issue = self._issue(action.issue)  # type: ignore[arg-type]
        if self.assigned and cfg.stagger_delay:
            self.run.sleep(cfg.stagger_delay)
        repo = cfg.repo_for(issue)
        branch, path = cfg.branch_for(issue), cfg.worktree_for(issue)
        # Before this issue's agent (or the run's first) starts: later edits of .git/config cannot move the pin.
        unpinned = pins.ensure(self.run.configs, self.run.state_root, Paths.from_env().home)
        if (cfg.project, repo.name) in unpinned:
            # Not this issue's fault: it stays pending (an error each cycle) until the pin can be made or repinned.
            raise ConfigError(f"push target: {unpinned[(cfg.project, repo.name)]}")
        # An issue the config says is in_progress (a restart) continues from what is left of it (orchestrator.resume).
        source = resume_from.left_behind(repo, path, branch) if issue.status == IssueStatus.IN_PROGRESS else None
        if source == resume_from.FRESH and issue.pipeline_stage:
            # Said first: a monitor killed once the worktree exists must not take that new worktree for the
            # earlier work and run only the later stages on it.
            configs.set_issue(cfg.path, issue.number, pipeline_stage=0)
        try:
            # A new branch starts where the pinned remote is, not at a tracking ref an agent could have moved.
            start = pins.start_for(self.run.state_root, cfg, repo, branch)
            worktrees.ensure_worktree(repo.path, repo.default_branch, repo.worktree_base, path, branch, start)
            source = source and resume_from.checked_out(repo, path, branch, source)
        except worktrees.GitFailed as err:
            if isinstance(err, worktrees.PushFailed) and err.retry or \
                    not isinstance(err, worktrees.PushFailed) and worktrees.is_network_error(str(err)):
                raise  # the network (the pinned url's, or origin's fetch): pending, the next cycle tries again
            # Never retried blindly every cycle: the issue fails with the reason, its dependents wait.
            configs.set_issue(cfg.path, issue.number, status=IssueStatus.FAILED)
            self.run.files.log_event({"action": "skip", "worker": action.worker, "issue": issue.number,
                                      "project": cfg.project, "reason": f"worktree: {err}"})
            self.say(f"worker {action.worker}: #{issue.number} failed: cannot create its worktree: {err}")
            return
        if not worktree_setup.done(path) and not self._set_up(action, cfg, issue, path):
            return
        # Where the branch forked from the default branch, before its agent runs: what `diff ISSUE` shows against.
        base = show.merge_base(repo.path, branch, repo.default_branch)
        self._worker(record).assign(
            project=cfg.project, issue=issue.number, branch=branch, worktree=str(path),
            push_url=pins.pinned(self.run.state_root, cfg.project, repo.name).url, pipeline=cfg.pipeline,
            # A resumed issue with nothing left of it starts over from its first stage.
            stage_index=0 if source == resume_from.FRESH else issue.pipeline_stage,
            stage_base=worktrees.branch_head(path, branch), resumed=source, base=base, now=self.run.clock())
        configs.set_issue(cfg.path, issue.number, status=IssueStatus.IN_PROGRESS, assigned_worker=action.worker,
                          pipeline_stage=record.stage_index)
        self.say(f"worker {action.worker}: " + (resume_from.say(issue.number, record.stage, source) if source else
                                                 f"takes #{issue.number} ({record.stage})"))
        start_try(self.run, record)
        self.assigned += 1


# Each kind decide returns, to its method; retry, send and refuse (decide.COMMAND_KINDS) are commands.execute's.
HANDLERS: dict[ActionKind, Callable[[Executor, Action, WorkerRecord], None]] = {
    ActionKind.PUSH: Executor.do_push, ActionKind.ADVANCE_STAGE: Executor.do_advance_stage,
    ActionKind.MARK_COMPLETE: Executor.do_mark_complete, ActionKind.REASSIGN: Executor.do_reassign,
    ActionKind.RESTART: Executor.do_restart, ActionKind.SKIP: Executor.do_skip, ActionKind.IDLE: Executor.do_idle,
    ActionKind.RESUME: Executor.do_resume, ActionKind.HOLD: Executor.do_hold, ActionKind.OPEN_PR: Executor.do_open_pr,
    ActionKind.WATCH_PR: Executor.do_watch_pr, ActionKind.FIX_CI: Executor.do_fix_ci,
    ActionKind.ADDRESS_REVIEW: Executor.do_address_review, ActionKind.MERGE_PR: Executor.do_merge_pr,
    ActionKind.PR_DONE: Executor.do_pr_done,
}


def _num(ref: IssueRef | None) -> int | None:
    return ref.number if ref else None
