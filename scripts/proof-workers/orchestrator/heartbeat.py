"""The monitor's heartbeat (state/<project>/monitor.json): who runs, since when, last cycle, how it exited.

Written by the monitor at start, after every cycle and when it exits; read by
status and the dashboard, which must never show a dead monitor's workers as
running. A pid alone could be reused: the process's start time (from
/proc/PID/stat) is recorded with it and must still match.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lib import procs
from lib.errors import OrchestratorError
from lib.statefile import read_json, write_json


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None when it is gone or a zombie."""
    return procs.start_tick(pid)


@dataclass
class Heartbeat:
    pid: int
    pid_start: int | None
    since: float
    last_cycle_at: float | None = None
    exited_at: float | None = None
    exit_code: int | None = None

    @classmethod
    def start(cls, path: Path, now: float) -> Heartbeat:
        beat = cls(os.getpid(), process_start(os.getpid()), now)
        beat.save(path)
        return beat

    def cycle(self, path: Path, now: float) -> None:
        self.last_cycle_at = now
        self.save(path)

    def exit(self, path: Path, now: float, code: int) -> None:
        self.exited_at, self.exit_code = now, code
        self.save(path)

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))


def read(path: Path) -> Heartbeat | None:
    """The last heartbeat written; None when there is none or it cannot be read (never a traceback)."""
    try:  # the shared reader: a FIFO or a huge file planted there is unreadable, never a hang
        doc = read_json(path)
        if doc is None:
            return None
        return Heartbeat(int(doc["pid"]), doc.get("pid_start"), float(doc["since"]), doc.get("last_cycle_at"),
                         doc.get("exited_at"), doc.get("exit_code"))
    except (OrchestratorError, ValueError, KeyError, TypeError):
        return None


def monitor_status(path: Path) -> dict[str, Any]:
    """`status --json`'s "monitor": running is decided from the live process, never from the file alone."""
    beat = read(path)
    if beat is None:
        return {"running": False, "pid": None, "since": None, "last_cycle_at": None, "exited": None}
    running = beat.exited_at is None and beat.pid_start is not None and process_start(beat.pid) == beat.pid_start
    # Not running: since it exited, else since its last sign of life (killed: no exit was written).
    since = beat.since if running else beat.exited_at or beat.last_cycle_at or beat.since
    return {"running": running, "pid": beat.pid, "since": _iso(since),
            "last_cycle_at": _iso(beat.last_cycle_at) if beat.last_cycle_at is not None else None,
            "exited": {"at": _iso(beat.exited_at), "exit_code": beat.exit_code} if beat.exited_at is not None
            else None}


def monitor_line(status: dict[str, Any], now: float) -> str:
    """`monitor: running (pid N, last cycle 2s ago)` or `monitor: NOT RUNNING (since T)`."""
    if status["running"]:
        last = status["last_cycle_at"]
        ago = f"last cycle {max(0, now - _epoch(last)):.0f}s ago" if last else "no cycle yet"
        return f"monitor: running (pid {status['pid']}, {ago})"
    if status["since"] is None:
        return "monitor: NOT RUNNING (never started)"
    exited = status["exited"]
    how = f", exit code {exited['exit_code']}" if exited and exited["exit_code"] is not None else \
        "" if exited else ", killed or crashed"
    return f"monitor: NOT RUNNING (since {status['since']}{how})"


def _epoch(iso: str) -> float:
    import calendar

    return float(calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")))
