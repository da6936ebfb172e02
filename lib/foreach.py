"""`inv foreach`: one shell command in each selected repo, concurrently, through the same runner as build/test."""
from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any, Callable, Iterator, Sequence

from lib import logcut, runner
from lib.batch import Outcome, default_jobs, execute
from lib.runstatus import RunStatus
from lib.config import REPO_FIELDS, Repo, Workspace
from lib.errors import OrchestratorError
from lib.gitstatus import read_known_commits, scan
from lib.paths import Paths
from lib.results import count_statuses, counts_text
from lib.workflows import Command, Plan, render_command

NAME = "foreach"
# What --json and the blocks carry of a repo's output: all of it up to 1 MiB, else its first
# and its last 512 KiB (where a failing command says why) around a mark; the log keeps every byte.
HEAD_BYTES = TAIL_BYTES = 512 * 1024
MAX_LOCK_LIST_BYTES = 16 * 1024 * 1024
# Every variable a workflow's run step can use, as placeholders: rendering them
# gives the same ORCH_* environment a workflow step gets (one place builds it).
ALL_VARIABLES = " ".join(["{{log_dir}}", *(f"{{{{repo.{field}}}}}" for field in REPO_FIELDS)])


@dataclass
class ForeachResult:
    outcome: Outcome
    output: str

    def to_json(self) -> dict[str, Any]:
        o = self.outcome
        return {"repo": o.repo, "exit_code": o.exit_code, "status": o.status, "duration_s": o.duration_s,
                "reason": None if o.status == RunStatus.PASSED else o.reason, "output": self.output, "log": o.log}


@dataclass
class ForeachReport:
    command: str
    results: list[ForeachResult]
    duration_s: float

    @property
    def failing(self) -> list[Outcome]:
        return [r.outcome for r in self.results if r.outcome.failing]

    def summary_line(self) -> str:
        counts = counts_text(count_statuses(r.outcome.status for r in self.results))
        count = len(self.results)
        line = f"foreach: {count} repo{'' if count == 1 else 's'} in {self.duration_s:.1f}s: {counts}"
        if self.failing:
            line += "; failing: " + ", ".join(f"{o.repo} ({o.reason})" for o in self.failing)
        return line

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "results": [r.to_json() for r in self.results]}


def check_command(command: str | None) -> str:
    if not (command or "").strip():
        raise OrchestratorError('foreach: no command given (usage: inv foreach "git status -s")')
    return command or ""


def choose_repos(workspace: Workspace, paths: Paths, tags: list[str] | None, only: list[str] | None,
                 dirty: bool, jobs: int = 0) -> list[Repo]:
    """The selected repos in config order; `dirty` keeps those with uncommitted changes (a fresh status)."""
    repos = workspace.select(tags=tags, only=only)
    if dirty:
        statuses = scan(repos, jobs, known=read_known_commits(paths.repo_status_file)).repos
        changed = {s.name for s in statuses if not s.error and s.dirty}
        repos = [r for r in repos if r.name in changed]
    return repos


def plan_for(command: str, repo: Repo, log_dir: Path) -> Plan:
    """Run `command` as written (no placeholders: `{{` may be the command's own text) with the repo's ORCH_* env."""
    env = render_command(ALL_VARIABLES, repo, log_dir, repo.local).env
    return Plan(NAME, repo, (Command(repo.local, command, command, env),),
                log_dir / f"orchestrator-{NAME}-{repo.name}.log")


def command_output(plan: Plan) -> str:
    """What the command printed: its log after the lines the runner writes before it.

    Over HEAD_BYTES + TAIL_BYTES, the middle is left out and a line says how
    many bytes and where they are: a chatty command's last words are kept.
    """
    command = plan.commands[0]
    marker = f"$ cd {command.cwd}\n$ {command.command}\n".encode()
    try:
        with open(plan.log, "rb") as log:
            start = log.read(len(marker) + 8192).find(marker)
            if start < 0:
                return ""
            start += len(marker)
            size = os.fstat(log.fileno()).st_size
            log.seek(start)
            if size - start <= HEAD_BYTES + TAIL_BYTES:
                return log.read().decode("utf-8", "replace")
            head_end, tail_start = logcut.cut_points(log, start, size, HEAD_BYTES, TAIL_BYTES)
            log.seek(start)
            head = log.read(head_end - start)
            log.seek(tail_start)
            tail = log.read(size - tail_start)
    except OSError:
        return ""
    line = logcut.mark(tail_start - head_end, f"; the log has all of them: {plan.log}", head.endswith(b"\n"))
    return (head + line + tail).decode("utf-8", "replace")


