"""Sync every repo safely: fetch, then fast-forward the default branch only when nothing can be lost.

Over 500 lines, one job: each skip and update path carries its own checks that nothing is lost.

Never a merge commit, never a reset, never a touched dirty tree. A repo that
cannot be fast-forwarded safely is skipped with the reason. Every git call runs
in the configured repo with inherited repo-local variables (GIT_DIR, ...)
removed, and every outcome is read back from the repo, never assumed.
"""
from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections import Counter
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from functools import partial
from pathlib import Path
from time import monotonic
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Sequence

from lib import gitconfig, gitrefs, runner
from lib.commandenv import command_env
from lib.config import Repo, Workspace
from lib.gitpool import GitResult
from lib.gitstatus import (STATUS_ARGS, LastCommit, RepoStatus, confined_to, fill_from_status, git_env,
                           known_commits, parse_porcelain_v2, read_state)
from lib.paths import Paths
from lib.progress import Progress
from lib.results import count_statuses, counts_text, now_iso, record, set_aside_bad_results
from lib.statefile import one_run_at_a_time

NET_TIMEOUT_S = 300.0
LOCAL_BESIDE = 2  # see local_beside
# An unattended sync must fail fast instead of waiting for a password.
NO_PROMPT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never", "SSH_ASKPASS_REQUIRE": "never",
                 "LC_ALL": "C"}
IN_PROGRESS = (("MERGE_HEAD", "a merge"), ("rebase-merge", "a rebase"), ("rebase-apply", "a rebase or am"),
               ("CHERRY_PICK_HEAD", "a cherry-pick"), ("REVERT_HEAD", "a revert"), ("BISECT_LOG", "a bisect"))
FILES_NAMED = 3  # a refusal names this many of the files git listed
# What "dirty" means here, whatever status.showUntrackedFiles or a submodule's `ignore` say.
STATUS = ("--no-optional-locks", "status", "--porcelain", "--untracked-files=normal", "--ignore-submodules=none")
# The read-back of a fast-forward is the scan's status, submodules shown whatever the config ignores (as STATUS
# shows them): a fast-forward that moved a gitlink says the submodule's work tree was left behind.
READ_BACK_MORE = ("--ignore-submodules=none",)


class SyncStatus(StrEnum):
    """How a repo's sync ended; the value is what sync-results.json and the table say."""

    UPDATED = "updated"
    UP_TO_DATE = "up to date"
    CLONED = "cloned"
    SKIPPED = "skipped"
    FAILED = "failed"
    WOULD_UPDATE = "would update"  # --dry-run
    WOULD_CLONE = "would clone"  # --dry-run


@dataclass
class SyncOutcome:
    repo: str
    status: SyncStatus  # given as its value too ("updated"): a value outside the set is a ValueError
    reason: str | None
    branch: str | None  # the default branch, the one sync moves
    before: str | None
    after: str | None
    log: str
    duration_s: float = 0.0
    checked_out: str | None = None  # the branch the work tree is on (None: detached or unknown)

    def __post_init__(self) -> None:
        self.status = SyncStatus(self.status)

    @property
    def failing(self) -> bool:
        return self.status == SyncStatus.FAILED

    def line(self) -> str:
        return f"{self.repo}: {self.status}" + (f": {self.reason}" if self.reason else "")

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # as asdict gives it: every field is flat


@dataclass
class ScanRows:
    """The status rows sync read of the repos it left as they were, and of those it fast-forwarded in their
    work tree: the closing scan reuses them.

    Read with the scan's own `git status` after the repo's last step (for a fast-forward in the work
    tree, that status is its read-back: one read serves both), so a row is what the scan would find
    then. A branch moved without its work tree (update-ref) or a fast-forward that failed is the
    closing scan's to read. None is reused for a repo whose status another repo's later steps may have
    changed since: one sharing its git store (a worktree: that one's fetch moves the shared
    tracking refs), or one whose work tree holds, or sits in, another repo that was cloned, moved or
    failed (a submodule's new commit, a new clone shown as untracked); and none at all once a
    repo sync moved holds a file git reads for every repo (_files_every_repo_reads).
    """

    known: Mapping[str, LastCommit]  # the last scan's commits, as the scan itself uses them
    rows: dict[str, tuple[RepoStatus, str]] = field(default_factory=dict)  # repo -> (row, its realpath)
    common_dirs: dict[str, str] = field(default_factory=dict)  # every repo sync read -> its git store
    changed: list[str] = field(default_factory=list)  # realpaths of the repos sync did not leave as they were
    # Real paths of the files git reads for every repo (_files_every_repo_reads); None: not known (then no row is
    # reused once a repo moved).
    shared_files: tuple[str, ...] | None = ()
    env: dict[str, str] = field(default_factory=git_env)  # the status reads' env, built once per run

    def reusable(self) -> dict[str, RepoStatus]:
        if self.changed and (self.shared_files is None or any(
                shared.startswith(real.rstrip("/") + "/") for real in self.changed for shared in self.shared_files)):
            return {}  # a repo this run moved holds (or may hold) a file git reads for every repo: none stands
        stores = Counter(self.common_dirs.values())
        return {name: row for name, (row, real) in self.rows.items()
                if stores[self.common_dirs[name]] == 1
                and not any(_nested(real, other) for other in self.changed if other != real)}

    def status(self, repo: Repo, real: str, *more: str) -> subprocess.CompletedProcess[bytes]:
        """The scan's own `git status` of `repo` (`real`: its realpath), killable like every git sync starts (a
        status can hang on an fsmonitor hook or a clean filter). OSError: no process to spare. `more`: options
        added (the read-back's READ_BACK_MORE)."""
        return runner.capture(["git", "--no-optional-locks", "-C", str(repo.local), *STATUS_ARGS, *more], None,
                              confined_to(repo.local, self.env, real))

    def read(self, repo: Repo, outcome: SyncOutcome, common_dir: str | None, git_dir: str | None, real: str,
             read_back: subprocess.CompletedProcess[bytes] | None = None) -> None:
        """`git_dir`: known when sync read the dirs from the files as the scan does (gitrefs), else None.
        `real`: the repo's realpath (sync_repo's). `read_back`: the `status` a fast-forward in the work tree was
        read back with, its last step."""
        left_alone = outcome.status in (SyncStatus.UP_TO_DATE, SyncStatus.SKIPPED) and outcome.after == outcome.before
        if not left_alone:
            self.changed.append(real)
        if common_dir is None:
            return
        self.common_dirs[repo.name] = common_dir
        if runner.stopping() or not (left_alone or (read_back is not None and outcome.status == SyncStatus.UPDATED
                                                    and not _lists_a_submodule(read_back.stdout))):
            return  # one the stop killed has no row; nor a read-back the scan's own status might list otherwise
        try:
            git = self.status(repo, real) if read_back is None else read_back
        except OSError:  # no process to spare: the closing scan reads this repo itself
            return
        row = RepoStatus(name=repo.name, path=str(repo.local), exists=True, clean=False, language=repo.language)
        dirs = (Path(git_dir), Path(common_dir)) if git_dir else None
        if fill_from_status(row, repo.local, GitResult(git.returncode, git.stdout, git.stderr), self.known, dirs) \
                and row.error is None:
            self.rows[repo.name] = (row, real)


