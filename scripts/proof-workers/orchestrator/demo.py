"""The workers demo: a repo with a bare remote, a proof-issues.json driven by the scripted demo agent."""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from lib.demo import GIT_ENV
from lib.errors import OrchestratorError

MARKER = ".orchestrator-workers-demo"
AGENT = Path(__file__).resolve().with_name("demo_agent.py")
ISSUES = [
    {"number": 1, "title": "Add the staking rewards calculator", "wave": 1, "priority": 1},
    {"number": 2, "title": "Parse \"validator\" configs; reject bad ones", "wave": 1, "priority": 2},
    {"number": 3, "title": "Report per-epoch rewards", "wave": 2, "priority": 1, "depends_on": [1]},
    {"number": 4, "title": "Document the payout rules — ünïcode ✓", "wave": 2, "priority": 2, "depends_on": [1, 2]},
]


def _git(cwd: Path, *args: str) -> None:
    import os

    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def make_demo(target: Path, agent_command: str = "", agent: str = "command") -> Path:
    """Create (or re-create, if this made it) the demo; returns its ORCHESTRATOR_HOME. The agent is the scripted
    demo agent unless an `agent_command` (and its `agent` kind) is given."""
    target = target.resolve()
    if target.exists():
        if not (target / MARKER).exists():
            raise OrchestratorError(f"{target} exists and was not made by this demo: choose another directory")
        shutil.rmtree(target)
    repo, remote, home = target / "repos" / "staking", target / "remotes" / "staking.git", target / "home"
    for path in (repo, remote.parent, home / "config"):
        path.mkdir(parents=True)
    (target / MARKER).write_text("made by make demo-workers\n")
    _git(target, "init", "-q", "--bare", "-b", "main", str(remote))
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# staking\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "initial")
    _git(repo, "remote", "add", "origin", str(remote))
    _git(repo, "push", "-q", "-u", "origin", "main")
    command = agent_command or shlex.join([sys.executable, str(AGENT)]) + " {{prompt_file}} {{stage}} {{issue.number}}"
    config = {
        "project": "staking-demo", "repo_path": str(repo), "worktree_base": str(target / "worktrees"),
        "branch_prefix": "demo/issue-", "default_branch": "main",
        "pipeline": ["implement", "write_tests", "review"],
        "project_context": {"language": "go", "test_command": "go test ./...", "commit_prefix": "demo"},
        "issues": ISSUES, "num_workers": 3, "cycle_interval": 0.5, "max_retries": 2, "stall_timeout": 60,
        "wall_clock_timeout": 300, "stagger_delay": 0, "tmux_session": "proof-demo", "agent_command": command,
        "agent": agent,
    }
    (home / "config" / "proof-issues.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return home


def wait_until_done(load: Callable[[], dict[str, Any]], timeout: float, interval: float = 0.5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = load()
        if doc["done"]:
            return doc
        if time.monotonic() > deadline:
            raise OrchestratorError(f"the run did not finish within {timeout:.0f}s (see `status`)")
        time.sleep(interval)
