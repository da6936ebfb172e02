"""The stop signals of a run (Ctrl-C, `kill`, a closed terminal) as an exception; stdlib only.

One handling for every caller (lib.runner's run over many repos, lib.scan's
scan): in the main thread each stop signal raises `Signalled`; from then on
the stop signals are ignored until the handlers are put back, so a second
Ctrl-C (or a SIGHUP pending with the SIGTERM) never cuts short the killing
of what the first one stopped. A signal ignored on entry (nohup) stays
ignored. Front doors exit `exit_code(signum)`: 128 + the signal.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

# What a terminal's Ctrl-C, a `kill`, a CI cancel or docker stop, or a closed terminal sends.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Handlers = dict[int, Any]


class Signalled(BaseException):
    """A stop signal arrived; raised in the main thread by the handler `catch` installs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)


class Stopped(Exception):
    """A run or a scan a stop signal ended (what it started is gone): front doors print `notes`, then the
    message, and exit `exit_code`. lib.runner's RunInterrupted and lib.scan's ScanStopped are its kinds."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = exit_code(signum)
        self.notes: list[str] = []


def signal_name(signum: int) -> str:
    """SIGTERM for 15; `signal 99` for a number Python has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """The exit code of a process stopped by `signum`, as a shell says it."""
    return 128 + int(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def catch() -> Handlers:
    """Turn each stop signal into `Signalled` in the main thread; returns the handlers to `restore`.

    Only the first stop signal raises; the later ones do nothing: raised
    again inside the cleanup of the first, one would cut it short (in a
    lock's wait it leaves the lock broken). (Not SIG_IGN: a signal pending
    with the first would then print "ignored due to race condition".)
    Elsewhere than the main thread: nothing ({}).
    """
    if not _main_thread():
        return {}
    fired: list[int] = []

    def stop(signum: int, frame: object) -> None:
        if not fired:
            fired.append(signum)
            raise Signalled(signum)

    previous: Handlers = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored (nohup) stays ignored
            previous[signum] = signal.signal(signum, stop)
    return previous


def ignore() -> Handlers:
    """Ignore the stop signals (a stop is already under way); returns the handlers to `restore`.

    By a handler that does nothing, not SIG_IGN: what we start meanwhile (reading back what a killed step did)
    would inherit SIG_IGN through exec and live out a kill's grace. A signal ignored on entry stays ignored.
    """
    if not _main_thread():
        return {}
    return {signum: signal.signal(signum, _already_stopping) for signum in STOP_SIGNALS
            if signal.getsignal(signum) is not signal.SIG_IGN}


def _already_stopping(signum: int, frame: object) -> None:
    """A stop signal while a stop is under way: nothing more to do."""


def restore(handlers: Handlers) -> None:
    """Put back the handlers `catch` or `ignore` returned."""
    for signum, handler in handlers.items():
        if handler is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signum, handler)


@contextmanager
def raised() -> Iterator[None]:
    """`catch` for a block, the handlers put back after it.

    A SIGINT that arrived before the handler was in place (Python's own
    KeyboardInterrupt) leaves the block as `Signalled(SIGINT)` too.
    """
    previous = catch()
    try:
        yield
    except KeyboardInterrupt:
        raise Signalled(signal.SIGINT) from None
    finally:
        restore(previous)
