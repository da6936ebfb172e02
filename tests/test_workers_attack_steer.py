"""The steering verbs attacked as a hostile or unlucky user would: each test failed before its fix.

Real git with a bare remote, the fake agent of workers_fixtures, the real `python3 -m orchestrator` verbs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT, git
from workers_fixtures import HANG_ON, monitor_env, project, retry_until, tmux_socket  # noqa: F401

from orchestrator.monitor import monitor
from orchestrator.run import open_run

PACKAGE = ROOT / "scripts" / "proof-workers"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=PACKAGE, env=monitor_env(env),
                          capture_output=True, text=True, timeout=120)


def test_retry_of_an_issue_whose_branch_was_deleted_says_its_work_is_gone_instead_of_kept(project):
    """The user deleted the failed issue's worktree and its branch, here and on origin: retry cannot keep what is
    gone, and says the next try starts the branch afresh from the default branch."""
    proj = project([{"number": 1, "title": "one"}], script={1: ["fail"]}, pipeline=["implement"], num_workers=1,
                   max_retries=0)
    assert monitor(open_run(), no_delay=True, say=lambda _: None) == 1
    assert proj.issue(1)["status"] == "failed"
    cfg = open_run().configs[0]
    branch = cfg.branch_for(cfg.issue(1))
    assert git(proj.repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}").strip()
    git(proj.repo, "worktree", "remove", "--force", str(proj.root / "worktrees" / "issue-1"))
    git(proj.repo, "branch", "-D", branch)
    subprocess.run(["git", "push", "-q", str(proj.remote), f":refs/heads/{branch}"], cwd=proj.repo,
                   capture_output=True)
    git(proj.repo, "update-ref", "-d", f"refs/remotes/origin/{branch}")

    retried = cli("retry", "1")
    assert retried.returncode == 0, retried.stderr
    assert "branch and commits kept" not in retried.stdout, retried.stdout
    assert f"its branch {branch} is gone (no local branch, none in origin's last fetch): unless origin " \
        "has it, its next try starts it afresh from" in retried.stdout
    assert proj.issue(1)["status"] == "pending"


def test_kill_of_an_issue_whose_try_already_ended_says_so_instead_of_signalling_nothing(project):
    """The try finished (its exit code is written) but no monitor has judged it yet: kill still fails the issue
    (the user asked; its branch and commits are kept), and says the try had ended, not that it was signalled."""
    proj = project([{"number": 1, "title": "one"}], script={1: ["ok"]}, pipeline=["implement"], num_workers=1)
    assert monitor(open_run(), once=True, say=lambda _: None) == 0  # starts #1's try, then exits
    files = open_run().files
    retry_until(lambda: files.read_signal(1, 1) is not None, seconds=90)
    assert files.read_signal(1, 1) == 0 and proj.issue(1)["status"] == "in_progress"
    killed = cli("kill", "1")
    assert killed.returncode == 0, killed.stderr
    assert "signalled" not in killed.stdout, killed.stdout
    assert "its try (worker 1, try 1) had already ended (exit 0) before the kill" in killed.stdout, killed.stdout
    assert proj.issue(1)["status"] == "failed"


def test_a_verb_waiting_behind_another_verb_says_who_holds_the_queue_not_a_monitor_that_does_not_run(project):
    """Two shells: one verb applies the queue under the monitor lock (no monitor runs) while another waits past its
    --wait: the second says its command is queued behind that verb, never that a monitor (pid None) is busy."""
    from orchestrator import commands, heartbeat
    from orchestrator.state import monitor_lock

    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    run = open_run()
    with monitor_lock(run.locks()):  # as a verb applying commands holds it
        marker = proj.state / "commands" / "applying.json"
        commands.write_json(marker, {"pid": os.getpid(), "pid_start": heartbeat.process_start(os.getpid())})
        waited = cli("pause", "--wait", "1")
        marker.unlink()
    assert waited.returncode == 0, waited.stderr
    assert "pid None" not in waited.stdout and "busy in a cycle" not in waited.stdout, waited.stdout
    assert f"another verb (pid {os.getpid()}) is applying commands" in waited.stdout, waited.stdout
    assert cli("resume").returncode == 0  # the next holder applies the queued pause first, then the resume
    outcomes = [json.loads(p.read_text()) for p in sorted((proj.state / "commands" / "done").glob("*.json"))]
    assert [(o["verb"], o["ok"]) for o in outcomes] == [("pause", True), ("resume", True)]


def test_a_fifo_where_queue_files_or_follow_ups_belong_never_hangs_a_verb_or_status(project):
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    queued = proj.state / "commands" / "queued"
    queued.mkdir(parents=True)
    os.mkfifo(queued / "00000000000000000001-1-aaaaaa.json")
    os.mkfifo(proj.state / "followups.json")
    shown = cli("status", "--json")
    assert shown.returncode == 0, shown.stderr
    issue = json.loads(shown.stdout)["projects"][0]["issues"][0]
    assert issue["commands"] == [] and issue["followups"] == []
    sent = cli("send", "1", "hello")  # the FIFO is set aside (lib.statefile), the follow-up kept
    assert sent.returncode == 0 and "stored for demo#1" in sent.stdout, sent
    assert [f["words"] for f in json.loads(cli("status", "--json").stdout)["projects"][0]["issues"][0]["followups"]
            ] == ["hello"]
    paused = cli("pause")
    assert paused.returncode == 0 and "paused demo" in paused.stdout, paused
    assert not list(queued.iterdir())


def test_a_pause_detail_or_follow_up_with_terminal_escapes_or_newlines_never_reaches_the_terminal_raw(project):
    """A --detail or a follow-up text is the user's (or a script's) text: every line a verb or status prints shows
    its control characters escaped, and a newline in it never makes a second line."""
    project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    nasty = "lunch\x1b]0;pwned\x07\x1b[2J\nerror: fake second line"
    for args in (("pause", "--detail", nasty), ("pause", "1", "--detail", nasty), ("send", "1", nasty),
                 ("status",), ("resume", "1"), ("resume",)):
        result = cli(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout, (args, result.stdout)
        assert not any(line.startswith("error: fake") for line in result.stdout.splitlines()), (args, result.stdout)
    big = cli("send", "1", "\x1b[31m" + "y" * (20_000 - 5))
    assert big.returncode == 0 and len(big.stdout) < 2000, big.stderr
    too_big = cli("send", "1", "y" * 20_001)
    assert too_big.returncode == 2 and "more than 20000" in too_big.stderr and len(too_big.stderr) < 300
    status = cli("status")
    assert "\x1b" not in status.stdout and "2 follow-ups kept" in status.stdout, status.stdout
    assert max(len(line) for line in status.stdout.splitlines()) < 400


def test_a_monitor_killed_while_a_verb_waits_for_it_leaves_the_verb_to_apply_its_command(project):
    """The monitor, busy in a long cycle (stagger_delay), is killed -9 while a verb waits for it: the lock is
    free again, and the waiting verb applies its command itself, saying so, within its wait."""
    import signal

    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "two"}], script={1: ["hang"], 2: ["hang"]},
                   pipeline=["implement"], num_workers=2, stagger_delay=120, **HANG_ON)
    running = subprocess.Popen([sys.executable, "-m", "orchestrator", "monitor", "--cycle", "30", "--no-delay"],
                               cwd=PACKAGE, env=monitor_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        retry_until(lambda: proj.issue(1).get("status") == "in_progress", seconds=90)
        waiting = subprocess.Popen([sys.executable, "-m", "orchestrator", "pause", "2", "--wait", "300"],
                                   cwd=PACKAGE, env=monitor_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        retry_until(lambda: list((proj.state / "commands" / "queued").glob("*.json")), seconds=60)
        running.send_signal(signal.SIGKILL)
        running.wait(timeout=30)
        out, err = waiting.communicate(timeout=240)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert waiting.returncode == 0, err
    assert "paused demo#2" in out and "applied by the running monitor" not in out, out
    assert json.loads((proj.state / "paused.json").read_text())["issues"]["2"][0]["reason"] == "user"
    assert cli("kill", "1").returncode == 0
