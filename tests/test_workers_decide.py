"""decide() over a table of snapshots: the original's cases and every fault the issue says not to repeat."""
from __future__ import annotations

import inspect
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts" / "proof-workers"))

from orchestrator import decide as decide_module  # noqa: E402
from orchestrator.decide import (Action, Pause, Settings, Snapshot, State, WorkerView, cycle_from_json,  # noqa: E402
                                 cycle_to_json, decide)
from orchestrator.queue import IssueRef, IssueView  # noqa: E402

SETTINGS = Settings(max_retries=2, stall_timeout=100, wall_clock_timeout=1000)


def ref(n: int) -> IssueRef:
    return IssueRef("p", n)


def issue(n: int, status: str = "pending", wave: int = 1, priority: int = 1, deps: tuple[int, ...] = (),
          stages: int = 3) -> IssueView:
    return IssueView(ref(n), status, wave, priority, deps, stages)


def busy(worker: int = 1, n: int = 1, stage: int = 0, retries: int = 0, nudged: bool = False, launched: bool = True,
         try_id: int = 1) -> WorkerView:
    return WorkerView(worker, ref(n), stage, retries, nudged, launched, try_id)


def snap(worker: int = 1, try_id: int = 1, pane: bool = True, alive: bool = False, exit_code: int | None = None,
         commits: int = 0, dirty: bool = False, idle: float = 0, elapsed: float = 0,
         lost: bool | None = None, switched: str = "") -> Snapshot:
    return Snapshot(worker, try_id, pane, alive, exit_code, commits, dirty, idle, elapsed,
                    pane_lost=not pane if lost is None else lost, switched_to=switched)


def kinds(actions: list[Action]) -> list[tuple[str, int, int | None]]:
    return [(a.kind, a.worker, a.issue.number if a.issue else None) for a in actions]


def test_idle_workers_take_the_best_eligible_issues_by_wave_priority_number_never_the_same_one():
    issues = (issue(9, wave=2, priority=1), issue(5, priority=2), issue(4, priority=2), issue(7, priority=1),
              issue(8, deps=(1,)), issue(1, status="in_progress"))
    state = State((WorkerView(1), WorkerView(2), WorkerView(3), busy(4, 1)), issues)
    actions = decide([snap(4, alive=True)], state, SETTINGS)
    assert kinds(actions) == [("reassign", 1, 7), ("reassign", 2, 4), ("reassign", 3, 5)]


CASES = [
    # (name, worker, snapshot, issue stages, expected kinds)
    ("running and making progress: nothing to do", busy(), snap(alive=True, idle=5, elapsed=50), 3, []),
    ("exit 0 with a commit, more stages: push then advance", busy(), snap(exit_code=0, commits=1), 3,
     ["push", "advance_stage"]),
    ("exit 0 with commits in the last stage: push then complete", busy(stage=2), snap(exit_code=0, commits=2), 3,
     ["push", "mark_complete", "idle"]),
    ("exit 0 without a commit is a failed try, never an advance", busy(), snap(exit_code=0), 3, ["restart"]),
    ("exit 0 without a commit at max retries: skip", busy(retries=2), snap(exit_code=0), 3, ["skip", "idle"]),
    ("exit 0 leaving uncommitted edits: one nudge restart", busy(), snap(exit_code=0, dirty=True), 3, ["restart"]),
    ("uncommitted edits again after the nudge: plain failed try", busy(retries=1, nudged=True),
     snap(exit_code=0, dirty=True), 3, ["restart"]),
    ("non-zero exit: restart", busy(), snap(exit_code=1, commits=1), 3, ["restart"]),
    ("non-zero exit with progress at max retries: skip (no endless restarts)", busy(retries=2),
     snap(exit_code=1, commits=3), 3, ["skip", "idle"]),
    ("retries ran out in stage 1 of 3: the issue fails, never advances", busy(stage=0, retries=2),
     snap(exit_code=0, dirty=False), 3, ["skip", "idle"]),
    ("agent gone without a signal, commits present: restart, not an unverified push", busy(),
     snap(alive=False, commits=2), 3, ["restart"]),
    ("pane gone: restart", busy(), snap(pane=False, alive=False), 3, ["restart"]),
    ("stalled: restart", busy(), snap(alive=True, idle=100), 3, ["restart"]),
    ("stalled at max retries: skip", busy(retries=2), snap(alive=True, idle=500), 3, ["skip", "idle"]),
    ("past wall clock: restart", busy(), snap(alive=True, idle=1, elapsed=1000), 3, ["restart"]),
    ("a snapshot of another try never decides", busy(try_id=4), snap(try_id=3, exit_code=0, commits=1), 3, []),
    ("a try prepared but never started is resumed, not counted", busy(launched=False), snap(), 3, ["resume"]),
    ("exit 0 on another branch: a failed try that says so, never 'without a new commit'", busy(),
     snap(exit_code=0, switched="rogue"), 3, ["restart"]),
    ("exit 0 with commits but on another branch: no push", busy(), snap(exit_code=0, commits=1, switched="x"), 3,
     ["restart"]),
    ("on another branch at max retries: skip", busy(retries=2), snap(exit_code=0, switched="rogue"), 3,
     ["skip", "idle"]),
    ("a running try on another branch is left to finish", busy(), snap(alive=True, switched="rogue"), 3, []),
]


