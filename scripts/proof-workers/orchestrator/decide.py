"""decide(snapshots, state, settings) -> actions: the monitor's whole judgement, pure and replayable.

No clock, no files, no tmux, no model call: the same inputs always give the same
actions, so a journal of (snapshots, state, settings, actions) replays exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, Sequence

from lib.errors import clip

from orchestrator.queue import IssueRef, IssueView, next_issue

# A verified stage whose push keeps failing (remote down, branch rewritten) fails the
# issue after this many attempts, one per cycle; its commits stay on the local branch.
MAX_PUSH_ATTEMPTS = 10
# A try lost because tmux or the machine went away is started again without using a retry,
# this many times per stage; past that each loss counts (a pane an agent keeps killing is its fault).
MAX_LOST_TRIES = 5
# Polls of a PR left open by our accepted merge call while the forge will not say whether it waits in a merge queue
# (its GraphQL refused the question): past this many the issue fails, saying so (never watched without end). A queue
# the forge shows holding the PR is watched without a limit.
MAX_UNSEEN_POLLS = 20
SIGHUP_EXIT = 129  # the wrapper's code when its terminal (the tmux pane) hung up
SIGTERM_EXIT = 143  # ... when it was terminated: with its pane gone too, the machine shut down


@dataclass(frozen=True)
class Snapshot:
    """One worker as probed this cycle. Three probes kept apart: pane, agent process, progress."""

    worker_id: int
    try_id: int
    pane_exists: bool
    agent_alive: bool
    exit_code: int | None  # from this try's own signal file; None: no signal yet
    new_commits: int  # commits made in the current stage (since its base)
    dirty: bool  # uncommitted or untracked changes in the worktree
    idle_seconds: float  # since the log or the worktree last changed
    elapsed_seconds: float  # since this try started
    pane_lost: bool = False  # the pane this try was started in is gone or was re-created (tmux died)
    switched_to: str = ""  # the try ended with the worktree on this other branch ("": on its own branch)
    # What the agent's own events say stopped it: rate_limit (429/529/usage limit), auth (not logged in, 401),
    # error (its result says is_error), budget (over max_cost_usd/max_turns/max_tokens), "" (nothing).
    agent_stop: str = ""
    agent_detail: str = ""  # the agent's words for it (its result or error text)
    setting_up: bool = False  # the try's wrapper runs the worktree's set-up command (bounded by its own timeout)
    setup_failed: str = ""  # ... which failed: its reason (the agent never started)


@dataclass(frozen=True)
class WorkerView:
    worker_id: int
    issue: IssueRef | None = None
    stage_index: int = 0
    retry_count: int = 0
    nudged: bool = False
    launched: bool = True
    try_id: int = 0
    push_failures: int = 0
    start_failures: int = 0
    lost_tries: int = 0
    pr: PrWork | None = None  # the issue's pull-request loop (review.open "pr"), None without it


@dataclass(frozen=True)
class PrWork:
    """Where an issue's pull-request loop stands (config values included: they are per project)."""

    watching: bool = False  # the PR is open and watched; no try runs
    in_stage: bool = False  # the running try is a fix_ci or address_review stage
    ci_fixes: int = 0
    review_rounds: int = 0
    head: str = ""  # the commit we pushed last: checks of another head are not this round's
    review_seen: str = ""  # the review round already addressed
    merge_queued: str = ""  # the head our accepted merge left queued (merge queue, auto-merge); "" none
    # Polls so far of the PR left open by our accepted merge where the CLI cannot show a queue (0: none such).
    merge_unseen: int = 0
    open_failures: int = 0  # the PR is not open yet: tries of opening it that failed on the network so far
    merge: str = "manual"  # manual | auto
    max_ci_fixes: int = 3
    max_review_rounds: int = 2


@dataclass(frozen=True)
class PrView:
    """One poll of a watched PR this cycle (orchestrator.forge.Observation, or why the poll failed)."""

    worker_id: int
    number: int = 0
    url: str = ""
    state: str = ""  # open | merged | closed ("" when the poll failed)
    head: str = ""
    checks: str = "none"  # pending | passing | failing | none
    failed: tuple[str, ...] = ()  # names of the failed checks
    review: str = ""  # approved | changes_requested | required | ""
    review_id: str = ""
    quiet_polls: int = 0  # polls in a row of this head with no check reported
    error: str = ""
    queued: bool | None = False  # the forge shows it in a merge queue or with auto-merge set (None: cannot say)
    queue_doubt: str = ""  # why `queued` is None (the forge's refusal)


@dataclass(frozen=True)
class Settings:
    max_retries: int
    stall_timeout: float
    wall_clock_timeout: float


