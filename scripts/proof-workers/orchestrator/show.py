"""Show one issue of a run: its tries' logs (`logs`, `--follow`), its branch against where it forked when it was
assigned (`diff`), its worker's tmux window (`attach`). Reads the run's files, git and tmux; needs no monitor."""
from __future__ import annotations

import codecs
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from lib import logcut, procs
from lib.errors import OrchestratorError, clip
from lib.statefile import open_regular_file, read_regular
from orchestrator import worktrees
from orchestrator.config import Issue, ProjectConfig
from orchestrator.probe import read_pid
from orchestrator.run import Run
from orchestrator.state import WorkerRecord, read_lines
from orchestrator.windows import try_tag, worker_window
from orchestrator.wrapper import TRY_VAR

TRY_LOG = re.compile(r"worker-(\d+)-try-(\d+)\.log")
CHUNK = 256 * 1024
FOLLOW_POLL_S = 0.25
# A diff never fetches: a partial clone's lazy fetch would start the transport an agent configured (its
# core.sshCommand). Variables, as config (the agent's protocol.ssh.allow) outranks `-c protocol.allow=never`.
NO_FETCH_ENV = {"GIT_NO_LAZY_FETCH": "1", "GIT_ALLOW_PROTOCOL": "none"}
GONE_GRACE_S = 3.0  # a try with no exit code and no process for this long ended without one (a kill -9)
# What an agent printed never drives the terminal: control characters but tab and newline are shown escaped.
_SHOWN = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0)) if c not in (0x09, 0x0a)}
_SHOWN.update({c: f"\\u{c:04x}" for c in (*range(0x202a, 0x202f), *range(0x2066, 0x206a), 0x200e, 0x200f, 0x061c)})


class NotNow(OrchestratorError):
    """The issue is known but has nothing of that kind now (no running try, no branch): exit 1."""

    exit_code = 1


@dataclass(frozen=True)
class TryLog:
    worker: int
    try_id: int
    path: Path
    cap: int


@dataclass
class Attach:
    """The tmux commands that show the issue's window: run in order, the last one in the terminal."""
    commands: list[list[str]]
    env: dict[str, str] = field(default_factory=dict)


def shown(text: str) -> str:
    return text.translate(_SHOWN)


def find_issue(run: Run, number: int, project: str = "") -> tuple[ProjectConfig, Issue]:
    """The issue `number` of the run's configs (of `project` when given); one line when it is not there or in
    several projects."""
    configs = run.configs
    if project:
        configs = [cfg for cfg in run.configs if cfg.project == project]
        if not configs:
            raise OrchestratorError(f"no project {project!r} in this run (projects: "
                                    f"{', '.join(c.project for c in run.configs)})")
    found = [(cfg, issue) for cfg in configs if (issue := cfg.issue(number)) is not None]
    if not found:
        raise OrchestratorError(f"issue #{clip(str(number), 20)} is not in {', '.join(str(c.path) for c in configs)}")
    if len(found) > 1:
        raise OrchestratorError(f"issue #{number} is in several projects ({', '.join(c.project for c, _ in found)}): "
                                "give --project")
    return found[0]


