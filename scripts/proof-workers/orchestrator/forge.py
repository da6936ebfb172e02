"""Pull requests on a forge through its CLI (gh for GitHub, glab for GitLab): open or adopt, checks, review, merge.

Every call is an argv (no shell text), in a process group of its own, killed at its timeout, with an env
that cannot point the CLI at another repository (GH_REPO, GIT_DIR, ...). Results are read from the CLIs'
JSON forms, never from an exit code alone (`gh pr checks` exits 8 while checks are pending, 1 when one
failed). Each failure becomes one `ForgeError` line.

Over 500 lines, one job: the same operations for two CLIs, each answer's shape checked.
"""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from lib.errors import OrchestratorError, clip
from orchestrator.worktrees import clean_env

CALL_TIMEOUT_S = 60.0
MAX_OUTPUT = 4 * 1024 * 1024  # a CLI's output kept (failed logs can be huge): the end is what matters
# What would make gh or glab act on another repository or host than the one we name, or prompt.
FORGE_ENV = ("GH_REPO", "GH_HOST", "GITLAB_REPO", "GITLAB_HOST", "GITLAB_URI", "GL_HOST", "BROWSER", "GH_BROWSER")
INSTALL_HINT = {"github": "install the GitHub CLI (https://cli.github.com) and run `gh auth login`",
                "gitlab": "install the GitLab CLI (https://gitlab.com/gitlab-org/cli) and run `glab auth login`"}
LOGIN_HINT = {"github": "run `gh auth login`", "gitlab": "run `glab auth login`"}
BODY_LIMIT = 60000  # characters of a PR body passed as one argv word
NOTES_PAGE, NOTES_PAGES = 100, 10  # glab lists an MR's notes oldest first, a page at a time: the newest are last
# Where a GitHub PR stands in a merge queue, or whether auto-merge is set: GraphQL's PullRequest fields, asked through
# `gh api graphql` (`gh pr view --json` offers no merge queue field in any gh: gh reads isInMergeQueue only inside
# `gh pr merge`; autoMergeRequest only from gh 2.29). mergeQueueEntry is null unless the PR is in a queue, so it says
# what isInMergeQueue would, and where: isInMergeQueue is asked only of a schema without mergeQueueEntry. A server
# whose schema lacks one (an older GitHub Enterprise) lacks the feature: it is asked again without it, and so from
# then on (`_SCHEMA_LACKS`).
QUEUE_GRAPHQL = {"mergeQueueEntry": "mergeQueueEntry { state position }",
                 "autoMergeRequest": "autoMergeRequest { enabledAt }", "isInMergeQueue": "isInMergeQueue"}
QUEUE_QUERY = ("query($owner: String!, $name: String!, $number: Int!) { repository(owner: $owner, name: $name) { "
               "pullRequest(number: $number) { %s } } }")
_UNDEFINED_FIELD = re.compile(r"Field '(\w+)' doesn't exist on type 'PullRequest'")
# The QUEUE_GRAPHQL fields each server's schema was found to lack, for this process's life (a monitor polling an
# older GitHub Enterprise asks once a poll, not twice; a merge asks the whole question again: `recheck`). Keyed by
# host, or by the repository when the pinned url names none (gh then picks the host).
_SCHEMA_LACKS: dict[str, frozenset[str]] = {}


class ForgeError(OrchestratorError):
    """A gh/glab call failed: one line naming the call and what the CLI said; `transient` when it looks like the
    network or the forge's servers failed (the same call may well work a minute later)."""

    exit_code = 1

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class MergeUnconfirmed(ForgeError):
    """The forge accepted a merge call, but the view that would show what it did failed (the network, a hung or
    garbled answer), or shows the PR still open where the forge would not say whether it waits in a merge queue (its
    GraphQL refused the question): neither a failed merge nor a merge, and never "queued"; the polls tell."""


