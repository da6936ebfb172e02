"""Steering a run: pause, resume, retry, kill and send, through a running monitor's command queue or, with no
monitor, applied by the verb itself under the monitor's lock.

Real tmux on a private socket, real git with a bare remote, the fake agent of workers_fixtures. A running monitor
is a real `python3 -m orchestrator monitor` process with a long cycle: a verb is answered because the monitor
wakes for its command, not because a cycle happened to come.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, git
from workers_fixtures import HANG_ON, monitor_env, one_try_given_a_follow_up  # noqa: F401
from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401
from workers_fixtures import orchestrator_cli as cli, status_document as status  # noqa: E402

from orchestrator.decide import Action, Command, Settings, State, WorkerView, cycle_from_json, decide
from orchestrator.monitor import monitor
from orchestrator.queue import IssueRef, IssueView
from orchestrator.run import open_run
from orchestrator.state import read_lines

PACKAGE = ROOT / "scripts" / "proof-workers"
SETTINGS = Settings(max_retries=2, stall_timeout=100, wall_clock_timeout=1000)


def start_monitor(env: dict[str, str] | None = None, cycle: str = "30") -> subprocess.Popen[str]:
    """A real monitor with a long cycle: it runs its first cycle at once, then waits (for a command, or 30 s)."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "monitor", "--cycle", cycle, "--no-delay"],
                            cwd=PACKAGE, env=monitor_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    if process.poll() is None:
        process.kill()
    return process.communicate(timeout=60)


def running_try(proj, number: int) -> int:
    """Wait until `number`'s try has started and its agent runs; returns the agent's process group."""
    def started() -> int | None:
        for record in (proj.state / "workers").glob("worker-*.json"):
            doc = json.loads(record.read_text())
            pid_file = proj.state / "signals" / f"worker-{doc['worker_id']}-try-{doc['try_id']}.pid"
            if doc.get("issue_number") == number and pid_file.exists() and (proj.script.parent / "runs" /
                                                                            f"{number}.count").exists():
                return int(pid_file.read_text())
        return None
    return retry_until(started, seconds=90)


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (a zombie does not: it waits for a parent to collect it, and
    the test process may be that parent, a subreaper once it ran lib.runner)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != b"Z":
                return True
    return False


def failure_of(number: int) -> str:
    return next(f["reason"] for f in status()["failures"] if f["issue"] == number)


def actions_named(proj, action: str) -> list[dict[str, Any]]:
    return [e for e in proj.events() if e["action"] == action]


def assert_journal_replays(proj) -> None:
    journal = read_lines(proj.state / "journal.jsonl")
    assert journal
    for entry in journal:
        snapshots, state, settings, actions = cycle_from_json(entry)
        assert decide(snapshots, state, settings) == actions


