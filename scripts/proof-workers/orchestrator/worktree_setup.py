"""worktree_setup: copy the main checkout's ignored files into a new worktree, then run its set-up command."""
from __future__ import annotations

import errno
import filecmp
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from lib import runner
from lib.commandenv import command_env
from lib.errors import OrchestratorError, clip
from lib.gitrefs import locate
from lib.gitstatus import confined_to
from lib.statefile import NotRegular, fsync_dir, open_regular, read_small

DEFAULT_TIMEOUT_S = 600.0
TEMP_SUFFIX = ".setup"  # a copy's temp file: .NAME.XXXXXXXX.setup beside it
KEYS = ("copy", "run", "timeout")
MARKER = "orchestrator-setup.json"  # in the worktree's own git dir: gone with the worktree, so a new one sets up


@dataclass(frozen=True)
class WorktreeSetup:
    copy: tuple[str, ...] = ()  # paths relative to the main checkout, copied to the same place in the worktree
    run: str = ""  # a /bin/sh command run in the worktree after the copies ("" : none)
    timeout: float = DEFAULT_TIMEOUT_S


class SetupFailed(OrchestratorError):
    """A worktree's set-up failed: the issue fails with `setup failed: <last line>` (exit 1: a repo problem)."""

    exit_code = 1


def _path_problem(entry: Any) -> str | None:
    """Why a copy entry can never be a file inside the checkout (None when it can)."""
    if not isinstance(entry, str) or not entry.strip() or "\0" in entry:
        return f"must be a relative path, got {json.dumps(entry)[:60]}"
    path = PurePosixPath(entry)
    if path.is_absolute() or entry.startswith("~"):
        return f"must be relative to the main checkout, got the absolute path {entry!r}"
    if ".." in path.parts:
        return f"must stay inside the main checkout, got {entry!r} (a .. part)"
    if ".git" in path.parts or path == PurePosixPath("."):
        return f"must name a file of the checkout, not {entry!r}"
    return None


def _escapes(repo: Path, rel: str) -> str | None:
    """Where `repo/rel` really leads when a symlink takes it out of the checkout (None: it stays inside)."""
    real = os.path.realpath(repo / rel)
    root = os.path.realpath(repo)
    return None if os.path.commonpath([real, root]) == root else real