@dataclass(frozen=True)
class Pause:
    """A pause reason that holds this cycle (the monitor leaves out lapsed ones): under it no try starts."""

    project: str
    issue: int | None  # None: the whole project
    reason: str  # user | alert | rate_limit | auth | budget


@dataclass(frozen=True)
class Command:
    """A user's steering command taken from the queue this cycle (orchestrator.commands): part of decide's input.
    pause and resume are applied before the pauses are read (they show in `paused`); the others become actions."""

    id: str
    verb: str  # pause | resume | retry | kill | send
    project: str
    issue: int | None = None
    text: str = ""


@dataclass(frozen=True)
class State:
    workers: tuple[WorkerView, ...]
    issues: tuple[IssueView, ...]
    paused: tuple[Pause, ...] = ()
    prs: tuple[PrView, ...] = ()  # this cycle's polls of watched PRs
    commands: tuple[Command, ...] = ()


class ActionKind(StrEnum):
    """What an action does; the value is the word the journal says (act runs `do_<value>`)."""

    PUSH = "push"
    ADVANCE_STAGE = "advance_stage"
    MARK_COMPLETE = "mark_complete"
    REASSIGN = "reassign"
    RESTART = "restart"
    SKIP = "skip"
    IDLE = "idle"
    RESUME = "resume"
    HOLD = "hold"
    RETRY = "retry"  # steering: a user's command
    SEND = "send"
    REFUSE = "refuse"
    OPEN_PR = "open_pr"  # the PR loop
    WATCH_PR = "watch_pr"
    FIX_CI = "fix_ci"
    ADDRESS_REVIEW = "address_review"
    MERGE_PR = "merge_pr"
    PR_DONE = "pr_done"


# The kinds that carry out a user's command: commands.execute runs them, never act's executor.
COMMAND_KINDS = frozenset({ActionKind.RETRY, ActionKind.SEND, ActionKind.REFUSE})


def action_kind(word: object) -> ActionKind:
    """The member a word names; a word outside the set is a ValueError of one line."""
    try:
        return ActionKind(word)
    except ValueError:
        raise ValueError(f"unknown action kind {clip(repr(word), 80)} (known: {', '.join(ActionKind)})") from None


@dataclass(frozen=True)
class Action:
    kind: ActionKind  # given as a member or its word; any other word is refused
    worker: int
    issue: IssueRef | None = None
    reason: str = ""
    continuation: bool = False
    nudge: bool = False
    counted: bool = True  # a restart uses one of max_retries (not when tmux or the machine went away)
    command: str = ""  # the id of the user's command this action carries out (its outcome is written after it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", action_kind(self.kind))


def decide(snapshots: Sequence[Snapshot], state: State, settings: Settings) -> list[Action]:
    """Actions for this cycle, per worker in id order, then assignments of free workers.

    A paused issue (or an issue of a paused project) starts no try: a free worker does not take it, and the
    worker holding it is not judged (its running try finishes; its verdict, push included, waits for resume).
    """
    by_worker = {s.worker_id: s for s in snapshots}
    issues = {i.ref: i for i in state.issues}
    paused_projects = {p.project for p in state.paused if p.issue is None}
    paused_issues = {IssueRef(p.project, p.issue) for p in state.paused if p.issue is not None}
    polls = {p.worker_id: p for p in state.prs}

    def paused(ref: IssueRef) -> bool:
        return ref.project in paused_projects or ref in paused_issues

    claimed = {w.issue for w in state.workers if w.issue is not None} | {i.ref for i in state.issues if paused(i.ref)}
    actions, killed, retried = _commands(state)
    free: list[tuple[int, bool]] = []  # (worker, freed this cycle)
    for worker in sorted(state.workers, key=lambda w: w.worker_id):
        if worker.issue is None:
            free.append((worker.worker_id, False))
            continue
        if worker.worker_id in killed:
            free.append((worker.worker_id, True))
            continue
        if paused(worker.issue):
            continue
        if worker.pr is not None and worker.pr.watching:
            judged = _judge_pr(worker, worker.pr, polls.get(worker.worker_id))
            actions.extend(judged)
            if any(a.kind in (ActionKind.PR_DONE, ActionKind.SKIP) for a in judged):
                free.append((worker.worker_id, True))
            continue
        snapshot = by_worker.get(worker.worker_id)
        if snapshot is None or snapshot.try_id != worker.try_id:
            continue  # nothing known of this try: never judge it on another try's evidence
        judged = _judge(worker, snapshot, issues.get(worker.issue), settings)
        actions.extend(judged)
        if any(a.kind in (ActionKind.MARK_COMPLETE, ActionKind.SKIP) for a in judged):
            free.append((worker.worker_id, True))
    # An issue completed in this cycle does not unblock its dependents until the
    # next one: its push may still fail, and then it is not complete.
    ids = [w.worker_id for w in state.workers]
    views = tuple(replace(i, status="pending") if i.ref in retried else i for i in state.issues)
    for worker_id, freed in free:
        issue = next_issue(views, claimed, worker_id, ids)
        if issue is not None:
            claimed.add(issue.ref)
            actions.append(Action(ActionKind.REASSIGN, worker_id, issue.ref,
                                  f"resumes #{issue.ref.number} (in_progress on worker {issue.resume_worker} in the "
                                  "config)" if issue.resuming else
                                  f"next eligible (wave {issue.wave}, priority {issue.priority})"))
        elif freed:
            actions.append(Action(ActionKind.IDLE, worker_id, reason="no eligible issue"))
    return actions


