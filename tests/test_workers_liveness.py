"""What the proof workers say about processes must be true: leftovers die with their try, a dead monitor is
reported dead, a try lost to tmux dying costs no retry. Real tmux on a private socket, real git, scripted agents."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, git, process_running, wait_gone
from workers_fixtures import monitor_env, project, retry_until, tmux_socket  # noqa: F401
from workers_fixtures import orchestrator_cli as orchestrator, status_document as status  # noqa: E402

from orchestrator.monitor import monitor
from orchestrator.run import open_run

PACKAGE = ROOT / "scripts" / "proof-workers"

# An agent that leaves two processes behind, one in its group and one in a session of its own (as
# `cmd &` and `setsid cmd &` or a dev server do), records their pids, commits and exits 0.
LEAVES_DAEMONS = r'''
import os, subprocess, sys
from pathlib import Path
out = Path(sys.argv[1])
child = subprocess.Popen(["sleep", "3600"])
daemon = subprocess.Popen(["sleep", "3601"], start_new_session=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
out.write_text(f"{child.pid} {daemon.pid}")
Path("work.txt").write_text("done\n")
for args in (["add", "-A"], ["commit", "-q", "-m", "work"]):
    subprocess.run(["git", "-c", "user.name=A", "-c", "user.email=a@example.com", *args], check=True)
'''


def test_processes_an_agent_leaves_die_when_its_try_ends_even_outside_its_group(project, tmp_path):
    """A successful try's `cmd &` and `setsid cmd &` do not outlive it (before: both kept running)."""
    agent = tmp_path / "leaves_daemons.py"
    agent.write_text(LEAVES_DAEMONS)
    pids_file = tmp_path / "pids"
    project([{"number": 1, "title": "one"}], pipeline=["implement"],
            agent_command=f"{shlex.quote(sys.executable)} {shlex.quote(str(agent))} {shlex.quote(str(pids_file))}")
    try:
        assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
        child, daemon = map(int, pids_file.read_text().split())
        assert wait_gone(child, 20) and wait_gone(daemon, 20), "a process the agent left outlived its try"
    finally:
        for pid in map(int, pids_file.read_text().split()) if pids_file.exists() else ():
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)


