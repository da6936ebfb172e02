"""Alerts: what agents changed outside their own worktree and branch, found against the run's snapshot at launch.

`run.json` (in the run's state dir) holds this run's id, a snapshot of every
repository when the run began (its shared git config, the main checkout's HEAD
and status, the watched remote's default branch), the marks of the last check
and the alerts raised so far. A quiet cycle starts no git: file contents and
stats are compared first, and git only confirms what changed. The rest is
checked when a try ends (the main checkout's status, the worktree's branch) or
a stage ends (`ls-remote` of the default branch).

Over 500 lines, one job: one check per alert kind, each cheap when nothing changed.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable

from lib.errors import OrchestratorError, clip
from lib.statefile import read_json, read_small, set_aside, write_json
from orchestrator import pins, worktrees
from orchestrator.config import Issue, ProjectConfig, RepoConfig
from orchestrator.decide import Snapshot
from orchestrator.queue import IssueRef
from orchestrator.state import WorkerRecord, now_iso

KINDS = ("git_config_changed", "default_branch_moved", "branch_switched", "foreign_write")
# Keys git itself writes in ordinary work (`push -u`, `checkout --track`): not a redirection of anything.
IGNORED_CONFIG_PREFIXES = ("branch.",)
ROGUE_REFS = "refs/orchestrator-rogue"
# The remote calls of a cycle's default-branch checks (ls-remote, then a fetch of the forge's commits) together, and
# of the check when our merge is seen: each a lib.runner step, killed with what it started (a hung ssh or
# credential helper) once this is spent; a repository whose check did not fit is checked next cycle.
REMOTE_BUDGET_S = 20.0
RECHECK_S = 60.0  # a default-branch check that could not be made is made again this long after (not every cycle)


def run_file(root: Path) -> Path:
    return root / "run.json"


def load(root: Path) -> dict[str, Any] | None:
    """This run's document (None before any monitor started); a broken file reads as none (a new run begins)."""
    try:
        doc = read_json(run_file(root))
    except Exception:  # noqa: BLE001 - generated state: never let it stop the monitor or status
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("alerts"), list) or not isinstance(doc.get("repos"), dict):
        return None
    doc["alerts"] = [a for a in doc["alerts"] if isinstance(a, dict)]
    return doc


def current(root: Path, configs: list[ProjectConfig], now: float) -> dict[str, Any]:
    """The run in progress, or a new one (none yet, the last one ended, or its file unreadable: set aside as
    run.json.corrupt) with every repository snapshotted."""
    doc = load(root)
    if doc is not None and not doc.get("ended"):
        return doc
    if doc is None and run_file(root).exists():
        set_aside(run_file(root))  # run.json.corrupt, kept for a look
    doc = {"id": f"{now_iso()}-{os.getpid()}", "started": now_iso(), "started_at": now, "ended": None,
           "repos": {}, "alerts": [], "seen": [], "quiet": {}}
    for cfg in configs:
        for repo in cfg.repos.values():
            _ensure_snapshot(doc, repo, _pin_of(root, repo, configs))
    write_json(run_file(root), doc)
    return doc


def end(root: Path) -> None:
    """Mark the run over: the next monitor takes a new snapshot (this run's alerts stay readable until then)."""
    doc = load(root)
    if doc is not None and not doc.get("ended"):
        doc["ended"] = now_iso()
        write_json(run_file(root), doc)


# --- reading git state cheaply -------------------------------------------------------------------------------

