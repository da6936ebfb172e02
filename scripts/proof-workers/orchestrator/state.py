"""Run state under state/<project>/: worker records, per-try files, event log, journal, the monitor lock."""
from __future__ import annotations

import json
import os
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterator

from lib.errors import OrchestratorError
from lib.statefile import held_lock, read_regular, write_json
from orchestrator import agents


class RecordStatus(StrEnum):
    """A worker record's status; the value is the word its JSON says."""

    IDLE = "idle"
    RUNNING = "running"  # holds an issue


@dataclass
class WorkerRecord:
    worker_id: int
    status: RecordStatus = RecordStatus.IDLE
    project: str | None = None
    issue_number: int | None = None
    branch: str | None = None
    worktree: str | None = None
    stage_index: int = 0
    stage: str = ""
    try_id: int = 0  # grows with every launch of this worker: each try has its own files
    launched: bool = False  # the pane was given this try (False after a crash between prepare and start)
    retry_count: int = 0  # restarts in the current stage
    nudged: bool = False  # the one "commit your changes" restart of this stage was used
    stage_base: str | None = None  # HEAD when the stage began: progress counts commits after it
    started_at: float | None = None  # this try
    last_fingerprint: str = ""
    last_progress_at: float | None = None
    last_reason: str = ""
    push_failures: int = 0  # consecutive failed pushes of this stage's verified work
    start_failures: int = 0  # consecutive tries (or PR stages) that could not even begin (tmux, worktree, files)
    push_url: str | None = None  # origin's push url when the issue was assigned: pushes go there or nowhere
    pane: str | None = None  # the tmux pane this try was started in (server and pane id): a new one means tmux died
    lost_tries: int = 0  # tries of this stage lost to tmux or the machine going away (not retries)
    agent: dict[str, Any] = field(default_factory=dict)  # this try's agent as its events tell (agents.new_state)
    events_offset: int = 0  # how far the probe has read this try's event stream
    rate_limits: int = 0  # tries in a row that ended on a rate limit (the pause backs off: 60 s doubling to 30 min)
    # The ended try's session the prepared try continues (after a hold or a restart: its follow-ups go on there);
    # "": it was to continue one that cannot be named (a hand edit): it starts afresh. None: it continues none.
    resume_session: str | None = None
    pr: dict[str, Any] = field(default_factory=dict)  # the issue's pull-request loop (orchestrator.pulls)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WorkerRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        if "status" in values:
            values["status"] = RecordStatus(values["status"])  # a word outside the set: ValueError (load_worker)
        if values.get("resume_session") is not None and not isinstance(values["resume_session"], str):
            # A hand edit (a number, a list): the try was to go on in a session this names not: "", none to resume
            # (the try starts afresh and what rode on that session is given back to it: act.do_resume).
            values["resume_session"] = ""
        # Hand edits: a field of another kind counts as none when it is a mark taken again (SOFT_FIELDS), else the
        # record is unreadable; a tally that is none (or members of another kind) counts as none; an offset that is
        # no place in the stream reads it again from its start, into a tally that counts again.
        for f in fields(cls):
            if f.name in values and f.name not in ("status", "resume_session", "agent", "events_offset") and \
                    not _holds(str(f.type), values[f.name]):
                if f.name not in SOFT_FIELDS:  # load_worker: one line naming the file, "fix or remove it"
                    raise ValueError(f"{f.name}: {values[f.name]!r} is no {f.type}")
                del values[f.name]  # a mark that is none is taken again: its default
        if "agent" in values:
            values["agent"] = agents.sane_state(values["agent"])
        offset = values.get("events_offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            values["events_offset"] = 0
            values["agent"] = agents.recounted(values.get("agent") or {})
        return cls(**values)


# Fields a hand edit may leave of another kind that count as none (their default): the probe's and the PR loop's
# marks, taken again. Any other field of another kind makes the record unreadable (its try, issue, counts).
SOFT_FIELDS = frozenset({"last_fingerprint", "last_progress_at", "last_reason", "pr", "started_at"})
_KINDS: dict[str, tuple[type, ...]] = {"int": (int,), "str": (str,), "float": (int, float), "bool": (bool,),
                                       "None": (type(None),), "dict": (dict,)}


def _holds(annotation: str, value: Any) -> bool:
    """Whether `value` is of a field's annotated kind (`int`, `str | None`, `dict[str, Any]`); a bool is no number."""
    kinds = [part.strip().split("[")[0] for part in annotation.split("|")]
    if isinstance(value, bool):
        return "bool" in kinds
    return any(isinstance(value, _KINDS.get(kind, ())) for kind in kinds)


class RunFiles:
    """Every path of one run, under state/<project>/ (never a shared /tmp path)."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir

    def worker_file(self, worker: int) -> Path:
        return self.root / "workers" / f"worker-{worker}.json"

    def log(self, worker: int) -> Path:
        return self.root / "logs" / f"worker-{worker}.log"

    def try_stem(self, worker: int, try_id: int) -> str:
        return f"worker-{worker}-try-{try_id}"

    def signal(self, worker: int, try_id: int) -> Path:
        return self.root / "signals" / f"{self.try_stem(worker, try_id)}.exit"

    def pid_file(self, worker: int, try_id: int) -> Path:
        return self.root / "signals" / f"{self.try_stem(worker, try_id)}.pid"

    def prompt(self, worker: int, try_id: int) -> Path:
        return self.root / "prompts" / f"{self.try_stem(worker, try_id)}.md"

    def agent_events(self, worker: int, try_id: int) -> Path:
        """The agent's raw event stream of this try (one JSON object a line), as the wrapper keeps it."""
        return self.root / "tries" / f"{self.try_stem(worker, try_id)}.events.jsonl"

    def try_log(self, worker: int, try_id: int, issue: int) -> Path:
        """This try's readable log: a line per agent event (logs/worker-N.log names it in its START line)."""
        return self.root / "logs" / f"issue-{issue}" / f"{self.try_stem(worker, try_id)}.log"

    @property
    def usage(self) -> Path:
        """Each try's turns, cost and tokens (summed per issue and project by status)."""
        return self.root / "usage.json"

    def try_spec(self, worker: int, try_id: int) -> Path:
        return self.root / "tries" / f"{self.try_stem(worker, try_id)}.json"

    @property
    def events(self) -> Path:
        return self.root / "orchestrator-log.jsonl"

    @property
    def journal(self) -> Path:
        return self.root / "journal.jsonl"

    @property
    def lock(self) -> Path:
        return self.root / "monitor.lock"

    @property
    def monitor(self) -> Path:
        """The monitor's heartbeat: pid, start, last cycle, and how it exited."""
        return self.root / "monitor.json"

    @property
    def pins(self) -> Path:
        """Where each repo's work is pushed, pinned before its first agent ran (orchestrator.pins)."""
        return self.root / "push-pins.json"

    def load_worker(self, worker: int) -> WorkerRecord:
        path = self.worker_file(worker)
        try:
            data = read_regular(path)  # a FIFO there (an agent's) is an error, never a wait for a writer
            if data is None:
                return WorkerRecord(worker)
            return WorkerRecord.from_json(json.loads(data.decode("utf-8")))
        except (ValueError, TypeError) as err:
            raise OrchestratorError(f"{path}: unreadable worker state ({err}); fix or remove it") from None

    def save_worker(self, record: WorkerRecord) -> None:
        write_json(self.worker_file(record.worker_id), asdict(record))

    def load_workers(self, count: int) -> list[WorkerRecord]:
        return [self.load_worker(n) for n in range(1, count + 1)]

    def recorded_workers(self) -> list[int]:
        """Worker ids with a state file (a run with more workers may have left some)."""
        ids = []
        for path in (self.root / "workers").glob("worker-*.json"):
            number = path.stem.removeprefix("worker-")
            if number.isdigit():
                ids.append(int(number))
        return sorted(ids)

    def read_signal(self, worker: int, try_id: int) -> int | None:
        """This try's exit code; a half-written or garbled file, or no regular file (an agent's FIFO: never waited
        on), reads as no signal yet."""
        try:
            return int((read_regular(self.signal(worker, try_id)) or b"").strip())
        except (OrchestratorError, ValueError):
            return None

    def log_event(self, event: dict[str, Any]) -> None:
        append_line(self.events, {"timestamp": now_iso(), "event": event})

    def record_cycle(self, doc: dict[str, Any]) -> None:
        append_line(self.journal, {"timestamp": now_iso(), **doc})


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def append_line(path: Path, doc: dict[str, Any]) -> None:
    """Append one JSON line with a single write (O_APPEND: concurrent writers never interleave)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except (ValueError, RecursionError):
            continue  # a line cut by a crash (or nested too deep for json)
    return out


class MonitorBusy(OrchestratorError):
    """Another monitor (or launch) holds this project's lock."""


@contextmanager
def monitor_lock(locks: list[tuple[str, Path]]) -> Iterator[None]:
    """One monitor per project (and per tmux session): `statefile.held_lock` on each, freed by the kernel on
    kill -9; MonitorBusy names the holder."""
    with ExitStack() as held:
        for label, path in locks:
            held.enter_context(held_lock(path, "monitor", lambda holder, label=label, path=path: MonitorBusy(
                f"another monitor is running for {label} ({holder}; lock {path})")))
        yield
