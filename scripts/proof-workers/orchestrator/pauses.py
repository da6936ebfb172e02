"""Pause reasons of a project and of its issues (state/<project>/paused.json): set, clear, which hold now.

One definition for every cause: a project or an issue is paused while any of
its reasons holds (`rate_limit` and any reason with an `until` only until that
time). While paused no try starts; running tries finish; `resume` clears
`user`, `alert` and `auth`.
"""
from __future__ import annotations

import time
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from lib.errors import ConfigError, OrchestratorError, clip
from lib.statefile import UnreadableFile, read_json, set_aside, update_json, write_json
from orchestrator.config import ProjectConfig

if TYPE_CHECKING:
    from orchestrator.decide import Pause
    from orchestrator.state import RunFiles

REASONS = ("user", "alert", "rate_limit", "auth", "budget")
RESUMABLE = ("user", "alert", "auth")


def pause_file(state_root: Path, project: str) -> Path:
    return state_root / project / "paused.json"


def _empty() -> dict[str, Any]:
    return {"project": [], "issues": {}}


def _shape_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("project", []), list) \
            or not isinstance(doc.get("issues", {}), dict):
        return "not a pause document"
    entries = list(doc.get("project", [])) + [e for v in doc.get("issues", {}).values()
                                              for e in (v if isinstance(v, list) else [None])]
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("reason"), str) \
                or not isinstance(entry.get("since", ""), str) or not isinstance(entry.get("until") or "", str):
            return "a pause entry is not {reason, since, until, detail}"
    return None


def read(path: Path) -> dict[str, Any]:
    """The pause document; a file that does not parse raises (the monitor then treats the project as paused)."""
    try:
        doc = read_json(path, None)
    except OSError as err:
        raise OrchestratorError(f"{path}: cannot read ({err.strerror})") from None
    if doc is None:
        return _empty()
    problem = _shape_problem(doc)
    if problem:
        raise OrchestratorError(f"{path}: {problem}; run resume to start it afresh")
    return {"project": doc.get("project", []), "issues": doc.get("issues", {})}