# What gh and glab (Go's net/http, the forge's gateways) print when the network or the servers failed, as opposed
# to a refusal: gh prints "error connecting to HOST" + "check your internet connection ..." on a DNS failure (exit
# 1), Go's dialer "dial tcp ...: connection refused", gh's HTTP errors "HTTP 502: Bad Gateway (URL)"; GitHub's rate
# limits (primary and secondary) pass too.
_TRANSIENT = re.compile(
    r"error connecting to |check your internet connection|connection (refused|reset|timed out)|no such host|"
    r"network is unreachable|i/o timeout|tls handshake timeout|unexpected eof|broken pipe|"
    r"temporary failure in name resolution|context deadline exceeded|timeout awaiting response headers|"
    r"\bhttp (502|503|504)\b|\b(502|503|504):? (bad gateway|service unavailable|gateway time-?out)|"
    r"something went wrong while executing your query|rate limit (already )?exceeded|secondary rate limit", re.I)


def looks_transient(text: str) -> bool:
    r"""Whether a CLI's error text says the network or the forge's servers failed (worth another try later).

    >>> looks_transient("error connecting to api.github.com\ncheck your internet connection or https://...")
    True
    >>> looks_transient('Post "https://api.github.com/graphql": dial tcp 140.82.112.6:443: connect: connection refused')
    True
    >>> looks_transient("HTTP 502: Bad Gateway (https://api.github.com/graphql)")
    True
    >>> looks_transient("POST https://gitlab.example.com/api/v4/projects/1/merge_requests: 503 Service Unavailable")
    True
    >>> looks_transient("gh: API rate limit exceeded for user ID 1234.")
    True
    >>> looks_transient("GraphQL: Resource not accessible by integration (createPullRequest)")
    False
    >>> looks_transient("pull request create failed: GraphQL: Head sha can't be blank (createPullRequest)")
    False
    >>> looks_transient("HTTP 404: Not Found (https://api.github.com/repos/org/app)")
    False
    """
    return bool(_TRANSIENT.search(text))


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    state: str  # open | merged | closed


@dataclass(frozen=True)
class Observation:
    """One poll of a PR: its state, head, checks and review (what decide reads, journalled as JSON)."""

    number: int
    url: str
    state: str  # open | merged | closed
    head: str = ""  # the commit the forge sees as the PR's head ("" unknown)
    checks: str = "none"  # pending | passing | failing | none (no check reported)
    failed: tuple[tuple[str, str], ...] = ()  # (check name, link) of each failed check
    review: str = ""  # approved | changes_requested | required | ""
    comments: tuple[str, ...] = ()  # review comments, "author: text", newest last
    review_id: str = ""  # what identifies this review round (a new one starts another address_review)
    base: str = ""  # the branch it would merge into ("" unknown); a human may retarget it
    # In a merge queue, or auto-merge set (GitHub's isInMergeQueue / mergeQueueEntry / autoMergeRequest; glab's
    # merge_when_pipeline_succeeds): the forge merges it later unless its checks fail or someone dequeues it. None:
    # not known, `queue_doubt` says why (the forge refused the question, or it was not asked).
    queued: bool | None = False
    queue_doubt: str = ""
    queue_entry: str = ""  # where it stands in the queue, in words ("position 2, awaiting checks"; "" none or unknown)


@dataclass(frozen=True)
class ForgeRepo:
    """Where calls go: the platform, and host + path of the repository when the pinned url names one."""

    platform: str
    host: str = ""
    path: str = ""  # owner/name (GitHub), group/sub/name (GitLab); "" when the url is a local path

    @property
    def named(self) -> str:
        """The --repo / -R value, or "" (the CLI reads cwd's remote): gh takes [HOST/]OWNER/REPO; glab reads
        HOST/GROUP/REPO as a group path, so it gets the full URL (which it accepts)."""
        if not self.path:
            return ""
        return f"https://{self.host}/{self.path}" if self.platform == "gitlab" else f"{self.host}/{self.path}"


