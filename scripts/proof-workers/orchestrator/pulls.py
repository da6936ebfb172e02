"""The pull-request loop's effects: open or adopt the PR, poll it when due, start fix_ci / address_review, merge.

decide() judges (orchestrator.decide._judge_pr); this module does. Where each issue's PR stands is kept in
`state/<project>/pull-requests.json` (status, dashboard, report and cleanup read it) and, while a worker
holds the issue, in its record's `pr`.

Over 500 lines, one job: each step of one PR's loop, and the one file that records where each PR stands (a
damaged one set aside, never read as "no PR").
"""
from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lib.errors import OrchestratorError, clip
from lib.statefile import UnreadableFile, locked, read_json, read_regular, set_aside, write_json
from orchestrator import forge, pins, worktrees
from orchestrator.config import Issue, IssueStatus, ProjectConfig
from orchestrator.decide import MAX_UNSEEN_POLLS, ActionKind, PrView, PrWork
from orchestrator.forge import ForgeError, Observation
from orchestrator.state import RunFiles, WorkerRecord, now_iso
from orchestrator.worker import Worker

POLL_TIMEOUT_S = 20.0  # one gh/glab call of a poll
POLL_BUDGET_S = 20.0  # polls of one cycle: past it the other due PRs are polled next cycle
STEP_BUDGET_S = 30.0  # all calls of one step (open or adopt, merge, a fix_ci stage's logs): the cycle waits no longer
MAX_MERGE_ATTEMPTS = 3
MAX_OPEN_ATTEMPTS = 3  # a PR that fails to open on the network is tried again at the next polls, this many in all
QUIET_GREEN_S = 120.0  # no check reported for this long (and two polls) on a PR that never had one: no CI there
LOG_LINES = 60
PHASES = ("pr_open", "ci_failed", "changes_requested", "merged")  # status's `state` while a PR is the work


def prs_file(state_root: Path, project: str) -> Path:
    return RunFiles(state_root / project).root / "pull-requests.json"


@dataclass(frozen=True)
class Recorded:
    """pull-requests.json as read: issue number (as text) -> {number, url, state, checks, phase, ...}, and
    `doubt`: "" when the file is whole, else why PRs may be missing from it (unreadable now, or set aside)."""

    entries: dict[str, dict[str, Any]]
    doubt: str = ""


def _shape_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("issues", {}), dict):
        return "not a pull-request document"
    if any(not isinstance(entry, dict) for entry in doc.get("issues", {}).values()):
        return "an issue's entry is not an object"
    return None


def read(state_root: Path, project: str) -> Recorded:
    """The project's recorded PRs; a damaged file (garbage, a directory, a FIFO) reads as none *with its doubt*,
    never as a plain "no PR": readers that would remove or forget something ask the forge instead. The doubt says
    exactly what ends it (nothing clears it by itself: a project that opens no PRs may never write the file)."""
    path = prs_file(state_root, project)
    force = "or remove the worktrees anyway with `cleanup --force` (their work saved on backup refs first)"
    try:
        doc = read_json(path, {})
    except UnreadableFile as err:
        problem = err.why
    else:
        problem = _shape_problem(doc)
    if problem:
        return Recorded({}, f"{path}: {problem} (set aside at the monitor's next write of a PR; until then cleanup "
                            "keeps each worktree whose PR the forge cannot rule out: look at it, then move it away "
                            f"yourself: {shlex.join(['mv', str(path), f'{path}.corrupt'])}; {force})")
    aside = doc.get("set_aside")
    doubt = (f"{path} was set aside as {clip(str(aside.get('file')), 80)} at {clip(str(aside.get('at')), 40)} "
             f"({clip(str(aside.get('why')), 120)}): PRs recorded before then are shown as the event log last "
             "told them, and cleanup keeps each worktree whose PR the forge cannot rule out; once you have looked "
             f"at {path.parent / clip(str(aside.get('file')), 80)}, remove the \"set_aside\" key from {path} "
             f"(its \"issues\" stay; nothing removes it by itself), {force}"
             ) if isinstance(aside, dict) else ""
    return Recorded(dict(doc.get("issues", {})), doubt)


