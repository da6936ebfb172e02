"""launch's preflight: the agent can start, and bwrap can run where asked, checked before any worktree is made.

A broken agent or sandbox is one `error: FILE: FIELD: ...` line and exit 2, not N failed tries.
Fake `claude`/`bwrap` programs on PATH stand in for the real ones where the real ones cannot be had.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from workers_fixtures import monitor_env, project, tmux_socket  # noqa: F401

from conftest import ROOT, require_tool

PACKAGE = ROOT / "scripts" / "proof-workers"


def fake_program(bin_dir: Path, name: str, script: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return path


def launch(*args: str, path_dirs: list[Path] = (), path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = monitor_env()
    env["PATH"] = os.pathsep.join([*map(str, path_dirs), path if path is not None else env.get("PATH", "")])
    return subprocess.run([sys.executable, "-m", "orchestrator", "launch", *args], cwd=PACKAGE, env=env,
                          capture_output=True, text=True, timeout=120)


def nothing_made(proj) -> bool:
    return not (proj.root / "worktrees").exists() and not proj.state.exists() and \
        all(i.get("status", "pending") == "pending" for i in proj.doc()["issues"])


AGENT_CASES = [
    ("claude answers --version", "claude -p < {{prompt_file}}", {"claude": "echo '2.0.1 (Claude Code)'"},
     0, "agent (demo): claude 2.0.1 (Claude Code) ("),
    ("codex answers --version", "codex exec - < {{prompt_file}}", {"codex": "echo codex-cli 0.9"},
     0, "agent (demo): codex codex-cli 0.9 ("),
    ("claude is not installed", "claude -p < {{prompt_file}}", {},
     2, "agent_command: 'claude' not found on PATH"),
    ("gemini fails --version", "gemini -p \"$(cat {{prompt_file}})\"", {"gemini": "echo broken >&2; exit 3"},
     2, "agent_command: `gemini --version` failed (exit 3: broken): is gemini installed and working?"),
    ("a plain command not on PATH", "my-agent --prompt {{prompt_file}}", {},
     2, "agent_command: 'my-agent' not found on PATH"),
    ("a plain command on PATH", "FOO=1 exec my-agent --prompt {{prompt_file}}", {"my-agent": "exit 9"},
     0, "/my-agent (found)"),
    ("a program in the worktree cannot be checked before the try", "{{worktree}}/agent.sh {{prompt_file}}", {},
     0, "agent (demo): ({{...}}/agent.sh: not checked)"),
    ("an absolute path that is no program", "/nonexistent/agent {{prompt_file}}", {},
     2, "agent_command: '/nonexistent/agent' is not an executable file"),
    ("an unclosed quote", "agent 'oops {{prompt_file}}", {},
     2, "agent_command: cannot be split into words (No closing quotation)"),
]


@pytest.mark.parametrize("name,command,programs,code,expected", AGENT_CASES, ids=[c[0] for c in AGENT_CASES])
def test_the_agent_is_checked_before_anything_is_made(project, tmp_path, name, command, programs, code, expected):
    proj = project([{"number": 1, "title": "one"}], agent_command=command)
    bin_dir = tmp_path / "bin"
    for program, script in programs.items():
        fake_program(bin_dir, program, script)

    result = launch("--dry-run", path_dirs=[bin_dir])

    assert result.returncode == code, result.stderr
    if code == 0:
        assert expected in result.stdout, result.stdout
    else:
        assert result.stderr.splitlines() == [f"error: {proj.config}: {expected}"] or \
            (len(result.stderr.splitlines()) == 1 and expected in result.stderr), result.stderr
        assert str(proj.config) in result.stderr
    assert nothing_made(proj)


def test_a_version_check_that_hangs_is_cut_off_with_its_children(tmp_path, monkeypatch):
    from conftest import wait_gone
    from orchestrator import launch as launch_module

    pid_file = tmp_path / "child.pid"
    fake = fake_program(tmp_path / "bin", "claude", f"sleep 600 & echo $! > {pid_file}; exec sleep 600")
    monkeypatch.setattr(launch_module, "VERSION_TIMEOUT_S", 0.5)

    answer, why = launch_module._answers_version(str(fake), dict(os.environ))

    assert answer is None and why == "no answer within 0.5s"
    assert wait_gone(int(pid_file.read_text())), "the version check's children outlived it"


@pytest.mark.skipif(os.geteuid() != 0, reason="claude refuses the flag only for root")
def test_root_with_claude_skip_permissions_is_one_line_with_the_fix_and_is_sandbox_passes(project, tmp_path):
    proj = project([{"number": 1, "title": "one"}],
                   agent_command="claude -p --dangerously-skip-permissions < {{prompt_file}}")
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "claude", "echo 2.0.1")

    refused = launch(path_dirs=[bin_dir])  # a real launch: refused before any worktree or session

    assert refused.returncode == 2
    assert refused.stderr == (f"error: {proj.config}: agent_command: running as root, claude refuses "
                              "--dangerously-skip-permissions: start agent_command with IS_SANDBOX=1 "
                              "(IS_SANDBOX=1 claude -p ...) or run the workers as another user\n")
    assert nothing_made(proj)
    doc = proj.doc()
    doc["agent_command"] = "IS_SANDBOX=1 " + doc["agent_command"]
    proj.config.write_text(json.dumps(doc))
    assert launch("--dry-run", path_dirs=[bin_dir]).returncode == 0


def test_dry_run_says_whether_bwrap_runs_here_and_a_bwrap_sandbox_where_it_cannot_is_a_config_error(project, tmp_path):
    require_tool("bwrap")
    proj = project([{"number": 1, "title": "one"}])
    ok = launch("--dry-run")
    assert ok.returncode == 0 and "(dry run) bwrap: runs here" in ok.stdout.splitlines()
    assert "(dry run) sandbox (demo): none: agents can write the main checkout" in ok.stdout
    as_json = json.loads(launch("--dry-run", "--json").stdout)
    assert as_json["preflight"]["bwrap_runs"] is True and as_json["preflight"]["agents"][0]["sandbox"] == "none"

    broken = tmp_path / "broken"  # installed, but cannot make namespaces (as inside some containers)
    fake_program(broken, "bwrap", "echo 'bwrap: No permissions to creating new namespace' >&2; exit 1")
    said = launch("--dry-run", path_dirs=[broken])
    assert said.returncode == 0
    assert ("(dry run) bwrap: cannot run here: `bwrap --ro-bind / / ... true` fails here (exit 1): "
            "bwrap: No permissions to creating new namespace") in said.stdout.splitlines()

    doc = proj.doc()
    doc["sandbox"] = "bwrap"
    proj.config.write_text(json.dumps(doc))
    for args in (["--dry-run"], []):
        refused = launch(*args, path_dirs=[broken])
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
        assert refused.stderr.startswith(f"error: {proj.config}: sandbox: \"bwrap\" cannot be used here: ")
        assert "No permissions to creating new namespace" in refused.stderr
        assert nothing_made(proj)

    only_git = tmp_path / "only-git"  # bwrap not installed at all
    only_git.mkdir()
    (only_git / "git").symlink_to(shutil.which("git"))
    missing = launch("--dry-run", path=str(only_git))
    assert missing.returncode == 2
    assert "sandbox: \"bwrap\" cannot be used here: bwrap is not installed" in missing.stderr

    sandboxed = launch("--dry-run")
    assert sandboxed.returncode == 0 and "(dry run) sandbox (demo): bwrap: agents write their worktree, the git dir's objects" in sandboxed.stdout


BAD_SANDBOX = [
    ("unknown sandbox", {"sandbox": "docker"}, "sandbox: unknown sandbox 'docker' (known: none, bwrap)"),
    ("writable not a list", {"sandbox_writable": "~/.claude"}, 'sandbox_writable: must be a list, got "~/.claude"'),
    ("writable entry not a path", {"sandbox_writable": [3]}, "sandbox_writable[0]: must be a path, got 3"),
    ("relative writable entry", {"sandbox_writable": ["cache"]},
     "sandbox_writable[0]: must be an absolute path or start with ~/, got 'cache'"),
]


@pytest.mark.parametrize("name,change,message", BAD_SANDBOX, ids=[b[0] for b in BAD_SANDBOX])
def test_bad_sandbox_keys_are_one_line_and_exit_2(project, name, change, message):
    proj = project([{"number": 1, "title": "one"}], **change)
    result = launch("--dry-run")
    assert result.returncode == 2 and result.stderr == f"error: {proj.config}: {message}\n"


def test_a_writable_path_that_would_open_the_repository_or_the_worktrees_is_refused(project):
    proj = project([{"number": 1, "title": "one"}])
    for entry, what in ((str(proj.repo.parent), "repo default"), (str(proj.repo / ".git"), "repo default"),
                        (str(proj.root / "worktrees"), "repo default's worktree_base")):
        doc = proj.doc()
        doc["sandbox_writable"] = [entry]
        proj.config.write_text(json.dumps(doc))
        result = launch("--dry-run")
        assert result.returncode == 2, result.stderr
        assert f"sandbox_writable[0]: {entry!r} would make {what} (" in result.stderr


def test_a_writable_path_that_would_open_the_orchestrators_own_state_is_refused(project):
    """The monitor trusts each try's exit-code file under ORCHESTRATOR_HOME: no agent may write there."""
    require_tool("bwrap")
    proj = project([{"number": 1, "title": "one"}], sandbox="bwrap")
    doc = proj.doc()
    doc["sandbox_writable"] = [str(proj.home / "state")]
    proj.config.write_text(json.dumps(doc))

    result = launch("--dry-run")

    assert result.returncode == 2
    assert result.stderr == (f"error: {proj.config}: sandbox_writable: {str(proj.home / 'state')!r} would make "
                             f"ORCHESTRATOR_HOME ({proj.home}) writable to agents\n")


