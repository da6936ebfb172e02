"""Proof-worker fixtures: a tmux server on a private socket, a fake agent, a project with a bare remote."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import ROOT, git, require_tool

sys.path.insert(0, str(ROOT / "scripts" / "proof-workers"))

# For a "hang" try a test ends itself (kill, pause): no stall or wall-clock limit may end it first on a busy
# machine (the project fixture's defaults are 10 s and 60 s).
HANG_ON = {"stall_timeout": 600, "wall_clock_timeout": 600}

FAKE_AGENT = r'''
"""A fake coding agent: reads its prompt, then behaves as the test's script says for this issue and try."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

script_file, number, stage, prompt_file = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
prompt = Path(prompt_file).read_text(encoding="utf-8")
script = json.loads(Path(script_file).read_text())
runs = Path(script_file).parent / "runs"
runs.mkdir(exist_ok=True)
count_file = runs / f"{number}.count"
attempt = int(count_file.read_text()) if count_file.exists() else 0
count_file.write_text(str(attempt + 1))
(runs / f"{number}-{attempt}.prompt").write_text(prompt, encoding="utf-8")
plan = script.get(number, [])
behaviour = plan[attempt] if attempt < len(plan) else "ok"
print(f"fake agent: issue {number} stage {stage} try {attempt}: {behaviour}", flush=True)

def git(*args):
    subprocess.run(["git", "-c", "user.name=Fake Agent", "-c", "user.email=agent@example.com", *args],
                   check=True, capture_output=True)

if behaviour == "ok":
    Path(f"work-{number}.txt").open("a").write(f"{stage}\n")
    git("add", "-A")
    git("commit", "-q", "-m", f"{stage} #{number}")
    sys.exit(0)
