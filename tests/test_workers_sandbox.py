"""sandbox: "bwrap": an agent commits on its own branch and can write nothing else that matters.

Real bubblewrap (installed by .ci/run), real tmux on a private socket, real git with a bare remote. The
agent below tries every way out it can think of and records what happened; the test then checks the
disk, the refs and the remote from outside, for repos under /tmp (which the sandbox replaces with a
private one) and outside it (visible, read-only).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest
from workers_fixtures import project, tmux_socket  # noqa: F401

from conftest import git, require_tool
from orchestrator import worktrees
from orchestrator.monitor import monitor
from orchestrator.run import open_run

ATTACKER = r'''
import json, os, socket, subprocess, sys
from pathlib import Path

results_file, targets, number = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), sys.argv[3]
results = {}

def git(*args):
    done = subprocess.run(["git", "-c", "user.name=Agent", "-c", "user.email=agent@example.com", *args],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr.strip()[-300:])

def attempt(name, action):
    try:
        action()
        results[name] = "done"
    except Exception as err:
        results[name] = f"refused: {err}"

def append(path, text="evil\n"):
    with open(path, "a") as handle:
        handle.write(text)

def connect(path):
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(path)

def read_key():
    Path(targets["ssh_key"]).read_text()

def kill_monitor():
    os.kill(targets["monitor_pid"], 0)

if number == "1":
    attempt("main checkout: new file", lambda: Path(targets["main"], "evil.txt").write_text("evil"))
    attempt("main checkout: tracked file", lambda: append(Path(targets["main"], "README.md")))
    attempt("sibling worktree", lambda: Path(targets["sibling"], "evil.txt").write_text("evil"))
    attempt("sibling's HEAD", lambda: append(targets["sibling_head"]))
    attempt(".git/config by git", lambda: git("config", "remote.origin.pushurl", "/elsewhere"))
    attempt(".git/config by hand", lambda: append(targets["config"], "[evil]\n"))
    attempt("a hook", lambda: Path(targets["hooks"], "post-commit").write_text("#!/bin/sh\n"))
    attempt("own .git file", lambda: Path(".git").write_text("gitdir: /elsewhere\n"))
    attempt("own commondir", lambda: append(targets["commondir"]))
    attempt("main branch ref", lambda: git("update-ref", "refs/heads/main", "HEAD"))
    attempt("push to origin", lambda: git("push", "origin", "HEAD:refs/heads/evil"))
    attempt("push to a file:// url", lambda: git("push", "file://" + targets["remote"], "HEAD:refs/heads/evil"))
    attempt("the remote by hand", lambda: append(Path(targets["remote"], "config"), "[evil]\n"))
    attempt("ssh agent socket", lambda: connect(targets["agent_socket"]))
    attempt("ssh key", read_key)
    attempt("the monitor process", kill_monitor)
    attempt("the tmux server's socket", lambda: connect(targets["tmux_socket"]))
    attempt("remount / writable", lambda: subprocess.run(["mount", "-o", "remount,rw", "/"], check=True,
                                                         capture_output=True))
    results["env"] = {k: os.environ.get(k) for k in ("SSH_AUTH_SOCK", "GIT_ASKPASS", "TMUX")}
Path(f"work-{number}.txt").write_text("done\n")
git("add", "-A")
git("commit", "-q", "-m", f"implement #{number}")
results_file.write_text(json.dumps(results, indent=1))
'''

# Each must fail inside. The main checkout is checked from outside only: under /tmp its path lies in the
# sandbox's private /tmp, where a write succeeds and lands nowhere that counts.
ESCAPES = ["sibling worktree", "sibling's HEAD",
           ".git/config by git", ".git/config by hand", "a hook", "own .git file", "own commondir",
           "main branch ref", "push to origin", "push to a file:// url", "the remote by hand",
           "ssh agent socket", "ssh key", "the monitor process", "the tmux server's socket",
           "remount / writable"]


@pytest.fixture(params=["under /tmp", "outside /tmp"])
def tmp_path(request, tmp_path_factory):
    """Both layouts: repos under /tmp are hidden behind the sandbox's own /tmp, elsewhere they stay visible."""
    if request.param == "under /tmp":
        return tmp_path_factory.mktemp("sandbox")
    base = Path(tempfile.mkdtemp(prefix="orch-sandbox-test-", dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    return base


def test_a_sandboxed_agent_commits_on_its_branch_and_writes_nothing_else(project, tmp_path, tmux_socket,
                                                                         monkeypatch):
    require_tool("bwrap")
    state = tmp_path / "agent-state"  # the agent's own state dir: writable, holds its script and results
    state.mkdir()
    (state / "attacker.py").write_text(ATTACKER)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # outside /tmp too in the second layout
    keys = tmp_path / "keys"  # ~/.ssh is a link to them, as dotfile managers make it
    keys.mkdir()
    (tmp_path / "user").mkdir()
    ssh = tmp_path / "user" / ".ssh"
    ssh.symlink_to(keys)
    (ssh / "id_test").write_text("PRIVATE KEY\n")
    agent_socket = socket.socket(socket.AF_UNIX)  # an ssh agent's socket, as SSH_AUTH_SOCK names it
    agent_socket.bind(str(tmp_path / "agent.sock"))
    agent_socket.listen(1)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    monkeypatch.setenv("GIT_ASKPASS", "/bin/echo")
    (tmp_path / "tmux").mkdir()  # the tmux server's socket outside /tmp too in the second layout
    monkeypatch.setenv("TMUX_TMPDIR", str(tmp_path / "tmux"))
    # The interpreter itself, not a venv's link to it: a checkout (and its .venv) under /tmp is hidden by the
    # sandbox's private /tmp (preflight says so for a real agent_command).
    command = " ".join([shlex.quote(os.path.realpath(sys.executable)), shlex.quote(str(state / "attacker.py")),
                        shlex.quote(str(state)) + "/results-{{issue.number}}.json",
                        shlex.quote(str(state / "targets.json")), "{{issue.number}}"])
    proj = project([{"number": 1, "title": "escape"}, {"number": 2, "title": "sibling"}],
                   pipeline=["implement"], agent_command=command, sandbox="bwrap", sandbox_writable=[str(state)])
    git_dir = proj.repo / ".git"
    sibling = worktrees.ensure_worktree(proj.repo, "main", tmp_path / "worktrees", tmp_path / "worktrees" / "issue-2",
                                        "feature/issue-2")
    (state / "targets.json").write_text(json.dumps({
        "main": str(proj.repo), "sibling": str(sibling), "sibling_head": str(git_dir / "worktrees" / "issue-2" / "HEAD"),
        "config": str(git_dir / "config"), "hooks": str(git_dir / "hooks"),
        "commondir": str(git_dir / "worktrees" / "issue-1" / "commondir"), "remote": str(proj.remote),
        "agent_socket": str(tmp_path / "agent.sock"), "ssh_key": str(ssh / "id_test"), "monitor_pid": os.getpid(),
        "tmux_socket": f"{os.environ.get('TMUX_TMPDIR', '/tmp')}/tmux-{os.getuid()}/{tmux_socket.socket_name}"}))
    config_before = (git_dir / "config").read_bytes()
    main_before = git(proj.repo, "rev-parse", "refs/heads/main")

    try:
        failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None)
    finally:
        agent_socket.close()

    log = (proj.state / "logs" / "worker-1.log").read_text(errors="replace")
    assert failed == 0, log
    results = json.loads((state / "results-1.json").read_text())
    escaped = {name: results[name] for name in ESCAPES if not results[name].startswith("refused")}
    assert escaped == {}, results
    assert results["env"] == {"SSH_AUTH_SOCK": None, "GIT_ASKPASS": None, "TMUX": None}
    # From outside: everything is as it was, except each issue's own branch, pushed by the monitor.
    assert (git_dir / "config").read_bytes() == config_before
    assert git(proj.repo, "rev-parse", "refs/heads/main") == main_before
    assert git(proj.repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert (proj.repo / "README.md").read_text() == "# app\n"
    assert not (sibling / "evil.txt").exists() and not (git_dir / "hooks" / "post-commit").exists()
    assert (tmp_path / "worktrees" / "issue-1" / ".git").read_text().startswith("gitdir: ")
    assert git(proj.remote, "for-each-ref", "--format=%(refname)").splitlines() == [
        "refs/heads/feature/issue-1", "refs/heads/feature/issue-2", "refs/heads/main"]
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]
    assert proj.remote_commits("feature/issue-2") == ["implement #2"]
    assert {i["number"]: i["status"] for i in proj.doc()["issues"]} == {1: "completed", 2: "completed"}


def _config(tmp_path: Path, **extra):
    from orchestrator.config import parse_config

    doc = {"project": "p", "repo_path": str(tmp_path / "repo"), "branch_prefix": "feature/issue-",
           "pipeline": ["implement", "review"], "issues": [{"number": 7, "title": "t"}], **extra}
    return parse_config(tmp_path / "p-issues.json", doc)


def test_every_stage_prompt_states_what_the_agent_may_and_may_not_do(tmp_path_factory):
    from orchestrator import prompts

    cfg = _config(tmp_path_factory.mktemp("prompts"))
    text = prompts.render(cfg, cfg.issue(7), 1, "/w/issue-7", "feature/issue-7")
    for rule in ("Commit on the branch feature/issue-7 only",
                 "Never push: the orchestrator pushes your commits itself.",
                 "Never change git config",
                 "Never write outside your worktree /w/issue-7"):
        assert rule in text
    assert "uncommitted work is lost" not in text
    assert ("Work left uncommitted is not lost (it stays in the worktree, and cleanup keeps it), but it does "
            "not count: a stage ends only with at least one new commit on this branch.") in text


def test_a_custom_stage_prompt_keeps_the_rules(tmp_path_factory):
    from orchestrator import prompts

    cfg = _config(tmp_path_factory.mktemp("prompts"), prompts={"implement": "Do {{issue.title}}.", "review": "Review.\n{{rules}}\nBye."})
    custom = prompts.render(cfg, cfg.issue(7), 0, "/w/issue-7", "feature/issue-7")
    assert custom.startswith("Do t.") and custom.count("Never push") == 1
    placed = prompts.render(cfg, cfg.issue(7), 1, "/w/issue-7", "feature/issue-7")
    assert placed.startswith("Review.\n") and placed.endswith("Bye.") and placed.count("Never push") == 1


def test_a_worktree_whose_git_file_points_elsewhere_gets_no_sandboxed_agent(project, tmp_path):
    from lib.errors import OrchestratorError
    from orchestrator.config import load_config
    from orchestrator.sandbox import try_sandbox

    proj = project([{"number": 1, "title": "one"}], sandbox="bwrap")
    cfg = load_config(proj.config)
    base = tmp_path / "worktrees"
    mine = worktrees.ensure_worktree(proj.repo, "main", base, base / "issue-1", "feature/issue-1")
    other = worktrees.ensure_worktree(proj.repo, "main", base, base / "issue-2", "feature/issue-2")
    assert try_sandbox(cfg, proj.repo, mine, "feature/issue-1", tmp_path / "p.md")["writable"][0] == str(mine)

    (mine / ".git").write_text((other / ".git").read_text())  # an earlier, unsandboxed try did this

    with pytest.raises(OrchestratorError, match="is not one of .*'s worktrees; not starting a sandboxed agent"):
        try_sandbox(cfg, proj.repo, mine, "feature/issue-1", tmp_path / "p.md")


def test_a_monitor_started_by_hand_still_refuses_a_writable_orchestrator_home(project, tmp_path):
    """launch's preflight refuses it too; a monitor started without launch must not start such a try."""
    from dataclasses import replace

    from lib.errors import OrchestratorError
    from orchestrator.config import load_config
    from orchestrator.sandbox import try_sandbox

    proj = project([{"number": 1, "title": "one"}], sandbox="bwrap")
    cfg = replace(load_config(proj.config), sandbox_writable=(proj.home,))
    base = tmp_path / "worktrees"
    mine = worktrees.ensure_worktree(proj.repo, "main", base, base / "issue-1", "feature/issue-1")
    with pytest.raises(OrchestratorError, match="would make ORCHESTRATOR_HOME .* writable to agents"):
        try_sandbox(cfg, proj.repo, mine, "feature/issue-1", tmp_path / "p.md")


def test_a_monitor_where_bwrap_cannot_run_starts_no_unsandboxed_agent_and_says_why(project, tmp_path, monkeypatch):
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], sandbox="bwrap")
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "bwrap").write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    (broken / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{broken}{os.pathsep}{os.environ['PATH']}")

    failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None)

    assert failed == 1 and proj.issue(1)["status"] == "failed"
    errors = [e for e in proj.events() if e["action"] == "error"]
    assert errors and all("sandbox \"bwrap\" cannot be used here" in e["error"] and
                          "No permissions to creating new namespace" in e["error"] for e in errors)
    assert not (proj.script.parent / "runs").exists(), "an agent ran although its sandbox could not be made"


def test_the_proof_workers_page_lists_everything_the_sandbox_hides_drops_and_sets():
    from conftest import ROOT
    from orchestrator import wrapper

    page = " ".join((ROOT / "docs" / "proof-workers.md").read_text().split())
    section = page[page.index("*What an agent can reach.*"):]
    for name in wrapper.SANDBOX_DROPPED_ENV:
        assert f"`{name}`" in section, name
    for name in wrapper.SANDBOX_HIDDEN_HOME:
        assert f"`~/{name}`" in section, name
    for key, value in wrapper.SANDBOX_GIT_CONFIG:
        assert f"`{key}={value}`" in section, key