def save(state_root: Path, project: str, issue: int, **fields: Any) -> str | None:
    """Update the issue's entry. A damaged file is set aside (NAME.corrupt, kept for a look) and a fresh one
    that says so is written: returns that one line (also an event), else None."""
    path = prs_file(state_root, project)
    note = None
    with locked(path):
        try:
            doc = read_json(path, {})
            problem = _shape_problem(doc)
        except UnreadableFile as err:
            problem = err.why
        if problem:
            aside = set_aside(path, keep_older=True)
            issues = _recovered(state_root, project)
            doc = {"issues": issues, "set_aside": {"file": aside.name, "why": problem, "at": now_iso(),
                                                   "recovered": len(issues)}}
            note = (f"{path}: {problem}; set aside as {aside.name}, a fresh one is written with the "
                    f"{len(issues)} PR(s) the event log names (cleanup asks the forge about each issue's branch)")
            RunFiles(state_root / project).log_event({"action": "state_set_aside", "project": project,
                                                      "file": str(path), "aside": aside.name, "why": problem})
        issues = doc.get("issues", {})
        issues[str(issue)] = {**issues.get(str(issue), {}), **fields, "updated": now_iso()}
        write_json(path, {**doc, "issues": issues})
    return note


def _recovered(state_root: Path, project: str) -> dict[str, dict[str, Any]]:
    """Each issue's PR as the project's event log last tells it (opened or adopted, merged, closed), for the fresh
    file that replaces a damaged one: number, url and state, marked `recovered`. Nothing when the log cannot be
    read (over 64 MiB, not a regular file)."""
    try:
        data = read_regular(RunFiles(state_root / project).events, 64 << 20) or b""
    except UnreadableFile:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            event = json.loads(line).get("event")
        except (ValueError, RecursionError, AttributeError):
            continue
        if not isinstance(event, dict) or not isinstance(event.get("issue"), int) or \
                isinstance(event.get("issue"), bool):
            continue
        key, action = str(event["issue"]), event.get("action")
        found = re.search(r"/(?:pull|merge_requests)/(\d+)/?$", str(event.get("url") or ""))
        if action in ("pr_opened", "pr_adopted") and found:
            out[key] = {"number": int(found.group(1)), "url": str(event["url"]), "state": "open",
                        "checks": "pending", "phase": "pr_open", "recovered": True}
        elif key in out and action == "pr_merged":
            out[key].update(state="merged", phase="merged")
        elif key in out and action == "skip" and event.get("reason") == "pr closed":
            out[key]["state"] = "closed"
    return out


