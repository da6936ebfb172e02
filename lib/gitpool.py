"""The scan's git process pool: many short gits from one thread (`os.posix_spawn` + `poll`), in a keeper's group.

Standard library only, as the scan path is (`python3 scripts/scan_all_repos.py` runs before `make setup`).
"""
from __future__ import annotations

import errno
import os
import select
import signal
import tempfile
import threading
import warnings
from collections import deque
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass
from time import monotonic, sleep
from typing import BinaryIO, Callable, Iterator, NamedTuple

from lib.procs import DEFAULT_IN_CHILD, fill_standard_descriptors
from lib.signals import STOP_SIGNALS  # what the keeper does not let end it


class GitResult(NamedTuple):
    returncode: int
    stdout: bytes
    stderr: bytes  # kept only when git failed


Done = Callable[[GitResult], None]
TIMED_OUT = 124  # a git the pool killed at its limit (as timeout(1) exits); its stderr says so


@dataclass
class _Feed:
    """A helper's results read in the loop: the partial line, the callbacks, and how long it may stay silent."""

    on_line: Callable[[bytes], None]
    on_end: Callable[[], None]
    silence: float | None
    on_silent: Callable[[], None] | None
    heard_at: float
    pending: bytearray


class GitPool:
    """Runs many short gits at once from one thread: `os.posix_spawn` and `poll`, no thread per git.

    A scan starts hundreds of gits whose start-up is most of their cost; Popen's
    bookkeeping in a thread pool cost more Python time per repo than the rest of
    the scan together, and threads contend for the interpreter (bench/README.md).
    Each child: stdin /dev/null, stdout a pipe read as it fills, stderr a scratch
    file of its slot (read only when git fails, so nothing can fill up and block),
    SIGPIPE/SIGXFSZ back at their defaults as subprocess would do, and a
    process group other than ours (a terminal's Ctrl-C reaches us only): the
    scan's keeper group (see `start_keeper`), or its own when `group` is 0.
    `done` callbacks run in the loop and may `submit` more work (it queues first).
    A git still running `limit` seconds after it started (a hook or a filter that
    never returns) with nothing more to read is killed and done with TIMED_OUT and a
    line saying so (one with output waiting gets another `limit`); one that exited
    while something it started holds its stdout open (a hook's daemon) is done then
    with what it wrote.
    """

    def __init__(self, git: str, size: int, group: int = 0, limit: float | None = None) -> None:
        self._git = git
        self._size = max(1, size)
        self._fits: int | None = None  # the most gits at once our descriptors allowed, once they ran out (EMFILE)
        self._group = group  # 0: each git leads its own process group; else the group they join
        self._limit = limit
        self._queue: deque[tuple[str, dict[str, str], tuple[str, ...], Done]] = deque()
        # stdout fd -> (pid, output so far, stderr file, done, when it is killed, what it runs)
        self._live: dict[int, tuple[int, list[bytes], BinaryIO, Done, float, str]] = {}
        self._feeds: dict[int, _Feed] = {}
        self._dying: list[int] = []  # gits killed at their limit, not reaped yet (stuck in the kernel a while)
        self._free: list[BinaryIO] = []
        self._poll = select.poll()
        fill_standard_descriptors()

    def resize(self, size: int) -> None:
        """Run up to `size` gits at once from now on (a scan's own share, once it knows which helpers started),
        never more than the descriptors were found to allow: running out again would only cost a failed try."""
        self._size = max(1, min(size, self._fits or size))

    def submit(self, path: str, env: dict[str, str], args: tuple[str, ...], done: Done, first: bool = False) -> None:
        job = (path, env, args, done)
        self._queue.appendleft(job) if first else self._queue.append(job)

    def watch(self, fd: int, on_line: Callable[[bytes], None], on_end: Callable[[], None],
              silence: float | None = None, on_silent: Callable[[], None] | None = None) -> None:
        """Also read `fd` in the loop, a line at a time, until it ends (a helper's results).

        A feed that sends nothing for `silence` seconds is given up: `on_silent`, then closed and `on_end`.
        """
        self._feeds[fd] = _Feed(on_line, on_end, silence, on_silent, monotonic(), bytearray())
        self._poll.register(fd, select.POLLIN)

    def run(self) -> None:
        """Run everything submitted (and whatever the callbacks submit) to the end, and read the feeds out."""
        while self._queue or self._live or self._feeds:
            while self._queue and len(self._live) < self._size:
                self._spawn(*self._queue.popleft())
            if self._live or self._feeds:
                self._step()

    def close(self) -> None:
        """Stop whatever still runs (an interrupted scan): a status or log writes nothing, so a kill loses nothing.

        A git that leads its own process group goes with what it started (a
        submodule's status, a hook); gits in a shared group go with it when
        its owner kills it (`gitstatus.scan` kills the keeper's group whole).
        """
        for fd, (pid, _, stderr, *_) in list(self._live.items()):
            with suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # its own group (ESRCH when it joined a shared one)
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with suppress(OSError):
                os.waitpid(pid, 0)
            os.close(fd)
            stderr.close()
        self._live.clear()
        until = monotonic() + 1.0  # one second for them all, not one each: a dead mount can hold dozens
        self._dying = [pid for pid in self._dying if not reaped_within(pid, max(0.0, until - monotonic()))]
        for fd in self._feeds:
            os.close(fd)
        self._feeds.clear()
        for stderr in self._free:
            stderr.close()
        self._free.clear()

    def forget_feeds(self) -> None:
        """Close the feeds without reading them (a forked helper's copies of its parent's)."""
        for fd in self._feeds:
            os.close(fd)
        self._feeds.clear()

    def __enter__(self) -> GitPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _spawn(self, path: str, env: dict[str, str], args: tuple[str, ...], done: Done) -> None:
        try:
            stderr = self._free.pop() if self._free else _scratch_file()
        except OSError as err:
            return self._no_descriptors(err, (path, env, args, done))
        try:
            read_end, write_end = os.pipe()  # close-on-exec; the child's fd 1 is a dup2, so it stays open there
        except OSError as err:
            stderr.close()  # kept, it would hold a descriptor the gits that fit need: they would run out again
            return self._no_descriptors(err, (path, env, args, done))
        try:
            try:
                pid = self._posix_spawn(path, args, env, write_end, stderr)
            except OSError as err:
                if err.errno != errno.EPERM or not self._group:
                    raise
                self._group = 0  # the shared group is gone (its keeper was killed): each git leads its own
                pid = self._posix_spawn(path, args, env, write_end, stderr)
        except OSError as err:  # E2BIG, EMFILE, git removed meanwhile: this repo's error, not the scan's
            os.close(read_end)
            self._free.append(stderr)
            done(GitResult(127, b"", f"cannot run {self._git}: {err.strerror or err}".encode()))
            return
        finally:
            os.close(write_end)
        deadline = monotonic() + self._limit if self._limit is not None else float("inf")
        self._live[read_end] = (pid, [], stderr, done, deadline, _verb(args))
        self._poll.register(read_end, select.POLLIN)

    def _posix_spawn(self, path: str, args: tuple[str, ...], env: dict[str, str], stdout: int,
                     stderr: BinaryIO) -> int:
        return os.posix_spawn(self._git, [self._git, "--no-optional-locks", "-C", path, *args], env,
                              file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                            (os.POSIX_SPAWN_DUP2, stdout, 1),
                                            (os.POSIX_SPAWN_DUP2, stderr.fileno(), 2)],
                              setsigdef=DEFAULT_IN_CHILD, setpgroup=self._group)

    def _no_descriptors(self, err: OSError, job: tuple[str, dict[str, str], tuple[str, ...], Done]) -> None:
        """Out of descriptors (more jobs than `ulimit -n` allows): fewer gits at once, this one when a git ends."""
        if err.errno in (errno.EMFILE, errno.ENFILE) and self._live:
            self._size = self._fits = len(self._live)
            self._queue.appendleft(job)
        else:  # none left even for one git: this repo's error, as when git cannot start
            job[3](GitResult(127, b"", f"cannot run {self._git}: {err.strerror or err}".encode()))

    def _step(self) -> None:
        for fd, _ in self._poll.poll(self._wait_ms()):
            if fd in self._feeds:
                self._read_feed(fd)
                continue
            pid, chunks, stderr, done, *_ = self._live[fd]
            chunk = os.read(fd, 65536)
            if chunk:
                chunks.append(chunk)
                continue
            self._poll.unregister(fd)
            os.close(fd)
            del self._live[fd]
            _, wait_status = os.waitpid(pid, 0)
            self._complete(chunks, stderr, done, wait_status)

        self._give_up_overdue()

    def _complete(self, chunks: list[bytes], stderr: BinaryIO, done: Done, wait_status: int,
                  reuse: bool = True) -> None:
        """A git's result to its `done`; its stderr file back to the free ones (`reuse`), else closed."""
        code = os.waitstatus_to_exitcode(wait_status)
        errors = b""
        if stderr.tell():  # the child's writes moved the offset this file shares with it
            if code != 0:
                stderr.seek(0)
                errors = stderr.read(65536)
            stderr.seek(0)
            stderr.truncate()
        if reuse:
            self._free.append(stderr)
        else:
            stderr.close()
        done(GitResult(code, b"".join(chunks), errors))

    def _wait_ms(self) -> int | None:
        """How long poll may wait: until the next git's limit or feed's silence runs out (None: no end)."""
        ends = [deadline for *_, deadline, _ in self._live.values()]
        ends += [feed.heard_at + feed.silence for feed in self._feeds.values() if feed.silence is not None]
        end = min(ends, default=float("inf"))
        return None if end == float("inf") else max(0, int((end - monotonic()) * 1000) + 1)

    def _give_up_overdue(self) -> None:
        """Kill the gits past their limit and give up the feeds silent too long (each `done` or `on_end` once)."""
        now = monotonic()
        for fd, (pid, chunks, stderr, done, deadline, verb) in list(self._live.items()):
            if now < deadline:
                continue
            self._poll.unregister(fd)
            del self._live[fd]
            # Its stderr file is never reused: what it started (a hook, in a shared group) may still write to it.
            try:
                exited, wait_status = os.waitpid(pid, os.WNOHANG)
                ours = True
            except ChildProcessError:  # not ours to wait for, nor to kill (its pid may be another's now)
                exited, wait_status, ours = 0, 0, False
            more = _available(fd)
            if exited:  # git is done; something it started holds its stdout open (a hook's daemon)
                chunks.append(more)
                os.close(fd)
                self._complete(chunks, stderr, done, wait_status, reuse=False)
                continue
            if more:  # still writing (its output waited in a full pipe while this loop was held up): more time
                chunks.append(more)
                self._live[fd] = (pid, chunks, stderr, done, now + (self._limit or 0.0), verb)
                self._poll.register(fd, select.POLLIN)
                continue
            os.close(fd)
            if ours:
                _kill(pid, own_group=not self._group)
                self._dying.append(pid)
            stderr.close()
            done(GitResult(TIMED_OUT, b"", f"git {verb} did not finish within {self._limit:g} s: killed".encode()))
        self._dying = [pid for pid in self._dying if not _reaped(pid)]
        for fd, feed in list(self._feeds.items()):
            if feed.silence is None or now < feed.heard_at + feed.silence:
                continue
            if feed.on_silent is not None:
                feed.on_silent()
            self._end_feed(fd)

    def _read_feed(self, fd: int) -> None:
        feed = self._feeds[fd]
        chunk = os.read(fd, 65536)
        feed.heard_at = monotonic()
        feed.pending += chunk
        *lines, rest = feed.pending.split(b"\n")
        feed.pending[:] = rest
        for line in lines:
            feed.on_line(bytes(line))
        if not chunk:
            self._end_feed(fd)

    def _end_feed(self, fd: int) -> None:
        self._poll.unregister(fd)
        os.close(fd)
        self._feeds.pop(fd).on_end()


