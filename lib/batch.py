"""Run planned workflows on one or many repos; each repo ends with one outcome, recorded in state/.

Over 500 lines, one job: a repo's run from its plan to its recorded outcome (the one Recorder, here and on
build hosts; the results file; the JUnit report CI reads).
"""
from __future__ import annotations

import fcntl
import os
import re
import shlex
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import monotonic
from typing import Any, BinaryIO, Callable, Sequence
from xml.etree import ElementTree

from lib import runner
from lib.config import Repo, Workspace
from lib.errors import ConfigError, LogWriteFailed, OrchestratorError
from lib.commandenv import command_env
from lib.paths import Paths
from lib.progress import Progress
from lib.runstatus import RunStatus
from lib.results import now_iso, record, results_problem, set_aside_bad_results
from lib.statefile import NotRegular, open_regular, read_json, write_bytes
from lib.testcounts import read_counts
from lib.workflows import Plan, get_workflow, load_workflows, plan_for



FAILING = {RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.ERROR}
RAN_AND_ENDED = {RunStatus.PASSED, RunStatus.FAILED, RunStatus.TIMEOUT}  # a command ran: its log has its end
RERUN = {RunStatus.FAILED, RunStatus.TIMEOUT}  # what --failed runs again, and JUnit calls a failure
# Characters XML 1.0 cannot carry (terminal escapes in a test log, say).
# A failed run shows its log's last lines: each cut to this many characters (the log keeps every byte).
TAIL_LINE_CHARS = 500
MAX_PROBLEMS = 20
NAMED = 5  # leftover processes named in an outcome
XML_INVALID_RE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass
class Outcome:
    repo: str
    language: str
    status: RunStatus  # given as its value too ("passed"): a value outside the set is a ValueError
    exit_code: int | None
    duration_s: float
    command: str
    log: str | None  # None: nothing ran, no log was written (a skipped repo)
    reason: str | None
    finished_at: str
    host: str = "local"  # a hosts.toml name when it ran on a build host
    counts: dict[str, int] | None = None  # the test runner's own summary (lib.testcounts), None when it has none
    cached: bool = False  # test-all --changed: reported from the last passed run, nothing ran
    last_passed: dict[str, str] | None = None  # {"head", "command", "host", "machine", "at"}: what --changed trusts
    # Not recorded: the runner was killed (SIGTERM/SIGKILL, not a SIGINT it ended on) before it could say its
    # summary, so a summary line in its log is an earlier one's (another suite's, a test's print): no counts.
    killed_untold: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.status = RunStatus(self.status)

    @property
    def failing(self) -> bool:
        return self.status in FAILING

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        del document["killed_untold"]
        return document

    def line(self) -> str:
        detail = f" ({self.reason})" if self.reason else ""
        return f"{self.repo}: {self.status}{detail} in {self.duration_s:.1f}s"


def execute(plan: Plan, timeout: float | None, echo: BinaryIO | None = None,
            grace: float = runner.GRACE_S, interrupt_grace: float | None = None) -> Outcome:
    """Run a plan's commands here in order, stopping at the first failure; never raises for the repo's sake.

    A log that cannot be written (disk full, read-only) is the outcome `error:
    cannot write log PATH: why`; the command is stopped rather than run blind.
    """
    recorder = Recorder(plan)
    if plan.skip_reason and plan.repo.local.is_dir():
        return recorder.skipped_without_log(plan.skip_reason)
    return recorder.run(lambda: _run_commands(plan, recorder, timeout, echo, grace, interrupt_grace))


def _run_commands(plan: Plan, recorder: Recorder, timeout: float | None, echo: BinaryIO | None, grace: float,
                  interrupt_grace: float | None) -> Outcome:
    path = plan.repo.local
    problem = None if path.is_dir() else ("path does not exist" if not path.exists() else "path is not a directory")
    if problem:
        return recorder.error(problem, line=f"{problem}: {path}")
    if plan.skip_reason:
        return recorder.skipped(plan.skip_reason)
    env = command_env()
    for command in plan.commands:
        remaining = recorder.remaining(timeout)
        recorder.write(f"$ cd {command.cwd}\n$ {command.command}\n")
        if not command.cwd.is_dir():
            return recorder.error(f"directory does not exist: {command.cwd}")
        result = runner.run_in_group(command.script, command.cwd, recorder.log, remaining,
                                     {**env, **dict(command.env)}, echo, grace, interrupt_grace)
        verdict = recorder.ended(CommandEnd.of_process(result), timeout)
        if verdict is not None:
            return verdict
    return recorder.passed()