def _stat_mark(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "-"
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _digest(data: bytes | str | None) -> str:
    if data is None:
        return "-"
    return hashlib.sha1(data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape")).hexdigest()


def config_entries(config_file: Path) -> list[list[str]]:
    """The shared config's entries as [key, value], in file order, without the keys git writes itself."""
    out = worktrees.git(config_file.parent, "config", "--file", str(config_file), "--null", "--list")
    entries = []
    for item in out.split("\0"):
        if not item:
            continue
        key, _, value = item.partition("\n")
        if not key.lower().startswith(IGNORED_CONFIG_PREFIXES):
            entries.append([key.lower(), value])
    return entries


def _config_diff(before: list[list[str]], after: list[list[str]]) -> list[str]:
    gone = Counter(tuple(e) for e in before) - Counter(tuple(e) for e in after)
    new = Counter(tuple(e) for e in after) - Counter(tuple(e) for e in before)
    lines = []
    for key in sorted({k for k, _ in gone} | {k for k, _ in new}):
        old = [v for k, v in gone.elements() if k == key]
        now = [v for k, v in new.elements() if k == key]
        if len(old) == 1 and len(now) == 1:
            lines.append(f"{key}: {clip(old[0], 80)} -> {clip(now[0], 80)}")
        else:
            lines += [f"{key} removed ({clip(v, 80)})" for v in old] + [f"{key} = {clip(v, 80)}" for v in now]
    return lines


def _head_file(worktree: Path) -> Path | None:
    """The HEAD file of a checkout (a linked worktree's `.git` file names its git dir)."""
    dot_git = worktree / ".git"
    if dot_git.is_dir():
        return dot_git / "HEAD"
    text = (read_small(dot_git) or b"").decode("utf-8", "replace").strip()
    if not text.startswith("gitdir: "):
        return None
    gitdir = Path(text.removeprefix("gitdir: "))
    return (gitdir if gitdir.is_absolute() else worktree / gitdir) / "HEAD"


def current_branch(worktree: Path) -> str | None:
    """The branch the checkout is on; "" on a detached HEAD; None when it cannot be told (no such checkout).

    Read from the HEAD file (no git started); git answers when the file is not the usual `ref: refs/heads/X`.
    """
    head = _head_file(worktree)
    data = read_small(head) if head else None
    if data is None:
        return None  # no readable HEAD (gone, or not a file): git would fare no better, or hang on a FIFO
    text = data.decode("utf-8", "replace").strip()
    if text.startswith("ref: refs/heads/"):
        return text.removeprefix("ref: refs/heads/")
    if len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text):
        return ""
    try:
        out = worktrees.git(worktree, "symbolic-ref", "-q", "HEAD", check=False).strip()
    except worktrees.GitFailed:
        return None
    return out.removeprefix("refs/heads/") if out.startswith("refs/heads/") else ("" if not out else None)


def put_back_on_branch(worktree: Path, branch: str) -> str | None:
    """Before a retry: put the worktree back on its branch. Returns where it was (None: already there).

    Nothing of the agent's is discarded: the branch it switched to keeps its commits (a detached HEAD's
    commit is kept on refs/orchestrator-rogue/...), and uncommitted changes travel with the switch; when
    git would have to overwrite them it refuses, and the worktree is left as it is.
    """
    where = current_branch(worktree)
    if where == branch or where is None:
        return None
    if where == "":
        head = worktrees.git(worktree, "rev-parse", "--verify", "-q", "HEAD", check=False).strip()
        if head:
            worktrees.git(worktree, "update-ref", f"{ROGUE_REFS}/{worktree.name}/{head[:12]}", head)
    try:
        worktrees.git(worktree, "switch", "-q", "--no-guess", branch)
    except worktrees.GitFailed as err:
        raise worktrees.GitFailed(f"cannot put {worktree} back on {branch} from {where or 'a detached HEAD'} "
                                  f"(left as it is): {err}") from None
    return where or "a detached HEAD"


def _reflog_after(common_dir: Path, branch: str, since: float) -> list[tuple[int, str, str]]:
    """Entries of the branch's reflog written after `since` (whole seconds: only ones surely later)."""
    path = common_dir / "logs" / "refs" / "heads" / branch
    try:
        if path.stat().st_mtime <= since:
            return []
    except OSError:
        return []
    text = (read_small(path, 256 << 20) or b"").decode("utf-8", "replace")
    found = []
    for line in text.splitlines():
        head, _, message = line.partition("\t")
        parts = head.rsplit(" ", 2)
        fields = head.split(" ", 2)
        if len(parts) != 3 or len(fields) < 2 or not parts[1].isdigit():
            continue
        if int(parts[1]) > since:
            found.append((int(parts[1]), fields[1], message))
    return found


def _main_mark(snap: dict[str, Any]) -> str:
    """Stats of what a change of the main checkout's HEAD or index touches (no git started)."""
    git_dir, common = Path(snap["git_dir"]), Path(snap["common_dir"])
    head = read_small(git_dir / "HEAD") or b""
    ref = head.decode("utf-8", "replace").strip().removeprefix("ref: ")
    parts = [_digest(head), _stat_mark(git_dir / "index"), _stat_mark(common / "packed-refs")]
    if ref.startswith("refs/"):
        parts.append(_stat_mark(common / ref))
    return "|".join(parts)


def _main_state(repo: Path, exclude: str | None) -> tuple[str | None, str]:
    head = worktrees.git(repo, "rev-parse", "--verify", "-q", "HEAD", check=False).strip() or None
    spec = ["--", ".", f":(exclude){exclude}"] if exclude else []
    status = worktrees.git(repo, "status", "--porcelain", "-z", "--untracked-files=normal", *spec,
                           env={"GIT_OPTIONAL_LOCKS": "0"})
    return head, status


def watched_url(snap: dict[str, Any]) -> str:
    """The url whose default branch is watched: where the work is pushed (the repo's pinned push url when it
    was pinned at the snapshot, else origin's push url then)."""
    return str(snap["url"])


def _pin_of(root: Path, repo: RepoConfig, configs: list[ProjectConfig]) -> pins.Pin | None:
    """The push target pinned for this repository by a project of the run (None: not pinned, or unreadable)."""
    for cfg in configs:
        for name, candidate in cfg.repos.items():
            if candidate.path == repo.path:
                try:
                    pin = pins.load(pins.pins_file(root.parent, cfg.project)).get(name)
                except OrchestratorError:
                    continue
                if pin is not None:
                    return pin
    return None


def _absolute_url(url: str, repo: Path) -> str:
    """A relative local path made absolute (from the repository), so ls-remote can run outside it: inside, an
    agent's insteadOf would rewrite the url we watch."""
    if "://" in url or url.startswith("/") or re.match(r"^[^/]+:", url):
        return url
    return str((repo / url).resolve())


def reach(snap: dict[str, Any]) -> dict[str, list[str]]:
    """How the watched url is reached (worktrees.PINNED_SETTINGS, read with it as pushes read it: no git config
    but these): the snapshot's; a snapshot from before it kept them, or one edited into another shape, takes
    the user's (worktrees.user_settings: never the repository's, which an agent may have edited)."""
    settings = snap.get("settings")
    if isinstance(settings, dict) and set(settings) <= set(worktrees.PINNED_SETTINGS) and all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in settings.values()):
        return settings
    return worktrees.user_settings(Path(snap["git_dir"]) if isinstance(snap.get("git_dir"), str) else None)


