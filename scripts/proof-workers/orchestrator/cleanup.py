"""cleanup: kill the session (exact name) and the agents, remove worktrees only when nothing can be lost.

Only the worktrees it creates (`<worktree_base>/issue-N`) are its to remove.
Any doubt keeps a worktree: uncommitted or untracked files, commits not on the
remote, a process still working in it, a path that is the main repository or
outside worktree_base. `--force` first saves the work on a backup ref
(refs/orchestrator-backup/...). Branches are never deleted.
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from lib import procs
from orchestrator import pins, pulls, tmux, worktrees
from orchestrator.act import kill_run_processes, kill_try
from orchestrator.config import RepoConfig
from orchestrator.pins import Pin
from orchestrator.run import Run
from orchestrator.state import MonitorBusy, monitor_lock


KILL_GRACE_S = 2.0


@dataclass
class Verdict:
    path: str
    branch: str | None
    outcome: str  # removed, kept, pruned, removed after backup
    reasons: list[str]
    backup_ref: str | None = None


@dataclass
class CleanupReport:
    session_killed: bool
    verdicts: list[Verdict]

    @property
    def refused(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.outcome == "kept" and v.reasons]

    def to_json(self) -> dict[str, Any]:
        return {"session_killed": self.session_killed, "worktrees": [asdict(v) for v in self.verdicts]}


def doubts(repo: RepoConfig, path: Path, pin: Pin | None = None) -> list[str]:
    """Every reason this worktree cannot be removed without losing something (empty: safe). With the repo's
    push pin, "pushed" means on the pinned url (where origin points now proves nothing: an agent can set it)."""
    if path.resolve() == repo.path.resolve():
        return ["it is the main repository"]
    if not worktrees.inside(path, repo.worktree_base):
        return [f"it is outside worktree_base {repo.worktree_base}"]
    reasons = []
    busy = procs.processes_in([path])
    if busy:
        reasons.append(f"process {', '.join(map(str, busy[:5]))} is running in it")
    try:
        if worktrees.porcelain(path).strip():
            reasons.append("uncommitted or untracked changes")
    except worktrees.GitFailed as err:
        reasons.append(f"cannot read its status: {err}")
    try:
        # --prune: a remote-tracking ref the remote no longer has (stale or forged) proves nothing is pushed.
        worktrees.fetch_origin(path, prune=True)
        unpushed = str(worktrees.unpushed(path, pin.url, pin.settings)) if pin else \
            worktrees.git(path, "rev-list", "--count", "HEAD", "--not", "--remotes=origin").strip()
        if unpushed != "0":
            reasons.append(f"{unpushed} commit(s) not on the remote")
    except worktrees.GitFailed as err:
        reasons.append(f"cannot check the remote: {err}")
    return reasons


def backup(path: Path, branch: str | None) -> str:
    """A commit of everything in the worktree (staged, unstaged, untracked) on a backup ref; returns the ref."""
    with tempfile.TemporaryDirectory() as tmp:
        index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        worktrees.git(path, "read-tree", "HEAD", env=index)
        worktrees.git(path, "add", "-A", env=index)
        tree = worktrees.git(path, "write-tree", env=index).strip()
    commit = worktrees.git(path, "commit-tree", tree, "-p", "HEAD", "-m",
                           f"orchestrator backup of {path} before cleanup --force").strip()
    name = (branch or path.name).replace("/", "-")
    ref = f"refs/orchestrator-backup/{name}/{time.strftime('%Y%m%dT%H%M%S')}"
    worktrees.git(path, "update-ref", ref, commit)
    return ref


def cleanup(run: Run, keep_worktrees: bool = False, force: bool = False) -> CleanupReport:
    verdicts: list[Verdict] = []
    # Taken first and held to the end: a running monitor makes cleanup refuse before it kills
    # anything (else the monitor restarts every agent, each restart a retry used up), and no
    # monitor (or second cleanup) starts agents in a worktree being judged and removed.
    with _monitor_stopped(run):
        for record in run.files.load_workers(run.num_workers):
            if record.issue_number is not None:
                kill_try(run, record)
        killed = tmux.kill_session(run.server, run.session)
        kill_run_processes(run)  # what any try of this run left (daemons, setsid): found by its tag
        if keep_worktrees:
            return CleanupReport(killed, verdicts)
        # Read once everything is killed: a pin file that cannot be read never leaves an agent running.
        pinned = {cfg.project: pins.load(pins.pins_file(run.state_root, cfg.project)) for cfg in run.configs}
        seen: set[Path] = set()
        for cfg in run.configs:
            for repo in cfg.repos.values():
                if repo.path in seen or not repo.path.is_dir():
                    continue
                seen.add(repo.path)
                open_prs = {b: u for c in run.configs for b, u in pulls.open_branches(run.state_root, c).items()
                            if any(r.path == repo.path for r in c.repos.values())}
                verdicts.extend(_clean_repo(repo, force, pinned[cfg.project].get(repo.name), open_prs))
    return CleanupReport(killed, verdicts)


@contextmanager
def _monitor_stopped(run: Run, seconds: float = 3.0) -> Iterator[None]:
    """The monitor dies with its session; one running elsewhere would start agents again: refuse."""
    deadline = time.monotonic() + seconds
    with ExitStack() as held:
        while True:
            try:
                held.enter_context(monitor_lock(run.locks()))
                break
            except MonitorBusy as err:
                if time.monotonic() > deadline:
                    raise MonitorBusy(f"{err}: stop it before cleanup") from None
                time.sleep(0.1)
        yield


def _clean_repo(repo: RepoConfig, force: bool, pin: Pin | None, open_prs: dict[str, str]) -> list[Verdict]:
    out = []
    listed = worktrees.registered(repo.path)
    for entry in listed[1:]:  # the first is the main worktree
        if not worktrees.created_by_us(entry.path, repo.worktree_base):
            continue  # not ours (a user's own worktree, even under worktree_base): never touched, not reported
        if entry.prunable or not entry.path.is_dir():
            worktrees.git(repo.path, "worktree", "prune")
            out.append(Verdict(str(entry.path), entry.branch, "pruned", ["its directory was gone"]))
            continue
        reasons = doubts(repo, entry.path, pin)
        if entry.branch in open_prs:  # its fix_ci / address_review stages would work there
            reasons.append(open_prs[entry.branch])
        if not reasons:
            worktrees.git(repo.path, "worktree", "remove", str(entry.path))
            out.append(Verdict(str(entry.path), entry.branch, "removed", []))
        elif force:
            ref = backup(entry.path, entry.branch)
            mine = procs.ancestors(os.getpid())  # the user's shell may sit in the worktree: never killed
            busy = [pid for pid in procs.processes_in([entry.path]) if pid not in mine]
            if busy:  # nothing keeps running in a removed directory
                procs.kill_processes([], busy, KILL_GRACE_S)
            worktrees.git(repo.path, "worktree", "remove", "--force", str(entry.path))
            out.append(Verdict(str(entry.path), entry.branch, "removed after backup", reasons, ref))
        else:
            out.append(Verdict(str(entry.path), entry.branch, "kept", reasons))
    return out


def report_lines(report: CleanupReport) -> list[str]:
    lines = ["session killed" if report.session_killed else "no session to kill"]
    for v in report.verdicts:
        why = f" ({'; '.join(v.reasons)})" if v.reasons else ""
        saved = f" -> work saved on {v.backup_ref}" if v.backup_ref else ""
        lines.append(f"{v.outcome}: {v.path} [{v.branch or 'detached'}]{why}{saved}")
    if report.refused:
        lines.append(f"{len(report.refused)} worktree(s) kept; branches are never deleted. Push or commit the work, "
                     "or use --force (saves it on a backup ref first).")
    return lines
