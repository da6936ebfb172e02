"""Run a shell command in its own process group, output streamed to a log, killable as a whole.

Invoke's `c.run(timeout=)` kills only the shell and keeps all output in
memory; builds and tests need their grandchildren killed and their output on
disk, whatever its size or encoding. Nothing a step starts outlives it, not
even what left its group, and a signal to the tool stops every step. Killed
outright (SIGKILL, the OOM killer), the tool leaves the job to its watchdog.

Over 500 lines, one job: most of it is the ways a command, or what it started, could outlive a stop.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from time import monotonic, sleep
from typing import IO, Any, BinaryIO, Callable, Sequence, TypeVar

from lib import signals, spawn, watchdog
from lib.procs import (DEFAULT_IN_CHILD, GRACE_S, STEP_VAR, cmdline, fill_standard_descriptors, group_alive,
                       have_proc, kill_processes, processes_tagged, signal_ok, start_tick, stat_fields)
from lib.signals import Signalled, signal_name
from lib.watchdog import WATCHDOG_ARG

Item = TypeVar("Item")
Result = TypeVar("Result")
CHUNK = 64 * 1024
PR_SET_CHILD_SUBREAPER = 36

# Steps started here and still running (process group -> step marker): an interrupted run kills them.
_active_groups: dict[int, str] = {}
_active_lock = threading.Lock()
_stopping = threading.Event()
_step_numbers = itertools.count(1)
_subreaper_set = False
# The watchdog (see `start_watchdog`): its pipe's write end, and which process it watches (a fork is not it).
_watchdog_lock = threading.Lock()
_watchdog_fd: int | None = None
_watchdog_owner = 0
_watchdog_process: subprocess.Popen[bytes] | None = None
_tag = ""


@dataclass(frozen=True)
class ProcessResult:
    """How a command ended. Killed by a signal: `exit_code` is 128 + the signal (the shell's convention)."""

    exit_code: int | None
    timed_out: bool
    duration_s: float
    signum: int | None = None
    log_error: str | None = None  # the log could not be written (the command was stopped): why
    escaped: tuple[str, ...] = ()  # processes that had left the group, killed with the step ("pid name")
    stopped_with: str | None = None  # a timeout with interrupt_grace: the signals it took (interrupt_first)

    @property
    def killed_by(self) -> str | None:
        return signal_name(self.signum) if self.signum else None


def become_subreaper() -> None:
    """Orphaned descendants (a `setsid cmd &` whose parent ended) get reparented to us, not to init.

    So they stay ours to find, kill and reap. Linux only; elsewhere a no-op.
    """
    global _subreaper_set
    if _subreaper_set or not sys.platform.startswith("linux"):
        return
    _subreaper_set = True
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def escaped_processes(marker: str, pgid: int, born_since: int = 0) -> list[int]:
    """Live processes of the step `marker` that are no longer in its process group `pgid`."""
    return [pid for pid in processes_tagged(STEP_VAR, marker, born_since=born_since)
            if (fields := stat_fields(pid)) is not None and int(fields[2]) != pgid]


def _describe(pid: int) -> str:
    args = cmdline(pid)
    if args is None:
        return str(pid)
    words = b" ".join(word for word in args.split(b"\0") if word)
    return f"{pid} {words.decode('utf-8', 'replace')[:80]}"


def interrupt_first(pgid: int, interrupt_grace: float, grace: float = GRACE_S) -> str:
    """A timeout that lets the command say where it hung: SIGINT to the group (pytest, go test and node print
    what ran and what passed) and up to `interrupt_grace` seconds for it to end; the caller then gives what is
    left SIGTERM and SIGKILL `grace` later (_stop_step). Returns the signals it took, as the log says them."""
    if not signal_ok(pgid, signal.SIGINT, group=True):
        return "SIGINT"
    deadline = monotonic() + interrupt_grace
    while monotonic() < deadline and group_alive(pgid):
        sleep(0.05)
    if not group_alive(pgid):
        return "SIGINT"
    return f"SIGINT, then SIGTERM after {interrupt_grace:g}s (SIGKILL {grace:g}s later if still running)"


class _Born:
    """A step's start (clock ticks since boot), read only when a kill needs it (most steps never do: reading
    /proc/PID/stat of a process being exec'd cost more than the rest of a quick step's bookkeeping). Read
    only while the process is not yet reaped, so its pid still names it; after, 0 (every process's
    environment is then looked at: the same answer, found more slowly)."""

    def __init__(self, proc: subprocess.Popen[bytes] | _Spawned) -> None:
        self.proc = proc
        self.tick: int | None = None

    def __int__(self) -> int:
        if self.tick is None:
            reaped = self.proc.returncode is not None
            self.tick = 0 if reaped else (start_tick(self.proc.pid, even_a_zombie=True) or 0)
        return self.tick


def _stop_step(pgid: int, marker: str, grace: float, born_since: int | _Born = 0) -> tuple[str, ...]:
    """Kill what is left of a step: its group and the processes that left it; returns the latter ("pid command")."""
    escaped = escaped_processes(marker, pgid, born_since=int(born_since))
    names = tuple(_describe(pid) for pid in escaped)
    if escaped or group_alive(pgid):
        kill_processes([pgid], escaped, grace)
    return names


def run_tag() -> str:
    """The start of every ORCHESTRATOR_STEP value this process gives: its pid and a random word.

    The random word keeps a later process that gets the same pid from ever
    being taken for this one (by the watchdog, for one).
    """
    global _tag
    if not _tag.startswith(f"{os.getpid()}-"):  # first use, or a forked child
        _tag = f"{os.getpid()}-{os.urandom(4).hex()}-"
    return _tag


def start_watchdog() -> None:
    """Start, once per process (again if it was killed), the watchdog that kills our steps if we die first.

    SIGKILL, the OOM killer or a hard CI cancel give us no chance to run
    `terminate_all`, and every step runs in a session of its own, so nothing
    else would stop them. The watchdog is a small Python process in a session
    of its own, reading a pipe only we hold open (every other descriptor we
    make is close-on-exec): each step's process group is announced on it.
    End of file means we are gone; it then kills the announced groups and
    every process whose ORCHESTRATOR_STEP is one of ours, as a timeout does
    (SIGTERM, SIGKILL after GRACE_S). One process per run, not per command.
    Where it cannot start (no /proc, no process to spare) runs go on without it.
    """
    global _watchdog_fd, _watchdog_owner, _watchdog_process
    with _watchdog_lock:
        if not have_proc() or not sys.executable:
            return
        if _watchdog_owner == os.getpid():
            if _watchdog_process is None or _watchdog_process.poll() is None:
                return  # running, or it could not start: one try per process
            _forget_watchdog()  # killed by someone: another one takes over (it finds the steps by their tag)
        _watchdog_owner = os.getpid()
        _watchdog_process = None
        try:
            read_end, write_end = os.pipe()
        except OSError:
            return
        try:
            _watchdog_process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", os.path.abspath(watchdog.__file__), WATCHDOG_ARG, run_tag()],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                start_new_session=True,
                # Not part of an outer run's step (inv inside a step): its end is ours, not that step's.
                env={k: v for k, v in os.environ.items() if k != STEP_VAR})
        except OSError:
            os.close(write_end)
            return
        finally:
            os.close(read_end)
        os.set_blocking(write_end, False)  # a stuck watchdog must never hold up a run
        _watchdog_fd = write_end