def _default_head(snap: dict[str, Any], timeout: float | None = None) -> str | None:
    """The watched default branch's commit now (None: it has none), read as pushes read the url (worktrees.
    remote_head); GitFailed when it could not be read within `timeout` (REMOTE_BUDGET_S by default: the ls-remote
    and what it started are killed)."""
    return worktrees.remote_head(watched_url(snap), snap["default_branch"], reach(snap),
                                 REMOTE_BUDGET_S if timeout is None else timeout)


def _ensure_snapshot(doc: dict[str, Any], repo: RepoConfig,
                     pinned: pins.Pin | None = None) -> dict[str, Any] | None:
    key = str(repo.path)
    if key in doc["repos"]:
        return doc["repos"][key]
    try:
        git_dir = Path(worktrees.git(repo.path, "rev-parse", "--absolute-git-dir").strip())
        common = Path(worktrees.git(repo.path, "rev-parse", "--git-common-dir").strip())
        common = (common if common.is_absolute() else repo.path / common).resolve()
        config_file = common / "config"
        exclude = None
        if worktrees.inside(repo.worktree_base, repo.path):
            exclude = str(repo.worktree_base.resolve().relative_to(repo.path.resolve()))
        url = pinned.url if pinned else _absolute_url(worktrees.push_url(repo.path), repo.path)
        snap: dict[str, Any] = {
            "git_dir": str(git_dir), "common_dir": str(common), "default_branch": repo.default_branch,
            "config": config_entries(config_file), "config_mark": _digest(read_small(config_file)),
            "exclude": exclude, "url": url,
            "settings": pinned.settings if pinned else worktrees.user_settings(repo.path)}
        snap["head"], status = _main_state(repo.path, exclude)
        snap["status"] = _digest(status)
        snap["main_mark"] = _main_mark(snap)
        try:
            snap["default_head"] = _default_head(snap)
        except worktrees.GitFailed:
            snap["default_unknown"] = True  # remote unreachable now: its first answer becomes the baseline
            snap["default_head"] = None
    except worktrees.GitFailed:
        return None  # tried again next cycle; the monitor's own checks report a broken repository
    doc["repos"][key] = snap
    return snap


# --- the checks ----------------------------------------------------------------------------------------------