@pytest.mark.parametrize("name,worker,snapshot,stages,expected", CASES, ids=[c[0] for c in CASES])
def test_decide_table(name, worker, snapshot, stages, expected):
    state = State((worker,), (issue(1, "in_progress", stages=stages),))
    assert [a.kind for a in decide([snapshot], state, SETTINGS)] == expected


def test_restart_says_why_and_carries_continuation_and_nudge():
    state = State((busy(),), (issue(1, "in_progress"),))
    [action] = decide([snap(exit_code=0, dirty=True)], state, SETTINGS)
    assert action.nudge and action.continuation and "uncommitted" in action.reason and "retry 1/2" in action.reason


def test_a_completed_issue_unblocks_its_dependents_only_next_cycle_after_its_push_held():
    issues = (issue(1, "in_progress", stages=1), issue(2, deps=(1,)))
    state = State((busy(1, 1), WorkerView(2)), issues)
    assert kinds(decide([snap(1, exit_code=0, commits=1)], state, SETTINGS)) == [
        ("push", 1, 1), ("mark_complete", 1, 1), ("idle", 1, None)]
    after = State((WorkerView(1), WorkerView(2)), (issue(1, "completed", stages=1), issue(2, deps=(1,))))
    assert kinds(decide([], after, SETTINGS)) == [("reassign", 1, 2)]


def test_a_skipped_issue_blocks_its_dependents_and_frees_the_worker_for_other_work():
    issues = (issue(1, "in_progress"), issue(2, deps=(1,)), issue(3, wave=2))
    state = State((busy(1, 1, retries=2),), issues)
    assert kinds(decide([snap(exit_code=3)], state, SETTINGS)) == [("skip", 1, 1), ("reassign", 1, 3)]
    failed = State((WorkerView(1),), (issue(1, "failed"), issue(2, deps=(1,))))
    assert decide([], failed, SETTINGS) == []


def test_decide_is_deterministic_and_calls_no_model_or_process():
    state = State((busy(),), (issue(1, "in_progress"),))
    first = decide([snap(exit_code=0, commits=1)], state, SETTINGS)
    assert first == decide([snap(exit_code=0, commits=1)], state, SETTINGS)
    source = inspect.getsource(decide_module)
    for forbidden in ("subprocess", "import os", "claude", "time.", "random"):
        assert forbidden not in source


def test_a_push_that_keeps_failing_fails_the_issue_after_a_bounded_number_of_attempts():
    from orchestrator.decide import MAX_PUSH_ATTEMPTS

    worker = WorkerView(1, ref(1), 0, 0, False, True, 1, MAX_PUSH_ATTEMPTS - 1)
    state = State((worker,), (issue(1, "in_progress"),))
    assert [a.kind for a in decide([snap(exit_code=0, commits=1)], state, SETTINGS)] == ["push", "advance_stage"]
    stuck = State((WorkerView(1, ref(1), 0, 0, False, True, 1, MAX_PUSH_ATTEMPTS),), (issue(1, "in_progress"),))
    [skip, idle] = decide([snap(exit_code=0, commits=1)], stuck, SETTINGS)
    assert skip.kind == "skip" and "push failed" in skip.reason and idle.kind == "idle"


def test_a_try_that_cannot_be_started_is_resumed_a_bounded_number_of_times():
    assert [a.kind for a in decide([snap()], State((WorkerView(1, ref(1), launched=False, try_id=1, start_failures=1),),
                                                   (issue(1, "in_progress"),)), SETTINGS)] == ["resume"]
    [skip, idle] = decide([snap()], State((WorkerView(1, ref(1), launched=False, try_id=1, start_failures=2),),
                                          (issue(1, "in_progress"),)), SETTINGS)
    assert skip.kind == "skip" and "could not be started" in skip.reason