def parse(doc: Any, repo: Path, bad: Callable[[str, str], None], where: str) -> WorktreeSetup | None:
    """The `worktree_setup` object of a config (None when absent); each problem goes to `bad(field, what)`."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        bad(where, f"must be an object like {{\"copy\": [\".env\"], \"run\": \"npm ci\", \"timeout\": 600}}, "
                   f"got {json.dumps(doc)[:60]}")
        return None
    for key in sorted(set(doc) - set(KEYS)):
        bad(f"{where}.{key}", f"unknown key (known: {', '.join(KEYS)})")
    entries = doc.get("copy", [])
    copies: list[str] = []
    if not isinstance(entries, list):
        bad(f"{where}.copy", "must be a list of paths relative to the main checkout")
        entries = []
    for index, entry in enumerate(entries):
        problem = _path_problem(entry)
        outside = None if problem else _escapes(repo, entry)
        if problem or outside:
            bad(f"{where}.copy[{index}]", problem or f"{entry!r} is a symlink that leads out of the main checkout "
                                                     f"(to {clip(outside or '')})")
        else:
            copies.append(os.path.normpath(entry))
    command = doc.get("run", "")
    if not isinstance(command, str) or ("run" in doc and not command.strip()):
        bad(f"{where}.run", f"must be a non-empty shell command, got {json.dumps(command)[:60]}")
        command = ""
    timeout = doc.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        bad(f"{where}.timeout", f"must be a number of seconds > 0, got {json.dumps(timeout)[:60]}")
        timeout = DEFAULT_TIMEOUT_S
    return WorktreeSetup(tuple(copies), command, float(timeout))


def log_path(state_dir: Path, issue: int) -> Path:
    """The issue's set-up log (beside its tries' logs)."""
    return state_dir / "logs" / f"issue-{issue}" / "setup.log"


def marker_path(worktree: Path) -> Path | None:
    """Where the set-up of this very worktree is recorded: a file in its own git dir (None: no git dir there).
    A `.git` that is neither a file nor a directory (a FIFO an agent put there) is never opened: no wait
    (lib.gitrefs.locate, the one reader of `.git`)."""
    dirs = locate(worktree)
    return None if dirs is None else dirs[0] / MARKER


def state_path(signal: Path) -> Path:
    """Where a try's wrapper says how the set-up it runs stands: beside the try's exit code."""
    return signal.with_suffix(".setup")


def read_state(path: Path) -> dict[str, Any]:
    """A try's set-up state ({} when it runs none, or the file is half-written, garbled or not a regular file: the
    monitor reads it each cycle, and a FIFO an agent put there is never waited on)."""
    try:
        doc = json.loads(read_small(path) or b"")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) and isinstance(doc.get("state"), str) else {}


def done(worktree: Path) -> bool:
    marker = marker_path(worktree)
    return marker is not None and marker.is_file()


def _ignored(worktree: Path, rel: str) -> bool:
    """Whether git ignores `rel` in the worktree (a tracked file never is)."""
    from orchestrator.worktrees import SAFE_GIT, clean_env

    try:
        result = subprocess.run(["git", *SAFE_GIT, "check-ignore", "-q", "--", rel], cwd=worktree,
                                env=confined_to(worktree, clean_env()), stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SetupFailed(f"copy {rel}: git check-ignore failed: {err}") from None
    if result.returncode not in (0, 1):
        said = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SetupFailed(f"copy {rel}: git check-ignore failed: {clip(said[-1] if said else str(result.returncode))}")
    return result.returncode == 0


def _copy_one(repo: Path, worktree: Path, rel: str, log: Callable[[str], None]) -> None:
    """Copy one file into the worktree, never over a file the worktree has.

    Not statefile.write_bytes: the copy is streamed (a file of any size, never held whole), and it must never
    replace what it finds, even a file that appears while it streams, so the fsynced temp file is linked into
    place (EEXIST: the worktree's own is kept), not renamed over it (`_link_or_rename`); then the directory is fsynced
    (statefile.fsync_dir), so a crash never leaves an empty copy that a later set-up would keep as the worktree's.
    """
    source = repo / rel
    outside = _escapes(repo, rel)
    if outside:
        raise SetupFailed(f"copy {rel}: a symlink in the main checkout leads out of it (to {clip(outside)})")
    try:  # opened before it is judged (a FIFO put there never hangs the monitor); streamed, so not read_small
        fd = open_regular(source, os.O_RDONLY)
    except FileNotFoundError:
        raise SetupFailed(f"copy {rel}: not found in the main checkout {repo}") from None
    except NotRegular:
        raise SetupFailed(f"copy {rel}: not a regular file in the main checkout") from None
    except OSError as err:
        raise SetupFailed(f"copy {rel}: {err.strerror or err}") from None
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        target = worktree / rel
        # A tracked symlink on the way (config -> /elsewhere) must not carry the copy out of the worktree.
        parent = target.parent
        def check_parent() -> None:
            real = os.path.realpath(parent)
            if os.path.commonpath([real, os.path.realpath(worktree)]) != os.path.realpath(worktree):
                raise SetupFailed(f"copy {rel}: {parent} leads out of the worktree (to {clip(real)})")

        check_parent()  # before mkdir makes anything through a symlink, and after (a race)
        parent.mkdir(parents=True, exist_ok=True)
        check_parent()
        _remove_killed_copies(parent, target.name)
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise SetupFailed(f"copy {rel}: the worktree has a symlink or a directory there; not writing through it")
        if not _ignored(worktree, rel):
            raise SetupFailed(f"copy {rel}: git does not ignore it in the worktree, so the agent's commits could "
                              "take it (and push it): ignore it in .gitignore or drop it from copy")
        if target.is_file():
            _say_kept(source, target, rel, log)
            return
        fd_out, tmp = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(fd_out, "wb") as out:
                shutil.copyfileobj(src, out)
                os.fchmod(out.fileno(), stat.S_IMODE(info.st_mode))
                out.flush()
                os.fsync(out.fileno())
            try:
                _link_or_rename(tmp, target)
            except FileExistsError:  # the worktree got its own while the copy streamed
                if target.is_symlink() or not target.is_file():
                    raise SetupFailed(f"copy {rel}: the worktree has a symlink or a directory there; "
                                      "not writing through it") from None
                _say_kept(source, target, rel, log)
                return
            fsync_dir(parent)
        finally:
            Path(tmp).unlink(missing_ok=True)
    log(f"copy {rel}: copied ({info.st_size} bytes)")


def _remove_killed_copies(parent: Path, name: str) -> None:
    """Remove the temp copies of `name` a killed set-up left (mkstemp's `.NAME.XXXXXXXX.setup`): git does not
    ignore them, so an agent's commit could take a secret in one. The set-up runs again after a kill (no done
    mark yet), so this runs before the agent starts."""
    ours = re.compile(re.escape(f".{name}.") + r"[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))
    with os.scandir(parent) as entries:
        leftovers = [entry.path for entry in entries
                     if ours.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)]
    for path in leftovers:
        with suppress(FileNotFoundError):
            os.unlink(path)


def _link_or_rename(tmp: str, target: Path) -> None:
    """Put `tmp` at `target` unless something is there (FileExistsError): not statefile's os.replace, which would
    replace it. Any other refusal of the link (a file system without hard links says EPERM, ENOTSUP, ENOSYS,
    EACCES, ... as it likes) gets a rename after a last look: only a file landing between the two can then be
    replaced; an error the rename shares (a full or read-only disk) is then the rename's."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.rename(tmp, target)


def _say_kept(source: Path, target: Path, rel: str, log: Callable[[str], None]) -> None:
    same = filecmp.cmp(source, target, shallow=False)
    log(f"copy {rel}: " + ("already there" if same else "kept the worktree's own (it differs; not overwritten)"))


class _Tail:
    """The log the set-up command writes to, keeping the last bytes it wrote (its last line is the reason shown)."""

    def __init__(self, log: Any) -> None:
        self.log, self.wrote, self.last = log, 0, b""

    def write(self, data: bytes) -> None:
        self.log.write(data)
        self.wrote += len(data)
        self.last = (self.last + bytes(data))[-4096:]

    def flush(self) -> None:
        self.log.flush()


def _say(log: Any, line: str) -> None:
    """A line of ours in the set-up log; one that cannot be written (a full disk) costs the line, not the set-up."""
    with suppress(OSError, ValueError):
        log.write(f"=== {line}\n".encode("utf-8", "replace"))
        log.flush()


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _mark_done(worktree: Path, copies: list[str], command: str) -> None:
    marker = marker_path(worktree)
    if marker is not None:
        record = {"at": _stamp(datetime.now(timezone.utc)), "copy": copies, "run": command}
        with suppress(OSError):  # not recorded: the next worker that takes the issue sets it up again
            marker.write_text(json.dumps(record) + "\n", encoding="utf-8")


def copy_files(setup: WorktreeSetup, repo: Path, worktree: Path, log_file: Path) -> None:
    """The monitor's part (fast, local): copy the listed files, appending to `log_file`. Without a command the
    set-up is then done and recorded in the worktree's git dir; with one, the try's wrapper runs it
    (`run_command`) before its agent. Raises SetupFailed with the line to show."""
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_file, "a+b")
    except OSError as err:
        raise SetupFailed(f"cannot write its log {log_file}: {err.strerror or err}") from None
    with log:
        say = partial(_say, log)
        say(f"setup of {worktree} at {_stamp(datetime.now(timezone.utc))}")
        try:
            for rel in setup.copy:
                _copy_one(repo, worktree, rel, say)
        except OSError as err:
            failed = SetupFailed(f"copy: {err.strerror or err}")
            say(str(failed))
            raise failed from None
        except SetupFailed as err:
            say(str(err))
            raise
        if not setup.run:
            _mark_done(worktree, list(setup.copy), "")
            say("setup done")