def _commands(state: State) -> tuple[list[Action], set[int], set[IssueRef]]:
    """The user's commands in the order given: (their actions, workers whose try is killed, issues retried).

    kill: the worker holding the issue stops its try and the issue fails (`skip`, no retry used); retry: a failed
    issue is pending again (a free worker may take it this very cycle); send: to the worker holding the issue,
    else kept for its next try. An issue not in a state the verb applies to gets a `refuse` with the reason."""
    status = {i.ref: i.status for i in state.issues}  # as the commands before this one leave it
    holder = {w.issue: w.worker_id for w in state.workers if w.issue is not None}
    actions: list[Action] = []
    killed: set[int] = set()
    retried: set[IssueRef] = set()
    for command in state.commands:
        if command.verb in ("pause", "resume") or command.issue is None:
            continue
        ref = IssueRef(command.project, command.issue)
        now, worker = status.get(ref), holder.get(ref)
        if command.verb == "kill" and worker is not None:
            killed.add(worker)
            del holder[ref]
            status[ref] = "failed"
            actions.append(Action(ActionKind.SKIP, worker, ref, "killed by user", counted=False, command=command.id))
        elif command.verb == "retry" and now == "failed" and worker is None:
            retried.add(ref)
            status[ref] = "pending"
            actions.append(Action(ActionKind.RETRY, 0, ref, "retried by user", command=command.id))
        elif command.verb == "send" and now in ("pending", "in_progress", "failed"):
            actions.append(Action(ActionKind.SEND, worker or 0, ref, command=command.id))
        else:
            why = {"kill": "no try of it runs", "retry": "only a failed issue is retried",
                   "send": "it has no next try"}.get(command.verb, f"unknown verb {command.verb!r}")
            shown = "gone from the issue list" if now is None else \
                "in_progress, held by no worker" if now == "in_progress" and worker is None else now
            actions.append(Action(ActionKind.REFUSE, 0, ref, f"#{command.issue} is {shown}: {why}", command=command.id))
    return actions, killed, retried


def ended_as_when_tmux_dies(snap: Snapshot) -> bool:
    """The try ended as one does when its pane goes away (hung up, terminated, or gone without an exit code): lost
    to tmux, no retry used, when its pane is gone or new (`pane_lost`), else its own failure."""
    return snap.exit_code in (SIGHUP_EXIT, SIGTERM_EXIT) or (snap.exit_code is None and not snap.agent_alive)