def one_line_refusal(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: ") and words in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stdout == "", result


def queue_left(proj) -> list[str]:
    root = proj.state / "commands"
    return sorted(p.parent.name + "/" + p.name for sub in ("queued", "taken") for p in (root / sub).glob("*.json"))


# --- decide: commands are part of its input -----------------------------------------------------------------

def ref(n: int) -> IssueRef:
    return IssueRef("p", n)


def view(n: int, status: str = "pending", deps: tuple[int, ...] = ()) -> IssueView:
    return IssueView(ref(n), status, 1, 1, deps, 1)


def test_decide_turns_commands_into_actions_before_judging_and_frees_a_killed_worker_at_once():
    state = State((WorkerView(1, ref(1), try_id=3), WorkerView(2)),
                  (view(1, "in_progress"), view(2, "failed"), view(3, deps=(2,)), view(4, "completed")),
                  commands=(Command("a", "kill", "p", 1), Command("b", "retry", "p", 2),
                            Command("c", "send", "p", 4, "more"), Command("d", "retry", "p", 3),
                            Command("e", "kill", "p", 1)))
    actions = decide([], state, SETTINGS)
    assert [(a.kind, a.worker, a.issue.number if a.issue else None, a.command) for a in actions] == [
        ("skip", 1, 1, "a"), ("retry", 0, 2, "b"), ("refuse", 0, 4, "c"), ("refuse", 0, 3, "d"),
        ("refuse", 0, 1, "e"),
        ("reassign", 1, 2, "")]  # the killed worker takes the retried issue in the same cycle
    assert actions[0].reason == "killed by user" and actions[0].counted is False
    assert [a.reason for a in actions if a.kind == "refuse"] == [
        "#4 is completed: it has no next try", "#3 is pending: only a failed issue is retried",
        "#1 is failed: no try of it runs"]
    assert cycle_from_json(json.loads(json.dumps(_cycle(state, actions))))[1] == state


def _cycle(state: State, actions: list[Action]) -> dict[str, Any]:
    from orchestrator.decide import cycle_to_json

    return cycle_to_json([], state, SETTINGS, actions)


def test_a_killed_workers_finished_try_is_not_judged_and_send_goes_to_the_holder():
    from orchestrator.decide import Snapshot

    state = State((WorkerView(1, ref(1), try_id=1), WorkerView(2, ref(2), try_id=1)),
                  (view(1, "in_progress"), view(2, "in_progress")),
                  commands=(Command("a", "kill", "p", 1), Command("b", "send", "p", 2, "hi")))
    done = [Snapshot(1, 1, True, False, 0, 1, False, 0, 0), Snapshot(2, 1, True, True, None, 0, False, 0, 0)]
    actions = decide(done, state, SETTINGS)
    assert [(a.kind, a.worker) for a in actions] == [("skip", 1), ("send", 2), ("idle", 1)]


# --- kill ---------------------------------------------------------------------------------------------------

def test_kill_with_a_running_monitor_stops_the_try_at_once_and_fails_the_issue_without_a_retry(project):
    proj = project([{"number": 1, "title": "hangs"}, {"number": 2, "title": "after", "depends_on": [1]}],
                   script={1: ["hang"]}, pipeline=["implement"], num_workers=1, **HANG_ON)
    running = start_monitor()
    try:
        group = running_try(proj, 1)
        killed = cli("kill", "1")
        assert killed.returncode == 0, killed.stderr
        assert "killed demo#1 (worker 1, try 1)" in killed.stdout and "killed by user" in killed.stdout
        assert f"applied by the running monitor, pid {running.pid}" in killed.stdout
        retry_until(lambda: not group_alive(group), seconds=30)  # signalled; reaped by its wrapper
        assert proj.issue(1)["status"] == "failed"
        assert running.wait(timeout=60) == 1  # nothing left to run: #2 waits on the failed #1
    finally:
        stop(running)
    assert failure_of(1) == "killed by user"
    assert [f["reason"] for f in status()["failures"] if f["issue"] == 2] == ["waits on failed #1"]
    assert actions_named(proj, "restart") == [] and len(actions_named(proj, "skip")) == 1
    assert queue_left(proj) == []
    assert_journal_replays(proj)


def test_kill_with_no_monitor_acts_under_the_lock_and_refuses_what_it_cannot_kill(project, inv):
    proj = project([{"number": 1, "title": "hangs"}, {"number": 2, "title": "later", "wave": 2}],
                   script={1: ["hang"]}, pipeline=["implement"], num_workers=1, **HANG_ON)
    assert monitor(open_run(), once=True, say=lambda _: None) == 0  # starts #1's try, then exits
    group = running_try(proj, 1)
    for args, words in ((["kill", "2"], "kill: #2 is pending: no try of it runs"),
                        (["kill", "9"], "issue #9 is not in the issue list"),
                        (["kill", "x"], "expected a whole number"),
                        (["kill"], "the following arguments are required: ISSUE")):
        one_line_refusal(cli(*args), words)
    assert group_alive(group) and queue_left(proj) == []

    killed = inv("workers.kill", "1")
    assert killed.code == 0, killed.err
    assert "killed demo#1" in killed.out and "applied by the running monitor" not in killed.out
    retry_until(lambda: not group_alive(group), seconds=30)  # signalled; reaped by its wrapper
    assert proj.issue(1)["status"] == "failed" and failure_of(1) == "killed by user"
    assert json.loads((proj.state / "workers" / "worker-1.json").read_text())["issue_number"] is None
    one_line_refusal(cli("kill", "1"), "kill: #1 is failed: no try of it runs")
    assert_journal_replays(proj)


@pytest.mark.parametrize("step", ["taken", "applied"])
def test_a_monitor_killed_between_taking_and_applying_a_command_loses_it_never_and_applies_it_once(project, step):
    """kill -9 of the monitor right after it wrote the command as taken, or right after it applied it (before its
    outcome): the command stays in taken/ and the next holder of the lock (here the waiting verb itself) applies
    it, or sees it applied, exactly once."""
    proj = project([{"number": 1, "title": "hangs"}], script={1: ["hang"]}, pipeline=["implement"], num_workers=1,
                   **HANG_ON)
    running = start_monitor({"ORCHESTRATOR_COMMANDS_CRASH_AT": step})
    try:
        group = running_try(proj, 1)
        killed = cli("kill", "1")
        assert running.wait(timeout=60) == -signal.SIGKILL
    finally:
        stop(running)
    assert killed.returncode == 0, killed.stderr
    assert "killed demo#1" in killed.stdout and "applied by the running monitor" not in killed.stdout
    retry_until(lambda: not group_alive(group), seconds=30)  # signalled; reaped by its wrapper
    assert proj.issue(1)["status"] == "failed" and failure_of(1) == "killed by user"
    assert len(actions_named(proj, "skip")) == 1 and len(actions_named(proj, "command")) == 1
    assert queue_left(proj) == [] and len(list((proj.state / "commands" / "done").glob("*.json"))) == 1
    assert_journal_replays(proj)


# --- retry --------------------------------------------------------------------------------------------------

def test_retry_with_a_running_monitor_puts_a_failed_issue_back_keeping_its_branch_and_unblocks_its_dependent(
        project):
    proj = project([{"number": 1, "title": "fails in review"}, {"number": 2, "title": "needs 1", "depends_on": [1]},
                    {"number": 3, "title": "keeps the run alive", "priority": 2}],
                   script={1: ["ok", "fail", "fail", "fail", "ok"], 3: ["hang"]},
                   pipeline=["implement", "review"], num_workers=2, cycle_interval=0.2, **HANG_ON)
    running = start_monitor(cycle="0.2")
    try:
        retry_until(lambda: proj.issue(1).get("status") == "failed", seconds=120)
        assert [f["reason"] for f in status()["failures"] if f["issue"] == 2] == ["waits on failed #1"]
        again = cli("retry", "1")
        assert again.returncode == 0, again.stderr
        assert "retry demo#1: pending again, its retries reset; it starts again at stage review on " \
               "feature/issue-1" in again.stdout
        assert "no longer blocked: #2" in again.stdout and "applied by the running monitor" in again.stdout
        retry_until(lambda: proj.issue(2).get("status") == "completed", seconds=120)
        one_line_refusal(cli("retry", "2"), "retry: #2 is completed: only a failed issue is retried")
        assert cli("kill", "3").returncode == 0
        assert running.wait(timeout=60) == 1
    finally:
        stop(running)
    assert proj.issue(1)["status"] == "completed"
    assert proj.remote_commits("feature/issue-1") == ["review #1", "implement #1"]  # the first stage's kept
    assert [e["issue"] for e in actions_named(proj, "retry")] == [1]
    assert_journal_replays(proj)


def test_retry_with_no_monitor_sets_pending_and_refuses_an_issue_that_is_not_failed(project, inv):
    proj = project([{"number": 1, "title": "one", "status": "failed", "pipeline_stage": 1},
                    {"number": 2, "title": "two"}], pipeline=["implement", "review"], num_workers=1)
    one_line_refusal(cli("retry", "2"), "retry: #2 is pending: only a failed issue is retried")
    again = inv("workers.retry", "1")
    assert again.code == 0, again.err
    assert "retry demo#1: pending again" in again.out and "stage review" in again.out
    assert "no monitor runs: start it" in again.out
    assert proj.issue(1)["status"] == "pending" and proj.issue(1)["pipeline_stage"] == 1
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert [i["status"] for i in proj.doc()["issues"]] == ["completed", "completed"]
    assert proj.remote_commits("feature/issue-1") == ["review #1"]


def test_a_verb_killed_while_applying_leaves_its_command_for_the_next_holder_who_applies_it_once(project):
    proj = project([{"number": 1, "title": "one", "status": "failed"}], pipeline=["implement"], num_workers=1)
    crashed = cli("retry", "1", env={"ORCHESTRATOR_COMMANDS_CRASH_AT": "applied"})
    assert crashed.returncode == -signal.SIGKILL
    assert proj.issue(1)["status"] == "pending" and [p.split("/")[0] for p in queue_left(proj)] == ["taken"]
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert queue_left(proj) == [] and proj.issue(1)["status"] == "completed"
    assert len(actions_named(proj, "retry")) == 1 and len(actions_named(proj, "reassign")) == 1
    [done] = (proj.state / "commands" / "done").glob("*.json")
    assert json.loads(done.read_text())["ok"] is True


# --- send ---------------------------------------------------------------------------------------------------

def test_send_with_a_running_monitor_is_kept_for_the_next_try_and_says_so(project):
    proj = project([{"number": 1, "title": "stalls once"}], script={1: ["hang", "ok"]}, pipeline=["implement"],
                   num_workers=1, stall_timeout=3)
    running = start_monitor(cycle="0.5")
    try:
        running_try(proj, 1)
        sent = cli("send", "1", "--", "-v: also update the changelog")
        assert sent.returncode == 0, sent.stderr
        assert "stored for demo#1: given at the start of its next try (its running try (worker 1, try 1) reads " \
               "its prompt from a file and takes no input while it runs)" in sent.stdout
        assert "if this try completes #1, no try follows to take it: to act on it now, kill 1, then retry 1; " \
            "status shows it kept until a try takes it" in sent.stdout
        assert "applied by the running monitor" in sent.stdout
        one_line_refusal(cli("send", "1", "  "), "send: the text is empty")
        assert running.wait(timeout=120) == 0  # the stalled try restarts with the instruction, then completes
    finally:
        stop(running)
    first, second = proj.prompts(1)
    assert "also update the changelog" not in first
    assert "## Follow-up instructions from the user\n1. -v: also update the changelog" in second
    given = json.loads((proj.state / "followups.json").read_text())["issues"]["1"]
    assert [e["given_in"] for e in given] == ["worker-1-try-2"]
    assert_journal_replays(proj)


def test_send_with_no_monitor_is_stored_and_given_once_to_the_next_try(project, inv):
    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "done", "status": "completed"}],
                   pipeline=["implement"], num_workers=1)
    for args, words in ((["send", "1", ""], "send: the text is empty"),
                        (["send", "2", "x"], "send: #2 is completed: it has no next try"),
                        (["send", "7", "x"], "issue #7 is not in the issue list"),
                        (["send", "1", "x" * 20_001], "more than 20000"),
                        (["send", "1", os.fsdecode(b"caf\xe9")], "send: the text is not valid UTF-8"),
                        (["pause", "--detail", os.fsdecode(b"\xff")], "pause: the text is not valid UTF-8")):
        one_line_refusal(cli(*args), words)
    sent = inv("workers.send", "1", "use the new API")
    assert sent.code == 0, sent.err
    assert "stored for demo#1: given at the start of its next try (no try of it runs now)" in sent.out
    assert "no try follows" not in sent.out
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    [prompt] = proj.prompts(1)
    assert prompt.count("use the new API") == 1


