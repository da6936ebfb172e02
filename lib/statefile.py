"""State files under state/: JSON written atomically, read-modify-write under a lock."""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from lib.errors import OrchestratorError


def write_json(path: Path, document: Any) -> None:
    """Write `document` so that readers see the old file or the new one, never half of it."""
    write_text(path, json.dumps(document, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write `text` atomically: temp file, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def update_json(path: Path, change: Callable[[Any], Any], default: Any = None) -> Any:
    """Read, change and rewrite a state file atomically with respect to other updaters."""
    with locked(path):
        try:
            current = read_json(path, default)
        except OrchestratorError:
            # Generated state that no longer parses: keep it aside, start afresh.
            os.replace(path, path.with_name(path.name + ".corrupt"))
            current = default
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
