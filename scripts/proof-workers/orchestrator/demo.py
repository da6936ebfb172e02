"""The workers demo: a repo with a bare remote, a proof-issues.json driven by the scripted demo agent (or by the
real Claude Code CLI against a stand-in model: run_claude_demo)."""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from lib.demo import GIT_ENV
from lib.errors import OrchestratorError
from lib.paths import CHECKOUT_ROOT

MARKER = ".orchestrator-workers-demo"
CLAUDE = CHECKOUT_ROOT / ".tools" / "node_modules" / ".bin" / "claude"
STAND_IN_MODEL = CHECKOUT_ROOT / "tests" / "fake_anthropic.py"
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


def wait_for_run(timeout: float) -> dict[str, Any]:
    """Wait until the run of $ORCHESTRATOR_HOME is done; its status document (as `status --json`)."""
    from orchestrator.report import status_document
    from orchestrator.run import open_run

    run = open_run()

    def load() -> dict[str, Any]:
        run.reload()
        return status_document(run)

    return wait_until_done(load, timeout)


def claude_command(api_url: str, agent_home: Path, claude: Path = CLAUDE) -> str:
    """The agent command of the Claude demo: the real CLI, its model at `api_url`, its HOME the demo's own."""
    env = {"ANTHROPIC_BASE_URL": api_url, "ANTHROPIC_API_KEY": "demo", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "CLAUDE_CODE_MAX_RETRIES": "2", "HOME": str(agent_home), "DISABLE_AUTOUPDATER": "1",
           **({"IS_SANDBOX": "1"} if os.getuid() == 0 else {})}
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" {shlex.quote(str(claude))} -p " \
        "--output-format stream-json --verbose --dangerously-skip-permissions < {{prompt_file}}"


def _stand_in_model() -> Any:
    """tests/fake_anthropic.py, loaded from its file (the tests are no package on the path)."""
    if "fake_anthropic" in sys.modules:
        return sys.modules["fake_anthropic"]
    spec = importlib.util.spec_from_file_location("fake_anthropic", STAND_IN_MODEL)
    if not STAND_IN_MODEL.is_file() or spec is None or spec.loader is None:
        raise OrchestratorError(f"the stand-in model {STAND_IN_MODEL} is missing: the Claude demo needs a checkout")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_anthropic"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["fake_anthropic"]
        raise
    return module


def run_claude_demo(target: Path, wait: float, say: Callable[[str], None] = print, claude: Path = CLAUDE) -> int:
    """The whole demo with the real CLI (create, launch, wait, status, cleanup): its model is
    tests/fake_anthropic.py's stand-in (a Bash call that commits each stage), served by this process until the
    run is done. Exit code: launch's if it failed, else 1 when an issue failed or is blocked (its worktrees kept),
    else cleanup's."""
    from orchestrator import cli

    if not os.access(claude, os.X_OK):
        raise OrchestratorError(f"the Claude Code CLI is not installed at {claude}: run .ci/run, or npm install "
                                "--prefix .tools @anthropic-ai/claude-code@<the version .ci/run pins>")
    model = _stand_in_model()
    with model.FakeAnthropic() as api:
        api.autopilot = model.demo_answer
        agent_home = target.resolve() / "agent-home"
        home = make_demo(target, claude_command(api.url, agent_home, claude), "claude")
        agent_home.mkdir()
        os.environ["ORCHESTRATOR_HOME"] = str(home)
        say(f"demo created with the real Claude Code CLI; stand-in model at {api.url}; ORCHESTRATOR_HOME={home}")
        code = cli.main(["launch"])
        if code:
            return code
        try:
            doc = wait_for_run(wait)
        finally:
            cli.main(["status"])
        say(f"run finished: {len(api.model_calls())} model calls answered")
        failed = sum(p["counts"].get("failed", 0) + p["counts"].get("blocked", 0) for p in doc["projects"])
        return cli.main(["cleanup"] + (["--keep-worktrees"] if failed else [])) or (1 if failed else 0)