class Checks:
    """One cycle's checks over the run document; `found` collects the new alerts (each raised once per run)."""

    def __init__(self, doc: dict[str, Any], configs: list[ProjectConfig]) -> None:
        self.doc, self.configs = doc, configs
        self.found: list[dict[str, Any]] = []
        self.changed = False
        self.seen = set(doc.get("seen", []))

    def raise_once(self, signature: str, kind: str, project: str, issue: int | None, worker: int | None,
                   detail: str) -> None:
        if signature in self.seen:
            return
        self.seen.add(signature)
        self.doc.setdefault("seen", []).append(signature)
        alert = {"kind": kind, "project": project, "issue": issue, "worker": worker, "detail": clip(detail, 400),
                 "at": now_iso(), "run": self.doc.get("id")}
        self.doc["alerts"].append(alert)
        self.found.append(alert)
        self.changed = True

    def forget(self, prefix: str) -> None:
        """Back as at launch: the same change made again is a new alert."""
        if any(sig.startswith(prefix) for sig in self.seen):
            self.seen = {sig for sig in self.seen if not sig.startswith(prefix)}
            self.doc["seen"] = [sig for sig in self.doc.get("seen", []) if not sig.startswith(prefix)]
            self.changed = True

    def projects_of(self, repo_key: str) -> list[str]:
        return [cfg.project for cfg in self.configs for repo in cfg.repos.values() if str(repo.path) == repo_key]

    def git_config(self, key: str, snap: dict[str, Any]) -> None:
        config_file = Path(snap["common_dir"]) / "config"
        stat = _stat_mark(config_file)
        if stat == snap.get("config_stat"):
            return  # unchanged since the last look: not even read
        snap["config_stat"] = stat
        self.changed = True
        data = read_small(config_file)
        mark = _digest(data)
        if mark == snap.get("config_seen", snap["config_mark"]):
            return
        snap["config_seen"] = mark
        try:
            if data is None:  # gone, or no longer a regular file (git would hang on a FIFO)
                raise worktrees.GitFailed("not a readable regular file")
            diff = _config_diff(snap["config"], config_entries(config_file))
        except worktrees.GitFailed as err:
            diff = [f"it no longer reads: {err}"]
        for project in self.projects_of(key):
            if not diff:
                self.forget(f"git_config_changed:{project}:{key}:")
                continue
            self.raise_once(f"git_config_changed:{project}:{key}:{_digest(chr(10).join(diff))}",
                            "git_config_changed", project, None, None,
                            f"{config_file} differs from its snapshot at launch: " + "; ".join(diff))

    def main_checkout(self, key: str, snap: dict[str, Any], force: bool) -> None:
        mark = _main_mark(snap)
        if not force and mark == snap.get("main_seen", snap["main_mark"]):
            return
        snap["main_seen"] = mark
        self.changed = True
        head, status = _main_state(Path(key), snap.get("exclude"))
        if head == snap["head"] and _digest(status) == snap["status"]:
            for project in self.projects_of(key):
                self.forget(f"foreign_write:{project}:{key}:")
            return
        what = []
        if head != snap["head"]:
            what.append(f"HEAD {str(snap['head'])[:12]} -> {str(head)[:12]}")
        if _digest(status) != snap["status"]:
            paths = [p[3:] for p in status.split("\0") if len(p) > 3][:3]
            what.append("its status changed" + (f" (now: {', '.join(clip(p, 60) for p in paths)})" if paths
                                                 else " (now clean)"))
        for project in self.projects_of(key):
            self.raise_once(f"foreign_write:{project}:{key}:{head}:{_digest(status)}", "foreign_write", project,
                            None, None, f"the main checkout {key} changed during the run: " + "; ".join(what))

    def default_branch(self, key: str, snap: dict[str, Any], trigger: str, ours: frozenset[str] = frozenset(),
                       budget: float | None = None) -> None:
        """Alert when the watched default branch moved since the snapshot, unless all it gained is the merge of a
        PR of ours under way (`ours`: their heads; the snapshot takes it when the poll sees it merged). Its
        remote calls take `budget` seconds at most (None: REMOTE_BUDGET_S); GitFailed when they could not."""
        url = watched_url(snap)
        budget = REMOTE_BUDGET_S if budget is None else budget
        started = time.monotonic()
        now = _default_head(snap, budget)
        if snap.get("default_unknown"):
            snap["default_head"], snap["default_unknown"] = now, False
            self.changed = True
            return
        if now == snap["default_head"]:
            return
        if ours and now and merges_of_ours(Path(key), url, snap["default_branch"], snap["default_head"], now, ours,
                                           budget - (time.monotonic() - started), reach(snap)):
            return
        for project in self.projects_of(key):
            self.raise_once(f"default_branch_moved:{project}:{key}:{now}", "default_branch_moved", project, None,
                            None, f"{snap['default_branch']} of {url} moved during the run: "
                                  f"{str(snap['default_head'])[:12]} -> {str(now)[:12] if now else 'deleted'} "
                                  f"(seen when {trigger})")
        # Said: the next move is judged from here (a later merge of ours is then its own, not this one again).
        snap["default_head"] = now
        self.changed = True

    def worktree_moved(self, key: str, snap: dict[str, Any], ref: IssueRef, worker: int | None, branch: str,
                       entry: dict[str, Any], whose: str) -> None:
        """Raise foreign_write when the issue's branch moved while no try of its own ran.

        `entry` is the issue's quiet record: since when, and the branch head then. Its ref and reflog files are
        stat'ed each cycle; git confirms only when they changed. At the first look, reflog entries stamped
        (in whole seconds) after `since` catch a write between the try's end and that look.
        """
        common = Path(snap["common_dir"])
        mark = "|".join(_stat_mark(p) for p in (common / "refs" / "heads" / branch, common / "packed-refs",
                                                common / "logs" / "refs" / "heads" / branch))
        if entry.get("mark") == mark:
            return
        entry["mark"] = mark
        self.changed = True
        head = worktrees.git(Path(key), "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False).strip()
        head = head or None
        if "head" not in entry:
            entry["head"] = head
            late = _reflog_after(common, branch, float(entry["since"]))
            if late:
                self.raise_once(f"foreign_write:{ref}:{late[-1][1]}", "foreign_write", ref.project, ref.number,
                                worker, f"{branch} moved to {late[-1][1][:12]} while {whose} "
                                        f"({clip(late[-1][2], 80)})")
            return
        if head != entry["head"]:
            subject = worktrees.git(Path(key), "log", "-1", "--format=%s", head, check=False).strip() if head else ""
            self.raise_once(f"foreign_write:{ref}:{head}", "foreign_write", ref.project, ref.number, worker,
                            f"{branch} moved from {str(entry['head'])[:12]} to {str(head)[:12] if head else 'nothing'} "
                            f"while {whose}" + (f" (now at: {clip(subject, 80)})" if subject else ""))
            entry["head"] = head


def check(doc: dict[str, Any], configs: list[ProjectConfig], records: list[WorkerRecord],
          snapshots: list[Snapshot], now: float, signal_time: Callable[[WorkerRecord], float | None],
          on_error: Callable[[str], None]) -> tuple[list[Snapshot], list[dict[str, Any]], bool]:
    """Run this cycle's checks. Returns the snapshots (with `switched_to` filled in for ended tries), the new
    alerts, and whether the run document changed (the caller saves it)."""
    checks = Checks(doc, configs)
    repo_of: dict[IssueRef, RepoConfig] = {}
    branch_of: dict[IssueRef, str] = {}
    for cfg in configs:
        for repo in cfg.repos.values():
            if str(repo.path) not in doc["repos"] and _ensure_snapshot(doc, repo) is not None:
                checks.changed = True
        for issue in cfg.issues:
            repo_of[IssueRef(cfg.project, issue.number)] = cfg.repo_for(issue)
            branch_of[IssueRef(cfg.project, issue.number)] = cfg.branch_for(issue)

    def guarded(what: str, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except worktrees.GitFailed as err:
            on_error(f"alert check ({what}) failed: {err}")
            return None

    ended_in: dict[str, str] = {}  # repo key -> a try that ended there (its main checkout is checked in full)
    stage_end: dict[str, str] = {}  # repo key -> a stage that ended there (its default branch is checked)
    # Per issue, since when no try of its own may move its branch: {"since", "try"}, or {"running": true}.
    quiet: dict[str, dict[str, Any]] = doc.setdefault("quiet", {})
    held: set[IssueRef] = set()

    def moved_since(key: str, ref: IssueRef, snap: dict[str, Any], worker: int | None, branch: str,
                    whose: str) -> None:
        guarded("worktree", lambda: checks.worktree_moved(key, snap, ref, worker, branch, quiet[str(ref)], whose))

    out = []
    for snapshot in snapshots:
        record = next((r for r in records if r.worker_id == snapshot.worker_id), None)
        if record is None or record.issue_number is None or not record.project:
            out.append(snapshot)
            continue
        ref = IssueRef(record.project, record.issue_number)
        held.add(ref)
        ended = snapshot.exit_code is not None or not snapshot.agent_alive
        if ended and record.worktree and record.branch:
            where = current_branch(Path(record.worktree))
            if where is not None and where != record.branch:
                snapshot = replace(snapshot, switched_to=where or "a detached HEAD")
                checks.raise_once(f"branch_switched:{ref}:{record.try_id}", "branch_switched", record.project,
                                  record.issue_number, record.worker_id,
                                  f"try {record.try_id} ended with {record.worktree} on "
                                  f"{where or 'a detached HEAD'}, not on {record.branch}")
        out.append(snapshot)
        repo = repo_of.get(ref)
        ended_at = signal_time(record) if snapshot.exit_code is not None else None
        if repo is None or ended_at is None:
            if quiet.get(str(ref)) != {"running": True}:
                quiet[str(ref)] = {"running": True}  # its own try may be running: its branch moves by its work
                checks.changed = True
            continue
        key = str(repo.path)
        entry = quiet.get(str(ref), {})
        if entry.get("running") or entry.get("try") != record.try_id:  # the first cycle that sees this try ended
            quiet[str(ref)] = {"since": ended_at, "try": record.try_id}
            checks.changed = True
            ended_in[key] = f"worker {record.worker_id}'s try of #{record.issue_number} ended"
            if snapshot.exit_code == 0 and snapshot.new_commits and not snapshot.switched_to:
                stage_end.setdefault(key, f"#{record.issue_number}'s stage {record.stage} ended")
        snap = doc["repos"].get(key)
        if snap is not None and record.branch:
            # Who moved it is unknown (its own worker's try had ended): the alert names no worker.
            moved_since(key, ref, snap, None, record.branch, f"worker {record.worker_id}'s try had ended")
    for ref, repo in repo_of.items():  # worktrees no worker holds: nobody's try may move their branch
        snap = doc["repos"].get(str(repo.path))
        if ref in held or snap is None:
            continue
        entry = quiet.get(str(ref))
        if entry is None or entry.get("running"):
            # Never held in this run: since it began. Held by a try we never saw end (released): from now.
            quiet[str(ref)] = {"since": now if entry else float(doc.get("started_at", now)), "try": None}
            checks.changed = True
        moved_since(str(repo.path), ref, snap, None, branch_of[ref], "no worker held the issue")
    # A merge of ours under way (queued, its answer lost, or the monitor killed before recording it): the default
    # branch may move by it before the next poll sees it merged (then orchestrator.pulls has the snapshot take it).
    # Meanwhile a move is no alert only when all the branch gained is that merge: a direct push is one.
    merging: dict[str, frozenset[str]] = {}
    for w in records:
        ref = IssueRef(w.project or "", w.issue_number) if w.issue_number is not None else None
        if w.pr.get("merging") and ref in repo_of and isinstance(w.pr.get("head"), str) and w.pr["head"]:
            key = str(repo_of[ref].path)  # type: ignore[index]
            merging[key] = merging.get(key, frozenset()) | {w.pr["head"]}
    remote_deadline = time.monotonic() + REMOTE_BUDGET_S  # the default-branch checks of all repositories together
    for key, snap in list(doc["repos"].items()):
        guarded("git config", lambda: checks.git_config(key, snap))
        guarded("main checkout", lambda: checks.main_checkout(key, snap, key in ended_in))
        # A check that could not be made (the remote did not answer in time) is made again next cycle: never
        # taken as "fine" because the stage end that asked for it has passed.
        due = snap.get("recheck_at")
        due = now >= due if isinstance(due, (int, float)) else True
        trigger = stage_end.get(key) or (snap.get("default_recheck") if due else None)
        if trigger and time.monotonic() >= remote_deadline:  # this cycle's remote budget is spent: the next one
            if snap.get("default_recheck") != trigger or "recheck_at" in snap:
                snap["default_recheck"] = str(trigger)
                snap.pop("recheck_at", None)
                checks.changed = True
        elif trigger:
            ours = merging.get(key, frozenset()) | frozenset(snap.get("landed", []))
            try:
                checks.default_branch(key, snap, trigger, ours, remote_deadline - time.monotonic())
            except worktrees.GitFailed as err:
                on_error(f"alert check (default branch) could not check, checked again in {RECHECK_S:g}s: {err}")
                snap["default_recheck"], snap["recheck_at"] = str(trigger), now + RECHECK_S
                checks.changed = True
            else:
                if snap.pop("default_recheck", None) is not None:
                    snap.pop("recheck_at", None)
                    checks.changed = True
    return out, checks.found, checks.changed


def accept_default_head(root: Path, cfg: ProjectConfig, issue: Issue, head: str, records: Iterable[WorkerRecord],
                        say: Callable[[str], None] = lambda _: None) -> str | None:
    """Our merge of the issue's PR at `head` was seen merged: the run's snapshot takes the default branch's new
    head when all it gained since the snapshot is merges of ours (this one, and the others under way in the
    caller's worker `records`, of every project: two may share the repository; the caller records the merge), and
    returns it.
    Anything more (a direct push before, while or after the merge waited in a queue) is a default_branch_moved
    alert now, announced as the monitor announces one (the pause first when on_alert is pause, an event, a line):
    None. A remote that does not answer (in REMOTE_BUDGET_S) is no verdict: the merge is remembered as ours
    (`landed`), the check is made again next cycle (`default_recheck`), a line says so: None. The run may end
    with this very merge."""
    repo = cfg.repo_for(issue)
    doc = load(root)
    snap = doc["repos"].get(str(repo.path)) if doc is not None else None
    if doc is None or snap is None:
        return None
    started = time.monotonic()  # its remote calls together take REMOTE_BUDGET_S at most

    def left() -> float:
        return REMOTE_BUDGET_S - (time.monotonic() - started)

    trigger = f"our merge of {head[:12] or 'a PR'} landed"

    def not_now(err: worktrees.GitFailed) -> None:
        # Not seen now: the next checks count this merge as ours (the snapshot keeps its old head).
        snap["landed"] = sorted({*snap.get("landed", []), head} - {""})
        snap["default_recheck"] = trigger
        write_json(run_file(root), doc)
        say(f"alert check (default branch) could not check, checked again at the next cycle: {err}")

    try:
        now = _default_head(snap, left())
        heads = frozenset({head, *snap.get("landed", []), *_merging_heads(records)}) - {""}
        ours = now == snap.get("default_head") or snap.get("default_unknown") or bool(now and merges_of_ours(
            repo.path, watched_url(snap), snap["default_branch"], snap.get("default_head"), now, heads, left(),
            reach(snap)))
    except worktrees.GitFailed as err:
        not_now(err)
        return None
    if ours:
        snap["default_head"], snap["default_unknown"] = now, False
        snap.pop("landed", None)
        write_json(run_file(root), doc)
        return now
    checks = Checks(doc, [cfg])
    try:
        checks.default_branch(str(repo.path), snap, f"{trigger} and {snap['default_branch']} holds more than the "
                                                    "merge of our PR", budget=left())
    except worktrees.GitFailed as err:  # the remote stopped answering: the snapshot keeps the old head (next check)
        not_now(err)
        return None
    announce(root, checks.found, lambda _: cfg.on_alert == "pause", time.time(), say)
    write_json(run_file(root), doc)
    return None


def _merging_heads(records: Iterable[WorkerRecord]) -> set[str]:
    """The heads of the other merges under way, from the caller's worker `records`, whatever their project (another
    PR of ours the queue may have landed below this one; two projects may share a repository). A head of another
    repository is never in this one's history, so it can match nothing here: no record needs its project's config."""
    heads = (record.pr.get("head") for record in records if record.pr.get("merging"))
    return {head for head in heads if isinstance(head, str) and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", head)}


def announce(root: Path, found: list[dict[str, Any]], pausing: Callable[[str], bool], now: float,
             say: Callable[[str], None]) -> None:
    """New alerts, as the monitor's cycle and a merge's check announce them: paused first when the project's
    `on_alert` says so (`pausing(project)`), then the event, then the line."""
    from orchestrator import pauses
    from orchestrator.state import RunFiles

    for alert in found:
        paused = pausing(alert["project"])
        if paused:
            pauses.add(pauses.pause_file(root.parent, alert["project"]), "alert",
                       f"{alert['kind']}: {alert['detail']}", now, issue=alert["issue"])
        RunFiles(root).log_event({"action": "alert", **alert, "paused": paused})
        where = f"#{alert['issue']}" if alert["issue"] is not None else f"project {alert['project']}"
        say(f"ALERT {alert['kind']} ({where}): {alert['detail']}" + ("; paused until resume" if paused else ""))


MAX_CHAIN = 200  # first-parent steps of a default branch's move that are looked at (a merge adds a few)
Git = Callable[..., str]  # git run in one directory: git(*args, check=True) -> its output


def merges_of_ours(repo: Path, url: str, branch: str, old: str | None, new: str, heads: frozenset[str],
                   timeout: float | None = None, settings: dict[str, list[str]] | None = None) -> bool:
    """Whether all the default branch gained from `old` to `new` is merges of PRs of ours (`heads`, each as the
    forge merged it: a fast-forward to it, a merge commit of it, a squash or a rebase of it: the merged tree
    each time, on the first-parent line from `new` down to `old`). A direct push anywhere in between, a rewound
    branch, or commits that cannot be read make it False. Raises GitFailed when git cannot tell.

    Read in a throwaway git dir over the repository's objects (worktrees' pinned one: no git config is read but
    its own and `settings`, how the url is reached; never the repository's, which an agent may have edited); the
    forge's commits are fetched into it from `url` (a lib.runner step killed with what it started after `timeout`
    seconds, REMOTE_BUDGET_S by default: then GitFailed, nothing judged), and go with it."""
    if not old or not heads:
        return False
    timeout = max(0.1, REMOTE_BUDGET_S if timeout is None else timeout)
    try:
        with worktrees.throwaway_git_dir(repo, settings) as shim:
            def in_shim(*args: str, check: bool = True) -> str:
                return worktrees.in_throwaway(shim, *args, check=check)

            def fetch() -> None:
                worktrees.run_in_throwaway(shim, f"fetch of {branch} from {clip(url)}", "fetch", "-q", "--no-tags",
                                           "--no-write-fetch-head", "--no-recurse-submodules", "--", url,
                                           f"refs/heads/{branch}", timeout=timeout)

            return _merges_in(in_shim, fetch, old, new, heads)
    except OSError as err:  # the temporary directory (a full disk)
        raise worktrees.GitFailed(f"cannot prepare a git dir to read {branch}'s move: {err}") from None


def _merges_in(in_shim: Git, fetch: Callable[[], None], old: str, new: str, heads: frozenset[str]) -> bool:
    """merges_of_ours, read through `in_shim` (git in the throwaway git dir); `fetch` brings the branch's
    commits from the remote."""
    if not all(_has_commit(in_shim, sha) for sha in (old, new, *heads)):
        fetch()
    if not _has_commit(in_shim, old) or not _has_commit(in_shim, new) or \
            in_shim("merge-base", old, new, check=False).strip() != old:
        return False
    at = new
    for _ in range(MAX_CHAIN):
        if at == old:
            return True
        if at in heads:  # a fast-forward to our PR's head: what lies below it is that PR's branch
            return in_shim("merge-base", old, at, check=False).strip() == old
        parents = in_shim("rev-parse", f"{at}^@").split()
        if len(parents) == 2 and parents[1] in heads and \
                _tree(in_shim, at) == _merged_tree(in_shim, parents[0], parents[1]):
            at = parents[0]  # a merge commit of our PR (never one that adds changes of its own)
            continue
        if len(parents) != 1:
            return False
        base = _squashed_onto(in_shim, at, old, heads)
        if base is None:
            return False
        at = base
    return False


def _squashed_onto(git: Git, top: str, old: str, heads: frozenset[str]) -> str | None:
    """The commit a squash or a rebase of one of our PRs ending at `top` was made on: the deepest commit of the
    first-parent line below `top` (single-parent commits, down to `old` or a merge) whose tree merged with our
    head's is `top`'s tree; None when there is none (`top` is someone else's commit)."""
    rows = git("rev-list", "--first-parent", "--parents", f"--max-count={MAX_CHAIN}", f"{top}^").splitlines()
    tree, found = _tree(git, top), None
    for row in (r.split() for r in rows):
        if any(_merged_tree(git, row[0], head) == tree for head in heads):
            found = row[0]
        if row[0] == old or len(row) != 2:
            break
    return found


def _has_commit(git: Git, sha: str) -> bool:
    return bool(git("rev-parse", "--verify", "-q", f"{sha}^{{commit}}", check=False).strip())


def _tree(git: Git, commit: str) -> str:
    return git("rev-parse", f"{commit}^{{tree}}").strip()


def _merged_tree(git: Git, base: str, head: str) -> str:
    """The tree of `head` merged into `base` (git merge-tree --write-tree, git 2.38 and later; before it, only a
    head that holds `base` answers: its own tree); "" when they conflict."""
    merged = git("merge-tree", "--write-tree", "--no-messages", base, head, check=False).split("\n", 1)[0].strip()
    if merged or git("merge-base", base, head, check=False).strip() != base:
        return merged
    return _tree(git, head)