def test_send_reaches_a_running_claude_that_reads_stream_json_input_and_the_model_sees_it(project, tmp_path):
    """Claude Code started with --input-format stream-json: its prompt is the first message on stdin, and a
    follow-up sent while its tool call runs is passed on at once; the model's next call carries it."""
    import shlex

    import fake_anthropic as fa
    from agent_fixtures import claude_env, require_claude

    claude = require_claude()
    go = tmp_path / "go"
    with fa.FakeAnthropic() as api:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in claude_env(api, tmp_path / "agent-home").items())
        command = (f"{env} {shlex.quote(str(claude))} -p --input-format stream-json --output-format stream-json "
                   "--verbose --dangerously-skip-permissions")
        proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                       agent_command=command, stall_timeout=120)
        api.queue_for("# Issue #1:", fa.bash(f"until [ -f {go} ]; do sleep 0.1; done; echo 1 > work.txt && "
                                             "git add work.txt && git commit -q -m 'agent: issue 1'"),
                      fa.text("Done, and the changelog too."))
        running = start_monitor(cycle="0.5")
        try:
            events = proj.state / "tries" / "worker-1-try-1.events.jsonl"
            retry_until(lambda: events.exists() and '"tool_use"' in events.read_text(), seconds=120)
            sent = cli("send", "1", "FOLLOW-UP: also update the changelog")
            go.touch()
            assert sent.returncode == 0, sent.stderr
            assert "delivered to demo#1's running agent (worker 1, try 1)" in sent.stdout
            assert running.wait(timeout=120) == 0, stop(running)
        finally:
            go.touch()
            stop(running)
        bodies = [json.dumps(r.get("body")) for r in api.requests if r.get("path", "").startswith("/v1/messages")]
    assert proj.issue(1)["status"] == "completed"
    assert sum("FOLLOW-UP: also update the changelog" in b for b in bodies) >= 1
    assert "FOLLOW-UP" not in bodies[0]  # the first call had the prompt alone
    assert not (proj.state / "followups.json").exists()  # given to the agent, not kept for a next try
    delivered = [json.loads(line) for line in (proj.state / "tries" / "worker-1-try-1.delivered.jsonl")
                 .read_text().splitlines()]
    assert [d.get("state") or "closed" * d.get("closed", False) for d in delivered] == ["passing", "passed", "closed"]