@dataclass(frozen=True)
class CommandEnd:
    """How one command of a plan ended, here (runner.ProcessResult) or on a build host (the host's result, told
    in these words by lib.remote.fleet): what Recorder.ended judges."""

    exit_code: int | None  # None, neither timed out nor an error: a signal ended it
    timed_out: bool = False
    stopped_with: str | None = None  # a timeout that sent SIGINT first: the signals it took ("SIGINT")
    killed_by: str | None = None  # the signal that ended it, when known
    escaped: tuple[str, ...] = ()  # processes that had left its group, killed with it ("pid name")
    log_error: str | None = None  # the log refused a write (the command was stopped): why
    kill_failed: str | None = None  # a timeout whose kill did not reach the host: why (it may still run there)
    error: str | None = None  # it could not run, or how it ended is unknown (a lost connection): why
    ran: bool = True  # False: nothing of it ran, so no output precedes the error's line

    @classmethod
    def of_process(cls, result: runner.ProcessResult) -> CommandEnd:
        return cls(result.exit_code, result.timed_out, result.stopped_with, result.killed_by, result.escaped,
                   result.log_error)


class Recorder:
    """One repo's run, here or on a build host, from its log to its outcome.

    The one place that says what counts as passed, failed, timeout, skipped or
    error, which line the log gets for it, and in which order: the log is opened
    (one writer: `open_log`) and emptied, headed, written, closed, and only then
    are the test runner's counts read from it. A run here and a run on a host
    hand it the same things (a CommandEnd per command) and get the same outcome.
    """

    def __init__(self, plan: Plan, host: str = "local", where: str = "") -> None:
        self.plan = plan
        self.host = host
        self.where = where  # the header's words after the time: " on host b1 (build1.example.com)"
        self.started = monotonic()
        self.notes: list[str] = []
        self._log: BinaryIO | None = None

    @property
    def log(self) -> BinaryIO:
        """The open log, for the command's own output (only inside `run`)."""
        assert self._log is not None, "the log is open only inside Recorder.run"
        return self._log

    def remaining(self, timeout: float | None) -> float | None:
        """What is left of the repo's timeout (it covers all of its commands)."""
        return None if timeout is None else max(0.0, timeout - (monotonic() - self.started))

    def outcome(self, status: RunStatus, exit_code: int | None = None, reason: str | None = None) -> Outcome:
        return Outcome(self.plan.repo.name, self.plan.repo.language, status, exit_code,
                       round(monotonic() - self.started, 3), self.plan.command_line, str(self.plan.log), reason,
                       now_iso(), self.host)

    def run(self, body: Callable[[], Outcome]) -> Outcome:
        """Open the log, head it, run `body` (which ends in one of the verdicts below), close the log, read the
        counts. A log that cannot be opened, written or closed is the outcome `cannot write log PATH: why`."""
        try:
            log = open_log(self.plan.log)
        except LogUnavailable as err:
            return self.outcome(RunStatus.ERROR, reason=str(err))
        result: Outcome | None = None
        try:
            with log:
                self._log = log
                self.write(f"# orchestrator {self.plan.workflow} {self.plan.repo.name} at {now_iso()}"
                           f"{self.where}\n")
                result = body()
        except OSError as err:
            # Closing flushes the last bytes: a full disk can refuse them too. An error found first stays.
            if result is not None and result.status == RunStatus.ERROR:
                return result
            return self.log_failed(err.strerror or str(err))
        finally:
            self._log = None
        return with_counts(result)

    def write(self, text: str) -> None:
        try:
            self.log.write(text.encode())
        except OSError as err:
            raise LogWriteFailed(err.errno, err.strerror) from None

    def log_failed(self, why: str | None, exit_code: int | None = None) -> Outcome:
        return self.outcome(RunStatus.ERROR, exit_code, f"cannot write log {self.plan.log}: {why}")

    def skipped_without_log(self, reason: str) -> Outcome:
        """Nothing ran, so nothing is logged: `log` is null (a log at the usual path is an earlier run's)."""
        outcome = self.outcome(RunStatus.SKIPPED, reason=reason)
        outcome.log = None
        return outcome

    def skipped(self, reason: str) -> Outcome:
        self.write(f"skipped: {reason}\n")
        return self.outcome(RunStatus.SKIPPED, reason=reason)

    def error(self, reason: str, line: str | None = None, after_output: bool = False) -> Outcome:
        """The repo's error; the log says `error: <line or reason>`, on a line of its own after any output."""
        self.write(("\n" if after_output else "") + f"error: {line or reason}\n")
        return self.outcome(RunStatus.ERROR, reason=reason)

    def passed(self) -> Outcome:
        return self.outcome(RunStatus.PASSED, 0, "; ".join(self.notes) or None)

    def ended(self, end: CommandEnd, timeout: float | None) -> Outcome | None:
        """The verdict on one command: the outcome that ends the run, or None when it passed (the next runs)."""
        if end.log_error:
            return self.log_failed(end.log_error, end.exit_code)
        if end.error:
            return self.error(end.error, after_output=end.ran)
        if end.escaped:
            more = f" and {len(end.escaped) - NAMED} more" if len(end.escaped) > NAMED else ""
            self.notes.append(f"killed {len(end.escaped)} process(es) that had left the command's process group: "
                              + ", ".join(end.escaped[:NAMED]) + more)
            self.write(f"\nnote: {self.notes[-1]}\n")
        # Only a SIGINT lets a test runner say its end: killed otherwise, a summary in its log is another's.
        if end.timed_out:
            if end.kill_failed:  # never "killed" when the kill did not reach the host
                self.write(f"\ntimeout: after {timeout:g}s; could not kill it on the host, it may still run: "
                           f"{end.kill_failed}\n")
                stopped = self.outcome(RunStatus.TIMEOUT, reason=f"timed out after {timeout:g}s; may still run on "
                                                                 f"the host (kill failed: {end.kill_failed})")
            else:
                how = f"stopped with {end.stopped_with}" if end.stopped_with else "killed"
                self.write(f"\ntimeout: {how} after {timeout:g}s\n")
                stopped = self.outcome(RunStatus.TIMEOUT, reason=f"timed out after {timeout:g}s")
            stopped.killed_untold = end.stopped_with != "SIGINT"
            return stopped
        if end.killed_by or end.exit_code is None:
            signal = end.killed_by or "a signal"
            self.write(f"\nkilled by {signal}\n")
            killed = self.outcome(RunStatus.FAILED, end.exit_code, f"killed by {signal}")
            killed.killed_untold = end.killed_by != "SIGINT"
            return killed
        if end.exit_code != 0:
            return self.outcome(RunStatus.FAILED, end.exit_code, f"exit {end.exit_code}")
        return None


