"""Proof workers attacked as a hostile user would: cleanup must never lose work, the monitor never report falsely."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import git
from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from test_workers_cleanup import add_worktree, commit
from test_workers_e2e import _monitor_in_thread

from orchestrator import worktrees
from orchestrator.cleanup import cleanup
from orchestrator.monitor import monitor
from orchestrator.run import open_run


def verdicts(report) -> dict[str, dict]:
    return {Path(v["path"]).name: v for v in report.to_json()["worktrees"]}


def test_cleanup_keeps_amended_after_push_detached_commits_and_leaves_stashes(project, tmux_socket):
    """Held: a branch pushed then amended, and a commit on a detached HEAD, are 'not on the remote'."""
    proj = project([{"number": n, "title": f"t{n}"} for n in (1, 2, 3)])
    amended, detached, stashed = (add_worktree(proj, n) for n in (1, 2, 3))
    commit(amended, "a.txt")
    git(amended, "push", "-q", "origin", "feature/issue-1")
    git(amended, "commit", "-q", "--amend", "-m", "amended")
    git(detached, "checkout", "-q", "--detach")
    commit(detached, "detached.txt")
    lone = git(detached, "rev-parse", "HEAD")
    (stashed / "README.md").write_text("stashed work")
    git(stashed, "stash", "-q")

    seen = verdicts(cleanup(open_run()))

    assert seen["issue-1"]["outcome"] == "kept" and "1 commit(s) not on the remote" in seen["issue-1"]["reasons"]
    assert seen["issue-2"]["outcome"] == "kept" and amended.exists() and detached.exists()
    assert git(proj.repo, "cat-file", "-t", lone) == "commit"
    assert seen["issue-3"]["outcome"] == "removed"  # clean: its stash lives in the shared repository
    assert git(proj.repo, "stash", "list") != ""


def test_cleanup_never_trusts_a_remote_tracking_ref_the_remote_does_not_have(project, tmux_socket):
    """Broke: a refs/remotes/origin/* ref forged (or left stale after the remote deleted the branch) made a
    detached HEAD's only commit look pushed; the worktree went and the commit was reachable from nothing."""
    proj = project([{"number": 1, "title": "t"}])
    path = add_worktree(proj, 1)
    git(path, "checkout", "-q", "--detach")
    commit(path, "only-here.txt")
    lone = git(path, "rev-parse", "HEAD")
    git(path, "update-ref", "refs/remotes/origin/looks-pushed", lone)

    seen = verdicts(cleanup(open_run()))

    assert seen["issue-1"]["outcome"] == "kept", seen
    assert "1 commit(s) not on the remote" in seen["issue-1"]["reasons"]
    assert (path / "only-here.txt").exists()


def test_cleanup_never_removes_a_worktree_it_did_not_create(project, tmux_socket, tmp_path):
    """Broke: with worktree_base the repository's parent, the user's own clean, pushed worktree (with its
    ignored .env) was removed. Only the orchestrator's <worktree_base>/issue-N worktrees are its to remove."""
    proj = project([{"number": 1, "title": "t"}])
    doc = proj.doc()
    doc["worktree_base"] = str(proj.repo.parent)
    proj.config.write_text(json.dumps(doc))
    (proj.repo / ".gitignore").write_text(".env\n")
    git(proj.repo, "add", ".gitignore")
    git(proj.repo, "commit", "-q", "-m", "ignore .env")
    git(proj.repo, "push", "-q", "origin", "main")
    mine = proj.repo.parent / "app-hotfix"
    git(proj.repo, "worktree", "add", "-q", "-b", "hotfix", str(mine))
    git(mine, "push", "-q", "origin", "hotfix")
    (mine / ".env").write_text("SECRET=only copy")
    ours = proj.repo.parent / "issue-1"
    worktrees.ensure_worktree(proj.repo, "main", proj.repo.parent, ours, "feature/issue-1")

    seen = verdicts(cleanup(open_run()))

    assert (mine / ".env").read_text() == "SECRET=only copy"
    assert "app-hotfix" not in seen
    assert seen["issue-1"]["outcome"] == "removed" and not ours.exists()


def test_a_push_url_rewritten_mid_run_never_moves_the_push(project, tmp_path):
    """Broke: an agent that pointed origin elsewhere (url, pushurl or insteadOf in the shared .git/config)
    got its work 'pushed' there and the issue completed, with nothing on the real remote. Now the push
    goes to the url pinned before the run's first agent started (tests/test_workers_push.py: every way)."""
    proj = project([{"number": 1, "title": "one"}], script={1: ["slow"]}, pipeline=["implement"])
    elsewhere = tmp_path / "elsewhere.git"
    git(tmp_path, "init", "-q", "--bare", str(elsewhere))
    thread, result = _monitor_in_thread()
    try:
        retry_until(lambda: (proj.script.parent / "runs" / "1.count").exists(), seconds=30)
        git(proj.repo, "config", "remote.origin.pushurl", str(elsewhere))
    finally:
        thread.join(timeout=60)
    assert result == [0]
    assert proj.issue(1)["status"] == "completed"
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]
    assert git(elsewhere, "branch", "--list") == ""


def test_a_config_replaced_by_invalid_json_mid_run_is_never_overwritten_and_the_run_resumes(project):
    """Held: the monitor keeps its last good config, writes nothing over the user's half-done edit, and
    finishes once the file is valid again."""
    proj = project([{"number": 1, "title": "one"}], script={1: ["slow"]}, pipeline=["implement"])
    thread, result = _monitor_in_thread()
    try:
        retry_until(lambda: (proj.script.parent / "runs" / "1.count").exists(), seconds=30)
        good, log = proj.config.read_text(), proj.state / "orchestrator-log.jsonl"
        events = lambda: [json.loads(line)["event"] for line in log.read_text().splitlines()]  # noqa: E731
        proj.config.write_text('{"project": "demo", "issues": [  <- the user is still typing')
        retry_until(lambda: any(e["action"] == "error" and e["during"] == "mark_complete" for e in events()),
                    seconds=30)
        assert proj.config.read_text().endswith("still typing")
        proj.config.write_text(good)
    finally:
        thread.join(timeout=60)
    assert result == [0] and proj.issue(1)["status"] == "completed"
    assert any(e["action"] == "config_error" for e in proj.events())


def test_a_one_megabyte_hostile_title_stays_data_in_the_prompt_and_the_status(project, tmp_path):
    """Held: quotes, ;, $(...), backticks and newlines in a 1 MB title reach the agent's prompt as text."""
    import subprocess
    import sys

    from conftest import ROOT
    from workers_fixtures import monitor_env

    title = "x\"'; $(touch pwned) `touch pwned2`\n" * 30000
    proj = project([{"number": 1, "title": title, "description": title}], pipeline=["implement"])
    assert monitor(open_run(), cycle=0.1, no_delay=True, say=lambda _: None) == 0
    assert title in proj.prompts(1)[0]
    status = subprocess.run([sys.executable, "-m", "orchestrator", "status"], cwd=ROOT / "scripts" / "proof-workers",
                            env=monitor_env(), capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "Traceback" not in status.stderr
    assert not list(tmp_path.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))


def test_no_monitor_can_start_while_cleanup_weighs_and_removes_worktrees(project, tmux_socket, monkeypatch):
    """Broke: cleanup only checked that no monitor ran, then let go of the lock; a monitor (or a second
    cleanup) starting meanwhile could launch an agent into a worktree being judged safe and removed."""
    from orchestrator import cleanup as cleanups
    from orchestrator.state import MonitorBusy, monitor_lock

    proj = project([{"number": 1, "title": "t"}])
    add_worktree(proj, 1)
    could_start: list[bool] = []
    judge = cleanups.doubts

    def doubts_while_a_monitor_tries_to_start(repo, path, *pin):
        try:
            with monitor_lock(open_run().locks()):
                could_start.append(True)
        except MonitorBusy:
            could_start.append(False)
        return judge(repo, path, *pin)

    monkeypatch.setattr(cleanups, "doubts", doubts_while_a_monitor_tries_to_start)
    cleanup(open_run())
    assert could_start == [False]