def test_a_streaming_claude_try_that_ends_on_an_api_error_before_any_reply_exits_and_is_judged(project, tmp_path):
    """No reply at all (not logged in): its input still ends at the result, so the CLI exits and the project is
    paused for auth, as with a prompt file, instead of the try hanging on its open input until a stall."""
    import shlex

    import fake_anthropic as fa
    from agent_fixtures import claude_env, require_claude

    claude = require_claude()
    with fa.FakeAnthropic() as api:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in claude_env(api, tmp_path / "agent-home", 1).items())
        proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                       stall_timeout=600, max_retries=0,
                       agent_command=f"{env} {shlex.quote(str(claude))} -p --input-format stream-json "
                                     "--output-format stream-json --verbose --dangerously-skip-permissions")
        api.queue(*[fa.status(401)] * 10)

        def held() -> bool:
            monitor(open_run(), cycle=0.2, once=True, no_delay=True, say=lambda _: None)
            path = proj.state / "paused.json"
            return path.exists() and json.loads(path.read_text())["project"] != []

        retry_until(held, seconds=180)
    [pause] = json.loads((proj.state / "paused.json").read_text())["project"]
    assert pause["reason"] == "auth"
    assert [e["action"] for e in proj.events() if e["action"] in ("hold", "restart", "skip")] == ["hold"]


