"""What an issue the config says is in_progress continues from when it is resumed: its worktree, its branch, or
nothing (then it starts over from its first stage)."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from lib import gitrefs
from lib.statefile import read_small
from orchestrator import worktrees
from orchestrator.config import RepoConfig

WORKTREE, BRANCH, FRESH = "worktree", "branch", "fresh"


def left_behind(repo: RepoConfig, worktree: Path, branch: str, origin: bool = False) -> str:
    """WORKTREE (its directory is there), BRANCH (the branch is, here or, with `origin`, as origin's last fetched
    state: the worktree is made again on it) or FRESH. Local reads only (the dry run's guess; status and each
    dashboard tick ask it too): the ref files first, git only when they do not settle it."""
    if worktree.is_dir():
        return WORKTREE
    names = [f"refs/heads/{branch}"] + ([f"refs/remotes/origin/{branch}"] if origin else [])
    return BRANCH if any(_has_ref(repo.path, name) for name in names) else FRESH


def _has_ref(repo: Path, name: str) -> bool:
    """Whether `git rev-parse --verify -q NAME` finds the ref: read from the files when they settle it (a plain
    loose or packed ref; or surely none: no loose file, no packed-refs line naming it), else git answers (a
    symbolic ref, a reftable store, a name git must judge, an odd or big packed-refs). GitFailed when the
    repository is gone."""
    dirs = gitrefs.git_dirs(repo)
    if dirs is not None and gitrefs.plain_refname(name):
        common = dirs[1]
        if gitrefs.read_ref(common, name):
            return True
        try:
            os.lstat(common / name)
        except FileNotFoundError:
            packed = common / "packed-refs"
            data = b"" if not os.path.lexists(packed) else read_small(packed, 1 << 20, follow_symlinks=False)
            line_end = f" {name}\n".encode()
            if data is not None and line_end not in data and not data.endswith(line_end[:-1]):
                return False
        except OSError:
            pass  # a file where a directory of the name is (git's to judge)
    return bool(worktrees.git(repo, "rev-parse", "--verify", "-q", name, check=False).strip())  # GitFailed: no repo


def unusable(repo: RepoConfig, worktree: Path, branch: str) -> str | None:
    """Why the directory at an issue's worktree path cannot be resumed in (None: it can): it is no registered
    worktree of the repository, one whose add never finished, or one on another branch (worktrees.ensure_worktree
    refuses them all, and the monitor then fails the issue)."""
    found = next((r for r in worktrees.registered(repo.path) if r.path.resolve() == worktree.resolve()), None)
    if found is None:
        return f"{worktree} is not a registered worktree of {repo.path}: move it away to resume the issue there"
    if found.locked == worktrees.UNFINISHED:
        return worktrees.unfinished(worktree)
    if found.branch != branch:
        return (f"its worktree {worktree} is on {found.branch or 'a detached HEAD'}, not {branch}: switch it back "
                f"({shlex.join(['git', '-C', str(worktree), 'switch', branch])}) or move it away")
    return None


def checked_out(repo: RepoConfig, worktree: Path, branch: str, before: str) -> str:
    """After the worktree was made: a FRESH start whose new branch holds commits beyond the default branch took
    them from the pinned remote's branch (pushed by the earlier run), so it continues them (BRANCH)."""
    if before != FRESH:
        return before
    ahead = worktrees.commits_since(worktree, f"refs/remotes/origin/{repo.default_branch}", branch)
    return BRANCH if ahead else FRESH


def say(number: int, stage: str, source: str) -> str:
    return {WORKTREE: f"resumes #{number} at {stage} in its worktree",
            BRANCH: f"resumes #{number} at {stage} on its branch (its worktree made again)",
            FRESH: f"resumes #{number} from its first stage ({stage}): neither its worktree nor its branch is left"
            }[source]