LOST_CASES = [
    # (name, worker, snapshot, expected (kind, counted))
    ("the pane is gone and the try left no exit code (tmux killed): restarted, not counted",
     busy(retries=2), snap(pane=False), [("restart", False)]),
    ("the pane was re-created (a new tmux server) and the try hung up: restarted, not counted",
     busy(retries=2), snap(lost=True, exit_code=129), [("restart", False)]),
    ("a hang-up in a pane that is still the try's own: a failed try like any other",
     busy(), snap(exit_code=129), [("restart", True)]),
    ("the machine shut down (the wrapper got SIGTERM, tmux is new after the boot): restarted, not counted",
     busy(retries=2), snap(lost=True, exit_code=143), [("restart", False)]),
    ("a SIGTERM in a pane that is still the try's own (someone killed the wrapper): counted",
     busy(), snap(exit_code=143), [("restart", True)]),
    ("the pane is gone but the try exited 0 with a commit first: its work counts",
     busy(), snap(pane=False, exit_code=0, commits=1), [("push", True), ("advance_stage", True)]),
    ("the pane is gone and the try failed on its own (exit 1): counted",
     busy(), snap(pane=False, exit_code=1), [("restart", True)]),
    ("tries lost to tmux again and again (an agent killing its own pane): counted past the bound",
     WorkerView(1, ref(1), 0, 2, False, True, 1, lost_tries=decide_module.MAX_LOST_TRIES), snap(pane=False),
     [("skip", True), ("idle", True)]),
]


@pytest.mark.parametrize("name,worker,snapshot,expected", LOST_CASES, ids=[c[0] for c in LOST_CASES])
def test_a_try_lost_to_tmux_or_the_machine_uses_nobodys_retries(name, worker, snapshot, expected):
    state = State((worker,), (issue(1, "in_progress"),))
    assert [(a.kind, a.counted) for a in decide([snapshot], state, SETTINGS)] == expected


def test_a_try_that_ended_on_another_branch_says_which_one():
    state = State((busy(),), (issue(1, "in_progress"),))
    [action] = decide([snap(exit_code=0, switched="rogue-branch")], state, SETTINGS)
    assert action.kind == "restart" and "rogue-branch" in action.reason and "without a new commit" not in action.reason


PROJECT_PAUSED = (Pause("p", None, "alert"),)
ISSUE_1_PAUSED = (Pause("p", 1, "user"),)
PAUSE_CASES = [
    # (name, paused, worker, snapshot, expected kinds): while paused no try starts and running tries finish
    ("paused project, try running: nothing", PROJECT_PAUSED, busy(), snap(alive=True, idle=5), []),
    ("paused project, stalled try: not restarted (no new try while paused)", PROJECT_PAUSED, busy(),
     snap(alive=True, idle=500), []),
    ("paused project, try failed: no restart", PROJECT_PAUSED, busy(), snap(exit_code=1), []),
    ("paused project, stage verified: no push, no next stage until resume", PROJECT_PAUSED, busy(),
     snap(exit_code=0, commits=1), []),
    ("paused project, last stage verified: not completed while paused", PROJECT_PAUSED, busy(stage=2),
     snap(exit_code=0, commits=1), []),
    ("paused project, prepared try: not started", PROJECT_PAUSED, busy(launched=False), snap(), []),
    ("paused project, retries exhausted: not even skipped while paused", PROJECT_PAUSED, busy(retries=2),
     snap(exit_code=1), []),
    ("paused issue, stage verified: held", ISSUE_1_PAUSED, busy(), snap(exit_code=0, commits=1), []),
    ("a pause of another issue holds nothing here", (Pause("p", 2, "user"),), busy(),
     snap(exit_code=0, commits=1), ["push", "advance_stage"]),
    ("a pause of another project holds nothing here", (Pause("q", None, "alert"),), busy(),
     snap(exit_code=1), ["restart"]),
]


@pytest.mark.parametrize("name,paused,worker,snapshot,expected", PAUSE_CASES, ids=[c[0] for c in PAUSE_CASES])
def test_decide_while_paused(name, paused, worker, snapshot, expected):
    state = State((worker,), (issue(1, "in_progress"),), paused)
    assert [a.kind for a in decide([snapshot], state, SETTINGS)] == expected


def test_free_workers_take_no_issue_of_a_paused_project_or_a_paused_issue():
    issues = (issue(1), issue(2), IssueView(IssueRef("q", 1), "pending", 1, 5))
    free = (WorkerView(1), WorkerView(2), WorkerView(3))
    assert kinds(decide([], State(free, issues, (Pause("p", None, "alert"),)), SETTINGS)) == [("reassign", 1, 1)]
    taken = decide([], State(free, issues, (Pause("p", 1, "user"), Pause("p", 1, "alert"))), SETTINGS)
    assert [(a.worker, str(a.issue)) for a in taken] == [(1, "p#2"), (2, "q#1")]
    assert decide([], State(free, issues, (Pause("p", None, "user"), Pause("q", None, "rate_limit"))),
                  SETTINGS) == []