def test_a_follow_up_kept_for_a_killed_claude_try_resumes_its_session_after_retry(project, tmp_path):
    """kill while the agent works, send (kept: a plain Claude try takes no input), retry: the next try continues
    the killed try's session (--resume) with the follow-up."""
    import fake_anthropic as fa
    from agent_fixtures import claude_command, require_claude

    require_claude()
    go = tmp_path / "go"
    with fa.FakeAnthropic() as api:
        proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                       agent_command=claude_command(api, tmp_path / "agent-home"), stall_timeout=120)
        api.queue_for("# Issue #1:", fa.bash(f"until [ -f {go} ]; do sleep 0.1; done"),
                      fa.bash("echo 1 > work.txt && git add work.txt && git commit -q -m 'agent: issue 1'"),
                      fa.text("Done."))
        running = start_monitor(cycle="0.2")
        try:
            usage = proj.state / "usage.json"
            retry_until(lambda: usage.exists() and (json.loads(usage.read_text())["tries"].get("worker-1-try-1")
                                                    or {}).get("session_id"), seconds=120)
            assert cli("kill", "1").returncode == 0
            assert running.wait(timeout=60) == 1
        finally:
            stop(running)
        session = json.loads((proj.state / "usage.json").read_text())["tries"]["worker-1-try-1"]["session_id"]
        sent = cli("send", "1", "FOLLOW-UP: use the v2 API")
        assert sent.returncode == 0 and "stored for demo#1" in sent.stdout, sent.stderr
        assert cli("retry", "1").returncode == 0
        assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert proj.issue(1)["status"] == "completed"
    spec = json.loads((proj.state / "tries" / "worker-1-try-2.json").read_text())
    assert spec["command"].endswith(f"--resume {session}")
    prompt = (proj.state / "prompts" / "worker-1-try-2.md").read_text()
    assert prompt.startswith("Continue the task of this session") and "1. FOLLOW-UP: use the v2 API" in prompt
    tries = json.loads((proj.state / "usage.json").read_text())["tries"]
    assert tries["worker-1-try-2"]["session_id"] == session


# --- pause and resume ---------------------------------------------------------------------------------------

def test_pause_and_resume_of_one_issue_go_through_a_running_monitor(project):
    proj = project([{"number": 1, "title": "hangs"}, {"number": 2, "title": "waits", "priority": 2}],
                   script={1: ["hang"]}, pipeline=["implement"], num_workers=2, **HANG_ON)
    running = start_monitor()
    try:
        running_try(proj, 1)
        retry_until(lambda: proj.issue(2).get("status") in ("in_progress", "completed"), seconds=60)
        paused = cli("pause", "1", "--detail", "lunch")
        assert paused.returncode == 0, paused.stderr
        assert "paused demo#1: no try starts until resume" in paused.stdout
        assert "applied by the running monitor" in paused.stdout
        doc = json.loads((proj.state / "paused.json").read_text())
        assert [e["reason"] for e in doc["issues"]["1"]] == ["user"] and doc["project"] == []
        one_line_refusal(cli("pause", "1", "--issue", "2"), "give the issue once")
        resumed = cli("resume", "1")
        assert resumed.returncode == 0 and "resumed demo#1: user (lunch)" in resumed.stdout
        assert "applied by the running monitor" in resumed.stdout
        assert cli("kill", "1").returncode == 0
        assert running.wait(timeout=90) == 1
    finally:
        stop(running)
    assert proj.issue(2)["status"] == "completed"
    assert [e["verb"] for e in actions_named(proj, "command")] == ["pause", "resume", "kill"]


def test_pause_and_resume_with_no_monitor_apply_at_once(project):
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    paused = cli("pause")
    assert paused.returncode == 0 and paused.stdout.startswith("paused demo: no try starts")
    assert json.loads((proj.state / "paused.json").read_text())["project"][0]["reason"] == "user"
    assert "resumed demo: user" in cli("resume").stdout
    assert queue_left(proj) == []


# --- the queue and the lock ---------------------------------------------------------------------------------

def test_a_verb_past_its_wait_says_its_command_is_queued_and_the_busy_monitor_applies_it_after_its_cycle(project):
    """The monitor sleeps stagger_delay between two launches in one cycle: a verb waiting 1 s says where its
    command is and exits 0; the monitor applies it when that cycle ends."""
    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "two"}], script={1: ["hang"], 2: ["hang"]},
                   pipeline=["implement"], num_workers=2, stagger_delay=8, **HANG_ON)
    running = start_monitor()
    try:
        running_try(proj, 1)
        queued = cli("pause", "2", "--wait", "1")
        assert queued.returncode == 0, queued.stderr
        assert queued.stdout.startswith("queued pause demo#2 (command ") and "is busy in a cycle" in queued.stdout
        assert f"(pid {running.pid})" in queued.stdout
        retry_until(lambda: not queue_left(proj) and list((proj.state / "commands" / "done").glob("*.json")),
                    seconds=90)
        assert json.loads((proj.state / "paused.json").read_text())["issues"]["2"][0]["reason"] == "user"
        for number in (1, 2):
            assert cli("kill", str(number)).returncode == 0
        assert running.wait(timeout=60) == 1
    finally:
        stop(running)


def test_a_monitor_waits_for_a_verb_that_holds_the_lock_but_refuses_at_once_beside_another_monitor(project):
    from orchestrator import commands, heartbeat
    from orchestrator.state import monitor_lock

    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    run = open_run()
    marker = proj.state / "commands" / "applying.json"
    with monitor_lock(run.locks()):  # as a verb applying commands holds it
        commands.write_json(marker, {"pid": os.getpid(), "pid_start": heartbeat.process_start(os.getpid())})
        waiting = start_monitor(cycle="0.2")
        assert waiting.stdout.readline().startswith("a verb is applying commands under the monitor lock: waiting")
        assert waiting.poll() is None and not (proj.state / "monitor.json").exists()
        marker.unlink()
    assert waiting.wait(timeout=90) == 0, stop(waiting)
    assert proj.issue(1)["status"] == "completed"

    with monitor_lock(open_run().locks()):  # as another monitor holds it
        refused = start_monitor(cycle="0.2")
        out, err = refused.communicate(timeout=30)
    assert refused.returncode == 2 and "another monitor is running for demo" in err, (out, err)