def _watchdog_running() -> bool:
    with _watchdog_lock:
        return (_watchdog_owner == os.getpid() and _watchdog_fd is not None and _watchdog_process is not None
                and _watchdog_process.poll() is None)


def stop_watchdog(timeout: float = 30.0) -> None:
    """End this process's watchdog now that its steps are over (it kills what is left of them, then exits), so
    it is not left among our children; a later step starts another."""
    global _watchdog_owner, _watchdog_process
    with _watchdog_lock:
        if _watchdog_owner != os.getpid():
            return
        _forget_watchdog()
        process, _watchdog_process, _watchdog_owner = _watchdog_process, None, 0
    if process is not None:
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout)


def _forget_watchdog() -> None:
    """Close our end of the pipe: in a forked child (a scan's helper), whose copy would make the
    watchdog wait for it too, and when the watchdog is gone."""
    global _watchdog_fd
    if _watchdog_fd is not None:
        with suppress(OSError):
            os.close(_watchdog_fd)
        _watchdog_fd = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_watchdog)


def _tell_watchdog(line: str) -> None:
    if _watchdog_fd is None or _watchdog_owner != os.getpid():
        return
    try:
        os.write(_watchdog_fd, line.encode())
    except OSError:
        pass  # gone or not reading: the tagged processes are still found by their environment