def _available(fd: int) -> bytes:
    """What a pipe holds now, read without waiting for its end."""
    os.set_blocking(fd, False)
    chunks = []
    with suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _verb(args: tuple[str, ...]) -> str:
    """The git command `args` run (`status`, `log`): the first word that is no option (nor `-c`'s value)."""
    words = iter(args)
    for word in words:
        if word == "-c":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return "command"


def _kill(pid: int, own_group: bool) -> None:
    """SIGKILL a git, with its group when it leads one (in a shared group, what it started goes with the group)."""
    with suppress(OSError):
        if own_group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def _reaped(pid: int) -> bool:
    """Whether a killed child is reaped now (never waited for: one stuck in the kernel, a dead mount, outlives
    SIGKILL a while; the keeper's reap collects what is left at the scan's end)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True


def reaped_within(pid: int, seconds: float) -> bool:
    """Reap a child that has ended or is ending (a helper, a killed git); False if it is still there after
    `seconds` (stuck in the kernel: a blocking wait would hang the scan with it)."""
    deadline = monotonic() + seconds
    while not _reaped(pid):
        if monotonic() >= deadline:
            return False
        sleep(0.01)
    return True


def _scratch_file() -> BinaryIO:
    if hasattr(os, "memfd_create"):  # Linux: no file system involved
        return os.fdopen(os.memfd_create("git-stderr", os.MFD_CLOEXEC), "rb+", buffering=0)
    return tempfile.TemporaryFile(buffering=0)




@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold the stop signals (they wait, pending) while a process is forked and noted.

    A signal's Python handler runs between any two bytecodes, so a stop could
    otherwise land after the fork and before its pid is kept: a process no
    cleanup knows of. Children forked meanwhile start with the signals held.
    The progress line's ticker thread holds them for good, or the kernel would
    hand a held signal to it and its handler would run here all the same.
    """
    held = hasattr(signal, "pthread_sigmask")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if held else set()
    try:
        yield
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# The pauses of our own threads that could hold a lock a forked child needs (the progress line's ticker,
# mid-write to stderr): `forking` enters each, so no fork copies a lock some thread holds.
_fork_pauses: list[Callable[[], AbstractContextManager[object]]] = []


