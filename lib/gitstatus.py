"""Repo status for many repos at once: one porcelain-v2 `git status` each, and the HEAD commit read, not logged.

Over 500 lines: a repo's status read as git reads it (operations, locks, stashes), and its scan over many repos.

Standard library only, so `python3 scripts/scan_all_repos.py` runs before `make setup`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import warnings
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from time import perf_counter
from typing import Any, Callable, Mapping, Sequence

from lib.config import Repo
from lib.errors import OrchestratorError
from lib.gitobjects import read_commit
from lib.gitrefs import files_refs, locate
from lib.gitpool import GitPool, GitResult, Keeper, forking, reaped_within, start_keeper
from lib.paths import real_paths
from lib.procs import processes_in
from lib.signals import STOP_SIGNALS
from lib.statefile import loads, read_regular, read_small

# No credential or editor prompt may ever block a scan; C locale keeps git's
# messages parseable; optional locks off so a scan never blocks a user's git.
GIT_ENV_OVERRIDES = {"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
LOG_FORMAT = "%H%x00%s%x00%an%x00%cI"
# When the commit cannot be read directly (lib.gitobjects): the same fields, on the same
# terms (replace refs not applied, UTF-8 whatever i18n.logOutputEncoding says).
LOG_ARGS = ("--no-replace-objects", "-c", "i18n.logOutputEncoding=UTF-8",
            "log", "-1", "--no-show-signature", f"--format={LOG_FORMAT}")


# Repo-local variables (`git rev-parse --local-env-vars`, git 2.39). Inherited from a
# git hook or an exported GIT_DIR, they point every git we start at another repo.
REPO_LOCAL_GIT_VARS = (
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE", "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE",
    "GIT_INDEX_FILE", "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE", "GIT_PREFIX",
    "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE", "GIT_COMMON_DIR",
    # Not listed by git, but set for a server's hooks: they change which refs (a namespace
    # hides the remote's branches, so a pruning fetch deletes every tracking ref) and
    # which objects a git sees.
    "GIT_NAMESPACE", "GIT_QUARANTINE_PATH",
)


# GIT_CONFIG_COUNT's numbered pairs: without the count they are inert, but a command that sets a count of
# its own for its own pairs would also take inherited ones it never meant.
REPO_LOCAL_GIT_PREFIXES = ("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_")


def without_repo_local_git_vars(env: Mapping[str, str]) -> dict[str, str]:
    """`env` minus the variables that would redirect git (or a build's git) away from the repo it runs in."""
    return {k: v for k, v in env.items() if k not in REPO_LOCAL_GIT_VARS and not k.startswith(REPO_LOCAL_GIT_PREFIXES)}


def git_env() -> dict[str, str]:
    return {**without_repo_local_git_vars(os.environ), **GIT_ENV_OVERRIDES}


def confined_to(path: Path, env: Mapping[str, str], real: str | None = None) -> dict[str, str]:
    """`env` for git run in `path` only: git never walks up from it to an enclosing repo.

    A `.git` that is no repository (an empty directory, say) would otherwise make git
    use the repo around `path`, and report or move that one. `real`: `path`'s realpath, when known.
    """
    return {**env, "GIT_CEILING_DIRECTORIES": ceiling_for(real or os.path.realpath(path))}


def ceiling_for(real_path: str) -> str:
    """GIT_CEILING_DIRECTORIES for a git started in `real_path` (a realpath): git looks in it and no higher.

    The variable is colon-separated with no escape, so a parent with a `:` would
    confine nothing; git resolves each entry's symlinks from the directory `-C` took
    it to, and /proc/self/cwd/.. is that directory's parent, whatever its name.
    """
    parent = os.path.dirname(real_path)
    return "/proc/self/cwd/.." if ":" in parent else parent


def default_jobs() -> int:
    # Gits in flight at once. Their start-up is the main cost and it is CPU work;
    # four per core keep the cores busy while the one thread starts the next ones
    # (2, 4 and 6 per core measured within a few percent: bench/README.md).
    return min(32, 4 * (os.cpu_count() or 2))


# Explicit so a repo's config cannot change the counts: status.showUntrackedFiles
# (`no` hid untracked files; `all` counts each file of an untracked directory),
# status.renames / diff.renames (a staged rename counted as two entries).
# `normal` is git's default and cheaper than `all`: an untracked directory is one entry.
STATUS_ARGS = ("status", "--porcelain=v2", "--branch", "-z", "--untracked-files=normal", "--renames")
# Files in a (per-worktree) git dir that mean an operation is under way, in git's
# own order of precedence (wt_status_get_state): the first present wins.
OPERATION_MARKERS = (
    ("rebase-merge", "rebase"),
    ("rebase-apply", "rebase"),  # or `am`: see operation_in
    ("MERGE_HEAD", "merge"),
    ("CHERRY_PICK_HEAD", "cherry-pick"),
    ("REVERT_HEAD", "revert"),
    ("sequencer", "cherry-pick"),  # a stopped multi-commit pick or revert: see operation_in
    ("BISECT_LOG", "bisect"),
)


@dataclass
class LastCommit:
    sha: str
    subject: str
    author: str
    date: str


@dataclass
class Porcelain:
    head: str | None = None
    branch: str | None = None
    upstream: str | None = None
    ahead: int | None = None
    behind: int | None = None
    staged: int = 0
    modified: int = 0
    untracked: int = 0
    conflicted: int = 0
    dirty: int = 0


@dataclass
class RepoStatus:
    name: str
    path: str
    exists: bool
    clean: bool
    language: str
    branch: str | None = None
    detached: bool = False
    head: str | None = None
    upstream: str | None = None
    ahead: int | None = None
    behind: int | None = None
    staged: int | None = None
    modified: int | None = None
    untracked: int | None = None
    conflicted: int | None = None
    dirty: int | None = None
    last_commit: LastCommit | None = None
    operation: str | None = None
    index_lock: str | None = None
    stashes: int | None = None  # entries of `git stash list`, from the stash reflog; None when in doubt
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        document = dict(self.__dict__)  # the fields in declaration order; asdict's deep copy cost more than the scan's parsing
        if self.last_commit is not None:
            document["last_commit"] = dict(self.last_commit.__dict__)
        return document


@dataclass
class ScanReport:
    generated_at: str
    duration_s: float
    repos: list[RepoStatus]

    def to_json(self) -> dict[str, Any]:
        return {"generated_at": self.generated_at, "repos": [r.to_json() for r in self.repos]}

    @property
    def errors(self) -> list[RepoStatus]:
        return [r for r in self.repos if r.error]

    def summary_line(self) -> str:
        clean = sum(1 for r in self.repos if r.clean)
        dirty = sum(1 for r in self.repos if not r.error and r.dirty)
        parts = [f"{clean} clean", f"{dirty} dirty"]
        behind = sum(1 for r in self.repos if r.behind)
        if behind:
            parts.append(f"{behind} behind")
        if self.errors:
            parts.append(f"{len(self.errors)} error{'s' if len(self.errors) != 1 else ''}")
        return f"scanned {len(self.repos)} repos in {self.duration_s:.2f}s: {', '.join(parts)}"


def state_text(generated_at: str, rows: Sequence[dict[str, Any]]) -> str:
    """state/repo-status.json's text: one repo per line, readable and diffable.

    Not `json.dumps(indent=2)`: any indent switches json to its pure-Python
    encoder, which took longer than the rest of a warm scan's own Python work.
    """
    repos = ",\n".join(f"    {json.dumps(row)}" for row in rows)
    body = f"[\n{repos}\n  ]" if rows else "[]"
    return f'{{\n  "generated_at": {json.dumps(generated_at)},\n  "repos": {body}\n}}\n'


def parse_porcelain_v2(data: bytes) -> Porcelain:
    """Parse `git status --porcelain=v2 --branch -z` output."""
    status = Porcelain()
    records = data.split(b"\0")
    i = 0
    while i < len(records):
        record = records[i]
        i += 1
        if not record:
            continue
        kind = record[:1]
        if kind == b"#":
            key, _, value = record[2:].decode("utf-8", "replace").partition(" ")
            if key == "branch.oid":
                status.head = None if value == "(initial)" else value
            elif key == "branch.head":
                status.branch = None if value == "(detached)" else value
            elif key == "branch.upstream":
                status.upstream = value
            elif key == "branch.ab":
                ahead, behind = value.split()
                status.ahead, status.behind = int(ahead), -int(behind)
            continue
        if kind in (b"1", b"2"):
            index_change, worktree_change = record[2:3], record[3:4]
            status.staged += index_change != b"."
            status.modified += worktree_change != b"."
            if kind == b"2":
                i += 1  # a rename's original path is the next NUL-separated field
        elif kind == b"u":
            status.conflicted += 1
        elif kind == b"?":
            status.untracked += 1
        else:
            continue  # "!" ignored entries are not shown by default
        status.dirty += 1
    return status


def _git_error(result: GitResult) -> str:
    """A failed git's first line on stderr; a git killed by a signal says so (its stderr may be anyone's noise)."""
    if result.returncode < 0:
        try:
            return f"git killed by {signal.Signals(-result.returncode).name}"
        except ValueError:
            return f"git killed by signal {-result.returncode}"
    lines = [ln.strip() for ln in result.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[0] if lines else "git failed"


def operation_in(git_dir: Path, entries: set[str] | None = None) -> str | None:
    """The operation under way in a work tree's own git dir (`entries`: its listing, if already read)."""
    if entries is None:
        try:
            entries = set(os.listdir(git_dir))
        except OSError:
            return None
    for marker, operation in OPERATION_MARKERS:
        if marker not in entries:
            continue
        if marker == "rebase-apply" and (git_dir / marker / "applying").exists():
            return "am"
        if marker == "sequencer":
            if not (git_dir / marker / "todo").exists():
                continue  # left behind after the last pick: nothing under way
            try:
                with open(git_dir / marker / "todo", encoding="utf-8", errors="replace") as todo:
                    first = todo.readline().split(" ", 1)[0]
            except OSError:
                first = ""
            return "revert" if first in ("revert", "r") else "cherry-pick"
        return operation
    return None


MAX_STASH_LOG = 16 * 1024 * 1024


def stash_count(common: Path) -> int | None:
    """How many entries `git stash list` shows, without starting git: the lines of the stash reflog.

    The stash lives in the common dir (a linked worktree sees its main repo's).
    No reflog and no refs/stash: 0. Anything odd (a refs/stash without its
    reflog, a reflog that is no regular file or is huge, a read error): None.
    """
    log = common / "logs" / "refs" / "stash"
    data = read_small(log, MAX_STASH_LOG, follow_symlinks=False)
    if data is None:  # missing (then refs/stash says whether that is odd), or odd
        return None if os.path.lexists(log) or os.path.lexists(common / "refs" / "stash") else 0
    return sum(1 for line in data.split(b"\n") if line.strip())


def _git_running_in(*dirs: Path) -> bool:
    """Whether a live git process has its working directory in one of `dirs` (read from /proc)."""
    try:
        return bool(processes_in(dirs, name_prefix="git"))
    except OSError:
        return True  # cannot tell: do not call the lock stale


def operation_and_lock(worktree: Path, git_dir: Path | None) -> tuple[str | None, str | None]:
    """(operation in progress, index.lock state) from the git dir's entries: a few stats, no process."""
    if git_dir is None:
        return None, None
    try:
        entries = set(os.listdir(git_dir))
    except OSError:
        return None, None
    lock = None
    if "index.lock" in entries:
        lock = "held" if _git_running_in(worktree, git_dir) else "stale"
    return operation_in(git_dir, entries), lock


def _unscannable(repo: Repo) -> RepoStatus:
    """The repo's row, with `error` set when git must not even start there (answered from a stat)."""
    path = repo.local
    status = RepoStatus(name=repo.name, path=str(path), exists=True, clean=False, language=repo.language)
    try:  # the usual case in one stat: `.git` there means the path exists and is a directory
        os.stat(os.path.join(status.path, ".git"))
        return status
    except OSError:
        pass
    status.exists = path.exists()
    if not status.exists:
        status.error = "path does not exist"
    elif not path.is_dir():
        status.error = "path is not a directory"
    # A plain directory inside some other checkout would report that checkout's
    # status; a repo's own top level always has a .git entry (dir or file).
    elif not (path / ".git").exists():
        status.error = "not a git repository (no .git)"
    return status


class _RepoScan:
    """One repo through the pool: `git status`, then the last commit (recorded, read, or `git log -1`)."""

    def __init__(self, status: RepoStatus, path: Path, pool: GitPool, env: dict[str, str],
                 known: Mapping[str, LastCommit], finish: Callable[[RepoStatus], None],
                 status_args: tuple[str, ...] = STATUS_ARGS) -> None:
        self.status, self.path, self.pool, self.env, self.known, self.finish = status, path, pool, env, known, finish
        pool.submit(str(path), self.env, status_args, self.on_status)

    def on_status(self, result: GitResult) -> None:
        if fill_from_status(self.status, self.path, result, self.known):
            return self.finish(self.status)
        self.pool.submit(str(self.path), self.env, LOG_ARGS, self.on_log, first=True)

    def on_log(self, result: GitResult) -> None:
        status = self.status
        if result.returncode != 0:
            status.error = _git_error(result)
            status.clean = False
            return self.finish(status)
        status.last_commit = last_commit_of(result.stdout)
        self.finish(status)


def fill_from_status(status: RepoStatus, path: Path, result: GitResult, known: Mapping[str, LastCommit],
                     dirs: tuple[Path, Path] | None = None) -> bool:
    """Fill a repo's row from its `git <STATUS_ARGS>` result; False when its last commit still needs `git log -1`.

    `dirs`: (git dir, common dir) as `gitrefs.locate` gave them for this repo, when the caller has them (sync).
    """
    if result.returncode != 0:
        status.error = _git_error(result)
        return True
    porcelain = parse_porcelain_v2(result.stdout)
    status.branch = porcelain.branch
    status.detached = porcelain.branch is None
    status.head = porcelain.head
    status.upstream = porcelain.upstream
    status.ahead, status.behind = porcelain.ahead, porcelain.behind
    status.staged, status.modified = porcelain.staged, porcelain.modified
    status.untracked, status.conflicted = porcelain.untracked, porcelain.conflicted
    status.dirty = porcelain.dirty
    # The git dirs as git finds them (lib.gitrefs, the one reader of `.git` and `commondir`); in doubt
    # the operation, the lock and the stashes are unknown and the commit is git's to read.
    git_dir, common_dir = dirs or locate(path) or (None, None)
    status.operation, status.index_lock = operation_and_lock(path, git_dir)
    status.stashes = stash_count(common_dir) if common_dir is not None and files_refs(common_dir) else None
    if porcelain.head is None:
        status.error = "no commits yet"
        return True
    status.clean = status.dirty == 0
    # A commit never changes: the one recorded for this sha is what `git log -1` would print.
    recorded = known.get(porcelain.head)
    if recorded is not None:
        status.last_commit = LastCommit(recorded.sha, recorded.subject, recorded.author, recorded.date)
        return True
    # Else read it from the object store (no process); git only when the reader is in any doubt.
    commit = read_commit(common_dir, porcelain.head) if common_dir is not None else None
    if commit is not None:
        status.last_commit = LastCommit(porcelain.head, *commit)
        return True
    return False


def last_commit_of(log_output: bytes) -> LastCommit | None:
    """The fields of `git log -1 --format=LOG_FORMAT`, the date in one form whatever git's version.

    git 2.45 and later print a UTC `%cI` as `Z`; older ones (and lib.gitobjects) as `+00:00`.
    """
    fields = log_output.decode("utf-8", "replace").rstrip("\n").split("\0")
    if len(fields) != 4:
        return None
    sha, subject, author, date = fields
    return LastCommit(sha, subject, author, date[:-1] + "+00:00" if date.endswith("Z") else date)


def known_commits(document: Any) -> dict[str, LastCommit]:
    """sha -> last commit from a previous scan's document; anything malformed is left out, never an error."""
    found: dict[str, LastCommit] = {}
    entries = document.get("repos") if isinstance(document, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        commit = entry.get("last_commit") if isinstance(entry, dict) else None
        if not isinstance(commit, dict) or set(commit) != {"sha", "subject", "author", "date"}:
            continue
        if not all(isinstance(v, str) for v in commit.values()):
            continue
        if commit["sha"] == entry.get("head") and _is_sha(commit["sha"]):
            found[commit["sha"]] = LastCommit(**commit)
    return found


def _is_sha(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def read_state(state_file: Path) -> Any:
    """A previous scan's document, or None when missing, unreadable or not JSON (never an error)."""
    try:
        data = read_regular(state_file)  # a FIFO or a device would hang or never end the read
        return None if data is None else loads(data)
    except (OrchestratorError, ValueError):
        return None


def read_known_commits(state_file: Path) -> dict[str, LastCommit]:
    """The last commits recorded in a state file; missing, unreadable or foreign means none (a cold scan)."""
    return known_commits(read_state(state_file))


def find_git() -> str:
    git = shutil.which("git")
    if git is None:
        raise OrchestratorError("git not found on PATH; install git first")
    return git


# Repos per process before another process starts gits too: a fork is cheap, but not free.
MIN_SHARE = 32
# One git of the scan may take this long (sync's network timeout), then it is killed and its repo is an error
# row: a hook or a filter that never returns must not hang the scan. Generous on purpose: a slow but healthy
# git (a big or cold repo, an fsmonitor hook on a loaded machine) is read, never called an error.
GIT_TIMEOUT_S = 300.0
# A helper whose rows stop coming is killed, its unsent repos rows saying so: a repo's two gits (status, log)
# at their limit, and time to spare for a busy machine.
HELPER_SLACK_S = 15.0


def scan_processes(repos: int, jobs: int) -> int:
    """How many processes start the scan's gits: one per core, when there is work enough.

    One thread cannot start gits fast enough to keep two cores busy: each start
    waits for the child's exec, which waits for a core that running gits hold
    (bench/README.md). A forked helper per extra core starts its share in parallel.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, jobs, repos // MIN_SHARE))


def scan(
    repos: Sequence[Repo],
    jobs: int = 0,
    on_result: Callable[[RepoStatus], None] | None = None,
    known: Mapping[str, LastCommit] | None = None,
    git: str | None = None,
    env: dict[str, str] | None = None,
    processes: int = 0,
    git_timeout: float = GIT_TIMEOUT_S,
    helper_silence: float | None = None,
    status_args: tuple[str, ...] = STATUS_ARGS,
) -> ScanReport:
    """Status of every repo, concurrently, in config order; one bad repo never stops the scan.

    `known` (sha -> last commit, from the previous scan) makes it a warm scan:
    the same document, with `git log -1` run only for repos whose HEAD moved.
    `processes` (default: `scan_processes`) splits the repos between this process
    and forked helpers, which send their rows back one line of JSON each; a row a
    helper never sent (it died) is scanned here, so a helper can lose nothing.
    Bounded: a git is killed after `git_timeout` seconds (its repo: an error row), and
    a helper that sends nothing for `helper_silence` seconds (default: two gits' limit
    and HELPER_SLACK_S) is killed, its unsent repos rows that say they were not read.
    Forks only as the process's one thread (lib.gitpool.forking: the progress ticker
    pauses); else no helper and no keeper, its gits each lead a group of their own.
    `status_args`: STATUS_ARGS and options that only add entries (test-all --changed's
    `--ignore-submodules=none`).
    """
    git = git or find_git()
    env = env if env is not None else git_env()
    known = known or {}
    started = perf_counter()
    generated_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results: dict[str, RepoStatus] = {}
    names = {repo.name for repo in repos}

    def finish(status: RepoStatus) -> None:
        results[status.name] = status
        if on_result is not None:
            on_result(status)

    def from_helper(line: bytes) -> None:
        status = _status_from_json(line)
        if status is not None and status.name in names and status.name not in results:
            finish(status)

    jobs = jobs or default_jobs()
    processes = min(processes or scan_processes(len(repos), jobs), jobs)  # each process runs one git at least
    # A helper's share of jobs, rounded down: this process keeps the rest, at least as many (never over --jobs).
    per_process = jobs // processes
    silence = helper_silence if helper_silence is not None else 2 * git_timeout + HELPER_SLACK_S
    helpers: set[int] = set()  # started and not reaped yet: only these may be killed (a reaped pid is reused)
    silenced: set[str] = set()  # the repos of helpers killed for their silence: not read, never scanned again

    def reap(pid: int) -> None:
        if reaped_within(pid, 2.0):  # a helper stuck in the kernel (a dead mount) stays for the keeper's reap
            helpers.discard(pid)

    def silent(pid: int, share: Sequence[Repo]) -> None:
        with suppress(OSError):  # stopped or hung; its gits go with the keeper's group at the end, else with its own
            if keeper:
                os.kill(pid, signal.SIGKILL)
            else:
                os.killpg(pid, signal.SIGKILL)
        silenced.update(repo.name for repo in share)

    keeper: Keeper | None = None
    try:
        # A stop lands once each forked process is noted, never between its fork and here.
        with forking() as alone:
            keeper = start_keeper() if repos and alone else None
        with GitPool(git, jobs, keeper.pid if keeper else 0, git_timeout) as pool:
            handed: set[int] = set()  # the shares (i of repos[i::processes]) a helper started with
            with forking() as alone:
                for i in range(1, processes) if alone else ():
                    share = repos[i::processes]
                    try:
                        pid, results_fd = _start_helper(share, git, env, known, per_process, pool, keeper,
                                                        git_timeout, status_args)
                    except OSError:  # no fork or pipe to be had (a process limit): scanned here
                        continue
                    helpers.add(pid)
                    handed.add(i)
                    pool.watch(results_fd, from_helper, lambda pid=pid: reap(pid), silence,
                               lambda pid=pid, share=share: silent(pid, share))
            # What no helper started with, this process runs now, with the jobs the helpers do not have: all of
            # --jobs when none started (another thread alive, no fork to be had).
            pool.resize(jobs - per_process * len(handed))
            _scan_share([repo for k, repo in enumerate(repos) if k % processes not in handed], pool, env, known,
                        finish, status_args)
            pool.run()
            pool.resize(jobs)  # the helpers are done: what they left is this process's alone
            for repo in repos:
                if repo.name in silenced and repo.name not in results:
                    finish(RepoStatus(repo.name, str(repo.local), True, False, repo.language,
                                      error=f"not read: the scan's helper process sent nothing for {silence:g} s: "
                                            "killed"))
            missing = [repo for repo in repos if repo.name not in results]
            if missing:  # a helper that died before sending these
                _scan_share(missing, pool, env, known, finish, status_args)
                pool.run()
    finally:
        if keeper:  # done or stopped: the group goes whole (helpers, gits, what they started)
            keeper.stop()
        for pid in list(helpers):  # interrupted: the helper and every git it started go at once
            if not keeper:
                with suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
            reap(pid)
        if keeper:
            keeper.reap()
    return ScanReport(generated_at, perf_counter() - started, [results[r.name] for r in repos])


def _scan_share(repos: Sequence[Repo], pool: GitPool, env: dict[str, str], known: Mapping[str, LastCommit],
                finish: Callable[[RepoStatus], None], status_args: tuple[str, ...] = STATUS_ARGS) -> None:
    """Answer what a stat can, and queue a `git status` for every other repo."""
    reals = ([repo.real for repo in repos] if all(repo.real for repo in repos)
             else real_paths(repo.local for repo in repos))  # resolved once, when the config was loaded
    for repo, real in zip(repos, reals):
        try:
            status = _unscannable(repo)
        except OSError as err:  # a stat git could not have done either (EACCES, ...)
            status = RepoStatus(repo.name, str(repo.local), True, False, repo.language, error=str(err))
        if status.error:
            finish(status)
        else:
            # The parents' realpaths resolved once for all repos.
            confined = confined_to(repo.local, env, real)
            _RepoScan(status, repo.local, pool, confined, known, finish, status_args)


def _start_helper(share: Sequence[Repo], git: str, env: dict[str, str], known: Mapping[str, LastCommit],
                  jobs: int, parent_pool: GitPool, keeper: Keeper | None = None,
                  git_timeout: float = GIT_TIMEOUT_S,
                  status_args: tuple[str, ...] = STATUS_ARGS) -> tuple[int, int]:
    """Fork a process that scans `share` and writes one JSON row per repo to the returned fd.

    Called inside `lib.gitpool.forking()` as the process's one thread: a lock another
    thread held (the progress ticker's, mid-write to stderr) would stay held in the child.
    The helper joins the keeper's process group and puts its gits in it (with
    no keeper it leads a group of its own), so the parent stops all of it
    with one killpg. It touches nothing it shares with
    the parent (no progress, no printing) and leaves by os._exit, never by
    returning into the caller's code. Its gits have the parent's limit.
    """
    read_end, write_end = os.pipe()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+ warns of threads; forking() paused ours
            pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            parent_pool.forget_feeds()
            if keeper:
                os.close(keeper.alive_fd)  # only the scan itself may hold the keeper's pipe open
            os.setpgid(0, keeper.pid if keeper else 0)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held by the parent while it forked us
            with open(write_end, "w", encoding="utf-8") as out, \
                    GitPool(git, jobs, keeper.pid if keeper else os.getpid(), git_timeout) as pool:
                def send(status: RepoStatus) -> None:
                    out.write(json.dumps(status.to_json()) + "\n")
                    out.flush()
                _scan_share(share, pool, env, known, send, status_args)
                pool.run()
            code = 0
        finally:
            os._exit(code)
    with suppress(OSError):
        os.setpgid(pid, keeper.pid if keeper else pid)  # also here: a killpg right after the fork must find it
    os.close(write_end)
    return pid, read_end


def _status_from_json(line: bytes) -> RepoStatus | None:
    """A helper's row back into a RepoStatus; anything malformed is None (that repo is scanned again)."""
    try:
        fields = json.loads(line)
        commit = fields.pop("last_commit")
        status = RepoStatus(**fields)
        status.last_commit = LastCommit(**commit) if commit is not None else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return status