def with_counts(outcome: Outcome) -> Outcome:
    """A command that ran gets its test runner's counts from the end of its log (None: no summary there).

    A runner killed before it could print its summary has none: a summary line in its log is someone else's.
    """
    if outcome.status in RAN_AND_ENDED and outcome.log and not outcome.killed_untold:
        outcome.counts = read_counts(Path(outcome.log))
    return outcome


class LogUnavailable(Exception):
    """A run's log cannot be written; the message is the outcome's reason."""


PIPE = "it is a named pipe (opening it would wait for a reader)"


def open_log(path: Path) -> BinaryIO:
    """A run's log, local or on a host: opened to append, locked for this run, then emptied (never "wb": the
    log of a run still writing it stays whole); LogUnavailable (`cannot write log PATH: why`, `log PATH is in
    use by another run`) when it cannot be ours. Opened through statefile.open_regular, so a named pipe
    there, even one made a moment ago, is an error and never a wait for a reader; a character device
    (/dev/null) is a log too, a disk is not."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666, char_device=True)
    except NotRegular as err:  # a reader holds the pipe open: our output would go to it, not to a log
        why = PIPE if err.kind == "a named pipe (FIFO)" else f"it is {err.kind or 'not a regular file'}"
        raise LogUnavailable(f"cannot write log {path}: {why}") from None
    except OSError as err:  # ENXIO: a pipe nobody reads
        why = PIPE if path.is_fifo() else err.strerror or str(err)
        raise LogUnavailable(f"cannot write log {path}: {why}") from None
    log = open(fd, "ab")
    try:
        os.set_blocking(fd, True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogUnavailable(f"log {path} is in use by another run") from None
        except OSError:
            pass  # a file system or device without locks: nothing to guard
        if stat.S_ISREG(os.fstat(fd).st_mode):
            log.truncate(0)  # an append-only file (chattr +a) refuses: EPERM
    except LogUnavailable:
        log.close()
        raise
    except OSError as err:
        log.close()
        raise LogUnavailable(f"cannot write log {path}: {err.strerror or err}") from None
    return log


def check_state(paths: Paths, workflow: str) -> list[str]:
    """Before a run: set aside a results file that cannot be read or has the wrong shape; one line each."""
    state_file = results_file(paths, workflow)
    return [] if state_file is None else set_aside_bad_results(state_file)


def previously_failing(state_file: Path) -> list[str]:
    try:
        document = read_json(state_file, default={}) or {}
    except OrchestratorError:
        return []  # a results file that cannot be read has no failures to rerun (check_state set it aside)
    if results_problem(document):
        return []
    return [r["repo"] for r in document.get("results", []) if r.get("status") in RERUN]


def cut_line(line: str, limit: int = TAIL_LINE_CHARS) -> str:
    """A line of at most `limit` characters, with a visible mark where it was cut."""
    if len(line) <= limit:
        return line
    return f"{line[:limit]}[... {len(line) - limit} more characters cut; the log has them all]"


def tail(path: Path, lines: int = 50, max_bytes: int = 256 * 1024, line_chars: int = TAIL_LINE_CHARS) -> str:
    """The last lines of a log, read from its end (logs can be huge and not UTF-8), each cut to `line_chars`.

    Bounded whatever the log holds: `lines` lines of at most `line_chars` characters (plus the cut mark).
    """
    if not path.is_file():
        return ""  # a device or a pipe as log_file (/dev/full, /dev/zero) has no tail to show
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - max_bytes))
            data = log.read(max_bytes)
    except OSError:
        return ""
    return "\n".join(cut_line(line, line_chars) for line in data.decode("utf-8", "replace").splitlines()[-lines:])


def check_report_path(path: Path) -> None:
    """Fail before running (exit 2) when a report could not be written at `path`."""
    if path.is_dir():
        raise OrchestratorError(f"--junit-xml {path}: is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise OrchestratorError(f"--junit-xml {path}: cannot write there: {err.strerror or err}") from None


def write_junit(path: Path, outcomes: Sequence[Outcome], suite: str = "test-all", wall_s: float | None = None,
                interrupted: str | None = None, unfinished: bool = False) -> None:
    """The report: `time` is the run's wall time (`wall_s`; else the sum); `interrupted` names the stop signal.

    `unfinished`: the report a run writes before it starts, replaced by its real one when it ends; a run
    killed outright (SIGKILL) leaves this one, never an earlier run's green report. Written atomically.
    """
    failures = sum(1 for o in outcomes if o.status in RERUN)
    errors = sum(1 for o in outcomes if o.status == RunStatus.ERROR)
    skipped = sum(1 for o in outcomes if o.status == RunStatus.SKIPPED)
    root = ElementTree.Element("testsuites")
    name = f"orchestrator {suite}" + (f" (interrupted by {interrupted})" if interrupted else "") \
        + (" (did not finish)" if unfinished else "")
    seconds = sum(o.duration_s for o in outcomes) if wall_s is None else wall_s
    tests = ElementTree.SubElement(root, "testsuite", name=name, tests=str(len(outcomes)),
                                   failures=str(failures), errors=str(errors), skipped=str(skipped),
                                   time=f"{seconds:.3f}", timestamp=now_iso())
    if interrupted:
        suite_properties = ElementTree.SubElement(tests, "properties")
        ElementTree.SubElement(suite_properties, "property", name="interrupted", value=interrupted)
    for o in outcomes:
        case = ElementTree.SubElement(tests, "testcase", classname=f"orchestrator.{suite}", name=o.repo,
                                      time=f"{o.duration_s:.3f}")
        if o.counts is not None or o.cached:
            properties = ElementTree.SubElement(case, "properties")
            for key, value in (o.counts or {}).items():
                ElementTree.SubElement(properties, "property", name=key, value=str(value))
            if o.cached:  # test-all --changed: nothing ran now; the counts are those of the run it trusts
                ElementTree.SubElement(properties, "property", name="cached", value=o.reason or "cached")
        if o.status in RERUN:
            node = ElementTree.SubElement(case, "failure", message=o.reason or o.status, type=o.status)
            node.text = XML_INVALID_RE.sub("\ufffd", tail(Path(o.log)))
        elif o.status == RunStatus.ERROR:
            ElementTree.SubElement(case, "error", message=o.reason or "error", type="error")
        elif o.status == RunStatus.SKIPPED:
            ElementTree.SubElement(case, "skipped", message=o.reason or "skipped")
        ElementTree.SubElement(case, "system-out").text = (f"log: {o.log or 'none'}\ncommand: {o.command}\n"
                                                           f"host: {o.host}"
                                                           + (f"\nnot run: {o.reason}" if o.cached else ""))
    write_bytes(path, ElementTree.tostring(root, encoding="utf-8", xml_declaration=True), mode=0o644)


def results_file(paths: Paths, workflow: str) -> Path | None:
    """Where a workflow's outcomes are kept: build and test have state files."""
    return {"build": paths.build_results_file, "test": paths.test_results_file}.get(workflow)