def _judge(worker: WorkerView, snap: Snapshot, issue: IssueView | None, settings: Settings) -> list[Action]:
    ref = worker.issue
    wid = worker.worker_id
    if not worker.launched:
        if worker.start_failures >= max(settings.max_retries, 1):
            return [Action(ActionKind.SKIP, wid, ref,
                           f"the agent could not be started ({worker.start_failures} attempts)")]
        return [Action(ActionKind.RESUME, wid, ref, "this try was prepared but never started")]

    def failed_try(reason: str, continuation: bool = True, nudge: bool = False) -> list[Action]:
        if worker.retry_count < settings.max_retries:
            return [Action(ActionKind.RESTART, wid, ref,
                           f"{reason}; retry {worker.retry_count + 1}/{settings.max_retries}",
                           continuation=continuation, nudge=nudge)]
        return [Action(ActionKind.SKIP, wid, ref, f"{reason}; retries exhausted ({settings.max_retries})")]

    if snap.setup_failed:  # the worktree's fault, not the agent's: no retry used, the worktree is kept
        return [Action(ActionKind.SKIP, wid, ref, f"setup failed: {snap.setup_failed}", counted=False)]
    if snap.setting_up and snap.agent_alive and snap.exit_code is None and not snap.pane_lost:
        return []  # neither stalled nor late: the set-up has its own timeout, the agent's timers start after it
    tmux_went_away = snap.pane_lost and ended_as_when_tmux_dies(snap)
    if tmux_went_away and worker.lost_tries < MAX_LOST_TRIES:
        how = {SIGHUP_EXIT: "hung up", SIGTERM_EXIT: "was terminated"}.get(snap.exit_code or 0,
                                                                           "gone without an exit code")
        return [Action(ActionKind.RESTART, wid, ref, f"tmux went away (its pane is gone or new; the try {how}); "
                                            "not counted as a retry", continuation=True, counted=False)]
    if snap.switched_to and (snap.exit_code is not None or not snap.agent_alive):
        return failed_try(f"the try ended with the worktree on {snap.switched_to}, not on its branch (put back for "
                          "the next try; that branch is kept)")
    if snap.agent_stop == "budget":
        return [Action(ActionKind.SKIP, wid, ref, snap.agent_detail or "budget")]  # more tries would only cost more
    if snap.exit_code is not None and snap.agent_stop in ("rate_limit", "auth"):
        # Nobody's fault and no retry's: the project waits (a rate limit until its reset or a backoff, a login
        # until resume), then the issue is tried again.
        detail = f": {snap.agent_detail}" if snap.agent_detail else ""
        return [Action(ActionKind.HOLD, wid, ref, f"{snap.agent_stop}{detail}", counted=False)]
    if snap.exit_code is not None:
        if snap.exit_code != 0:
            return failed_try(f"exit code {snap.exit_code}")
        if snap.agent_stop == "error":
            return failed_try(f"the agent's result is an error{': ' + snap.agent_detail if snap.agent_detail else ''}")
        if snap.new_commits == 0:
            if snap.dirty and not worker.nudged:
                return failed_try("exit 0 with uncommitted changes and no commit", nudge=True)
            return failed_try("exit 0 without a new commit in this stage")
        if worker.push_failures >= MAX_PUSH_ATTEMPTS:
            return [Action(ActionKind.SKIP, wid, ref,
                           f"push failed {worker.push_failures} times; the commits stay on the local branch")]
        stages = issue.stage_count if issue else 1
        done = [Action(ActionKind.PUSH, wid, ref, f"{snap.new_commits} new commit(s) in this stage")]
        if worker.pr is not None and worker.pr.in_stage:
            return done + [Action(ActionKind.WATCH_PR, wid, ref, "fix pushed: the PR is watched again")]
        if worker.pr is not None and worker.stage_index + 1 >= stages:
            return done + [Action(ActionKind.OPEN_PR, wid, ref, "all pipeline stages done")]
        if worker.stage_index + 1 < stages:
            return done + [Action(ActionKind.ADVANCE_STAGE, wid, ref,
                                  f"stage {worker.stage_index + 1}/{stages} verified")]
        return done + [Action(ActionKind.MARK_COMPLETE, wid, ref, "all pipeline stages done")]
    if not snap.agent_alive:
        where = "" if snap.pane_exists else " (its pane is gone)"
        return failed_try(f"agent gone without an exit code{where}")
    if snap.idle_seconds >= settings.stall_timeout:
        return failed_try(f"stalled: no log or worktree change for {snap.idle_seconds:.0f}s")
    if snap.elapsed_seconds >= settings.wall_clock_timeout:
        return failed_try(f"past wall_clock_timeout ({snap.elapsed_seconds:.0f}s)")
    return []


