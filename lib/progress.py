"""Progress of work over many repos: one live line on a terminal, plain lines otherwise."""
from __future__ import annotations

import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from time import monotonic
from typing import Callable, Iterator, TextIO

from lib.gitpool import pause_for_forks
from lib.signals import STOP_SIGNALS
from lib.views import visible

# A count-only line (no item lines) is redrawn at most this often: a scan finishes
# hundreds of repos a second, and a terminal that draws every one slows the scan.
REDRAW_EVERY = 0.1
# How long a scan's fork waits for the ticker to step aside; one stuck writing to a terminal that reads
# nothing (Ctrl-S) stays, and the scan then forks nothing (lib.gitpool.forking).
PAUSE_WAIT_S = 1.0


class Progress:
    """Thread-safe: workers call start() and finish(); the live line redraws itself.

    Best effort: a stream that fails (a reader that left `2>&1 | head`, a full disk, stderr closed) silences
    the progress and never the work it reports on. Before, the error reached the run, which killed the
    fast-forwards under way mid-checkout and recorded nothing.
    """

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 live: bool | None = None, item_lines: bool = True) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr  # None: started with stderr closed (`2>&-`)
        self._broken = self.stream is None
        self.live = bool(not self._broken and self._isatty()) if live is None else live
        self.item_lines = item_lines
        self.done = 0
        self.failed = 0
        self.running: dict[str, float] = {}
        self.waiting: set[str] = set()  # started, but waiting for a turn (sync's network slots): not running
        self.started_at = monotonic()
        self._drawn_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._ticker_stop = threading.Event()
        self._unregister: Callable[[], None] | None = None
        if self.live and total:
            self._start_ticker()
            self._unregister = pause_for_forks(self._paused)

    def start(self, name: str) -> None:
        """`name` runs (again, after `wait`: its time counts from now)."""
        with self._lock:
            self.waiting.discard(name)
            self.running[name] = monotonic()
            self._redraw()

    def wait(self, name: str) -> None:
        """`name` waits for its turn (a network slot): counted apart, not shown as running, until `start`."""
        with self._lock:
            self.running.pop(name, None)
            self.waiting.add(name)
            self._redraw()

    def finish(self, name: str, line: str, failed: bool = False) -> None:
        with self._lock:
            self.running.pop(name, None)
            self.waiting.discard(name)
            self.done += 1
            self.failed += failed
            if self.item_lines:
                self._clear()
                # A line carries reasons made of git output, config values, a host's report: shown escaped,
                # as tables show them (a control character there must not drive the terminal).
                self._write(f"[{self.done}/{self.total}] {visible(line)}\n")
            elif monotonic() - self._drawn_at < REDRAW_EVERY:
                return
            self._redraw()
            self._write("", flush=True)

    def close(self) -> None:
        self._stop.set()
        self._ticker_stop.set()
        if self._unregister is not None:
            self._unregister()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            self._clear()
            self._write("", flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_ticker(self) -> None:
        self._ticker_stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(self._ticker_stop,), daemon=True)
        self._ticker.start()

    @contextmanager
    def _paused(self) -> Iterator[None]:
        """No ticker thread while a scan forks (a fork copies the locks it holds, held for good in the child);
        a new one ticks after."""
        ticker = self._ticker
        if ticker is None or self._stop.is_set():
            yield
            return
        self._ticker_stop.set()
        ticker.join(PAUSE_WAIT_S)
        try:
            yield
        finally:
            if not self._stop.is_set():
                self._start_ticker()

    def _tick(self, stop: threading.Event) -> None:
        # Stop signals go to the main thread, which handles them (and holds them while it forks a scan's helper).
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        while not stop.wait(0.5):
            with self._lock:
                if stop.is_set():  # paused while it waited for the lock
                    break
                self._redraw()
                self._write("", flush=True)

    def _isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (OSError, ValueError):  # a closed stream
            return False

    def _write(self, text: str, flush: bool = False) -> None:
        if self._broken:
            return
        try:
            if text:
                self.stream.write(text)
            if flush:
                self.stream.flush()
        except (OSError, ValueError):  # BrokenPipeError, ENOSPC, a closed stream: no more progress
            self._broken = True

    def _clear(self) -> None:
        if self.live:
            self._write("\r\x1b[K")

    def _redraw(self) -> None:
        if not self.live or self._stop.is_set():
            return
        now = self._drawn_at = monotonic()
        running = ", ".join(f"{name} {now - t:.0f}s" for name, t in sorted(self.running.items(), key=lambda kv: kv[1]))
        failed = f", {self.failed} failed" if self.failed else ""
        line = f"{self.label} {self.done}/{self.total}{failed} ({now - self.started_at:.0f}s)"
        if running:
            line += f" running: {running}"
        if self.waiting:
            line += f" ({len(self.waiting)} waiting for the network)"
        self._write("\r\x1b[K" + line[: self._width()])

    @staticmethod
    def _width() -> int:
        return max(20, shutil.get_terminal_size((100, 20)).columns - 1)
