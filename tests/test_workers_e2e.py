"""Proof workers end to end: real tmux on a private socket, real git with a bare remote, a fake agent."""
from __future__ import annotations

import json

from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from orchestrator.decide import cycle_from_json, decide
from orchestrator.monitor import monitor
from orchestrator.run import open_run
from orchestrator.state import read_lines

TRICKY = "Fix \"quoted\" 'title'; rm -rf / $(touch pwned) `id`\nsecond line — ünïcødé ✓"


def test_two_waves_through_a_three_stage_pipeline_with_a_crash_and_a_hang(project):
    """#2 crashes once and is restarted with continuation context; #3 hangs until it is skipped at
    max_retries and its dependent #5 stays blocked; everything else completes, one commit per stage."""
    proj = project(
        [{"number": 1, "title": "first", "wave": 1, "priority": 1},
         {"number": 2, "title": "crashes once", "wave": 1, "priority": 2},
         {"number": 3, "title": "hangs", "wave": 1, "priority": 3},
         {"number": 4, "title": TRICKY, "wave": 2, "depends_on": [1], "description": "tricky; $(id)"},
         {"number": 5, "title": "after the hang", "wave": 2, "depends_on": [3]}],
        script={2: ["crash"], 3: ["hang", "hang", "hang"]}, num_workers=3, stall_timeout=2)
    lines: list[str] = []
    run = open_run()

    failed = monitor(run, cycle=0.2, no_delay=True, say=lines.append)

    assert failed == 1
    statuses = {i["number"]: i.get("status", "pending") for i in proj.doc()["issues"]}
    assert statuses == {1: "completed", 2: "completed", 3: "failed", 4: "completed", 5: "pending"}
    assert proj.doc()["custom_key"] == {"kept": True}
    from orchestrator.report import status_document

    run.reload()
    issues = status_document(run)["projects"][0]["issues"]
    assert [(i["number"], i["state"]) for i in issues if i["state"] == "blocked"] == [(5, "blocked")]
    for number in (1, 2, 4):
        assert proj.remote_commits(f"feature/issue-{number}") == [
            f"review #{number}", f"write_tests #{number}", f"implement #{number}"]
    assert proj.issue(4)["title"] == TRICKY
    assert TRICKY in proj.prompts(4)[0]
    assert not (proj.root / "agent" / "pwned").exists()
    started = run.server.cmd("list-panes", "-a", "-F", "#{window_name}\t#{pane_start_command}").stdout
    workers = [line.split("\t", 1)[1].strip("\"") for line in started if line.startswith("worker-")]
    assert len(workers) == 3 and all(cmd.startswith("exec ") and "wrapper.py" in cmd for cmd in workers)
    assert not any(word in cmd for cmd in workers for word in ("quoted", "pwned", "ünïcødé", "rm -rf"))
    crash_retry = proj.prompts(2)[1]
    assert "Continue from an earlier try" in crash_retry and "exit code 137" in crash_retry
    events = proj.events()
    kinds = {e["action"] for e in events}
    assert {"reassign", "push", "advance_stage", "mark_complete", "restart", "skip", "shutdown"} <= kinds
    skip = next(e for e in events if e["action"] == "skip")
    assert skip["issue"] == 3 and "stalled" in skip["reason"] and "retries exhausted" in skip["reason"]
    assert sum(1 for e in events if e["action"] == "restart" and e["issue"] == 3) == 2
    assert not any(e.get("new_issue") == 5 for e in events)

    from pathlib import Path

    agent_dir = str(proj.script.parent).encode()
    survivors = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).find(agent_dir) >= 0]
    assert survivors == [], "a skipped agent's process group outlived it"

    journal = read_lines(proj.state / "journal.jsonl")
    assert journal
    for entry in journal:
        snapshots, state, settings, actions = cycle_from_json(entry)
        assert decide(snapshots, state, settings) == actions


def _monitor_in_thread():
    """The monitor in a thread (the test acts while it runs); its return value lands in the list."""
    import threading

    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(monitor(open_run(), cycle=0.2, no_delay=True,
                                                                   say=lambda _: None)))
    thread.start()
    return thread, result


