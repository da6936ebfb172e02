"""Snapshots of every worker: pane exists, agent process alive, progress (three probes, never conflated).

Per cycle: one tmux listing for all panes, one read of /proc for all processes,
per busy worker two or three cheap git calls in its worktree, and the events its
agent wrote since the last cycle (read from the offset reached, never the whole stream).
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lib.procs import Proc, cmdline, descendants
from lib.statefile import open_regular, update_json
from orchestrator import agents, worktree_setup, worktrees
from orchestrator.decide import Snapshot
from orchestrator.state import RunFiles, WorkerRecord
from orchestrator.tmux import Pane
from orchestrator.worker import Worker
from orchestrator.wrapper import MAX_EVENT_LINE


def read_pid(path: Path) -> int | None:
    from lib.errors import OrchestratorError
    from lib.statefile import read_regular

    try:
        text = (read_regular(path) or b"").decode("ascii", "replace").strip()  # a FIFO there is never waited on
    except OrchestratorError:
        return None
    return int(text) if text.isdigit() else None


def agent_alive(table: dict[int, Proc], pane: Pane | None, files: RunFiles, record: WorkerRecord) -> bool:
    """This try's wrapper runs in the pane, or its agent's group still has a process under the pane."""
    if pane is None or pane.pid is None or pane.pid not in table:
        return False
    under_pane = descendants(table, pane.pid) | ({pane.pid} if not pane.dead else set())
    spec = str(files.try_spec(record.worker_id, record.try_id)).encode()
    if any(spec in (cmdline(pid) or b"") for pid in under_pane):
        return True
    group = read_pid(files.pid_file(record.worker_id, record.try_id))
    return group is not None and any(p.pgid == group and p.pid in under_pane for p in table.values())


# Read about this much of a try's event stream per cycle (more only to finish a line: the wrapper keeps every
# line under 4 MiB): a burst of events is taken over a few cycles instead of stalling one.
MAX_EVENTS_READ = 1024 * 1024
# Events taken into the tally per worker per cycle (the rest wait for the next cycle): a cycle's cost stays
# bounded however much an agent wrote since the last one. A try that ended is read to its end at once.
MAX_EVENTS_PER_CYCLE = 400
SETUP_GRACE_S = 120.0  # past its set-up's timeout, a try still setting up has a wrapper that is stuck
USAGE_KEYS = ("cost_usd", "turns", "tokens_in", "tokens_out", "session_id")


def _size_mark(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "-"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def fingerprint(files: RunFiles, record: WorkerRecord, head: str | None, changes: str) -> str:
    """What changes when the try makes progress: its logs (the worker's, and an agent's events and its readable
    log: growth of either is activity) and the worktree."""
    parts = [_size_mark(files.log(record.worker_id)),  # a set-up ending (its state rewritten) is progress too
             _size_mark(worktree_setup.state_path(files.signal(record.worker_id, record.try_id)))]
    if record.issue_number is not None:  # the try's own log: the agent's output (a cut at its cap changes it too)
        parts.append(_size_mark(files.try_log(record.worker_id, record.try_id, record.issue_number)))
    if record.agent.get("kind") in agents.STRUCTURED and record.issue_number is not None:
        parts.append(_size_mark(files.agent_events(record.worker_id, record.try_id)))
    return hashlib.sha1(f"{'|'.join(parts)}|{head}|{changes}".encode()).hexdigest()


def read_events(files: RunFiles, record: WorkerRecord, now: float) -> int:
    """Fold the events this try's agent wrote since the last read into `record.agent`; returns how many. Whole lines
    only (one still being written waits for its end), never through a symlink: what act.end_try reads too."""
    if record.agent.get("kind") not in agents.STRUCTURED:
        return 0
    import os

    try:
        # Never a FIFO's wait, never through a symlink (an agent's, to a file of turns it did not take).
        fd = open_regular(files.agent_events(record.worker_id, record.try_id), os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as stream:
            stream.seek(record.events_offset)
            chunk = stream.read(MAX_EVENTS_READ)
            if b"\n" not in chunk and len(chunk) == MAX_EVENTS_READ:
                chunk += stream.read(MAX_EVENT_LINE)
    except OSError:
        return 0
    end = chunk.rfind(b"\n")
    if end < 0:
        return 0  # nothing new, or a line still being written
    at = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    kind, read, folded = record.agent["kind"], 0, 0
    for line in chunk[:end + 1].splitlines(keepends=True):
        if folded >= MAX_EVENTS_PER_CYCLE:
            break
        read += 1
        record.events_offset += len(line)
        if agents.tallied(kind, line):  # else parsing it would change nothing (a tool's output): skipped unread
            agents.fold(record.agent, agents.parse_line(line)[0], at)
            folded += 1
    return read


def record_usage(files: RunFiles, record: WorkerRecord) -> None:
    """This try's turns, cost and tokens in usage.json (one entry per try: totals sum every try and session)."""
    entry = {"project": record.project, "issue": record.issue_number, "stage": record.stage,
             **{key: record.agent.get(key) for key in USAGE_KEYS}}
    key = files.try_stem(record.worker_id, record.try_id)

    def change(doc: Any) -> dict[str, Any]:
        doc = doc if isinstance(doc, dict) and isinstance(doc.get("tries"), dict) else {"tries": {}}
        doc["tries"][key] = entry
        return doc

    update_json(files.usage, change, {"tries": {}})