def _parse(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def holds(entry: dict[str, Any], now: float) -> bool:
    """A reason with an `until` holds until then; an `until` that does not parse holds (never guessed lapsed)."""
    until = entry.get("until")
    if not until:
        return True
    when = _parse(until)
    return when is None or when > now


def active(doc: dict[str, Any], now: float) -> dict[int | None, list[dict[str, Any]]]:
    """Reasons that hold now: None -> the project's, N -> issue N's (only paused ones are keys)."""
    out: dict[int | None, list[dict[str, Any]]] = {}
    project = [e for e in doc["project"] if holds(e, now)]
    if project:
        out[None] = project
    for key, entries in doc["issues"].items():
        held = [e for e in entries if holds(e, now)]
        if held and str(key).isdigit():
            out[int(key)] = held
    return out


def stamp(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def add(path: Path, reason: str, detail: str, now: float, issue: int | None = None,
        until: float | None = None) -> bool:
    """Pause the project (or one issue) for `reason`; False if that reason already held there (kept as it was)."""
    if reason not in REASONS:
        raise ConfigError(f"unknown pause reason {reason!r} (known: {', '.join(REASONS)})")
    added = False

    def change(doc: Any) -> dict[str, Any]:
        nonlocal added
        doc = doc if isinstance(doc, dict) else _empty()
        doc.setdefault("project", [])
        doc.setdefault("issues", {})
        entries = doc["project"] if issue is None else doc["issues"].setdefault(str(issue), [])
        if any(e.get("reason") == reason and holds(e, now) for e in entries):
            return doc
        entries[:] = [e for e in entries if e.get("reason") != reason]  # a lapsed one of the same reason goes
        entries.append({"reason": reason, "since": stamp(now), "until": stamp(until) if until else None,
                        "detail": clip(detail, 400)})
        added = True
        return doc

    update_json(path, change, _empty(), _shape_problem)
    return added


def clear(path: Path, issue: int | None = None, every_issue: bool = False,
          reasons: tuple[str, ...] = RESUMABLE) -> list[tuple[int | None, dict[str, Any]]]:
    """Drop `reasons` from the project (issue None) or one issue, or from the project and every issue.

    Returns what was cleared as (issue or None, entry). A corrupt file is set aside and started afresh.
    """
    cleared: list[tuple[int | None, dict[str, Any]]] = []

    def drop(entries: list[dict[str, Any]], where: int | None) -> list[dict[str, Any]]:
        cleared.extend((where, e) for e in entries if e.get("reason") in reasons)
        return [e for e in entries if e.get("reason") not in reasons]

    def change(doc: Any) -> dict[str, Any]:
        doc = doc if isinstance(doc, dict) else _empty()
        doc.setdefault("project", [])
        doc.setdefault("issues", {})
        if issue is None:
            doc["project"] = drop(doc["project"], None)
        for key in list(doc["issues"]):
            if every_issue or (issue is not None and key == str(issue)):
                doc["issues"][key] = drop(doc["issues"][key], int(key) if key.isdigit() else None)
                if not doc["issues"][key]:
                    del doc["issues"][key]
        return doc

    update_json(path, change, _empty(), _shape_problem)
    return cleared


def _targets(configs: list[ProjectConfig], project: str, issue: int | None) -> list[ProjectConfig]:
    """The projects a pause/resume verb acts on; an unknown project or issue is a usage error."""
    if project:
        chosen = [c for c in configs if c.project == project]
        if not chosen:
            raise ConfigError(f"unknown project {clip(project)!r} (known: {', '.join(c.project for c in configs)})")
    elif issue is not None and len(configs) > 1:
        raise ConfigError("--issue needs --project when the run has several projects")
    else:
        chosen = list(configs)
    if issue is not None and chosen[0].issue(issue) is None:
        raise ConfigError(f"{chosen[0].path}: issue #{issue} is not in the issue list")
    return chosen


def resume(state_root: Path, configs: list[ProjectConfig], project: str = "", issue: int | None = None,
           now: float | None = None) -> list[str]:
    """Clear user, alert and auth: of one issue, or of the project(s) and all their issues. One line per fact."""
    now = time.time() if now is None else now
    lines = []
    for cfg in _targets(configs, project, issue):
        path = pause_file(state_root, cfg.project)
        cleared = clear(path, issue=issue, every_issue=issue is None)
        for where, entry in cleared:
            label = cfg.project if where is None else f"{cfg.project}#{where}"
            lines.append(f"resumed {label}: {entry.get('reason')}" +
                         (f" ({clip(str(entry.get('detail')), 100)})" if entry.get("detail") else ""))
        left = active(read(path), now)
        for where, entries in sorted(left.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
            if issue is None or where in (None, issue):
                label = cfg.project if where is None else f"{cfg.project}#{where}"
                lines += [f"still paused {label}: {e.get('reason')}" + (f" until {e['until']}" if e.get("until")
                                                                         else "") for e in entries]
        if not cleared:
            lines.append(f"{cfg.project}" + (f"#{issue}" if issue is not None else "") + ": nothing to resume")
    return lines


def pause(state_root: Path, configs: list[ProjectConfig], project: str = "", issue: int | None = None,
          detail: str = "", now: float | None = None) -> list[str]:
    """Pause (reason `user`) the project(s) or one issue: no try starts until resume; running tries finish."""
    now = time.time() if now is None else now
    lines = []
    for cfg in _targets(configs, project, issue):
        label = cfg.project + (f"#{issue}" if issue is not None else "")
        if add(pause_file(state_root, cfg.project), "user", detail or "paused by the user", now, issue=issue):
            lines.append(f"paused {label}: no try starts until resume; running tries finish")
        else:
            lines.append(f"{label} was already paused by the user")
    return lines


def journal_changes(files: RunFiles, held: Iterable[Pause]) -> None:
    """A `paused` / `resumed` line in the event log for each pause reason that started or stopped holding since
    the last lines written, whoever set or cleared it (a user, an alert, a rate limit and its lapse, a budget, a
    login). `held` is what the caller read for decide (the monitor's cycle, or a verb applying the queue, both
    under the monitor lock): the lines say what was decided on, never a second read. What the lines last said is
    kept in `pauses-journalled.json`, so a restarted monitor says a change once, and a change made while no
    monitor ran at its first cycle. The lines go first: a kill before the file is written says them again, never
    loses them."""
    path = files.root / "pauses-journalled.json"
    try:
        doc = read_json(path, [])
        said = {(str(p), i, str(r)) for p, i, r in doc if i is None or (isinstance(i, int) and
                                                                        not isinstance(i, bool))}
    except (UnreadableFile, TypeError, ValueError):  # unreadable: said afresh (a repeat, never a change lost)
        said = set()
        with suppress(OSError):
            set_aside(path)  # NAME.corrupt: a directory or garbage put there never stops a cycle
    now = {(p.project, p.issue, p.reason) for p in held}
    if now == said:
        return
    for action, changed in (("resumed", said - now), ("paused", now - said)):
        for project, issue, reason in sorted(changed, key=lambda p: (p[0], p[1] or 0, p[2])):
            files.log_event({"action": action, "project": project, "issue": issue, "reason": reason})
    write_json(path, sorted(([p, i, r] for p, i, r in now), key=lambda e: (e[0], e[1] or 0, e[2])))
