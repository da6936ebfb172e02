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


def kill_group(pgid: int, grace: float = GRACE_S) -> None:
    """SIGTERM the whole group, give it `grace` seconds, then SIGKILL what is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = monotonic() + grace
    while monotonic() < deadline:
        if not group_alive(pgid):
            return
        sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def terminate_all(grace: float = GRACE_S) -> None:
    """Kill every group still running (on Ctrl-C: their new sessions did not get it)."""
    with _active_lock:
        groups = list(_active_groups)
    for pgid in groups:
        kill_group(pgid, grace)


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

    def stop(self, drain_s: float = 1.0) -> None:
        """Read what is already there (up to `drain_s`), then return even if the pipe stays open."""
        self.drain_until = monotonic() + drain_s
        self.stopping.set()

    def run(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if self.stopping.is_set() and (not ready or monotonic() > self.drain_until):
                return
            if not ready:
                continue
            chunk = os.read(self.fd, CHUNK)
            if not chunk:
                return
            self.log.write(chunk)
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
    with _active_lock:
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
            copier.join()
            if proc.stdout is not None:
                proc.stdout.close()
    return ProcessResult(None if timed_out else proc.returncode, timed_out, monotonic() - started)


def run_each(items: Sequence[Item], work: Callable[[Item], Result], jobs: int,
             on_start: Callable[[Item], None] | None = None,
             on_done: Callable[[Result], None] | None = None) -> list[Result]:
    """`work(item)` for every item on a pool of `jobs` threads; results in item order.

    On Ctrl-C (or any error) queued items are cancelled and every running
    process group is killed: they run in their own sessions, so the terminal's
    SIGINT reaches only us.
    """

    def one(item: Item) -> Result:
        if on_start is not None:
            on_start(item)
        return work(item)

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
        terminate_all()
        raise
    finally:
        pool.shutdown(wait=True)
    return [results[i] for i in range(len(items))]
