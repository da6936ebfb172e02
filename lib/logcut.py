"""A log's head and tail around a visible cut mark: cut once as it is read (foreach's output), or kept so while
it is written (a capped log). Standard library only: the proof workers' wrapper writes its logs through it."""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import BinaryIO

# A cut moves to a line's end when one is this close, so the mark gets a line of its own.
LINE_SLACK = 64 * 1024
COPY_CHUNK = 1024 * 1024
DEFAULT_LOG_CAP = 50 * 1024 * 1024
MIN_LOG_CAP = 64 * 1024
MARK_ROOM = 256  # a capped log's mark line is shorter than this
# A capped log's mark says where it sits (its first byte is the file's byte N): text an agent printed that
# looks like one is not taken for it, as it would have to name its own place in the file.
CAPPED_MARK = re.compile(rb"\[\.\.\. (\d+) bytes cut here \(the log's first (\d+) bytes, then its last ones: "
                         rb"capped at \d+ bytes, max_log_bytes\)\]\n")


def cut_points(log: BinaryIO, start: int, end: int, head_bytes: int, tail_bytes: int,
               slack: int = LINE_SLACK) -> tuple[int, int]:
    """Where to cut `log[start:end]` (longer than head_bytes + tail_bytes): (head_end, tail_start), keeping at
    most `head_bytes` after `start` and `tail_bytes` before `end`. Each cut moves to a line's end when one is
    within `slack` bytes. Reads two windows of at most `slack` bytes, whatever the log's size."""
    head_end = start + head_bytes
    if head_bytes:
        low = max(start, head_end - slack)
        log.seek(low)
        line_end = log.read(head_end - low).rfind(b"\n")
        head_end = low + line_end + 1 if line_end >= 0 else head_end
    tail_start = end - tail_bytes
    log.seek(tail_start)
    line_start = log.read(min(slack, tail_bytes)).find(b"\n")
    tail_start = tail_start + line_start + 1 if line_start >= 0 else tail_start
    return head_end, tail_start


def mark(cut: int, note: str, after_line: bool = True) -> bytes:
    """The line that stands where `cut` bytes were left out (a newline first when the head ends mid-line)."""
    return ("" if after_line else "\n").encode() + f"[... {cut} bytes cut here{note}]\n".encode()


def copy_range(source: BinaryIO, target: BinaryIO, start: int, end: int) -> None:
    source.seek(start)
    while start < end:
        chunk = source.read(min(COPY_CHUNK, end - start))
        if not chunk:
            break
        target.write(chunk)
        start += len(chunk)


def head_budget(cap: int) -> int:
    return cap // 2


def read_layout(log: BinaryIO, cap: int) -> tuple[int, int, int] | None:
    """(where the mark starts, its length, bytes cut) of a log kept by CappedLog with this cap; None when it was
    never cut."""
    head = head_budget(cap)
    low = max(0, head - min(LINE_SLACK, cap // 8) - 1)
    log.seek(low)
    window = log.read(head + MARK_ROOM - low)
    for found in CAPPED_MARK.finditer(window):
        at, length, said = low + found.start(), found.end() - found.start(), int(found.group(2))
        if said == at:
            return at, length, int(found.group(1))
        if said == at - 1 and found.start() > 0 and window[found.start() - 1:found.start()] == b"\n":
            return at - 1, length + 1, int(found.group(1))  # the newline the mark put after a cut line
    return None


class CappedLog:
    """An append-only log file never over `cap` bytes while it is written, whatever is written to it: past the
    cap it holds its first half (about), a mark saying how many bytes were cut, and its newest bytes.

    Memory stays at one copy buffer. A cut writes the new file beside the log and renames it over the log, so a
    reader (or a kill) finds the old file or the new one, never half of one; a reader that keeps the old one
    open reads it to its end, and the mark says where the new one goes on (`read_layout`).
    """

    def __init__(self, path: Path, cap: int = DEFAULT_LOG_CAP) -> None:
        self.path, self.cap = Path(path), max(int(cap), MIN_LOG_CAP)
        self.keep = (self.cap - head_budget(self.cap) - MARK_ROOM) // 2  # the tail a cut keeps: half the room
        self.slack = min(LINE_SLACK, self.cap // 8)
        self.lock = threading.Lock()
        self.file = _open_log(self.path)
        self.size = self.file.seek(0, os.SEEK_END)
        self.layout = read_layout(self.file, self.cap) if self.size > head_budget(self.cap) else None
        if self.size > self.cap:  # written with a larger cap before
            self._cut()

    def write(self, data: bytes) -> None:
        with self.lock:
            view = memoryview(data)
            while view:
                room = self.cap - self.size
                if room <= 0:
                    self._cut()
                    continue
                piece = view[:room]
                self.file.write(piece)
                self.size += len(piece)
                view = view[len(piece):]
            self.file.flush()

    def flush(self) -> None:
        with self.lock:
            self.file.flush()

    def close(self) -> None:
        with self.lock:
            self.file.close()

    def __enter__(self) -> CappedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cut(self) -> None:
        """Replace the log with its head, mark and tail. Not statefile.write_text: the cut streams from the
        log's descriptor into the temp file, never the whole log in memory; a log needs no fsync."""
        self.file.flush()
        temp = self.path.with_name(f".{self.path.name}.cut")
        temp.unlink(missing_ok=True)  # a cut killed halfway
        try:
            layout = self._write_cut(temp)
            os.replace(temp, self.path)
        except BaseException:
            temp.unlink(missing_ok=True)  # a full disk: the log stays as it was, nothing half-made beside it
            raise
        self.file.close()
        self.file = _open_log(self.path)
        self.size, self.layout = self.file.seek(0, os.SEEK_END), layout

    def _write_cut(self, temp: Path) -> tuple[int, int, int]:
        source = self.file  # read through the descriptor written: never whatever the path names now
        with open(temp, "xb", opener=_no_follow) as target:
            end = os.fstat(source.fileno()).st_size
            if self.layout:
                head_end, mark_length, cut = self.layout
                body = head_end + mark_length
                tail_start = cut_points(source, body, end, 0, self.keep, self.slack)[1]
                cut += tail_start - body  # the old mark's own bytes are not counted: they were never output
            else:
                head_end, tail_start = cut_points(source, 0, end, head_budget(self.cap), self.keep, self.slack)
                cut = tail_start - head_end
            source.seek(head_end - 1)
            line = self._mark(cut, head_end, head_end == 0 or source.read(1) == b"\n")
            copy_range(source, target, 0, head_end)
            target.write(line)
            copy_range(source, target, tail_start, end)
        return head_end, len(line), cut

    def _mark(self, cut: int, head_end: int, after_line: bool) -> bytes:
        return mark(cut, f" (the log's first {head_end} bytes, then its last ones: capped at {self.cap} bytes, "
                         "max_log_bytes)", after_line)


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW, 0o644)


def _open_log(path: Path) -> BinaryIO:
    """The log to append to and read from; a symlink put at its path is replaced, never written through."""
    try:
        return open(path, "a+b", opener=_no_follow)
    except OSError as err:
        if not path.is_symlink():
            raise err from None
    path.unlink()
    return open(path, "a+b", opener=_no_follow)
