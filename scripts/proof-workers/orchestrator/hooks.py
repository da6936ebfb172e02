"""on_event: run the config's command for completed, failed, paused, resumed and alert lines of the event log.

The monitor hands each new line of orchestrator-log.jsonl whose action is one
of those to the command of its project, in the background: a few at a time,
each a lib.runner step (its own process group, killed with what it started at
its timeout, or when the monitor stops or is killed outright), fed that one
line on stdin, its output in logs/hooks.log capped at max_log_bytes (head, cut
mark, tail: lib.logcut). A cycle never waits for one.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from contextlib import suppress
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from lib import logcut, procs, runner
from lib.errors import OrchestratorError, clip
from lib.statefile import open_regular, read_json, write_json

if TYPE_CHECKING:
    from orchestrator.run import Run

KINDS = {"mark_complete": "completed", "skip": "failed", "paused": "paused", "resumed": "resumed", "alert": "alert"}
EVENTS = ("completed", "failed", "paused", "resumed", "alert")
DEFAULT_TIMEOUT_S = 30.0
MAX_RUNNING = 4  # hooks at once; more wait their turn
MAX_WAITING = 100  # past this a hook is not run (and that is logged): a hook slower than the events never piles up
READ_AT_MOST = 4 * 1024 * 1024  # bytes of new log read per cycle (the rest next cycle)
KEYS = ("run", "timeout", "events")
HOOK_VAR = "ORCHESTRATOR_HOOK"  # every process of one monitor's hooks carries its tag: a stop finds them all
# The hook's command reaches a second shell as an argument, its stdin the event's line from a file: the user's
# command runs as they wrote it, and the line is never shell text.
FEED = 'exec /bin/sh -c "$1" <"$2"'


@dataclass(frozen=True)
class Hook:
    run: str
    timeout: float = DEFAULT_TIMEOUT_S
    events: tuple[str, ...] = EVENTS


def parse(doc: Any, bad: Callable[[str, str], None]) -> Hook | None:
    """`on_event`: a command, or {"run": command, "timeout": seconds, "events": [...]}; None when absent."""
    if doc is None:
        return None
    where = "on_event" if isinstance(doc, str) else "on_event.run"
    if isinstance(doc, str):
        doc = {"run": doc}
    if not isinstance(doc, dict):
        bad("on_event", f"must be a command or an object with run, timeout, events; got {json.dumps(doc)[:60]}")
        return None
    for key in sorted(set(doc) - set(KEYS)):
        bad(f"on_event.{key}", f"unknown key (known: {', '.join(KEYS)})")
    command = doc.get("run")
    if not isinstance(command, str) or not command.strip():
        bad(where, "must be a non-empty shell command")
        return None
    timeout = doc.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        bad("on_event.timeout", f"must be a number of seconds > 0, got {json.dumps(timeout)[:60]}")
        timeout = DEFAULT_TIMEOUT_S
    events = doc.get("events", list(EVENTS))
    if not isinstance(events, list) or not events or any(e not in EVENTS for e in events):
        bad("on_event.events", f"must list some of {', '.join(EVENTS)}, got {json.dumps(events)[:60]}")
        events = list(EVENTS)
    return Hook(command, float(timeout), tuple(events))


class Dispatcher:
    """Owned by one monitor: `cycle()` after each cycle, `close()` when it stops."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.position_file = run.files.root / "hooks.json"
        self.log_path = run.files.root / "logs" / "hooks.log"
        self.log: logcut.CappedLog | None = None  # opened at the first hook, shared by all (it takes turns)
        self.feeds = run.files.root / "hooks"  # each running hook's event line, its stdin
        self.tag = f"{os.getpid()}-{uuid.uuid4().hex}"
        self.pool: ThreadPoolExecutor | None = None
        self.futures: set[Future[None]] = set()
        self.lock = threading.Lock()
        self.waiting = 0
        self.stopping = threading.Event()
        self.skipping = False  # inside a line longer than READ_AT_MOST
        for left in self.feeds.glob("*.line"):  # a killed monitor's (one monitor at a time: its lock)
            with suppress(OSError):
                left.unlink()
        self.inode, self.offset = self._position()
        self.saved: tuple[int, int] | None = None

    def _position(self) -> tuple[int, int]:
        """Where the last monitor stopped reading; a first monitor starts at the end (no replay of old runs)."""
        try:
            info = self.run.files.events.stat()
        except OSError:
            return 0, 0
        try:
            saved = read_json(self.position_file, None)
        except (OrchestratorError, OSError):
            saved = None  # unreadable: start at the end, as a first monitor does
        if isinstance(saved, dict) and saved.get("inode") == info.st_ino and \
                isinstance(saved.get("offset"), int) and 0 <= saved["offset"] <= info.st_size:
            return info.st_ino, saved["offset"]
        return info.st_ino, info.st_size

    def _hook_of(self, project: Any) -> Hook | None:
        for cfg in self.run.configs:
            if cfg.project == project:
                return cfg.on_event
        return self.run.lead.on_event

    def cycle(self) -> None:
        """Hand the event log's new lines to their hooks (pause changes are journalled by the monitor's cycle,
        pauses.journal_changes, hook or not)."""
        try:
            self._cycle()
        except (OSError, OrchestratorError) as err:  # the monitor goes on; the lines wait for the next cycle
            with suppress(OSError):
                self.run.files.log_event({"action": "hook_failed", "error": clip(f"on_event: {err}", 300)})

    def _cycle(self) -> None:
        if not any(cfg.on_event for cfg in self.run.configs):
            self.inode, self.offset = self._position_at_end()
            return
        for line, event in self._new_lines():
            kind = KINDS.get(str(event.get("action")))
            hook = self._hook_of(event.get("project")) if kind else None
            if hook and kind in hook.events:
                self._submit(hook, kind, str(event.get("project") or self.run.lead.project), line)
        if (self.inode, self.offset) != self.saved:
            write_json(self.position_file, {"inode": self.inode, "offset": self.offset})
            self.saved = (self.inode, self.offset)

    def _position_at_end(self) -> tuple[int, int]:
        try:
            info = self.run.files.events.stat()
        except OSError:
            return 0, 0
        return info.st_ino, info.st_size

    def _new_lines(self) -> list[tuple[bytes, dict[str, Any]]]:
        """Complete lines written since the last read (a line being written waits for the next cycle; one longer
        than READ_AT_MOST is skipped)."""
        try:
            fd = open_regular(self.run.files.events, os.O_RDONLY)  # a FIFO never hangs (read_small: no offset)
        except OSError:
            return []
        with os.fdopen(fd, "rb") as log:
            info = os.fstat(fd)
            if info.st_ino != self.inode or info.st_size < self.offset:
                self.inode, self.offset, self.skipping = info.st_ino, 0, False  # a new or cut log: from its start
            log.seek(self.offset)
            data = log.read(READ_AT_MOST)
        end = data.rfind(b"\n") + 1
        if end == 0 and len(data) == READ_AT_MOST:
            self.offset += len(data)  # a giant line: no hook for it, and the lines after it are not held up
            self.skipping = True
            return []
        out = []
        lines = data[:end].split(b"\n")[:-1]
        if self.skipping and lines:
            lines, self.skipping = lines[1:], False  # the end of the giant line
        for raw in lines:
            try:
                doc = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("event"), dict):
                out.append((raw + b"\n", doc["event"]))
        self.offset += end
        return out

    def _submit(self, hook: Hook, kind: str, project: str, line: bytes) -> None:
        with self.lock:
            if self.waiting >= MAX_WAITING:
                self.run.files.log_event({"action": "hook_dropped", "project": project, "hook_event": kind,
                                          "reason": f"{MAX_WAITING} hooks already waiting"})
                return
            self.waiting += 1
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=MAX_RUNNING, thread_name_prefix="on_event")
        self.futures = {f for f in self.futures if not f.done()}
        self.futures.add(self.pool.submit(self._run_one, hook, kind, project, line))

    def _run_one(self, hook: Hook, kind: str, project: str, line: bytes) -> None:
        try:
            if not self.stopping.is_set():
                self._run(hook, kind, project, line)
        except Exception as err:  # a thread's failure is logged, never lost silently, never the monitor's
            self.run.files.log_event({"action": "hook_failed", "project": project, "hook_event": kind,
                                      "error": clip(f"{type(err).__name__}: {err}", 300)})
        finally:
            with self.lock:
                self.waiting -= 1

    def _run(self, hook: Hook, kind: str, project: str, line: bytes) -> None:
        from lib.commandenv import command_env
        from orchestrator.worktrees import REPO_ENV

        env = {k: v for k, v in command_env().items() if k not in REPO_ENV}
        env.update({"ORCHESTRATOR_EVENT": kind, "ORCHESTRATOR_PROJECT": project, HOOK_VAR: self.tag})
        log = self._log()
        log.write(f"=== on_event {kind} ({project}): {hook.run}\n".encode("utf-8", "replace"))
        self.feeds.mkdir(parents=True, exist_ok=True)
        feed = self.feeds / f"{uuid.uuid4().hex}.line"
        try:
            feed.write_bytes(line)
            # A runner step: tagged, so what leaves its group dies with it, and the runner's watchdog kills it
            # when the monitor itself is killed outright.
            result = runner.run_in_group(["/bin/sh", "-c", FEED, "on_event", hook.run, str(feed)],
                                         self.run.files.root, log, hook.timeout, env=env, grace=1.0)
        finally:
            feed.unlink(missing_ok=True)
        said = (f"timed out after {hook.timeout:g}s" if result.timed_out else
                f"its output could not be written to {self.log_path}: {result.log_error}" if result.log_error else
                f"killed by {result.killed_by}" if result.signum else
                f"exit {result.exit_code}" if result.exit_code != 0 else "")
        if said:
            self.run.files.log_event({"action": "hook_failed", "project": project, "hook_event": kind,
                                      "error": f"{clip(hook.run)}: {said}", "log": str(self.log_path)})

    def _log(self) -> logcut.CappedLog:
        """logs/hooks.log, capped at the lead project's max_log_bytes (the log a last monitor left is cut too)."""
        with self.lock:
            if self.log is None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self.log = logcut.CappedLog(self.log_path, self.run.lead.max_log_bytes)
            return self.log

    def close(self, kill: bool = False) -> None:
        """Let the running hooks finish (each within its timeout), or with `kill` stop them now: every process
        with this monitor's hook tag, again until no hook runs (one may have been starting)."""
        if kill:
            self.stopping.set()
            if self.pool is not None:
                self.pool.shutdown(wait=False, cancel_futures=True)
            while not all(future.done() for future in self.futures):  # a cancelled one is done
                left = procs.processes_tagged(HOOK_VAR, self.tag)
                if left:
                    procs.kill_processes([], left, 1.0)
                time.sleep(0.1)
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=kill)
        if self.log is not None:
            with suppress(OSError):
                self.log.close()
