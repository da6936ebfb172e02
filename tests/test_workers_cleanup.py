"""cleanup never loses work: it refuses on any doubt, --force saves a backup ref first, branches stay."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import ROOT, git, wait_gone
from workers_fixtures import monitor_env, project, tmux_socket  # noqa: F401
from workers_fixtures import orchestrator_cli as orchestrator  # noqa: E402

from orchestrator import worktrees  # noqa: E402

PACKAGE = ROOT / "scripts" / "proof-workers"


def add_worktree(proj, number: int) -> Path:
    path = proj.root / "worktrees" / f"issue-{number}"
    worktrees.ensure_worktree(proj.repo, "main", proj.root / "worktrees", path, f"feature/issue-{number}")
    return path


def commit(path: Path, name: str) -> None:
    (path / name).write_text(name)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", name)


def test_cleanup_removes_only_clean_pushed_worktrees_and_force_backs_up_the_rest(project, tmux_socket):
    proj = project([{"number": n, "title": f"t{n}"} for n in range(1, 6)])
    pushed, unpushed, dirty, gone, busy = (add_worktree(proj, n) for n in range(1, 6))
    commit(pushed, "pushed.txt")
    git(pushed, "push", "-q", "origin", "feature/issue-1")
    commit(unpushed, "unpushed.txt")
    (dirty / "notes.txt").write_text("untracked work")
    subprocess.run(["rm", "-rf", str(gone)], check=True)
    sleeper = subprocess.Popen(["sleep", "60"], cwd=busy)
    tmux_socket.new_session(session_name="proof-test-10", attach=False)
    tmux_socket.new_session(session_name="proof-test", attach=False)
    try:
        result = orchestrator("cleanup", "--json")
        assert result.returncode == 1, result.stderr
        verdicts = {Path(v["path"]).name: v for v in json.loads(result.stdout)["worktrees"]}
        assert verdicts["issue-1"]["outcome"] == "removed" and not pushed.exists()
        assert verdicts["issue-2"]["outcome"] == "kept" and "1 commit(s) not on the remote" in verdicts["issue-2"]["reasons"]
        assert verdicts["issue-3"]["reasons"] == ["uncommitted or untracked changes"]
        assert verdicts["issue-4"]["outcome"] == "pruned"
        assert f"process {sleeper.pid} is running in it" in verdicts["issue-5"]["reasons"]
        assert unpushed.exists() and (dirty / "notes.txt").exists() and busy.exists()
        assert [s.session_name for s in tmux_socket.sessions] == ["proof-test-10"]
    finally:
        sleeper.kill()
        wait_gone(sleeper.pid)
    forced = orchestrator("cleanup", "--force")
    assert forced.returncode == 0, forced.stderr
    assert not unpushed.exists() and not dirty.exists()
    refs = git(proj.repo, "for-each-ref", "--format=%(refname)", "refs/orchestrator-backup/").splitlines()
    assert len(refs) == 2
    dirty_ref = next(r for r in refs if "issue-3" in r)
    assert git(proj.repo, "show", f"{dirty_ref}:notes.txt") == "untracked work"
    unpushed_ref = next(r for r in refs if "issue-2" in r)
    assert git(proj.repo, "show", f"{unpushed_ref}:unpushed.txt") == "unpushed.txt"
    branches = git(proj.repo, "branch", "--format=%(refname:short)").splitlines()
    assert {f"feature/issue-{n}" for n in range(1, 6)} <= set(branches)
    assert git(proj.repo, "status", "--porcelain") == ""


def test_cleanup_keep_worktrees_kills_the_session_only(project, tmux_socket):
    proj = project([{"number": 1, "title": "t"}])
    path = add_worktree(proj, 1)
    tmux_socket.new_session(session_name="proof-test", attach=False)
    result = orchestrator("cleanup", "--keep-worktrees")
    assert result.returncode == 0 and "session killed" in result.stdout
    assert path.exists() and not tmux_socket.sessions


def test_cleanup_refuses_while_a_monitor_outside_the_session_still_runs(project, tmux_socket):
    from orchestrator.run import open_run
    from orchestrator.state import monitor_lock

    proj = project([{"number": 1, "title": "t"}])
    path = add_worktree(proj, 1)
    with monitor_lock(open_run().locks()):
        result = orchestrator("cleanup")
    assert result.returncode == 2 and "another monitor is running for demo" in result.stderr
    assert "stop it before cleanup" in result.stderr and path.exists()