def _spec(run: Run, worker: int, try_id: int) -> dict:
    try:
        doc = json.loads(read_regular(run.files.try_spec(worker, try_id)) or b"{}")
    except (OrchestratorError, ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def try_logs(run: Run, cfg: ProjectConfig, number: int) -> list[TryLog]:
    """The issue's try logs in the order the tries started (their START line; a worker's tries by number)."""
    found = []
    folder = run.files.root / "logs" / f"issue-{number}"
    if folder.is_symlink():  # the wrapper makes a real folder: a symlink there leads to logs of someone's making
        return []
    for path in folder.glob("worker-*-try-*.log"):
        match = TRY_LOG.fullmatch(path.name)
        if not match or not path.is_file():
            continue
        worker, try_id = int(match.group(1)), int(match.group(2))
        spec = _spec(run, worker, try_id)
        if spec.get("project", cfg.project) != cfg.project:
            continue  # another project of the run numbers its issues from 1 too
        cap = spec.get("max_log_bytes") if isinstance(spec.get("max_log_bytes"), int) else cfg.max_log_bytes
        found.append((_started(path), worker, try_id, TryLog(worker, try_id, path, cap)))
    return [entry[-1] for entry in sorted(found, key=lambda e: e[:3])]


def _started(path: Path) -> str:
    """The START line's time (ISO, sorts as text); a log without one sorts by its own time."""
    log = open_regular_file(path)
    with log or open(os.devnull, "rb") as source:
        first = source.readline(4096).decode("utf-8", "replace")
    found = re.search(r" at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", first)
    if found:
        return found.group(1)
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))
    except OSError:
        return ""


def assignments(run: Run, cfg: ProjectConfig, number: int) -> list[dict]:
    """The event log's `reassign` lines of this issue, oldest first."""
    return [line["event"] for line in read_lines(run.files.events)
            if isinstance(line.get("event"), dict) and line["event"].get("action") == "reassign"
            and line["event"].get("new_issue") == number and line["event"].get("project", cfg.project) == cfg.project]


def holder(run: Run, cfg: ProjectConfig, number: int) -> WorkerRecord | None:
    """The worker whose record holds the issue now."""
    for worker in run.files.recorded_workers():
        record = run.files.load_worker(worker)
        if record.project == cfg.project and record.issue_number == number:
            return record
    return None


def _never_assigned(run: Run, cfg: ProjectConfig, number: int) -> OrchestratorError:
    return OrchestratorError(f"issue #{number} of {cfg.project} was never assigned in this run (no tries, no "
                             f"assignment in {run.files.events})")


# --- logs ------------------------------------------------------------------------------------------------------

def show_logs(run: Run, cfg: ProjectConfig, number: int, write: Callable[[str], None], follow: bool = False,
              sleep: Callable[[float], None] = time.sleep) -> None:
    """Every try log of the issue in order, each under a `==> PATH <==` line; with `follow`, the running try's
    log as it is written, until that try ends."""
    logs = try_logs(run, cfg, number)
    record = holder(run, cfg, number)
    if not logs and not assignments(run, cfg, number) and record is None:
        raise _never_assigned(run, cfg, number)
    running = None
    if follow and record is not None and run.files.read_signal(record.worker_id, record.try_id) is None:
        running = (record.worker_id, record.try_id)
    ended_line = [True]

    def say(text: str) -> None:
        if text:
            write(text)
            ended_line[0] = text.endswith("\n")

    def header(text: str) -> None:  # always a line of its own: a try killed mid-line ends its log in one
        say(("" if ended_line[0] else "\n") + text)

    for entry in logs:
        if (entry.worker, entry.try_id) == running:
            continue
        log = open_regular_file(entry.path)
        if log is None:
            continue
        header(f"==> {entry.path} <==\n")
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        with log:
            _copy(log, say, decoder)
        say(shown(decoder.decode(b"", final=True)))  # a character cut off at the end shows as U+FFFD
    if running is None:
        if follow:
            header(f"(#{number} has no running try: nothing to follow)\n")
        return
    assert record is not None
    path = run.files.try_log(record.worker_id, record.try_id, number)
    spec = _spec(run, record.worker_id, record.try_id)
    cap = spec.get("max_log_bytes") if isinstance(spec.get("max_log_bytes"), int) else cfg.max_log_bytes
    header(f"==> {path} <== (following until the try ends; Ctrl-C stops)\n")
    follower = Follower(path, cap, write)
    ended = _ended(run, record)
    while True:
        follower.pump()
        if ended():
            follower.pump(final=True)
            return
        sleep(FOLLOW_POLL_S)