def _setting_up(setup: dict[str, Any], path: Path, now: float) -> bool:
    """The try's wrapper runs the set-up command, and is within its timeout (+ a grace for the kill): past that
    the wrapper itself is stuck, and the try is judged as any other (stalled)."""
    if setup.get("state") != "running":
        return False
    timeout = setup.get("timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        return False
    try:
        return now - path.stat().st_mtime < timeout + SETUP_GRACE_S
    except OSError:
        return False


def snapshot(record: WorkerRecord, pane: Pane | None, table: dict[int, Proc], files: RunFiles,
             now: float) -> Snapshot:
    """Probe one busy worker; updates the record's progress marks (the caller saves them). A try found started,
    or a rate-limit streak found over, is the worker's own transition (orchestrator.worker), saved at once."""
    alive = agent_alive(table, pane, files, record)
    # Read the signal after the processes: a wrapper seen dead has already written it.
    exit_code = files.read_signal(record.worker_id, record.try_id)
    setup_file = worktree_setup.state_path(files.signal(record.worker_id, record.try_id))
    setup = worktree_setup.read_state(setup_file)  # after the signal: the wrapper writes it first
    worker = Worker(record, files)
    if alive or exit_code is not None:
        worker.found_started()  # the monitor died after starting this try, before recording it: never start it twice
    worktree = Path(record.worktree or "")
    head, changes, new = None, "", 0
    if record.worktree and worktree.is_dir() and record.branch:
        head = worktrees.branch_head(worktree, record.branch)
        try:
            changes = worktrees.porcelain(worktree)
        except worktrees.GitFailed:
            changes = ""
        if head and record.stage_base and head != record.stage_base:
            new = worktrees.commits_since(worktree, record.stage_base, record.branch)
    before = {key: record.agent.get(key) for key in USAGE_KEYS}
    read = read_events(files, record, now)
    while exit_code is not None and read:  # the try is over: judge it on every event it wrote
        read = read_events(files, record, now)
    if before != {key: record.agent.get(key) for key in USAGE_KEYS}:
        record_usage(files, record)
    if record.launched and record.agent.get("turns") and not record.agent.get("rate_limited"):
        # a model call of this try went through: the next limit backs off from the start (a held try not yet
        # started still shows the last try's tally, whose turns came before its limit)
        worker.model_call_went_through()
    stop, detail = agents.stop_of(record.agent) if exit_code is not None else ("", "")
    mark = fingerprint(files, record, head, changes)
    if mark != record.last_fingerprint or record.last_progress_at is None:
        record.last_fingerprint = mark
        record.last_progress_at = now
    started = record.started_at if record.started_at is not None else now
    if setup.get("state") == "done":  # the agent's wall clock starts when its set-up ended
        try:
            started = max(started, setup_file.stat().st_mtime)
        except OSError:
            pass
    return Snapshot(
        worker_id=record.worker_id, try_id=record.try_id, pane_exists=pane is not None, agent_alive=alive,
        exit_code=exit_code, new_commits=new, dirty=bool(changes.strip()),
        idle_seconds=round(max(0.0, now - record.last_progress_at), 3),
        elapsed_seconds=round(max(0.0, now - started), 3),
        pane_lost=pane is None or (record.pane is not None and pane.identity != record.pane),
        agent_stop=stop, agent_detail=detail[:200], setting_up=_setting_up(setup, setup_file, now),
        setup_failed=str(setup.get("reason") or "set-up command failed")[:300] if setup.get("state") == "failed"
        else "")