def _joined(names: tuple[str, ...], more: tuple[str, ...]) -> tuple[str, ...]:
    return names + tuple(name for name in more if name not in names)


class Stopping(Exception):
    """Raised instead of starting a command once the run is being stopped."""



def stopping() -> bool:
    """Whether the run is being stopped (a signal, or an error in another item): start nothing new."""
    return _stopping.is_set()


class RunInterrupted(signals.Stopped):
    """A run over many items stopped by a signal: every running command was killed.

    `results` are those of the items that finished before the signal, in item
    order; front doors record them, print this message and exit `exit_code`.
    """

    def __init__(self, signum: int, results: list[Any], stopped: int) -> None:
        super().__init__(signum, f"interrupted: stopped {stopped} running command{'' if stopped == 1 else 's'} "
                                 f"({signal_name(signum)})")
        self.results = results
        self.stopped = stopped


def terminate_all(grace: float = GRACE_S) -> int:
    """Stop starting commands and kill every step still running; returns how many were running.

    The commands run in their own sessions, so a Ctrl-C reaches only us. A
    second signal while this runs is ignored, so no group is left orphaned.
    """
    previous = signals.ignore()
    try:
        with _active_lock:
            _stopping.set()
            steps = dict(_active_groups)
        escaped = [pid for pgid, marker in steps.items() for pid in escaped_processes(marker, pgid)]
        kill_processes(list(steps), escaped, grace)
        return len(steps)
    finally:
        signals.restore(previous)