def test_a_planted_or_malformed_queue_file_is_answered_once_and_never_followed_elsewhere(project):
    proj = project([{"number": 1, "title": "one", "status": "failed"}], pipeline=["implement"], num_workers=1)
    queued = proj.state / "commands" / "queued"
    queued.mkdir(parents=True)
    planted = {"00000000000000000001-1-aaaaaa": {"id": "00000000000000000001-1-aaaaaa", "verb": "retry",
                                                 "project": "../../escaped", "issue": 1},
               "00000000000000000002-1-bbbbbb": {"id": "another-id", "verb": "retry", "project": "demo", "issue": 1},
               "00000000000000000003-1-cccccc": {"id": "00000000000000000003-1-cccccc", "verb": "retry",
                                                 "project": "demo", "issue": True}}
    for name, doc in planted.items():
        (queued / f"{name}.json").write_text(json.dumps(doc))
    (queued / "00000000000000000004-1-dddddd.json").write_text("{half")
    paused = cli("pause")
    assert paused.returncode == 0 and "paused demo" in paused.stdout, paused.stderr
    assert queue_left(proj) == [] and proj.issue(1)["status"] == "failed"
    done = sorted((proj.state / "commands" / "done").glob("0000*.json"))
    assert [json.loads(p.read_text())["ok"] for p in done] == [False] * 4
    assert not (proj.home / "escaped").exists() and not (proj.state.parent.parent / "escaped").exists()


def test_a_queue_that_cannot_be_written_is_one_line_and_changes_nothing(project):
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    proj.state.mkdir(parents=True)
    (proj.state / "commands").write_text("a file where the queue belongs")
    one_line_refusal(cli("pause"), "cannot queue the command")
    assert not (proj.state / "paused.json").exists()


def test_a_follow_up_kept_before_its_holder_was_killed_is_kept_once_whatever_the_issue_did_since(project):
    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "two"}], pipeline=["implement"],
                   num_workers=1)
    for number in (1, 2):  # the second verb applies the first one's command again first, and dies there
        crashed = cli("send", str(number), f"note {number}", env={"ORCHESTRATOR_COMMANDS_CRASH_AT": "applied"})
        assert crashed.returncode == -signal.SIGKILL
    doc = proj.doc()
    doc["issues"][0]["status"] = "completed"  # #1 finished meanwhile: a new send to it would be refused
    proj.config.write_text(json.dumps(doc))
    assert cli("pause").returncode == 0  # the next holder of the lock finishes both
    assert queue_left(proj) == []
    outcomes = [json.loads(p.read_text()) for p in sorted((proj.state / "commands" / "done").glob("*.json"))]
    assert [(o.get("verb"), o["ok"]) for o in outcomes] == [("send", True), ("send", True), ("pause", True)]
    kept = json.loads((proj.state / "followups.json").read_text())["issues"]
    assert [e["text"] for e in kept["1"]] == ["note 1"] and [e["text"] for e in kept["2"]] == ["note 2"]


def test_pause_and_resume_take_the_issue_as_a_word_or_as_issue(project, inv):
    """`pause 1`, `pause --issue 1` (the same), and no issue (the project) in python3 -m orchestrator, and
    `--issue 1` in inv workers.* (Invoke's positional arguments are always required); the issue given twice,
    differently, in either order: one line, exit 2, nothing queued."""
    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "two"}], pipeline=["implement"],
                   num_workers=1)

    def paused() -> tuple[list[str], dict[str, list[str]]]:
        doc = json.loads((proj.state / "paused.json").read_text())
        return ([e["reason"] for e in doc["project"]],
                {n: [e["reason"] for e in entries] for n, entries in doc["issues"].items() if entries})

    for door in ("inv", "cli"):
        def verb(*args: str) -> tuple[int, str, str]:
            if door == "cli":
                result = cli(*args)
                return result.returncode, result.stdout, result.stderr
            words = list(args[1:]) if "--issue" in args else \
                [w for a in args[1:] for w in (("--issue", a) if a.isdigit() else (a,))]
            done = inv(f"workers.{args[0]}", *words)
            return done.code, done.out, done.err

        code, out, err = verb("pause", "1")
        assert code == 0 and "paused demo#1" in out, (door, out, err)
        assert paused() == ([], {"1": ["user"]})
        code, out, err = verb("resume", "--issue", "1")
        assert code == 0 and "resumed demo#1: user" in out, (door, out, err)
        code, out, err = verb("pause", "--issue", "2")
        assert code == 0 and "paused demo#2" in out, (door, out, err)
        code, out, err = verb("resume", "2")
        assert code == 0 and "resumed demo#2: user" in out, (door, out, err)
        assert paused() == ([], {})
        if door == "cli":
            for args in (("pause", "1", "--issue", "2"), ("pause", "--issue", "2", "1"),
                         ("resume", "2", "--issue", "1")):
                code, out, err = verb(*args)
                assert code == 2 and err.startswith("error: ") and "give the issue once" in err, (args, out, err)
                assert len(err.strip().splitlines()) == 1 and out == "", (args, out, err)
            assert verb("pause", "1", "--issue", "1")[0] == 0  # the same issue twice is that issue
            assert paused() == ([], {"1": ["user"]})
            assert verb("resume", "1")[0] == 0
        code, out, err = verb("pause")
        assert code == 0 and out.startswith("paused demo: no try starts"), (door, out, err)
        assert paused() == (["user"], {})
        assert verb("resume")[0] == 0 and paused() == ([], {})
    assert queue_left(proj) == []
    assert [e["verb"] for e in actions_named(proj, "command")] == \
        ["pause", "resume", "pause", "resume", "pause", "resume"] + ["pause", "resume"] * 4