def try_spec(setup: WorktreeSetup, repo: Path, worktree: Path, log_file: Path, env: dict[str, str]) -> dict[str, Any]:
    """The `setup` block of a try spec: what the wrapper needs to run the command before the agent."""
    return {"run": setup.run, "timeout": setup.timeout, "copy": list(setup.copy), "main_checkout": str(repo),
            "worktree": str(worktree), "log": str(log_file), "env": env}


def command_env_for(repo: Path, worktree: Path, env: dict[str, str]) -> dict[str, str]:
    """The set-up command's environment: ours scrubbed of any repo's git variables, confined to the worktree."""
    from orchestrator.worktrees import REPO_ENV

    step_env = {k: v for k, v in command_env().items() if k not in REPO_ENV}
    return confined_to(worktree, {**step_env, **env, "ORCHESTRATOR_MAIN_CHECKOUT": str(repo),
                                  "ORCHESTRATOR_WORKTREE": str(worktree)})


def run_command(command: str, timeout: float, repo: Path, worktree: Path, log: Any, env: dict[str, str],
                copies: list[str] | None = None, echo: Any = None) -> float:
    """Run the set-up command in the worktree (its own process group, killed with its leftovers at the timeout),
    its output to `log` (anything with write/flush: the wrapper's capped log) and `echo` (the pane). Records
    success in the worktree's git dir. Returns the seconds it took; raises SetupFailed with the line to show."""
    _say(log, f"run: {command} (timeout {timeout:g}s) at {_stamp(datetime.now(timezone.utc))}")
    out = _Tail(log)
    try:
        result = runner.run_in_group(command, worktree, out, timeout, env=command_env_for(repo, worktree, env),
                                     echo=echo)
    except OSError as err:
        raise SetupFailed(f"cannot run {clip(command)}: {err.strerror or err}") from None
    if out.wrote and not out.last.endswith(b"\n"):
        with suppress(OSError, ValueError):
            log.write(b"\n")
    lines = [line for line in out.last.decode("utf-8", "replace").splitlines() if line.strip()]
    last = lines[-1].strip() if out.wrote and lines else ""
    if result.log_error:  # stopped by the runner: the log (a full disk) could not take its output
        reason = f"cannot write its log: {clip(result.log_error, 200)} (the command was stopped)"
    elif result.timed_out:
        reason = f"{clip(command)} timed out after {timeout:g}s" + (f" ({clip(last, 200)})" if last else "")
    elif result.exit_code != 0:
        reason = clip(last, 300) if last else f"{clip(command)} exited {result.exit_code}"
    else:
        reason = ""
    _say(log, f"exit {result.exit_code if not result.timed_out else 'timeout'} after {result.duration_s:.1f}s"
         + (f"; killed what it left: {', '.join(result.escaped)}" if result.escaped else ""))
    if reason:
        _say(log, f"setup failed: {reason}")
        raise SetupFailed(reason)
    _mark_done(worktree, list(copies or ()), command)
    _say(log, "setup done")
    return result.duration_s