def pause_for_forks(pause: Callable[[], AbstractContextManager[object]]) -> Callable[[], None]:
    """Register a thread's pause, entered around every fork of a scan; returns what unregisters it."""
    _fork_pauses.append(pause)
    return lambda: _fork_pauses.remove(pause) if pause in _fork_pauses else None


@contextmanager
def forking() -> Iterator[bool]:
    """Around a scan's forks: the stop signals held and the registered threads paused. Yields whether this
    is now the process's one thread: only then may it fork (a lock another thread holds stays held in the
    child for good; the one thread is the main thread, here at a bytecode boundary)."""
    with ExitStack() as stack:
        stack.enter_context(stop_signals_held())
        for pause in list(_fork_pauses):
            stack.enter_context(pause())
        yield threading.active_count() == 1


@dataclass
class Keeper:
    """The forked process whose group holds a scan's gits and helpers; `alive_fd` is our end of its pipe."""

    pid: int
    alive_fd: int

    def stop(self) -> None:
        """Kill the group whole (the keeper included) and close our end of the pipe."""
        with suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.alive_fd >= 0:
            with suppress(OSError):
                os.close(self.alive_fd)
            self.alive_fd = -1

    def reap(self) -> None:
        """Collect the keeper and every child of ours left in its group (a git whose pid a signal kept from the pool).

        Bounded: a process stuck in the kernel (a dead mount) must not hold the scan's end forever.
        """
        with suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        deadline = monotonic() + 2.0
        while monotonic() < deadline:
            try:
                if os.waitpid(-self.pid, os.WNOHANG)[0] == 0:
                    sleep(0.01)
            except ChildProcessError:
                return


