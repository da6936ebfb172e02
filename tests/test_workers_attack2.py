"""Hostile review of "proof workers never trust the agent": agents and users that try to make the monitor lose work
or lie. Real tmux on a private socket, real git with a bare remote, scripted agents."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, git, process_running, require_tool, wait_gone
from test_workers_alerts import rogue
from workers_fixtures import monitor_env, project, retry_until, tmux_socket  # noqa: F401
from workers_fixtures import orchestrator_cli as orchestrator  # noqa: E402

from orchestrator import worktrees
from orchestrator.act import Executor
from orchestrator.monitor import monitor
from orchestrator.run import open_run

PACKAGE = ROOT / "scripts" / "proof-workers"


# An agent that starts a daemon the way `env -i setsid sh -c 'cmd &'` does: the daemon drops the whole
# environment (so the try's ORCHESTRATOR_TRY tag too), leaves the agent's process group and session, and
# its parent exits at once (a double fork). Then it commits and exits 0.
UNTAGGED_DAEMON = r'''
import os, subprocess, sys, time
from pathlib import Path
out = Path(sys.argv[1])
subprocess.run(["env", "-i", "/bin/sh", "-c",
                'setsid /bin/sh -c "sleep 3605 & echo \\$! > \\"$0\\"" </dev/null >/dev/null 2>&1 &', str(out)],
               check=True)
while not out.exists() or not out.read_text().strip():
    time.sleep(0.05)
Path("work.txt").write_text("done\n")
for args in (["add", "-A"], ["commit", "-q", "-m", "work"]):
    subprocess.run(["git", "-c", "user.name=A", "-c", "user.email=a@example.com", *args], check=True)
'''


def _kill_listed(pids_file: Path) -> None:
    text = pids_file.read_text().split() if pids_file.exists() else []
    for pid in map(int, text):
        if process_running(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_daemon_that_drops_its_environment_and_double_forks_does_not_outlive_its_try(project, tmp_path):
    """`env -i setsid sh -c 'cmd &'` carries no try tag and leaves the group: before, it outlived its try."""
    agent = tmp_path / "untagged_daemon.py"
    agent.write_text(UNTAGGED_DAEMON)
    pids_file = tmp_path / "daemon.pid"
    project([{"number": 1, "title": "one"}], pipeline=["implement"],
            agent_command=f"{shlex.quote(sys.executable)} {shlex.quote(str(agent))} {shlex.quote(str(pids_file))}")
    try:
        assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
        daemon = int(pids_file.read_text().split()[0])
        environ = Path(f"/proc/{daemon}/environ").read_bytes() if process_running(daemon) else b""
        assert b"ORCHESTRATOR_TRY" not in environ  # the case under test: no tag to find it by
        assert wait_gone(daemon, 20), "a double-forked daemon without the try's tag outlived its try"
    finally:
        _kill_listed(pids_file)


def _refs(repo: Path) -> dict[str, str]:
    lines = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/").splitlines()
    return dict(line.split(" ", 1) for line in lines)


def _commit(path: Path, name: str) -> str:
    (path / f"{name}.txt").write_text(f"{name}\n")
    git(path, "add", "-A")
    git(path, "-c", "user.name=U", "-c", "user.email=u@example.com", "commit", "-q", "-m", name)
    return git(path, "rev-parse", "HEAD")


def test_a_fetch_refspec_into_local_branches_never_makes_cleanup_delete_or_move_a_branch(project):
    """An agent (or a user's odd config) sets origin's fetch refspec to `+refs/heads/*:refs/heads/*`. Before,
    cleanup's `git fetch --prune origin` then deleted every local branch the remote lacks: the user's own
    branch in the main checkout and a failed issue's unpushed work, all the while "branches are never deleted"."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"])
    git(proj.repo, "checkout", "-q", "-b", "mine")
    _commit(proj.repo, "users-own-work")
    worktree = proj.root / "worktrees" / "issue-1"
    worktrees.ensure_worktree(proj.repo, "main", proj.root / "worktrees", worktree, "feature/issue-1")
    _commit(worktree, "unpushed-issue-work")
    git(proj.repo, "config", "remote.origin.fetch", "+refs/heads/*:refs/heads/*")
    before = _refs(proj.repo)
    result = orchestrator("cleanup")
    assert _refs(proj.repo) == before, result.stdout + result.stderr
    assert result.returncode == 1 and "1 commit(s) not on the remote" in result.stdout and worktree.is_dir()


def test_recreating_a_deleted_worktree_never_rewinds_its_branch_to_the_remote_under_a_forged_refspec(project):
    """The agent deletes its worktree and maps origin's branches onto local ones; the worktree is brought
    back from its branch, which keeps the stage's unpushed commit (before: fetch forced it to the remote's)."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"])
    git(proj.repo, "checkout", "-q", "--detach")
    base = proj.root / "worktrees"
    worktree = base / "issue-1"
    worktrees.ensure_worktree(proj.repo, "main", base, worktree, "feature/issue-1")
    _commit(worktree, "pushed-stage")
    git(worktree, "push", "-q", "origin", "feature/issue-1")
    unpushed = _commit(worktree, "unpushed-stage")
    git(proj.repo, "config", "remote.origin.fetch", "+refs/heads/*:refs/heads/*")
    shutil.rmtree(worktree)
    try:
        worktrees.ensure_worktree(proj.repo, "main", base, worktree, "feature/issue-1")
    except worktrees.GitFailed:
        pass  # refusing is fine; rewinding is not
    assert _refs(proj.repo)["refs/heads/feature/issue-1"] == unpushed


@pytest.fixture
def outside_tmp(request):
    """A directory outside /tmp (the sandbox's private /tmp would hide anything under it)."""
    base = Path(tempfile.mkdtemp(prefix="orch-attack2-", dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    return base


def test_a_sandboxed_agent_cannot_read_credentials_where_xdg_config_home_puts_them(outside_tmp):
    """git's credential store and gh read `$XDG_CONFIG_HOME/git/credentials` and `$XDG_CONFIG_HOME/gh/`; with
    XDG_CONFIG_HOME set elsewhere than ~/.config, before, a sandboxed agent read the token and could push."""
    require_tool("bwrap")
    tmp_path = outside_tmp
    from orchestrator.wrapper import sandbox_argv, sandbox_env

    home, xdg, worktree = tmp_path / "home", tmp_path / "xdg", tmp_path / "wt"
    for path in (home, xdg / "git", xdg / "gh", worktree):
        path.mkdir(parents=True)
    (xdg / "git" / "credentials").write_text("https://agent:SECRET@example.com\n")
    (xdg / "gh" / "hosts.yml").write_text("github.com:\n  oauth_token: SECRET\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CONFIG_HOME": str(xdg)}
    box = {"worktree": str(worktree), "visible": [], "writable": [str(worktree)]}
    for secret in (xdg / "git" / "credentials", xdg / "gh" / "hosts.yml"):
        read = subprocess.run([*sandbox_argv(box, env), "cat", str(secret)], env=sandbox_env(env),
                              capture_output=True, text=True, timeout=60)
        assert "SECRET" not in read.stdout, f"{secret} is readable in the sandbox"


def test_two_projects_whose_issues_would_share_a_branch_and_worktree_are_a_config_error(project):
    """Two configs of one run on the same repo, both numbering from 1 with the same branch_prefix: before,
    demo #1 and beta #1 ran in one worktree on one branch, and each was `completed` with the other's commits."""
    proj = project([{"number": 1, "title": "demo one"}], pipeline=["implement"])
    second = {**proj.doc(), "project": "beta", "issues": [{"number": 1, "title": "beta one"}]}
    (proj.config.parent / "beta-issues.json").write_text(json.dumps(second))
    proj.config.rename(proj.config.parent / "demo-issues.json")
    result = orchestrator("status", "--config-dir", str(proj.config.parent))
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip().splitlines()[0]
    assert line.startswith("error: ") and "beta" in line and "feature/issue-1" in line, result.stderr


def test_a_monitor_killed_in_the_middle_of_a_restart_never_counts_that_retry_twice(project, monkeypatch):
    """The monitor dies after a restart counted its retry but before the next try was recorded. Before: the
    next monitor judged the same ended try again and counted a second retry, so the issue failed after two
    tries of three (max_retries 2)."""
    proj = project([{"number": 1, "title": "fails"}], script={1: ["fail", "fail", "fail", "ok"]},
                   pipeline=["implement"], num_workers=1, max_retries=2)
    quiet = {"say": lambda _: None}
    monitor(open_run(), once=True, no_delay=True, **quiet)
    retry_until((proj.state / "signals" / "worker-1-try-1.exit").exists, seconds=60)

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt  # where a kill -9 would stop it: between two steps of the restart

    with monkeypatch.context() as patch:
        patch.setattr(Executor, "_restore_worktree", killed)
        with pytest.raises(KeyboardInterrupt):
            monitor(open_run(), once=True, no_delay=True, **quiet)

    def over() -> bool:
        monitor(open_run(), once=True, no_delay=True, **quiet)
        return proj.issue(1)["status"] == "failed"

    retry_until(over, seconds=120, interval=0.3)
    tries = int((proj.script.parent / "runs" / "1.count").read_text())
    assert tries == 3, [e for e in proj.events() if e["action"] in ("restart", "skip")]


def test_an_agent_that_deletes_its_branch_never_gets_an_unrelated_history_pushed_and_completed(project):
    """The agent commits, then deletes its own branch ref (`git update-ref -d`): before, its retry committed
    on an unborn branch, and a root commit without any of main's history was pushed and `completed`."""
    proj = rogue(project, [{"number": 1, "title": "one"}],
                 {1: [["COMMIT", "git update-ref -d refs/heads/feature/issue-1"]]})
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert proj.issue(1)["status"] == "completed"
    main = git(proj.remote, "rev-parse", "refs/heads/main")
    assert git(proj.remote, "merge-base", main, "refs/heads/feature/issue-1") == main
    assert "branch_restored" in [e["action"] for e in proj.events()]
    assert not [e for e in proj.events() if e["action"] == "alert" and e["kind"] == "foreign_write"]  # ours


def test_a_branch_replaced_by_an_unrelated_history_is_never_pushed_as_the_stage(project):
    """The agent replaces its branch with an orphan history (`checkout --orphan`, then renames it over its
    branch): before, that root commit was pushed and the issue `completed`."""
    proj = rogue(project, [{"number": 1, "title": "one"}],
                 {1: [["git checkout -q --orphan scratch", "git commit -q -m unrelated",
                       "git branch -M scratch feature/issue-1"]]}, max_retries=0)
    monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None)
    assert proj.issue(1)["status"] == "failed"
    assert git(proj.remote, "branch", "--list", "feature/issue-1") == ""
    skip = [e for e in proj.events() if e["action"] == "skip"][-1]
    assert "no longer contains" in skip["reason"], skip


# A push that lands while git reports it rejected: what a second push racing the first (a killed monitor's
# push still running when the next monitor pushes the same commit) sees. The hook puts the ref in place
# itself, so receive-pack's own update then fails with "[remote rejected] ... (failed to update ref)".
RACED_PUSH_HOOK = """#!/bin/sh
while read old new ref; do env -u GIT_QUARANTINE_PATH git update-ref "$ref" "$new"; done
"""


def test_a_push_reported_rejected_while_the_pinned_url_has_the_commit_completes_the_stage(project):
    """Before: the rejection failed the issue at once although the pinned url held exactly its commit."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    hook = proj.remote / "hooks" / "pre-receive"
    hook.write_text(RACED_PUSH_HOOK)
    hook.chmod(0o755)
    monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None)
    assert proj.issue(1)["status"] == "completed", [e for e in proj.events() if "push" in e["action"]]
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]


def test_an_origin_that_refuses_the_fetch_at_assignment_keeps_the_issue_pending_not_failed(project):
    """origin fetches from a host that refuses the connection for a while (its push url, the pinned one, is
    fine). Before: the worktree's fetch failed the issue for good; a network error must only delay it."""
    require_tool("ssh")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    git(proj.repo, "config", "remote.origin.pushurl", str(proj.remote))
    git(proj.repo, "config", "remote.origin.url", "ssh://127.0.0.1:1/refused.git")
    lines: list[str] = []
    monitor(open_run(), once=True, no_delay=True, say=lines.append)
    assert proj.issue(1).get("status", "pending") == "pending", lines
    git(proj.repo, "config", "remote.origin.url", str(proj.remote))  # the network is back
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert proj.issue(1)["status"] == "completed"


@pytest.mark.xfail(strict=True, reason="the sandbox binds the shared objects/ writable (a commit needs it), so an "
                   "agent can delete or replace any object of the repository: a private object dir per try, "
                   "imported by the monitor, would be needed (docs/proof-workers.md says so; too large for this review)")
def test_a_sandboxed_agent_cannot_destroy_the_users_unpushed_commits_in_the_shared_object_store(project,
                                                                                               outside_tmp):
    require_tool("bwrap")
    proj = rogue(project, [{"number": 1, "title": "one"}],
                 {1: [['sha=$(git rev-parse refs/heads/mine) && '
                       'rm -f "$MAIN/.git/objects/$(echo $sha | cut -c1-2)/$(echo $sha | cut -c3-)"', "COMMIT"]]},
                 sandbox="bwrap", sandbox_writable=[str(outside_tmp)])
    for name in ("agent.py", "script.json"):  # where the sandbox shows them (the host's /tmp is hidden)
        shutil.copy(proj.script.parent / name, outside_tmp / name)
    doc = proj.doc()
    doc["agent_command"] = doc["agent_command"].replace(str(proj.script.parent), str(outside_tmp))
    proj.config.write_text(json.dumps(doc))
    git(proj.repo, "checkout", "-q", "-b", "mine")
    mine = _commit(proj.repo, "users-unpushed-work")
    git(proj.repo, "checkout", "-q", "main")
    monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None)
    assert proj.issue(1)["status"] == "completed", (proj.state / "logs" / "worker-1.log").read_text()
    assert subprocess.run(["git", "cat-file", "-e", mine], cwd=proj.repo).returncode == 0


def test_an_agent_that_kills_the_tmux_server_costs_no_retry_and_the_run_completes(project, tmux_socket):
    """`tmux kill-server` from inside its pane (an unsandboxed agent reaches the server through $TMUX)."""
    require_tool("tmux")
    proj = rogue(project, [{"number": 1, "title": "one"}], {1: [["tmux kill-server; sleep 30"]]}, max_retries=0)
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert proj.issue(1)["status"] == "completed"
    restarts = [e for e in proj.events() if e["action"] == "restart"]
    assert len(restarts) == 1 and restarts[0]["counted"] is False, restarts
    assert tmux_socket.cmd("list-windows", "-t", "=proof-test", "-F", "#{window_name}").stdout == [
        "orchestrator", "worker-1", "dashboard"]


def test_a_worktree_deleted_while_the_monitor_probes_it_never_stops_the_monitor(project, monkeypatch):
    """The agent's `rm -rf` of its worktree lands between the probe's look at the directory and its git call.
    Before: that git's GitFailed escaped the cycle and the monitor died, leaving every agent unjudged."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    quiet = {"say": lambda _: None}
    monitor(open_run(), once=True, no_delay=True, **quiet)
    retry_until((proj.state / "signals" / "worker-1-try-1.exit").exists, seconds=60)
    real = worktrees.branch_head

    def racing(worktree: Path, branch: str) -> str | None:
        shutil.rmtree(worktree, ignore_errors=True)  # what the agent's rm -rf does at this very moment
        return real(worktree, branch)

    with monkeypatch.context() as patch:
        patch.setattr(worktrees, "branch_head", racing)
        monitor(open_run(), once=True, no_delay=True, **quiet)
    assert monitor(open_run(), cycle=0.2, no_delay=True, **quiet) == 0
    assert proj.issue(1)["status"] == "completed"
    assert proj.remote_commits("feature/issue-1")


def test_is_ancestor_tells_yes_no_and_cannot_tell_apart(make_repo):
    """The push's base check: a missing commit is an error (the push fails with it), never a quiet "no"."""
    repo = make_repo("app").path
    base = git(repo, "rev-parse", "HEAD")
    top = _commit(repo, "top")
    assert worktrees.is_ancestor(repo, base, "HEAD") and not worktrees.is_ancestor(repo, top, base)
    with pytest.raises(worktrees.GitFailed, match="merge-base"):
        worktrees.is_ancestor(repo, "1" * 40, "HEAD")


def test_a_file_name_that_is_not_utf8_never_stops_the_monitor_or_cleanup(project):
    """With core.quotePath=false (a common setting where file names are not English), `git status` prints
    names as raw bytes. The agent leaves a file whose name is not UTF-8. Before: decoding that output raised
    in the probe and the monitor died at every start; cleanup died with a traceback."""
    proj = rogue(project, [{"number": 1, "title": "one"}],
                 {1: [["printf x > \"$(printf 'caf\\351.txt')\"", "COMMIT"]]})
    git(proj.repo, "config", "core.quotePath", "false")
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert proj.issue(1)["status"] == "completed"
    kept = orchestrator("cleanup")
    assert kept.returncode == 1 and "uncommitted or untracked changes" in kept.stdout, kept.stdout + kept.stderr


def test_a_worktree_replaced_by_a_link_to_the_main_checkout_never_gets_the_main_checkout_switched(project):
    """The agent detaches its worktree's HEAD, then replaces its worktree with a symlink to the main checkout
    and fails. Before: the restart 'put the worktree back on its branch' by switching the main checkout to the
    issue branch, and the next try ran in the main checkout."""
    proj = rogue(project, [{"number": 1, "title": "one"}],
                 {1: [['sha=$(git rev-parse HEAD) && echo $sha > "$MAIN/.git/worktrees/issue-1/HEAD" && cd .. && '
                       'rm -rf issue-1 && '
                       'ln -s "$MAIN" issue-1 && exit 1']]}, max_retries=1)
    monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None)
    assert git(proj.repo, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert git(proj.repo, "status", "--porcelain") == ""
    assert proj.issue(1)["status"] == "failed"
    assert git(proj.remote, "branch", "--list", "feature/issue-1") == ""
    assert "symlink" in [e for e in proj.events() if e["action"] == "error"][-1]["error"]


def test_a_local_tag_that_differs_from_origins_never_fails_an_issue_when_origin_fetches_all_tags(project):
    """remote.origin.tagOpt=--tags and a local tag moved since it was pushed (a user's re-tag): before, the
    worktree's fetch failed with "would clobber existing tag" and every new issue failed with it."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    git(proj.repo, "tag", "v1")
    git(proj.repo, "push", "-q", "origin", "v1")
    _commit(proj.repo, "retagged")
    git(proj.repo, "tag", "-f", "v1")
    git(proj.repo, "config", "remote.origin.tagOpt", "--tags")
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert proj.issue(1)["status"] == "completed"
    assert git(proj.repo, "rev-parse", "v1") == git(proj.repo, "rev-parse", "HEAD")  # the user's tag stays