def test_a_freed_worker_takes_no_paused_issue_and_the_pause_is_replayed_from_the_journal():
    state = State((busy(1, 1, stage=2), WorkerView(2)), (issue(1, "in_progress"), issue(2)), (Pause("p", 2, "user"),))
    actions = decide([snap(1, exit_code=0, commits=1)], state, SETTINGS)
    assert kinds(actions) == [("push", 1, 1), ("mark_complete", 1, 1), ("idle", 1, None)]
    doc = cycle_to_json([snap(1, exit_code=0, commits=1)], state, SETTINGS, actions)
    snapshots, replayed_state, settings, recorded = cycle_from_json(doc)
    assert replayed_state == state and decide(snapshots, replayed_state, settings) == recorded
    without = {**doc, "state": {k: v for k, v in doc["state"].items() if k != "paused"}}
    snapshots = [{k: v for k, v in s.items() if k != "switched_to"} for s in doc["snapshots"]]
    assert cycle_from_json({**without, "snapshots": snapshots})[1].paused == ()  # journals written before pauses


AGENT_CASES = [
    # (name, worker, snapshot, expected (kind, counted)): what the agent's own events say about how a try ended
    ("ended on a rate limit: hold (pause the project), not a retry", busy(),
     Snapshot(1, 1, True, False, 1, 0, False, 0, 0, agent_stop="rate_limit"), [("hold", False)]),
    ("ended on a rate limit with every retry used: still held, never failed", busy(retries=2),
     Snapshot(1, 1, True, False, 1, 0, False, 0, 0, agent_stop="rate_limit"), [("hold", False)]),
    ("ended not logged in: hold for auth", busy(),
     Snapshot(1, 1, True, False, 1, 0, False, 0, 0, agent_stop="auth"), [("hold", False)]),
    ("exit 0 with a commit but the result is an error: a failed try", busy(),
     Snapshot(1, 1, True, False, 0, 1, False, 0, 0, agent_stop="error"), [("restart", True)]),
    ("still running while rate limited: nothing", busy(),
     Snapshot(1, 1, True, True, None, 0, False, 5, 50, agent_stop="rate_limit"), []),
    ("over its budget while running: stopped, the issue fails (no retry can help)", busy(),
     Snapshot(1, 1, True, True, None, 0, False, 5, 50, agent_stop="budget", agent_detail="budget: $2.10 of $2.00"),
     [("skip", True), ("idle", True)]),
    ("over its budget when it ended, even with a commit: fails", busy(),
     Snapshot(1, 1, True, False, 0, 1, False, 5, 50, agent_stop="budget", agent_detail="budget: 12 of 10 turns"),
     [("skip", True), ("idle", True)]),
]


@pytest.mark.parametrize("name,worker,snapshot,expected", AGENT_CASES, ids=[c[0] for c in AGENT_CASES])
def test_decide_on_what_the_agent_reported(name, worker, snapshot, expected):
    state = State((worker,), (issue(1, "in_progress"),))
    actions = decide([snapshot], state, SETTINGS)
    assert [(a.kind, a.counted) for a in actions] == expected
    if actions and actions[0].kind == "hold":
        assert actions[0].reason.startswith(snapshot.agent_stop)
    if actions and snapshot.agent_stop == "budget":
        assert actions[0].reason == snapshot.agent_detail


def test_an_old_journal_without_agent_fields_replays():
    doc = cycle_to_json([snap(exit_code=1)], State((busy(),), (issue(1, "in_progress"),)), SETTINGS,
                        decide([snap(exit_code=1)], State((busy(),), (issue(1, "in_progress"),)), SETTINGS))
    for s in doc["snapshots"]:
        s.pop("agent_stop")
    snapshots, state, settings, actions = cycle_from_json(doc)
    assert decide(snapshots, state, settings) == actions


def setting_up(**kw) -> Snapshot:
    return replace_snap(snap(**kw), setting_up=True)


def replace_snap(snapshot: Snapshot, **changes) -> Snapshot:
    from dataclasses import replace

    return replace(snapshot, **changes)