def _cmdline(proc) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def _monitor_process(extra_env: dict[str, str] | None = None):
    import subprocess
    import sys

    from conftest import ROOT
    from workers_fixtures import monitor_env

    return subprocess.Popen([sys.executable, "-m", "orchestrator", "monitor", "--cycle", "0.2", "--no-delay"],
                            cwd=ROOT / "scripts" / "proof-workers", env=monitor_env(extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_of_the_monitor_mid_run_then_a_new_monitor_finishes_without_losing_or_repeating_work(
        project, tmp_path):
    """The monitor dies hard after the first push; a second one reconciles and completes every issue:
    no issue lost, no stage run twice, nothing pushed twice. An inherited GIT_DIR misleads none of it."""
    import os
    import signal

    from conftest import git

    proj = project([{"number": n, "title": f"issue {n}", "wave": 1 if n < 3 else 2} for n in (1, 2, 3)],
                   script={n: ["slow"] * 3 for n in (1, 2, 3)})
    decoy = tmp_path / "decoy"
    git(tmp_path, "init", "-q", str(decoy))
    first = _monitor_process({"GIT_DIR": str(decoy / ".git"), "GIT_WORK_TREE": str(decoy)})
    try:
        retry_until(lambda: any(e["action"] == "push" for e in proj.events()), seconds=30)
        second = _monitor_process()
        out, err = second.communicate(timeout=30)
        assert second.returncode == 2 and "another monitor is running for demo" in err, err
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.communicate()
    resumed = _monitor_process({"GIT_DIR": str(decoy / ".git")})
    out, err = resumed.communicate(timeout=90)
    assert resumed.returncode == 0, err
    assert all(i["status"] == "completed" for i in proj.doc()["issues"])
    events = proj.events()
    pushes = [(e["issue"], e["sha"]) for e in events if e["action"] == "push"]
    # No branch head pushed twice (a push whose event line the kill cut off is found on the remote and
    # not repeated, so there may be fewer than nine lines).
    assert len(pushes) == len(set(pushes)) and 8 <= len(pushes) <= 9
    for n in (1, 2, 3):
        assert proj.remote_commits(f"feature/issue-{n}") == [f"review #{n}", f"write_tests #{n}", f"implement #{n}"]
        assert (proj.script.parent / "runs" / f"{n}.count").read_text() == "3", "\n".join([out] + [json.dumps(e) for e in events])
        assert sum(1 for e in events if e.get("new_issue") == n and e["action"] == "reassign") == 1
        assert sum(1 for e in events if e["action"] == "mark_complete" and e["issue"] == n) == 1
    assert not list(decoy.glob("*.txt"))


def test_launch_creates_the_session_and_its_monitor_runs_every_issue_to_completion(project, tmux_socket):
    """launch: windows orchestrator, worker-1..N, dashboard; the monitor in window 0 finishes the run."""
    import subprocess
    import sys

    from conftest import ROOT
    from workers_fixtures import monitor_env

    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "two", "depends_on": [1]}],
                   pipeline=["implement"])
    package = ROOT / "scripts" / "proof-workers"
    dry = subprocess.run([sys.executable, "-m", "orchestrator", "launch", "--dry-run", "--json"], cwd=package,
                         env=monitor_env(), capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["windows"] == ["orchestrator", "worker-1", "worker-2", "dashboard"]
    assert plan["assignments"] == [{"worker": 1, "issue": 1, "project": "demo", "title": "one",
                                    "branch": "feature/issue-1", "worktree": str(proj.root / "worktrees" / "issue-1")}]
    assert not (proj.root / "worktrees").exists() and not tmux_socket.sessions
    launched = subprocess.run([sys.executable, "-m", "orchestrator", "launch"], cwd=package, env=monitor_env(),
                              capture_output=True, text=True, timeout=60)
    assert launched.returncode == 0, launched.stderr
    assert [w.window_name for w in tmux_socket.sessions.get(session_name="proof-test").windows] == plan["windows"]
    retry_until(lambda: any(e["action"] == "shutdown" for e in proj.events()), seconds=60)
    status = subprocess.run([sys.executable, "-m", "orchestrator", "status", "--json"], cwd=package,
                            env=monitor_env(), capture_output=True, text=True, timeout=60)
    doc = json.loads(status.stdout)
    assert [i["state"] for i in doc["projects"][0]["issues"]] == ["completed", "completed"] and doc["done"]
    again = subprocess.run([sys.executable, "-m", "orchestrator", "launch"], cwd=package, env=monitor_env(),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_unverified_stages_never_complete(project, tmp_path):
    """exit 0 without a commit fails the try (then the issue); uncommitted edits get one restart told to
    commit; an agent whose wrapper vanishes is restarted. Repository hooks never run for the orchestrator's
    git calls. (Failed pushes: tests/test_workers_push.py.)"""
    from conftest import git

    proj = project([{"number": n, "title": f"issue {n}"} for n in (1, 2, 3, 4)],
                   script={1: ["nocommit", "nocommit"], 2: ["dirty", "ok"], 3: ["vanish", "ok"]},
                   pipeline=["implement"], max_retries=1, num_workers=2)
    marker = tmp_path / "hook-ran"
    for hook in ("pre-push", "post-checkout"):  # hooks only our git calls would fire
        path = proj.repo / ".git" / "hooks" / hook
        path.write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        path.chmod(0o755)
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 1
    statuses = {i["number"]: i["status"] for i in proj.doc()["issues"]}
    assert statuses == {1: "failed", 2: "completed", 3: "completed", 4: "completed"}
    assert "exit 0 without a new commit" in next(e for e in proj.events() if e["action"] == "skip")["reason"]
    assert "COMMIT them" in proj.prompts(2)[1]
    assert "agent gone without an exit code" in proj.prompts(3)[1]
    assert git(proj.remote, "branch", "--list", "feature/issue-1") == ""
    for n in (2, 3, 4):
        assert proj.remote_commits(f"feature/issue-{n}") == [f"implement #{n}"]
    assert not marker.exists(), marker.read_text()


def test_config_dir_free_workers_take_the_best_issue_across_projects(project, make_repo, home):
    """--config-dir loads every *-issues.json; each issue runs in its own project's repo and status lands
    in its own file."""
    proj = project([{"number": 1, "title": "alpha one", "priority": 2}], pipeline=["implement"])
    other = make_repo("other")
    lead = proj.doc()
    second = {**lead, "project": "beta", "repo_path": str(other.path),
              "worktree_base": str(proj.root / "beta-worktrees"), "branch_prefix": "beta-",
              "issues": [{"number": 1, "title": "beta one", "priority": 1},
                         {"number": 2, "title": "beta two", "priority": 3, "depends_on": [1]}]}
    (proj.config.parent / "beta-issues.json").write_text(json.dumps(second))
    proj.config.rename(proj.config.parent / "alpha-issues.json")
    run = open_run(config_dir=proj.config.parent)
    assert [c.project for c in run.configs] == ["demo", "beta"]

    assert monitor(run, cycle=0.2, no_delay=True, say=lambda _: None) == 0

    alpha = json.loads((proj.config.parent / "alpha-issues.json").read_text())
    beta = json.loads((proj.config.parent / "beta-issues.json").read_text())
    assert [i["status"] for i in alpha["issues"]] == ["completed"]
    assert [i["status"] for i in beta["issues"]] == ["completed", "completed"]
    from conftest import git

    assert git(other.remote, "log", "--format=%s", "main..refs/heads/beta-2") == "implement #2"
    assert git(proj.remote, "log", "--format=%s", "main..refs/heads/feature/issue-1") == "implement #1"
    events = [e["event"] for e in read_lines(proj.home / "state" / "demo" / "orchestrator-log.jsonl")]
    first = [e for e in events if e["action"] == "reassign"][:2]
    assert [(e["project"], e["new_issue"]) for e in first] == [("beta", 1), ("demo", 1)]


def test_make_demo_workers_runs_the_demo_to_completion(tmp_path, tmux_socket):
    """The issue's 'done when': make demo-workers launches, finishes, status shows every issue complete."""
    import subprocess

    from conftest import ROOT
    from workers_fixtures import monitor_env

    result = subprocess.run(["make", "-s", "demo-workers", f"WORKERS_DEMO_DIR={tmp_path / 'demo'}"], cwd=ROOT,
                            env=monitor_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    status = result.stdout.split(" inv workers.status", 1)[1].split(" inv workers.cleanup")[0]
    assert status.count("completed") == 4 + 1  # four issue rows and the summary line
    assert "removed: " in result.stdout and "kept" not in result.stdout
    assert f"tmux -L {tmux_socket.socket_name} attach -t proof-demo" in result.stdout


def test_resume_starts_a_prepared_try_without_counting_it_and_releases_workers_beyond_the_count(project):
    """State left by a crash: worker-1 prepared a try of #2 but never started it; worker-5 (a run with more
    workers) holds #1. The monitor starts worker-1's try as it is, and puts #1 back in the queue."""
    from conftest import git

    from orchestrator.state import RunFiles, WorkerRecord

    proj = project([{"number": 1, "title": "held by a gone worker", "status": "in_progress", "assigned_worker": 5},
                    {"number": 2, "title": "prepared", "status": "in_progress", "assigned_worker": 1}],
                   pipeline=["implement"])
    files = RunFiles(proj.home / "state" / "demo")
    base = git(proj.repo, "rev-parse", "origin/main")
    files.save_worker(WorkerRecord(1, "running", "demo", 2, "feature/issue-2", str(proj.root / "worktrees" / "issue-2"),
                                   0, "implement", try_id=4, launched=False, stage_base=base, started_at=0))
    files.save_worker(WorkerRecord(5, "running", "demo", 1, "feature/issue-1", str(proj.root / "worktrees" / "issue-1"),
                                   0, "implement", try_id=9, launched=True, stage_base=base, started_at=0))
    git(proj.repo, "branch", "feature/issue-2", "main")

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert [i["status"] for i in proj.doc()["issues"]] == ["completed", "completed"]
    assert files.load_worker(5).issue_number is None
    assert not any(e["action"] == "restart" for e in proj.events())
    assert (files.root / "signals" / "worker-1-try-4.exit").read_text().strip() == "0"
    assert proj.remote_commits("feature/issue-2") == ["implement #2"]


def test_odd_user_git_config_changes_nothing(project, tmp_path):
    """A global config with a hooks path, untracked files hidden from status, forced colour and
    push.default=nothing: the run still verifies, nudges and pushes exactly as usual."""
    import os

    proj = project([{"number": 1, "title": "one"}], script={1: ["dirty", "ok"]}, pipeline=["implement"])
    hooks = tmp_path / "global-hooks"
    hooks.mkdir()
    marker = tmp_path / "global-hook-ran"
    for hook in ("pre-push", "post-checkout"):
        (hooks / hook).write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        (hooks / hook).chmod(0o755)
    with open(os.environ["GIT_CONFIG_GLOBAL"], "a") as config:
        config.write(f"[core]\n\thooksPath = {hooks}\n[status]\n\tshowUntrackedFiles = no\n"
                     "[color]\n\tui = always\n[push]\n\tdefault = nothing\n")

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert "COMMIT them" in proj.prompts(1)[1]
    assert "\x1b[" not in proj.prompts(1)[1]
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]
    assert not marker.exists()


def test_an_issue_failed_by_hand_mid_run_frees_its_worker_and_kills_its_agent(project):
    from orchestrator.config import set_issue

    proj = project([{"number": 1, "title": "hangs until the user gives up"}], script={1: ["hang"]},
                   pipeline=["implement"])
    thread, result = _monitor_in_thread()
    try:
        retry_until(lambda: (proj.script.parent / "runs" / "1.count").exists(), seconds=30)
        set_issue(proj.config, 1, status="failed")
    finally:
        thread.join(timeout=30)
    assert result == [1]
    release = next(e for e in proj.events() if e["action"] == "release")
    assert release["issue"] == 1 and release["status"] == "failed"
    from pathlib import Path

    agent_dir = str(proj.script.parent).encode()
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and agent_dir in _cmdline(p)]


def test_an_agent_that_deletes_its_worktree_gets_it_back_for_the_next_try(project):
    proj = project([{"number": 1, "title": "one"}], script={1: ["selfdelete"]}, pipeline=["implement"])

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert len(proj.prompts(1)) == 2 and "exit code 1" in proj.prompts(1)[1]
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]


def test_add_issue_while_the_monitor_runs_is_picked_up_and_completed(project):
    from orchestrator.config import add_issue

    proj = project([{"number": 1, "title": "slow one"}], script={1: ["slow"]}, pipeline=["implement"])
    thread, result = _monitor_in_thread()
    try:
        retry_until(lambda: (proj.script.parent / "runs" / "1.count").exists(), seconds=30)
        add_issue(proj.config, 2, "added mid-run; \"quoted\"", depends_on=[1])
    finally:
        thread.join(timeout=60)
    assert result == [0]
    assert [i["status"] for i in proj.doc()["issues"]] == ["completed", "completed"]
    assert proj.remote_commits("feature/issue-2") == ["implement #2"]