def _lists_a_submodule(status: bytes) -> bool:
    """Whether a `git status --porcelain=v2 -z` output lists a submodule: with READ_BACK_MORE it may, where the
    scan's own status (which follows `diff.ignoreSubmodules`, `submodule.<name>.ignore`) would not."""
    records = status.split(b"\0")
    return any(record[:1] in (b"1", b"2", b"u") and record.split(b" ", 3)[2:3] != [b"N..."] for record in records)


def _files_every_repo_reads(env: Mapping[str, str], base: list[gitconfig.Entry] | None) -> tuple[str, ...] | None:
    """Real paths of the files git reads for every repo: the user's and the system's config and what they include,
    the global excludes and attributes, an fsmonitor hook, the hooks directory. A repo sync moves that holds one (a
    dotfiles repo that ~/.config/git/ignore links into) may change every other repo's status. None when they
    cannot be told: no listing of the shared config (an includeIf there), or a path in it relative to something
    other than HOME (an include is relative to the file including it, an excludesFile to each repo)."""
    if base is None:
        return None
    home = env.get("HOME", "")
    xdg = env.get("XDG_CONFIG_HOME") or (os.path.join(home, ".config") if home else "")
    found = [env.get(name, "") for name in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM")]
    found += [os.path.join(home, ".gitconfig")] if home else []
    found += [os.path.join(xdg, "git", name) for name in ("config", "ignore", "attributes")] if xdg else []
    for _, key, value in base:
        if value and key in ("core.excludesfile", "core.attributesfile", "include.path", "core.fsmonitor",
                             "core.hookspath"):
            if key == "core.fsmonitor" and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
                continue  # git's own fsmonitor daemon, no hook file
            if value.startswith("~/") and home:
                value = home + value[1:]
            if not os.path.isabs(value):
                return None
            found.append(value)
    return tuple(os.path.realpath(name) for name in found if os.path.isabs(name))


def _read_git(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return _unless_stopped(runner.capture(args, None, env))


def _unless_stopped(result: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    """A git read's result, or runner.Stopping when the stop killed it: no outcome is built from what it did
    not say."""
    if result.returncode < 0 and runner.stopping():
        args = list(result.args)
        after_dir = args[args.index("-C") + 2:] if "-C" in args else args[1:]
        raise runner.Stopping(f"git {next((a for a in after_dir if not a.startswith('-')), '')} was stopped")
    return result


def _text(output: bytes) -> str:
    """Output as subprocess's text mode gave it: UTF-8 (errors replaced), universal newlines."""
    return output.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")


def _nested(one: str, other: str) -> bool:
    """Whether one of two real paths is the other or lies inside it."""
    return one == other or one.startswith(other.rstrip("/") + "/") or other.startswith(one.rstrip("/") + "/")


class _Stop(Exception):
    """Stop syncing this repo with an outcome (skipped or failed) that `reason` explains."""

    def __init__(self, status: SyncStatus, reason: str, after: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.after = after


def _env() -> dict[str, str]:
    # command_env() has no repo-local variables: an exported GIT_DIR cannot redirect us.
    return {**command_env(), **NO_PROMPT_ENV}


@dataclass(frozen=True)
class RunGit:
    """What every repo of one run shares, built once: git's clean env (`command_env` resolves every PATH entry
    to drop our venv's), the config every repo lists before its own (system and global: lib.gitconfig),
    None when each repo's config must be listed by git (git cannot even start: each repo then fails on its own),
    and the run's network slots (`net_jobs` of them; None: no limit, one repo)."""

    env: dict[str, str]
    config_base: list[gitconfig.Entry] | None
    network: threading.BoundedSemaphore | None = None
    # Told (repo, True) when a repo must wait for a network slot, (repo, False) once it has one: the progress
    # line does not show a waiting repo as running.
    waiting: Callable[[str, bool], None] | None = None

    @classmethod
    def build(cls, net_jobs: int | None = None) -> RunGit:
        env = _env()
        slots = None if net_jobs is None else threading.BoundedSemaphore(max(1, net_jobs))

        def read(args: list[str], read_env: Mapping[str, str]) -> tuple[int, bytes, bytes]:
            result = _read_git(args, dict(read_env))
            return result.returncode, result.stdout, result.stderr

        try:
            return cls(env, gitconfig.run_listing(env, read), slots)
        except OSError:  # git missing, no temp dir: every repo asks git itself, and says why it failed
            return cls(env, None, slots)

    @contextmanager
    def on_the_network(self, repo: str = "") -> Iterator[None]:
        """Held while `repo` talks to its remote (fetch, ls-remote, clone, and the fast-forward, whose hooks and
        filters may fetch): at most `net_jobs` at once."""
        if self.network is None:
            yield
            return
        waited = not self.network.acquire(blocking=False)
        if waited:
            if self.waiting is not None:
                self.waiting(repo, True)
            self.network.acquire()
        try:  # from here the slot is released whatever happens, the progress line's redraw failing included
            if waited and self.waiting is not None:
                self.waiting(repo, False)
            yield
        finally:
            self.network.release()


def _git_says(output: str) -> str:
    """Git's reason for a failure: its first error/fatal line (with the files it listed), else its last line."""
    lines = [ln.rstrip() for ln in output.splitlines() if ln.strip()]
    errors = [i for i, ln in enumerate(lines) if ln.startswith(("error:", "fatal:"))]
    if not errors:
        return (lines or ["no output"])[-1].strip()
    first = errors[0]
    if first > 0 and lines[first] == "fatal: Could not read from remote repository.":
        return lines[first - 1].strip()  # ssh's own line ("ssh: connect to host ...") says why
    if lines[first].endswith(":"):
        # "error: The following untracked working tree files would be overwritten by merge:" + a tab-indented list
        listed = []
        for ln in lines[first + 1:]:
            if not ln.startswith(("\t", " ")):
                break
            listed.append(ln.strip())
        if listed:
            more = f" and {len(listed) - FILES_NAMED} more" if len(listed) > FILES_NAMED else ""
            header = lines[first].removeprefix("error: ").removeprefix("The following ")
            return f"{header} {', '.join(listed[:FILES_NAMED])}{more}"
    return lines[first].strip()


class _Git:
    """git in one repo: reads are captured, steps that change things are logged and run in their own group."""

    def __init__(self, path: Path, log: BinaryIO, log_path: Path, env: Mapping[str, str] | None = None,
                 confined: bool = True, config_base: list[gitconfig.Entry] | None = None,
                 real: str | None = None,
                 network: Callable[[], AbstractContextManager[object]] = nullcontext,
                 scan_status: Callable[[], subprocess.CompletedProcess[bytes]] | None = None) -> None:
        self.path = path
        self.log = log
        self.log_path = log_path
        base = _env() if env is None else env  # the run's: built once (every PATH entry is resolved)
        # Confined: a `.git` that is no repository fails instead of git using the repo around `path`.
        self.env = confined_to(path, base, real) if confined else dict(base)  # real: path's realpath, if known
        self.step_output_at = 0
        # Set once the repo's files and config were read without doubt (_read_before): refs are then
        # read from the files, config from this one listing; anything odd still goes to git.
        self.common_dir: Path | None = None
        self.listing: gitrefs.Config | None = None
        self.config_base = config_base  # the run's listing: the repo's own config file is then read here
        self.network = network  # held by a `network` step: the run's slots (RunGit.on_the_network)
        # A relative PATH entry is looked up from the repo (its `.venv/bin`, say): then steps run there, not by -C.
        self.relative_path = any(not os.path.isabs(entry) for entry in self.env.get("PATH", "").split(os.pathsep))
        self.commits: set[str] = set()  # shas read as commits of this store (gitrefs.is_commit)
        self.scan_status = scan_status  # the closing scan's status of this repo, when the run has one (ScanRows)

    def read(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.read_bytes(*args)
        return subprocess.CompletedProcess(result.args, result.returncode, _text(result.stdout), _text(result.stderr))

    def read_bytes(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """A git read, killable like a step (runner.capture). One the stop killed raises runner.Stopping:
        no outcome is ever built from what a killed read did not say."""
        return _read_git(["git", "-C", str(self.path), *args], self.env)

    def changed_paths(self) -> int:
        """How many paths `git status` lists (changed, staged, untracked, in conflict): the scan's own status when
        the run has one (ScanRows.status: the row then needs no second read), else one here. A read the stop
        killed raises runner.Stopping, as `read_bytes`; one that fails lists none."""
        result = (self.read_bytes("--no-optional-locks", *STATUS_ARGS, *READ_BACK_MORE) if self.scan_status is None
                  else _unless_stopped(self.scan_status()))
        return parse_porcelain_v2(result.stdout).dirty if result.returncode == 0 else 0

    def out(self, *args: str) -> str:
        result = self.read(*args)
        if result.returncode != 0:
            problem = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
            command = next((a for a in args if not a.startswith("-")), args[0])
            raise _Stop(SyncStatus.FAILED, f"git {command} failed: {problem}")
        return result.stdout.strip()

    def rev(self, name: str) -> str | None:
        """The commit a ref names, as `git rev-parse -q --verify NAME^{commit}` prints it."""
        if self.common_dir is not None:
            sha = gitrefs.read_ref(self.common_dir, name)
            # An object once read as a commit of this store stays one: read it once per repo, not per ref.
            if sha is not None and (sha in self.commits or gitrefs.is_commit(self.common_dir, sha)):
                self.commits.add(sha)
                return sha
        result = self.read("rev-parse", "-q", "--verify", f"{name}^{{commit}}")
        return result.stdout.strip() if result.returncode == 0 else None

    def symref(self, name: str) -> str:
        """What a symbolic ref names, as `git symbolic-ref -q NAME` prints it ("" for a plain ref)."""
        if self.common_dir is not None and gitrefs.read_ref(self.common_dir, name) is not None:
            return ""  # read as a plain sha, loose or packed
        return self.read("symbolic-ref", "-q", name).stdout.strip()

    def config(self, key: str) -> str | None:
        if self.listing is not None:
            value = self.listing.last(key)
            return None if value is None else value.strip()
        result = self.read("config", "--get", key)
        return result.stdout.strip() if result.returncode == 0 else None

    def config_words(self, key: str) -> list[str]:
        """The words of every value of `key`, as `git config --get-all KEY` output split."""
        if self.listing is not None:
            return "\n".join(self.listing.all(key)).split()
        return self.read("config", "--get-all", key).stdout.split()

    def step(self, args: list[str], timeout: float | None, network: bool = False) -> runner.ProcessResult:
        """A step that may change the repo. A `network` one (a fetch, an ls-remote: tracking refs at most) leaves
        what left its group (a detached `gc --auto`, an ssh master) to the watchdog, killed when the run ends:
        no scan of every process on the machine after it. A local step's leftovers die when it ends (a hook's
        child must not touch the work tree after sync read it back)."""
        command = " ".join(shlex.quote(a) for a in ["git", *args])
        self.log.write(f"$ {command}\n".encode())
        self.log.flush()
        self.step_output_at = self.log.tell()
        # git itself, no shell: a process less per step (and git is looked up on the env's PATH, as a shell would);
        # `-C` instead of a working directory, so the runner can posix_spawn it
        with self.network() if network else nullcontext():
            if self.relative_path:
                return runner.run_in_group(["git", *args], self.path, self.log, timeout, self.env,
                                           leftovers_at_run_end=network)
            return runner.run_in_group(["git", "-C", str(self.path), *args], None, self.log, timeout, self.env,
                                       leftovers_at_run_end=network)

    def step_output(self) -> str:
        """What the last step printed (it writes straight into the log file)."""
        with open(self.log_path, "rb") as log:
            log.seek(self.step_output_at)
            return log.read(256 * 1024).decode("utf-8", "replace")

    def failure(self, result: runner.ProcessResult, timeout: float | None) -> str:
        if result.timed_out:
            return f"timed out after {timeout:g}s"
        code = result.exit_code
        if code is not None and (code < 0 or code > 128):
            return f"git was killed (signal {-code if code < 0 else code - 128})"
        return _git_says(self.step_output())


def _remove_made(path: Path, created: list[Path]) -> None:
    """Only what did not exist before a clone is removed: its own directory and the parents made for it."""
    if path in created and path.exists():
        shutil.rmtree(path, ignore_errors=True)
    for directory in created[1:]:
        try:
            directory.rmdir()
        except OSError:
            break


def _clone(repo: Repo, log: BinaryIO, log_path: Path, timeout: float | None, dry_run: bool,
           run: RunGit) -> SyncOutcome:
    path = repo.local
    if not repo.remote or repo.remote == "unknown":
        raise _Stop(SyncStatus.FAILED, f"path missing and no remote to clone from (remote: {repo.remote or 'none'})")
    if dry_run:
        raise _Stop(SyncStatus.WOULD_CLONE, f"from {repo.remote}")
    env = run.env
    git = _Git(path.parent, log, log_path, env, confined=False)  # it asks for the work tree around the clone
    with run.on_the_network(repo.name):  # the folders are made once the clone can start: a stop meanwhile leaves none
        created = [p for p in [path, *path.parents] if not os.path.lexists(p)]  # what we make, deepest first
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            result = git.step(["clone", "--", repo.remote, str(path)], timeout)
        except BaseException:  # stopped before it started (runner.Stopping), a log that failed...
            _remove_made(path, created)
            raise
    if result.exit_code != 0:
        problem = git.failure(result, timeout)
        _remove_made(path, created)
        raise _Stop(SyncStatus.FAILED, f"clone failed: {problem}")
    reason = f"from {repo.remote}"
    enclosing = git.read("rev-parse", "--show-toplevel")
    if enclosing.returncode == 0 and enclosing.stdout.strip():
        reason += f"; inside the work tree of {enclosing.stdout.strip()} (it shows there as untracked unless ignored)"
    return SyncOutcome(repo.name, SyncStatus.CLONED, reason, None, None, _Git(path, log, log_path, env).rev("HEAD"),
                       str(log_path))


def _in_progress(git_dir: Path) -> str | None:
    for marker, what in IN_PROGRESS:
        if os.path.exists(f"{git_dir}/{marker}"):
            return what
    return None


def _branch_in_use_elsewhere(git: _Git, branch: str, git_dir: Path, common_dir: Path) -> str | None:
    """Another worktree that has `branch` checked out, or is rebasing or bisecting it."""
    if git_dir == common_dir and not _listed(f"{common_dir}/worktrees"):
        return None  # the main worktree, and git knows no other (`git worktree list` reads that directory)
    own = os.path.realpath(git.path)
    path = None
    for line in git.out("worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            path = line[len("worktree "):]
        elif line == f"branch refs/heads/{branch}" and path and os.path.realpath(path) != own:
            return f"checked out in worktree {path}"
    # A worktree mid-rebase shows as detached; its admin dir still names the branch.
    for admin in [common_dir, *sorted((common_dir / "worktrees").glob("*"))]:
        if admin.resolve() == git_dir.resolve():
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


def _log_name(repo: Repo, dry_run: bool) -> str:
    # A dry run never replaces the log that state/sync-results.json points to.
    return f"orchestrator-sync-{repo.name}{'.dry-run' if dry_run else ''}.log"


def _open_log(path: Path, truncate: bool = True) -> BinaryIO:
    """Open a log to write, never through a symlink and never waiting on a FIFO found at its path.

    The default log dir is the shared temp dir: another user can plant either there. `truncate=False`: the
    last run's log is written over, and the caller truncates it once it wrote its first line (`truncate()`):
    a file truncated to nothing is flushed to disk when it is closed (ext4), about 0.1 ms of each repo's sync.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0) | os.O_NOFOLLOW | os.O_NONBLOCK,
                     0o644)
    except OSError as err:
        why = {errno.ELOOP: "it is a symlink (not followed)", errno.ENXIO: "it is a FIFO nobody reads"}.get(err.errno)
        raise OSError(err.errno, why) if why else err from None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "wb")


def sync_repo(repo: Repo, log_dir: Path, timeout: float | None = NET_TIMEOUT_S, clone_missing: bool = False,
              dry_run: bool = False, scan_rows: ScanRows | None = None,
              settled: list[SyncOutcome] | None = None, run: RunGit | None = None) -> SyncOutcome:
    """Fetch and fast-forward one repo; returns its outcome, never raises for the repo's sake.

    `settled` gets the outcome if it was known before any stop of the run (nothing the stop
    killed went into it), before the status read for `scan_rows`. `run`: what the run's repos share
    (built once by sync_all), else built here.
    """
    started = monotonic()
    log_path = log_dir / _log_name(repo, dry_run)
    real = os.path.realpath(repo.local)  # once: git's confinement and the scan row's nesting check share it
    state: dict[str, str | None] = {}
    read_back: list[subprocess.CompletedProcess[bytes]] = []  # the scan's status a fast-forward was read back with

    def scan_status() -> subprocess.CompletedProcess[bytes]:
        assert scan_rows is not None
        read_back[:] = [scan_rows.status(repo, real, *READ_BACK_MORE)]
        return read_back[0]

    outcome: SyncOutcome | None = None
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        with _open_log(log_path, truncate=False) as log:
            log.write(f"# orchestrator sync {repo.name} at {now_iso()}{' (dry run)' if dry_run else ''}\n".encode())
            log.truncate()  # the last run's lines end here: nothing of them is left after this first line
            try:
                outcome = _sync(repo, log, log_path, timeout, clone_missing, dry_run, state,
                                RunGit.build() if run is None else run, real, None if scan_rows is None else scan_status)
            except _Stop as stop:
                outcome = SyncOutcome(repo.name, stop.status, stop.reason, repo.default_branch, state.get("before"),
                                      stop.after or state.get("before"), str(log_path),
                                      checked_out=state.get("checked_out"))
            except (OSError, ValueError) as err:  # an unreadable repo or log: the run goes on with the next repo
                log.write(f"error: {err}\n".encode())
                outcome = SyncOutcome(repo.name, SyncStatus.FAILED, f"{type(err).__name__}: {err}", repo.default_branch,
                                      state.get("before"), state.get("before"), str(log_path))
            log.write(f"outcome: {outcome.line()}\n".encode())
    except OSError as err:  # the log cannot be written (a full disk, a log dir that is a file): say so
        problem = f"log {log_path} not written: {err.strerror or err}"
        if outcome is None:  # nothing ran: the log is opened before any git
            outcome = SyncOutcome(repo.name, SyncStatus.FAILED, problem, repo.default_branch, None, None, str(log_path))
        else:  # the outcome stands, read from the repo as always
            outcome.reason = f"{outcome.reason}; {problem}" if outcome.reason else problem
    if settled is not None and not runner.stopping():
        settled.append(outcome)
    if scan_rows is not None:
        scan_rows.read(repo, outcome, state.get("common_dir"), state.get("git_dir"), real,
                       read_back[0] if read_back else None)
    outcome.duration_s = round(monotonic() - started, 3)
    return outcome


def _tracking_refspecs(git: _Git, remote: str) -> list[str]:
    """The remote's configured fetch refspecs that write only into refs/remotes/<remote>/ (and negative ones)."""
    configured = git.config_words(f"remote.{remote}.fetch")
    own = f"refs/remotes/{remote}/"
    return [spec for spec in configured if spec.startswith("^") or spec.partition(":")[2].startswith(own)]


def _fetch(git: _Git, remote: str, timeout: float | None) -> None:
    # The explicit refspecs and an empty --refmap ignore configured fetch refspecs that write elsewhere
    # (a mirror-style `+refs/heads/*:refs/heads/*` would force-move local branches): only
    # refs/remotes/<remote>/* changes, pruned so a deleted upstream branch shows as gone. The configured
    # ones that write there (pull request refs, say) are fetched too, so the prune keeps what still exists.
    # Tags follow as usual but are never pruned; submodules are not fetched (their own refspecs could
    # move their branches).
    # No automatic gc after it (`git maintenance run --auto`: one more git per repo, and a gc it detaches would be
    # killed when sync-all ends): git's own commands in the repo still run it, and `git maintenance start` too.
    result = git.step(["fetch", "--no-auto-gc", "--prune", "--no-prune-tags", "--refmap=", "--no-recurse-submodules",
                       remote, f"+refs/heads/*:refs/remotes/{remote}/*", *_tracking_refspecs(git, remote)], timeout,
                      network=True)
    if result.exit_code != 0:
        raise _Stop(SyncStatus.FAILED, f"fetch failed: {git.failure(result, timeout)}")


def _remote_default_branch(git: _Git, remote: str, timeout: float | None) -> str | None:
    """The branch the remote's HEAD names now (one ls-remote), or None when that cannot be told."""
    result = git.step(["ls-remote", "--symref", remote, "HEAD"], timeout, network=True)
    if result.exit_code != 0:
        return None
    found = re.findall(r"^ref: refs/heads/(\S+)\s+HEAD$", git.step_output(), re.MULTILINE)
    return found[-1] if found else None


@dataclass(frozen=True)
class _Before:
    """The repo as it was before anything ran: every later claim about what moved compares with this."""

    tip: str | None  # the default branch's commit
    head: str  # HEAD's symbolic ref, "" when detached
    git_dir: Path
    common_dir: Path
    remotes: tuple[str, ...]

    @property
    def checked_out(self) -> str | None:
        return self.head.removeprefix("refs/heads/") if self.head.startswith("refs/heads/") else None


def _read_before(git: _Git, local_ref: str) -> _Before:
    from_files = _read_before_from_files(git, local_ref)
    if from_files is not None:
        return from_files
    return _Before(git.rev(local_ref), git.read("symbolic-ref", "-q", "HEAD").stdout.strip(),
                   Path(git.out("rev-parse", "--absolute-git-dir")),
                   (git.path / git.out("rev-parse", "--git-common-dir")).resolve(), tuple(git.out("remote").split()))


def _read_before_from_files(git: _Git, local_ref: str) -> _Before | None:
    """_Before from the git dir's files and one config listing, or None when in any doubt (then ask git).

    The dirs, HEAD and refs as lib.gitrefs reads them; `git remote`'s list from the config listing.
    """
    dirs = gitrefs.git_dirs(git.path)
    if dirs is None:
        return None
    git_dir, common_dir = dirs
    if any(_listed(f"{common_dir}/{legacy}") for legacy in ("remotes", "branches")):
        return None  # remotes defined by files, which some gits list too
    listing = _own_listing(git, git_dir, common_dir)
    remotes = listing.remotes() if listing is not None else None
    head = gitrefs.read_head(git_dir, common_dir)
    if listing is None or remotes is None or head is None:
        return None
    git.common_dir, git.listing = common_dir, listing
    return _Before(git.rev(local_ref), head, git_dir, common_dir, remotes)


def _own_listing(git: _Git, git_dir: Path, common_dir: Path) -> gitrefs.Config | None:
    """The repo's config as `git config -z --list --show-scope` lists it: the run's listing and the repo's file
    read here (lib.gitconfig), else that one git; None when in doubt."""
    if git.config_base is not None:
        entries = gitconfig.repo_listing(git.config_base, git_dir, common_dir, git.path, git.env)
        if entries is not None:
            return gitrefs.Config(entries)
    listed = git.read_bytes("config", "-z", "--list", "--show-scope")
    return gitrefs.Config.parse(listed.stdout) if listed.returncode == 0 and not listed.stderr else None


def _listed(directory: str) -> bool:
    try:
        return bool(os.listdir(directory))
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _upstream(git: _Git, branch: str, remotes: Sequence[str]) -> tuple[str, str] | None:
    """(remote, branch there) that `branch` tracks, or None when it tracks nothing."""
    remote, merge = git.config(f"branch.{branch}.remote"), git.config(f"branch.{branch}.merge")
    if not remote or not merge:
        return None
    if remote not in remotes or not merge.startswith("refs/heads/"):
        raise _Stop(SyncStatus.SKIPPED,
                    f"{branch}'s upstream ({remote} {merge}) is not a branch of a configured remote")
    return remote, merge.removeprefix("refs/heads/")


def _sync(repo: Repo, log: BinaryIO, log_path: Path, timeout: float | None, clone_missing: bool,
          dry_run: bool, state: dict[str, str | None], run: RunGit, real: str,
          scan_status: Callable[[], subprocess.CompletedProcess[bytes]] | None = None) -> SyncOutcome:
    path = repo.local
    if not path.exists():
        if os.path.lexists(path):
            raise _Stop(SyncStatus.FAILED, "path is a broken symlink")
        if clone_missing:
            return _clone(repo, log, log_path, timeout, dry_run, run)
        raise _Stop(SyncStatus.SKIPPED, "path missing (--clone-missing clones it)")
    if not (path / ".git").exists():
        raise _Stop(SyncStatus.FAILED, "not a git repository")
    git = _Git(path, log, log_path, run.env, config_base=run.config_base, real=real,
               network=partial(run.on_the_network, repo.name), scan_status=scan_status)
    branch = repo.default_branch
    local_ref = f"refs/heads/{branch}"
    if not gitrefs.plain_refname(local_ref) and git.read("check-ref-format", local_ref).returncode != 0:
        raise _Stop(SyncStatus.FAILED, f"default_branch {branch!r} is not a valid branch name")
    seen = _read_before(git, local_ref)
    state["before"], state["checked_out"], state["common_dir"] = seen.tip, seen.checked_out, str(seen.common_dir)
    state["git_dir"] = str(seen.git_dir) if git.common_dir is not None else None  # read as the scan reads them
    upstream = _upstream(git, branch, seen.remotes)
    if not dry_run:
        # Fetching only updates remote-tracking refs: safe in any state, so every repo gets it.
        for remote in [upstream[0]] if upstream else seen.remotes:
            _fetch(git, remote, timeout)
        now = git.rev(local_ref)
        if now != seen.tip:
            raise _Stop(SyncStatus.SKIPPED, f"{branch} moved during the fetch ({_short(seen.tip)} -> {_short(now)}): "
                        "someone else is working here", after=now)
    what = _in_progress(seen.git_dir)
    if what:
        raise _Stop(SyncStatus.SKIPPED, f"{what} is in progress")
    if not seen.head:
        raise _Stop(SyncStatus.SKIPPED, "detached HEAD")
    if seen.tip is None:
        raise _Stop(SyncStatus.SKIPPED, f"no local branch {branch!r}")
    alias = git.symref(local_ref)
    if alias:  # moving it moves the branch it names, maybe under its own work tree
        raise _Stop(SyncStatus.SKIPPED, f"{branch} is a symbolic ref to {alias}: set default_branch to that branch")
    if upstream is None:
        raise _Stop(SyncStatus.SKIPPED, f"{branch} has no upstream")
    remote, upstream_branch = upstream
    tracking = f"{remote}/{upstream_branch}"
    target = git.rev(f"refs/remotes/{tracking}")
    if target is None:
        gone = f"upstream gone: {tracking} no longer exists"
        renamed = None if dry_run else _remote_default_branch(git, remote, timeout)
        if renamed and renamed != upstream_branch:
            gone += f"; {remote}'s default branch is now {renamed}"
        raise _Stop(SyncStatus.SKIPPED, gone)
    before = seen.tip
    counted = gitrefs.ahead_behind(git.common_dir, before, target) if git.common_dir is not None else None
    if counted is None:
        left, right = git.out("rev-list", "--left-right", "--count", f"{before}...{target}").split()
        counted = int(left), int(right)
    ahead, behind = counted
    log.write(f"{branch} {before[:12]}, {tracking} {target[:12]}: ahead {ahead}, behind {behind}\n".encode())
    outcome = partial(SyncOutcome, repo.name, branch=branch, before=before, log=str(log_path),
                      checked_out=seen.checked_out)
    if behind == 0:
        return outcome(SyncStatus.UP_TO_DATE, _ahead_reason(git, before, ahead, tracking, target) if ahead else None,
                       after=before)
    if ahead:
        raise _Stop(SyncStatus.SKIPPED, f"diverged: ahead {ahead}, behind {behind}")
    here = seen.checked_out == branch
    if here and git.out(*STATUS):
        raise _Stop(SyncStatus.SKIPPED, f"dirty: uncommitted changes on {branch}")
    elsewhere = _branch_in_use_elsewhere(git, branch, seen.git_dir, seen.common_dir)
    if elsewhere:
        raise _Stop(SyncStatus.SKIPPED, f"{branch} is {elsewhere}")
    how = "fast-forward" if here else f"move {branch} (work tree on {seen.checked_out} untouched)"
    done = f"{how}: {behind} commit(s)"
    if dry_run:
        return outcome(SyncStatus.WOULD_UPDATE, done, after=target)
    status, reason = _fast_forward(git, local_ref, before, target, seen, done)
    return outcome(status, reason, after=git.rev(local_ref))


REFLOG_NAMED = 500  # earlier values of the upstream's remote-tracking ref looked at


def _ahead_reason(git: _Git, before: str, ahead: int, tracking: str, target: str) -> str:
    """Why a branch is ahead: `not pushed` only for commits on no remote-tracking ref.

    Commits the upstream held before a force-push rewound it (its reflog has
    them) were pushed; commits on another remote-tracking ref are there. In
    doubt (a git read fails) the reason claims nothing.

    Read from the files when every remote-tracking ref and every value the reflog names is the upstream
    (`target`) or below it: then none holds a commit the branch has beyond the upstream, as git would count.
    """
    if git.common_dir is not None:
        tips = gitrefs.remote_tips(git.common_dir)
        earlier = gitrefs.reflog_values(git.common_dir, f"refs/remotes/{tracking}", REFLOG_NAMED)
        if tips is not None and target in tips and earlier is not None \
                and gitrefs.all_below(git.common_dir, target, tips | set(earlier)):
            return f"ahead {ahead}, not pushed"
    unpushed = _count(git, before, "--not", "--remotes")
    if unpushed is None:
        return f"ahead {ahead}"
    if unpushed == 0:
        return f"ahead {ahead}, all on other remote-tracking refs"
    earlier = git.read("log", "-g", "--format=%H", "-n", str(REFLOG_NAMED), f"refs/remotes/{tracking}")
    shas = earlier.stdout.split() if earlier.returncode == 0 else []
    if shas and _count(git, before, "--not", "--remotes", *shas) == 0:
        return f"ahead {ahead}: pushed, but {tracking} was rewound since"
    return f"ahead {ahead}, not pushed" if unpushed == ahead else f"ahead {ahead}, {unpushed} not pushed"


def _count(git: _Git, *revisions: str) -> int | None:
    result = git.read("rev-list", "--count", *revisions)
    return int(result.stdout) if result.returncode == 0 and result.stdout.strip().isdigit() else None


def _fast_forward(git: _Git, local_ref: str, before: str, target: str, seen: _Before,
                  done: str) -> tuple[SyncStatus, str]:
    """Move the default branch from `before` to `target`; (status, reason) as read back from the repo."""
    here = seen.checked_out == local_ref.removeprefix("refs/heads/")
    if here:
        head = gitrefs.read_head(seen.git_dir, seen.common_dir) if git.common_dir is not None else None
        if (git.read("symbolic-ref", "-q", "HEAD").stdout.strip() if head is None else head) != seen.head:
            raise _Stop(SyncStatus.SKIPPED, "HEAD moved to another branch while syncing: left alone")
        if (seen.git_dir / "index.lock").exists():
            raise _Stop(SyncStatus.SKIPPED, f"{seen.git_dir / 'index.lock'} exists: another git is running here "
                        "(or one was killed: then remove it)")
        # --no-overwrite-ignore: an ignored local file (a .env, say) that upstream now
        # tracks makes the merge stop instead of being overwritten.
        args = ["merge", "--ff-only", "--no-overwrite-ignore", target]
    else:
        # A compare-and-swap: the ref moves only if it still is `before` (and `target`
        # descends from it: ahead is 0). The work tree is not involved.
        args = ["update-ref", "-m", "orchestrator sync: fast-forward", local_ref, target, before]
    # A local step is not bound by the network timeout: a slow hook or checkout filter
    # (git-lfs) must finish, or the branch moves while the work tree is half checked out. It holds a network
    # slot all the same: such a filter or hook may well fetch (git-lfs downloads the new objects).
    with git.network():
        result = git.step(args, None)
    return _read_back(git, result, local_ref, before, target, done, here, seen.git_dir)


def _short(sha: str | None) -> str:
    return sha[:7] if sha else "none"


def _read_back(git: _Git, result: runner.ProcessResult, local_ref: str, before: str, target: str, done: str,
               here: bool, git_dir: Path) -> tuple[SyncStatus, str]:
    """The outcome (status, reason) of a fast-forward step, from what the repo holds now, not from git's exit."""
    branch = local_ref.removeprefix("refs/heads/")
    after = git.rev(local_ref)
    changed = git.changed_paths() if here else 0
    lock = git_dir / "index.lock"
    left = [f"{changed} path(s) differ from HEAD"] if changed else []
    left += [f"{lock} left behind"] if here and lock.exists() else []
    if result.exit_code == 0 and after != before:
        # Done; a post-merge hook may still have moved the branch or touched the tree.
        moved = [f"then {branch} moved to {_short(after)}"] if after != target else []
        return SyncStatus.UPDATED, done + (f" ({'; '.join(moved + left)})" if moved or left else "")
    problem = git.failure(result, None) if result.exit_code != 0 else f"git succeeded but {branch} did not move"
    if after == target and not left:
        return SyncStatus.UPDATED, f"{done} ({problem} after the fast-forward)"
    if after == before and not left:
        return SyncStatus.FAILED, f"fast-forward refused, nothing changed: {problem}"
    where = f"{branch} at {_short(after)} (was {_short(before)}, upstream {_short(target)})"
    return SyncStatus.FAILED, (f"fast-forward interrupted ({problem}): {'; '.join([where, *left])}: "
                               "check `git status` there")


def local_beside(net_jobs: int) -> int:
    """Repos synced beside the `net_jobs` that may talk to their remotes at once: while those fetch, these do
    their local work (reading the repo, the closing scan's status), so the cores are not left idle between
    fetches. None beside a one-at-a-time run (`--net-jobs 1`: one repo at a time, as asked)."""
    return min(LOCAL_BESIDE, max(0, net_jobs - 1))


def sync_all(repos: Sequence[Repo], log_dir: Path, net_jobs: int = 4, timeout: float | None = NET_TIMEOUT_S,
             clone_missing: bool = False, dry_run: bool = False,
             on_start: Callable[[Repo], None] | None = None,
             on_done: Callable[[SyncOutcome], None] | None = None,
             scan_rows: ScanRows | None = None, run: RunGit | None = None) -> list[SyncOutcome]:
    """`run`: RunGit.build(net_jobs), when the caller built it."""
    finished: list[SyncOutcome] = []  # kept by the workers themselves, so a stopped run still has them
    settled: list[SyncOutcome] = []  # those known before the stop, whatever the reads after them
    # One clean env and one listing of the shared config for every repo's gits, and `net_jobs` network slots.
    run = RunGit.build(net_jobs) if run is None else run
    if scan_rows is not None:
        scan_rows.shared_files = _files_every_repo_reads(run.env, run.config_base)

    def work(repo: Repo) -> SyncOutcome:
        finished.append(sync_repo(repo, log_dir, timeout, clone_missing, dry_run, scan_rows, settled, run))
        return finished[-1]

    try:
        return runner.run_each(repos, work, net_jobs + local_beside(net_jobs), on_start, on_done)
    except runner.RunInterrupted as stop:
        # run_each took its results before killing the running steps: a repo whose branch a killed
        # fast-forward had already moved (read back from the repo since) is recorded too, and so is
        # one whose outcome was known before the stop (the stop killed only its status read).
        recorded = {o.repo for o in stop.results}
        moved = [o for o in finished if o.repo not in recorded and (o.after != o.before or o in settled)]
        order = {repo.name: index for index, repo in enumerate(repos)}
        stop.results = sorted([*stop.results, *moved], key=lambda o: order[o.repo])
        raise


def _build_meanwhile(net_jobs: int) -> Callable[[], RunGit]:
    """RunGit.build(net_jobs) in a thread of its own while the run reads its state files (its config listing is a
    git the first fetch waits for); the function returned waits for it, and must be called on every path (its
    git runs in a temporary directory that only its end removes)."""
    built: list[RunGit | BaseException] = []
    # An event, not Thread.join: a join a Ctrl-C interrupted marks the thread ended (CPython 3.11's
    # _wait_for_tstate_lock), so the join after it returned at once, its temporary directory still there.
    ended = threading.Event()

    def build() -> None:
        try:
            built.append(RunGit.build(net_jobs))
        except BaseException as err:  # raised where the run waits for it
            built.append(err)
        finally:
            ended.set()

    thread = threading.Thread(target=build, name="sync-setup", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # no thread to spare: built when it is needed
        return partial(RunGit.build, net_jobs)

    def wait() -> RunGit:
        ended.wait()
        if isinstance(built[0], BaseException):
            raise built[0]
        return built[0]

    return wait


def _summary(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    return {"total": len(results), **count_statuses(r["status"] for r in results)}


def save(state_file: Path, outcomes: Sequence[SyncOutcome], known_repos: set[str]) -> None:
    """Merge outcomes by repo: a --tag run keeps the other repos' last results."""
    record(state_file, outcomes, known_repos, _summary)


@dataclass
class SyncReport:
    outcomes: list[SyncOutcome]
    duration_s: float
    state_file: Path | None
    notes: list[str] = field(default_factory=list)  # warning lines to print after the table

    @property
    def failing(self) -> list[SyncOutcome]:
        return [o for o in self.outcomes if o.failing]

    def summary_line(self) -> str:
        parts = counts_text(count_statuses(o.status for o in self.outcomes))
        unfetched = sum(1 for o in self.outcomes if (o.reason or "").startswith("fetch failed"))
        if unfetched:
            parts += f" ({unfetched} could not be fetched: see their logs)"
        return f"synced {len(self.outcomes)} repos in {self.duration_s:.1f}s: {parts}"

    def closing_line(self) -> str:
        """The line under the table: the counts and where they were recorded."""
        return self.summary_line() + (f" -> {self.state_file}" if self.state_file else " (dry run)")


def run_sync(paths: Paths, workspace: Workspace, tags: list[str] | None = None, net_jobs: int = 4,
             timeout: float | None = NET_TIMEOUT_S, clone_missing: bool = False,
             dry_run: bool = False, on_done: Callable[[SyncOutcome], None] | None = None,
             before_scan: Callable[[list[SyncOutcome]], None] | None = None) -> SyncReport:
    """Sync the selected repos, record state/sync-results.json, then refresh the scan state.

    One sync per workspace at a time: two would race for the same refs, logs and state.
    `on_done` gets each outcome as its repo finishes (sync-all --host streams them back);
    `before_scan` gets them all once every repo is done, before the closing scan starts
    (the host's driver leaves them in its report file, so a kill in the scan loses nothing).
    """
    from lib.scan import ScanStopped, scan_and_save

    started = monotonic()
    repos = workspace.select(tags=tags)
    with one_run_at_a_time(paths.state_dir / "sync.lock", "sync-all"):
        shared = _build_meanwhile(net_jobs)
        try:
            # The last scan's document, read once: its commits serve sync's rows and the closing scan.
            last_scan = None if dry_run else read_state(paths.repo_status_file)
            scan_rows = None if dry_run else ScanRows(known_commits(last_scan))
            # A results file that cannot be read is set aside now, so the outcomes of the sync are recorded.
            notes = [] if dry_run else set_aside_bad_results(paths.sync_results_file)
            run = shared()
        except BaseException:  # a stop while it waited too: its git and temporary directory end before we do
            with suppress(Exception):
                shared()
            raise
        with Progress("syncing", len(repos)) as progress:

            def finished(outcome: SyncOutcome) -> None:
                progress.finish(outcome.repo, outcome.line(), outcome.failing)
                if on_done is not None:
                    on_done(outcome)

            try:
                def waiting(repo: str, waits: bool) -> None:
                    (progress.wait if waits else progress.start)(repo)

                outcomes = sync_all(repos, paths.log_dir, net_jobs, timeout, clone_missing, dry_run,
                                    on_start=lambda repo: progress.start(repo.name), on_done=finished,
                                    run=replace(run, waiting=waiting), scan_rows=scan_rows)
            except runner.RunInterrupted as stop:  # keep what the repos that finished did
                stop.notes += notes
                if not dry_run and stop.results:
                    try:
                        save(paths.sync_results_file, stop.results, {r.name for r in workspace.repos})
                    except OSError as err:  # the stop's exit code and notes stand; say the record failed
                        stop.notes.append(f"warning: results not recorded in {paths.sync_results_file}: "
                                          f"{err.strerror or err}")
                raise
        if dry_run:
            return SyncReport(outcomes, monotonic() - started, None)
        try:
            save(paths.sync_results_file, outcomes, {r.name for r in workspace.repos})
        except OSError as err:  # the repos are synced: say so in the table, and that the record failed
            notes.append(f"warning: results not recorded in {paths.sync_results_file}: {err.strerror or err}")
        if before_scan is not None:
            before_scan(outcomes)
        try:
            scan_and_save(paths, tags=None, reuse=scan_rows.reusable() if scan_rows else None,
                          previous={} if last_scan is None else last_scan, workspace=workspace)
        except ScanStopped as stop:  # the sync is done and recorded: its warnings and counts go with the stop
            done = SyncReport(outcomes, monotonic() - started, paths.sync_results_file).summary_line()
            stop.notes += [*notes, f"every repo had synced ({done}); the closing scan was stopped"]
            raise
    return SyncReport(outcomes, monotonic() - started, paths.sync_results_file, notes)
