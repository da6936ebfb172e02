"""Run a shell command in its own process group, output streamed to a log, killable as a whole.

Invoke's `c.run(timeout=)` kills only the shell and keeps all output in
memory; builds and tests need their grandchildren killed and their output on
disk, whatever its size or encoding.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from time import monotonic, sleep
from typing import IO, BinaryIO, Callable, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
GRACE_S = 5.0
CHUNK = 64 * 1024

# Process groups started here and still running: an interrupted run kills them.
_active_groups: set[int] = set()
_active_lock = threading.Lock()
_stopping = threading.Event()


@dataclass(frozen=True)
class ProcessResult:
    exit_code: int | None
    timed_out: bool
    duration_s: float


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, read from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    # Zombies still count for killpg(pgid, 0); where no init reaps them, only
    # /proc tells a finished group from a running one.
    if os.path.isdir("/proc/self"):
        return bool(group_members(pgid))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_groups(pgids: Sequence[int], grace: float = GRACE_S) -> None:
    """SIGTERM every group at once, give them `grace` seconds together, then SIGKILL what is left."""
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = monotonic() + grace
    while monotonic() < deadline and any(group_alive(pgid) for pgid in pgids):
        sleep(0.05)
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_group(pgid: int, grace: float = GRACE_S) -> None:
    kill_groups([pgid], grace)


class Interrupted(Exception):
    """Raised instead of starting a command once the run is being stopped."""


def terminate_all(grace: float = GRACE_S) -> None:
    """Stop starting commands and kill every group still running.

    On Ctrl-C only we get the signal (the commands run in their own sessions).
    A second Ctrl-C while this runs is ignored, so no group is left orphaned.
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        with _active_lock:
            _stopping.set()
            groups = list(_active_groups)
        kill_groups(groups, grace)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class _Copier(threading.Thread):
    """Copy a pipe to the log and the echo stream until EOF, or until told to stop.

    A process that left our group (setsid, a daemon) can hold the pipe open
    forever; once the group is gone we drain what is there and stop. A closed
    echo stream (`| head`) stops the echo, never the logging.
    """

    def __init__(self, source: IO[bytes], log: BinaryIO, echo: BinaryIO) -> None:
        super().__init__(daemon=True)
        self.fd = source.fileno()
        self.log = log
        self.echo: BinaryIO | None = echo
        self.stopping = threading.Event()
        self.drain_until = 0.0

    def stop(self, drain_s: float = 10.0) -> None:
        """Read until the pipe is empty (for `drain_s` at most), then return even if it stays open."""
        self.drain_until = monotonic() + drain_s
        self.stopping.set()

    def run(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                if self.stopping.is_set():
                    return  # the group is gone and the pipe is empty: all output is in
                continue
            if self.stopping.is_set() and monotonic() > self.drain_until:
                return  # something outside the group keeps writing: stop listening
            chunk = os.read(self.fd, CHUNK)
            if not chunk:
                return
            self.log.write(chunk)  # the log first: a slow or closed echo never costs the log
            self.log.flush()
            if self.echo is not None:
                try:
                    self.echo.write(chunk)
                    self.echo.flush()
                except (BrokenPipeError, ValueError, OSError):
                    self.echo = None


def run_in_group(
    command: str,
    cwd: Path,
    log: BinaryIO,
    timeout: float | None,
    env: dict[str, str] | None = None,
    echo: BinaryIO | None = None,
    grace: float = GRACE_S,
) -> ProcessResult:
    """Run `command` with /bin/sh in a new session; output goes to `log` (and `echo`) as bytes.

    On timeout the group gets SIGTERM, then SIGKILL after `grace`. Processes the
    command leaves behind in its group are killed when it ends, so nothing
    outlives the step that started it.
    """
    started = monotonic()
    log.flush()
    # Start and register under the lock, so terminate_all() either sees this group or stops it starting.
    with _active_lock:
        if _stopping.is_set():
            raise Interrupted("the run is being stopped")
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if echo is not None else log.fileno(),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pgid = proc.pid
        _active_groups.add(pgid)
    copier = None
    if echo is not None and proc.stdout is not None:
        copier = _Copier(proc.stdout, log, echo)
        copier.start()
    timed_out = False
    try:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(pgid, grace)
            proc.wait()
        if group_alive(pgid):
            kill_group(pgid, grace)
    except BaseException:
        kill_group(pgid, grace)
        proc.wait()
        raise
    finally:
        with _active_lock:
            _active_groups.discard(pgid)
        if copier is not None:
            copier.stop()
            # Bounded: a reader of the echo that never reads must not hang the run forever.
            copier.join(timeout=30)
            if proc.stdout is not None and not copier.is_alive():
                proc.stdout.close()
    return ProcessResult(None if timed_out else proc.returncode, timed_out, monotonic() - started)


def run_each(items: Sequence[Item], work: Callable[[Item], Result], jobs: int,
             on_start: Callable[[Item], None] | None = None,
             on_done: Callable[[Result], None] | None = None, grace: float = GRACE_S) -> list[Result]:
    """`work(item)` for every item on a pool of `jobs` threads; results in item order.

    On Ctrl-C (or any error) queued items are cancelled and every running
    process group is killed: they run in their own sessions, so the terminal's
    SIGINT reaches only us.
    """

    def one(item: Item) -> Result:
        if on_start is not None:
            on_start(item)
        return work(item)

    _stopping.clear()
    results: dict[int, Result] = {}
    futures: dict[Future[Result], int] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = {pool.submit(one, item): index for index, item in enumerate(items)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if on_done is not None:
                on_done(results[futures[future]])
    except BaseException:
        for future in futures:
            future.cancel()
        terminate_all(grace)
        raise
    finally:
        pool.shutdown(wait=True)
    return [results[i] for i in range(len(items))]
