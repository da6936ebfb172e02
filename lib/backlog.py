"""Task files (tasks/backlog.md, active.md, completed.md): parse, move, add; locked, atomic, crash-safe.

Over 500 lines, one job: byte-exact splicing, the lock, the journal and crash recovery are one contract.

The files are the user's: the tool owns only the task blocks it moves and the
stamp lines it adds. Everything else (preamble, comments, odd headings, blank
lines, line endings, invalid UTF-8) is kept byte for byte, so a file is parsed
into spans with exact offsets and a change splices text, never re-renders it.

A move touches two files. It runs under a lock (tasks/.lock, fcntl) and writes
a journal (tasks/.move-journal.json: both files' contents before and after)
before replacing each file atomically. A move that was killed half way is
finished by the next command that takes the lock (see `_recover`). Reading
takes no lock (a read-only tasks/ can be listed): a reader reads everything
twice and shows a move in progress, or killed, where its journal says it ends.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import unicodedata
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Iterator

from lib import statefile
from lib.errors import OrchestratorError
from lib.statefile import MAX_FILE_BYTES, UnreadableFile, loads, lock_held, read_regular

STATES = ("backlog", "active", "completed")
FILES = {state: f"{state}.md" for state in STATES}
MOVES = {"start": ("backlog", "active", "started"), "complete": ("active", "completed", "completed")}
DEFAULT_PREAMBLES = {
    "backlog": "# Backlog\n\nPrioritized work items waiting to be started.\n",
    "active": "# Active Tasks\n\nCurrently in-progress work.\n",
    "completed": "# Completed Tasks\n\nFinished work (append-only log).\n",
}
LOCK_NAME = ".lock"
JOURNAL_NAME = ".move-journal.json"
TEMP_PREFIX = ".orchestrator-"
# Test hook: the process SIGKILLs itself when it reaches this step (see CRASH_STEPS).
CRASH_ENV = "ORCHESTRATOR_TASKS_CRASH_AT"
CRASH_STEPS = ("locked", "journal-temp", "journal", "target-temp", "target", "source-temp", "source", "done")

ENCODING = ("utf-8", "surrogateescape")  # decodes any bytes and encodes them back unchanged
HEADING_RE = re.compile(r"^ {0,3}(#{1,6})(?:[ \t](.*))?$")  # its text: see _heading_text
FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
COMMENT_OPEN_RE = re.compile(r"^ {0,3}<!--")
COMMENT_CLOSE = "-->"
TASK_HEADING_RE = re.compile(r"^\[(?P<id>[^\]\s](?:[^\]]*[^\]\s])?)\][ \t]+(?P<title>\S.*)$")
LINK_HEADING_RE = re.compile(r"^\[[^\]]*\]\(")  # `### [Roadmap](https://...)`: a link, not a task
BARE_TASK_ID_RE = re.compile(r"^\[?task-\d+\b", re.IGNORECASE)
FIELD_RE = re.compile(r"^[ \t]*[-*][ \t]+\*\*(?P<key>\w+)\*\*:(?P<value>.*)$")  # value: strip blanks
ID_NUMBER_RE = re.compile(r"^task-(\d+)$", re.IGNORECASE)
LONE_CR_RE = re.compile(r"\r(?!\n)")
MAX_ID_DIGITS = 100
# A journal holds two files' text after the move, as JSON: each byte is at most 6 characters (\udcff).
JOURNAL_MAX_BYTES = 2 * 6 * MAX_FILE_BYTES + 64 * 1024
CONTROL_CHARACTERS = {c: "\ufffd" for c in (*range(0x20), *range(0x7f, 0xa0)) if c != 0x09}
DATE_FIELDS = ("created", "started", "completed")


class TaskFileError(OrchestratorError):
    """A task file that cannot be used as it is (malformed heading, duplicate id, unclosed fence)."""


class TaskStateError(OrchestratorError):
    """An unknown id, or a task in the wrong file for the command."""


@dataclass
class Task:
    id: str
    title: str
    state: str
    path: Path
    line: int  # 1-based line of the heading
    start: int  # character offsets of the block in the file's text
    end: int
    fields: dict[str, str] = field(default_factory=dict)
    last_field_end: int = 0  # offset just after the last `- **key**: value` line (0: none)

    def get(self, key: str) -> str:
        return self.fields.get(key, "")

    def stamp_date(self, key: str) -> date | None:
        try:
            return date.fromisoformat(self.get(key)[:10])
        except ValueError:
            return None

    def age_days(self, today: date) -> int | None:
        key = {"backlog": "created", "active": "started", "completed": "completed"}[self.state]
        when = self.stamp_date(key)
        return (today - when).days if when else None

    def to_json(self, today: date) -> dict[str, object]:
        return {"id": self.id, "title": self.title, "state": self.state, "file": str(self.path), "line": self.line,
                **{k: self.fields.get(k) for k in ("repo", "type", "priority", "assigned", "description", "branch",
                                                   "created", "started", "completed")},
                "age_days": self.age_days(today), "fields": dict(self.fields)}


@dataclass
class TaskFile:
    state: str
    path: Path
    text: str
    tasks: list[Task]
    headings: list[tuple[int, int, str]]  # (offset, level, text) of every heading
    exists: bool = True


def same_id(task_id: str) -> str:
    """The form ids are compared in: `tâche-1` typed composed (NFC) or decomposed (NFD) is one id.

    The files keep whichever bytes the user wrote."""
    return unicodedata.normalize("NFC", task_id)


def readable(text: str) -> str:
    """A value for tables and JSON: bytes that are not UTF-8, and control characters that would drive the
    terminal (ESC, BEL, CSI, ...; a tab stays), become U+FFFD. The file keeps them."""
    return text.encode(*ENCODING).decode("utf-8", "replace").translate(CONTROL_CHARACTERS)


def _lines(text: str) -> Iterator[tuple[int, str, int]]:
    """(start offset, line without its line ending, offset after the line ending) for each line."""
    pos = 0
    while pos < len(text):
        nl = text.find("\n", pos)
        end = len(text) if nl < 0 else nl + 1
        yield pos, text[pos:end].rstrip("\r\n"), end
        pos = end


def parse(state: str, path: Path, text: str) -> TaskFile:
    """Split a task file into its tasks; raise TaskFileError (file:line) for what cannot be a task file.

    A block runs from its `### [id] title` heading to the next heading of any
    level or the end of the file. Lines inside fenced code blocks (``` or ~~~)
    and multi-line HTML comments (<!-- ... -->) are never headings: a
    `# comment` in a user's snippet does not end a block, and a task shown in a
    fence or commented out is not a task. An unclosed fence or comment is an
    error, because everything after it would silently stop being tasks.
    """
    lone_cr = LONE_CR_RE.search(text)
    if lone_cr:  # markdown ends a line there too: splitting at \n only would hide the headings after it
        raise TaskFileError(f"{path}:{text.count(chr(10), 0, lone_cr.start()) + 1}: a carriage return that does "
                            "not end a CRLF (old Mac line endings?); use LF or CRLF line endings")
    tasks: list[Task] = []
    headings: list[tuple[int, int, str]] = []
    opaque: tuple[str, int] | None = None  # (what closes it: a fence or "-->", the line it opened on)
    current: Task | None = None
    for number, (start, line, end) in enumerate(_lines(text), 1):
        if start == 0 and line.startswith("\ufeff"):
            line, start = line[1:], 1  # a byte-order mark is not part of the first heading, nor of its block
        if opaque:
            if _closes(opaque[0], line):
                opaque = None
            continue
        opener = _opens(line)
        if opener:
            opaque = (opener, number)
            continue
        heading = HEADING_RE.match(line)
        if heading:
            if current:
                current.end = start
                current = None
            level, heading_text = len(heading.group(1)), _heading_text(heading.group(2) or "")
            headings.append((start, level, heading_text))
            current = _task_heading(state, path, number, level, heading_text, start)
            if current:
                current.last_field_end = end
                tasks.append(current)
            continue
        if current:
            found = FIELD_RE.match(line)
            if found:
                current.fields[found.group("key").lower()] = readable(found.group("value").strip(" \t"))
                current.last_field_end = end
    if current:
        current.end = len(text)
    if opaque:
        what = "HTML comment <!--" if opaque[0] == COMMENT_CLOSE else f"code fence {opaque[0]}"
        raise TaskFileError(f"{path}:{opaque[1]}: {what} is never closed "
                            "(the tasks after it would be hidden); close it")
    seen: dict[str, Task] = {}
    for task in tasks:
        if same_id(task.id) in seen:
            raise TaskFileError(f"{path}:{task.line}: duplicate task id {task.id} "
                                f"(also at line {seen[same_id(task.id)].line})")
        seen[same_id(task.id)] = task
    return TaskFile(state, path, text, tasks, headings)


def _heading_text(text: str) -> str:
    """A heading's text without blanks around it or a closing `#` run (`## High Priority ##`); linear time."""
    text = text.strip(" \t")
    body = text.rstrip("#")
    if body != text and (not body or body[-1] in " \t"):
        text = body.rstrip(" \t")
    return text


def _opens(line: str) -> str | None:
    """What closes the fence or multi-line HTML comment this line opens (None: it opens neither)."""
    fence = FENCE_RE.match(line)
    if fence and not (fence.group(1)[0] == "`" and "`" in line[fence.end():]):
        return fence.group(1)
    comment = COMMENT_OPEN_RE.match(line)
    if comment and COMMENT_CLOSE not in line[comment.end():]:
        return COMMENT_CLOSE
    return None


def _closes(closer: str, line: str) -> bool:
    if closer == COMMENT_CLOSE:
        return COMMENT_CLOSE in line
    fence = FENCE_RE.match(line)
    return bool(fence) and fence.group(1)[0] == closer[0] and len(fence.group(1)) >= len(closer) \
        and not line.strip().lstrip(closer[0])


def _task_heading(state: str, path: Path, number: int, level: int, text: str, start: int) -> Task | None:
    """The task a heading opens, None for an ordinary heading; TaskFileError for a broken task heading."""
    where = f"{path}:{number}"
    if level == 3 and text.startswith("[") and not LINK_HEADING_RE.match(text):
        match = TASK_HEADING_RE.match(text)
        if not match:
            raise TaskFileError(f"{where}: malformed task heading {'### ' + text!r}: "
                                "expected `### [task-001] Short title` (id: any text but `]`)")
        if readable(match.group("id")) != match.group("id"):
            raise TaskFileError(f"{where}: malformed task heading {readable('### ' + text)!r}: its id has a "
                                "byte that is not UTF-8 or a control character")
        return Task(match.group("id"), readable(match.group("title").strip()), state, path, number, start, start)
    if BARE_TASK_ID_RE.match(text):
        raise TaskFileError(f"{where}: malformed task heading {'#' * level + ' ' + text!r}: "
                            "a task heading is `### [task-001] Short title` (level 3, id in brackets)")
    return None


def _read_bytes(path: Path, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """A regular file's bytes (None: absent); a FIFO, a device or a huge file is a TaskFileError, not a hang."""
    try:
        return read_regular(path, limit)
    except UnreadableFile as err:
        raise TaskFileError(str(err)) from None


def read_file(tasks_dir: Path, state: str) -> TaskFile:
    return _parsed(tasks_dir, state, _read_bytes(tasks_dir / FILES[state]))


def _parsed(tasks_dir: Path, state: str, data: bytes | None) -> TaskFile:
    path = tasks_dir / FILES[state]
    if data is None:
        return TaskFile(state, path, "", [], [], exists=False)
    return parse(state, path, data.decode(*ENCODING))


def read_all(tasks_dir: Path, contents: dict[str, bytes | None] | None = None) -> dict[str, TaskFile]:
    """All three files (or `contents`, their bytes as already read), checked together: an id may appear only
    once across them."""
    if contents is None:
        contents = {state: _read_bytes(tasks_dir / FILES[state]) for state in STATES}
    files = {state: _parsed(tasks_dir, state, contents[state]) for state in STATES}
    seen: dict[str, Task] = {}
    for state in STATES:
        for task in files[state].tasks:
            if same_id(task.id) in seen:
                other = seen[same_id(task.id)]
                raise TaskFileError(f"{task.path}:{task.line}: duplicate task id {task.id} "
                                    f"(also in {other.path}:{other.line})")
            seen[same_id(task.id)] = task
    return files


# --- splicing ---------------------------------------------------------------------------------------------

def _newline_of(text: str, offset: int) -> str:
    """The line ending the file uses at this point (CRLF files keep CRLF)."""
    nl = text.find("\n", offset)
    return "\r\n" if nl > 0 and text[nl - 1] == "\r" else "\n"


def with_stamp(file: TaskFile, task: Task, key: str, value: str) -> str:
    """The task's block with `- **key**: value` after its last field line (else after its heading)."""
    block = file.text[task.start:task.end]
    newline = _newline_of(file.text, task.start)
    cut = task.last_field_end - task.start
    head, tail = block[:cut], block[cut:]
    if not head.endswith("\n"):
        head += newline
    return f"{head}- **{key}**: {value}{newline}{tail}"


def insert_block(text: str, offset: int, block: str) -> str:
    """Insert a block at `offset` (a line start or the end) with a blank line before it and after it."""
    newline = _newline_of(text, 0) if "\n" in text else _newline_of(block, 0)
    before, after = text[:offset], text[offset:]
    if before and not before.endswith("\n"):
        before += newline
    if before and not before.endswith(("\n\n", "\n\r\n")):
        before += newline
    if not block.endswith("\n"):
        block += newline
    if after and not block.endswith(("\n\n", "\n\r\n")):
        block += newline
    return before + block + after


def append_block(text: str, block: str) -> str:
    return insert_block(text, len(text), block)


def remove_block(file: TaskFile, task: Task) -> str:
    return file.text[:task.start] + file.text[task.end:]


def backlog_insert_offset(file: TaskFile, priority: str) -> int:
    """Where a new task goes: the end of a `## High Priority`-style section that matches, else the end."""
    wanted = f"{priority.strip().lower()} priority"
    for index, (_, level, text) in enumerate(file.headings):
        if text.lower() == wanted:
            for offset, other_level, _ in file.headings[index + 1:]:
                if other_level <= level:
                    return offset
            break
    return len(file.text)


# --- the locked store -------------------------------------------------------------------------------------

def _crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _digest(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode(*ENCODING)).hexdigest()


def _replace_all(writes: list[tuple[Path, str, str]], check: Callable[[], None] = lambda: None) -> None:
    """Replace each (path, text, step) atomically: temp file in the same directory, fsync, rename.

    Not `statefile.write_text` per file: its temp files (`statefile.write_temp`) are all written
    before the first rename, so a failed write or `check` replaces none of the files.

    Every temp file is written and fsynced first, then `check` runs (it raises
    to replace nothing), then the renames follow back to back: a file someone
    writes while the tool fsyncs is seen by `check`, not written over. A
    symlinked task file stays a symlink: the file it points to is replaced.
    """
    staged: list[tuple[Path, str, str]] = []
    renamed = 0
    current = Path()
    try:
        for path, text, step in writes:
            current = _real(path)
            staged.append((current, _write_temp(current, text.encode(*ENCODING)), step))
            _crash_point(f"{step}-temp")
        check()
        for current, tmp, step in staged:
            os.replace(tmp, current)
            renamed += 1
            _crash_point(step)
    except OSError as err:
        raise TaskFileError(f"{current}: cannot write: {err.strerror} (the next command finishes "
                            "or undoes the move)") from None
    finally:
        for _, tmp, _ in staged[renamed:]:
            if os.path.exists(tmp):
                os.unlink(tmp)
    for directory in {real.parent for real, _, _ in staged}:
        statefile.fsync_dir(directory)


def _real(path: Path) -> Path:
    """Where a path really leads (symlinks followed). A symlink loop is left for the read to report in one
    line (Path.resolve raises RuntimeError on it before Python 3.13)."""
    return Path(os.path.realpath(path))


def _write_temp(path: Path, data: bytes) -> str:
    """A fsynced temp file beside `path`, with its mode (a new file: a plain file's); the caller renames or
    removes it."""
    try:
        mode: int | None = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = None
    return statefile.write_temp(path, data, mode, prefix=TEMP_PREFIX)


def _current_text(path: Path) -> str | None:
    data = _read_bytes(path)
    return None if data is None else data.decode(*ENCODING)


def _journal_entries(journal_path: Path, data: bytes) -> tuple[str, list[tuple[str, str | None, str | None, str]]]:
    """The moved task's id and (file name, digest before, digest after, text after) of each file it changes."""
    advice = "check the task files by hand, then delete it"
    try:
        journal = loads(data.decode("utf-8"))
    except ValueError as err:  # not UTF-8, not JSON, nested too deep
        raise TaskFileError(f"{journal_path}: unreadable move journal ({err}); {advice}") from None
    try:
        task_id, entries = journal["task"], [(e["name"], e["before_sha256"], e["after_sha256"], e["after"])
                                             for e in journal["files"]]
    except (KeyError, TypeError):
        entries, task_id = [("?", None, None, "")], "?"
    if not isinstance(task_id, str) or any(name not in FILES.values() or not isinstance(after, str)
                                           for name, _, _, after in entries):
        raise TaskFileError(f"{journal_path}: not a move journal this tool wrote; {advice}")
    return task_id, entries


def _still_to_write(journal_path: Path, data: bytes,
                    current: Callable[[str], str | None]) -> list[tuple[str, str, str | None]]:
    """(file name, text after, digest before) of each file an interrupted move has yet to write.

    A file already as it should be after the move needs nothing; a file still
    as it was before needs its text after; a file that is neither was edited by
    hand since: a TaskFileError, for the user to check.
    """
    task_id, entries = _journal_entries(journal_path, data)
    to_write = []
    for name, before, after_digest, after in entries:  # check every file before writing any
        now = _digest(current(name))
        if now == after_digest:
            continue
        if now != before:
            raise TaskFileError(f"{journal_path.parent / name}: changed since an interrupted move of "
                                f"{readable(task_id)} (journal {journal_path}); check that the task is in exactly "
                                "one file, then delete the journal")
        to_write.append((name, after, before))
    return to_write


class TaskStore:
    """The three task files of one home, changed only under its lock."""

    def __init__(self, tasks_dir: Path, today: Callable[[], date] = date.today) -> None:
        self.dir = tasks_dir
        self.today = today

    def read(self) -> dict[str, TaskFile]:
        """The files as they are, or will be once an unfinished move is done; no lock, nothing written.

        Everything (journal and files) is read twice: a move that renamed a
        file in between shows as a difference, and the reading starts again
        (once). A journal found both times is a move under way or killed: each
        file is shown as the journal says it ends up; the next command that
        writes finishes the move on disk.
        """
        if os.path.lexists(self.dir) and not self.dir.is_dir():
            raise TaskFileError(f"{self.dir}: not a directory (the task files belong in it)")
        first = self._read_everything()
        for _ in range(2):
            second = self._read_everything()
            if second == first:
                break
            first = second
        else:
            raise TaskFileError(f"{self.dir}: the task files changed while they were read (a move under way?); "
                                "run the command again")
        journal, contents = first
        if journal is not None:
            by_name = {FILES[state]: state for state in STATES}

            def text_of(name: str) -> str | None:
                data = contents[by_name[name]]
                return None if data is None else data.decode(*ENCODING)

            for name, after, _ in _still_to_write(self._journal_path(), journal, text_of):
                contents[by_name[name]] = after.encode(*ENCODING)
        return read_all(self.dir, contents)

    def _read_everything(self) -> tuple[bytes | None, dict[str, bytes | None]]:
        journal = _read_bytes(self._journal_path(), JOURNAL_MAX_BYTES)
        return journal, {state: _read_bytes(self.dir / FILES[state]) for state in STATES}

    @contextmanager
    def locked(self) -> Iterator[dict[str, TaskFile]]:
        """Take the lock, finish any interrupted move, and yield the files as they now are.

        The lock sits beside the real files: two homes whose task files are
        symlinks to one set take turns on it (a `.lock` in each home would let
        both move at once). Files in several directories: each one's lock, in
        one order for everyone.
        """
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TaskFileError(f"{self.dir / LOCK_NAME}: cannot take the task lock: {err.strerror}") from None
        with ExitStack() as held:
            for directory in self._real_dirs():
                lock_path = directory / LOCK_NAME
                try:
                    held.enter_context(lock_held(lock_path))
                except OSError as err:
                    raise TaskFileError(f"{lock_path}: cannot take the task lock: {err.strerror}") from None
            _crash_point("locked")
            self._recover()
            yield read_all(self.dir)

    def _real_dirs(self) -> list[Path]:
        """The directories the task files really are in (symlinks followed), sorted."""
        return sorted({_real(self.dir / name).parent for name in FILES.values()})

    def _journal_path(self) -> Path:
        """Beside the real files when they are in one directory, so every home sharing them sees a move cut
        short; files spread over several directories: in this home's tasks/."""
        directories = self._real_dirs()
        return directories[0] / JOURNAL_NAME if len(directories) == 1 else self.dir / JOURNAL_NAME

    def _recover(self) -> None:
        """Finish a move a crash interrupted; remove temp files a crash left behind.

        The journal holds each file's text before and after the move. A file
        still as it was before is written as it should be after; a file already
        written is left alone; a file that is neither was edited by hand since
        the crash: then nothing is written (the files stay as the crash left them),
        the journal stays and the user is told.
        """
        # A symlinked task file is replaced beside the file it points to: look for leftovers there too.
        for directory in {self.dir, *self._real_dirs()}:
            for leftover in directory.glob(f"{TEMP_PREFIX}*.tmp"):
                leftover.unlink(missing_ok=True)
        journal_path = self._journal_path()
        data = _read_bytes(journal_path, JOURNAL_MAX_BYTES)
        if data is None:
            return
        task_id = readable(_journal_entries(journal_path, data)[0])
        to_write = [(self.dir / name, after, before)
                    for name, after, before in _still_to_write(journal_path, data,
                                                               lambda name: _current_text(self.dir / name))]

        def still_as_before() -> None:
            for path, _, before in to_write:
                if _digest(_current_text(path)) != before:
                    raise TaskFileError(f"{path}: changed while an interrupted move of {task_id} was being "
                                        "finished; nothing was written, run the command again")

        _replace_all([(path, after, "recover") for path, after, _ in to_write], still_as_before)
        journal_path.unlink()
        statefile.fsync_dir(journal_path.parent)

    def _commit(self, task_id: str, changes: list[tuple[TaskFile, str]]) -> None:
        """Write changed files: with a journal first when more than one file changes."""
        journal_path = self._journal_path()
        for file, after in changes:
            if file.exists and not (file.path.stat().st_mode & 0o222 and os.access(file.path, os.W_OK)):
                raise TaskFileError(f"{file.path}: read-only; nothing was written (make it writable to "
                                    f"change {task_id})")
            if len(after.encode(*ENCODING)) > MAX_FILE_BYTES:  # it could not be read back
                raise TaskFileError(f"{file.path}: would grow past {MAX_FILE_BYTES // (1024 * 1024)} MiB, the limit "
                                    f"for task files; nothing was written (move old tasks to another file first)")
        if len(changes) > 1:
            journal = {"task": task_id, "files": [
                {"name": f.path.name, "before_sha256": _digest(f.text if f.exists else None),
                 "after_sha256": _digest(after), "after": after} for f, after in changes]}
            _replace_all([(journal_path, json.dumps(journal), "journal")])

        def unchanged_since_read() -> None:
            # An editor that saved a task file while we worked: never write over its save.
            for file, _ in changes:
                if _current_text(file.path) != (file.text if file.exists else None):
                    if len(changes) > 1:
                        journal_path.unlink()  # nothing was replaced: there is no move to finish
                    raise TaskFileError(f"{file.path}: changed while {task_id} was being moved; nothing was "
                                        "written, run the command again")

        _replace_all([(file.path, after, step) for (file, after), step in zip(changes, ("target", "source"))],
                     unchanged_since_read)
        if len(changes) > 1:
            journal_path.unlink()
            statefile.fsync_dir(journal_path.parent)
        _crash_point("done")

    # --- commands ---

    def list(self, state: str = "", repo: str = "") -> list[Task]:
        if state and state not in STATES:
            raise OrchestratorError(f"--state {state!r}: expected one of {', '.join(STATES)}")
        files = self.read()
        return [t for s in STATES if not state or s == state for t in files[s].tasks
                if not repo or t.get("repo") == repo]

    def show(self, task_id: str) -> tuple[Task, bytes]:
        """The task and its block's bytes exactly as they are in the file."""
        task, file = _find(self.read(), task_id)
        return task, file.text[task.start:task.end].encode(*ENCODING)

    def move(self, verb: str, task_id: str) -> Task:
        """`start` (backlog -> active) or `complete` (active -> completed), stamping today's date."""
        source_state, target_state, stamp = MOVES[verb]
        with self.locked() as files:
            task, file = _find(files, task_id)
            if task.state != source_state:
                raise TaskStateError(f"{task.path}:{task.line}: {task_id} is {task.state}, not {source_state}: "
                                     f"task.{verb} moves {source_state} -> {target_state}")
            target = files[target_state]
            target_text = target.text if target.exists else DEFAULT_PREAMBLES[target_state]
            moved = append_block(target_text, with_stamp(file, task, stamp, self.today().isoformat()))
            self._commit(task_id, [(target, moved), (file, remove_block(file, task))])
            return _find({target_state: parse(target_state, target.path, moved)}, task_id)[0]

    def add(self, title: str, repo: str, priority: str, type_: str = "", description: str = "") -> Task:
        """A new task with the next free `task-NNN` id across all three files, in the backlog."""
        for name, value in (("title", title), ("repo", repo), ("priority", priority), ("type", type_),
                            ("description", description)):
            if "\n" in value or "\r" in value:
                raise OrchestratorError(f"--{name}: must be one line")
        for name, value in (("title", title), ("repo", repo), ("priority", priority)):
            if not value.strip():
                raise OrchestratorError(f"--{name}: required, and must not be empty")
        with self.locked() as files:
            numbers = []
            for task in (t for f in files.values() for t in f.tasks):
                if match := ID_NUMBER_RE.match(task.id):
                    if len(match.group(1)) > MAX_ID_DIGITS:  # int() refuses past 4300 digits
                        raise TaskFileError(f"{task.path}:{task.line}: {task.id[:24]}...: an id number of "
                                            f"{len(match.group(1))} digits; give it a shorter id")
                    numbers.append(int(match.group(1)))
            task_id = f"task-{max(numbers, default=0) + 1:03d}"
            heading = f"### [{task_id}] {title.strip()}"
            if _heading_text(title.strip()) != title.strip():
                heading += " #"  # a closing sequence, so that the title's own trailing #s stay in the title
            lines = [heading, f"- **repo**: {repo}"]
            if type_:
                lines.append(f"- **type**: {type_}")
            lines += [f"- **priority**: {priority}", "- **assigned**: unassigned"]
            if description:
                lines.append(f"- **description**: {description}")
            lines.append(f"- **created**: {self.today().isoformat()}")
            backlog = files["backlog"]
            text = backlog.text if backlog.exists else DEFAULT_PREAMBLES["backlog"]
            if not backlog.exists:
                backlog = parse("backlog", backlog.path, text)
                backlog.exists = False
            newline = _newline_of(text, 0)
            block = newline.join(lines) + newline
            after = insert_block(text, backlog_insert_offset(backlog, priority), block)
            self._commit(task_id, [(backlog, after)])
            return _find({"backlog": parse("backlog", backlog.path, after)}, task_id)[0]


def _find(files: dict[str, TaskFile], task_id: str) -> tuple[Task, TaskFile]:
    for file in files.values():
        for task in file.tasks:
            if same_id(task.id) == same_id(task_id):
                return task, file
    directory = next(iter(files.values())).path.parent
    raise TaskStateError(f"{task_id}: no such task in {directory}/ ({', '.join(FILES.values())})")