class _Copier(threading.Thread):
    """Copy a pipe to the log (and the echo stream) until EOF, or until told to stop.

    A process that left our group (setsid, a daemon) can hold the pipe open
    forever; once the group is gone we drain what is there and stop. A closed
    echo stream (`| head`) stops the echo, never the logging. A log that
    cannot be written (disk full) sets `log_error` and the pipe keeps being
    drained, so the command never blocks on a full pipe.

    Without an echo the step's own thread copies while it waits (`_Waiter` pumps
    the pipe: a thread per step was most of a quick step's cost); the thread
    takes over (`take_over`) before anything waits without pumping, as a kill's
    grace does, and copies from then on.
    """

    def __init__(self, source: IO[bytes], log: BinaryIO, echo: BinaryIO | None) -> None:
        super().__init__(daemon=True)
        self.fd = source.fileno()
        self.log: BinaryIO | None = log
        self.echo: BinaryIO | None = echo
        self.log_error: str | None = None
        self.log_failed = threading.Event()
        self.stopping = threading.Event()
        self.drain_until = 0.0
        self.ended = False  # the pipe's end was read
        self.threaded = False  # the thread copies (else the step's own thread, through pump())

    def take_over(self) -> None:
        """From now on the thread copies: the caller is about to wait without pumping (a kill's grace)."""
        if not self.threaded:
            self.threaded = True
            self.start()

    def stop(self, drain_s: float = 10.0) -> None:
        """Read until the pipe is empty (for `drain_s` at most), then return even if it stays open."""
        self.drain_until = monotonic() + drain_s
        self.stopping.set()

    def finish(self, drain_s: float = 10.0) -> None:
        """The step is over: read until the pipe is empty (for `drain_s` at most), whoever copies."""
        if self.threaded:
            self.stop(drain_s)
            # Bounded: a reader of the echo that never reads must not hang the run forever.
            self.join(timeout=30)
            return
        until = monotonic() + drain_s
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self.ended and poller.poll(100) and monotonic() <= until:
            self.pump()

    def pump_ready(self, most: int = 64) -> None:
        """Copy what the pipe holds now, without waiting (its end too, once every writer is gone)."""
        if self.threaded:
            return
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        for _ in range(most):
            if self.ended or not poller.poll(0):
                return
            self.pump()

    def finished(self) -> bool:
        """Whether nobody copies any more (the pipe may be closed)."""
        return not self.is_alive()

    def run(self) -> None:
        poller = select.poll()  # not select(): a descriptor number over 1023 is fine here
        poller.register(self.fd, select.POLLIN)
        while not self.ended:
            if not poller.poll(100):
                if self.stopping.is_set():
                    return  # the group is gone and the pipe is empty: all output is in
                continue
            if self.stopping.is_set() and monotonic() > self.drain_until:
                return  # something outside the group keeps writing: stop listening
            self.pump()

    def pump(self) -> None:
        """Copy one read of the pipe to the log, then the echo (a slow or closed echo never costs the log)."""
        chunk = os.read(self.fd, CHUNK)
        if not chunk:
            self.ended = True
            return
        self._to_log(chunk)
        if self.echo is not None:
            try:
                self.echo.write(chunk)
                self.echo.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.echo = None

    def _to_log(self, chunk: bytes) -> None:
        if self.log is None:
            return
        try:
            self.log.write(chunk)
            self.log.flush()
        except (OSError, ValueError) as err:
            self.log = None
            self.log_error = getattr(err, "strerror", None) or str(err)
            self.log_failed.set()


_programs: dict[tuple[str, str], str | None] = {}  # (name, PATH) -> the program posix_spawn starts
_standard_fds_filled = 0  # the pid in which fds 0-2 were checked (a posix_spawn's dup2s need them taken)
CLOSE_RANGE_CLOEXEC = 4  # linux/close_range.h
try:
    _close_range = ctypes.CDLL(None, use_errno=True).close_range  # glibc 2.34+ (Linux 5.11+ runs it)
except (AttributeError, OSError):
    _close_range = None


class _Spawned:
    """A child started by `os.posix_spawn`, with the part of Popen's interface the runner uses.

    Popen costs about 0.3 ms of our CPU per start (the env encoded in Python, its error pipe,
    its bookkeeping): most of what a sync costs per repo besides git itself (bench/README.md).
    """

    def __init__(self, args: list[str], pid: int, stdout: int, stderr: int | None) -> None:
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = os.fdopen(stdout, "rb", buffering=0)
        self.stderr = None if stderr is None else os.fdopen(stderr, "rb", buffering=0)

    def poll(self) -> int | None:
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            while self.returncode is None:
                self._reap(0)
            return self.returncode
        deadline = monotonic() + timeout
        while self.poll() is None:
            if monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            sleep(0.005)
        assert self.returncode is not None
        return self.returncode

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped elsewhere: Popen says 0 then too
            self.returncode = 0
            return
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)