def _copy(log: BinaryIO, write: Callable, decoder: codecs.IncrementalDecoder | None) -> None:
    """Write the log from where it is to its end: as text shown safely, or (no decoder) as bytes to `write`."""
    while chunk := log.read(CHUNK):
        if decoder is None:
            write(chunk)
        elif text := decoder.decode(chunk):
            write(shown(text))


def _ended(run: Run, record: WorkerRecord) -> Callable[[], bool]:
    """Whether the try has ended: its exit code is written, the worker moved on, or no process of it is left
    (its wrapper was killed outright) for GONE_GRACE_S."""
    tag = try_tag(run, record.worker_id, record.try_id)
    gone_since: list[float] = []
    looked = [0.0]

    def check() -> bool:
        if run.files.read_signal(record.worker_id, record.try_id) is not None:
            return True
        now = run.files.load_worker(record.worker_id)
        if (now.project, now.issue_number, now.try_id) != (record.project, record.issue_number, record.try_id):
            return True
        if time.monotonic() - looked[0] < 1.0:
            return False  # the process table is read at most once a second
        looked[0] = time.monotonic()
        group = read_pid(run.files.pid_file(record.worker_id, record.try_id))
        alive = procs.processes_tagged(TRY_VAR, tag) or (group is not None and procs.group_members(group))
        if alive or not now.launched:
            gone_since.clear()
            return False
        gone_since.append(time.monotonic())
        return gone_since[-1] - gone_since[0] >= GONE_GRACE_S

    return check


