"""Processes read from /proc (the table, a group's members, a command's leftovers by tag or directory) and
killed (a grace, then SIGKILL); stdlib only.

The one reader of /proc/PID for the runner (a step's leftovers), the scan
(a git still running in a repo) and the proof workers (a try's agent, the
processes that keep a worktree busy). Each lookup is one pass over /proc;
zombies never count as live, and processes of other users that cannot be
read are never listed.
"""
from __future__ import annotations

import os
import signal
from functools import cache
from time import monotonic, sleep
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple, Sequence

from lib.signals import STOP_SIGNALS

if TYPE_CHECKING:
    from pathlib import Path

GRACE_S = 5.0  # between SIGTERM and SIGKILL
# Every step's processes carry this variable (value unique per step): how we find the
# ones that left its process group (setsid, daemons) to kill them with the step.
STEP_VAR = "ORCHESTRATOR_STEP"


@cache
def have_proc() -> bool:
    """Whether this system has a /proc to read (Linux); elsewhere every lookup finds nothing. Looked at once:
    every step asks."""
    return os.path.isdir("/proc/self")


def stat_fields(pid: int | str) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, ...; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _live(fields: list[bytes] | None) -> bool:
    return fields is not None and fields[0] not in (b"Z", b"X")


def _tick(fields: list[bytes]) -> int | None:
    """The start time in a process's stat fields (clock ticks since boot), None when they have none."""
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def start_tick(pid: int | str, even_a_zombie: bool = False) -> int | None:
    """When a live process started (clock ticks since boot); None when it is gone or, unless `even_a_zombie`
    (a child not reaped yet: the runner reads its step's start even if it already ended), a zombie."""
    fields = stat_fields(pid)
    return _tick(fields) if fields is not None and (even_a_zombie or _live(fields)) else None


def born_before(fields: list[bytes], tick: int) -> bool:
    """Whether a process (its stat fields) started before clock tick `tick` (0: not known, never)."""
    started = _tick(fields) if tick > 0 else None
    return started is not None and started < tick


def _pids() -> Iterator[str]:
    """Every pid in /proc, as its directory name; OSError when /proc cannot be listed."""
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                yield entry.name


class Proc(NamedTuple):  # not a dataclass: the watchdog imports this module, and dataclasses costs it 10 ms
    pid: int
    ppid: int
    pgid: int


def process_table() -> dict[int, Proc]:
    """Every live (non-zombie) process, from one pass over /proc."""
    table: dict[int, Proc] = {}
    for pid in _pids():
        fields = stat_fields(pid)
        if fields is not None and _live(fields):
            table[int(pid)] = Proc(int(pid), int(fields[1]), int(fields[2]))
    return table


