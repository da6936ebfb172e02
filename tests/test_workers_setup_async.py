"""A worktree's set-up command runs in its try's pane, never in the monitor's cycle (real tmux, git, monitor).

Before: the monitor ran `npm ci` itself, so a long set-up stopped every other worker, the heartbeat and the
steering queue until it ended. The set-ups here wait for a file the test writes: nothing depends on timing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from conftest import ROOT, process_running, wait_gone
from workers_fixtures import monitor_env, project, retry_until, tmux_socket  # noqa: F401
from workers_fixtures import orchestrator_cli as cli, status_document as status  # noqa: E402

from orchestrator.decide import cycle_from_json, decide
from orchestrator.run import open_run
from orchestrator.state import read_lines

PACKAGE = ROOT / "scripts" / "proof-workers"


def start_monitor() -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "monitor", "--cycle", "0.2", "--no-delay"],
                            cwd=PACKAGE, env=monitor_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    if process.poll() is None:
        process.kill()
    return process.communicate(timeout=60)


def waiting_setup(tmp_path: Path, only_issue: int | None = None) -> dict:
    """A set-up that notes each start (and its shell's pid), then waits until `release` exists (for every issue,
    or only for `only_issue`); its timeout is generous: only the test ends the wait."""
    started, release = tmp_path / "setup-started", tmp_path / "release"
    wait = f'while [ ! -e {release} ]; do sleep 0.1; done'
    if only_issue is not None:
        wait = f'if [ "$ORCHESTRATOR_ISSUE" = {only_issue} ]; then {wait}; fi'
    return {"run": f'echo "$ORCHESTRATOR_ISSUE $$" >> {started}; echo waiting; {wait}; echo installed',
            "timeout": 3600}


def setup_starts(tmp_path: Path) -> list[tuple[int, int]]:
    path = tmp_path / "setup-started"
    return [(int(a), int(b)) for a, b in (line.split() for line in path.read_text().splitlines())] \
        if path.exists() else []


def project_held_in_setup(project: Callable[..., Any], tmp_path: Path) -> Any:
    """One issue, one worker, and a set-up that waits until the test creates `release`."""
    return project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1,
                   worktree_setup=waiting_setup(tmp_path))


def first_setup_shell(tmp_path: Path) -> int:
    """The pid of the first set-up's shell, once one has started."""
    retry_until(lambda: setup_starts(tmp_path), seconds=120)
    return setup_starts(tmp_path)[0][1]


def worker_of(doc: dict, issue: int) -> dict | None:
    return next((w for w in doc["workers"] if w["issue"] == issue), None)


