"""Fixtures: an isolated HOME and git identity, real repos with bare remotes, a home, CLI runners."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REQUIRE_SYSTEM = os.environ.get("ORCHESTRATOR_REQUIRE_SYSTEM_TESTS") == "1"


def require_tool(tool: str) -> None:
    """Skip when a system tool is missing, unless CI asked for every test to run."""
    if shutil.which(tool) is None:
        if REQUIRE_SYSTEM:
            pytest.fail(f"{tool} is required (ORCHESTRATOR_REQUIRE_SYSTEM_TESTS=1) but not on PATH")
        pytest.skip(f"{tool} not installed")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("userhome")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Test User")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")
    monkeypatch.setenv("ORCHESTRATOR_LOG_DIR", str(tmp_path_factory.mktemp("logs")))
    monkeypatch.delenv("ORCHESTRATOR_HOME", raising=False)
    monkeypatch.setenv("SHELL", "/bin/sh")


@pytest.fixture(autouse=True)
def no_stop_carried_over() -> Iterator[None]:
    """A test that stops a run in this process (lib.runner's stop flag stays set until the next run, as it must
    for the front door's read-backs) must not make the next test's commands refuse to start."""
    yield
    runner = sys.modules.get("lib.runner")
    if runner is not None:
        runner._stopping.clear()


def process_running(pid: int) -> bool:
    """Whether a process exists and is not a zombie (zombies linger where no init reaps them)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between the open and the read
        return False


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process_running(pid):
        time.sleep(0.05)
    return not process_running(pid)


def stop_when(child: subprocess.Popen, ready: Callable[[], object], signum: int = signal.SIGINT,
              seconds: float = 20.0) -> tuple[Any, Any]:
    """Once `ready()` holds, send `signum` to `child` and return its (stdout, stderr); it never outlives the test."""
    try:
        deadline = time.monotonic() + seconds
        while not ready():
            assert time.monotonic() < deadline, "timed out waiting to send the signal"
            time.sleep(0.05)
        child.send_signal(signum)
        return child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed in {cwd}: {result.stderr}")
    return result.stdout.strip()


@dataclass
class RepoHandle:
    path: Path
    remote: Path

    def git(self, *args: str) -> str:
        return git(self.path, *args)

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for rel, content in files.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def remote_ref(self, branch: str = "main") -> str:
        return git(self.remote, "rev-parse", f"refs/heads/{branch}")

    def push_from_elsewhere(self, tmp: Path, files: dict[str, str], message: str = "upstream change") -> str:
        """A colleague's commit: clone the remote elsewhere, commit, push."""
        other = tmp / f"colleague-{self.path.name}-{len(list(tmp.glob('colleague-*')))}"
        git(tmp, "clone", "-q", str(self.remote), str(other))
        handle = RepoHandle(other, self.remote)
        sha = handle.commit(files, message)
        handle.git("push", "-q", "origin", "HEAD")
        return sha


@pytest.fixture
def make_repo(tmp_path: Path):
    """Factory: a real repo at tmp_path/repos/NAME with a bare remote and one pushed commit."""

    def factory(name: str = "repo", files: dict[str, str] | None = None, push: bool = True) -> RepoHandle:
        remote = tmp_path / "remotes" / f"{name}.git"
        path = tmp_path / "repos" / name
        remote.parent.mkdir(parents=True, exist_ok=True)
        git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
        git(tmp_path, "init", "-q", "-b", "main", str(path))
        handle = RepoHandle(path, remote)
        handle.commit(files or {"README.md": f"# {name}\n"}, "initial")
        handle.git("remote", "add", "origin", str(remote))
        if push:
            handle.git("push", "-q", "-u", "origin", "main")
        return handle

    return factory


@dataclass
class Home:
    path: Path

    @property
    def repos_file(self) -> Path:
        return self.path / "config" / "repos.json"

    def write_repos(self, repos: list[dict] | dict, raw: str | None = None) -> Path:
        self.repos_file.parent.mkdir(parents=True, exist_ok=True)
        if raw is not None:
            self.repos_file.write_text(raw)
        else:
            doc = repos if isinstance(repos, dict) else {"repositories": repos}
            self.repos_file.write_text(json.dumps(doc, indent=2))
        return self.repos_file

    def add(self, *handles: RepoHandle, **fields) -> None:
        self.write_repos([{"name": h.path.name, "local": str(h.path), **fields} for h in handles])

    def state(self, name: str) -> dict:
        return json.loads((self.path / "state" / name).read_text())


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(path))
    return Home(path)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def inv():
    """Run `inv ARGS` in-process against tasks.py; returns exit code and output."""
    from invoke import Collection, Program

    import tasks

    def run(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        program = Program(namespace=Collection.from_module(tasks), name="inv", binary="inv")
        code = 0
        with redirect_stdout(out), redirect_stderr(err):
            try:
                program.run(["inv", *args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


def into_closed_pipe(args: list[str], cwd: Path, stream: str = "stdout", unbuffered: bool = True,
                     ) -> subprocess.CompletedProcess[str]:
    """Run `args` with `stream` ("stdout" or "stderr") a pipe whose reader already left (`| head -0`), the other
    captured; PYTHONUNBUFFERED as asked (buffered, a write fails only at the flush)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open(write_end, "wb") as closed_pipe:
        streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: closed_pipe}
        return subprocess.run(args, cwd=cwd, text=True, timeout=120, **streams,
                              env={**env, "PYTHONUNBUFFERED": "1"} if unbuffered else env)


def run_script(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run scripts/SCRIPT as a user would: a subprocess, from another directory."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
