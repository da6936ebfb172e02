"""A log's head and tail around a visible cut mark: cut once as it is read (foreach's output), or kept so while
it is written (a capped log). Standard library only: the proof workers' wrapper writes its logs through it."""
from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable

# A cut moves to a line's end when one is this close, so the mark gets a line of its own.
LINE_SLACK = 64 * 1024
COPY_CHUNK = 1024 * 1024
DEFAULT_LOG_CAP = 50 * 1024 * 1024
MIN_LOG_CAP = 64 * 1024
MARK_ROOM = 256  # a capped log's mark line is shorter than this
# A cut's new file: `.LOG.PID-RANDOM.cut` (the older `.LOG.cut` too), removed once its writer is gone.
LEFT_TEMP = re.compile(r"\..+\.log\.(?:(\d+)-[0-9a-f]+\.)?cut")
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
        write_all(target, chunk)
        start += len(chunk)


def write_all(target: BinaryIO, data: bytes | memoryview) -> None:
    """Every byte of `data` (an unbuffered file may take part of it per call)."""
    view = memoryview(data)
    while view:
        view = view[target.write(view) or 0:]


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

    Memory stays at one copy buffer. A cut writes the new file beside the log (a fresh name: nothing planted
    there is used) and renames it over the log, so a reader (or a kill) finds the old file or the new one, never
    half of one; a reader that keeps the old one open reads it to its end, and the mark says where the new one
    goes on (`read_layout`). When no new file can be made (a full disk), the cut is made in place.

    What the log's own writer (an agent) may do to it is survived: its folder is held open, so a symlink put
    there later is never written through; the size is the file's own (an agent emptying or appending to it);
    the log (or its folder) deleted or replaced is put back from the file written, at a write a second or more
    after the last look, and when it is closed.
    """

    def __init__(self, path: Path, cap: int = DEFAULT_LOG_CAP) -> None:
        self.path, self.cap = Path(path), max(int(cap), MIN_LOG_CAP)
        self.keep = (self.cap - head_budget(self.cap) - MARK_ROOM) // 2  # the tail a cut keeps: half the room
        self.slack = min(LINE_SLACK, self.cap // 8)
        self.lock = threading.Lock()
        self.folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            self._remove_left_temps()
            self.file = _open_log(self.path.name, self.folder)
        except BaseException:
            os.close(self.folder)
            raise
        self.checked = time.monotonic()
        self.at_line_start = True  # whether what was written last ends a line (a note of ours needs its own)
        if self._size() > self.cap:  # written with a larger cap before
            self._cut()

    def write(self, data: bytes) -> None:
        with self.lock:
            if time.monotonic() - self.checked >= 1.0:
                self._put_back(quietly=True)
            view = memoryview(data)
            self.at_line_start = self.at_line_start and not view  # part of it may land (a full disk)
            while view:
                room = self.cap - self._size()
                if room <= 0:
                    self._cut()
                    continue
                view = view[self.file.write(view[:room]) or 0:]
            if data:
                self.at_line_start = data[-1:] == b"\n"

    def flush(self) -> None:
        pass  # every write goes to the file at once (no buffer): a kill loses nothing written

    def close(self) -> None:
        """Close the log, put back at its path first when it was deleted or replaced (OSError when it cannot
        be: the file is closed all the same)."""
        with self.lock:
            if self.file.closed:
                return
            try:
                self._put_back(quietly=False)
            finally:
                self.file.close()
                os.close(self.folder)

    def __enter__(self) -> CappedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _size(self) -> int:
        return os.fstat(self.file.fileno()).st_size

    def _in_place(self) -> bool:
        try:
            there = os.stat(self.path.name, dir_fd=self.folder, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(self.file.fileno())
        return (there.st_ino, there.st_dev) == (mine.st_ino, mine.st_dev)

    def _put_back(self, quietly: bool) -> None:
        """The file written, at the log's path again when something else is there now (or nothing)."""
        self.checked = time.monotonic()
        try:
            self._refolder()
            if self._in_place():
                return
            size = self._size()
            self._replace(lambda target: copy_range(self.file, target, 0, size))
        except OSError:
            if not quietly:
                raise

    def _refolder(self) -> None:
        """The log's folder made again when it was deleted (never one a symlink put there leads to)."""
        if os.fstat(self.folder).st_nlink:
            return
        try:
            os.mkdir(self.path.parent)
        except FileExistsError:
            pass
        folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        os.close(self.folder)
        self.folder = folder

    def _cut(self) -> None:
        try:
            self._replace(self._write_cut)
        except OSError:  # no room for a new file (or no name for it): the same cut, made in this file
            self._cut_in_place()

    def _replace(self, fill: Callable[[BinaryIO], object]) -> None:
        """A new file, filled by `fill`, renamed over the log; it is the file written from now on. Not
        statefile.write_bytes: the new file is filled by streaming from the open log (never the whole log in
        memory), renamed within the folder descriptor the log was opened in, and kept open; a log needs no fsync."""
        name, fd = _new_temp(self.path.name, self.folder)
        target = open(fd, "a+b", buffering=0)
        try:
            fill(target)
            os.replace(name, self.path.name, src_dir_fd=self.folder, dst_dir_fd=self.folder)
        except BaseException:
            target.close()
            try:
                os.unlink(name, dir_fd=self.folder)  # nothing half-made left beside the log
            except OSError:
                pass
            raise
        self.file.close()
        self.file = target

    def _plan_cut(self, source: BinaryIO) -> tuple[int, int, bytes]:
        """(head end, tail start, the mark line) of a cut of the file now. The mark is looked for again each
        time: the writer's own record could be stale (the file emptied by someone else)."""
        end = os.fstat(source.fileno()).st_size
        layout = read_layout(source, self.cap) if end > head_budget(self.cap) else None
        if layout:
            head_end, mark_length, cut = layout
            body = head_end + mark_length
            tail_start = cut_points(source, body, end, 0, self.keep, self.slack)[1]
            cut += tail_start - body  # the old mark's own bytes are not counted: they were never output
        else:
            head_end, tail_start = cut_points(source, 0, end, head_budget(self.cap), self.keep, self.slack)
            cut = tail_start - head_end
        source.seek(max(head_end - 1, 0))
        return head_end, tail_start, self._mark(cut, head_end, head_end == 0 or source.read(1) == b"\n")

    def _write_cut(self, target: BinaryIO) -> None:
        source = self.file  # read through the descriptor written: never whatever the path names now
        head_end, tail_start, line = self._plan_cut(source)
        end = os.fstat(source.fileno()).st_size
        copy_range(source, target, 0, head_end)
        write_all(target, line)
        copy_range(source, target, tail_start, end)

    def _cut_in_place(self) -> None:
        """The cut without a new file: the mark written after the head, the tail moved down behind it, the rest
        truncated. Needs no room on disk; a reader may see it half done."""
        fd = self.file.fileno()
        head_end, tail_start, line = self._plan_cut(self.file)
        end = self._size()
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_APPEND)  # pwrite appends on an O_APPEND file (Linux)
        try:
            at = head_end + os.pwrite(fd, line, head_end)
            while tail_start < end:
                chunk = os.pread(fd, min(COPY_CHUNK, end - tail_start), tail_start)
                if not chunk:
                    break
                tail_start += len(chunk)
                while chunk:
                    written = os.pwrite(fd, chunk, at)
                    at, chunk = at + written, chunk[written:]
            os.ftruncate(fd, at)
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)

    def _remove_left_temps(self) -> None:
        """New files of cuts a kill stopped halfway, of any log in this folder (a try's log is never opened
        again, the next try's is): those whose writer's process is gone, by the pid in their names."""
        for name in os.listdir(self.folder):
            found = LEFT_TEMP.fullmatch(name)
            if found is None or (found.group(1) and _alive(int(found.group(1)))):
                continue
            try:
                os.unlink(name, dir_fd=self.folder)
            except OSError:
                pass  # a folder an agent put there: not ours to remove, and never used

    def _mark(self, cut: int, head_end: int, after_line: bool) -> bytes:
        return mark(cut, f" (the log's first {head_end} bytes, then its last ones: capped at {self.cap} bytes, "
                         "max_log_bytes)", after_line)


def _new_temp(name: str, folder: int) -> tuple[str, int]:
    """A file of a fresh name beside the log (made here, never one found there), open to append."""
    for _ in range(100):
        temp = f".{name}.{os.getpid()}-{secrets.token_hex(6)}.cut"
        try:
            return temp, os.open(temp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                                 dir_fd=folder)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name for a cut of {name}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _open_log(name: str, folder: int) -> BinaryIO:
    """The log to append to and read from (unbuffered); whatever is at its name but a regular file (a symlink,
    a FIFO, a socket) is replaced, never written through or waited on. A folder there is an OSError."""
    for _ in range(2):
        try:
            fd = os.open(name, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644,
                         dir_fd=folder)
        except OSError as err:
            if err.errno != errno.ELOOP:  # ELOOP: a symlink (O_NOFOLLOW)
                raise
            os.unlink(name, dir_fd=folder)
            continue
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.set_blocking(fd, True)
            return open(fd, "a+b", buffering=0)
        os.close(fd)
        os.unlink(name, dir_fd=folder)
    raise OSError(errno.EEXIST, f"{name} keeps being replaced", name)