def parse_remote(url: str) -> tuple[str, str]:
    """(host, path without .git) of a forge url; ("", "") for a local path or a url naming no repository.

    >>> parse_remote("git@github.com:org/app.git")
    ('github.com', 'org/app')
    >>> parse_remote("https://gitlab.example.com/group/sub/app")
    ('gitlab.example.com', 'group/sub/app')
    >>> parse_remote("ssh://git@github.com:22/org/app.git")
    ('github.com', 'org/app')
    >>> parse_remote("/srv/git/app.git")
    ('', '')
    """
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme == "file":
            return "", ""
        host, path = parts.hostname or "", parts.path
    elif re.match(r"^[^/:]+:", url) and ":" in url and not url.startswith("/"):
        where, path = url.split(":", 1)
        host = where.rsplit("@", 1)[-1]
    else:
        return "", ""
    path = path.strip("/").removesuffix(".git")
    if not host or path.count("/") < 1 or any(not p or p.startswith(".") for p in path.split("/")):
        return "", ""
    return host.lower(), path


def platform_for(configured: str, url: str) -> str:
    """The config's `platform`; else github for github.com, gitlab otherwise (a GitLab host, and the code's
    default)."""
    if configured:
        return configured
    host, _ = parse_remote(url)
    return "github" if host == "github.com" else "gitlab"


def forge_repo(configured: str, url: str) -> ForgeRepo:
    host, path = parse_remote(url)
    return ForgeRepo(platform_for(configured, url), host, path)


def forge_env() -> dict[str, str]:
    env = {k: v for k, v in clean_env().items() if k not in FORGE_ENV}
    env.update({"GH_PROMPT_DISABLED": "1", "GH_NO_UPDATE_NOTIFIER": "1", "NO_COLOR": "1", "GH_PAGER": "cat",
                "PAGER": "cat", "GLAB_PAGER": "cat", "NO_PROMPT": "1", "GLAB_CHECK_UPDATE": "false"})
    return env


@dataclass(frozen=True)
class Called:
    code: int
    out: str
    err: str


def _drain(stream: Any, tail: bytearray) -> None:
    """Read a pipe to its end keeping only its last MAX_OUTPUT bytes (a 100 MB log never sits in memory)."""
    with stream:
        while chunk := stream.read1(1 << 16):
            tail += chunk
            if len(tail) > 2 * MAX_OUTPUT:
                del tail[:-MAX_OUTPUT]


