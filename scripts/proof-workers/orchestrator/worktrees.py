"""Agent worktrees: create and reconcile `<worktree_base>/issue-N` on `<branch_prefix>N`, read progress, push.

Our own git calls run with hooks and fsmonitor off (an agent can write the
shared .git/config) and without inherited GIT_DIR-like variables. They go
through subprocess rather than GitPython: GitPython merges its environment into
os.environ and cannot unset an inherited GIT_DIR.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lib.errors import OrchestratorError
from lib.gitstatus import REPO_LOCAL_GIT_VARS

SAFE_GIT = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "color.ui=false")
# Variables that would point our git (or an agent's) at another repository, index or config:
# lib.gitstatus's list (one list, so the monitor and the scan never drift apart), plus two that
# change where git looks for the repository at all.
REPO_ENV = (*REPO_LOCAL_GIT_VARS, "GIT_CEILING_DIRECTORIES", "GIT_DISCOVERY_ACROSS_FILESYSTEM")
GIT_TIMEOUT_S = 120.0


class GitFailed(OrchestratorError):
    """A git command failed (exit 1 at the front door: a repo problem, not bad usage)."""

    exit_code = 1


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in REPO_ENV and not k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))}
    # GIT_OPTIONAL_LOCKS=0: our `git status` must not take the worktree's index.lock to refresh the
    # index, or the agent's own `git add`/`git commit` at that moment fails ("index.lock exists").
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"})
    env.update(extra or {})
    return env


def git(cwd: Path | str, *args: str, check: bool = True, timeout: float = GIT_TIMEOUT_S,
        env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(["git", *SAFE_GIT, *args], cwd=cwd, capture_output=True, text=True,
                                env=clean_env(env), timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise GitFailed(f"git {' '.join(args)} in {cwd}: timed out after {timeout:.0f}s") from None
    except (FileNotFoundError, NotADirectoryError):
        raise GitFailed(f"git {' '.join(args)}: directory {cwd} does not exist") from None
    if check and result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip() and not line.startswith("hint:")]
        detail = " / ".join(lines)[-400:] or "failed"
        raise GitFailed(f"git {' '.join(args)} in {cwd}: {detail}")
    return result.stdout if check or result.returncode == 0 else ""


def ok(cwd: Path | str, *args: str) -> bool:
    try:
        return subprocess.run(["git", *SAFE_GIT, *args], cwd=cwd, capture_output=True, env=clean_env(),
                              timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass(frozen=True)
class Registered:
    path: Path
    branch: str | None  # None: detached
    head: str | None
    prunable: bool


def registered(repo: Path) -> list[Registered]:
    """`git worktree list --porcelain` of the main repository (the main worktree first)."""
    out: list[Registered] = []
    for block in git(repo, "worktree", "list", "--porcelain", "-z").split("\0\0"):
        fields = [f for f in block.split("\0") if f]
        if not fields:
            continue
        info = {f.split(" ", 1)[0]: (f.split(" ", 1) + [""])[1] for f in fields}
        branch = info.get("branch", "").removeprefix("refs/heads/") or None
        out.append(Registered(Path(info["worktree"]), branch, info.get("HEAD"), "prunable" in info))
    return out


def inside(path: Path, base: Path) -> bool:
    try:
        path.resolve().relative_to(base.resolve())
        return path.resolve() != base.resolve()
    except ValueError:
        return False


def created_by_us(path: Path, base: Path) -> bool:
    """`<base>/issue-N`, the only shape of worktree the orchestrator creates (see ProjectConfig.worktree_for)."""
    return re.fullmatch(r"issue-\d+", path.name) is not None and path.resolve().parent == base.resolve() \
        and inside(path, base)


def ensure_worktree(repo: Path, default_branch: str, base_dir: Path, path: Path, branch: str) -> Path:
    """The issue's worktree on its branch, created from origin/<default> when new; reused when it exists.

    Reconciles with what is there: a registered worktree whose directory is gone
    is pruned; a local branch (or one only on the remote) is checked out as it is.
    """
    if not inside(path, base_dir):
        raise GitFailed(f"worktree {path} is not inside worktree_base {base_dir}")
    if path.resolve() == repo.resolve():
        raise GitFailed(f"worktree {path} is the main repository")
    existing = {r.path.resolve(): r for r in registered(repo)}
    found = existing.get(path.resolve())
    if found and path.is_dir():
        if found.branch != branch:
            raise GitFailed(f"worktree {path} is on {found.branch or 'a detached HEAD'}, expected {branch}")
        return path
    if found:
        git(repo, "worktree", "prune")
    if path.exists():
        raise GitFailed(f"{path} exists but is not a registered worktree of {repo}; move it away")
    git(repo, "fetch", "-q", "origin")
    base_dir.mkdir(parents=True, exist_ok=True)
    if ok(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}"):
        git(repo, "worktree", "add", "-q", str(path), branch)
    elif ok(repo, "rev-parse", "--verify", "-q", f"refs/remotes/origin/{branch}"):
        git(repo, "worktree", "add", "-q", "--no-track", "-b", branch, str(path), f"origin/{branch}")
    else:
        git(repo, "worktree", "add", "-q", "--no-track", "-b", branch, str(path), f"origin/{default_branch}")
    return path


def branch_head(worktree: Path, branch: str) -> str | None:
    out = git(worktree, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False).strip()
    return out or None


def commits_since(worktree: Path, base: str, branch: str) -> int:
    out = git(worktree, "rev-list", "--count", f"{base}..refs/heads/{branch}", check=False).strip()
    return int(out) if out.isdigit() else 0


def porcelain(worktree: Path) -> str:
    """Uncommitted and untracked changes (empty: clean)."""
    return git(worktree, "status", "--porcelain", "--untracked-files=all")


def check_push_url(worktree: Path, expected: str | None) -> None:
    """Refuse when origin now pushes elsewhere than when the issue was assigned (None: nothing recorded).

    An agent can rewrite the shared .git/config: work pushed to its remote must never count as pushed.
    """
    if expected is not None and (now := push_url(worktree)) != expected:
        raise GitFailed(f"origin's push url changed since the issue was assigned ({expected} -> {now}); "
                        "not pushing: put it back to resume")


def push(worktree: Path, branch: str) -> None:
    """Push the branch to origin (never forced); raises GitFailed with git's reason."""
    git(worktree, "push", "-q", "origin", f"refs/heads/{branch}:refs/heads/{branch}")


def push_url(repo: Path) -> str:
    """Where a push to origin really goes (url, pushurl and insteadOf rewrites applied)."""
    return git(repo, "remote", "get-url", "--push", "origin").strip()


def remote_head(repo: Path, branch: str) -> str | None:
    """The branch's commit where pushes go (the push url: a fetch url pointed elsewhere cannot vouch for it)."""
    out = git(repo, "ls-remote", push_url(repo), f"refs/heads/{branch}", check=False).split()
    return out[0] if out else None


def continuation_facts(worktree: Path, base_branch: str, branch: str) -> tuple[str, str]:
    """Commits so far and the diff stat against the base branch, for a restart's prompt."""
    log = git(worktree, "log", "--oneline", "-n", "20", f"origin/{base_branch}..refs/heads/{branch}", check=False)
    stat = git(worktree, "diff", "--stat", f"origin/{base_branch}", check=False)
    return log.strip(), stat.strip()