def _program(args: Sequence[str], cwd: Path | None, env: dict[str, str]) -> str | None:
    """The program to posix_spawn for `args`, or None when Popen must start it: a directory to change to
    (posix_spawn cannot, before Python 3.13), a PATH entry that is relative (looked up from that directory),
    a program not found (Popen then raises as it always did). A descriptor a C library opens without
    close-on-exec in another thread, between `_close_inherited_on_exec` and the spawn, would be inherited:
    nothing in this tool does that (Python's own descriptors are close-on-exec)."""
    if cwd is not None or not args or not hasattr(os, "posix_spawn"):
        return None
    name = args[0]
    if "/" in name:
        return name if os.path.isabs(name) else None
    search = env.get("PATH", os.defpath)
    key = (name, search)
    if key not in _programs:
        relative = any(not os.path.isabs(entry) for entry in search.split(os.pathsep))
        _programs[key] = None if relative else shutil.which(name, path=search)
    return _programs[key]


def _close_inherited_on_exec() -> bool:
    """Make every descriptor above 2 close-on-exec before a posix_spawn, which does not close them as Popen's
    close_fds does; False when that cannot be done (then Popen starts it). Ours are close-on-exec already
    (PEP 446) but for what a parent passed down (a make jobserver's pipe, a CI runner's) or an `os.dup2`.
    One `close_range` call where the kernel has it, else a look at /proc/self/fd."""
    global _standard_fds_filled
    if _standard_fds_filled != os.getpid():
        fill_standard_descriptors()  # else a pipe could be fd 0-2, and the spawn's dup2s would cross them
        _standard_fds_filled = os.getpid()
    if _close_range is not None and _close_range(3, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC) == 0:
        return True
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return False
    for fd in descriptors:
        if fd > 2:
            with suppress(OSError):
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
    return True


def _start(args: Sequence[str], cwd: Path | None, env: dict[str, str],
           stderr_to_stdout: bool) -> subprocess.Popen[bytes] | _Spawned:
    """Start `args` in a session of its own, stdin /dev/null, stdout (and stderr, or into stdout) a pipe: by
    posix_spawn where it can, else by Popen; both raise OSError when the program cannot start."""
    program = _program(args, cwd, env)
    if program is None or not _close_inherited_on_exec():
        return _popen(args, cwd, env, stderr_to_stdout)
    out_read, out_write = os.pipe()
    err_read, err_write = (None, out_write) if stderr_to_stdout else os.pipe()
    try:
        if spawn.available():  # the global lock released while the child starts
            pid = spawn.spawn(program, args, env, out_write, err_write, DEFAULT_IN_CHILD)
        else:
            pid = os.posix_spawn(program, list(args), env,
                                 file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                               (os.POSIX_SPAWN_DUP2, out_write, 1),
                                               (os.POSIX_SPAWN_DUP2, err_write, 2)],
                                 setsigdef=DEFAULT_IN_CHILD, setsid=True)
    except (OSError, NotImplementedError):  # NotImplementedError: no POSIX_SPAWN_SETSID in this libc
        # Not startable as found (removed since, not executable after all, another architecture...): Popen
        # searches PATH on as it always did (past an entry that fails), and raises if nothing starts.
        _programs.pop((args[0], env.get("PATH", os.defpath)), None)
        for fd in (out_read, err_read):
            if fd is not None:
                os.close(fd)
        return _popen(args, cwd, env, stderr_to_stdout)
    except BaseException:
        for fd in (out_read, err_read):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        os.close(out_write)
        if err_write != out_write:
            os.close(err_write)
    return _Spawned(list(args), pid, out_read, err_read)


def _popen(args: Sequence[str], cwd: Path | None, env: dict[str, str],
           stderr_to_stdout: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(args), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if stderr_to_stdout else subprocess.PIPE,
                            start_new_session=True)


