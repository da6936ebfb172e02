"""`inv sync-all --host NAME`: sync's rules (lib/sync.py) applied to the repos on a build host over SSH.

The same checks in the same order, with the same outcomes and reasons: the
facts come from one read-only shell script per repo, the changes from
`git merge --ff-only --no-overwrite-ignore` or a compare-and-swap
`git update-ref`, each run in its own process group on the host. The
scenario tests of tests/test_sync.py run against this path too
(tests/test_hosts_sync.py), so the two cannot drift apart unnoticed.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import Any, BinaryIO, Callable, Sequence

from lib import remote, runner
from lib.batch import count_statuses, now_iso
from lib.config import Repo
from lib.hosts import Host
from lib.statefile import write_json
from lib.sync import IN_PROGRESS, NET_TIMEOUT_S, NO_PROMPT_ENV, SyncOutcome, SyncReport, _last_line, _Stop

# Read-only: prints one `key value` line per fact. $1 the repo's path, $2 the
# default branch, then the in-progress markers to look for in the git dir.
FACTS_SCRIPT = r"""cd -- "$1" 2>/dev/null || { echo "state missing"; exit 0; }
[ -e .git ] || { echo "state notrepo"; exit 0; }
echo "state repo"
branch=$2; shift 2
gd=$(git rev-parse --git-dir) || exit 4
for marker in "$@"; do [ -e "$gd/$marker" ] && echo "inprogress $marker"; done
echo "head $(git symbolic-ref -q HEAD)"
echo "local $(git rev-parse --verify -q "refs/heads/$branch")"
upstream=$(git for-each-ref --format='%(upstream)' "refs/heads/$branch")
echo "upstream $upstream"
echo "upstream_short $(git for-each-ref --format='%(upstream:short)' "refs/heads/$branch")"
echo "upstream_remote $(git for-each-ref --format='%(upstream:remotename)' "refs/heads/$branch")"
[ -n "$upstream" ] && echo "upstream_sha $(git rev-parse --verify -q "$upstream^{commit}")"
[ -n "$(git status --porcelain=v1 --untracked-files=normal)" ] && echo "dirty yes"
echo "own $(pwd -P)"
git worktree list --porcelain | while IFS= read -r line; do
  case $line in
    "worktree "*) p=${line#worktree }; echo "worktree $(cd -- "$p" 2>/dev/null && pwd -P || printf '%s' "$p")";;
    "branch "*) echo "worktree_branch ${line#branch }";;
  esac
