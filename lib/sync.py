"""Sync every repo safely: fetch, then fast-forward the default branch only when nothing can be lost.

Never a merge commit, never a reset, never a touched dirty tree. A repo that
cannot be fast-forwarded safely is skipped with the reason.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from time import monotonic
from typing import Any, BinaryIO, Callable, Sequence

from lib import runner
from lib.batch import command_env, count_statuses, counts_text, now_iso, tail
from lib.config import Repo, Workspace
from lib.paths import Paths
from lib.progress import Progress
from lib.statefile import write_json

NET_TIMEOUT_S = 300.0
# An unattended sync must fail fast instead of waiting for a password.
NO_PROMPT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never", "SSH_ASKPASS_REQUIRE": "never",
                 "LC_ALL": "C"}
IN_PROGRESS = (("MERGE_HEAD", "a merge"), ("rebase-merge", "a rebase"), ("rebase-apply", "a rebase or am"),
               ("CHERRY_PICK_HEAD", "a cherry-pick"), ("REVERT_HEAD", "a revert"), ("BISECT_LOG", "a bisect"))


@dataclass
class SyncOutcome:
    repo: str
    status: str  # updated, up to date, cloned, skipped, failed (with --dry-run: would update, would clone)
    reason: str | None
    branch: str | None
    before: str | None
    after: str | None
    log: str
    duration_s: float = 0.0

    @property
    def failing(self) -> bool:
        return self.status == "failed"

    def line(self) -> str:
        return f"{self.repo}: {self.status}" + (f": {self.reason}" if self.reason else "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Stop(Exception):
    """Stop syncing this repo with an outcome (skipped or failed); the repo is left as it was."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _env() -> dict[str, str]:
    return {**command_env(), **NO_PROMPT_ENV}


def _run_git(args: list[str], cwd: Path, log: BinaryIO, timeout: float | None) -> runner.ProcessResult:
    command = " ".join(shlex.quote(a) for a in ["git", *args])
    log.write(f"$ {command}\n".encode())
    return runner.run_in_group(command, cwd, log, timeout, _env())


def _last_line(path: Path) -> str:
    """Git's reason for a failure: its last error/fatal line, else the last line it printed."""
    lines = [ln.strip() for ln in tail(path, 20).splitlines() if ln.strip() and not ln.startswith("$ ")]
    errors = [ln for ln in lines if ln.startswith(("error:", "fatal:"))]
    return (errors or lines or ["no output"])[-1]


def _clone(repo: Repo, log: BinaryIO, log_path: Path, timeout: float | None, dry_run: bool) -> SyncOutcome:
    if not repo.remote or repo.remote == "unknown":
        raise _Stop("failed", f"path missing and no remote to clone from (remote: {repo.remote or 'none'})")
    if dry_run:
        raise _Stop("would clone", f"from {repo.remote}")
    repo.local.parent.mkdir(parents=True, exist_ok=True)
    result = _run_git(["clone", "--", repo.remote, str(repo.local)], repo.local.parent, log, timeout)
    if result.timed_out:
        raise _Stop("failed", f"clone timed out after {timeout:g}s")
    if result.exit_code != 0:
        raise _Stop("failed", f"clone failed: {_last_line(log_path)}")
    return SyncOutcome(repo.name, "cloned", f"from {repo.remote}", None, None, None, str(log_path))


def _in_progress(git_dir: Path) -> str | None:
    for marker, what in IN_PROGRESS:
        if (git_dir / marker).exists():
            return what
    return None