def plan_workflow(paths: Paths, workflow: str, repos: Sequence[Repo]) -> list[Plan]:
    """Plans for `repos`; loading workflows.json is where every config error surfaces.

    Two repos whose `log_file` renders to one path would overwrite each
    other's log (and JUnit text): a config error, before anything runs.
    """
    chosen = get_workflow(load_workflows(paths), workflow)
    plans = [plan_for(chosen, repo, paths.log_dir) for repo in repos]
    first_user: dict[str, str] = {}
    problems = []
    for plan in plans:
        key = os.path.realpath(plan.log)
        if key in first_user:
            problems.append(f"{chosen.source}: workflows.{workflow}.log_file: repos {first_user[key]} and "
                            f"{plan.repo.name} would both log to {plan.log}; put {{{{repo.name}}}} in it")
        else:
            first_user[key] = plan.repo.name
    if problems:
        raise ConfigError(problems[:MAX_PROBLEMS] + ([f"... and {len(problems) - MAX_PROBLEMS} more"]
                                                     if len(problems) > MAX_PROBLEMS else []))
    return plans


def plan_lines(plan: Plan) -> list[str]:
    """What a dry run says of a plan run here: its commands and log, or why it would be skipped."""
    if plan.skip_reason:
        return [f"{plan.repo.name}: would skip ({plan.skip_reason}); log: {plan.log}"]
    return [f"{plan.repo.name}: would run {plan.workflow} (log: {plan.log})"] + [
        f"  cd {shlex.quote(str(command.cwd))} && {command.command}" for command in plan.commands]