def test_the_default_writable_paths_follow_the_agent_kind(tmp_path, monkeypatch):
    from orchestrator.config import load_config

    monkeypatch.setenv("HOME", str(tmp_path))
    base = {"project": "p", "repo_path": str(tmp_path / "repo"), "branch_prefix": "issue-", "issues": []}
    for command, expected in (("claude -p < {{prompt_file}}", [".claude", ".claude.json", ".local/state/claude"]),
                              ("IS_SANDBOX=1 /opt/bin/codex exec", [".codex"]), ("gemini -y", [".gemini"]),
                              ("my-agent {{prompt_file}}", [])):
        path = tmp_path / "p-issues.json"
        path.write_text(json.dumps({**base, "agent_command": command}))
        assert load_config(path).sandbox_writable == tuple(tmp_path / e for e in expected), command


def test_a_sandboxed_agent_under_tmp_is_one_line_before_anything_is_made(project, tmp_path):
    """Before: an agent (or the virtualenv it runs from) under /tmp was hidden by the sandbox's private /tmp,
    and every try failed with `not found` (exit 127) until retries ran out."""
    require_tool("bwrap")
    agent = fake_program(Path("/tmp") / f"orch-preflight-{os.getpid()}", "my-agent", "exit 0")
    try:
        proj = project([{"number": 1, "title": "one"}], agent_command=f"{agent} {{{{prompt_file}}}}",
                       sandbox="bwrap")
        result = launch("--dry-run")
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"agent_command: {agent} is under /tmp, which the sandbox replaces with a private /tmp" \
            in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert nothing_made(proj)
    finally:
        shutil.rmtree(agent.parent, ignore_errors=True)