# --- what waits: status shows queued commands, refusals and kept follow-ups ----------------------------------

def issue_of(doc: dict[str, Any], number: int) -> dict[str, Any]:
    return next(i for p in doc["projects"] for i in p["issues"] if i["number"] == number)


def test_status_shows_commands_a_busy_monitor_has_not_taken_its_refusals_once_and_kept_follow_ups(project):
    """A monitor busy in a long cycle (stagger_delay between two launches): the verbs past their wait are queued;
    status shows each queued command under its issue (verb, when), then, once applied, a refusal's reason once in
    text (always in JSON, with `reported`), and a follow-up kept for a try that is completing the issue."""
    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "two"}], script={1: ["hang"], 2: ["hang"]},
                   pipeline=["implement"], num_workers=2, stagger_delay=40, **HANG_ON)
    running = start_monitor()
    try:
        running_try(proj, 1)
        for args in (("kill", "1"), ("kill", "1"), ("send", "2", "use the new API \x1b[31mnow\x1b[0m please")):
            queued = cli(*args, "--wait", "0.5")
            assert queued.returncode == 0 and queued.stdout.startswith(f"queued {args[0]} demo#{args[1]}"), queued
        doc = status()  # the monitor sleeps out its stagger_delay of 40 s: nothing is taken yet
        one, two = issue_of(doc, 1), issue_of(doc, 2)
        assert [(c["verb"], c["state"]) for c in one["commands"]] == [("kill", "queued"), ("kill", "queued")]
        assert [(c["verb"], c["state"]) for c in two["commands"]] == [("send", "queued")]
        assert all(c["at"].endswith("Z") for c in one["commands"]) and two["followups"] == []
        text = cli("status").stdout
        assert "#1 waits: kill queued at " in text and "#2 waits: send queued at " in text, text
        retry_until(lambda: not queue_left(proj), seconds=120)
        doc = status()
        one, two = issue_of(doc, 1), issue_of(doc, 2)
        [refused] = one["commands"]
        assert refused["state"] == "refused" and "#1 is failed: no try of it runs" in refused["error"]
        assert refused["reported"] is False
        assert two["commands"] == [] and [f["chars"] for f in two["followups"]] == [35]
        assert two["followups"][0]["words"].startswith("use the new API")
        text = cli("status").stdout
        assert "\x1b" not in text
        assert text.count("#1 refused: kill: ") == 1 and "no try of it runs" in text, text
        assert "#2: 1 follow-up kept for its next try: \"use the new API" in text, text
        assert "its running try is its last stage: if it completes #2, no try takes it" in text, text
        again = cli("status").stdout
        assert "#1 refused" not in again and "#2: 1 follow-up kept" in again  # a refusal is shown once
        assert issue_of(status(), 1)["commands"][0]["reported"] is True
        assert cli("kill", "2").returncode == 0
        assert running.wait(timeout=90) == 1
    finally:
        stop(running)
    text = cli("status").stdout
    assert "#2: 1 follow-up kept for its next try" in text and "last stage" not in text  # #2 failed: retry takes it


def test_status_with_no_monitor_shows_a_command_its_killed_verb_left_and_follow_ups_kept(project):
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    crashed = cli("send", "1", "first words of a long note " + "x" * 300,
                  env={"ORCHESTRATOR_COMMANDS_CRASH_AT": "taken"})
    assert crashed.returncode == -signal.SIGKILL
    one = issue_of(status(), 1)
    assert [(c["verb"], c["state"]) for c in one["commands"]] == [("send", "taken")] and one["followups"] == []
    assert "#1 waits: send taken at " in cli("status").stdout
    assert cli("send", "1", "second").returncode == 0  # applies the one left first
    one = issue_of(status(), 1)
    assert one["commands"] == [] and [f["chars"] for f in one["followups"]] == [327, 6]
    assert all(len(f["words"]) <= 60 for f in one["followups"])
    text = cli("status").stdout
    assert "#1: 2 follow-ups kept for its next try: \"first words of a long note" in text, text
    from orchestrator.dashboard import render
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(render(status()))
    assert "#1: 2 follow-ups kept for its next try" in console.export_text()


