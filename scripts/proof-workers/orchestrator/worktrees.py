"""Agent worktrees: create and reconcile `<worktree_base>/issue-N` on `<branch_prefix>N`, read progress, push.

Our own git calls run with hooks and fsmonitor off (an agent can write the
shared .git/config) and without inherited GIT_DIR-like variables. They go
through subprocess rather than GitPython: GitPython merges its environment into
os.environ and cannot unset an inherited GIT_DIR.
"""
from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lib import runner
from lib.errors import OrchestratorError, clip
from lib.gitstatus import REPO_LOCAL_GIT_VARS, without_repo_local_git_vars

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
    env = {k: v for k, v in without_repo_local_git_vars(os.environ).items() if k not in REPO_ENV}
    # GIT_OPTIONAL_LOCKS=0: our `git status` must not take the worktree's index.lock to refresh the
    # index, or the agent's own `git add`/`git commit` at that moment fails ("index.lock exists").
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"})
    env.update(extra or {})
    return env


def git(cwd: Path | str, *args: str, check: bool = True, timeout: float = GIT_TIMEOUT_S,
        env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(["git", *SAFE_GIT, *args], cwd=cwd, capture_output=True, text=True, errors="replace",
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
    locked: str | None = None  # its lock's reason ("" for none); None: not locked


# What `git worktree add` locks a new worktree with until its checkout is done: still there, the add was stopped
# half-way (files not yet written show as deleted; `git add -A` there would commit their deletion).
UNFINISHED = "initializing"


def unfinished(path: Path) -> str:
    """Why a worktree whose `git worktree add` never finished is not used."""
    return (f"worktree {path} was never finished (its `git worktree add` was stopped half-way: locked "
            f"{UNFINISHED!r}); nothing runs there: check it, then remove it "
            f"({shlex.join(['git', 'worktree', 'remove', '-f', '-f', str(path)])}); its branch stays")


def registered(repo: Path) -> list[Registered]:
    """`git worktree list --porcelain` of the main repository (the main worktree first)."""
    out: list[Registered] = []
    for block in git(repo, "worktree", "list", "--porcelain", "-z").split("\0\0"):
        fields = [f for f in block.split("\0") if f]
        if not fields:
            continue
        info = {f.split(" ", 1)[0]: (f.split(" ", 1) + [""])[1] for f in fields}
        branch = info.get("branch", "").removeprefix("refs/heads/") or None
        out.append(Registered(Path(info["worktree"]), branch, info.get("HEAD"), "prunable" in info,
                              info.get("locked")))
    return out


def refuse_unfinished(repo: Path, path: Path) -> None:
    """Raise GitFailed when `path` is a worktree of `repo` whose `git worktree add` never finished."""
    if any(r.locked == UNFINISHED and r.path.resolve() == path.resolve() for r in registered(repo)):
        raise GitFailed(unfinished(path))


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


def ensure_worktree(repo: Path, default_branch: str, base_dir: Path, path: Path, branch: str,
                    start: str | None = None) -> Path:
    """The issue's worktree on its branch, created from origin/<default> when new; reused when it exists.

    Reconciles with what is there: a registered worktree whose directory is gone
    is pruned; a local branch (or one only on the remote) is checked out as it is.
    With `start` (a sha read from the pinned url: `pinned_start`), a new branch starts
    exactly there, never at a remote-tracking ref the shared .git/config can forge.
    """
    if not inside(path, base_dir):
        raise GitFailed(f"worktree {path} is not inside worktree_base {base_dir}")
    if path.resolve() == repo.resolve():
        raise GitFailed(f"worktree {path} is the main repository")
    existing = {r.path.resolve(): r for r in registered(repo)}
    found = existing.get(path.resolve())
    if found and found.locked == UNFINISHED:
        raise GitFailed(unfinished(path))
    if found and path.is_dir():
        if found.branch != branch:
            raise GitFailed(f"worktree {path} is on {found.branch or 'a detached HEAD'}, expected {branch}")
        return path
    if found:
        git(repo, "worktree", "prune")
    if path.exists():
        raise GitFailed(f"{path} exists but is not a registered worktree of {repo}; move it away")
    fetch_origin(repo)
    base_dir.mkdir(parents=True, exist_ok=True)
    if ok(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}"):
        git(repo, "worktree", "add", "-q", str(path), branch)
    elif start is not None:
        if not ok(repo, "cat-file", "-e", f"{start}^{{commit}}"):
            raise GitFailed(f"commit {start[:12]} (where the pinned remote's {branch} or {default_branch} is) is "
                            f"not in {repo} after fetching origin: does origin still fetch from the pinned url?")
        git(repo, "worktree", "add", "-q", "--no-track", "-b", branch, str(path), start)
    elif ok(repo, "rev-parse", "--verify", "-q", f"refs/remotes/origin/{branch}"):
        git(repo, "worktree", "add", "-q", "--no-track", "-b", branch, str(path), f"origin/{branch}")
    else:
        git(repo, "worktree", "add", "-q", "--no-track", "-b", branch, str(path), f"origin/{default_branch}")
    return path


def fetch_origin(path: Path, prune: bool = False) -> None:
    """Fetch origin's branches into refs/remotes/origin/ only: an explicit refspec and an empty --refmap, so a
    configured `remote.origin.fetch` (an agent's or a user's `+refs/heads/*:refs/heads/*`) can neither move
    nor, with --prune, delete a local branch; no tags (`remote.origin.tagOpt=--tags` fails the whole fetch on
    a local tag that differs from origin's)."""
    git(path, "fetch", "-q", *(["--prune"] if prune else []), "--no-tags", "--refmap=", "--no-recurse-submodules",
        "origin", "+refs/heads/*:refs/remotes/origin/*")


def is_ancestor(cwd: Path, ancestor: str, ref: str, throwaway: bool = False) -> bool:
    """Whether `ancestor` is in `ref`'s history; raises GitFailed when git cannot tell (a missing commit). With
    `throwaway`, `cwd` is a throwaway git dir (`throwaway_git_dir`): named by --git-dir (a user's
    safe.bareRepository=explicit refuses a bare repository found from the working directory), no config but its
    own."""
    named = [f"--git-dir={cwd}"] if throwaway else []
    try:
        result = subprocess.run(["git", *SAFE_GIT, *named, "merge-base", "--is-ancestor", ancestor, ref], cwd=cwd,
                                capture_output=True, text=True, errors="replace",
                                env=clean_env(PINNED_ENV if throwaway else None),
                                timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise GitFailed(f"git merge-base --is-ancestor in {cwd}: timed out after {GIT_TIMEOUT_S:.0f}s") from None
    except (FileNotFoundError, NotADirectoryError):
        raise GitFailed(f"git merge-base: directory {cwd} does not exist") from None
    if result.returncode in (0, 1):
        return result.returncode == 0
    detail = " / ".join(line.strip() for line in result.stderr.splitlines() if line.strip())[-400:]
    raise GitFailed(f"git merge-base --is-ancestor {ancestor[:12]} {ref} in {cwd}: {detail or 'failed'}")


def branch_head(worktree: Path, branch: str) -> str | None:
    out = git(worktree, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False).strip()
    return out or None


def commits_since(worktree: Path, base: str, branch: str) -> int:
    out = git(worktree, "rev-list", "--count", f"{base}..refs/heads/{branch}", check=False).strip()
    return int(out) if out.isdigit() else 0


def porcelain(worktree: Path) -> str:
    """Uncommitted and untracked changes (empty: clean)."""
    return git(worktree, "status", "--porcelain", "--untracked-files=all")


def pinned_settings(repo: Path) -> dict[str, list[str]]:
    """The values of PINNED_SETTINGS that git would use in `repo` now (system, global and local config)."""
    found = {}
    for key in PINNED_SETTINGS:
        values = git(repo, "config", "--get-all", key, check=False).splitlines()
        if values:
            found[key] = values
    return found


def user_settings(repo: Path | None = None) -> dict[str, list[str]]:
    """The values of PINNED_SETTINGS in the user's config alone (system, then global, with the files they include,
    as git reads them: `--includes`; read in `repo` when given, so an `includeIf "gitdir:..."` matches as it does
    there): no repository's own config, which an agent may have edited since the run began."""
    where = Path("/")
    if repo is not None and ok(repo, "rev-parse", "--git-dir"):
        where = repo
    found = {}
    for key in PINNED_SETTINGS:
        values = [v for scope in ("--system", "--global")
                  for v in git(where, "config", scope, "--includes", "--get-all", key, check=False).splitlines()]
        if values:
            found[key] = values
    return found


def push_url(repo: Path) -> str:
    """Where a push to origin goes now (url, pushurl and insteadOf rewrites applied): what a pin records."""
    return git(repo, "remote", "get-url", "--push", "origin").strip()


# A pinned push reads no git config but its own: no system or global file (an agent can write ~/.gitconfig),
# and it runs in a throwaway bare repository whose objects are the real one's (alternates), so no
# url.*.insteadOf, pushInsteadOf, pushurl, core.sshCommand or include in the shared .git/config applies.
PINNED_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_SYSTEM": os.devnull, "GIT_CONFIG_GLOBAL": os.devnull}
# How to reach and log in to the remote, taken with the pin (before any agent ran) and given to pinned gits.
PINNED_SETTINGS = ("core.sshCommand", "credential.helper", "credential.useHttpPath", "http.proxy", "http.sslCAInfo")
# Failures worth another try: the network, not the remote's answer. Anything else will not change by itself.
NETWORK_ERROR = re.compile(
    r"could not resolve (host|hostname)|name or service not known|temporary failure in name resolution|"
    r"connection refused|connection timed out|operation timed out|timed out after|connection reset|"
    r"network is unreachable|no route to host|remote end hung up|early eof|failed to connect|"
    r"returned error: 50[234]", re.IGNORECASE)
LASTING_ERROR = re.compile(
    r"\[(remote )?rejected\]|non-fast-forward|fetch first|permission denied|does not appear to be a git repository|"
    r"repository not found|authentication failed|access denied|hook declined", re.IGNORECASE)


def is_network_error(text: str) -> bool:
    """Whether git's complaint is a network failure that a later try may not meet.

    >>> is_network_error("ssh: connect to host example.com port 22: Connection refused")
    True
    >>> is_network_error("fatal: unable to access 'https://x/': Could not resolve host: x")
    True
    >>> is_network_error("fatal: the remote end hung up unexpectedly")
    True
    >>> is_network_error("! [rejected] feature/issue-1 (non-fast-forward)")
    False
    >>> is_network_error("! [remote rejected] b -> b (pre-receive hook declined)")
    False
    >>> is_network_error("Permission denied (publickey). fatal: the remote end hung up unexpectedly")
    False
    >>> is_network_error("fatal: '/srv/gone.git' does not appear to be a git repository")
    False
    """
    return NETWORK_ERROR.search(text) is not None and LASTING_ERROR.search(text) is None


class PushFailed(GitFailed):
    """A pinned push or its check failed; `retry` says whether another cycle may succeed (a network error)."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@contextmanager
def throwaway_git_dir(repo: Path | None, settings: dict[str, list[str]] | None = None) -> Iterator[Path]:
    """A throwaway bare repository with our config only (plus the pin's `settings`); it reads `repo`'s objects
    when one is given."""
    with tempfile.TemporaryDirectory(prefix="orchestrator-push-") as tmp:
        shim = Path(tmp) / "pinned.git"
        (shim / "objects" / "info").mkdir(parents=True)
        (shim / "refs").mkdir()
        (shim / "HEAD").write_text("ref: refs/heads/unused\n")
        config = "[core]\n\trepositoryformatversion = 0\n\tbare = true\n"
        if repo is not None:
            common = Path(git(repo, "rev-parse", "--path-format=absolute", "--git-common-dir").strip())
            if git(repo, "rev-parse", "--show-object-format").strip() == "sha256":
                config = "[core]\n\trepositoryformatversion = 1\n\tbare = true\n[extensions]\n\tobjectformat = sha256\n"
            (shim / "objects" / "info" / "alternates").write_text(f"{common / 'objects'}\n")
        (shim / "config").write_text(config)
        for key, values in (settings or {}).items():
            for value in values:
                git(shim, "config", "--file", str(shim / "config"), "--add", key, value, env=PINNED_ENV)
        yield shim


@contextmanager
def _push_failures(what: str) -> Iterator[None]:
    """Everything but PushFailed as PushFailed: the repository itself (gone, not one) will not come back by
    itself; the temporary directory (a full disk) may next cycle."""
    try:
        yield
    except PushFailed:
        raise
    except GitFailed as err:
        raise PushFailed(str(err), retry=False) from None
    except OSError as err:
        raise PushFailed(f"cannot prepare {what}: {err}", retry=True) from None


def git_in_group(cwd: Path | str, *args: str, timeout: float | None = None,
                 env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Run git as a lib.runner step: a process group of its own, killed whole with what it started (a hung ssh,
    a credential helper) at `timeout`, at a stop, or by the watchdog if we are killed outright; never left
    holding our pipes (`timeout` None: GIT_TIMEOUT_S). Returns (exit code, None when it timed out; its stdout
    and stderr, interleaved). Not started (the run is being stopped, no git, no such directory): PushFailed,
    `retry` set, as after a timeout."""
    timeout = GIT_TIMEOUT_S if timeout is None else timeout
    output = io.BytesIO()
    try:
        result = runner.run_in_group(["git", *SAFE_GIT, *args], Path(cwd), output, max(0.1, timeout),
                                     env=clean_env(env), grace=1.0)
    except (runner.Stopping, OSError) as err:
        raise PushFailed(f"git {clip(' '.join(args), 200)} not started: {err}", retry=True) from None
    text = output.getvalue().decode("utf-8", "replace")
    return (None, text) if result.timed_out else (result.exit_code, text)


def in_throwaway(shim: Path, *args: str, check: bool = True) -> str:
    """A local git read in a throwaway git dir (`throwaway_git_dir`): named by --git-dir (never found from the
    working directory, which a user's safe.bareRepository=explicit refuses for a bare repository), reading no
    config but its own."""
    return git(shim, f"--git-dir={shim}", *args, check=check, env=PINNED_ENV)


def run_in_throwaway(shim: Path, what: str, *args: str, timeout: float | None = None) -> str:
    """Run git in a throwaway git dir (`throwaway_git_dir`) reading no config but its own, as a lib.runner step
    (git_in_group); raise PushFailed (retry only on a network error or a timeout) when it fails. Its output
    is stdout and stderr interleaved: readers take only the lines they look for."""
    timeout = GIT_TIMEOUT_S if timeout is None else timeout
    code, out = git_in_group(shim, f"--git-dir={shim}", *args, timeout=timeout, env=PINNED_ENV)
    if code is None:
        raise PushFailed(f"{what}: timed out after {timeout:.0f}s", retry=True)
    if code != 0:
        said = [line.strip() for line in out.splitlines()
                if line.strip() and not line.startswith(("hint:", "To ", "Done"))]
        detail = clip(" / ".join(said), 400) or f"exit {code}"
        raise PushFailed(f"{what}: {detail}", retry=is_network_error(detail))
    return out


def _remote_shas(shim: Path, url: str, *branches: str, timeout: float | None = None) -> dict[str, str]:
    """branch -> commit at `url`, for those of `branches` it has (one ls-remote, killed after `timeout` seconds)."""
    refs = {f"refs/heads/{b}": b for b in branches}
    found = {}
    for line in run_in_throwaway(shim, f"ls-remote {clip(url)}", "ls-remote", "--", url, *refs,
                                 timeout=timeout).splitlines():
        sha, _, name = line.partition("\t")
        if name in refs:  # a pattern also matches refs/heads/x/refs/heads/<branch>: only exact names count
            found[refs[name]] = sha
    return found


def _remote_sha(shim: Path, url: str, branch: str) -> str | None:
    return _remote_shas(shim, url, branch).get(branch)


def pinned_start(url: str, default_branch: str, branch: str, settings: dict[str, list[str]] | None = None) -> str:
    """Where a new issue branch starts: the pinned url's `branch` if it has one, else its default branch."""
    with _push_failures(f"the start of {branch}"), throwaway_git_dir(None, settings) as shim:
        heads = _remote_shas(shim, url, branch, default_branch)
    found = heads.get(branch) or heads.get(default_branch)
    if found is None:
        raise PushFailed(f"{clip(url)} has neither {branch} nor {default_branch}", retry=False)
    return found


def remote_head(url: str, branch: str, settings: dict[str, list[str]] | None = None,
                timeout: float | None = None) -> str | None:
    """The branch's commit at `url`, read with no git config but the pin's settings; None when absent. The
    ls-remote is a lib.runner step killed with what it started (a hung ssh) after `timeout` seconds (None:
    GIT_TIMEOUT_S); PushFailed when the url could not be read (`retry` on a network error or a timeout)."""
    with _push_failures(f"reading {branch}"), throwaway_git_dir(None, settings) as shim:
        return _remote_shas(shim, url, branch, timeout=None if timeout is None else max(0.1, timeout)).get(branch)


def unpushed(path: Path, url: str, settings: dict[str, list[str]] | None = None) -> int:
    """Commits of HEAD in `path` that no branch at `url` holds, the url read as pushes read it. A branch
    commit we do not have here counts for nothing, so in doubt more commits count as unpushed."""
    with _push_failures(f"the check of {path}"), throwaway_git_dir(None, settings) as shim:
        listed = run_in_throwaway(shim, f"ls-remote {clip(url)}", "ls-remote", "--heads", "--", url)
        shas = [found.group(1) for line in listed.splitlines()
                if (found := re.fullmatch(r"([0-9a-f]{40}|[0-9a-f]{64})\trefs/heads/.+", line))]
        count = git(path, "rev-list", "--count", "--ignore-missing", "HEAD", "--not", *shas).strip()
    return int(count)


def push_pinned(repo: Path, branch: str, url: str, settings: dict[str, list[str]] | None = None) -> tuple[str, bool]:
    """Push exactly the local branch's commit to `url`'s refs/heads/<branch> (never forced, no config read),
    then check that `url` has it. Returns (sha, whether a push was needed); raises PushFailed."""
    with _push_failures(f"the push of {branch}"):
        sha = branch_head(repo, branch)
        if sha is None:
            raise PushFailed(f"branch {branch} is gone from {repo}", retry=False)
        with throwaway_git_dir(repo, settings) as shim:
            if _remote_sha(shim, url, branch) == sha:
                return sha, False  # already there (a resumed monitor): nothing is pushed twice
            try:
                run_in_throwaway(shim, f"push to {clip(url)}", "push", "--porcelain", "--no-verify", "--", url,
                            f"{sha}:refs/heads/{branch}")
            except PushFailed:
                # A push racing ours (a killed monitor's, still running) can land the very commit while ours
                # is refused: only a url without it makes this a failure.
                if _remote_sha(shim, url, branch) != sha:
                    raise
            there = _remote_sha(shim, url, branch)
    if there != sha:
        raise PushFailed(f"pushed {sha[:12]} to {clip(url)}, but its {branch} is {there or 'missing'}", retry=False)
    return sha, True


def continuation_facts(worktree: Path, base_branch: str, branch: str) -> tuple[str, str]:
    """Commits so far and the diff stat against the base branch, for a restart's prompt."""
    log = git(worktree, "log", "--oneline", "-n", "20", f"origin/{base_branch}..refs/heads/{branch}", check=False)
    stat = git(worktree, "diff", "--stat", f"origin/{base_branch}", check=False)
    return log.strip(), stat.strip()