if behaviour == "crash":
    print("Traceback: the agent crashed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
if behaviour == "fail":
    print("error: could not finish", flush=True)
    sys.exit(7)
if behaviour == "nocommit":
    sys.exit(0)
if behaviour == "dirty":
    Path(f"work-{number}.txt").open("a").write(f"{stage} (uncommitted)\n")
    sys.exit(0)
if behaviour == "vanish":
    pid = os.getppid()  # find the wrapper among our ancestors and kill it: no exit code is ever written
    while b"wrapper.py" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(pid, signal.SIGKILL)
    sys.exit(0)
if behaviour == "slow":
    time.sleep(0.8)
    Path(f"work-{number}.txt").open("a").write(f"{stage}\n")
    git("add", "-A")
    git("commit", "-q", "-m", f"{stage} #{number}")
    sys.exit(0)
if behaviour == "selfdelete":
    import shutil
    shutil.rmtree(os.getcwd())
    sys.exit(1)
if behaviour == "hang":
    time.sleep(3600)
'''


def retry_until(check: Callable[[], Any], seconds: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds}s")
        time.sleep(interval)


@pytest.fixture
def tmux_socket(monkeypatch: pytest.MonkeyPatch):
    """A tmux server of our own (never the user's): ORCHESTRATOR_TMUX_SOCKET names it; killed afterwards."""
    require_tool("tmux")
    import libtmux

    name = f"orch-test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("ORCHESTRATOR_TMUX_SOCKET", name)
    server = libtmux.Server(socket_name=name)
    yield server
    if server.is_alive():
        server.kill()
    # tmux leaves its socket file behind when killed: do not litter the user's tmux directory.
    socket_file = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / name
    socket_file.unlink(missing_ok=True)


@dataclass
class Project:
    root: Path
    repo: Path
    remote: Path
    config: Path
    script: Path
    home: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        return json.loads(self.config.read_text())

    def issue(self, number: int) -> dict[str, Any]:
        return next(i for i in self.doc()["issues"] if i["number"] == number)

    def remote_commits(self, branch: str) -> list[str]:
        return git(self.remote, "log", "--format=%s", f"main..refs/heads/{branch}").splitlines()

    @property
    def state(self) -> Path:
        return self.home / "state" / self.doc()["project"]

    def events(self) -> list[dict[str, Any]]:
        path = self.state / "orchestrator-log.jsonl"
        return [json.loads(l)["event"] for l in path.read_text().splitlines()] if path.exists() else []

    def prompts(self, number: int) -> list[str]:
        runs = self.script.parent / "runs"
        return [p.read_text() for p in sorted(runs.glob(f"{number}-*.prompt"),
                                              key=lambda p: int(p.stem.split("-")[1]))]


@pytest.fixture
def project(tmp_path: Path, make_repo, home, tmux_socket) -> Callable[..., Project]:
    """Factory: a repo with a bare remote, a proof-issues.json whose agent is the fake agent."""

    def factory(issues: list[dict[str, Any]], script: dict[str, list[str]] | None = None,
                **settings: Any) -> Project:
        handle = make_repo("app")
        agents = tmp_path / "agent"
        agents.mkdir()
        fake = agents / "fake_agent.py"
        fake.write_text(FAKE_AGENT)
        script_file = agents / "script.json"
        script_file.write_text(json.dumps({str(k): v for k, v in (script or {}).items()}))
        # The interpreter itself (the fake agent is standard library only), not a venv's link to it: a checkout
        # under /tmp is hidden from a sandboxed agent by the sandbox's private /tmp.
        command = " ".join([shlex.quote(os.path.realpath(sys.executable)), shlex.quote(str(fake)),
                            shlex.quote(str(script_file)),
                            "{{issue.number}}", "{{stage}}", "{{prompt_file}}"])
        doc = {
            "project": "demo", "repo_path": str(handle.path), "worktree_base": str(tmp_path / "worktrees"),
            "branch_prefix": "feature/issue-", "default_branch": "main",
            "pipeline": ["implement", "write_tests", "review"],
            "project_context": {"language": "python", "commit_prefix": "demo"},
            "issues": issues, "num_workers": 2, "cycle_interval": 0.2, "max_retries": 2, "stall_timeout": 10,
            "wall_clock_timeout": 60, "stagger_delay": 0, "tmux_session": "proof-test",
            "agent_command": command, "custom_key": {"kept": True},
        }
        doc.update(settings)
        config = home.path / "config" / "proof-issues.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(doc, indent=2))
        return Project(tmp_path, handle.path, handle.remote, config, script_file, home.path)

    return factory


def monitor_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env.pop("PYTHONPATH", None)
    return env


def orchestrator_cli(*args: str, env: dict[str, str] | None = None,
                     timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python3 -m orchestrator ARGS` as a user runs it, from the package directory, with the test's env."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT / "scripts" / "proof-workers",
                          env=monitor_env(env), capture_output=True, text=True, timeout=timeout)


def status_document() -> dict[str, Any]:
    """`status --json`, which must succeed."""
    result = orchestrator_cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_try_given_a_follow_up(project: Any) -> tuple[Any, Any]:
    """Issue #1 in progress on worker 1, its try 1 given the follow-up f1, and that try's spec on disk: (the run,
    the worker's record)."""
    from orchestrator.run import open_run
    from orchestrator.state import WorkerRecord

    project([{"number": 1, "title": "one", "status": "in_progress", "assigned_worker": 1}], pipeline=["implement"],
            num_workers=1)
    run = open_run()
    (run.state_root / "demo").mkdir(parents=True, exist_ok=True)
    (run.state_root / "demo" / "followups.json").write_text(json.dumps({"issues": {"1": [
        {"id": "f1", "text": "mind the changelog", "at": 1.0, "given_in": "worker-1-try-1"}]}}))
    spec = run.files.try_spec(1, 1)
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text("{}\n")
    return run, WorkerRecord(1, status="running", project="demo", issue_number=1, stage="implement", try_id=1,
                             launched=True)
