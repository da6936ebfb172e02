"""State files under state/: JSON written atomically, read-modify-write under a lock."""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from lib.errors import OrchestratorError

_ABSENT = object()
_umask_lock = threading.Lock()


def write_json(path: Path, document: Any) -> None:
    """Write `document` so that readers see the old file or the new one, never half of it."""
    write_text(path, json.dumps(document, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write `text` atomically: temp file, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; state files are plain files
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def current_umask() -> int:
    """The process umask, read without changing it (os.umask() sets it, racing other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise OrchestratorError(f"{path}: not valid JSON ({err}); it is generated: delete it and run again") from None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside `path` (two runs updating one state file take turns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _aside(path: Path) -> Path:
    return path.with_name(path.name + ".corrupt")


def set_aside_if_bad(path: Path, problem: Callable[[Any], str | None] | None = None) -> str | None:
    """Move a state file that does not parse (or whose shape `problem` rejects) aside; say so in one line.

    State is generated: a fresh file replaces it, and the old one is kept as
    `NAME.corrupt` for a look. Returns None when the file is fine or absent.
    """
    with locked(path):
        why = _problem_of(path, problem)
        if why is None:
            return None
        os.replace(path, _aside(path))
        return f"{path}: {why}; set aside as {_aside(path).name}, a fresh one will be written"


def _problem_of(path: Path, problem: Callable[[Any], str | None] | None) -> str | None:
    try:
        document = read_json(path, _ABSENT)
    except OrchestratorError:
        return "not valid JSON"
    if document is _ABSENT or problem is None:
        return None
    return problem(document)


def update_json(path: Path, change: Callable[[Any], Any], default: Any = None,
                problem: Callable[[Any], str | None] | None = None) -> Any:
    """Read, change and rewrite a state file atomically with respect to other updaters.

    Generated state that no longer parses (or that `problem` rejects) is kept aside; `change` starts afresh.
    """
    with locked(path):
        if _problem_of(path, problem) is not None:
            os.replace(path, _aside(path))
        current = read_json(path, default)
        document = change(current)
        write_json(path, document)
        return document


@contextmanager
def one_run_at_a_time(lock_file: Path, what: str) -> Iterator[None]:
    """Hold `lock_file` for the whole run, or refuse naming the run that holds it.

    flock is released when its holder dies, so a file left by a killed run never
    blocks. The file is emptied, never removed: removing it would let a third
    run lock a new file while a second still holds the old one.
    """
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise OrchestratorError(f"{lock_file}: cannot open the {what} lock: {err.strerror}") from None
    with open(fd, "r+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock.read().strip() or "another process"
            raise OrchestratorError(f"{what} is already running in this workspace ({holder}; lock {lock_file}): "
                                    "wait for it to finish") from None
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        lock.truncate()
        lock.write(f"pid {os.getpid()} started {started}")
        lock.flush()
        try:
            yield
        finally:
            lock.seek(0)
            lock.truncate()
