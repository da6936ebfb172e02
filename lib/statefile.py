"""State files under state/: JSON written atomically, read-modify-write under a lock."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import tempfile
import threading
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from lib import procs
from lib.errors import OrchestratorError, clip

_ABSENT = object()
_umask_lock = threading.Lock()
MAX_FILE_BYTES = 16 * 1024 * 1024  # far above any state, config or task file; a stray disk image is refused
MAX_DEPTH = 64  # levels of JSON nesting; the files this tool writes use a handful
NESTED = f"nested deeper than {MAX_DEPTH} levels"
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


class UnreadableFile(OrchestratorError):
    """A state, config or task file that cannot be used: not a regular file, too large, unreadable or malformed.

    `why` is the short reason (a set-aside note shows it); the message adds the detail and what to do.
    """

    def __init__(self, path: Path, why: str, detail: str = "", advice: str = "") -> None:
        self.path, self.why = path, why
        super().__init__(f"{path}: {why}{f' ({detail})' if detail else ''}{f'; {advice}' if advice else ''}")


class TooDeep(ValueError):
    """A JSON document nested deeper than MAX_DEPTH (json.loads would raise RecursionError, or a writer later)."""


class NotRegular(OSError):
    """Something other than a regular file where one is opened (errno EINVAL); `kind` names it when known."""

    kind: str | None = None


def open_regular(path: Path | str, flags: int, mode: int = 0o644, *, char_device: bool = False) -> int:
    """A descriptor for the regular file at `path` (a symlink is followed), or NotRegular: opened without
    blocking and checked before any use, since a FIFO would block the open or a read until a writer came
    and a device (/dev/zero) never ends a read. Other OSErrors as os.open raises them. `char_device`: a
    character device is taken too (a run's log may be /dev/null), never a block device (a disk)."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, mode)
    try:
        found = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if stat.S_ISREG(found) or (char_device and stat.S_ISCHR(found)):
        return fd
    os.close(fd)
    refused = NotRegular(errno.EINVAL, "not a regular file", str(path))
    refused.kind = next((kind for is_kind, kind in _KINDS if is_kind(found)), None)
    raise refused


def open_regular_file(path: Path) -> BinaryIO | None:
    """The regular file at `path` opened to read, never through a symlink (an agent's, to a file of the user's);
    None when nothing is there or something else is (a FIFO would block the read forever)."""
    try:
        return os.fdopen(open_regular(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
    except OSError:
        return None


def append_whole(fd: int, data: bytes) -> tuple[int, int]:
    """Append `data` (a line) to the file open at `fd` with O_APPEND (its writers share a lock): all of it, or
    none: a write that fails midway (a full disk) is cut back off, so no part of a line is left for a reader, or
    for the next line to join. Returns where it starts and ends. A descriptor without O_APPEND is a ValueError
    (a caller's mistake, nothing written): its writes would land at its offset, not at the end."""
    if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
        raise ValueError(f"append_whole: descriptor {fd} is not open with O_APPEND")
    start = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        with suppress(OSError):
            os.ftruncate(fd, start)
        raise
    return start, start + len(data)


def read_regular(path: Path, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of the regular file at `path` (a symlink is followed); None when there is nothing there.

    Anything else is an UnreadableFile, never a hang or a MemoryError (see
    open_regular); at most `limit` bytes are read.
    """
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except NotRegular as err:
        raise UnreadableFile(path, f"cannot read: it is {err.kind}, not a regular file" if err.kind
                             else "cannot read: not a regular file") from None
    except OSError as err:
        raise UnreadableFile(path, f"cannot read: {err.strerror or err}") from None
    try:
        data = _read_at_most(fd, limit)
    except OSError as err:
        raise UnreadableFile(path, f"cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if data is None:
        raise UnreadableFile(path, f"cannot read: larger than {limit // (1024 * 1024)} MiB, "
                                   "the limit for the files this tool reads")
    return data


def read_small(path: Path | str, limit: int = MAX_FILE_BYTES, *, follow_symlinks: bool = True) -> bytes | None:
    """The bytes of the regular file at `path`, or None: missing, not a regular file, over `limit` bytes, a
    symlink when not `follow_symlinks`, or any read error. Never a FIFO's wait nor a device's endless read.

    For readers whose None means "in doubt, ask git" (gitrefs, the monitor's alerts); read_regular raises
    instead. Readers that keep the descriptor (a log's tail or the part after an offset, a copy, a pack's
    index) use open_regular.
    """
    try:
        fd = open_regular(path, os.O_RDONLY | (0 if follow_symlinks else os.O_NOFOLLOW))
    except OSError:  # NotRegular, ELOOP for a symlink not followed, ENOENT, EACCES, ...
        return None
    try:
        return None if os.fstat(fd).st_size > limit else _read_at_most(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_at_most(fd: int, limit: int) -> bytes | None:
    """All of `fd` to its end, or None once it holds more than `limit` bytes (a file may grow while read)."""
    chunks, size = [], 0
    while size <= limit:
        chunk = os.read(fd, min(1024 * 1024, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None


def loads(text: str | bytes) -> Any:
    """json.loads, except that a document nested deeper than MAX_DEPTH is a TooDeep, never a RecursionError.

    Python's parser gives up at about a thousand levels by raising RecursionError;
    a document just under that parses, then breaks whatever walks it later
    (the indented encoder, repr). No file this tool reads needs more than MAX_DEPTH.
    """
    try:
        document = json.loads(text)
    except RecursionError:
        raise TooDeep(NESTED) from None
    if nested_deeper_than(document, MAX_DEPTH):
        raise TooDeep(NESTED)
    return document


def nested_deeper_than(document: Any, limit: int) -> bool:
    """Whether lists and dicts nest more than `limit` levels (walked without recursion)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def write_json(path: Path, document: Any) -> None:
    """Write `document` so that readers see the old file or the new one, never half of it."""
    write_text(path, json.dumps(document, indent=2) + "\n")


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Write `text` atomically: temp file, fsync, rename, fsync the directory (until then a crash can undo
    the rename). `mode`: the file's permission bits (default: a plain file's, 0o666 less the umask)."""
    write_bytes(path, text.encode("utf-8"), mode)


def write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """`write_text` for bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_temp(path: Path, data: bytes, mode: int | None = None, prefix: str = ".") -> str:
    """A fsynced temp file beside `path` holding `data` (named PREFIX + the file's name + random + .tmp), with
    `mode` (default: a plain file's, 0o666 less the umask; mkstemp's own is 0600). The caller renames it over
    `path` (then `fsync_dir`) or removes it: for several files that must be replaced back to back."""
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def fsync_dir(directory: Path) -> None:
    """Make the renames in `directory` survive a crash."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def current_umask() -> int:
    """The process umask, read without changing it (os.umask() sets it, racing other threads)."""
    mask = procs.umask()
    if mask is not None:
        return mask
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def read_json(path: Path, default: Any = None) -> Any:
    """A state file's document (`default` when there is none); UnreadableFile when it cannot be one."""
    data = read_regular(path)
    if data is None:
        return default
    advice = "it is generated: delete it and run again"
    try:
        return loads(data.decode("utf-8"))
    except TooDeep:
        raise UnreadableFile(path, NESTED, advice=advice) from None
    except ValueError as err:  # not UTF-8, not JSON
        raise UnreadableFile(path, "not valid JSON", str(err), advice) from None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside `path` (two runs updating one state file take turns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock_held(path.parent / f".{path.name}.lock"):
        yield


@contextmanager
def lock_held(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_file` (made if missing), waiting for its holder; OSError as `open_lock`'s."""
    with os.fdopen(open_lock(lock_file), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def open_lock(path: Path) -> int:
    """A descriptor of the lock file at `path` (made if missing) to flock; OSError when something other than
    a regular file is there (opening a FIFO to write would wait for a reader forever)."""
    try:
        return open_regular(path, os.O_RDWR | os.O_CREAT)
    except NotRegular:
        raise OSError(errno.EINVAL, "not a regular file (a FIFO or a device where a lock file belongs)") from None


def _aside(path: Path) -> Path:
    return path.with_name(path.name + ".corrupt")


def set_aside(path: Path, keep_older: bool = False) -> Path:
    """Rename `path` to NAME.corrupt (replacing an older one, unless `keep_older`: for a file whose older damaged
    copy may hold the only record of something); a name of its own when that cannot be replaced (a directory at
    either end) or is kept. Not a write: a statefile of its own."""
    aside = _aside(path)
    try:
        if keep_older and os.path.lexists(aside):
            raise FileExistsError(str(aside))
        os.replace(path, aside)
    except OSError:
        aside = path.with_name(f"{path.name}.corrupt-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}")
        os.replace(path, aside)
    return aside


def set_aside_if_bad(path: Path, problem: Callable[[Any], str | None] | None = None) -> str | None:
    """Move a state file that does not parse (or whose shape `problem` rejects) aside; say so in one line.

    State is generated: a fresh file replaces it, and the old one is kept as
    `NAME.corrupt` for a look. Returns None when the file is fine or absent.
    """
    with locked(path):
        why = _problem_of(path, problem)
        if why is None:
            return None
        aside = set_aside(path)
        return f"{path}: {why}; set aside as {aside.name}, a fresh one will be written"


def _problem_of(path: Path, problem: Callable[[Any], str | None] | None) -> str | None:
    return _checked(path, problem)[0]


def _checked(path: Path, problem: Callable[[Any], str | None] | None) -> tuple[str | None, Any]:
    """(what is wrong with the state file or None, its document or _ABSENT), from one read."""
    try:
        document = read_json(path, _ABSENT)
    except UnreadableFile as err:
        return err.why, _ABSENT
    if document is _ABSENT or problem is None:
        return None, document
    return problem(document), document


def update_json(path: Path, change: Callable[[Any], Any], default: Any = None,
                problem: Callable[[Any], str | None] | None = None) -> Any:
    """Read, change and rewrite a state file atomically with respect to other updaters.

    Generated state that no longer parses (or that `problem` rejects) is kept aside; `change` starts afresh.
    """
    with locked(path):
        why, current = _checked(path, problem)  # one read: the document checked is the one changed
        if why is not None:
            set_aside(path)
        document = change(default if why is not None or current is _ABSENT else current)
        write_json(path, document)
        return document


@contextmanager
def one_run_at_a_time(lock_file: Path, what: str) -> Iterator[None]:
    """Hold `lock_file` for the whole run, or refuse naming the run that holds it."""
    with held_lock(lock_file, what, lambda holder: OrchestratorError(
            f"{what} is already running in this workspace ({holder}; lock {lock_file}): wait for it to finish")):
        yield


@contextmanager
def held_lock(lock_file: Path, what: str, busy: Callable[[str], Exception]) -> Iterator[None]:
    """Hold `lock_file` (non-blocking flock) until the block ends, or raise `busy(holder)`.

    The holder writes `pid N started TIME` in the file; `holder` is that text
    (printable, clipped) or "another process". flock is released when its
    holder dies, so a file left by a killed run never blocks. The file is
    emptied, never removed: removing it would let a third run lock a new file
    while a second still holds the old one. A lock that cannot be opened (a
    FIFO or a directory there, no permission) is an OrchestratorError naming it.
    """
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = open_lock(lock_file)
    except OSError as err:
        raise OrchestratorError(f"{lock_file}: cannot open the {what} lock: {err.strerror or err}") from None
    with open(fd, "r+", encoding="utf-8", errors="replace") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = "".join(c if c.isprintable() else "?" for c in " ".join(lock.read(200).split()))
            holder = clip(text, 80) if text else "another process"
            raise busy(holder) from None
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        lock.truncate()
        lock.write(f"pid {os.getpid()} started {started}")
        lock.flush()
        try:
            yield
        finally:
            lock.seek(0)
            lock.truncate()