@contextmanager
def logs_reserved(log_dir: Path, repos: Sequence[Repo]) -> Iterator[None]:
    """Keep a second `inv foreach` off these repos' logs while this one runs.

    Two runs over one repo would truncate each other's log, and each would show
    the other's output as its own. One lock file per log dir, one byte-range
    lock per repo: one file descriptor however many repos. A repo's byte is its
    line in the file, which lists every name that ever ran there (so two names
    never share one, as they could share a hash).
    """
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_dir / f".orchestrator-{NAME}.locks", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield  # no lock where the logs cannot be written either: each repo's outcome says so
        return
    try:
        try:
            slots = _slots(fd, [repo.name for repo in repos])
        except OSError:
            slots = {}  # a file system without locks, or a full one: nothing to guard with
        busy = []
        for repo in repos:
            if repo.name not in slots:
                continue
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1 + slots[repo.name])
            except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: held by another run
                busy.append(repo.name)
            except OSError:
                pass  # no locks to be had here (ENOLCK): nothing to guard with
        if busy:
            raise OrchestratorError(f"foreach: already running in {', '.join(busy)} (another `inv foreach`; "
                                    f"its logs in {log_dir} would be overwritten): wait for it or use --only")
        yield
    finally:
        os.close(fd)  # releases every range


def _slots(fd: int, names: Sequence[str]) -> dict[str, int]:
    """Each name's line in the lock file (byte 1 + line is its lock); names not listed yet are added.

    Byte 0 is held while the file is read and added to, so two runs never give two names one line.
    """
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_LOCK_LIST_BYTES:  # not a list we wrote (a million names): nothing to guard with
            raise OSError(errno.EFBIG, "lock file too big")
        listed = os.pread(fd, size, 0).decode("utf-8", "replace").split("\n") if size else []
        if listed and listed[-1] == "":
            listed.pop()
        elif listed:  # a line cut short (a full disk): it keeps its slot, ours start after it
            os.pwrite(fd, b"\n", size)
            size += 1
        slots: dict[str, int] = {}
        for line, name in enumerate(listed):
            slots.setdefault(name, line)
        new = [name for name in dict.fromkeys(names) if name not in slots]
        if new:
            added = "".join(f"{name}\n" for name in new).encode()
            if os.pwrite(fd, added, size) != len(added):
                raise OSError(errno.ENOSPC, "short write")  # half a list would give a name two lines
            slots.update((name, len(listed) + i) for i, name in enumerate(new))
        return slots
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)


def run_foreach(paths: Paths, repos: Sequence[Repo], command: str, jobs: int = 0, timeout: float | None = None,
                on_result: Callable[[ForeachResult], None] | None = None) -> ForeachReport:
    """Run `command` in every repo; `on_result` gets each result in config order as soon as it can."""
    check_command(command)
    started = monotonic()
    plans = [plan_for(command, repo, paths.log_dir) for repo in repos]
    index = {plan.repo.name: i for i, plan in enumerate(plans)}
    done: dict[int, ForeachResult] = {}
    shown = 0

    def finished(outcome: Outcome) -> None:
        nonlocal shown
        i = index[outcome.repo]
        done[i] = ForeachResult(outcome, command_output(plans[i]))
        while shown in done:  # blocks come out in config order, each as soon as those before it are out
            if on_result is not None:
                on_result(done[shown])
            shown += 1

    with logs_reserved(paths.log_dir, repos):
        runner.run_each(plans, lambda plan: execute(plan, timeout), jobs or default_jobs(), on_done=finished)
    return ForeachReport(command, [done[i] for i in range(len(plans))], monotonic() - started)