def wrappers_of(proj: Any) -> list[int]:
    """The wrappers still running a try of this project (others' tests run theirs meanwhile)."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"wrapper.py" in args and str(proj.state).encode() in args:
            found.append(int(pid))
    return found

def test_a_long_setup_never_holds_up_the_monitor_another_issue_is_taken_run_and_completed_meanwhile(
        project, tmp_path):
    """While #1's set-up waits, #2 is taken, run and completed, the heartbeat moves on, status shows worker 1
    `setting_up`, and #1 is never judged stalled (its set-up outlives stall_timeout); released, #1's agent runs
    after its set-up and completes. Every cycle replays through decide."""
    proj = project([{"number": 1, "title": "slow setup"}, {"number": 2, "title": "quick"}], pipeline=["implement"],
                   num_workers=2, stall_timeout=3, worktree_setup=waiting_setup(tmp_path, only_issue=1))
    running = start_monitor()
    try:
        retry_until(lambda: any(n == 1 for n, _ in setup_starts(tmp_path)), seconds=120)
        retry_until(lambda: proj.issue(2).get("status") == "completed", seconds=120)
        assert not (tmp_path / "release").exists() and running.poll() is None
        doc = status()
        assert worker_of(doc, 1)["status"] == "setting_up"
        beat = doc["monitor"]["last_cycle_at"]
        assert doc["monitor"]["running"] and beat
        # The monitor goes on cycling while the set-up runs, and probes #1 past its stall_timeout without
        # restarting it: its record's last progress is 4 s old, and two heartbeats later it still sets up.
        worker = proj.state / "workers" / f"worker-{worker_of(doc, 1)['worker']}.json"
        retry_until(lambda: time.time() - json.loads(worker.read_text())["last_progress_at"] >= 4, seconds=60)
        for _ in range(2):
            beat = retry_until(lambda: (now := status()["monitor"]["last_cycle_at"]) != beat and now, seconds=60)
        assert worker_of(status(), 1)["status"] == "setting_up"
        assert not (proj.script.parent / "runs" / "1.count").exists(), "#1's agent started before its set-up ended"
        (tmp_path / "release").touch()
        assert running.wait(timeout=180) == 0
    finally:
        out, err = stop(running)
    assert proj.issue(1).get("status") == "completed", out + err
    assert not any(e["action"] == "restart" for e in proj.events())
    assert [n for n, _ in setup_starts(tmp_path)].count(1) == 1
    log = (proj.state / "logs" / "issue-1" / "setup.log").read_text()
    assert "waiting\ninstalled\n" in log and "setup done" in log
    for line in read_lines(open_run().files.journal):
        snapshots, state, settings, actions = cycle_from_json(line)
        assert decide(snapshots, state, settings) == actions


def test_kill_stops_a_running_setup_with_its_processes_and_fails_the_issue_without_a_retry(project, tmp_path):
    proj = project_held_in_setup(project, tmp_path)
    running = start_monitor()
    try:
        shell = first_setup_shell(tmp_path)
        retry_until(lambda: worker_of(status(), 1)["status"] == "setting_up", seconds=60)
        killed = cli("kill", "1")
        assert killed.returncode == 0, killed.stdout + killed.stderr
        assert wait_gone(shell, 60), "the set-up outlived kill"
        assert running.wait(timeout=60) == 1
    finally:
        stop(running)
    assert proj.issue(1).get("status") == "failed"
    assert not (proj.script.parent / "runs").exists(), "the agent started although its set-up was killed"
    assert not any(e["action"] == "restart" for e in proj.events())


def test_a_monitor_killed_during_a_setup_loses_nothing_and_cleanup_stops_a_setup_left_running(project, tmp_path):
    """kill -9 of the monitor: the set-up goes on in its pane; a new monitor takes the try as it is (the
    set-up runs once) and the issue completes. Then a set-up left running by a dead monitor is stopped by
    `cleanup` (kept worktree, no process left)."""
    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "two", "depends_on": [1]}],
                   pipeline=["implement"], num_workers=1, worktree_setup=waiting_setup(tmp_path, only_issue=1))
    first = start_monitor()
    try:
        retry_until(lambda: setup_starts(tmp_path), seconds=120)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
        shell = setup_starts(tmp_path)[0][1]
        assert process_running(shell), "the set-up died with the monitor"
        second = start_monitor()
        try:
            retry_until(lambda: worker_of(status(), 1)["status"] == "setting_up", seconds=60)
            (tmp_path / "release").touch()
            assert second.wait(timeout=180) == 0
        finally:
            stop(second)
    finally:
        stop(first)
    assert proj.issue(1).get("status") == "completed" and proj.issue(2).get("status") == "completed"
    assert [n for n, _ in setup_starts(tmp_path)] == [1, 2]

    # A dead monitor's set-up still running: cleanup kills it.
    (tmp_path / "release").unlink()
    doc = proj.doc()
    doc["issues"].append({"number": 3, "title": "three"})
    doc["worktree_setup"] = waiting_setup(tmp_path)
    proj.config.write_text(json.dumps(doc))
    third = start_monitor()
    try:
        retry_until(lambda: any(n == 3 for n, _ in setup_starts(tmp_path)), seconds=120)
        os.kill(third.pid, signal.SIGKILL)
        third.wait(timeout=60)
    finally:
        stop(third)
    shell = next(pid for n, pid in setup_starts(tmp_path) if n == 3)
    assert process_running(shell)
    cli("cleanup")
    assert wait_gone(shell, 60), "the set-up outlived cleanup"


def test_a_wrapper_killed_during_its_setup_leaves_nothing_running_and_the_next_try_sets_up_again(project, tmp_path):
    """kill -9 of the wrapper: its watchdog kills the set-up, the monitor restarts the try (the pane's process
    is gone without an exit code) and the new try runs the set-up again, then the agent."""
    proj = project_held_in_setup(project, tmp_path)
    running = start_monitor()
    try:
        shell = first_setup_shell(tmp_path)
        wrapper = int(Path(f"/proc/{shell}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the shell's parent
        assert b"wrapper.py" in Path(f"/proc/{wrapper}/cmdline").read_bytes()
        os.kill(wrapper, signal.SIGKILL)
        assert wait_gone(shell, 60), "the set-up outlived its wrapper"
        retry_until(lambda: len(setup_starts(tmp_path)) == 2, seconds=120)
        (tmp_path / "release").touch()
        assert running.wait(timeout=180) == 0
    finally:
        out, err = stop(running)
    assert proj.issue(1).get("status") == "completed", out + err
    assert [e["reason"].split(";")[0] for e in proj.events() if e["action"] == "restart"] == \
        ["agent gone without an exit code"]


def test_a_follow_up_in_the_prompt_of_a_try_whose_wrapper_died_in_its_setup_goes_to_the_next_try_once(
        project, tmp_path):
    """`send` before the run: the follow-up is in the first try's prompt, but its wrapper is killed (-9) during the
    set-up, so that agent never starts. The restarted try's agent gets it, once (it was lost: marked given in the
    first try), and the event log says it was given back."""
    proj = project_held_in_setup(project, tmp_path)
    assert cli("send", "1", "mind the changelog").returncode == 0
    running = start_monitor()
    try:
        shell = first_setup_shell(tmp_path)
        wrapper = int(Path(f"/proc/{shell}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the shell's parent
        assert b"wrapper.py" in Path(f"/proc/{wrapper}/cmdline").read_bytes()
        os.kill(wrapper, signal.SIGKILL)
        retry_until(lambda: len(setup_starts(tmp_path)) == 2, seconds=120)
        (tmp_path / "release").touch()
        assert running.wait(timeout=180) == 0
    finally:
        out, err = stop(running)
    assert proj.issue(1).get("status") == "completed", out + err
    [prompt] = proj.prompts(1)
    assert prompt.count("mind the changelog") == 1, prompt
    given = json.loads((proj.state / "followups.json").read_text())["issues"]["1"]
    assert [entry["given_in"] for entry in given] == ["worker-1-try-2"], given
    assert [e.get("given_back") for e in proj.events() if e["action"] == "followup"] == [None, "worker-1-try-1"]


def test_kill_during_a_setup_that_ends_well_on_sigterm_starts_no_agent_and_keeps_the_follow_up_once(
        project, tmp_path):
    """A set-up that exits 0 when it gets SIGTERM: `kill` signals it, and its wrapper took that for a set-up done
    and started the agent of a failed issue, with the follow-up in its prompt (given back as well: twice). The
    wrapper of a try ending before its agent is stopped first: no agent starts, the follow-up is kept once, and
    the try after `retry` gets it."""
    release, started = tmp_path / "release", tmp_path / "setup-started"
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, worktree_setup={
        "run": f"trap 'echo interrupted, all fine; exit 0' TERM; echo $$ >> {started}; "
               f"while [ ! -e {release} ]; do sleep 0.1; done", "timeout": 3600})
    assert cli("send", "1", "mind the changelog").returncode == 0
    running = start_monitor()
    try:
        retry_until(lambda: started.exists() and started.read_text(), seconds=120)
        retry_until(lambda: worker_of(status(), 1)["status"] == "setting_up", seconds=60)
        killed = cli("kill", "1")
        assert killed.returncode == 0, killed.stdout + killed.stderr
        assert running.wait(timeout=60) == 1
    finally:
        stop(running)
    assert proj.issue(1).get("status") == "failed"
    retry_until(lambda: not wrappers_of(proj), seconds=60)  # whatever the wrapper was going to start, it has
    assert proj.prompts(1) == [], "an agent started for the killed issue"
    kept = json.loads((proj.state / "followups.json").read_text())["issues"]["1"]
    assert [entry.get("given_in") for entry in kept] == [None], kept
    release.touch()
    assert cli("retry", "1").returncode == 0
    again = start_monitor()
    try:
        assert again.wait(timeout=180) == 0
    finally:
        out, err = stop(again)
    [prompt] = proj.prompts(1)
    assert prompt.count("mind the changelog") == 1, out + err


def test_a_failed_setup_leaves_no_process_even_one_that_dropped_every_tag(project, tmp_path):
    """`env -i setsid cmd &` loses the step's and the try's tags and its group: the wrapper (a subreaper) still
    finds it below itself and kills it before the try ends."""
    pid_file = tmp_path / "daemon.pid"
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, worktree_setup={
        "run": f"env -i setsid sleep 3600 & echo $! > {pid_file}; echo 'install failed'; exit 4"})
    running = start_monitor()
    try:
        assert running.wait(timeout=180) == 1
    finally:
        stop(running)
    assert proj.issue(1).get("status") == "failed"
    assert [e["reason"] for e in proj.events() if e["action"] == "skip"] == ["setup failed: install failed"]
    assert wait_gone(int(pid_file.read_text()), 60), "a process of the failed set-up outlived it"


def test_a_pane_killed_during_its_setup_stops_it_and_the_try_is_started_again_without_a_retry(project, tmp_path):
    proj = project_held_in_setup(project, tmp_path)
    running = start_monitor()
    try:
        shell = first_setup_shell(tmp_path)
        subprocess.run(["tmux", "-L", os.environ["ORCHESTRATOR_TMUX_SOCKET"], "kill-window", "-t",
                        "=proof-test:=worker-1"], check=True)
        assert wait_gone(shell, 60), "the set-up outlived its pane"
        retry_until(lambda: len(setup_starts(tmp_path)) == 2, seconds=120)
        (tmp_path / "release").touch()
        assert running.wait(timeout=180) == 0
    finally:
        out, err = stop(running)
    assert proj.issue(1).get("status") == "completed", out + err
    assert [(e["reason"].split(" (")[0], e["counted"]) for e in proj.events() if e["action"] == "restart"] == \
        [("tmux went away", False)]


def test_a_wrapper_stuck_past_its_setups_timeout_is_no_longer_taken_for_setting_up(tmp_path):
    """The wrapper kills its set-up at the timeout; a state still `running` well after that is a stuck wrapper,
    judged as any try (stalled), never waited for forever."""
    from orchestrator import probe, worktree_setup

    state = worktree_setup.state_path(tmp_path / "worker-1-try-1.exit")
    state.write_text(json.dumps({"state": "running", "log": "x", "timeout": 600}))
    written = state.stat().st_mtime
    doc = worktree_setup.read_state(state)
    assert probe._setting_up(doc, state, written + 600)
    assert not probe._setting_up(doc, state, written + 600 + probe.SETUP_GRACE_S)
    assert not probe._setting_up({"state": "running"}, state, written)  # no timeout: not believed
    state.write_text("{\"state\": \"runn")  # half-written
    assert worktree_setup.read_state(state) == {}