def run_cli(tool: str, args: list[str], cwd: Path, timeout: float = CALL_TIMEOUT_S) -> Called:
    """One gh/glab call, bounded: its own process group, killed (with what it started) at `timeout`; of its
    output only the tail is kept."""
    what = f"{tool} {' '.join(a for a in args[:2])}"
    try:
        proc = subprocess.Popen([tool, *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=forge_env(), start_new_session=True)
    except FileNotFoundError:
        raise ForgeError(f"{tool} is not installed (not on PATH)") from None
    except OSError as err:
        raise ForgeError(f"{what}: cannot start: {err}", transient=err.errno in (errno.EAGAIN, errno.ENOMEM)) from None
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    readers = [threading.Thread(target=_drain, args=(pipe, tail), daemon=True)
               for pipe, tail in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    timed_out = True
    try:
        proc.wait(timeout=timeout)
        for reader in readers:  # what it started may still hold the pipes: no longer than the timeout
            reader.join(max(0.0, deadline - time.monotonic()))
        timed_out = any(reader.is_alive() for reader in readers)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if timed_out:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if timed_out:
        raise ForgeError(f"{what}: timed out after {timeout:.0f}s", transient=True)
    return Called(proc.returncode, bytes(out[-MAX_OUTPUT:]).decode("utf-8", "replace"),
                  bytes(err[-MAX_OUTPUT:]).decode("utf-8", "replace"))


def _said(called: Called) -> str:
    lines = [plain(line).strip() for line in (called.err + "\n" + called.out).splitlines() if line.strip()]
    return clip(" / ".join(lines), 300) or f"exit {called.code}"


def _transient(called: Called) -> bool:
    return looks_transient(plain(called.err + "\n" + called.out, lines=True))


def _failed(what: str, called: Called) -> ForgeError:
    """A call's failure as one line; transient when what the CLI said looks like the network or the servers."""
    return ForgeError(f"{what}: {_said(called)}", transient=_transient(called))


def _json(what: str, called: Called) -> Any:
    try:
        return json.loads(called.out)
    except (ValueError, RecursionError):
        raise ForgeError(f"{what}: did not print JSON (exit {called.code}): {_said(called)}",
                         transient=_transient(called)) from None


class Forge:
    """One repository on one forge; `cwd` is the local repository (the CLIs read its remote when the pinned
    url names no forge repository)."""

    tool = ""

    def __init__(self, repo: ForgeRepo, cwd: Path, timeout: float = CALL_TIMEOUT_S,
                 budget: float | None = None) -> None:
        self.repo = repo
        self.cwd = cwd
        self.timeout = timeout
        # All calls of this object end by then (a step of many calls never waits each call's whole timeout).
        self.deadline = time.monotonic() + budget if budget is not None else None

    def call(self, args: list[str], named: bool = True) -> Called:
        extra = [self.repo_flag, self.repo.named] if named and self.repo.named else []
        timeout = self.timeout
        if self.deadline is not None:
            timeout = min(timeout, max(1.0, self.deadline - time.monotonic()))
        return run_cli(self.tool, [*args, *extra], self.cwd, timeout)

    def checked(self, args: list[str], named: bool = True) -> Called:
        called = self.call(args, named)
        if called.code != 0:
            raise _failed(f"{self.tool} {' '.join(args[:2])}", called)
        return called

    repo_flag = "--repo"

    # The interface; each platform implements the underscored forms. JSON of another shape than documented
    # (a field missing, a list for an object) is one ForgeError, never a traceback in the monitor.
    def auth(self) -> None:
        """Whether the CLI is logged in (for this host): both CLIs take the same `auth status [--hostname H]`."""
        args = ["auth", "status"] + (["--hostname", self.repo.host] if self.repo.host else [])
        self.checked(args, named=False)

    def create(self, head: str, base: str, title: str, body: str) -> None:
        raise NotImplementedError

    def failed_logs(self, observation: Observation, lines: int = 60) -> str:
        raise NotImplementedError

    def find(self, head: str, base: str = "") -> PullRequest | None:
        """The PR from this repository's `head` into `base` ("" any): a fork's PR from a branch of the same
        name, or one into another branch, is never ours (adopting it would merge someone else's code, or into
        the wrong branch). An open one first, then the newest."""
        with _shape(f"{self.tool}: the PR list"):
            return self._find(head, base)

    def observe(self, number: int, queue: bool = True, recheck: bool = False) -> Observation:
        """One poll of the PR; `queue`: whether to learn if it waits in a merge queue or for auto-merge (GitHub: one
        more call; not asked, `queued` is None); `recheck`: ask that whatever the server was found to lack before
        (a merge's view: a server upgraded since must not make a queued PR look left open)."""
        with _shape(f"{self.tool}: PR {number}"):
            return self._observe(number, queue, recheck)

    def merge(self, number: int, head: str = "") -> str:
        """Merge the PR if its head is still `head` (the commit whose checks were judged; "" any), and see where it
        stands: "merged", or "queued" when the CLI exited 0 having only queued it (a merge queue, glab's auto-merge
        while a pipeline runs: the forge shows it queued and merges it later). A PR still open in no queue, closed
        meanwhile, or an error said raises ForgeError, so a PR is never recorded merged before it is. A merge
        accepted whose view then fails, or leaves the PR open where the CLI cannot show a queue (queued None),
        raises MergeUnconfirmed (never counted failed, nor merged, nor queued)."""
        with _shape(f"{self.tool}: merging PR {number}"):
            try:
                self._merge(number, head)
            except ForgeError:
                # Refused: maybe a PR already queued on a server upgraded since it was found to lack merge
                # queues (an older gh refuses to merge a queued PR). The next poll asks the whole question again.
                _SCHEMA_LACKS.pop(self.repo.host or str(self.cwd), None)
                raise
        try:
            after = self.observe(number, recheck=True)
        except ForgeError as err:
            raise MergeUnconfirmed(f"{self.tool}: PR {number}: the merge was accepted, what it did is not seen yet: "
                                   f"{err}", transient=True) from None
        if after.state == "merged":
            return "merged"
        if after.state == "open" and after.queued:
            return "queued"
        if after.state == "open" and after.queued is None:
            raise MergeUnconfirmed(f"{self.tool}: PR {number} is still open after the merge was accepted, and the "
                                   f"forge would not say whether it waits in a merge queue ({after.queue_doubt}): "
                                   "not merged, or not yet")
        raise ForgeError(f"{self.tool}: PR {number} is still {after.state} after the merge was accepted" +
                         (" and in no merge queue" if after.state == "open" else ""))

    def _find(self, head: str, base: str) -> PullRequest | None:
        raise NotImplementedError

    def _observe(self, number: int, queue: bool, recheck: bool) -> Observation:
        raise NotImplementedError

    def _merge(self, number: int, head: str) -> None:
        raise NotImplementedError

    def find_or_create(self, head: str, base: str, title: str, body: str) -> tuple[PullRequest, bool]:
        """The PR of `head` (an open one is adopted, never duplicated; else a new one); (pr, created)."""
        found = self.find(head, base)
        if found is not None and found.state == "open":
            return found, False
        self.create(head, base, title, body)
        made = self.find(head, base)
        if made is None or made.state != "open":
            # Listed later (the forge's list lags its writes): transient, so the next try adopts it, never a second.
            raise ForgeError(f"{self.tool}: the pull request for {head} was created but cannot be found",
                             transient=True)
        return made, True

    def auth_problem(self) -> str | None:
        """None when the CLI is installed and logged in; else one line naming the fix."""
        try:
            self.auth()
        except ForgeError as err:
            hint = INSTALL_HINT if "not installed" in str(err) else LOGIN_HINT
            return f"{err}; {hint[self.repo.platform]}"
        return None


@contextmanager
def _shape(what: str) -> Iterator[None]:
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise ForgeError(f"{what}: unexpected JSON ({clip(f'{type(err).__name__}: {err}')})") from None


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")  # colour and cursor sequences (CI logs are full of them)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: Any, lines: bool = False) -> str:
    r"""A forge's text as it may reach a terminal or a prompt: colour sequences dropped, every other control
    character (ESC, BEL, CR; newline and tab too unless `lines`) shown as U+FFFD.

    >>> plain("te\x1b[31mst\x1b]0;x\x07")
    'test�]0;x�'
    >>> plain("a\nb\r", lines=True)
    'a\nb�'
    """
    text = _ANSI.sub("", str(text))
    return _CONTROL.sub("\ufffd", text) if lines else re.sub(r"[\n\t]", "\ufffd", _CONTROL.sub("\ufffd", text))


def _tail_lines(text: str, lines: int) -> str:
    return "\n".join(clip(plain(line), 400) for line in text.splitlines()[-lines:])


class GitHub(Forge):
    tool = "gh"

    def _find(self, head: str, base: str) -> PullRequest | None:
        called = self.checked(["pr", "list", "--head", head, "--state", "all", "--json",
                               "number,url,state,headRefName,baseRefName,isCrossRepository"])
        found = [p for p in _json("gh pr list", called) if isinstance(p, dict) and p.get("headRefName") == head
                 and not p["isCrossRepository"] and (not base or p.get("baseRefName") == base)]
        if not found:
            return None
        best = sorted(found, key=lambda p: (p.get("state") != "OPEN", -int(p.get("number") or 0)))[0]
        return PullRequest(int(best["number"]), plain(best["url"]), _pr_state(best["state"]))

    def create(self, head: str, base: str, title: str, body: str) -> None:
        # --flag=VALUE: a title or body that starts with "-" is never read as a flag.
        self.checked(["pr", "create", f"--head={head}", f"--base={base}", f"--title={title or head}",
                      f"--body={body[:BODY_LIMIT]}"])

    def _observe(self, number: int, queue: bool, recheck: bool) -> Observation:
        # The queue first: a PR the view then shows open was open when the queue was read (one merged in between is
        # shown merged, never "open and left the queue").
        queued, doubt, entry = self._queue_state(number, recheck) if queue else (None, "not asked", "")
        called = self.call(["pr", "view", str(number), "--json",
                            "number,url,state,headRefOid,baseRefName,reviewDecision,reviews"])
        if called.code != 0:
            raise _failed("gh pr view", called)
        view = _json("gh pr view", called)
        checks = self.call(["pr", "checks", str(number), "--json", "name,state,bucket,link"])
        state, failed = "none", ()
        if checks.out.strip().startswith("["):
            rows = [r for r in _json("gh pr checks", checks) if isinstance(r, dict)]
            buckets = {str(r.get("bucket")) for r in rows}
            failed = tuple((plain(r.get("name")), plain(r.get("link") or "")) for r in rows
                           if r.get("bucket") in ("fail", "cancel"))
            state = ("failing" if failed else "pending" if "pending" in buckets else
                     "passing" if rows else "none")
        elif "no checks reported" not in checks.err:
            raise _failed("gh pr checks", checks)
        reviews = [r for r in view.get("reviews") or [] if isinstance(r, dict)]
        asked = [r for r in reviews if r.get("state") == "CHANGES_REQUESTED"]
        comments = tuple(plain(f"{(r.get('author') or {}).get('login', '?')}: {r.get('body', '')}", lines=True)
                         for r in asked if r.get("body"))
        decision = {"APPROVED": "approved", "CHANGES_REQUESTED": "changes_requested",
                    "REVIEW_REQUIRED": "required"}.get(str(view.get("reviewDecision") or ""), "")
        review_id = str(asked[-1].get("id") or asked[-1].get("submittedAt") or len(asked)) if asked else ""
        pr_state = _pr_state(view["state"])
        return Observation(int(view["number"]), plain(view["url"]), pr_state,
                           plain(view.get("headRefOid") or ""), state, failed, decision, comments,
                           plain(review_id), plain(view.get("baseRefName") or ""),
                           queued and pr_state == "open" if queued is not None else None, doubt, entry)

    def _queue_state(self, number: int, recheck: bool = False) -> tuple[bool | None, str, str]:
        """(queued, doubt, entry) of PR `number` from GitHub's GraphQL: in a merge queue or with auto-merge set
        (True / False), or None with why not known (the forge refused the question). A field the server's schema
        lacks (GitHub Enterprise before merge queues) is a feature it lacks: asked again without it, and not asked
        of that server again unless `recheck`. A failure of the network or the servers raises ForgeError (the poll
        is tried again)."""
        owner, _, name = self.repo.path.partition("/")
        # No forge path in the pinned url (a local remote): gh fills {owner} and {repo} from cwd's repository.
        where = ["-f", f"owner={owner}", "-f", f"name={name}"] if owner and name else \
            ["-F", "owner={owner}", "-F", "name={repo}"]
        server = self.repo.host or str(self.cwd)
        lacks = set() if recheck else set(_SCHEMA_LACKS.get(server, ()))
        while fields := _queue_fields(lacks):
            called = self.call(["api", "graphql", *(["--hostname", self.repo.host] if self.repo.host else []), *where,
                                "-F", f"number={number}", "-f",
                                "query=" + QUEUE_QUERY % " ".join(QUEUE_GRAPHQL[f] for f in fields)], named=False)
            lacking = set(_UNDEFINED_FIELD.findall(called.err + "\n" + called.out)) & set(fields)
            if called.code != 0 and lacking:
                lacks |= lacking
                _SCHEMA_LACKS[server] = frozenset(lacks)
                continue
            if called.code == 0 and recheck:  # asked in full: what the schema lacks now is known afresh
                _SCHEMA_LACKS[server] = frozenset(lacks)
            if called.code != 0 and _transient(called):
                raise _failed("gh api graphql", called)
            if called.code != 0:  # gh prints the response's body too: its "gh: ..." line says it
                told = Called(called.code, "", called.err) if called.err.strip() else called
                return None, f"gh api graphql: {_said(told)}", ""
            try:
                pr = json.loads(called.out)["data"]["repository"]["pullRequest"]
                entry = pr.get("mergeQueueEntry")
                queued = isinstance(entry, dict) or pr.get("isInMergeQueue") is True or \
                    isinstance(pr.get("autoMergeRequest"), dict)
            except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
                return None, f"gh api graphql: unexpected answer: {_said(called)}", ""
            words = ""
            if isinstance(entry, dict):
                words = ", ".join(w for w in (f"position {entry['position']}" if isinstance(entry.get("position"), int)
                                              else "", plain(entry.get("state") or "").lower().replace("_", " "))
                                  if w)
            return queued, "", clip(words, 80)
        return False, "", ""  # a server with none of these features: nothing merges a PR later

    def failed_logs(self, observation: Observation, lines: int = 60) -> str:
        runs = sorted({m.group(1) for _, link in observation.failed
                       if (m := re.search(r"/actions/runs/(\d+)", link))})
        out = []
        for run_id in runs[:3]:
            called = self.call(["run", "view", run_id, "--log-failed"])
            out.append(_tail_lines(called.out if called.code == 0 else f"(no log: {_said(called)})", lines))
        return "\n".join(out)

    def _merge(self, number: int, head: str) -> None:
        # Without a method gh refuses when not interactive: the first the repository allows, in GitHub's order.
        allowed = _json("gh repo view", self.checked(
            ["repo", "view", *([self.repo.named] if self.repo.named else []), "--json",
             "mergeCommitAllowed,squashMergeAllowed,rebaseMergeAllowed"], named=False))
        method = next((flag for key, flag in (("mergeCommitAllowed", "--merge"), ("squashMergeAllowed", "--squash"),
                                              ("rebaseMergeAllowed", "--rebase")) if allowed.get(key)), "--merge")
        self.checked(["pr", "merge", str(number), method, *([f"--match-head-commit={head}"] if head else [])])


class GitLab(Forge):
    tool = "glab"
    repo_flag = "-R"

    def _find(self, head: str, base: str) -> PullRequest | None:
        called = self.checked(["mr", "list", "--source-branch", head, "--all", "--output", "json"])
        found = [m for m in _json("glab mr list", called) if isinstance(m, dict) and m.get("source_branch") == head
                 and m["source_project_id"] == m["target_project_id"]
                 and (not base or m.get("target_branch") == base)]
        if not found:
            return None
        best = sorted(found, key=lambda m: (m.get("state") != "opened", -int(m.get("iid") or 0)))[0]
        return PullRequest(int(best["iid"]), plain(best["web_url"]), _mr_state(best.get("state")))

    def create(self, head: str, base: str, title: str, body: str) -> None:
        self.checked(["mr", "create", f"--source-branch={head}", f"--target-branch={base}",
                      f"--title={title or head}", f"--description={body[:BODY_LIMIT]}", "--yes"])

    def _observe(self, number: int, queue: bool, recheck: bool) -> Observation:
        view = self._view_with_notes(number)
        pipeline = view.get("head_pipeline") or {}
        status = str(pipeline.get("status") or "")
        failed: tuple[tuple[str, str], ...] = ()
        if status in ("failed", "canceled"):
            jobs = _json("glab ci get", self.checked(["ci", "get", "--pipeline-id", str(pipeline.get("id")),
                                                       "--output", "json"]))
            failed = tuple((plain(j.get("name")), f"job:{j.get('id')}") for j in jobs.get("jobs") or []
                           if isinstance(j, dict) and j.get("status") in ("failed", "canceled"))
            failed = failed or (("pipeline", f"pipeline:{pipeline.get('id')}"),)
        checks = {"success": "passing", "failed": "failing", "canceled": "failing", "": "none",
                  "skipped": "passing"}.get(status, "pending")
        merge_status = str(view.get("detailed_merge_status") or "")
        review = ("changes_requested" if merge_status == "requested_changes" else
                  "required" if merge_status == "not_approved" else "approved" if view.get("approved") else "")
        # Oldest first by id, whatever order the API listed them in (newest first unless asked otherwise).
        notes = sorted((n for n in view.get("Notes") or [] if isinstance(n, dict) and not n.get("system")),
                       key=lambda n: int(n.get("id") or 0))
        comments = tuple(plain(f"{(n.get('author') or {}).get('username', '?')}: {n.get('body', '')}", lines=True)
                         for n in notes)
        review_id = str(notes[-1].get("id")) if review == "changes_requested" and notes else \
            ("requested" if review == "changes_requested" else "")
        return Observation(int(view["iid"]), plain(view["web_url"]), _mr_state(view.get("state")),
                           plain(view.get("sha") or ""), checks, failed, review, comments, plain(review_id),
                           plain(view.get("target_branch") or ""), view.get("merge_when_pipeline_succeeds") is True)

    def _view_with_notes(self, number: int) -> Any:
        """The MR with every note (up to NOTES_PAGES pages): `--comments` lists them oldest first, 20 a page by
        default, so the newest review of a busy MR would be on a page never asked for."""
        view, notes = None, []
        for page in range(1, NOTES_PAGES + 1):
            doc = _json("glab mr view", self.checked(["mr", "view", str(number), "--comments", "--page", str(page),
                                                      "--per-page", str(NOTES_PAGE), "--output", "json"]))
            view = view if view is not None else doc
            got = doc.get("Notes") or []
            notes.extend(got)
            if len(got) < NOTES_PAGE:
                break
        view["Notes"] = notes
        return view

    def failed_logs(self, observation: Observation, lines: int = 60) -> str:
        out = []
        for name, link in observation.failed[:3]:
            if link.startswith("job:"):
                called = self.call(["ci", "trace", link.removeprefix("job:")])
                out.append(f"--- {name}\n" + _tail_lines(called.out if called.code == 0 else
                                                          f"(no log: {_said(called)})", lines))
        return "\n".join(out)

    def _merge(self, number: int, head: str) -> None:
        self.checked(["mr", "merge", str(number), "--yes", *([f"--sha={head}"] if head else [])])


def _queue_fields(lacks: set[str]) -> list[str]:
    """The QUEUE_GRAPHQL fields to ask of a schema that lacks `lacks`: isInMergeQueue only without mergeQueueEntry.

    >>> _queue_fields(set()), _queue_fields({"mergeQueueEntry"})
    (['mergeQueueEntry', 'autoMergeRequest'], ['autoMergeRequest', 'isInMergeQueue'])
    """
    fields = [f for f in QUEUE_GRAPHQL if f not in lacks]
    return [f for f in fields if f != "isInMergeQueue" or "mergeQueueEntry" not in fields]


def _pr_state(state: Any) -> str:
    """gh's OPEN / MERGED / CLOSED; any other answer is a ValueError (one `unexpected JSON` line), never a guess
    that it is open (a green PR in an unknown state would be completed or merged)."""
    known = {"OPEN": "open", "MERGED": "merged", "CLOSED": "closed"}
    if state not in known:
        raise ValueError(f"unknown PR state {clip(repr(state), 40)}")
    return known[state]


def _mr_state(state: Any) -> str:
    """glab's opened / merged / closed / locked (a locked MR is open); any other answer is a ValueError."""
    known = {"opened": "open", "merged": "merged", "closed": "closed", "locked": "open"}
    if state not in known:
        raise ValueError(f"unknown merge request state {clip(repr(state), 40)}")
    return known[state]


def forge_for(repo: ForgeRepo, cwd: Path, timeout: float = CALL_TIMEOUT_S, budget: float | None = None) -> Forge:
    return (GitHub if repo.platform == "github" else GitLab)(repo, cwd, timeout, budget)


def pr_body(description: str, stages: list[str]) -> str:
    """A PR's body: the issue's description and one line per stage."""
    return "\n".join([description.strip() or "(no description)", "", *(f"- {stage}: done" for stage in stages)])