SETUP_CASES = [
    # (name, worker, snapshot, expected (kind, reason, counted) of the first action)
    ("a try setting up its worktree is neither stalled nor late (the set-up has its own timeout)", busy(),
     setting_up(alive=True, idle=10_000, elapsed=10_000), []),
    ("a failed set-up fails the issue: no retry used, whatever the retries left", busy(),
     replace_snap(snap(exit_code=1), setup_failed="npm ERR! missing script: ci"),
     [("skip", "setup failed: npm ERR! missing script: ci", False)]),
    ("a failed set-up on a lost pane still fails the issue (never restarted as tmux's loss)", busy(),
     replace_snap(snap(pane=False, exit_code=1), setup_failed="x timed out after 600s"),
     [("skip", "setup failed: x timed out after 600s", False)]),
    ("a wrapper gone during the set-up is a failed try (its next try sets up again)", busy(),
     setting_up(alive=False), [("restart", "agent gone without an exit code; retry 1/2", True)]),
    ("a set-up whose pane hung up is tmux's loss, not counted", busy(),
     setting_up(pane=False, exit_code=129),
     [("restart", "tmux went away (its pane is gone or new; the try hung up); not counted as a retry", False)]),
]


@pytest.mark.parametrize("name,worker,snapshot,expected", SETUP_CASES, ids=[c[0] for c in SETUP_CASES])
def test_decide_on_a_try_setting_up_its_worktree(name, worker, snapshot, expected):
    state = State((worker,), (issue(1, "in_progress"),))
    actions = decide([snapshot], state, SETTINGS)
    assert [(a.kind, a.reason, a.counted) for a in actions if a.kind != "idle"] == expected
    assert cycle_from_json(cycle_to_json([snapshot], state, SETTINGS, actions))[0] == [snapshot]


# --- action kinds: one closed set (ActionKind); the journal says the same words it always said -----------------

JOURNAL_WORDS = ["push", "advance_stage", "mark_complete", "reassign", "restart", "skip", "idle", "resume", "hold",
                 "retry", "send", "refuse", "open_pr", "watch_pr", "fix_ci", "address_review", "merge_pr", "pr_done"]


def test_action_kinds_are_one_closed_set_with_the_journal_s_words():
    from orchestrator.decide import ActionKind

    assert sorted(ActionKind) == sorted(JOURNAL_WORDS) and all(isinstance(k, str) for k in ActionKind)
    assert Action("push", 1).kind is ActionKind.PUSH, "a kind given as its word is the member"
    with pytest.raises(ValueError, match="unknown action kind 'pushh'"):
        Action("pushh", 1)


def test_a_journalled_cycle_says_its_kinds_as_plain_words_and_replays_them_as_members():
    import json

    from orchestrator.decide import ActionKind

    state = State((busy(1, 1, stage=2), WorkerView(2)), (issue(1, "in_progress"), issue(2)))
    actions = decide([snap(1, exit_code=0, commits=1)], state, SETTINGS)
    text = json.dumps(cycle_to_json([snap(1, exit_code=0, commits=1)], state, SETTINGS, actions))
    assert [a["kind"] for a in json.loads(text)["actions"]] == ["push", "mark_complete", "reassign"]
    assert '"kind": "push"' in text and "ActionKind" not in text
    replayed = cycle_from_json(json.loads(text))[3]
    assert replayed == actions and [type(a.kind) for a in replayed] == [ActionKind] * 3


@pytest.mark.parametrize("kind", ["pushh", "", "PUSH", "x" * 100_000, None, 3])
def test_a_journal_with_an_unknown_kind_is_refused_in_one_clear_line(kind):
    state = State((busy(1, 1),), (issue(1, "in_progress"),))
    doc = cycle_to_json([snap(1, exit_code=1)], state, SETTINGS, decide([snap(1, exit_code=1)], state, SETTINGS))
    doc["actions"][0]["kind"] = kind
    with pytest.raises(ValueError, match=r"^unknown action kind .* \(known: push, advance_stage, ") as err:
        cycle_from_json(doc)
    assert len(str(err.value)) < 600 and "\n" not in str(err.value)


def test_every_action_kind_has_its_handler_in_act_or_is_carried_out_by_commands():
    from orchestrator import act, commands
    from orchestrator.decide import COMMAND_KINDS, ActionKind

    handled = set(act.HANDLERS)
    assert handled | COMMAND_KINDS == set(ActionKind) and not handled & COMMAND_KINDS
    assert all(h is getattr(act.Executor, f"do_{k}") for k, h in act.HANDLERS.items()), "kind k runs do_<k>"
    stale = {name[3:] for name in dir(act.Executor) if name.startswith("do_")} - set(ActionKind)
    assert not stale, f"handlers of no kind: {stale}"
    source = inspect.getsource(commands.execute)
    assert all(f"ActionKind.{k.name}" in source for k in COMMAND_KINDS), "commands.execute carries each one out"