class _Waiter:
    """`waiter(seconds)`: whether the process ended within `seconds`, woken the moment it ends.

    Popen.wait(timeout) polls with growing sleeps, up to 50 ms late: most of a quick
    git's time. A pidfd (Linux 5.3+) is readable once the process has ended.
    """

    def __init__(self, proc: subprocess.Popen[bytes] | _Spawned, copier: _Copier | None = None) -> None:
        self.proc = proc
        self.copier = copier  # pumped while waiting, until its thread takes over
        try:
            self.pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # not Linux, an old kernel, or already reaped
            self.pidfd = None

    def __call__(self, seconds: float) -> bool:
        if self.pidfd is None:
            try:
                self.proc.wait(timeout=seconds)
                return True
            except subprocess.TimeoutExpired:
                return False
        poller = select.poll()  # not select(): a descriptor number over 1023 is fine here
        poller.register(self.pidfd, select.POLLIN)
        copier = self.copier
        pumped = copier is not None and not copier.threaded and not copier.ended
        if pumped:
            poller.register(copier.fd, select.POLLIN)
        until = monotonic() + seconds
        while True:
            events = dict(poller.poll(max(0.0, until - monotonic()) * 1000))
            if self.pidfd in events:
                break
            if not events:
                return False
            if pumped:
                copier.pump()
                if copier.ended:
                    poller.unregister(copier.fd)
                    pumped = False
            if monotonic() >= until:
                return False  # output faster than the log takes it must not hold off the caller's checks
        try:
            self.proc.wait(timeout=1.0)  # it has ended: this reaps it at once
            return True
        except subprocess.TimeoutExpired:
            return False

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def run_in_group(
    command: str | Sequence[str],
    cwd: Path | None,
    log: BinaryIO,
    timeout: float | None,
    env: dict[str, str] | None = None,
    echo: BinaryIO | None = None,
    grace: float = GRACE_S,
    interrupt_grace: float | None = None,
    leftovers_at_run_end: bool = False,
) -> ProcessResult:
    """Run `command` with /bin/sh (an argv list: as is) in a new session; output goes to `log` (and `echo`) as bytes.

    `cwd` None: where we are (an argv list is then started by posix_spawn, cheaper than Popen).

    On timeout the group gets SIGTERM, then SIGKILL after `grace` (with
    `interrupt_grace`: SIGINT first, see interrupt_first). Processes the
    command leaves behind, in its group or having left it, are killed when it
    ends, so nothing outlives the step that started it. A log that cannot be
    written stops the command (`log_error`). Raises OSError only when the log
    cannot be written before the command starts. `leftovers_at_run_end`: once
    the group is gone, what left it is the watchdog's to kill when the run ends
    (capture's policy: no /proc scan per step; such leftovers are not named).
    """
    become_subreaper()
    start_watchdog()
    started = monotonic()
    log.flush()
    marker = f"{run_tag()}{next(_step_numbers)}"
    step_env = {**(os.environ if env is None else env), STEP_VAR: marker}
    # Start and register under the lock, so terminate_all() either sees this group or stops it starting.
    with _active_lock:
        if _stopping.is_set():
            raise Stopping("the run is being stopped")
        proc = _start(["/bin/sh", "-c", command] if isinstance(command, str) else command, cwd, step_env, True)
        pgid = proc.pid
        _active_groups[pgid] = marker
        _tell_watchdog(f"+{pgid}\n")
    born = _Born(proc)
    assert proc.stdout is not None
    copier = _Copier(proc.stdout, log, echo)
    timed_out = False
    stopped_with = None
    deadline = None if timeout is None else started + timeout
    ended = _Waiter(proc, copier)
    if echo is not None or ended.pidfd is None:
        copier.take_over()  # an echo may block on its reader; without a pidfd the wait cannot pump
    escaped: tuple[str, ...] = ()
    try:
        while True:
            if ended(0.1 if deadline is None else max(0.0, min(0.1, deadline - monotonic()))):
                break
            timed_out = timed_out or (deadline is not None and monotonic() >= deadline)
            if timed_out and interrupt_grace is not None and stopped_with is None:
                copier.take_over()
                stopped_with = interrupt_first(pgid, interrupt_grace, grace)
            if copier.log_failed.is_set() or timed_out:
                # The group and what left it, in one grace: one after the other would cost it twice.
                copier.take_over()
                escaped = _joined(escaped, _stop_step(pgid, marker, grace, born))
        if not leftovers_at_run_end or group_alive(pgid) or not _watchdog_running():
            copier.pump_ready()
            if not copier.ended:
                copier.take_over()  # what is left of it may still write while it is killed
            escaped = _joined(escaped, _stop_step(pgid, marker, grace, born))
    except BaseException:
        copier.take_over()
        _stop_step(pgid, marker, grace, born)
        proc.wait()
        raise
    finally:
        ended.close()
        with _active_lock:
            _active_groups.pop(pgid, None)
            _tell_watchdog(f"-{pgid}\n")
        copier.finish()
        if copier.finished():
            proc.stdout.close()
    code = proc.returncode
    signum = -code if code is not None and code < 0 else None
    exit_code = None if timed_out else (signals.exit_code(signum) if signum else code)
    return ProcessResult(exit_code, timed_out, monotonic() - started, None if timed_out else signum,
                         copier.log_error, escaped, stopped_with)


