"""`inv sync-all --host NAME`: lib.sync itself runs on the build host, so its safety rules are the same code.

Over 500 lines, one job: each way a run there can end (stop, silent or lost link, damaged copy) is recovered.

lib/'s top-level modules (this package stays here; the sync path among them
is standard library only) are read once, and exactly those bytes are uploaded
(SFTP) into a private per-user cache on the host, named by a hash of their
manifest (file name -> sha256); before each run the copy there is checked
against that manifest and replaced when it differs. A generated home
(`<workspace>/.orchestrator/`: config/repos.json, state/ with the
one-sync-per-workspace lock, logs/) sits in the host's workspace, so two
machines syncing the same host workspace exclude each other. A tiny driver
calls `lib.sync.run_sync` there in its own process group
(connection.run_remote) and prints each repo's outcome as it finishes, then
the whole result; a driver stopped from here leaves its result in a file for
us, and writes one as soon as every repo has synced, before its closing scan
(a driver killed in that scan before it can answer a stop loses nothing). The
logs are copied back.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from time import monotonic
from typing import Any, Callable, Iterator, Sequence

from lib import runner
from lib.config import Repo, Workspace
from lib.errors import OrchestratorError, clip
from lib.paths import Paths
from lib.progress import Progress
from lib.remote import connection as remote
from lib.remote.hosts import LOCAL, Host
from lib.results import record
from lib.signals import signal_name
from lib.sync import NET_TIMEOUT_S, SyncOutcome, SyncReport, SyncStatus, _log_name, _open_log, _summary, run_sync

LIB_DIR = Path(__file__).resolve().parent.parent  # lib/: its modules, not this package, go to the host
HOST_HOME = ".orchestrator"  # under the host's workspace
MIN_PYTHON = (3, 11)
# Stopped, the driver stops its gits (runner.GRACE_S at most) and reports what it finished before it is killed.
DRIVER_GRACE_S = 3 * runner.GRACE_S
SFTP_TIMEOUT_S = 60.0  # a host that stops answering must not hang the run (or its Ctrl-C) forever
PYTHON_CHECK_S = 30.0  # for python3 to print its version once the login shell ran it (a cold start on a busy host)
MAX_LINE = 64 * 1024 * 1024  # longer "lines" from the host are not kept in memory
MAX_REPORT = 64 * 1024 * 1024
RUN_VAR = "ORCHESTRATOR_SYNC_RUN"
PROGRESS_LINE = re.compile(rb"\[\d+/\d+\] ")  # lib.progress's line for a finished repo, printed there too
# Run by python3 -I -B on the host with one JSON argument (see _driver_args). It checks the cached lib/
# against the manifest before importing anything from it (so it reads those files itself, not through
# lib.statefile), then runs lib.sync.run_sync; each line it prints for us starts with a mark made for
# this run, so nothing else on the host can pass for one.
DRIVER = """import hashlib, json, os, signal, stat, sys
args = json.loads(sys.argv[1])
os.environ[args["run_var"]] = args["mark"]  # every git it starts carries it: see _sweep


def say(kind, data):
    sys.stdout.write(args["mark"] + " " + kind + " " + json.dumps(data) + "\\n")
    sys.stdout.flush()