def test_send_to_a_try_before_its_last_stage_says_the_next_stages_try_takes_it(project):
    proj = project([{"number": 1, "title": "two stages"}], script={1: ["hang", "ok", "ok"]},
                   pipeline=["implement", "review"], num_workers=1, **HANG_ON)
    assert monitor(open_run(), once=True, say=lambda _: None) == 0  # starts #1's implement try, then exits
    running_try(proj, 1)
    sent = cli("send", "1", "mind the tests")
    assert sent.returncode == 0, sent.stderr
    assert "if this try completes its stage, the try of the next one (review) takes it" in sent.stdout
    assert "kill 1" not in sent.stdout
    text = cli("status").stdout
    assert "#1: 1 follow-up kept for its next try: \"mind the tests\"" in text and "last stage" not in text, text
    assert cli("kill", "1").returncode == 0


def test_a_follow_up_folded_into_a_try_whose_pane_never_started_is_kept_for_the_next_try(project, monkeypatch):
    """The follow-up goes into the try's prompt; the pane then cannot start (tmux refuses): the agent never read
    it, so it stays kept, and the next try gets it (it was marked given before the start, and lost)."""
    from lib.errors import OrchestratorError
    from orchestrator import tmux

    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    assert cli("send", "1", "mind the changelog").returncode == 0
    real_respawn = tmux.respawn

    def refuse(*args, **kwargs):
        raise OrchestratorError("tmux: respawn-pane failed")

    monkeypatch.setattr(tmux, "respawn", refuse)
    monitor(open_run(), once=True, say=lambda _: None)
    kept = json.loads((proj.state / "followups.json").read_text())["issues"]["1"]
    assert [entry.get("given_in") for entry in kept] == [None], kept
    monkeypatch.setattr(tmux, "respawn", real_respawn)
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert "mind the changelog" in proj.prompts(1)[-1]
    given = json.loads((proj.state / "followups.json").read_text())["issues"]["1"]
    assert [entry["given_in"] for entry in given] != [None]


def test_a_follow_up_in_the_prompt_of_a_try_whose_set_up_failed_goes_to_the_next_try_exactly_once(project, tmp_path):
    """The follow-up goes into the first try's prompt, but that try's set-up command fails (exit 1): its agent
    never starts, the issue fails, and the follow-up stays kept (status shows it). After `retry`, the next try's
    agent gets it, once; before, it was marked given in the failed try and lost."""
    ready = tmp_path / "deps-ready"
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1,
                   worktree_setup={"run": f"test -e {ready} || {{ echo 'install failed'; exit 1; }}"})
    assert cli("send", "1", "mind the changelog").returncode == 0
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 1
    assert proj.issue(1)["status"] == "failed" and proj.prompts(1) == []  # the agent never ran
    assert [e["reason"] for e in actions_named(proj, "skip")] == ["setup failed: install failed"]
    kept = json.loads((proj.state / "followups.json").read_text())["issues"]["1"]
    assert [entry.get("given_in") for entry in kept] == [None], kept
    assert "#1: 1 follow-up kept for its next try: \"mind the changelog\"" in cli("status").stdout
    ready.touch()
    assert cli("retry", "1").returncode == 0
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    [prompt] = proj.prompts(1)
    assert prompt.count("mind the changelog") == 1, prompt
    given = json.loads((proj.state / "followups.json").read_text())["issues"]["1"]
    assert [entry["given_in"] for entry in given] == ["worker-1-try-2"], given
    assert "follow-up" not in cli("status").stdout


def test_a_try_ended_while_its_wrapper_is_stuck_before_its_agent_gives_its_follow_ups_back_once_it_is_killed(
        project, monkeypatch):
    """A wrapper that does not end on SIGTERM before starting its agent (stuck) is killed outright, and only then
    are the follow-ups of its prompt kept again: a restart's next try gets them, and the stuck wrapper never
    starts an agent with them later. (It was left running, and the follow-ups lost with its try.)"""
    from orchestrator import act, commands as steering
    from orchestrator.windows import try_tag
    from orchestrator.wrapper import WRAPPER_VAR

    run, record = one_try_given_a_follow_up(project)
    stuck = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\nsignal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(3600)", str(act.WRAPPER),
                              str(run.files.try_spec(1, 1))], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, WRAPPER_VAR: try_tag(run, 1, 1)})  # as its pane's command has
    try:
        assert stuck.stdout.readline() == "ready\n"
        monkeypatch.setattr(act, "WRAPPER_STOP_WAIT", 1.0)
        act.end_try(run, record)
        assert stuck.wait(timeout=60) == -signal.SIGKILL
    finally:
        if stuck.poll() is None:
            stuck.kill()
        stuck.wait()
    assert [e["text"] for e in steering.pending_followups(run.state_root, "demo", 1)] == ["mind the changelog"]
    assert [(e["id"], e["given_back"]) for e in actions_named_in(run)] == [("f1", "worker-1-try-1")]


def actions_named_in(run) -> list[dict[str, Any]]:
    return [json.loads(line)["event"] for line in run.files.events.read_text().splitlines()
            if json.loads(line)["event"]["action"] == "followup"]
