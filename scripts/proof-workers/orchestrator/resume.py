"""What an issue the config says is in_progress continues from when it is resumed: its worktree, its branch, or
nothing (then it starts over from its first stage)."""
from __future__ import annotations

from pathlib import Path

from orchestrator import worktrees
from orchestrator.config import RepoConfig

WORKTREE, BRANCH, FRESH = "worktree", "branch", "fresh"


def left_behind(repo: RepoConfig, worktree: Path, branch: str, origin: bool = False) -> str:
    """WORKTREE (its directory is there), BRANCH (the branch is, here or, with `origin`, as origin's last fetched
    state: the worktree is made again on it) or FRESH. Local reads only (the dry run's guess)."""
    if worktree.is_dir():
        return WORKTREE
    if worktrees.branch_head(repo.path, branch) or origin and worktrees.ok(
            repo.path, "rev-parse", "--verify", "-q", f"refs/remotes/origin/{branch}"):
        return BRANCH
    return FRESH


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
