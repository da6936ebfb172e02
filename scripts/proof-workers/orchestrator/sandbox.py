"""The sandbox of a try: which paths bwrap makes writable for one issue's worktree, and whether bwrap runs here.

What a commit on the issue's branch writes, found by experiment (git 2.39, a linked worktree): the worktree;
the worktree's admin dir `<common>/worktrees/<name>/` (HEAD, index, logs/HEAD, ORIG_HEAD, COMMIT_EDITMSG,
their .lock files); `<common>/objects/` (new objects); the directory of the branch's ref under
`<common>/refs/heads/` and of its reflog under `<common>/logs/refs/heads/` (git writes `<ref>.lock` there
and renames it, so the directory must be writable, not the ref file alone). Nothing else: the shared config,
hooks, packed-refs and the other refs stay read-only, so the agent cannot delete a packed branch or move
the main checkout's branch (unless it shares the issue branch's directory).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from lib.errors import OrchestratorError
from lib.paths import Paths
from orchestrator import worktrees
from orchestrator.config import ProjectConfig
from orchestrator.wrapper import BWRAP_BASE

PROBE_TIMEOUT_S = 30.0


def bwrap_problem() -> str | None:
    """Why bwrap cannot run a sandbox here (None: it can), checked by running the sandbox's own base flags.

    Installed is not enough: inside some containers it cannot create namespaces or mount /proc.
    """
    argv = [*BWRAP_BASE, "true"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=PROBE_TIMEOUT_S,
                                stdin=subprocess.DEVNULL, env=worktrees.clean_env())
    except FileNotFoundError:
        return "bwrap is not installed (apt-get install bubblewrap)"
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`bwrap --ro-bind / / ... true` did not run: {err}"
    if result.returncode != 0:
        detail = " / ".join(line.strip() for line in result.stderr.splitlines() if line.strip())[-300:]
        return f"`bwrap --ro-bind / / ... true` fails here (exit {result.returncode}): {detail or 'no message'}"
    return None


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def writable_problems(cfg: ProjectConfig) -> list[str]:
    """sandbox_writable entries that would let an agent write the orchestrator's home (its state: the exit-code
    files the monitor trusts, the config). The repositories and worktrees are checked when the config loads."""
    home = Path(os.path.realpath(Paths.from_env().home))
    return [f"{cfg.path}: sandbox_writable: {str(path)!r} would make ORCHESTRATOR_HOME ({home}) writable to agents"
            for path in cfg.sandbox_writable if _overlaps(Path(os.path.realpath(path)), home)]


def _git_path(worktree: Path, option: str) -> Path:
    return Path(worktrees.git(worktree, "rev-parse", "--path-format=absolute", option).strip())


def try_sandbox(cfg: ProjectConfig, repo: Path, worktree: Path, branch: str, prompt: Path) -> dict[str, Any] | None:
    """The try spec's `sandbox` (None: no sandbox); refuses a worktree whose git dir is not its repository's."""
    if cfg.sandbox == "none":
        return None
    problems = writable_problems(cfg)
    if problems:
        raise OrchestratorError(problems[0])
    problem = bwrap_problem()  # launch checked it; a monitor started by hand, or elsewhere, has not
    if problem:
        raise OrchestratorError(f"sandbox \"bwrap\" cannot be used here: {problem}")
    common = _git_path(repo, "--git-common-dir").resolve()
    admin = _git_path(worktree, "--git-dir").resolve()
    dot_git = worktree / ".git"
    try:
        recorded = (admin / "gitdir").read_text(encoding="utf-8").strip()  # absolute, or relative to admin
        points_back = (admin / recorded).resolve() == dot_git.resolve()
    except OSError:
        points_back = False
    if _git_path(worktree, "--git-common-dir").resolve() != common or admin.parent != common / "worktrees" \
            or not points_back:
        raise OrchestratorError(f"worktree {worktree}: its git dir {admin} is not one of {repo}'s worktrees; "
                                "not starting a sandboxed agent there")
    if (common / "reftable").exists():
        raise OrchestratorError(f"{repo} keeps its refs in one reftable: a sandbox cannot let an agent update its "
                                "branch without every other ref; use sandbox \"none\" for it")
    parts = branch.split("/")[:-1]
    refs_dir = common.joinpath("refs", "heads", *parts)
    logs_dir = common.joinpath("logs", "refs", "heads", *parts)
    for directory in (refs_dir, logs_dir):
        directory.mkdir(parents=True, exist_ok=True)  # bwrap binds only what exists
    return {
        "kind": cfg.sandbox,
        "worktree": str(worktree),
        "visible": [str(common), str(prompt)],
        "state": [str(p) for p in cfg.sandbox_writable],
        "writable": [str(worktree), str(admin), str(common / "objects"), str(refs_dir), str(logs_dir)],
        "read_only": [str(dot_git), str(admin / "commondir"), str(admin / "gitdir")],
    }


def describe(cfg: ProjectConfig) -> str:
    """One line for launch's plan: what an agent of this project can write."""
    if cfg.sandbox == "none":
        return (f"sandbox ({cfg.project}): none: agents can write the main checkout, sibling worktrees, "
                "the shared .git/config, and push (see docs/proof-workers.md, Safety)")
    state = ", ".join(_home_relative(p) for p in cfg.sandbox_writable) or "nothing else"
    return (f"sandbox ({cfg.project}): bwrap: agents write their worktree, the git dir's objects and their "
            f"branch's ref directory, a private /tmp and {state}")


def _home_relative(path: Path) -> str:
    home = os.environ.get("HOME", "")
    text = str(path)
    missing = "" if path.exists() else " (missing: skipped)"
    if home and (text == home or text.startswith(home.rstrip("/") + "/")):
        text = "~" + text[len(home.rstrip("/")):]
    return text + missing