def _branch_in_use_elsewhere(repo_obj: Any, branch: str) -> str | None:
    """Another worktree that has `branch` checked out, or is rebasing or bisecting it."""
    own = os.path.realpath(repo_obj.working_tree_dir)
    path = None
    for line in repo_obj.git.worktree("list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            path = line[len("worktree "):]
        elif line == f"branch refs/heads/{branch}" and path and os.path.realpath(path) != own:
            return f"checked out in worktree {path}"
    # A worktree mid-rebase shows as detached; its admin dir still names the branch.
    common = Path(repo_obj.common_dir)
    own_admin = Path(repo_obj.git_dir).resolve()
    for admin in [common, *sorted((common / "worktrees").glob("*"))]:
        if admin.resolve() == own_admin:
            continue
        for marker, what in (("rebase-merge/head-name", "rebased"), ("rebase-apply/head-name", "rebased"),
                             ("BISECT_START", "bisected")):
            try:
                named = (admin / marker).read_text().strip()
            except OSError:
                continue
            if named in (branch, f"refs/heads/{branch}"):
                return f"being {what} in another worktree ({admin})"
    return None


def sync_repo(repo: Repo, log_dir: Path, timeout: float | None = NET_TIMEOUT_S, clone_missing: bool = False,
              dry_run: bool = False) -> SyncOutcome:
    """Fetch and fast-forward one repo; returns its outcome, never raises for the repo's sake."""
    started = monotonic()
    log_path = log_dir / f"orchestrator-sync-{repo.name}.log"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        log.write(f"# orchestrator sync {repo.name} at {now_iso()}{' (dry run)' if dry_run else ''}\n".encode())
        try:
            outcome = _sync(repo, log, log_path, timeout, clone_missing, dry_run)
        except _Stop as stop:
            outcome = SyncOutcome(repo.name, stop.status, stop.reason, repo.default_branch, None, None, str(log_path))
        except Exception as err:  # GitPython raises many kinds; the run goes on with the next repo
            first_line = (str(err).strip().splitlines() or [repr(err)])[0]
            log.write(f"error: {err}\n".encode())
            outcome = SyncOutcome(repo.name, "failed", f"{type(err).__name__}: {first_line}",
                                  repo.default_branch, None, None, str(log_path))
        log.write(f"outcome: {outcome.line()}\n".encode())
    outcome.duration_s = round(monotonic() - started, 3)
    return outcome


def _sync(repo: Repo, log: BinaryIO, log_path: Path, timeout: float | None, clone_missing: bool,
          dry_run: bool) -> SyncOutcome:
    import git

    path = repo.local
    if not path.exists():
        if clone_missing:
            return _clone(repo, log, log_path, timeout, dry_run)
        raise _Stop("skipped", "path missing (--clone-missing clones it)")
    if not (path / ".git").exists():
        raise _Stop("failed", "not a git repository")
    branch = repo.default_branch
    with git.Repo(path) as r:
        local = r.heads[branch] if branch in r.heads else None
        upstream = local.tracking_branch() if local is not None else None
        if not dry_run:
            # Fetching only updates remote-tracking refs: safe in any state, so every repo gets it.
            args = ["fetch", upstream.remote_name] if upstream is not None else ["fetch", "--all"]
            result = _run_git(args, path, log, timeout)
            # A failed fetch changed nothing; issue #3 lists it among the skips (not failures).
            if result.timed_out:
                raise _Stop("skipped", f"fetch timed out after {timeout:g}s")
            if result.exit_code != 0:
                raise _Stop("skipped", f"fetch failed: {_last_line(log_path)}")
        what = _in_progress(Path(r.git_dir))
        if what:
            raise _Stop("skipped", f"{what} is in progress")
        if r.head.is_detached:
            raise _Stop("skipped", "detached HEAD")
        if local is None:
            raise _Stop("skipped", f"no local branch {branch!r}")
        if upstream is None:
            raise _Stop("skipped", f"{branch} has no upstream")
        if not upstream.is_valid():
            raise _Stop("skipped", f"upstream {upstream.name} does not exist")
        before, target = local.commit.hexsha, upstream.commit.hexsha
        ahead, behind = (int(n) for n in r.git.rev_list("--left-right", "--count", f"{before}...{target}").split())
        log.write(f"{branch} {before[:12]}, {upstream.name} {target[:12]}: ahead {ahead}, behind {behind}\n".encode())
        if behind == 0:
            note = f"ahead {ahead}, not pushed" if ahead else None
            return SyncOutcome(repo.name, "up to date", note, branch, before, before, str(log_path))
        if ahead:
            raise _Stop("skipped", f"diverged: ahead {ahead}, behind {behind}")
        checked_out = r.active_branch.name == branch
        if checked_out and r.is_dirty(untracked_files=True):
            raise _Stop("skipped", f"dirty: uncommitted changes on {branch}")
        if not checked_out:
            elsewhere = _branch_in_use_elsewhere(r, branch)
            if elsewhere:
                raise _Stop("skipped", f"{branch} is {elsewhere}")
        how = "fast-forward" if checked_out else f"move {branch} (work tree on {r.active_branch.name} untouched)"
        if dry_run:
            return SyncOutcome(repo.name, "would update", f"{how}: {behind} commit(s)", branch, before, target,
                               str(log_path))
        if checked_out:
            # --no-overwrite-ignore: an ignored local file (a .env, say) that upstream now
            # tracks makes the merge stop instead of being overwritten.
            args = ["merge", "--ff-only", "--no-overwrite-ignore", target]
        else:
            # A compare-and-swap: the ref moves only if it still is `before` (and `target`
            # descends from it: ahead is 0). The work tree is not involved.
            args = ["update-ref", "-m", "orchestrator sync: fast-forward", f"refs/heads/{branch}", target, before]
        result = _run_git(args, path, log, timeout)
        if result.exit_code != 0:
            problem = "timed out" if result.timed_out else _last_line(log_path)
            raise _Stop("failed", f"fast-forward refused, nothing changed: {problem}")
        after = r.git.rev_parse(f"refs/heads/{branch}")
        return SyncOutcome(repo.name, "updated", f"{how}: {behind} commit(s)", branch, before, after, str(log_path))


def sync_all(repos: Sequence[Repo], log_dir: Path, net_jobs: int = 4, timeout: float | None = NET_TIMEOUT_S,
             clone_missing: bool = False, dry_run: bool = False,
             on_start: Callable[[Repo], None] | None = None,
             on_done: Callable[[SyncOutcome], None] | None = None) -> list[SyncOutcome]:
    return runner.run_each(repos, lambda repo: sync_repo(repo, log_dir, timeout, clone_missing, dry_run),
                           net_jobs, on_start, on_done)


def save(state_file: Path, outcomes: Sequence[SyncOutcome]) -> None:
    counts = {"total": len(outcomes), **count_statuses(o.status for o in outcomes)}
    write_json(state_file, {"generated_at": now_iso(), "summary": counts, "results": [o.to_json() for o in outcomes]})


@dataclass
class SyncReport:
    outcomes: list[SyncOutcome]
    duration_s: float
    state_file: Path | None

    @property
    def failing(self) -> list[SyncOutcome]:
        return [o for o in self.outcomes if o.failing]

    def summary_line(self) -> str:
        parts = counts_text(count_statuses(o.status for o in self.outcomes))
        unfetched = sum(1 for o in self.outcomes if (o.reason or "").startswith("fetch "))
        if unfetched:
            parts += f" ({unfetched} could not be fetched: see their logs)"
        return f"synced {len(self.outcomes)} repos in {self.duration_s:.1f}s: {parts}"


def run_sync(paths: Paths, workspace: Workspace, tags: list[str] | None = None, net_jobs: int = 4,
             timeout: float | None = NET_TIMEOUT_S, clone_missing: bool = False,
             dry_run: bool = False) -> SyncReport:
    """Sync the selected repos, record state/sync-results.json, then refresh the scan state."""
    from lib.scan import scan_and_save

    started = monotonic()
    repos = workspace.select(tags=tags)
    with Progress("syncing", len(repos)) as progress:
        try:
            outcomes = sync_all(repos, paths.log_dir, net_jobs, timeout, clone_missing, dry_run,
                                on_start=lambda repo: progress.start(repo.name),
                                on_done=lambda o: progress.finish(o.repo, o.line(), o.failing))
        except runner.RunInterrupted as stop:  # keep what the repos that finished did
            if not dry_run and stop.results:
                save(paths.sync_results_file, stop.results)
            raise
    if dry_run:
        return SyncReport(outcomes, monotonic() - started, None)
    save(paths.sync_results_file, outcomes)
    scan_and_save(paths, tags=None)
    return SyncReport(outcomes, monotonic() - started, paths.sync_results_file)
