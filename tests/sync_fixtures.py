"""Helpers for sync tests: a full snapshot of what a repo holds, hooks, filters, a hanging remote."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import process_running


def _env() -> dict[str, str]:
    # A test may export GIT_DIR and friends at another repo: a snapshot must read this one.
    return {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}


def _git(path: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, env=_env())
    assert result.returncode == 0, f"git {' '.join(args)} in {path}: {result.stderr}"
    return result.stdout


def full_snapshot(path: Path) -> dict:
    """Everything a sync could lose or move: all refs, HEAD, stashes, the index and the work tree's status."""
    index = Path(_git(path, "rev-parse", "--git-path", "index").strip())
    index = index if index.is_absolute() else path / index
    return {
        "refs": _git(path, "for-each-ref", "--format=%(objectname) %(refname)"),
        "head": _git(path, "symbolic-ref", "-q", "HEAD") if _is_symbolic(path) else _git(path, "rev-parse", "HEAD"),
        "stash": _git(path, "stash", "list", "--format=%H %gs"),
        "index": hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else None,
        "status": _git(path, "status", "--porcelain=v1", "--untracked-files=all", "--ignored"),
    }


def outside_remote_tracking(snapshot: dict) -> dict:
    """A snapshot minus refs/remotes/*, which a fetch may move: all that a sync must leave alone on a skip."""
    refs = "".join(line + "\n" for line in snapshot["refs"].splitlines() if " refs/remotes/" not in line)
    return {**snapshot, "refs": refs}


def _is_symbolic(path: Path) -> bool:
    return subprocess.run(["git", "-C", str(path), "symbolic-ref", "-q", "HEAD"], capture_output=True,
                          env=_env()).returncode == 0


def ref(path: Path, name: str) -> str | None:
    result = subprocess.run(["git", "-C", str(path), "rev-parse", "-q", "--verify", name], capture_output=True,
                            text=True, env=_env())
    return result.stdout.strip() or None


def add_hook(path: Path, name: str, body: str) -> None:
    hook = path / ".git" / "hooks" / name
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text("#!/bin/sh\n" + body + "\n")
    hook.chmod(0o755)


def slow_fsmonitor(repo_path: Path, tmp_path: Path, once: Path | None = None) -> Path:
    """A core.fsmonitor hook that writes its pid (to the file returned) and sleeps: only a `git status` (or an
    index refresh) runs it. With `once`, it holds only once that file exists; before, it answers at once."""
    pid_file = tmp_path / "fsmonitor.pid"
    hook = tmp_path / "fsmonitor-hook"
    hold = f"echo $$ > '{pid_file}'; exec sleep 120"
    if once is not None:
        hold = f"if [ -e '{once}' ]; then {hold}; fi\nexit 1"
    hook.write_text(f"#!/bin/sh\n{hold}\n")
    hook.chmod(0o755)
    _git(repo_path, "config", "core.fsmonitor", str(hook))
    return pid_file


def wait_for_file(path: Path, seconds: float = 20.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def kill_group_of(pid_file: Path) -> None:
    """SIGKILL the process group of the first pid written to `pid_file` (a hook's or filter's git)."""
    pid = int(wait_for_file(pid_file).split()[0])
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process_running(pid):
        time.sleep(0.05)