class Follower:
    """Reads a capped log as it grows, each byte once. When the writer cuts it (a new file renamed over it), the
    old file is read to its end and the new one taken up where the old one stopped, by the count in its mark;
    what was cut before it could be read shows as the new file's mark. The same holds when the log is put back
    after an agent deleted or replaced it (nothing but a regular file is read), or cut in place; a log emptied
    under it is shown from its start again, after a line saying so."""

    def __init__(self, path: Path, cap: int, write: Callable[[str], None]) -> None:
        self.path, self.cap, self.write = path, cap, write
        self.file: BinaryIO | None = None
        self.layout: tuple[int, int, int] | None = None
        self.reached = 0  # how much of everything written is shown (a place in the log as if never cut)
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.at_line_start = True

    def _logical(self, position: int) -> int:
        """Where `position` of the open file is in everything the agent wrote."""
        if self.layout and position >= self.layout[0] + self.layout[1]:
            return position - self.layout[1] + self.layout[2]
        return position

    def _read(self) -> None:
        assert self.file is not None
        _copy(self.file, self._say, None)
        self.reached = self._logical(self.file.tell())

    def _take_up(self) -> None:
        """Read the open file's mark again and go on where `reached` is in it."""
        assert self.file is not None
        size = os.fstat(self.file.fileno()).st_size
        self.layout = logcut.read_layout(self.file, self.cap)
        if self.layout and self.reached >= self.layout[0]:
            head_end, mark_length, cut = self.layout
            tail_from = head_end + cut  # where the file's tail is in everything written
            if self.reached < tail_from:  # cut before this could read it: said so, in a line of its own
                self._say(logcut.mark(tail_from - self.reached, " (cut from the log before it could be shown)",
                                      self.at_line_start))
            self.file.seek(max(self.reached, tail_from) - cut + mark_length)
        elif self.reached <= size:
            self.file.seek(self.reached)
        else:
            self._say(("" if self.at_line_start else "\n").encode()
                      + b"(the log was emptied or replaced while it was shown: from its start again)\n")
            self.layout, self.reached = None, 0
            self.file.seek(0)

    def pump(self, final: bool = False) -> None:
        """Show what is new. `final`: the try has ended, so the file at the path is the log (the wrapper put it
        back): it is taken up whatever it holds."""
        if self.file is None:
            self.file = open_regular_file(self.path)
            if self.file is None:
                return
            self._take_up()
        for _ in range(16):  # a path replaced faster than this is taken up at the next pump
            self._read()
            if os.fstat(self.file.fileno()).st_size < self.file.tell():  # emptied, or cut in place
                self._take_up()
                self._read()
            newer = self._successor(final)
            if newer is None:
                return
            self._read()  # cut and renamed over, or put back: the old file no longer grows
            self.file.close()
            self.file = newer
            self._take_up()

    def _successor(self, final: bool = False) -> BinaryIO | None:
        """The file at the path now, when it is another regular file that goes on from what is shown (a cut's
        new file, with its mark, or the log put back, at least as long); else None: this one is read on (the
        path deleted, a FIFO or a shorter file put there by an agent until the wrapper puts the log back)."""
        assert self.file is not None
        try:
            now = os.stat(self.path)
        except OSError:
            return None
        mine = os.fstat(self.file.fileno())
        if (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
            return None
        handle = open_regular_file(self.path)
        if handle is None:
            return None
        if not final and logcut.read_layout(handle, self.cap) is None \
                and os.fstat(handle.fileno()).st_size < self.reached:
            handle.close()
            return None
        return handle

    def _say(self, data: bytes) -> None:
        text = self.decoder.decode(data)
        if text:
            self.write(shown(text))
            self.at_line_start = text.endswith("\n")


# --- diff ------------------------------------------------------------------------------------------------------

def diff_base(run: Run, cfg: ProjectConfig, number: int) -> tuple[str, str, bool]:
    """(base, branch, recorded): the merge-base with the default branch recorded when the issue was last assigned
    (else the merge-base now, not recorded), and the issue's branch."""
    given = assignments(run, cfg, number)
    if not given and holder(run, cfg, number) is None and not try_logs(run, cfg, number):
        raise _never_assigned(run, cfg, number)
    issue = cfg.issue(number)
    assert issue is not None
    repo = cfg.repo_for(issue)
    branch = str(given[-1].get("branch") or "") if given else ""
    branch = branch or cfg.branch_for(issue)
    if not worktrees.ok(repo.path, "rev-parse", "--verify", "-q", f"refs/heads/{branch}^{{commit}}"):
        raise NotNow(f"issue #{number}: branch {branch} is not in {repo.path}")
    # The last assignment's base only: an older one may be the fork of a branch since made again elsewhere.
    recorded = given[-1].get("base") if given else None
    base = recorded if isinstance(recorded, str) and re.fullmatch(r"[0-9a-f]{40,64}", recorded) else ""
    if base:
        return base, branch, True
    now = merge_base(repo.path, branch, repo.default_branch)
    if now is None:
        raise NotNow(f"issue #{number}: {branch} has no merge-base with {repo.default_branch} in {repo.path}")
    return now, branch, False


def merge_base(repo: Path, branch: str, default_branch: str) -> str | None:
    """The merge-base of the branch with the default branch (origin's, else the local one)."""
    for ref in (f"refs/remotes/origin/{default_branch}", f"refs/heads/{default_branch}"):
        try:
            sha = worktrees.git(repo, "merge-base", f"refs/heads/{branch}", ref, check=False).strip()
        except worktrees.GitFailed:
            return None
        if re.fullmatch(r"[0-9a-f]{40,64}", sha):
            return sha
    return None


def show_diff(run: Run, cfg: ProjectConfig, number: int, write: Callable[[str], None], stat: bool = False) -> str:
    """Write `git diff [--stat] BASE BRANCH` of the issue; returns a note for stderr when no base was recorded."""
    base, branch, recorded = diff_base(run, cfg, number)
    issue = cfg.issue(number)
    assert issue is not None
    repo = cfg.repo_for(issue).path
    # No external diff or textconv driver, no colour (color.diff outranks SAFE_GIT's color.ui): an agent can write
    # the shared .git/config they would be read from.
    argv = ["git", *worktrees.SAFE_GIT, "diff", "--no-ext-diff", "--no-textconv", "--no-color",
            *(["--stat"] if stat else []),
            base, f"refs/heads/{branch}", "--"]
    # git's stderr goes to a file: a pipe nobody reads while its diff is read fills up (an agent's attributes
    # file can make git warn for megabytes), and git and this verb would wait on each other forever.
    with tempfile.TemporaryFile() as errors:
        try:
            child = subprocess.Popen(argv, cwd=repo, env=worktrees.clean_env(NO_FETCH_ENV), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=errors)
        except OSError as err:
            raise worktrees.GitFailed(f"git diff in {repo}: {err}") from None
        assert child.stdout is not None
        try:
            _copy(child.stdout, write, codecs.getincrementaldecoder("utf-8")("replace"))  # type: ignore[arg-type]
        finally:
            if child.poll() is None:
                child.stdout.close()
            child.wait()
            errors.seek(max(0, errors.seek(0, os.SEEK_END) - 65536))
            error = errors.read().decode("utf-8", "replace")
    if child.returncode != 0:
        last = error.strip().splitlines()[-1] if error.strip() else "failed"
        raise worktrees.GitFailed(f"git diff in {repo}: {clip(shown(last), 300)}")
    return "" if recorded else (f"(#{number}: no merge-base was recorded when it was assigned; this is the "
                                f"merge-base with {cfg.repo_for(issue).default_branch} now, {base[:12]})")


# --- attach ----------------------------------------------------------------------------------------------------

def socket_args(run: Run) -> tuple[list[str], str]:
    """tmux's socket flags for the run's server and the socket's path."""
    from orchestrator.tmux import SOCKET_ENV

    chosen = os.environ.get(SOCKET_ENV) or run.lead.tmux_socket or ""
    folder = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
    if "/" in chosen:
        return ["-S", chosen], chosen
    if chosen:
        return ["-L", chosen], str(folder / chosen)
    return [], str(folder / "default")


def attach_command(run: Run) -> str:
    """The command line that attaches a terminal to the run's session, as `launch` tells it (quoted to paste)."""
    return shlex.join(["tmux", *socket_args(run)[0], "attach", "-t", run.session])


def attach(run: Run, cfg: ProjectConfig, number: int) -> int:
    """Show the issue's window in this terminal (`attach_plan`'s commands in order); tmux's exit code: 0 once
    the client detaches."""
    plan = attach_plan(run, cfg, number)
    for command in plan.commands:
        try:
            code = subprocess.call(command, env=plan.env)
        except OSError as err:  # tmux gone from PATH since the session was read, or not runnable
            raise NotNow(f"issue #{number}: cannot start tmux: {clip(err.strerror or str(err))}") from None
        if code:
            return code
    return 0


def attach_plan(run: Run, cfg: ProjectConfig, number: int, environ: dict[str, str] | None = None) -> Attach:
    """Select the window of the worker running the issue, then attach to the run's session, or switch this
    client to it when called inside a pane of the same tmux server ($TMUX); inside another server, a nested
    client (its $TMUX unset)."""
    from orchestrator import tmux

    env = dict(os.environ if environ is None else environ)
    record = holder(run, cfg, number)
    if record is None:
        if not try_logs(run, cfg, number) and not assignments(run, cfg, number):
            raise _never_assigned(run, cfg, number)
        raise NotNow(f"issue #{number} has no worker now (not running): `logs {number}` shows its tries")
    window = worker_window(record.worker_id)
    if window not in tmux.panes(run.server, run.session):
        raise NotNow(f"issue #{number}: the run's tmux session {run.session} has no window {window} "
                     f"(socket {socket_args(run)[1]})")
    flags, path = socket_args(run)
    inside = env.get("TMUX", "").split(",")[0]
    select = ["tmux", *flags, "select-window", "-t", f"={run.session}:={window}"]
    if inside and os.path.realpath(inside) == os.path.realpath(path):
        return Attach([select, ["tmux", *flags, "switch-client", "-t", f"={run.session}"]], env)
    env.pop("TMUX", None)
    return Attach([select, ["tmux", *flags, "attach-session", "-t", f"={run.session}"]], env)