def public(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """Status's `pr`: {url, number, state, checks}."""
    if not entry or not entry.get("number"):
        return None
    return {"url": entry.get("url"), "number": entry.get("number"), "state": entry.get("state"),
            "checks": entry.get("checks") if entry.get("checks") in ("pending", "passing", "failing") else "pending"}


def work_of(cfg: ProjectConfig, record: WorkerRecord) -> PrWork | None:
    """The PR loop's state as decide sees it (None: the project opens no PRs)."""
    if cfg.review.open != "pr" and not (record.pr.get("watching") or record.pr.get("in_stage")):
        return None  # (a loop already under way goes on when the config turns PRs off: never left unjudged)
    pr = record.pr
    return PrWork(watching=bool(pr.get("watching")), in_stage=bool(pr.get("in_stage")),
                  ci_fixes=int(pr.get("ci_fixes") or 0), review_rounds=int(pr.get("review_rounds") or 0),
                  head=str(pr.get("head") or ""), review_seen=str(pr.get("review_seen") or ""),
                  merge_queued=str(pr.get("merge_queued") or ""), merge_unseen=int(pr.get("merge_unseen") or 0),
                  open_failures=int(pr.get("open_failures") or 0) if pr.get("opening") else 0,
                  merge=cfg.review.merge, max_ci_fixes=cfg.review.max_ci_fixes,
                  max_review_rounds=cfg.review.max_review_rounds)


def forge_of(state_root: Path, cfg: ProjectConfig, issue: Issue, timeout: float = forge.CALL_TIMEOUT_S,
             budget: float | None = None) -> forge.Forge:
    """The issue's repository on its forge, named from its pinned push url (never where origin points now); its
    calls together take at most `budget` seconds (None: STEP_BUDGET_S)."""
    repo = cfg.repo_for(issue)
    pin = pins.pinned(state_root, cfg.project, repo.name)
    return forge.forge_for(forge.forge_repo(repo.platform, pin.url), repo.path, timeout,
                           STEP_BUDGET_S if budget is None else budget)


def preflight_problems(state_root: Path, cfg: ProjectConfig, home: Path) -> list[str]:
    """With review.open "pr": gh or glab is installed and logged in for each repository's forge (one line naming
    the fix per problem). The forge is the one of the pinned url, or of the url that would be pinned now."""
    problems: list[str] = []
    asked: set[tuple[str, str]] = set()
    for repo in cfg.repos.values():
        try:
            pin = pins.load(pins.pins_file(state_root, cfg.project)).get(repo.name) or pins.target_now(repo, home)
        except OrchestratorError:
            continue  # no push target yet: launch's pinning reports it
        where = forge.forge_repo(repo.platform, pin.url)
        if (where.platform, where.host) in asked:
            continue
        asked.add((where.platform, where.host))
        problem = forge.forge_for(where, repo.path, POLL_TIMEOUT_S).auth_problem()
        if problem:
            problems.append(f"{cfg.path}: review.open \"pr\": {problem}")
    return problems


def poll(state_root: Path, cfg_of: Callable[[str], ProjectConfig], records: list[WorkerRecord], now: float,
         save_record: Callable[[WorkerRecord], None], say: Callable[[str], None],
         timeout: float = POLL_TIMEOUT_S, budget: float = POLL_BUDGET_S) -> tuple[PrView, ...]:
    """Poll each watched PR whose poll_seconds have passed, the longest waiting first; each call is bounded by
    `timeout`, and once polls took `budget` seconds this cycle the rest wait for the next one (a slow forge never
    keeps the monitor from judging the tries for long)."""
    views = []
    started = time.monotonic()
    waiting = [r for r in records if r.pr.get("watching")]
    for record in sorted(waiting, key=lambda r: r.pr.get("polled_at") if isinstance(r.pr.get("polled_at"),
                                                                                 (int, float)) else 0.0):
        if time.monotonic() - started >= budget:
            break
        pr = record.pr
        if not pr.get("watching") or record.issue_number is None or not record.project:
            continue
        try:
            cfg = cfg_of(record.project)
        except OrchestratorError:
            continue
        issue = cfg.issue(record.issue_number)
        polled_at = pr.get("polled_at")
        if issue is None or (isinstance(polled_at, (int, float)) and now - polled_at < cfg.review.poll_seconds):
            continue
        pr["polled_at"] = now
        if pr.get("opening"):  # not open yet (the network failed): due to be opened again, nothing to ask
            save_record(record)
            views.append(PrView(record.worker_id))
            continue
        try:
            number = pr.get("number")
            if not isinstance(number, int) or isinstance(number, bool) or number <= 0:
                raise ForgeError(f"worker {record.worker_id}'s record names no PR number ({clip(repr(number))})")
            # Whether a queue holds it matters only to a merge of ours (auto, or one under way): else not asked.
            wanted = cfg.review.merge == "auto" or any(pr.get(k) for k in ("merging", "merge_queued", "merge_unseen"))
            seen = forge_of(state_root, cfg, issue, timeout, max(1.0, budget - (time.monotonic() - started))
                            ).observe(number, queue=wanted)
            default = cfg.repo_for(issue).default_branch
            if seen.base and seen.base != default and seen.state != "closed":
                # Retargeted by a human: never merged into, nor completed (or shown merged) on another branch.
                raise ForgeError(f"PR #{number} targets {clip(seen.base)}, not {default}" +
                                 (f": retarget it to {default}" if seen.state == "open" else " (merged there)"))
            ours = str(pr.get("head") or "")
            if seen.state == "merged" and ours and seen.head != ours and _older(cfg.repo_for(issue).path, seen.head,
                                                                                ours):
                # Merged (by the agent itself, say) before our last push: that push is on no default branch.
                raise ForgeError(f"PR #{number} was merged at {seen.head[:12]}, before our last push {ours[:12]}, "
                                 f"which {default} does not have")
            if ours and seen.head and seen.head != ours and (
                    seen.state == "merged" or seen.state == "open" and int(pr.get("foreign_polls") or 0) >= 2):
                _foreign_head_holds_ours(state_root, cfg, issue, seen, ours,
                                         max(1.0, budget - (time.monotonic() - started)))
        except (ForgeError, OrchestratorError) as err:
            record.last_reason = f"PR poll failed (tried again in {cfg.review.poll_seconds:g}s): {err}"
            save_record(record)
            say(f"worker {record.worker_id}: #{issue.number}: PR poll failed, tried again later: {err}")
            views.append(PrView(record.worker_id, number if isinstance(number, int) else 0,
                                str(pr.get("url") or ""), error=str(err)))
            continue
        if seen.checks != "none":
            pr["ever_checked"] = True  # a repository with CI: no check reported is never green here
        pr["quiet_polls"] = int(pr.get("quiet_polls") or 0) + 1 if seen.checks == "none" else 0
        since = pr.get("quiet_since")
        pr["quiet_since"] = (since if isinstance(since, (int, float)) else now) if seen.checks == "none" else None
        if pr.get("head") and seen.head and seen.head != pr["head"]:
            # Someone else pushed to the PR's branch: after 3 polls its head is the one whose checks count.
            pr["foreign_polls"] = int(pr.get("foreign_polls") or 0) + 1
            if pr["foreign_polls"] >= 3:
                say(f"worker {record.worker_id}: #{issue.number}: the PR's head is {seen.head[:12]}, not our "
                    f"{str(pr['head'])[:12]}: its checks count from now")
                pr["head"], pr["foreign_polls"] = seen.head, 0
        else:
            pr["foreign_polls"] = 0
        record.last_reason = f"PR {seen.state}, checks {seen.checks}" + (f", review {seen.review}" if seen.review
                                                                        else "")
        pr["last"] = {"checks": seen.checks, "failed": [list(f) for f in seen.failed], "review": seen.review,
                      "comments": list(seen.comments), "review_id": seen.review_id, "head": seen.head}
        if seen.queued and seen.state == "open" and pr.get("merging") and not pr.get("merge_queued"):
            # Our merge call was accepted but its answer lost (or the monitor killed before recording it).
            pr["merge_queued"] = str(pr.get("head") or "") or "?"
        # Our accepted merge left it open and this CLI cannot show a queue: counted, so the wait has an end (decide).
        unseen = seen.state == "open" and seen.queued is None and bool(pr.get("merge_unseen") or pr.get("merge_queued"))
        pr["merge_unseen"] = int(pr.get("merge_unseen") or 0) + 1 if unseen else 0
        if unseen:
            record.last_reason += (f", merge not seen yet (poll {pr['merge_unseen']} of {MAX_UNSEEN_POLLS}): the forge "
                                   f"would not say whether it waits in a merge queue ({seen.queue_doubt})")
        elif pr.get("merge_queued") and seen.state == "open" and seen.queued:
            record.last_reason += ", merging (queued)" + (f": {seen.queue_entry}" if seen.queue_entry else "")
        save_record(record)
        ours = not pr.get("head") or not seen.head or seen.head == pr.get("head")
        # Number, url and phase too: an entry lost with a damaged file is whole again at the next poll.
        note = save(state_root, cfg.project, issue.number, number=seen.number, url=seen.url, state=seen.state,
                    checks=seen.checks if ours else "pending",
                    merge_queued=bool(pr.get("merge_queued")) and seen.queued is True and seen.state == "open",
                    **({"phase": "merged"} if seen.state == "merged" else
                       {"phase": "pr_open"} if seen.state == "open" else {}))
        if note:
            say(f"warning: {note}")
        # Silence is "no CI" only once it lasted: CI may take a while to register its first check.
        quiet = 0 if pr.get("ever_checked") or now - (pr["quiet_since"] or now) < QUIET_GREEN_S else \
            int(pr["quiet_polls"])
        views.append(PrView(record.worker_id, seen.number, seen.url, seen.state, seen.head, seen.checks,
                            tuple(name for name, _ in seen.failed), seen.review, seen.review_id, quiet,
                            queued=seen.queued, queue_doubt=seen.queue_doubt if seen.queued is None else ""))
    return tuple(views)


def _foreign_head_holds_ours(state_root: Path, cfg: ProjectConfig, issue: Issue, seen: Observation, ours: str,
                             budget: float = POLL_BUDGET_S) -> None:
    """Someone else's head of the PR (taken as the one whose checks count after 3 polls, or merged) must hold our
    last push (its commits, or the same patches rebased): a force-push that dropped it is never merged nor
    completed (ForgeError: the poll fails, said, and is tried again until a human sees to it). The head is
    fetched from the pinned url when we lack it (objects only; the fetch is killed with what it started after
    `budget` seconds, what is left of the poll's). A merged head the url does not give is taken as before; one
    that could not be read for now (a timeout, the network) and an open one that cannot be read are not taken
    yet: the poll fails and the next one checks again."""
    repo = cfg.repo_for(issue)
    where = f"PR #{seen.number}'s head {seen.head[:12]}"
    try:
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", seen.head):
            raise worktrees.GitFailed(f"{clip(seen.head)} is not a commit id")
        pin = pins.pinned(state_root, cfg.project, repo.name)
        # A throwaway git dir over the repository's objects, as pushes use (none of its config, which an agent
        # may have edited, is read): the head is fetched into it when we lack it, and goes with it.
        with worktrees.throwaway_git_dir(repo.path, pin.settings) as shim:
            if not worktrees.in_throwaway(shim, "rev-parse", "--verify", "-q", f"{seen.head}^{{commit}}",
                                          check=False).strip():
                worktrees.run_in_throwaway(shim, f"fetch from {clip(pin.url)}", "fetch", "-q", "--no-tags",
                                           "--no-write-fetch-head", "--", pin.url, seen.head, timeout=budget)
            # Our commits in its history, or each as an equal patch (a rebase of the branch): `git cherry` marks
            # with "+" a commit of ours that has none.
            holds = worktrees.is_ancestor(shim, ours, seen.head, throwaway=True) or not any(
                line.startswith("+") for line in worktrees.in_throwaway(shim, "cherry", seen.head, ours).splitlines())
    except (worktrees.GitFailed, OrchestratorError, OSError) as err:  # OSError: the temporary git dir
        if seen.state == "merged" and not getattr(err, "retry", False) and not isinstance(err, OSError):
            return
        raise ForgeError(f"cannot tell whether {where} (someone else's push) holds our last push {ours[:12]}: "
                         f"{err}") from None
    if holds:
        return
    if seen.state == "merged":
        raise ForgeError(f"PR #{seen.number} was merged at {seen.head[:12]}, which does not hold our last push "
                         f"{ours[:12]} (its branch was force-pushed): {repo.default_branch} does not have it")
    raise ForgeError(f"{where} does not hold our last push {ours[:12]}: its branch was force-pushed by someone else; "
                     "neither merged nor completed until a human sees to it (push our commits back, or close the PR)")


def _older(repo: Path, merged: str, ours: str) -> bool:
    """Whether the head a PR was merged at is an ancestor of our last push (a foreign or unknown one is not)."""
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", merged):
        return False
    try:
        return worktrees.is_ancestor(repo, merged, ours)
    except worktrees.GitFailed:
        return False


def open_pr(state_root: Path, cfg: ProjectConfig, issue: Issue, record: WorkerRecord, now: float) -> bool:
    """Find or open the PR of the issue's branch and watch it; True when it was opened now (False: adopted).
    Raises ForgeError with the CLI's words."""
    repo = cfg.repo_for(issue)
    branch = record.branch or cfg.branch_for(issue)
    hub = forge_of(state_root, cfg, issue)
    found, created = hub.find_or_create(branch, repo.default_branch, issue.title,
                                        forge.pr_body(issue.description, list(cfg.pipeline)))
    head = worktrees.branch_head(repo.path, branch) or ""
    record.pr = {"number": found.number, "url": found.url, "watching": True, "in_stage": False, "ci_fixes": 0,
                 "review_rounds": 0, "head": head, "review_seen": "", "polled_at": now, "quiet_polls": 0}
    save(state_root, cfg.project, issue.number, number=found.number, url=found.url, state="open",
         checks="pending", phase="pr_open", ci_fixes=0, review_rounds=0)
    return created


def open_failed(record: WorkerRecord, err: OrchestratorError, now: float, poll_seconds: float) -> bool:
    """Opening the PR failed: True when it is tried again at the next due poll (a network failure, fewer than
    MAX_OPEN_ATTEMPTS so far; the record waits for it, watching), False when the issue fails now."""
    failures = (int(record.pr.get("open_failures") or 0) if record.pr.get("opening") else 0) + 1
    if not getattr(err, "transient", False) or failures >= MAX_OPEN_ATTEMPTS:
        return False
    record.pr = {"opening": True, "watching": True, "in_stage": False, "open_failures": failures, "polled_at": now}
    record.last_reason = (f"pull request not opened ({failures}/{MAX_OPEN_ATTEMPTS}), tried again in "
                          f"{poll_seconds:g}s: {err}")
    return True


def watch_again(state_root: Path, cfg: ProjectConfig, issue: Issue, record: WorkerRecord, now: float) -> None:
    """A fix_ci or address_review stage was pushed: back to watching, this time for the new head (the record's
    stage goes back with orchestrator.worker's watch_pr)."""
    record.pr.update(watching=True, in_stage=False, polled_at=now, quiet_polls=0, quiet_since=None,
                     head=worktrees.branch_head(cfg.repo_for(issue).path, record.branch or "") or "")
    save(state_root, cfg.project, issue.number, checks="pending", phase="pr_open")


PR_STAGE_KINDS = (ActionKind.FIX_CI, ActionKind.ADDRESS_REVIEW)


def stage_task(state_root: Path, cfg: ProjectConfig, issue: Issue, record: WorkerRecord, kind: ActionKind) -> str:
    """What a fix_ci stage (failed checks and their logs' tails) or an address_review stage (the comments) is
    told; the forge is asked for the logs now (bounded; unavailable logs are said so). Another kind is a
    ValueError (never told as a review)."""
    if kind not in PR_STAGE_KINDS:
        raise ValueError(f"{kind!r} is no pull-request stage (fix_ci, address_review)")
    last = record.pr.get("last") or {}
    if kind == ActionKind.FIX_CI:
        failed = [tuple(f) for f in last.get("failed") or []] if last.get("checks") == "failing" else []
        left = ("The pull request was queued to merge (merge queue or auto-merge) and left the queue unmerged: "
                "its checks there failed or it was removed. Make it mergeable again.\n\n"
                if record.pr.get("merge_queued") else "")
        names = ", ".join(str(f[0]) for f in failed) or "(the forge named none)"
        observation = Observation(int(record.pr.get("number") or 0), str(record.pr.get("url") or ""), "open",
                                  failed=tuple((str(a), str(b)) for a, b in failed))
        try:
            logs = forge_of(state_root, cfg, issue, POLL_TIMEOUT_S).failed_logs(observation, LOG_LINES)
        except (ForgeError, OrchestratorError) as err:
            logs = f"(logs unavailable: {err})"
        links = "\n".join(f"- {name}: {link}" for name, link in failed if link)
        return (f"{left}Failed checks: {names}\n{links}\n\nTail of their logs:\n```\n{logs or '(no log text)'}\n```")
    comments = "\n\n".join(f"- {clip(c, 4000)}" for c in last.get("comments") or []) or "(no comment text: " \
        "read the review on the pull request)"
    return f"Review comments:\n{comments}"


def start_stage(state_root: Path, cfg: ProjectConfig, issue: Issue, record: WorkerRecord, kind: ActionKind) -> None:
    """The PR loop's part of a fix_ci / address_review stage on the same branch (the worker's own part and the
    try: the caller's, orchestrator.worker)."""
    task = stage_task(state_root, cfg, issue, record, kind)
    last = record.pr.get("last") or {}
    counter = "ci_fixes" if kind == ActionKind.FIX_CI else "review_rounds"
    # A merge left queued is over once a stage starts (the queue dropped it): the next green head is merged anew.
    record.pr.update(watching=False, in_stage=True, task=task, merge_queued="", merge_unseen=0, merging=False,
                     **{counter: int(record.pr.get(counter) or 0) + 1})
    if kind == ActionKind.ADDRESS_REVIEW:
        record.pr["review_seen"] = str(last.get("review_id") or "")
    fixing_ci = kind == ActionKind.FIX_CI
    save(state_root, cfg.project, issue.number, phase="ci_failed" if fixing_ci else "changes_requested",
         checks="failing" if fixing_ci else (last.get("checks") or "pending"), merge_queued=False,
         **{counter: record.pr[counter]})


def merge(state_root: Path, cfg: ProjectConfig, issue: Issue, record: WorkerRecord) -> str:
    """Merge with the repository's method, only while the PR's head is the one judged green (the forge refuses
    another); "merged" is recorded only once the forge shows it merged, "queued" (a merge queue or auto-merge
    took it) leaves it open and watched. Raises ForgeError."""
    outcome = forge_of(state_root, cfg, issue).merge(int(record.pr["number"]), str(record.pr.get("head") or ""))
    if outcome == "merged":
        save(state_root, cfg.project, issue.number, state="merged", phase="merged", checks="passing",
             merge_queued=False, merged_at=now_iso())
    else:
        save(state_root, cfg.project, issue.number, state="open", phase="pr_open", checks="passing",
             merge_queued=True)
    return outcome


def merge_unconfirmed(err: Exception, worker: Worker, say: Callable[[str], None]) -> bool:
    """A merge the forge accepted whose outcome could not be seen (forge.MergeUnconfirmed): True when handled so,
    never a failed attempt nor a merge; the record stays `merging` and the next poll tells (merged: completed as
    ours; queued: watched as queued; open in no queue: merged again; open where the forge would not say whether a
    queue holds it: waited for at most decide.MAX_UNSEEN_POLLS polls, `merge_unseen` counting them, then failed
    saying so)."""
    if not isinstance(err, forge.MergeUnconfirmed):
        return False
    record = worker.record
    record.pr["merge_unseen"] = int(record.pr.get("merge_unseen") or 0) + 1
    worker.note(f"merge accepted, not seen merged: {err}")
    worker.files.log_event({"action": "merge_unconfirmed", "worker": record.worker_id, "issue": record.issue_number,
                            "project": record.project, "error": str(err)})
    say(f"worker {record.worker_id}: #{record.issue_number} {record.last_reason}")
    return True


def pr_states(recorded: Recorded, issues: dict[int, str],
              held: set[int | None]) -> dict[int, tuple[str, dict[str, Any]]]:
    """Issue -> (status's state, its `pr`) for issues with a PR in the project's `recorded` file (`read`, whose
    doubt the caller shows too): in progress (pr_open, ci_failed, changes_requested; only while a worker holds it
    in the PR loop: `held`), completed by a merge (merged), or completed / failed with the PR shown. An earlier
    run's PR of an issue being worked again is not shown."""
    out = {}
    for key, entry in recorded.entries.items():
        if not key.isdigit() or int(key) not in issues:
            continue
        status, phase = issues[int(key)], entry.get("phase")
        shown = public(entry)
        if shown is None:
            continue
        if status == IssueStatus.IN_PROGRESS and phase in PHASES[:3] and int(key) in held:
            out[int(key)] = (str(phase), shown)
        elif status == IssueStatus.COMPLETED and phase == "merged":
            out[int(key)] = ("merged", shown)
        elif status in (IssueStatus.COMPLETED, IssueStatus.FAILED):
            out[int(key)] = (status, shown)
    return out


def open_branches(state_root: Path, cfg: ProjectConfig) -> dict[str, str]:
    """Branch -> why its worktree is kept, for this project's PRs last seen open: each is asked again (bounded;
    a human may have merged or closed it since); one the forge does not answer for stays kept. While the file
    is damaged or was set aside, every issue's branch without a whole entry is looked up on the forge, and kept
    when it has an open PR or the forge cannot say (never removed on a forgotten PR)."""
    out = {}
    recorded = read(state_root, cfg.project)
    for key, entry in recorded.entries.items():
        issue = cfg.issue(int(key)) if key.isdigit() else None
        if issue is None or entry.get("state") != "open":
            continue
        url = str(entry.get("url") or "")
        try:
            number = entry.get("number")
            if not isinstance(number, int) or isinstance(number, bool):
                raise ForgeError(f"no PR number recorded ({clip(repr(number))})")
            seen = forge_of(state_root, cfg, issue, POLL_TIMEOUT_S).observe(number, queue=False)
        except (ForgeError, OrchestratorError) as err:
            out[cfg.branch_for(issue)] = f"its pull request is open ({url}; not asked again: {err})"
            continue
        save(state_root, cfg.project, issue.number, state=seen.state)
        if seen.state == "open":
            out[cfg.branch_for(issue)] = f"its pull request is open ({url})"
    if recorded.doubt:
        out.update(_looked_up(state_root, cfg, recorded, set(out)))
    return out


def _looked_up(state_root: Path, cfg: ProjectConfig, recorded: Recorded, known: set[str]) -> dict[str, str]:
    """Branch -> why kept, for the issues the damaged file may have forgotten: an open PR of the branch into the
    default branch (as adoption finds it), or a forge that cannot be asked (then no further one is asked)."""
    out: dict[str, str] = {}
    given_up = ""
    for issue in cfg.issues:
        branch = cfg.branch_for(issue)
        entry = recorded.entries.get(str(issue.number)) or {}
        whole = isinstance(entry.get("number"), int) and entry.get("state") in ("open", "merged", "closed")
        if branch in known or whole:
            continue
        if given_up:
            out[branch] = f"its pull request may be open ({recorded.doubt}; the forge not asked: {given_up})"
            continue
        try:
            found = forge_of(state_root, cfg, issue, POLL_TIMEOUT_S).find(branch, cfg.repo_for(issue).default_branch)
        except (ForgeError, OrchestratorError) as err:
            given_up = str(err)
            out[branch] = f"its pull request may be open ({recorded.doubt}; the forge not asked: {given_up})"
            continue
        if found is not None and found.state == "open":
            out[branch] = f"its pull request is open ({found.url})"
    return out
