"""Steering a run: the command queue under state/<project>/commands/, and how each command is taken and applied.

A verb (pause, resume, retry, kill, send) writes one file, `queued/<id>.json`
(atomic, through lib.statefile). Whoever holds the monitor lock applies the
queue: the running monitor at the start of each cycle (it wakes for a new
command), or, when no monitor runs, the verb itself (steer.give). Taking a command writes
`taken/<id>.json` before anything is applied; its outcome is written to
`done/<id>.json` after, and the taken file removed. A holder killed between
the two (kill -9) leaves the taken file: the next holder applies it again,
first, and every application is idempotent (a kill of an issue that already
failed, a retry of one already pending, a follow-up already stored change
nothing), so a command is never lost and never applied twice. The ids sort
by time: commands apply in the order they were given.

Over 500 lines, one job: each verb's checks, its application and its outcome, and the crash-safe queue they share.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from lib.errors import ConfigError, OrchestratorError, clip
from lib.statefile import (UnreadableFile, append_whole, open_lock, open_regular, read_json, read_small, update_json,
                           write_json)
from orchestrator import config as configs
from orchestrator.config import IssueStatus
from orchestrator import heartbeat, pauses, resume, worktrees
from orchestrator.decide import Action, ActionKind, Command

if TYPE_CHECKING:
    from orchestrator.act import Executor
    from orchestrator.run import Run
    from orchestrator.state import RunFiles, WorkerRecord

VERBS = ("pause", "resume", "retry", "kill", "send")
ISSUE_VERBS = ("retry", "kill", "send")
MAX_TEXT = 20_000  # characters of a follow-up instruction
ACK_WAIT = 30.0  # seconds a verb waits for a running monitor to apply its command
POLL = 0.1
DONE_KEPT = 24 * 3600.0  # seconds an outcome stays in done/
DELIVERY_WAIT = 10.0  # seconds the monitor waits for a streaming try's wrapper to pass a follow-up on
LOCK_PATIENCE = 10.0  # seconds a starting monitor waits while a verb applying commands holds its lock
CRASH_ENV = "ORCHESTRATOR_COMMANDS_CRASH_AT"  # test hook: `taken` or `applied` kills the holder there (SIGKILL)


@dataclass
class Outcome:
    ok: bool
    lines: list[str] = field(default_factory=list)
    error: str = ""  # a refusal: one line, the verb exits 2
    by_pid: int | None = None  # who applied it (the monitor, or the verb itself)


def queue_dir(state_root: Path, project: str) -> Path:
    return state_root / project / "commands"


def followups_file(state_root: Path, project: str) -> Path:
    """Follow-up instructions kept for an issue's next try (`send` when its running try takes no input)."""
    return state_root / project / "followups.json"


def _crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _new_id() -> str:
    return f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}"


# --- the verb's side ----------------------------------------------------------------------------------------

def _target(run: Run, project: str, issue: int | None, verb: str) -> list[configs.ProjectConfig]:
    """The projects a command is for; an unknown project or issue is a usage error (nothing queued)."""
    if project:
        chosen = [c for c in run.configs if c.project == project]
        if not chosen:
            raise ConfigError(f"unknown project {clip(project)!r} (known: {', '.join(c.project for c in run.configs)})")
    elif issue is not None and len(run.configs) > 1:
        raise ConfigError(f"{verb}: give --project: the run has several projects")
    else:
        chosen = list(run.configs)
    if issue is not None and chosen[0].issue(issue) is None:
        raise ConfigError(f"{chosen[0].path}: issue #{issue} is not in the issue list")
    return chosen