def _judge_pr(worker: WorkerView, work: PrWork, poll: PrView | None) -> list[Action]:
    """A watched PR, on this cycle's poll (none: not due yet, nothing to do)."""
    ref, wid = worker.issue, worker.worker_id
    if work.open_failures:  # opening the PR failed on the network: tried again when its poll is due
        return [] if poll is None else [Action(ActionKind.OPEN_PR, wid, ref,
                                               f"opening the pull request again (it failed {work.open_failures} "
                                               "time(s) on the network)")]
    if poll is None or poll.error:
        return []
    if poll.state == "merged":
        return [Action(ActionKind.PR_DONE, wid, ref, "merged")]
    if poll.state == "closed":
        return [Action(ActionKind.SKIP, wid, ref, "pr closed")]
    if poll.checks != "failing" and poll.queued is None and (work.merge_unseen or work.merge_queued):
        # Our merge call was accepted, the PR is still open, and the forge will not say whether a queue holds it:
        # maybe queued, maybe nothing happened. Never taken as queued: waited for a bounded number of polls, then said.
        if work.merge_unseen < MAX_UNSEEN_POLLS:
            return []
        why = f" ({clip(poll.queue_doubt, 200)})" if poll.queue_doubt else ""
        return [Action(ActionKind.SKIP, wid, ref, f"merge not seen: the PR is still open {work.merge_unseen} polls "
                                         "after our merge call was accepted, and the forge would not say whether it "
                                         f"waits in a merge queue{why}; the PR is left as it is")]
    if poll.checks != "failing" and (poll.queued and work.merge == "auto" or work.merge_queued and poll.queued):
        return []  # a merge queue or auto-merge holds it (ours, or one set before our answer was recorded)
    if work.merge_queued:
        # Our merge was queued and the queue let it go unmerged (its checks failed, a push, someone dequeued it):
        # a fix round, never another merge call at whatever head it has now.
        names = ", ".join(poll.failed) if poll.checks == "failing" and poll.failed else ""
        why = (f"checks failed while queued to merge: {names or 'a check'}" if poll.queued else
               f"checks failed after our merge call: {names or 'a check'}" if poll.queued is None else
               f"left the merge queue unmerged{f' (checks failed: {names})' if names else ''}")
        if work.ci_fixes < work.max_ci_fixes:
            return [Action(ActionKind.FIX_CI, wid, ref, f"{why}; fix {work.ci_fixes + 1}/{work.max_ci_fixes}")]
        return [Action(ActionKind.SKIP, wid, ref, f"{why} after {work.ci_fixes} fix round(s) (max_ci_fixes "
                                         f"{work.max_ci_fixes})")]
    if work.head and poll.head and poll.head != work.head:
        return []  # the forge has not seen our last push yet: these checks are of an older head
    if poll.checks == "failing":
        names = ", ".join(poll.failed) or "a check"
        if work.ci_fixes < work.max_ci_fixes:
            return [Action(ActionKind.FIX_CI, wid, ref,
                           f"checks failed: {names}; fix {work.ci_fixes + 1}/{work.max_ci_fixes}")]
        return [Action(ActionKind.SKIP, wid, ref, f"checks still failing ({names}) after {work.ci_fixes} fix round(s) "
                                         f"(max_ci_fixes {work.max_ci_fixes})")]
    if poll.review == "changes_requested" and poll.review_id != work.review_seen:
        if work.review_rounds < work.max_review_rounds:
            return [Action(ActionKind.ADDRESS_REVIEW, wid, ref,
                           f"review requested changes; round {work.review_rounds + 1}/{work.max_review_rounds}")]
        return [Action(ActionKind.SKIP, wid, ref, f"review still requests changes after {work.review_rounds} round(s) "
                                         f"(max_review_rounds {work.max_review_rounds})")]
    green = poll.checks == "passing" or (poll.checks == "none" and poll.quiet_polls >= 2)
    if not green or poll.review == "changes_requested":
        return []
    if work.merge == "manual":
        return [Action(ActionKind.PR_DONE, wid, ref, "open and green; a human merges")]
    if poll.review == "required":
        return []  # the repository wants an approval first
    return [Action(ActionKind.MERGE_PR, wid, ref, "checks green" + (", approved" if poll.review == "approved" else ""))]


# --- journal form: plain JSON both ways, so a recorded cycle can be replayed ---------------------

def _ref(value: Any) -> IssueRef | None:
    return IssueRef(**value) if value else None


def cycle_to_json(snapshots: Sequence[Snapshot], state: State, settings: Settings,
                  actions: Sequence[Action]) -> dict[str, Any]:
    return {"snapshots": [asdict(s) for s in snapshots], "state": asdict(state), "settings": asdict(settings),
            "actions": [asdict(a) for a in actions]}


def cycle_from_json(doc: dict[str, Any]) -> tuple[list[Snapshot], State, Settings, list[Action]]:
    snapshots = [Snapshot(**s) for s in doc["snapshots"]]
    state = State(
        workers=tuple(WorkerView(**{**w, "issue": _ref(w["issue"]), "pr": PrWork(**w["pr"]) if w.get("pr") else None})
                      for w in doc["state"]["workers"]),
        issues=tuple(IssueView(**{**i, "ref": IssueRef(**i["ref"]), "depends_on": tuple(i["depends_on"])})
                     for i in doc["state"]["issues"]),
        paused=tuple(Pause(**p) for p in doc["state"].get("paused", [])),
        prs=tuple(PrView(**{**p, "failed": tuple(p["failed"])}) for p in doc["state"].get("prs", [])),
        commands=tuple(Command(**c) for c in doc["state"].get("commands", [])))
    actions = [Action(**{**a, "issue": _ref(a["issue"])}) for a in doc["actions"]]
    return snapshots, state, Settings(**doc["settings"]), actions