def descendants(table: dict[int, Proc], root: int) -> set[int]:
    """Every process below `root` in the table (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def ancestors(pid: int) -> set[int]:
    """`pid` and every process above it up to init (excluded)."""
    found: set[int] = set()
    while pid > 1 and pid not in found:
        found.add(pid)
        fields = stat_fields(pid)
        try:
            pid = int(fields[1]) if fields else 0
        except (IndexError, ValueError):
            break
    return found


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for pid in _pids():
        fields = stat_fields(pid)
        if fields and int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(pid))
    return members


def processes_tagged(name: str, value: str, prefix: bool = False, born_since: int = 0) -> list[int]:
    """Live (not zombie) processes whose environment has `name=value` (`prefix`: a value starting with `value`).

    Read from /proc/PID/environ: the environment a process was started with,
    which it inherits from whoever started it and keeps across setsid and
    daemonizing. Processes of other users are not readable and never listed.
    `born_since`: the start time (clock ticks since boot, /proc/PID/stat) of the process that set
    the value; one started before it cannot descend from it, so its environment is not read.
    """
    needle = b"\0" + f"{name}={value}".encode() + (b"" if prefix else b"\0")
    found: list[int] = []
    if not have_proc():
        return found
    for pid in _pids():
        fields = stat_fields(pid) if born_since else None  # with born_since, read first: it spares most environs
        if born_since and (fields is None or not _live(fields) or born_before(fields, born_since)):
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if needle not in b"\0" + environ.read() + b"\0":
                    continue
        except OSError:
            continue
        if _live(fields if fields is not None else stat_fields(pid)):  # each stat read once
            found.append(int(pid))
    return found


def processes_in(dirs: Iterable[Path | str], name_prefix: str = "") -> list[int]:
    """Processes whose working directory is one of `dirs` or below (`name_prefix`: only those whose
    name, /proc/PID/comm, starts with it). Raises OSError when /proc cannot be listed: the caller
    decides what not knowing means."""
    roots = [os.path.realpath(d) for d in dirs]
    found = []
    for pid in _pids():
        try:
            if name_prefix:
                with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
                    if not comm.read().startswith(name_prefix):
                        continue
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if any(cwd == root or cwd.startswith(root.rstrip("/") + "/") for root in roots):
            found.append(int(pid))
    return found


def umask() -> int | None:
    """This process's umask from /proc/self/status (os.umask() would set it, racing other threads); None when
    it cannot be read (no /proc, a kernel before 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def cmdline(pid: int) -> bytes | None:
    """The process's arguments, NUL-separated as /proc has them; None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as args:
            return args.read()
    except OSError:
        return None


# Signals a child gets back at their defaults: those Python ignores for itself, as subprocess does, and the stop
# signals (SIGINT, SIGTERM, SIGHUP) even when our parent had them ignored (nohup, a script's `&`): what we start
# runs in a session or group of its own, which no terminal signals, so only our own stops and timeouts reach it,
# and they must work.
DEFAULT_IN_CHILD = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ")
                         if hasattr(signal, name)) + STOP_SIGNALS


def fill_standard_descriptors() -> None:
    """Put /dev/null on whichever of fds 0-2 is closed (started with `>&-`, or from a daemon).

    Else a git's pipe or stderr file could be one of them, and the spawn's dup2s onto
    0, 1 and 2 would cross them: git's stderr in its stdout, read as status output. Before any posix_spawn
    (Popen does this itself).
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one


def group_alive(pgid: int) -> bool:
    # Zombies still count for killpg(pgid, 0); where no init reaps them, only
    # /proc tells a finished group from a running one. No process at all: no need to look.
    if have_proc():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return bool(group_members(pgid))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(pid: int) -> bool:
    fields = stat_fields(pid)
    if fields is not None:
        return fields[0] != b"Z"
    return not have_proc() and signal_ok(pid, 0)


def _leads_group(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and int(fields[2]) == pid


def signal_ok(pid: int, signum: int, group: bool = False) -> bool:
    """Whether the signal was sent (to the process, or its group): False when it is gone or not ours."""
    try:
        (os.killpg if group else os.kill)(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _reap_orphans(pids: Sequence[int]) -> None:
    """Collect the exit status of killed orphans reparented to us (we are their subreaper)."""
    me = os.getpid()
    for pid in pids:
        fields = stat_fields(pid)
        if fields is None or int(fields[1]) != me:
            continue
        for _ in range(20):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            sleep(0.01)


def kill_processes(pgids: Sequence[int], pids: Sequence[int] = (), grace: float = GRACE_S) -> None:
    """SIGTERM every group and process at once, give them `grace` seconds together, then SIGKILL what is left.

    `pids` are processes that left their group; a session leader among them takes its own group along.
    """
    groups = list(pgids) + [pid for pid in pids if _leads_group(pid)]
    singles = [pid for pid in pids if pid not in groups]

    def send(signum: int) -> None:
        for pgid in groups:
            signal_ok(pgid, signum, group=True)
        for pid in singles:
            signal_ok(pid, signum)

    send(signal.SIGTERM)
    deadline = monotonic() + grace
    while monotonic() < deadline and (any(group_alive(g) for g in groups) or any(_alive(p) for p in singles)):
        sleep(0.05)
    send(signal.SIGKILL)
    _reap_orphans(list(pids))