def damage(lib, manifest):
    try:
        names = set(os.listdir(lib))
    except OSError as err:
        return [lib + ": " + (err.strerror or str(err))]
    found = [name + " missing" for name in sorted(set(manifest) - names)]
    found += [name + " is not ours" for name in sorted(names - set(manifest))]
    for name in sorted(names & set(manifest)):
        try:
            fd = os.open(os.path.join(lib, name), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            with open(fd, "rb") as file:
                data = file.read() if stat.S_ISREG(os.fstat(fd).st_mode) else None
        except OSError as err:
            found.append(name + " unreadable: " + (err.strerror or str(err)))
            continue
        if data is None:
            found.append(name + " is not a file")
        elif hashlib.sha256(data).hexdigest() != manifest[name]:
            found.append(name + " differs (" + str(len(data)) + " bytes)")
    return found


problems = damage(os.path.join(args["root"], "lib"), args["manifest"])
if problems:
    say("damaged", problems)
    sys.exit(0)
sys.path.insert(0, args["root"])
from pathlib import Path
from lib.config import load_workspace
from lib.errors import OrchestratorError
from lib.paths import Paths
from lib.runner import RunInterrupted
from lib.scan import ScanStopped
from lib.signals import STOP_SIGNALS
from lib.statefile import write_text
from lib.sync import run_sync
paths = Paths(Path(args["home"]), Path(args["home"]) / "logs")
done = []


def finished(outcome):
    done.append(outcome)
    say("outcome", outcome.to_json())


def leave(result):
    try:
        write_text(Path(args["report"]), json.dumps(result))
    except OSError:
        pass


def before_scan(outcomes):  # in the file before the scan starts: a driver killed in it (no time to say) loses none
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # a stop now waits until the file is there
    try:
        leave({"outcomes": [o.to_json() for o in outcomes], "scanning": True})
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


try:
    report = run_sync(paths, load_workspace(paths.repos_file), None, args["net_jobs"], args["timeout"],
                      args["clone_missing"], args["dry_run"], finished, before_scan)
    result = {"outcomes": [o.to_json() for o in report.outcomes]}
except OrchestratorError as err:
    result = {"error": str(err)}
except RunInterrupted as stop:
    result = {"outcomes": [o.to_json() for o in stop.results], "signal": stop.signum, "stopped": stop.stopped}
except ScanStopped as stop:  # every repo was synced and recorded; the closing scan was stopped
    result = {"outcomes": [o.to_json() for o in done], "signal": stop.signum, "stopped": 0, "scan_stopped": True}
for signum in STOP_SIGNALS:
    signal.signal(signum, signal.SIG_IGN)  # stopped or not, what was done is reported
if "signal" in result:  # whoever stopped us may no longer read our output: the result waits in a file too
    leave(result)  # replaces the one written before the scan
else:  # ended on its own: the result below is the whole word, and the file before the scan goes
    try:
        os.unlink(args["report"])
    except OSError:
        pass
say("result", result)
"""
PYTHON_VERSION = "python3 -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])'"


@dataclass
class HostSyncOutcome(SyncOutcome):
    host: str = ""  # the build host that ran it


class _HostFailed(Exception):
    """The sync on the host could not run (or end) as it should: every repo it did not report fails with this."""


@dataclass(frozen=True)
class LibSnapshot:
    """lib/'s files as read once: what is hashed is exactly what is uploaded."""

    files: dict[str, bytes]

    @classmethod
    def read(cls, directory: Path = LIB_DIR) -> LibSnapshot:
        return cls({path.name: path.read_bytes() for path in sorted(directory.glob("*.py"))})

    @property
    def manifest(self) -> dict[str, str]:
        """name -> sha256 of its bytes: the host's copy is checked against this before each run."""
        return {name: hashlib.sha256(data).hexdigest() for name, data in self.files.items()}

    @property
    def key(self) -> str:
        """Names the copy on the host: one per content of lib/."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class _HostRun:
    """What one host sync has done so far, kept where a stop (in another thread) can read it."""

    reported: dict[str, Any] = field(default_factory=dict)  # repo -> its outcome, as the host printed it
    outcomes: list[HostSyncOutcome] = field(default_factory=list)  # the outcomes to record
    stopped_there: int | None = None  # the host's own count of the commands a stop ended
    unanswered: str | None = None  # set once the host stops answering: nothing more is asked of it
    notes: list[str] = field(default_factory=list)


def _sh(connection: Any, *words: str, timeout: float = 60.0) -> str:
    """A short command on the host (every word quoted); its stdout, or _HostFailed with its stderr."""
    code, out, err = remote.capture(connection, " ".join(shlex.quote(w) for w in words), timeout)
    if code != 0:
        problem = err.decode("utf-8", "replace").strip() or ("timed out" if code is None else f"exit {code}")
        raise _HostFailed(f"{words[-1] if words[0] == '/bin/sh' else words[0]} on the host: {clip(problem)}")
    return out.decode("utf-8", "replace")


def python_problem(found: str, host_name: str) -> str | None:
    """Why the host's python3 (its version as printed, "" when none ran) cannot run lib.sync, or None."""
    try:
        version = tuple(int(n) for n in found.split("."))
    except ValueError:
        version = ()
    if version >= MIN_PYTHON:
        return None
    return f"python3 >= {'.'.join(map(str, MIN_PYTHON))} needed on host {host_name} (found {clip(found) or 'none'})"


def _check_python(connection: Any, host: Host) -> None:
    """The first command of a sync: a hung login shell or a silent link is remote.HostStalled, as for build."""
    code, out, _ = remote.probe(connection, host, PYTHON_VERSION, "python3's version", PYTHON_CHECK_S)
    found = (out.decode("utf-8", "replace").strip().splitlines() or [""])[-1] if code == 0 else ""
    problem = python_problem(found, host.name)
    if problem:
        raise _HostFailed(problem)


def _cache_dir(connection: Any) -> str:
    """The host's private cache directory (made if missing)."""
    # The session's $HOME (SFTP starts in the passwd home, which may differ); private: umask 077, the cache 0700.
    made = _sh(connection, "/bin/sh", "-c", 'umask 077 && c="${XDG_CACHE_HOME:-$HOME/.cache}/orchestrator" && '
               'mkdir -p -- "$c" && chmod 700 -- "$c" && printf "%s\\n" "$c"', "cache")
    cache = (made.strip().splitlines() or [""])[-1]
    if not cache.startswith("/"):
        raise _HostFailed(f"cannot find a cache directory on the host ($HOME is {clip(cache) or 'not set'})")
    return cache


def _install_lib(connection: Any, lib: LibSnapshot, cache: str, final: str, replace: bool) -> None:
    """lib/ into `final` on the host: uploaded whole into a temporary directory, then renamed into place.

    With `replace`, the copy at `final` (found damaged) is moved aside first. Another run's rename may
    win the race: its copy is then used, and checked like any other before the sync imports it.
    """
    sftp = _sftp(connection)
    token = uuid.uuid4().hex
    temporary, aside = f"{cache}/.tmp-{token}", f"{cache}/.damaged-{token}"
    try:
        sftp.mkdir(temporary, 0o700)
        sftp.mkdir(f"{temporary}/lib", 0o700)
        for name, data in lib.files.items():
            sftp.putfo(io.BytesIO(data), f"{temporary}/lib/{name}", file_size=len(data), confirm=True)
        if replace:
            try:
                sftp.posix_rename(final, aside)
            except OSError:
                pass  # gone already (another run moved it): ours takes its place
        try:
            sftp.posix_rename(temporary, final)
        except OSError:
            if not _exists(sftp, final):
                raise
    except (OSError, EOFError) as err:
        why = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise _HostFailed(f"cannot store lib/ in {final} on the host: {clip(why)}") from None
    finally:
        try:
            _sh(connection, "rm", "-rf", "--", temporary, aside)
        except Exception:  # left-overs in our own cache; the error that matters is the one above
            pass


def _sftp(connection: Any) -> Any:
    from paramiko import SSHException

    try:
        sftp = connection.sftp()
    except SSHException as err:
        raise _HostFailed(f"cannot open SFTP on the host (sshd needs its sftp subsystem): {err}") from None
    sftp.get_channel().settimeout(SFTP_TIMEOUT_S)
    return sftp


def _exists(sftp: Any, path: str) -> bool:
    try:
        sftp.stat(path)
    except OSError:
        return False
    return True


def host_repos_json(repos: Sequence[Repo], workspace: str) -> dict[str, Any]:
    """repos.json for the host: each repo at <workspace>/<name> there, with its remote and default branch."""
    return {"repositories": [{"name": r.name, "local": f"{workspace.rstrip('/')}/{r.name}",
                              "default_branch": r.default_branch, "remote": r.remote} for r in repos]}


def _prepare_home(connection: Any, workspace: str, repos: Sequence[Repo]) -> str:
    home = f"{workspace.rstrip('/')}/{HOST_HOME}"
    _sh(connection, "/bin/sh", "-c", 'umask 077 && mkdir -p -- "$1/config" "$1/state" "$1/logs"', "mkdir", home)
    # Written whole, then renamed: a run already going keeps reading a complete file.
    temporary = f"{home}/config/.repos.json.{uuid.uuid4().hex}"
    data = json.dumps(host_repos_json(repos, workspace), indent=2).encode()
    connection.put(io.BytesIO(data), temporary)
    _sftp(connection).posix_rename(temporary, f"{home}/config/repos.json")
    return home


@dataclass(frozen=True)
class _Settings:
    """What the sync on the host is asked to do."""

    net_jobs: int
    timeout: float | None
    clone_missing: bool
    dry_run: bool


class _HostOutput:
    """The driver's output as it arrives (remote.run_remote writes it here): our lines parsed, a short tail kept."""

    def __init__(self, on_outcome: Callable[[Any], None]) -> None:
        self.mark = f"orchestrator-sync-{uuid.uuid4().hex}"
        self.on_outcome = on_outcome
        self.pending = bytearray()
        self.tail: deque[str] = deque(maxlen=3)
        self.result: dict[str, Any] | None = None
        self.damaged: list[str] | None = None

    def write(self, data: bytes) -> int:
        self.pending += data
        if b"\n" in data:
            *lines, rest = bytes(self.pending).split(b"\n")
            self.pending = bytearray(rest)
            for line in lines:
                self._line(line)
        if len(self.pending) > MAX_LINE:
            self.pending.clear()
        return len(data)

    def flush(self) -> None:
        pass

    def _line(self, line: bytes) -> None:
        mark = f"{self.mark} ".encode()
        if not line.startswith(mark):
            if line.strip() and not PROGRESS_LINE.match(line):  # the tail is for what went wrong
                self.tail.append(clip(line.decode("utf-8", "replace").strip()))
            return
        kind, _, text = line[len(mark):].partition(b" ")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return  # a line cut short by a stop: the host's report says what it finished
        if kind == b"outcome":
            self.on_outcome(value)
        elif kind == b"result" and isinstance(value, dict):
            self.result = value
        elif kind == b"damaged" and isinstance(value, list):
            self.damaged = [str(v) for v in value]


def _run_driver(connection: Any, host: Host, lib: LibSnapshot, lib_root: str, home: str, report_file: str,
                settings: _Settings, output: _HostOutput) -> remote.RemoteResult:
    """The driver on the host; a connection that goes silent or is lost is given up and the driver killed
    over a new one (RemoteResult.lost, .problem)."""
    args = {"root": lib_root, "manifest": lib.manifest, "home": home, "mark": output.mark, "run_var": RUN_VAR,
            "report": report_file, "net_jobs": settings.net_jobs, "timeout": settings.timeout,
            "clone_missing": settings.clone_missing, "dry_run": settings.dry_run}
    # exec: the driver is the command setsid waits for, so a signal that kills it is told by name (a shell
    # between them would say `Killed` and exit 137, as if it had exited).
    script = "exec " + shlex.join(["python3", "-I", "-B", "-c", DRIVER, json.dumps(args)])
    return remote.run_remote(connection, home, script, {}, output, None, grace=DRIVER_GRACE_S, host=host)


def _driver_end(result: remote.RemoteResult, output: _HostOutput, home: str) -> str:
    """How a driver that gave no result ended, as a run here says it: never started (its `home` could not be
    entered); `killed by SIGKILL` (setsid itself killed: `killed by a signal`), then its last lines of output;
    one that exited: those lines, else `exit N`. Clipped as a whole, the home alone when it is named. (A lost
    or silent connection never gets here, _given_up says it; nor a timeout: the driver runs with none.)"""
    if result.no_directory:
        return (f"its home {clip(home)} on the host could not be entered (removed, or no longer ours, since it was "
                "prepared); nothing of the sync ran there")
    if result.killed_by is None and result.exit_code is not None:
        return clip("; ".join(output.tail) or f"exit {result.exit_code}")
    return clip("; ".join([f"killed by {result.killed_by or 'a signal'}", *output.tail]))


def _sweep(connection: Any, mark: str, within: float = 30.0) -> None:
    """Kill what a dead driver left running on the host: its gits run in sessions of their own, and are found
    by the run's mark in their environment (best effort: the host may be gone too)."""
    remote.kill_remote_group(connection, None, 0, mark, within, variable=RUN_VAR)


def _take_report(connection: Any, report_file: str, run: _HostRun) -> dict[str, Any] | None:
    """The report a stopped driver left in its file (then removed), or None."""
    try:
        sftp = _sftp(connection)
        with sftp.open(report_file, "rb") as report:
            data = report.read(MAX_REPORT)
        sftp.remove(report_file)
        found = json.loads(data)
    except Exception as err:  # no file (killed before it wrote one), a lost connection, a cut file: nothing to go by
        if remote.link_error(err, connection):  # the host stopped answering: nothing more is asked of it
            run.unanswered = f"the host stopped answering ({type(err).__name__}: {clip(str(err))})"
        return None
    return found if isinstance(found, dict) and isinstance(found.get("outcomes"), list) else None


def _copy_log(connection: Any, remote_log: Any, local: Path, run: _HostRun) -> str | None:
    """The host's log copied to `local` (never through a symlink); the problem, if it could not be."""
    try:
        if run.unanswered:
            raise ValueError(run.unanswered)  # after a stop, one wait for a silent host is enough
        if not isinstance(remote_log, str):
            raise ValueError("the host named no log")
        local.parent.mkdir(parents=True, exist_ok=True)
        with _open_log(local) as out:
            connection.get(remote_log, local=out)
    except Exception as err:  # a missing file, a lost connection (paramiko's own errors too)
        why = getattr(err, "strerror", None) or str(err) or type(err).__name__
        if remote.link_error(err, connection):  # the host stopped answering: nothing more is asked of it
            run.unanswered = f"the host stopped answering ({type(err).__name__}: {clip(why)})"
        return f"log {local} not copied from the host: {clip(why)}"
    return None


def _text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else str(value)


def _outcome(data: Any, selected: dict[str, Repo], host: Host, log_dir: Path,
             dry_run: bool) -> HostSyncOutcome | None:
    """An outcome as the host reported it, its log under the usual local name; None for anything else."""
    if not isinstance(data, dict) or not isinstance(data.get("repo"), str) or data["repo"] not in selected \
            or not isinstance(data.get("status"), str):
        return None
    known = {f.name for f in fields(SyncOutcome)} - {"repo", "status", "log", "duration_s"}
    duration = data.get("duration_s")
    try:
        return HostSyncOutcome(data["repo"], data["status"], **{k: _text(data.get(k)) for k in known},
                               log=str(log_dir / _log_name(selected[data["repo"]], dry_run)),
                               duration_s=duration if isinstance(duration, (int, float)) else 0.0, host=host.name)
    except ValueError:  # a status outside sync.SyncStatus: not one our own lib/ there can have said
        return None


def _with_logs(connection: Any, entries: Sequence[Any], selected: dict[str, Repo], host: Host, log_dir: Path,
               dry_run: bool, run: _HostRun) -> list[HostSyncOutcome]:
    """The host's outcomes (one per selected repo), each with its log copied back here."""
    outcomes: dict[str, HostSyncOutcome] = {}
    for data in entries:
        outcome = _outcome(data, selected, host, log_dir, dry_run)
        if outcome is None:
            continue
        problem = _copy_log(connection, data.get("log"), Path(outcome.log), run)
        if problem:
            outcome.reason = f"{outcome.reason}; {problem}" if outcome.reason else problem
        outcomes[outcome.repo] = outcome
    return list(outcomes.values())


def _in_order(outcomes: list[HostSyncOutcome], repos: Sequence[Repo]) -> list[HostSyncOutcome]:
    order = {r.name: i for i, r in enumerate(repos)}
    return sorted(outcomes, key=lambda o: order[o.repo])


def _unless_stopping() -> None:
    """Between steps: runner.Stopping once the run is being stopped (Ctrl-C here), so nothing more starts."""
    if runner.stopping():
        raise runner.Stopping("the run is being stopped")


def _sync_on(connection: Any, host: Host, repos: Sequence[Repo], log_dir: Path, settings: _Settings,
             run: _HostRun, show: Callable[[HostSyncOutcome], None]) -> list[HostSyncOutcome]:
    _check_python(connection, host)
    workspace = remote.resolve_workspace(connection, host)
    lib = LibSnapshot.read()
    _unless_stopping()
    cache = _cache_dir(connection)
    lib_root = f"{cache}/lib-{lib.key}"
    if not _exists(_sftp(connection), lib_root):
        _unless_stopping()
        _install_lib(connection, lib, cache, lib_root, replace=False)
    _unless_stopping()
    home = _prepare_home(connection, workspace, repos)
    selected = {r.name: r for r in repos}
    report_file = f"{home}/state/.host-sync-{uuid.uuid4().hex}.json"

    def reported(data: Any, final: bool = False) -> None:
        """An outcome the host printed as its repo finished (shown now), or one of its result (the last word)."""
        outcome = _outcome(data, selected, host, log_dir, settings.dry_run)
        if outcome is not None and (final or outcome.repo not in run.reported):
            run.reported[outcome.repo] = data
            show(outcome)

    def logs_over(over: Any) -> Callable[[Sequence[Any]], list[HostSyncOutcome]]:
        return lambda entries: _in_order(_with_logs(over, entries, selected, host, log_dir, settings.dry_run, run),
                                         repos)

    with_logs = logs_over(connection)
    for replaced in (False, True):
        output = _HostOutput(reported)
        try:
            result = _run_driver(connection, host, lib, lib_root, home, report_file, settings, output)
        except runner.Stopping:  # stopped here: what the driver finished is kept before the stop goes on
            with _live(connection, host, run) as live:
                if live is None and output.result is None:
                    run.notes.append(f"on host {host.name}: {run.unanswered}; what the sync there finished could "
                                     "not be checked, and the sync there may still run")
                report = (None if live is None else _take_report(live, report_file, run)) or output.result
                if report is None and live is not None and not run.unanswered:
                    _sweep(live, output.mark)  # killed before it had stopped its gits, maybe
                _keep_what_was_done(run, host, report, logs_over(live))
            raise
        if result.lost is not None:  # never asked anything again: a new connection sweeps and ends it
            return _given_up(connection, host, result, output.mark, report_file, run, repos, log_dir,
                             settings.dry_run, reported, selected)
        if output.damaged is None:
            break
        if replaced:
            raise _HostFailed(f"the lib cache {lib_root} on the host still differs from this checkout after "
                              f"replacing it: {clip(', '.join(output.damaged))}")
        _install_lib(connection, lib, cache, lib_root, replace=True)
    if output.result is None:  # it died (killed, out of memory): what it started must not outlive it
        _sweep(connection, output.mark)
        _scan_was_under_way(run, host, _take_report(connection, report_file, run), "did not finish", reported)
        problem = clip(result.problem) if result.problem else _driver_end(result, output, home)
        return _reported_then_failed(run, repos, host, f"sync on host {host.name} gave no result: {problem}",
                                     log_dir, settings.dry_run, with_logs)
    if "error" in output.result:  # the host's own refusal (its sync lock held, say): a usage-level error, as locally
        lines = str(output.result["error"]).splitlines() or ["unknown error"]
        raise OrchestratorError("\n".join(f"on host {host.name}: {clip(line, 1000)}" for line in lines))
    outcomes = output.result.get("outcomes")
    for data in outcomes if isinstance(outcomes, list) else []:
        reported(data, final=True)
    if "signal" in output.result:  # stopped on the host, not from here: its report file is not needed
        _take_report(connection, report_file, run)
        signum = output.result["signal"]
        how = signal_name(signum) if isinstance(signum, int) else clip(str(signum))
        reason = f"the sync on host {host.name} was stopped there ({how}) before this repo finished"
        if result.exit_code is None:  # no exit status: setsid, which waited for it, was killed; we ended the rest
            reason = (f"setsid, which ran the sync on host {host.name}, was killed by a signal; the sync was then "
                      f"stopped ({how}) before this repo finished")
    else:
        reason = f"no outcome from the sync on host {host.name}"
    return _reported_then_failed(run, repos, host, reason, log_dir, settings.dry_run, with_logs)


@contextmanager
def _live(connection: Any, host: Host, run: _HostRun) -> Iterator[Any]:
    """`connection` while it can be used; once given up (silent, lost), a new one for as long as the block
    runs, never the old one again; None, with `run.unanswered` saying why, when no new one can be had."""
    if remote.usable(connection):
        yield connection
        return
    try:
        fresh = remote.connect(host)
    except remote.HostUnreachable as err:
        run.unanswered = run.unanswered or f"no new connection to the host: {clip(str(err))}"
        yield None
        return
    try:
        yield fresh
    finally:
        fresh.close()


def _given_up(connection: Any, host: Host, result: remote.RemoteResult, mark: str, report_file: str,
              run: _HostRun, repos: Sequence[Repo], log_dir: Path, dry_run: bool, reported: Callable[..., None],
              selected: dict[str, Repo]) -> list[HostSyncOutcome]:
    """The driver's connection went silent or was lost, and is never used again; run_remote killed the driver
    over a new connection (or says why it could not). Over another new one, what the driver started outside
    its group is swept and the report a stopped driver leaves is taken: what the host finished is recorded
    with its log, the rest failed; when no new one can be had, the reason says why."""
    done = ("the sync was killed on the host over a new connection" if result.problem is None else
            f"could not kill the sync on the host, it may still run ({clip(result.problem)})")
    reason = f"connection to host {host.name} {result.lost}; {done}"
    remote.give_up(connection, reason)  # whatever run_remote made of it, it is never asked anything again
    with _live(connection, host, run) as fresh:
        if fresh is None:  # the host is gone too: what it had reported is all there is
            return _reported_then_failed(run, repos, host, f"{reason}; {run.unanswered}", log_dir, dry_run, None)
        _sweep(fresh, mark, remote.answer_within(host))
        report = _take_report(fresh, report_file, run)
        outcomes = report.get("outcomes") if report is not None else None
        for data in outcomes if isinstance(outcomes, list) else []:
            reported(data, final=True)
        _scan_was_under_way(run, host, report, "did not finish", None)

        def with_logs(entries: Sequence[Any]) -> list[HostSyncOutcome]:
            return _in_order(_with_logs(fresh, entries, selected, host, log_dir, dry_run, run), repos)

        return _reported_then_failed(run, repos, host, reason, log_dir, dry_run, with_logs)


def _keep_what_was_done(run: _HostRun, host: Host, report: dict[str, Any] | None,
                        with_logs: Callable[[Sequence[Any]], list[HostSyncOutcome]]) -> None:
    """After a stop here, `run` gets what the driver finished and how many commands the stop ended there.

    `report` is the driver's whole word: the file a stopped driver leaves, or the result it had already
    printed (it was done when the stop came). Without one, what it had reported is kept.
    """
    if report is not None and isinstance(report.get("outcomes"), list):
        # The file written before the closing scan counts nothing: the driver was killed in it (counted here).
        stopped = report.get("stopped", None if report.get("scanning") else 0)
        run.stopped_there = stopped if type(stopped) is int and stopped >= 0 else None
        if report.get("scan_stopped"):
            run.notes.append(f"on host {host.name} every repo had synced; its closing scan was stopped")
        _scan_was_under_way(run, host, report, "was stopped", None)
        run.outcomes = with_logs(report["outcomes"])
    elif remote.stopped_count():  # it was running, and was killed before it wrote a report
        run.notes.append(f"the sync on host {host.name} ended before it said what it had finished; "
                         f"recorded the {len(run.reported)} repo(s) it had reported")
        run.outcomes = with_logs(list(run.reported.values()))


def _scan_was_under_way(run: _HostRun, host: Host, report: dict[str, Any] | None, how: str,
                        reported: Callable[..., None] | None) -> None:
    """A report the driver left before its closing scan (it never wrote a later one): every repo had synced,
    said in `run.notes`; with `reported`, its outcomes are the host's last word on each repo."""
    if report is None or not report.get("scanning") or report.get("scan_stopped"):
        return
    run.notes.append(f"on host {host.name} every repo had synced; its closing scan {how}")
    for data in report["outcomes"] if reported is not None else []:
        reported(data, final=True)


def _reported_then_failed(run: _HostRun, repos: Sequence[Repo], host: Host, reason: str, log_dir: Path,
                          dry_run: bool, with_logs: Callable[[Sequence[Any]], list[HostSyncOutcome]] | None
                          ) -> list[HostSyncOutcome]:
    """What the host reported (logs copied when `with_logs` can), every other repo failed with `reason`."""
    if with_logs is not None:
        outcomes = with_logs(list(run.reported.values()))
    else:  # the connection cannot be trusted: the local log says so, never shows an earlier run's
        outcomes = [o for o in (_outcome(d, {r.name: r for r in repos}, host, log_dir, dry_run)
                                for d in run.reported.values()) if o is not None]
        for outcome in outcomes:
            problem = f"log {outcome.log} not copied from the host: {reason}"
            _write_local_log(Path(outcome.log), host, outcome.repo, f"outcome as the host reported it: "
                             f"{outcome.line()}\n{problem}")
            outcome.reason = f"{outcome.reason}; {problem}" if outcome.reason else problem
    said = {o.repo for o in outcomes}
    outcomes += _all_failed([r for r in repos if r.name not in said], host, reason, log_dir, dry_run)
    return _in_order(outcomes, repos)


def _write_local_log(local: Path, host: Host, repo: str, text: str) -> None:
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
        with _open_log(local) as log:
            log.write(f"# orchestrator sync {repo} on host {host.name} ({host.address})\n{text}\n".encode())
    except OSError:
        pass  # the reason is in the outcome either way


def _all_failed(repos: Sequence[Repo], host: Host, reason: str, log_dir: Path, dry_run: bool) -> list[HostSyncOutcome]:
    outcomes = []
    for repo in repos:
        local = log_dir / _log_name(repo, dry_run)
        _write_local_log(local, host, repo.name, f"error: {reason}")
        outcomes.append(HostSyncOutcome(repo.name, SyncStatus.FAILED, reason, repo.default_branch, None, None,
                                        str(local), host=host.name))
    return outcomes


def sync_host(paths: Paths, workspace: Workspace, host: Host, tags: list[str] | None = None, net_jobs: int = 4,
              timeout: float | None = NET_TIMEOUT_S, clone_missing: bool = False, dry_run: bool = False,
              accept_new_host_key: bool = False) -> SyncReport:
    """Sync the selected repos in the host's workspace; each outcome shown as the host reports it, and
    recorded in the local state with `host` (on a stop too: what the host had finished)."""
    from paramiko import SSHException

    started = monotonic()
    repos = workspace.select(tags=tags)
    known = {r.name for r in workspace.repos}
    settings = _Settings(net_jobs, timeout, clone_missing, dry_run)
    run = _HostRun()
    shown: set[str] = set()
    with remote.one_run(), Progress("syncing", len(repos)) as progress:

        def show(outcome: HostSyncOutcome) -> None:
            if outcome.repo not in shown:
                shown.add(outcome.repo)
                progress.finish(outcome.repo, outcome.line(), outcome.failing)

        def work(connection: Any) -> list[HostSyncOutcome]:
            if isinstance(connection, remote.HostUnreachable):
                run.outcomes = _all_failed(repos, host, f"host unreachable: {connection}", paths.log_dir, dry_run)
                return run.outcomes
            try:
                run.outcomes = _sync_on(connection, host, repos, paths.log_dir, settings, run, show)
            except (_HostFailed, remote.HostUnreachable) as err:
                run.outcomes = _reported_then_failed(run, repos, host, str(err), paths.log_dir, dry_run, None)
            except (OSError, EOFError, ValueError, TypeError, KeyError, SSHException) as err:  # SFTP, a lost connection
                reason = f"sync on host {host.name} failed: {type(err).__name__}: {clip(str(err))}"
                run.outcomes = _reported_then_failed(run, repos, host, reason, paths.log_dir, dry_run, None)
            return run.outcomes

        # run_each: Ctrl-C/SIGTERM stop run_remote, which stops the driver there; what it finished is kept.
        try:
            runner.run_each([host], lambda h: remote.run_on_host(h, work, accept_new_host_key), 1)
        except runner.RunInterrupted as stop:
            for outcome in run.outcomes:
                show(outcome)
            if not dry_run and run.outcomes:
                record(paths.sync_results_file, run.outcomes, known, _summary)
            there = run.stopped_there if run.stopped_there is not None else remote.stopped_count()
            interrupted = runner.RunInterrupted(stop.signum, list(run.outcomes), stop.stopped + there)
            interrupted.notes = [*stop.notes, *run.notes]
            raise interrupted from None
        for outcome in run.outcomes:
            show(outcome)
    outcomes = list(run.outcomes)
    if dry_run:
        return SyncReport(outcomes, monotonic() - started, None, list(run.notes))
    record(paths.sync_results_file, outcomes, known, _summary)
    return SyncReport(outcomes, monotonic() - started, paths.sync_results_file, list(run.notes))


def sync_on_host(paths: Paths, host_name: str, tags: list[str] | None = None, net_jobs: int = 4,
                 timeout: float | None = NET_TIMEOUT_S, clone_missing: bool = False, dry_run: bool = False,
                 accept_new_host_key: bool = False) -> SyncReport:
    """The front doors' entry: config/repos.json and config/hosts.toml loaded, then sync_host.

    `local` is this machine, as for build and test: the local sync.
    """
    from lib.config import load_workspace
    from lib.remote.fleet import Fleet

    workspace = load_workspace(paths.repos_file)
    if host_name == LOCAL:
        return run_sync(paths, workspace, tags, net_jobs, timeout, clone_missing, dry_run)
    return sync_host(paths, workspace, Fleet.load(paths).get(host_name), tags, net_jobs, timeout, clone_missing,
                     dry_run, accept_new_host_key)