def plan_document(plan: Plan) -> dict[str, Any]:
    """plan_lines for --json: `{repo, host: "local", skip, log, commands: [{cwd, command}]}`."""
    return {"repo": plan.repo.name, "host": "local", "skip": plan.skip_reason, "log": str(plan.log),
            "commands": [] if plan.skip_reason else [{"cwd": str(c.cwd), "command": c.command}
                                                      for c in plan.commands]}


def default_jobs() -> int:
    """Builds and tests are CPU work: one repo per core."""
    return os.cpu_count() or 2


@dataclass
class BatchRun:
    """The outcomes of a run, where they were recorded, and lines to print after the verdict."""

    outcomes: list[Outcome]
    state_file: Path | None
    notes: list[str]

    @property
    def failing(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.failing]


def run_with_progress(paths: Paths, workspace: Workspace, plans: Sequence[Plan], jobs: int,
                      timeout: float | None, label: str,
                      on_start: Callable[[Plan], None] | None = None,
                      interrupt_grace: float | None = None) -> BatchRun:
    """Run plans on many repos with the live line (terminal) or one line per repo, then record."""

    def started(plan: Plan) -> None:
        if on_start is not None:
            on_start(plan)
        progress.start(plan.repo.name)

    with Progress(label, len(plans)) as progress:
        return run_and_record(paths, workspace, plans, jobs or default_jobs(), timeout,
                              on_start=started, interrupt_grace=interrupt_grace,
                              on_done=lambda o: progress.finish(o.repo, o.line(), o.failing))


def run_and_record(paths: Paths, workspace: Workspace, plans: Sequence[Plan], jobs: int, timeout: float | None,
                   on_start: Callable[[Plan], None] | None = None,
                   on_done: Callable[[Outcome], None] | None = None,
                   echo: BinaryIO | None = None, interrupt_grace: float | None = None) -> BatchRun:
    """Run and record the outcomes; interrupted (runner.RunInterrupted), the finished repos are recorded.

    `interrupt_grace`: a timeout sends SIGINT first and waits that long (runner.interrupt_first).
    """
    state_file = results_file(paths, plans[0].workflow) if plans else None
    try:
        outcomes = runner.run_each(plans, lambda plan: execute(plan, timeout, echo, interrupt_grace=interrupt_grace),
                                   jobs, on_start, on_done)
    except runner.RunInterrupted as stop:
        stop.notes += keep_results(state_file, stop.results, workspace)
        raise
    return BatchRun(outcomes, state_file, keep_results(state_file, outcomes, workspace))


def keep_results(state_file: Path | None, outcomes: Sequence[Outcome], workspace: Workspace) -> list[str]:
    """Record outcomes (finished or interrupted runs alike); a state file we cannot write is a line, not a crash."""
    if state_file is None or not outcomes:
        return []
    try:
        record(state_file, outcomes, {r.name for r in workspace.repos})
    except OSError as err:
        return [f"warning: results not recorded in {state_file}: {err.strerror or err}"]
    return []