def start_keeper() -> Keeper | None:
    """Fork the scan's keeper: the process group every git and helper of the scan joins. None if it cannot fork.

    The keeper blocks reading a pipe only the scan writes to (close-on-exec, so
    no git inherits it; helpers close their copy). End of file means the scan
    is done or gone, even by SIGKILL or the OOM killer: the keeper then kills
    its group, itself included, so no git outlives a scan, however it ends.
    While the scan runs, one killpg stops every git, even one whose pid a
    signal kept the pool from noting. One fork per scan and nothing per git:
    each git joins the group in its posix_spawn (`setpgroup`), as it would
    have made one of its own.
    """
    fill_standard_descriptors()  # else the pipe could be fd 0, 1 or 2, which the keeper points at /dev/null
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads: see gitstatus._start_helper
            pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if pid == 0:
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # a stray Ctrl-C must not end the group early
            os.setpgid(0, 0)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # hold no one's terminal or pipe open
                os.dup2(null, fd)
            os.closerange(3, read_end)
            os.closerange(read_end + 1, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
            while os.read(read_end, 64):
                pass
        finally:
            with suppress(OSError):
                os.killpg(os.getpid(), signal.SIGKILL)  # its own group only, never the scan's
            os._exit(0)
    os.close(read_end)
    with suppress(OSError):
        os.setpgid(pid, pid)  # also here: a git spawned right after the fork must find the group
    return Keeper(pid, write_end)