STOPPING_READ_S = 10.0  # a read started while the run is being stopped (reading back what a step did) ends by then
HELD_S = 0.2  # a read's pipes still open this long after it ended: what it left holds them, and is killed
DRAIN_S = 2.0  # after a read's process ended, how long what it left holding its pipes may keep them


def capture(args: Sequence[str], cwd: Path | None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a short command (a git read: no shell) and return its exit code, stdout and stderr, killable like a step.

    It runs in a session of its own, registered as a step: a stop (terminate_all) kills it with
    its group and whatever left the group, and so does the watchdog if we are killed outright.
    What it leaves in its group is killed when it ends; what left the group, by the watchdog
    when the run ends (no /proc scan per read). Once the run is being stopped it still
    starts (reading back what a killed step did is how outcomes stay true), but is killed after
    STOPPING_READ_S. Killed by a signal: returncode is minus the signal, as subprocess says it.
    """
    become_subreaper()
    start_watchdog()
    marker = f"{run_tag()}{next(_step_numbers)}"
    step_env = {**(os.environ if env is None else env), STEP_VAR: marker}
    with _active_lock:
        deadline = monotonic() + STOPPING_READ_S if _stopping.is_set() else None
        proc = _start(args, cwd, step_env, False)
        pgid = proc.pid
        _active_groups[pgid] = marker
        _tell_watchdog(f"+{pgid}\n")
    born = _Born(proc)
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    output: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    poller = select.poll()
    for fd in output:
        poller.register(fd, select.POLLIN)
    try:
        pidfd: int | None = os.pidfd_open(pgid)  # readable once it ends: no polling for its end
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):
        pidfd = None
    open_fds = {out_fd, err_fd}
    ended_at: float | None = None
    held = False
    try:
        while open_fds or ended_at is None:
            for fd, _ in poller.poll(100 if pidfd is not None or open_fds else 10):
                if fd == pidfd:
                    poller.unregister(fd)
                    continue
                chunk = os.read(fd, CHUNK)
                if chunk:
                    output[fd].append(chunk)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
            now = monotonic()
            if ended_at is None and proc.poll() is not None:
                ended_at = now
            if deadline is not None and now >= deadline and ended_at is None:
                deadline = None
                _stop_step(pgid, marker, GRACE_S, born)
            if ended_at is not None and open_fds and now - ended_at > HELD_S and not held:
                held = True  # something it started holds the pipes: kill what is left of it
                _stop_step(pgid, marker, GRACE_S, born)
            if ended_at is not None and open_fds and now - ended_at > DRAIN_S:
                break  # held by a process that dropped our marker: what was read is all there is
        # Its group is killed if anything is left in it. What left the group carries our marker:
        # the watchdog kills it when the run ends. Without a watchdog, look for it now (a /proc scan).
        if group_alive(pgid) or not _watchdog_running():
            _stop_step(pgid, marker, GRACE_S, born)
    except BaseException:
        _stop_step(pgid, marker, GRACE_S, born)
        proc.wait()
        raise
    finally:
        if pidfd is not None:
            os.close(pidfd)
        with _active_lock:
            _active_groups.pop(pgid, None)
            _tell_watchdog(f"-{pgid}\n")
        proc.stdout.close()
        proc.stderr.close()
    return subprocess.CompletedProcess(list(args), proc.wait(), b"".join(output[out_fd]), b"".join(output[err_fd]))


def run_each(items: Sequence[Item], work: Callable[[Item], Result], jobs: int,
             on_start: Callable[[Item], None] | None = None,
             on_done: Callable[[Result], None] | None = None, grace: float = GRACE_S) -> list[Result]:
    """`work(item)` for every item on `jobs` threads (fewer when no more can start); results in item order.

    `on_start(item)` runs in the worker thread before the work, `on_done(result)` in the calling thread as
    each item finishes. On SIGINT, SIGTERM or SIGHUP the items not started are dropped, every running
    process group (and what left it) is killed, and RunInterrupted carries the results of the items that
    had finished. They run in their own sessions, so the terminal's SIGINT reaches only us. On an error
    raised by `work` or `on_start` no further item starts, the same kill happens and the error goes on.

    Plain threads taking the next item, not concurrent.futures: its futures, waiters and notifications
    cost a sync-all of 200 repos more Python time than the rest of its pool work, and its import
    (with logging) lay on every run's start.
    """
    if threading.current_thread() is threading.main_thread():
        _stopping.clear()  # a new run; a nested run (in a worker thread) must not undo a stop under way
    results: dict[int, Result] = {}
    ended: queue.SimpleQueue[tuple[int, Result | None, BaseException | None]] = queue.SimpleQueue()
    queued = iter(enumerate(items))
    taking = threading.Lock()
    dropped = threading.Event()  # no item is started once set

    def worker() -> None:
        while True:
            with taking:
                index, item = (-1, None) if dropped.is_set() else next(queued, (-1, None))
            if index < 0:
                return
            try:
                if on_start is not None:
                    on_start(item)  # type: ignore[arg-type]
                ended.put((index, work(item), None))  # type: ignore[arg-type]
            except BaseException as err:  # raised in the calling thread; no item starts after it
                dropped.set()
                ended.put((index, None, err))

    threads: list[threading.Thread] = []
    previous = signals.catch()
    try:
        for _ in range(min(max(1, jobs), len(items))):
            thread = threading.Thread(target=worker, name=f"run_each-{len(threads)}")  # joined at exit, as a pool's
            threads.append(thread)  # before it starts: a stop landing in start() still waits for it
            try:
                thread.start()
            except RuntimeError:  # no thread to spare: the ones started share the items
                threads.pop()
                if not threads:
                    raise
                break
        while len(results) < len(items):
            index, result, error = ended.get()
            if error is not None:
                raise error
            results[index] = result  # type: ignore[assignment]
            if on_done is not None:
                on_done(results[index])
    except (KeyboardInterrupt, Signalled) as stop:
        signals.ignore()
        with suppress(queue.Empty):  # what finished before the stop but was not taken yet is finished too
            while True:
                index, result, error = ended.get_nowait()
                if error is None:
                    results[index] = result  # type: ignore[assignment]
        finished = [results[i] for i in sorted(results)]
        dropped.set()
        stopped = terminate_all(grace)
        _join(threads)
        signum = stop.signum if isinstance(stop, Signalled) else signal.SIGINT
        raise RunInterrupted(int(signum), finished, stopped) from None
    except BaseException:
        dropped.set()
        terminate_all(grace)
        raise
    finally:
        try:
            dropped.set()
            _join(threads)
        finally:
            signals.restore(previous)
    return [results[i] for i in range(len(items))]


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        with suppress(RuntimeError):  # a stop cut its start() short before it ran: nothing to wait for
            thread.join()