def check(run: Run, verb: str, project: str, issue: int | None, text: str) -> list[Command]:
    """The commands a verb gives, checked against the config as it is now (the holder checks again when it
    applies them: the run may have moved on). Bad input raises a ConfigError (one line, exit 2)."""
    if verb not in VERBS:
        raise ConfigError(f"unknown verb {verb!r}")
    if verb in ISSUE_VERBS and issue is None:
        raise ConfigError(f"{verb}: give the issue number")
    if issue is not None and issue <= 0:
        raise ConfigError(f"{verb}: the issue number must be positive")
    if verb == "send":
        if not text.strip():
            raise ConfigError("send: the text is empty")
        if len(text) > MAX_TEXT:
            raise ConfigError(f"send: the text has {len(text)} characters, more than {MAX_TEXT}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes the terminal's encoding could not decode (argv's surrogate escapes)
        raise ConfigError(f"{verb}: the text is not valid UTF-8") from None
    chosen = _target(run, project, issue, verb)
    if issue is not None and verb in ISSUE_VERBS:
        status = chosen[0].issue(issue).status  # type: ignore[union-attr]
        if verb == "retry" and status != IssueStatus.FAILED:
            raise ConfigError(f"retry: #{issue} is {status}: only a failed issue is retried")
        if verb == "kill" and status != IssueStatus.IN_PROGRESS:
            raise ConfigError(f"kill: #{issue} is {status}: no try of it runs")
        if verb == "send" and status == IssueStatus.COMPLETED:
            raise ConfigError(f"send: #{issue} is completed: it has no next try")
    return [Command(_new_id(), verb, cfg.project, issue, text) for cfg in chosen]


def enqueue(state_root: Path, command: Command) -> Path:
    path = queue_dir(state_root, command.project) / "queued" / f"{command.id}.json"
    write_json(path, {**asdict(command), "queued_at": time.time(), "by_pid": os.getpid()})
    return path


def outcome_of(state_root: Path, command: Command) -> Outcome | None:
    """The command's outcome once applied; None before."""
    try:
        doc = read_json(queue_dir(state_root, command.project) / "done" / f"{command.id}.json")
    except UnreadableFile:
        return None
    if not isinstance(doc, dict):
        return None
    by = doc.get("by_pid")
    return Outcome(doc.get("ok") is True, [str(x) for x in doc.get("lines") or []], str(doc.get("error") or ""),
                   by if isinstance(by, int) else None)


def applying_marker(run: Run) -> Path:
    return run.files.root / "commands" / "applying.json"


def verb_applying(run: Run) -> int | None:
    """The pid of the live verb applying commands under the lock, if one holds it (not a monitor or a launch)."""
    try:
        doc = read_json(applying_marker(run))
        started, pid = doc.get("pid_start"), int(doc["pid"])
        return pid if started is not None and heartbeat.process_start(pid) == started else None
    except (UnreadableFile, AttributeError, KeyError, TypeError, ValueError):  # none there, or not ours
        return None


@contextmanager
def monitor_lock_after_verbs(run: Run, say: Callable[[str], None]) -> Iterator[None]:
    """The monitor lock; while a verb applying commands holds it, wait for it (at most LOCK_PATIENCE seconds),
    never refuse to start for it. Held by another monitor or a launch: refused at once, as ever."""
    from orchestrator.state import MonitorBusy, monitor_lock

    deadline = time.monotonic() + LOCK_PATIENCE
    entered = said = False
    while True:
        try:
            with monitor_lock(run.locks()):
                entered = True
                yield
            return
        except MonitorBusy:
            if entered or verb_applying(run) is None or time.monotonic() > deadline:
                raise
            if not said:
                say("a verb is applying commands under the monitor lock: waiting for it")
                said = True
            time.sleep(POLL)


# --- the lock holder's side ---------------------------------------------------------------------------------

def _load(path: Path, project: str) -> Command | None:
    """The command in `path`, a file of `project`'s queue; None when it is no command of that project (a file
    naming another project, or an id other than its name, is never followed to another directory)."""
    try:
        doc = read_json(path)
        issue = doc.get("issue")
        if doc.get("project") != project or doc.get("id") != path.stem or isinstance(issue, bool) or \
                not (issue is None or isinstance(issue, int)) or not isinstance(doc.get("text", ""), str):
            return None
        return Command(path.stem, str(doc["verb"]), project, issue, doc.get("text") or "")
    except (UnreadableFile, AttributeError, KeyError, TypeError, ValueError):
        return None


def _dirs(run: Run) -> list[tuple[str, Path]]:
    return [(cfg.project, queue_dir(run.state_root, cfg.project)) for cfg in run.configs]


def waiting(run: Run) -> bool:
    """Whether a command is queued for this run (the monitor's sleep ends early for it)."""
    for _, directory in _dirs(run):
        try:
            with os.scandir(directory / "queued") as entries:
                if any(e.name.endswith(".json") and not e.name.startswith(".") for e in entries):
                    return True
        except OSError:
            continue
    return False


def wait(run: Run, seconds: float) -> None:
    """Sleep up to `seconds`, waking as soon as a command is queued."""
    deadline = time.monotonic() + seconds
    while not waiting(run):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        run.sleep(min(0.25, left))


def take(run: Run) -> tuple[list[Command], set[str]]:
    """Every command not yet applied, in the order given, and the ids of those a killed holder had taken already
    (each queued one is written to taken/ before its queued file goes). Only the monitor lock's holder calls this."""
    found: list[Command] = []
    retaken: set[str] = set()
    for project, directory in _dirs(run):
        done = directory / "done"
        _prune(done)
        for path in sorted((directory / "taken").glob("*.json")):
            command = None if (done / path.name).exists() else _load(path, project)
            if command is None:
                path.unlink(missing_ok=True)  # applied (the holder died before it removed this), or no command
                continue
            found.append(command)
            retaken.add(command.id)
        for path in sorted((directory / "queued").glob("*.json")):
            taken = directory / "taken" / path.name
            if not ((done / path.name).exists() or taken.exists()):
                command = _load(path, project)
                if command is None:
                    write_json(done / path.name, {"ok": False, "lines": [], "error": f"{path}: not a command of "
                                                  f"project {project}", "done_at": time.time()})
                    path.unlink(missing_ok=True)
                    continue
                write_json(taken, {**asdict(command), "taken_at": time.time(), "by_pid": os.getpid()})
                found.append(command)
            path.unlink(missing_ok=True)
    found.sort(key=lambda c: c.id)
    if found:
        _crash_point("taken")
    return found, retaken


def _prune(done: Path) -> None:
    """Outcomes are read by the verb that waits for them: after a day they go."""
    cutoff = time.time() - DONE_KEPT
    try:
        with os.scandir(done) as entries:
            old = [e.path for e in entries if e.name.endswith(".json") and e.stat().st_mtime < cutoff]
    except OSError:
        return
    for path in old:
        Path(path).unlink(missing_ok=True)


def finish(run: Run, command: Command, outcome: Outcome) -> None:
    directory = queue_dir(run.state_root, command.project)
    _crash_point("applied")
    write_json(directory / "done" / f"{command.id}.json",
               {**asdict(command), **asdict(outcome), "done_at": time.time(), "by_pid": os.getpid()})
    (directory / "taken" / f"{command.id}.json").unlink(missing_ok=True)
    run.files.log_event({"action": "command", "id": command.id, "verb": command.verb, "project": command.project,
                         "issue": command.issue, "ok": outcome.ok, "error": outcome.error or None})


def apply_pauses(run: Run, commands: list[Command], now: float) -> list[Command]:
    """Apply the pause and resume commands (before the pauses are read for decide); returns the others."""
    rest = []
    for command in commands:
        if command.verb not in ("pause", "resume"):
            rest.append(command)
            continue
        try:
            if command.verb == "pause":
                lines = pauses.pause(run.state_root, run.configs, command.project, command.issue,
                                     command.text, now)
            else:
                lines = pauses.resume(run.state_root, run.configs, command.project, command.issue, now)
            outcome = Outcome(True, lines)
        except OrchestratorError as err:
            outcome = Outcome(False, error=str(err))
        finish(run, command, outcome)
    return rest


def execute(run: Run, executor: Executor, records: dict[int, WorkerRecord], actions: list[Action],
            commands: list[Command], retaken: set[str], say: Callable[[str], None]) -> None:
    """Carry out a cycle's actions in order: the commands' own (retry, send, refuse) here, the rest by the
    executor; each command's outcome is written right after its action. A command taken again after its holder
    was killed is refused by decide when its effect is already there: that is its outcome, applied once."""
    by_id = {c.id: c for c in commands}
    for action in actions:
        command = by_id.pop(action.command, None)
        before = records.get(action.worker)
        held = (before.worker_id, before.try_id) if before is not None else None
        try:
            if action.kind == ActionKind.RETRY and command is not None:
                outcome = _retry(run, command, say)
            elif action.kind == ActionKind.SEND and command is not None:  # given or kept before a kill: once
                outcome = (_already_applied(run, command) if command.id in retaken else None) or \
                    _send(run, command, records.get(action.worker), say)
            elif action.kind == ActionKind.REFUSE and command is not None and command.id in retaken and \
                    (done := _already_applied(run, command)) is not None:
                outcome = done
            elif action.kind == ActionKind.REFUSE:
                outcome = Outcome(False, error=f"{command.verb if command else 'command'}: {action.reason}")
            else:
                ended = run.files.read_signal(*held) if held is not None and command is not None else None
                executor.execute([action])
                outcome = _killed(run, command, held, ended) if command is not None else None
        except OrchestratorError as err:
            outcome = Outcome(False, error=f"{action.kind}: {err}")
        if command is not None and outcome is not None:
            finish(run, command, outcome)
    for command in by_id.values():  # decide gave it no action (pause/resume are applied before)
        finish(run, command, Outcome(False, error=f"{command.verb}: nothing to do"))


def _already_applied(run: Run, command: Command) -> Outcome | None:
    """The outcome of a command its killed holder had applied already (its effect is there), else None."""
    issue = run.config_of(command.project).issue(command.issue or 0)
    label = f"{command.project}#{command.issue}"
    if command.verb == "kill" and issue is not None and issue.status == IssueStatus.FAILED:
        return Outcome(True, [f"killed {label}: it fails with `killed by user` (applied before the monitor that took "
                              "the command stopped)"])
    if command.verb == "retry" and issue is not None and issue.status in (IssueStatus.PENDING, IssueStatus.IN_PROGRESS):
        return Outcome(True, [f"retry {label}: pending again (applied before the monitor that took the command "
                              "stopped)"])
    if command.verb == "send" and (given := _given_before(run, command)) is not None:
        return given
    if command.verb == "send" and any(e.get("id") == command.id for e in pending_followups(
            run.state_root, command.project, command.issue or 0, given_too=True)):
        return Outcome(True, [f"stored for {label} (before the monitor that took the command stopped)"])
    return None


def _killed(run: Run, command: Command, held: tuple[int, int] | None, ended: int | None = None) -> Outcome:
    run.reload()  # the executor wrote the issue's status into the config file
    issue = run.config_of(command.project).issue(command.issue or 0)
    label = f"{command.project}#{command.issue}"
    if issue is None or issue.status != IssueStatus.FAILED:
        return Outcome(False, error=f"kill: {label} did not fail (now {issue.status if issue else 'gone'}); see "
                                    "the event log")
    where = f" (worker {held[0]}, try {held[1]})" if held else ""
    if ended is not None and held is not None:  # nothing was left to signal: its verdict is what the kill replaced
        return Outcome(True, [f"killed {label}: its try{where} had already ended (exit {ended}) before the kill; it "
                              "is not judged and the issue fails with `killed by user`; its branch and commits are "
                              f"kept (retry {command.issue} puts it back)"])
    return Outcome(True, [f"killed {label}{where}: its processes are signalled and it fails with `killed by user`; "
                          f"its branch and commits are kept (retry {command.issue} puts it back)"])


def _retry(run: Run, command: Command, say: Callable[[str], None]) -> Outcome:
    from orchestrator.queue import blocked

    cfg = run.config_of(command.project)
    issue = cfg.issue(command.issue or 0)
    label = f"{command.project}#{command.issue}"
    if issue is None:
        return Outcome(False, error=f"retry: {label} is gone from the issue list")
    if issue.status == IssueStatus.FAILED:
        configs.set_issue(cfg.path, issue.number, status=IssueStatus.PENDING, assigned_worker=None)
        run.files.log_event({"action": "retry", "issue": issue.number, "project": cfg.project, "by": "user"})
        say(f"#{issue.number}: retried by the user: pending again")
    elif issue.status != IssueStatus.PENDING:  # pending: this very command was applied before a crash
        return Outcome(False, error=f"retry: {label} is {issue.status}: only a failed issue is retried")
    run.reload()
    from orchestrator.inputs import issue_views

    views = issue_views(run, run.files.load_workers(run.num_workers))
    freed = [v.ref.number for v in views if v.ref.project == cfg.project and command.issue in v.depends_on
             and not blocked(v, views) and v.status == IssueStatus.PENDING]
    stage = cfg.pipeline[min(issue.pipeline_stage, len(cfg.pipeline) - 1)]
    branch, repo = cfg.branch_for(issue), cfg.repo_for(issue)
    try:  # what the dry run and status say too; a repository git cannot read is said so, never guessed
        worktrees.git(repo.path, "rev-parse", "--git-dir")
        left = resume.left_behind(repo, cfg.worktree_for(issue), branch, origin=True)
        kept = ("(branch and commits kept)" if left != resume.FRESH else
                f"but its branch {branch} is gone (no local branch, none in origin's last fetch): unless origin has "
                f"it, its next try starts it afresh from {repo.default_branch}, without the work of earlier tries")
    except OrchestratorError as err:
        kept = (f"(whether its branch {branch} is left could not be read: {clip(str(err), 300)}; its next try "
                "says what is wrong)")
    lines = [f"retry {label}: pending again, its retries reset; it starts again at stage {stage} on {branch} {kept}"]
    if freed:
        lines.append("no longer blocked: " + ", ".join(f"#{n}" for n in freed) + f" (they wait for #{issue.number})")
    return Outcome(True, lines)


def streams_input(cfg: configs.ProjectConfig) -> bool:
    """Whether the project's tries take user messages while they run: Claude Code with `--input-format
    stream-json` (and its prompt not redirected from the file: the wrapper gives it as the first message)."""
    if cfg.agent != "claude":
        return False
    try:
        _, words = configs.agent_words(cfg.agent_command)
    except ValueError:
        return False
    pairs = list(zip(words, words[1:]))
    return ("--input-format", "stream-json") in pairs or "--input-format=stream-json" in words


def inbox_paths(files: RunFiles, worker: int, try_id: int) -> dict[str, str]:
    """A streaming try's inbox (follow-ups the monitor appends) and delivered list (what its wrapper passed on)."""
    stem = files.root / "tries" / files.try_stem(worker, try_id)
    return {"inbox": f"{stem}.inbox.jsonl", "delivered": f"{stem}.delivered.jsonl"}


class Delivery(StrEnum):
    """What became of a follow-up given to a streaming try, as its wrapper's notes say."""
    DELIVERED = "delivered"  # passed to the agent, and noted so
    KEPT = "kept"  # not passed on (no streaming try, its input closed, withdrawn): the next try takes it
    UNRECORDED = "unrecorded"  # maybe passed on, with no note saying so (a full disk, a kill): never given again


def _notes(path: Path) -> tuple[dict[str, str], bool]:
    """Each follow-up's last note in a streaming try's delivered list (`passing`, `passed`, `not_passed`; a line
    of an older wrapper without one: `passed`), and whether the agent's input is closed. A file that does not
    read (none yet, no regular file) notes nothing."""
    states: dict[str, str] = {}
    closed = False
    for line in (read_small(path) or b"").decode("utf-8", "replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            closed = closed or doc.get("closed") is True
            if isinstance(doc.get("id"), str):
                states[doc["id"]] = str(doc.get("state") or "passed")
    return states, closed


def _noted(state: str | None) -> Delivery | None:
    """A follow-up's delivery from its last note, read under the inbox's lock (the wrapper is not midway);
    None: not noted at all."""
    return {None: None, "passed": Delivery.DELIVERED, "not_passed": Delivery.KEPT}.get(state, Delivery.UNRECORDED)


@contextmanager
def _inbox_lock(inbox: Path, seconds: float) -> Iterator[bool]:
    """The lock lib.statefile.locked(inbox) takes (the wrapper's), waiting at most `seconds`: a wrapper blocked in
    a write to an agent that does not read its input holds it, and the monitor never hangs on that. Yields
    whether it is held."""
    fd = open_lock(inbox.parent / f".{inbox.name}.lock")
    try:
        deadline = time.monotonic() + seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(POLL)
        yield True
    finally:
        os.close(fd)


def _append_line(path: Path, doc: dict[str, Any]) -> tuple[int, int]:
    """Append a JSON line to a regular file of ours, whole or not at all (statefile.append_whole); returns where it
    starts and ends."""
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND)
    try:
        return append_whole(fd, (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def _inbox_ids(inbox: Path) -> set[str]:
    return {i for line in (read_small(inbox) or b"").splitlines() if (i := _noted_id(line)) is not None}


def _withdraw(inbox: Path, command: Command, span: tuple[int, int] | None) -> bool:
    """Take a follow-up back from the inbox (the caller holds its lock and the wrapper has not noted it): cut off
    its line when it is still the inbox's last (no free space needed: it works on a full disk), else append a
    withdrawal. False when neither could be done: the wrapper may still pass it on."""
    try:
        fd = open_regular(inbox, os.O_RDWR)
    except OSError:
        return not inbox.exists()  # gone (the try's files cleaned up): nothing left to pass on
    try:
        if span is not None and os.fstat(fd).st_size == span[1] and \
                _noted_id(os.pread(fd, span[1] - span[0], span[0])) == command.id:
            os.ftruncate(fd, span[0])
            return True
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        _append_line(inbox, {"withdraw": command.id})
        return True
    except OSError:
        return False


def _noted_id(line: bytes) -> str | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    found = doc.get("id") if isinstance(doc, dict) else None
    return found if isinstance(found, str) else None


def _stream(run: Run, command: Command, record: WorkerRecord) -> tuple[Delivery, str]:
    """Give the follow-up to the running try's agent, at most once (see wrapper.Feeder for the notes): DELIVERED;
    KEPT when it cannot take it (not a streaming try, its input closed, or its wrapper did not pass it on within
    DELIVERY_WAIT: then it is withdrawn); UNRECORDED, with why, when it may have reached the agent but nothing
    says so. Every judgement is made under the inbox's lock, so the wrapper is never midway through one."""
    try:
        spec = read_json(run.files.try_spec(record.worker_id, record.try_id))
    except UnreadableFile:
        return Delivery.KEPT, ""
    paths = spec.get("input") if isinstance(spec, dict) else None
    if not isinstance(paths, dict) or not record.launched or \
            run.files.read_signal(record.worker_id, record.try_id) is not None:
        return Delivery.KEPT, ""
    inbox, delivered = Path(str(paths.get("inbox"))), Path(str(paths.get("delivered")))
    if not inbox.is_file():
        return Delivery.KEPT, ""  # the wrapper has not started the agent yet
    deadline = time.monotonic() + DELIVERY_WAIT
    with _inbox_lock(inbox, DELIVERY_WAIT) as held:
        if not held:  # nothing appended: the wrapper never sees it
            return Delivery.KEPT, ""
        states, closed = _notes(delivered)
        if (noted := _noted(states.get(command.id))) is not None:
            return noted, _UNNOTED  # given before a crash (this command is taken again)
        if closed:
            return Delivery.KEPT, ""
        span: tuple[int, int] | None = None  # where our line is, to cut it off again
        if command.id not in _inbox_ids(inbox):  # else appended before a crash: one line, withdrawn by a mark
            try:
                span = _append_line(inbox, {"id": command.id, "text": command.text})
            except OSError:
                return Delivery.KEPT, ""  # not in the inbox (a full disk): the next try takes it
    while True:
        time.sleep(POLL)
        with _inbox_lock(inbox, max(deadline - time.monotonic(), 0.0)) as held:
            if not held:
                return Delivery.UNRECORDED, ("its wrapper is still writing to the agent's input (the agent is not "
                                             "reading it): it may pass it on later")
            states, closed = _notes(delivered)
            if (noted := _noted(states.get(command.id))) is not None:
                return noted, _UNNOTED
            if closed or time.monotonic() >= deadline:
                if _withdraw(inbox, command, span):
                    return Delivery.KEPT, ""
                return Delivery.UNRECORDED, ("its wrapper had not passed it on yet and it could not be withdrawn "
                                             "from the try's inbox (a full disk?): the wrapper may still pass it on")


_UNNOTED = ("the wrapper noted it was passing it on, but no note says the agent got it (a write failed: a full "
            "disk?, or the wrapper was killed)")


def _send(run: Run, command: Command, record: WorkerRecord | None, say: Callable[[str], None]) -> Outcome:
    """Give the instruction to the running agent when its try takes input while it runs (a streaming try), else
    keep it for the issue's next try. Nothing is ever typed into a pane, and nothing is given twice: a follow-up
    the running agent may have got without a note saying so is said to be so (`not recorded`), and not kept."""
    label = f"{command.project}#{command.issue}"
    running = record is not None and record.issue_number == command.issue and record.launched
    delivery, why_unrecorded = _stream(run, command, record) if running and record is not None else \
        (Delivery.KEPT, "")
    if delivery != Delivery.KEPT and record is not None:
        delivered = delivery == Delivery.DELIVERED
        run.files.log_event({"action": "followup", "issue": command.issue, "project": command.project,
                             "id": command.id, "delivered": True if delivered else None, "recorded": delivered,
                             "worker": record.worker_id, "try": record.try_id})
        say(f"#{command.issue}: follow-up " + ("delivered to the running agent" if delivered else
                                               "delivery not recorded"))
        return _given(label, record.worker_id, record.try_id, delivery, why_unrecorded)

    def change(doc: Any) -> dict[str, Any]:
        doc = doc if isinstance(doc, dict) and isinstance(doc.get("issues"), dict) else {"issues": {}}
        entries = doc["issues"].setdefault(str(command.issue), [])
        if not isinstance(entries, list):
            entries = doc["issues"][str(command.issue)] = []
        if not any(isinstance(e, dict) and e.get("id") == command.id for e in entries):
            entries.append({"id": command.id, "text": command.text, "at": time.time(), "given_in": None})
        return doc

    try:
        update_json(followups_file(run.state_root, command.project), change, {"issues": {}})
    except OSError as err:  # a full disk: said, never a traceback; the running agent did not get it either
        return Outcome(False, error=f"send: {label}: the follow-up could not be kept for its next try "
                                    f"({followups_file(run.state_root, command.project)}: {err.strerror or err}); "
                                    "it was given to no try: send it again")
    streaming = streams_input(run.config_of(command.project))
    why = ("no try of it runs now" if not running or record is None else
           f"its running try (worker {record.worker_id}, try {record.try_id}) " +
           ("no longer takes input" if streaming else "reads its prompt from a file and takes no input while it runs"))
    run.files.log_event({"action": "followup", "issue": command.issue, "project": command.project,
                         "id": command.id, "delivered": False})
    say(f"#{command.issue}: follow-up stored for its next try")
    lines = [f"stored for {label}: given at the start of its next try ({why}); a restarted try resumes the "
             "agent's session where the agent can"]
    pipeline = run.config_of(command.project).pipeline
    if running and record is not None and record.stage_index < len(pipeline) - 1:
        lines.append(f"if this try completes its stage, the try of the next one ({pipeline[record.stage_index + 1]}) "
                     "takes it")
    elif running:  # said plainly: a try that completes the issue leaves no next try to give it to
        lines.append(f"if this try completes #{command.issue}, no try follows to take it: to act on it now, "
                     f"kill {command.issue}, then retry {command.issue}; status shows it kept until a try takes it")
    return Outcome(True, lines)


def _kept(state_root: Path, project: str) -> dict[str, Any]:
    """followups.json's issues (one read; a file that does not read keeps none)."""
    try:
        doc = read_json(followups_file(state_root, project), {"issues": {}})
    except UnreadableFile:
        return {}
    issues = doc.get("issues") if isinstance(doc, dict) else None
    return issues if isinstance(issues, dict) else {}


def _usable(entry: Any) -> bool:
    """A follow-up that can be given and followed: an object with a text and an id (a text, not empty)."""
    return isinstance(entry, dict) and isinstance(entry.get("id"), str) and bool(entry["id"]) \
        and isinstance(entry.get("text"), str)


def _pending(issues: dict[str, Any], issue: int, given_too: bool = False, again_for: str = "") -> list[dict[str, Any]]:
    entries = issues.get(str(issue))
    return [e for e in entries if _usable(e) and (given_too or not _given_to(e) or (
        again_for and e.get("given_in") == again_for == e.get("in_prompt")))] \
        if isinstance(entries, list) else []


def _given_to(entry: dict[str, Any]) -> str:
    """The try a follow-up was given in; "" for none, or for a value that names no try (a hand edit)."""
    given = entry.get("given_in")
    return given if isinstance(given, str) else ""


def unusable_followups(state_root: Path, project: str, issue: int) -> list[int]:
    """Where (from 1) `issue`'s list in followups.json holds an entry that is no follow-up (a hand edit: no id, no
    text): never given, never changed, left as it is."""
    entries = _kept(state_root, project).get(str(issue))
    return [n for n, e in enumerate(entries, 1) if not _usable(e)] if isinstance(entries, list) else []


def _given(label: str, worker: int, try_id: int, delivery: Delivery, why: str, after: str = "") -> Outcome:
    """What a verb says of a follow-up given to a running try (DELIVERED, or UNRECORDED with why)."""
    where = f"{label}'s running agent (worker {worker}, try {try_id})"
    if delivery == Delivery.DELIVERED:
        return Outcome(True, [f"delivered to {where}{after}: it reads it at its next step"])
    return Outcome(True, [f"delivery to {where} not recorded{after}: {why}; it may or may not have reached the "
                          "agent, and it is not kept for a next try (never given twice): see the try's log, and "
                          "send it again if the agent did not act on it"])


def _given_before(run: Run, command: Command) -> Outcome | None:
    """A follow-up a killed holder had given to a running try, as that try's wrapper noted it; None: none did."""
    for path in sorted((run.files.root / "tries").glob("worker-*-try-*.delivered.jsonl")):
        delivery = _noted(_notes(path)[0].get(command.id))
        found = re.fullmatch(r"worker-(\d+)-try-(\d+)", path.name.removesuffix(".delivered.jsonl"))
        if found and delivery in (Delivery.DELIVERED, Delivery.UNRECORDED):
            return _given(f"{command.project}#{command.issue}", int(found[1]), int(found[2]), delivery, _UNNOTED,
                          " (before the monitor that took the command stopped)")
    return None


def pending_followups(state_root: Path, project: str, issue: int, given_too: bool = False,
                      again_for: str = "") -> list[dict[str, Any]]:
    """The follow-ups of `issue` not yet given to a try (in the order sent), and those marked for the prompt of try
    `again_for` (mark_given: a try prepared again, its pane never ran it); with `given_too`, all of them."""
    return _pending(_kept(state_root, project), issue, given_too, again_for)


def last_session(files: RunFiles, project: str, issue: int, stage: str) -> tuple[str, dict[str, Any]]:
    """The session of the issue's last try in `stage` that got somewhere (a turn), and what that session cost
    over all its tries (so a try resuming it counts only what it adds); ("", {}) when there is none."""
    from orchestrator.budgets import usage_by_try

    tries = [e for e in usage_by_try(files).values()
             if e.get("project") == project and e.get("issue") == issue and e.get("stage") == stage]
    last = next((e for e in reversed(tries) if isinstance(e.get("session_id"), str) and e.get("turns")), None)
    if last is None:
        return "", {}
    cost = sum(e["cost_usd"] for e in tries if e.get("session_id") == last["session_id"]
               and isinstance(e.get("cost_usd"), (int, float)) and not isinstance(e.get("cost_usd"), bool))
    return last["session_id"], {"session_id": last["session_id"], "session_cost_usd": cost}


def followup_text(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return ""
    return "\n\n## Follow-up instructions from the user\n" + "\n\n".join(
        f"{n}. {e['text']}" for n, e in enumerate(entries, 1)) + "\n"


def mark_given(state_root: Path, project: str, issue: int, ids: list[str], try_stem: str) -> None:
    """Record that these follow-ups went into a try's prompt (`in_prompt`), before its pane runs it: that try
    prepared again puts them in its prompt again (pending_followups' `again_for`), one that never starts gives them
    back (give_back)."""
    if not ids:
        return

    def change(doc: Any) -> Any:
        for entry in doc.get("issues", {}).get(str(issue)) or []:
            if _usable(entry) and entry.get("id") in ids:
                entry["given_in"] = entry["in_prompt"] = try_stem
        return doc

    update_json(followups_file(state_root, project), change, {"issues": {}})


def give_back(state_root: Path, project: str, issue: int, try_stem: str, in_doubt_too: bool = True) -> list[str]:
    """The follow-ups marked given in a try whose agent never started (its set-up failed or was stopped, its wrapper
    or pane died first) are kept again for the issue's next try; returns their ids. Without `in_doubt_too`, those
    in doubt stay (that try's wrapper may still give them to its agent). Nothing given in that try: no
    write. A file that cannot be written (a full disk) is an OrchestratorError (one line): the caller goes no
    further (the try is not let go, so it is ended again later) and the follow-ups are never lost."""
    return _update_given(state_root, project, issue, try_stem,
                         lambda entry: in_doubt_too or not entry.get("in_doubt"), _given_back,
                         f"cannot keep again the follow-ups of #{issue} that {try_stem}'s agent never got")


def unmark_given(state_root: Path, project: str, issue: int, ids: list[str], try_stem: str) -> list[str]:
    """These follow-ups, marked for try `try_stem`'s prompt, are kept again: its pane could not start it. Those
    carried to it (in its session already) stay. A file that cannot be written is an OrchestratorError (one line)."""
    return _update_given(state_root, project, issue, try_stem,
                         lambda entry: entry.get("id") in ids and entry.get("in_prompt") == try_stem, _given_back,
                         f"cannot keep again the follow-ups of #{issue} that {try_stem} could not be started with")


def mark_in_doubt(state_root: Path, project: str, issue: int, try_stem: str) -> list[str]:
    """The follow-ups given in a try whose wrapper could not be stopped before its agent (not even by SIGKILL) stay
    given there (it may still start its agent with them: never given twice), marked `in_doubt` for status; returns
    the ids marked now (none twice). A file that cannot be written is an OrchestratorError (one line)."""
    return _update_given(state_root, project, issue, try_stem, lambda entry: not entry.get("in_doubt"), _in_doubt,
                         f"cannot note that {try_stem}'s wrapper may still give #{issue}'s follow-ups to its agent")


def note_session(state_root: Path, project: str, issue: int, try_stem: str, session: str) -> list[str]:
    """The follow-ups given in `try_stem` are in agent session `session` (the try worked on them there): a later
    try never resumes that session with them appended again (act.start_try). Returns their ids. A file that cannot
    be written is an OrchestratorError (one line)."""
    def note(entry: dict[str, Any]) -> None:
        entry["sessions"] = [*(s for s in _sessions(entry) if s != session), session]

    return _update_given(state_root, project, issue, try_stem, lambda entry: session not in _sessions(entry), note,
                         f"cannot note that #{issue}'s follow-ups given in {try_stem} are in session {session}")


def _sessions(entry: dict[str, Any]) -> list[str]:
    """The sessions a follow-up is in (note_session): a value that is not a list of strings (a hand edit) is none."""
    sessions = entry.get("sessions")
    return [s for s in sessions if isinstance(s, str)] if isinstance(sessions, list) else []


def in_session(entries: list[dict[str, Any]], session: str) -> bool:
    """Whether any of these follow-ups is already in agent session `session` (note_session)."""
    return any(session in _sessions(e) for e in entries)


def carry_given(state_root: Path, project: str, issue: int, try_stem: str, to_stem: str) -> list[str]:
    """The follow-ups given in `try_stem` go on in `to_stem`, a try that continues its session (they are in it):
    given there from now, so a continuation that gets nothing done gives them back; returns their ids. One in doubt
    stays where it is. A file that cannot be written is an OrchestratorError (one line)."""
    def carry(entry: dict[str, Any]) -> None:
        entry["given_in"] = to_stem

    return _update_given(state_root, project, issue, try_stem, lambda entry: not entry.get("in_doubt"), carry,
                         f"cannot note that {to_stem} continues the session #{issue}'s follow-ups were given in")


def _given_back(entry: dict[str, Any]) -> None:
    entry["given_in"] = None
    entry.pop("in_doubt", None)
    entry.pop("in_prompt", None)


def _in_doubt(entry: dict[str, Any]) -> None:
    entry["in_doubt"] = True


def _update_given(state_root: Path, project: str, issue: int, try_stem: str, applies: Callable[[dict[str, Any]], bool],
                  apply: Callable[[dict[str, Any]], None], failure: str) -> list[str]:
    """`apply` to every follow-up of `issue` given in `try_stem` that it `applies` to, in one update of
    followups.json (nothing written when none applies: a read first tells); returns their ids. A file that
    cannot be written is an OrchestratorError: `failure`, then why."""
    if not any(e.get("given_in") == try_stem and applies(e)
               for e in _pending(_kept(state_root, project), issue, given_too=True)):
        return []
    changed: list[str] = []

    def change(doc: Any) -> Any:
        entries = doc.get("issues", {}).get(str(issue)) if isinstance(doc, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if _usable(entry) and entry.get("given_in") == try_stem and applies(entry):
                apply(entry)
                changed.append(str(entry.get("id")))
        return doc

    path = followups_file(state_root, project)
    try:
        update_json(path, change, {"issues": {}})
    except OSError as err:
        raise OrchestratorError(f"{path}: {failure} ({err.strerror or err})") from None
    return changed


# --- what waits, for status and the dashboard ---------------------------------------------------------------

FOLLOWUP_WORDS = 60  # characters of a kept follow-up status shows


def _iso(seconds: Any) -> str | None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _files(directory: Path) -> list[Path]:
    """The command files of one queue directory, in the order given (a directory that does not read: none)."""
    try:
        with os.scandir(directory) as entries:
            return sorted(Path(e.path) for e in entries if e.name.endswith(".json") and not e.name.startswith(".")
                          and e.is_file(follow_symlinks=False))
    except OSError:
        return []


def _read_doc(path: Path) -> dict[str, Any] | None:
    try:
        doc = read_json(path)
    except UnreadableFile:
        return None
    return doc if isinstance(doc, dict) else None


def waits(state_root: Path, project: str) -> dict[int | None, dict[str, list[dict[str, Any]]]]:
    """What waits for each issue (None: the project), read from the files alone (status writes nothing here):
    `commands`: given and not applied yet (`queued`, or `taken` by a holder that has not finished them: a killed
    one's next holder applies them first), then those the holder refused (`refused`, with `error` and whether a
    verb or a text status has shown it: `reported`); `followups`: kept for the issue's next try, not yet given;
    `followups_in_doubt`: given to a try whose wrapper could not be stopped (its agent may or may not get them)."""
    found: dict[int | None, dict[str, list[dict[str, Any]]]] = {}

    def slot(issue: Any) -> dict[str, list[dict[str, Any]]]:
        key = issue if isinstance(issue, int) and not isinstance(issue, bool) else None
        return found.setdefault(key, no_waits())

    directory = queue_dir(state_root, project)
    done = {p.name: p for p in _files(directory / "done")}
    seen: set[str] = set()
    for state, stamp in (("taken", "taken_at"), ("queued", "queued_at")):
        for path in _files(directory / state):
            doc = _read_doc(path)
            if doc is None or path.name in done or path.name in seen:
                continue
            seen.add(path.name)
            slot(doc.get("issue"))["commands"].append(
                {"id": path.stem, "verb": clip(str(doc.get("verb")), 20), "state": state,
                 "at": _iso(doc.get(stamp) if doc.get(stamp) is not None else doc.get("queued_at")),
                 "error": None, "reported": None})
    for name, path in done.items():
        doc = _read_doc(path)
        if doc is None or doc.get("ok") is not False:
            continue
        slot(doc.get("issue"))["commands"].append(
            {"id": path.stem, "verb": clip(str(doc.get("verb") or "command"), 20), "state": "refused",
             "at": _iso(doc.get("done_at")), "error": clip(str(doc.get("error") or ""), 300),
             "reported": doc.get("reported") is True})
    for entry in found.values():
        entry["commands"].sort(key=lambda c: c["id"])
    issues = _kept(state_root, project)
    for number in issues:
        if not number.isdigit():
            continue
        for e in _pending(issues, int(number), given_too=True):
            text = " ".join(e["text"].split())
            shown = {"id": str(e.get("id")), "at": _iso(e.get("at")), "chars": len(e["text"]),
                     "words": text if len(text) <= FOLLOWUP_WORDS else text[:FOLLOWUP_WORDS - 3].rstrip() + "..."}
            if not _given_to(e):
                slot(int(number))["followups"].append(shown)
            elif e.get("in_doubt") is True:
                slot(int(number))["followups_in_doubt"].append({**shown, "given_in": str(e["given_in"])})
    return found


def no_waits() -> dict[str, list[dict[str, Any]]]:
    """What waits for an issue when nothing does (waits' keys, each empty)."""
    return {"commands": [], "followups": [], "followups_in_doubt": []}


def mark_reported(state_root: Path, project: str, ids: list[str]) -> None:
    """Refusals shown to the user (by the verb that waited for them, or a text status): shown once. Best effort:
    a done/ file that cannot be rewritten is shown again, never lost."""
    for command_id in ids:
        path = queue_dir(state_root, project) / "done" / f"{command_id}.json"
        doc = _read_doc(path)
        if doc is None or doc.get("reported") is True:
            continue
        try:
            write_json(path, {**doc, "reported": True})
        except OSError:
            pass