def test_cleanup_leaves_no_process_of_the_run_and_force_kills_what_runs_in_a_worktree(project, tmp_path):
    """A leftover of a try whose wrapper was killed (so it could not clean up) is killed by cleanup; a
    process working in a worktree with unsaved work is named without --force and killed with it."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"])
    run = open_run()
    tag = f"{run.files.root}/worker-1/try-7"
    leftover = subprocess.Popen(["sleep", "3602"], start_new_session=True,
                                env={**os.environ, "ORCHESTRATOR_TRY": tag})
    worktree = proj.root / "worktrees" / "issue-1"
    from orchestrator import worktrees

    worktrees.ensure_worktree(proj.repo, "main", proj.root / "worktrees", worktree, "feature/issue-1")
    (worktree / "unsaved.txt").write_text("work in progress\n")
    server = subprocess.Popen(["sleep", "3603"], cwd=worktree, start_new_session=True)
    try:
        kept = orchestrator("cleanup")
        assert kept.returncode == 1, kept.stdout + kept.stderr
        assert wait_gone(leftover.pid, 20), "a process of the run outlived cleanup"
        assert f"process {server.pid} is running in it" in kept.stdout and worktree.is_dir()
        assert process_running(server.pid)
        forced = orchestrator("cleanup", "--force")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert wait_gone(server.pid, 20) and not worktree.exists()
        backup = git(proj.repo, "for-each-ref", "--format=%(refname)", "refs/orchestrator-backup/").split()
        assert len(backup) == 1 and git(proj.repo, "show", f"{backup[0]}:unsaved.txt") == "work in progress"
    finally:
        for proc in (leftover, server):
            proc.kill()
            proc.wait()


def test_status_tells_a_dead_monitor_and_never_calls_an_exited_try_running(project):
    """Before: a killed monitor's workers showed `running` with a growing timer and nothing said it was gone."""
    project([{"number": 1, "title": "hangs"}], script={1: ["hang"]}, stall_timeout=600, wall_clock_timeout=600,
            pipeline=["implement"])
    never = status()
    assert never["monitor"] == {"running": False, "pid": None, "since": None, "last_cycle_at": None, "exited": None}
    assert "monitor: NOT RUNNING (never started)" in orchestrator("status").stdout
    first = subprocess.Popen([sys.executable, "-m", "orchestrator", "monitor", "--cycle", "0.2", "--no-delay"],
                             cwd=PACKAGE, env=monitor_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    group = None
    try:
        doc = retry_until(lambda: (d := status())["workers"][0]["status"] == "running"
                          and d["monitor"]["last_cycle_at"] and d, seconds=60)
        assert doc["monitor"]["running"] and doc["monitor"]["pid"] == first.pid and doc["monitor"]["exited"] is None
        assert f"monitor: running (pid {first.pid}, last cycle " in orchestrator("status").stdout
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        dead = status()
        assert not dead["monitor"]["running"] and dead["monitor"]["exited"] is None and dead["monitor"]["since"]
        text = orchestrator("status").stdout
        assert "monitor: NOT RUNNING (since " in text and "killed or crashed" in text
        assert dead["workers"][0]["status"] == "running"  # its agent really still runs: that is true
        # The agent ends while no monitor watches: exited, with its code, and its timer stops.
        group = int(next(Path(dead["state_dir"]).glob("signals/*.pid")).read_text())
        os.killpg(group, signal.SIGTERM)
        ended = retry_until(lambda: (d := status())["workers"][0]["status"] == "exited" and d, seconds=30)
        assert ended["workers"][0]["exit_code"] == 128 + signal.SIGTERM
        time.sleep(1.5)
        assert status()["workers"][0]["seconds"] == ended["workers"][0]["seconds"]
        assert "exited" in orchestrator("status").stdout
    finally:
        first.kill()
        first.wait()
        if group is not None:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        orchestrator("cleanup", "--keep-worktrees")


def test_a_monitor_that_finished_says_how_it_exited(project):
    project([{"number": 1, "title": "one"}], pipeline=["implement"])
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    doc = status()
    assert not doc["monitor"]["running"] and doc["monitor"]["exited"]["exit_code"] == 0
    assert doc["monitor"]["since"] == doc["monitor"]["exited"]["at"]
    assert "monitor: NOT RUNNING (since " in orchestrator("status").stdout


@pytest.mark.timeout(400)  # the deadlines below, one after the other, on a busy machine
def test_a_try_lost_because_tmux_died_uses_no_retry_and_the_session_comes_back_whole(project, tmux_socket):
    """max_retries 0: before, killing the tmux server under a running try failed the issue."""
    proj = project([{"number": 1, "title": "survives tmux"}], script={1: ["hang", "ok"]}, pipeline=["implement"],
                   max_retries=0, stall_timeout=600, wall_clock_timeout=600)
    result: list[int] = []
    said: list[str] = []
    thread = threading.Thread(target=lambda: result.append(
        monitor(open_run(), cycle=0.2, no_delay=True, say=said.append)))
    thread.start()
    try:
        # Running, and its agent took its scripted step: killed sooner, the next try would be the one that hangs.
        retry_until(lambda: status()["workers"][0]["status"] == "running" and _hangs(proj), seconds=120)
        tmux_socket.kill()
        thread.join(timeout=240)
        assert not thread.is_alive() and result == [0], _what_the_monitor_did(proj, result, said)
    finally:
        if thread.is_alive():
            orchestrator("cleanup", "--keep-worktrees")
            thread.join(timeout=30)
    _came_back_whole(proj, tmux_socket)


def test_tmux_dying_between_the_monitors_listing_and_its_probe_still_costs_no_retry(project, tmux_socket,
                                                                                  monkeypatch):
    """A cycle lists the panes, then tmux dies and the try's wrapper writes its hang-up (129) before the probe reads
    it. Before: the try was judged on the listing from before tmux died (its pane still there) as a failure of its
    own, and with max_retries 0 the issue failed (what the test above met, now and then, on a busy machine). The
    interleaving is made exact here: the listing that first shows the running try kills the server and waits for
    the try's exit code before it returns."""
    proj = project([{"number": 1, "title": "survives tmux"}], script={1: ["hang", "ok"]}, pipeline=["implement"],
                   max_retries=0, stall_timeout=600, wall_clock_timeout=600)
    from orchestrator import tmux

    run = open_run()
    listing = tmux.panes
    killed: list[bool] = []

    def tmux_dies_after_listing(srv, session):  # type: ignore[no-untyped-def]
        found = listing(srv, session)
        if not killed and "worker-1" in found and run.files.pid_file(1, 1).exists() and _hangs(proj):
            killed.append(True)
            tmux_socket.kill()
            retry_until(lambda: run.files.read_signal(1, 1) == 128 + signal.SIGHUP, seconds=60)
        return found

    monkeypatch.setattr(tmux, "panes", tmux_dies_after_listing)
    said: list[str] = []
    code = monitor(run, cycle=0.2, no_delay=True, say=said.append)
    assert killed and code == 0, _what_the_monitor_did(proj, [code], said)
    _came_back_whole(proj, tmux_socket)


def _hangs(proj) -> bool:  # type: ignore[no-untyped-def]
    """The fake agent of #1's first try has taken its scripted step ("hang"): it counts a try only once it runs, so
    a try killed before that leaves "hang" to the next one, which then hangs until stall_timeout (the monitor waits
    on it, rightly: what this test once met as a timeout on a busy machine)."""
    return (proj.script.parent / "runs" / "1-0.prompt").exists()


def _what_the_monitor_did(proj, result: list[int], said: list[str]) -> str:  # type: ignore[no-untyped-def]
    events = "\n".join(json.dumps(e)[:300] for e in proj.events())
    return f"monitor result {result}; it said:\n" + "\n".join(said) + f"\nits events:\n{events}"


def _came_back_whole(proj, server) -> None:  # type: ignore[no-untyped-def]
    """The issue completed on its next try, the lost one counted as no retry, the session's windows re-made."""
    assert proj.issue(1)["status"] == "completed"
    restart = [e for e in proj.events() if e["action"] == "restart"]
    assert len(restart) == 1 and restart[0]["counted"] is False and restart[0]["retry_count"] == 0
    assert "tmux went away" in restart[0]["reason"]
    windows = server.cmd("list-windows", "-t", "=proof-test", "-F", "#{window_name}").stdout
    assert "dashboard" in windows and "worker-1" in windows


def test_the_monitors_git_status_never_takes_the_index_lock_an_agents_git_add_needs(tmp_path, make_repo):
    """Before: `git status` refreshed and rewrote the index under index.lock, so an agent's `git add`
    at that moment failed ("index.lock: File exists") and its try was counted as a failure."""
    from orchestrator import worktrees

    repo = make_repo("app").path
    (repo / "tracked.txt").write_text("x\n")
    git(repo, "add", "tracked.txt")
    git(repo, "commit", "-q", "-m", "tracked")
    index = repo / ".git" / "index"
    stamp = time.time() + 5  # newer than the index's record of it: git status would refresh and rewrite
    os.utime(repo / "tracked.txt", (stamp, stamp))
    before = index.stat().st_mtime_ns
    worktrees.porcelain(repo)
    assert index.stat().st_mtime_ns == before


def test_a_stale_pid_file_naming_someone_elses_process_group_is_not_a_running_try(project):
    """The record says worker-1 runs #1 and its pid file names a live group, but that group is not the
    try's (no process of it carries the run's tag): `gone`, never `running`."""
    project([{"number": 1, "title": "one", "status": "in_progress", "assigned_worker": 1}], pipeline=["implement"])
    run = open_run()
    from orchestrator.state import WorkerRecord

    run.files.save_worker(WorkerRecord(1, status="running", project="demo", issue_number=1, try_id=3,
                                       launched=True, started_at=time.time(), stage="implement"))
    stranger = subprocess.Popen(["sleep", "3604"], start_new_session=True)
    try:
        pid_file = run.files.pid_file(1, 3)
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(str(stranger.pid))
        worker = status()["workers"][0]
        assert worker["status"] == "gone" and worker["exit_code"] is None
        orchestrator("cleanup", "--keep-worktrees")
        assert process_running(stranger.pid), "cleanup killed a group that was not the run's"
    finally:
        stranger.kill()
        stranger.wait()