done
own_admin=$(cd -- "$gd" && pwd -P)
common=$(cd -- "$(git rev-parse --git-common-dir)" && pwd -P)
for admin in "$common" "$common"/worktrees/*; do
  [ -d "$admin" ] || continue
  [ "$(cd -- "$admin" && pwd -P)" = "$own_admin" ] && continue
  for marker in rebase-merge/head-name rebase-apply/head-name BISECT_START; do
    [ -f "$admin/$marker" ] && printf 'admin_marker %s\t%s\t%s\n' "$admin" "$marker" "$(head -n 1 "$admin/$marker")"
  done
done
exit 0"""
ADMIN_MARKERS = {"rebase-merge/head-name": "rebased", "rebase-apply/head-name": "rebased", "BISECT_START": "bisected"}


@dataclass
class Facts:
    state: str = "missing"  # missing, notrepo, repo
    in_progress: list[str] = field(default_factory=list)
    head: str = ""  # refs/heads/NAME, or empty when detached
    local: str = ""
    upstream: str = ""
    upstream_short: str = ""
    upstream_remote: str = ""
    upstream_sha: str = ""
    dirty: bool = False
    own: str = ""
    worktrees: list[tuple[str, str]] = field(default_factory=list)  # (resolved path, branch ref)
    admin_markers: list[tuple[str, str, str]] = field(default_factory=list)  # (admin dir, marker, content)


def parse_facts(text: str) -> Facts:
    facts = Facts()
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "inprogress":
            facts.in_progress.append(value)
        elif key == "dirty":
            facts.dirty = True
        elif key == "worktree":
            facts.worktrees.append((value, ""))
        elif key == "worktree_branch" and facts.worktrees:
            facts.worktrees[-1] = (facts.worktrees[-1][0], value)
        elif key == "admin_marker":
            admin, marker, content = (value.split("\t") + ["", ""])[:3]
            facts.admin_markers.append((admin, marker, content.strip()))
        elif key in Facts.__dataclass_fields__ and key not in ("worktrees", "admin_markers"):
            setattr(facts, key, value.strip())
    return facts


def _branch_in_use_elsewhere(facts: Facts, branch: str) -> str | None:
    """Another worktree that has `branch` checked out, or is rebasing or bisecting it (as lib.sync)."""
    for path, ref in facts.worktrees:
        if ref == f"refs/heads/{branch}" and path != facts.own:
            return f"checked out in worktree {path}"
    for admin, marker, named in facts.admin_markers:
        if named in (branch, f"refs/heads/{branch}"):
            return f"being {ADMIN_MARKERS.get(marker, 'used')} in another worktree ({admin})"
    return None


class HostRepo:
    """One repo on the host: facts and git commands, each logged to the local sync log."""

    def __init__(self, connection: Any, path: str, log: BinaryIO, timeout: float | None) -> None:
        self.connection = connection
        self.path = path
        self.log = log
        self.timeout = timeout

    def facts(self, branch: str) -> Facts:
        words = ["env", "LC_ALL=C", "GIT_OPTIONAL_LOCKS=0", "/bin/sh", "-c", FACTS_SCRIPT, "facts", self.path, branch,
                 *(marker for marker, _ in IN_PROGRESS)]
        code, out, err = remote.capture(self.connection, " ".join(shlex.quote(w) for w in words))
        if code != 0:
            raise _Stop("failed", f"cannot read the repo on the host: {err.decode('utf-8', 'replace').strip()}")
        return parse_facts(out.decode("utf-8", "replace"))

    def git(self, args: list[str], cwd: str | None = None) -> remote.RemoteResult:
        command = " ".join(shlex.quote(a) for a in ["git", *args])
        self.log.write(f"$ {command}\n".encode())
        return remote.run_remote(self.connection, cwd or self.path, command, dict(NO_PROMPT_ENV), self.log,
                                 self.timeout)

    def output(self, args: list[str]) -> str:
        command = " ".join(shlex.quote(a) for a in ["git", "-C", self.path, *args])
        code, out, err = remote.capture(self.connection, command)
        if code != 0:
            raise _Stop("failed", f"git {args[0]} failed on the host: {err.decode('utf-8', 'replace').strip()}")
        return out.decode("utf-8", "replace").strip()


def sync_repo_on_host(connection: Any, host: Host, repo: Repo, path: str, log_dir: Path,
                      timeout: float | None = NET_TIMEOUT_S, clone_missing: bool = False,
                      dry_run: bool = False) -> SyncOutcome:
    """lib.sync.sync_repo for a repo on a host; never raises for the repo's sake."""
    started = monotonic()
    log_path = log_dir / f"orchestrator-sync-{repo.name}.log"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        log.write(f"# orchestrator sync {repo.name} at {now_iso()} on host {host.name} ({host.address})"
                  f"{' (dry run)' if dry_run else ''}\n".encode())
        try:
            if isinstance(connection, remote.HostUnreachable):
                raise _Stop("failed", f"host unreachable: {connection}")
            outcome = _sync(HostRepo(connection, path, log, timeout), repo, log_path, timeout, clone_missing, dry_run)
        except _Stop as stop:
            outcome = SyncOutcome(repo.name, stop.status, stop.reason, repo.default_branch, None, None, str(log_path))
        except runner.Interrupted:
            raise
        except Exception as err:  # the connection broke halfway: this repo's outcome
            log.write(f"error: {err}\n".encode())
            outcome = SyncOutcome(repo.name, "failed", f"{type(err).__name__}: {err}", repo.default_branch, None,
                                  None, str(log_path))
        log.write(f"outcome: {outcome.line()}\n".encode())
    outcome.duration_s = round(monotonic() - started, 3)
    return outcome


def _clone(host_repo: HostRepo, repo: Repo, log_path: Path, timeout: float | None, dry_run: bool) -> SyncOutcome:
    if not repo.remote or repo.remote == "unknown":
        raise _Stop("failed", f"path missing and no remote to clone from (remote: {repo.remote or 'none'})")
    if dry_run:
        raise _Stop("would clone", f"from {repo.remote}")
    parent = str(Path(host_repo.path).parent)
    code, _, err = remote.capture(host_repo.connection, f"mkdir -p -- {shlex.quote(parent)}")
    if code != 0:
        raise _Stop("failed", f"cannot create {parent} on the host: {err.decode('utf-8', 'replace').strip()}")
    result = host_repo.git(["clone", "--", repo.remote, host_repo.path], cwd=parent)
    if result.timed_out:
        raise _Stop("failed", f"clone timed out after {timeout:g}s")
    if result.exit_code != 0:
        raise _Stop("failed", f"clone failed: {_last_line(log_path)}")
    return SyncOutcome(repo.name, "cloned", f"from {repo.remote}", None, None, None, str(log_path))


def _sync(host_repo: HostRepo, repo: Repo, log_path: Path, timeout: float | None, clone_missing: bool,
          dry_run: bool) -> SyncOutcome:
    branch = repo.default_branch
    facts = host_repo.facts(branch)
    if facts.state == "missing":
        if clone_missing:
            return _clone(host_repo, repo, log_path, timeout, dry_run)
        raise _Stop("skipped", "path missing (--clone-missing clones it)")
    if facts.state != "repo":
        raise _Stop("failed", "not a git repository")
    if not dry_run:
        # Fetching only updates remote-tracking refs: safe in any state, so every repo gets it.
        result = host_repo.git(["fetch", facts.upstream_remote] if facts.local and facts.upstream_remote
                               else ["fetch", "--all"])
        if result.timed_out:
            raise _Stop("skipped", f"fetch timed out after {timeout:g}s")
        if result.exit_code != 0:
            raise _Stop("skipped", f"fetch failed: {_last_line(log_path)}")
        facts = host_repo.facts(branch)
    named = dict(IN_PROGRESS)
    if facts.in_progress:
        raise _Stop("skipped", f"{named[facts.in_progress[0]]} is in progress")
    if not facts.head:
        raise _Stop("skipped", "detached HEAD")
    if not facts.local:
        raise _Stop("skipped", f"no local branch {branch!r}")
    if not facts.upstream:
        raise _Stop("skipped", f"{branch} has no upstream")
    if not facts.upstream_sha:
        raise _Stop("skipped", f"upstream {facts.upstream_short} does not exist")
    before, target = facts.local, facts.upstream_sha
    ahead, behind = (int(n) for n in host_repo.output(["rev-list", "--left-right", "--count",
                                                       f"{before}...{target}"]).split())
    host_repo.log.write(f"{branch} {before[:12]}, {facts.upstream_short} {target[:12]}: "
                        f"ahead {ahead}, behind {behind}\n".encode())
    if behind == 0:
        note = f"ahead {ahead}, not pushed" if ahead else None
        return SyncOutcome(repo.name, "up to date", note, branch, before, before, str(log_path))
    if ahead:
        raise _Stop("skipped", f"diverged: ahead {ahead}, behind {behind}")
    checked_out = facts.head == f"refs/heads/{branch}"
    if checked_out and facts.dirty:
        raise _Stop("skipped", f"dirty: uncommitted changes on {branch}")
    if not checked_out:
        elsewhere = _branch_in_use_elsewhere(facts, branch)
        if elsewhere:
            raise _Stop("skipped", f"{branch} is {elsewhere}")
    active = facts.head.removeprefix("refs/heads/")
    how = "fast-forward" if checked_out else f"move {branch} (work tree on {active} untouched)"
    if dry_run:
        return SyncOutcome(repo.name, "would update", f"{how}: {behind} commit(s)", branch, before, target,
                           str(log_path))
    if checked_out:
        args = ["merge", "--ff-only", "--no-overwrite-ignore", target]
    else:
        args = ["update-ref", "-m", "orchestrator sync: fast-forward", f"refs/heads/{branch}", target, before]
    result = host_repo.git(args)
    if result.exit_code != 0:
        problem = "timed out" if result.timed_out else _last_line(log_path)
        raise _Stop("failed", f"fast-forward refused, nothing changed: {problem}")
    after = host_repo.output(["rev-parse", f"refs/heads/{branch}"])
    return SyncOutcome(repo.name, "updated", f"{how}: {behind} commit(s)", branch, before, after, str(log_path))


def sync_on_host(host: Host, repos: Sequence[Repo], log_dir: Path, net_jobs: int, timeout: float | None,
                 clone_missing: bool, dry_run: bool, accept_new_host_key: bool,
                 on_start: Callable[[Repo], None] | None = None,
                 on_done: Callable[[SyncOutcome], None] | None = None) -> list[SyncOutcome]:
    """Every repo under the host's workspace, `net_jobs` at a time (one SSH connection per job)."""

    def work(connection: Any) -> list[SyncOutcome]:
        if isinstance(connection, remote.HostUnreachable):
            return runner.run_each(repos, lambda r: sync_repo_on_host(connection, host, r, host.repo_dir(r.name),
                                                                       log_dir), 1, on_start, on_done)
        workspace = remote.resolve_workspace(connection, host)
        connections = remote.Connections(host, connection, accept_new_host_key)

        def one(repo: Repo) -> SyncOutcome:
            taken = connections.take()
            try:
                return sync_repo_on_host(taken, host, repo, f"{workspace.rstrip('/')}/{repo.name}", log_dir, timeout,
                                         clone_missing, dry_run)
            finally:
                connections.give(taken)

        try:
            return runner.run_each(repos, one, net_jobs, on_start, on_done)
        finally:
            connections.close()

    remote.reset_stop()
    return remote.run_on_host(host, work, accept_new_host_key)


def run_sync_on_host(paths: Any, host: Host, repos: Sequence[Repo], net_jobs: int = 4,
                     timeout: float | None = NET_TIMEOUT_S, clone_missing: bool = False, dry_run: bool = False,
                     accept_new_host_key: bool = False) -> SyncReport:
    """Sync the repos on a host and record state/sync-results.json (with the host's name)."""
    from lib.progress import Progress

    started = monotonic()
    with Progress("syncing", len(repos)) as progress:
        outcomes = sync_on_host(host, repos, paths.log_dir, net_jobs, timeout, clone_missing, dry_run,
                                accept_new_host_key, on_start=lambda repo: progress.start(repo.name),
                                on_done=lambda o: progress.finish(o.repo, o.line(), o.failing))
    if dry_run:
        return SyncReport(outcomes, monotonic() - started, None)
    counts = {"total": len(outcomes), **count_statuses(o.status for o in outcomes)}
    write_json(paths.sync_results_file, {"generated_at": now_iso(), "host": host.name, "summary": counts,
                                         "results": [o.to_json() for o in outcomes]})
    return SyncReport(outcomes, monotonic() - started, paths.sync_results_file)
