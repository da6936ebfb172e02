"""`inv sync-all --host NAME`: lib.sync itself runs on the build host, so its safety rules are the same code.

The sync path of lib/ is standard library only. Its files are uploaded (SFTP)
into a private per-user cache on the host, keyed by a hash of their content;
a generated home (`<workspace>/.orchestrator/`: config/repos.json, state/ with
the one-sync-per-workspace lock, logs/) sits in the host's workspace, so two
machines syncing the same host workspace exclude each other. A tiny driver
calls `lib.sync.run_sync` there in its own process group (remote.run_remote)
and prints the outcomes as one JSON line; the logs are copied back.
"""
from __future__ import annotations

import hashlib
import io
import json
import shlex
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from time import monotonic
from typing import Any, Sequence

from lib import remote, runner
from lib.batch import record
from lib.config import Repo, Workspace
from lib.errors import OrchestratorError, clip
from lib.hosts import Host
from lib.paths import Paths
from lib.sync import NET_TIMEOUT_S, SyncOutcome, SyncReport, _log_name, _open_log, _summary

LIB_DIR = Path(__file__).resolve().parent
HOST_HOME = ".orchestrator"  # under the host's workspace
MIN_PYTHON = (3, 11)
RESULT_MARK = "orchestrator-sync-result "
# argv: lib root, home, log dir, net jobs, timeout (0: none), clone missing, dry run (1/0).
DRIVER = f"""import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from lib.config import load_workspace
from lib.errors import OrchestratorError
from lib.paths import Paths
from lib.runner import RunInterrupted
from lib.sync import run_sync
paths = Paths(Path(sys.argv[2]), Path(sys.argv[3]))
try:
    report = run_sync(paths, load_workspace(paths.repos_file), None, int(sys.argv[4]), float(sys.argv[5]) or None,
                      sys.argv[6] == "1", sys.argv[7] == "1")
    result = {{"outcomes": [o.to_json() for o in report.outcomes]}}
except OrchestratorError as err:
    result = {{"error": str(err)}}
except RunInterrupted as stop:
    result = {{"outcomes": [o.to_json() for o in stop.results], "interrupted": str(stop)}}
print({RESULT_MARK!r} + json.dumps(result), flush=True)
"""
PYTHON_VERSION = "python3 -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])'"


@dataclass
class HostSyncOutcome(SyncOutcome):
    host: str = ""  # the build host that ran it


class _HostFailed(Exception):
    """Nothing was synced on the host: every selected repo fails with this reason."""


def lib_files() -> list[Path]:
    return sorted(LIB_DIR.glob("*.py"))


def lib_hash(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


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
    code, out, _ = remote.capture(connection, PYTHON_VERSION)
    if code is None:
        raise _HostFailed(f"python3 on host {host.name} did not answer within 30s")
    found = (out.decode("utf-8", "replace").strip().splitlines() or [""])[-1] if code == 0 else ""
    problem = python_problem(found, host.name)
    if problem:
        raise _HostFailed(problem)


def _upload_lib(connection: Any) -> str:
    """The directory on the host holding lib/ (this checkout's files): uploaded once per content, then reused."""
    files = lib_files()
    # The session's $HOME (SFTP starts in the passwd home, which may differ); private: umask 077, the cache 0700.
    made = _sh(connection, "/bin/sh", "-c", 'umask 077 && c="${XDG_CACHE_HOME:-$HOME/.cache}/orchestrator" && '
               'mkdir -p -- "$c" && chmod 700 -- "$c" && printf "%s\\n" "$c"', "cache")
    cache = (made.strip().splitlines() or [""])[-1]
    if not cache.startswith("/"):
        raise _HostFailed(f"cannot find a cache directory on the host ($HOME is {clip(cache) or 'not set'})")
    final = f"{cache}/lib-{lib_hash(files)}"
    sftp = _sftp(connection)
    if _exists(sftp, f"{final}/lib/sync.py"):
        return final  # made by a rename, so complete
    temporary = f"{cache}/.tmp-{uuid.uuid4().hex}"
    try:
        sftp.mkdir(temporary, 0o700)
        sftp.mkdir(f"{temporary}/lib", 0o700)
        for path in files:
            connection.put(str(path), f"{temporary}/lib/{path.name}")
        try:
            sftp.posix_rename(temporary, final)
        except OSError:
            if not _exists(sftp, f"{final}/lib/sync.py"):  # another run's rename won the race: use its copy
                raise
    finally:
        _sh(connection, "rm", "-rf", "--", temporary)
    return final


def _sftp(connection: Any) -> Any:
    from paramiko import SSHException

    try:
        return connection.sftp()
    except SSHException as err:
        raise _HostFailed(f"cannot open SFTP on the host (sshd needs its sftp subsystem): {err}") from None


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


def _run_driver(connection: Any, host: Host, lib_root: str, home: str, net_jobs: int, timeout: float | None,
                clone_missing: bool, dry_run: bool) -> dict[str, Any]:
    script = shlex.join(["python3", "-I", "-B", "-c", DRIVER, lib_root, home, f"{home}/logs", str(net_jobs),
                         str(timeout or 0), "1" if clone_missing else "0", "1" if dry_run else "0"])
    output = io.BytesIO()
    result = remote.run_remote(connection, home, script, {}, output, None)
    text = output.getvalue().decode("utf-8", "replace")
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    said = [ln for ln in text.splitlines() if ln.strip()][-3:]
    problem = result.problem or "; ".join(said) or f"exit {result.exit_code}"
    raise _HostFailed(f"sync on host {host.name} gave no result: {clip(problem)}")


def _copy_log(connection: Any, remote_log: str, local: Path) -> str | None:
    """The host's log copied to `local` (never through a symlink); the problem, if it could not be."""
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
        with _open_log(local) as out:
            connection.get(remote_log, local=out)
    except (OSError, EOFError) as err:
        return f"log {local} not copied from the host: {err.strerror if isinstance(err, OSError) else err}"
    return None


def _outcome(data: dict[str, Any], host: Host, log: str) -> HostSyncOutcome:
    known = {f.name for f in fields(SyncOutcome)}
    return HostSyncOutcome(**{**{k: v for k, v in data.items() if k in known}, "log": log}, host=host.name)


def _sync_on(connection: Any, host: Host, repos: Sequence[Repo], log_dir: Path, net_jobs: int,
             timeout: float | None, clone_missing: bool, dry_run: bool) -> list[HostSyncOutcome]:
    _check_python(connection, host)
    workspace = remote.resolve_workspace(connection, host)
    lib_root = _upload_lib(connection)
    home = _prepare_home(connection, workspace, repos)
    result = _run_driver(connection, host, lib_root, home, net_jobs, timeout, clone_missing, dry_run)
    if "error" in result:  # the host's own refusal (its sync lock held, say): a usage-level error, as locally
        lines = str(result["error"]).splitlines() or ["unknown error"]
        raise OrchestratorError("\n".join(f"on host {host.name}: {clip(line, 1000)}" for line in lines))
    selected = {r.name: r for r in repos}
    outcomes = []
    for data in result.get("outcomes", []):
        repo = selected.get(data.get("repo"))
        if repo is None:  # only names we sent are used for local paths
            continue
        local = log_dir / _log_name(repo, dry_run)
        problem = _copy_log(connection, str(data["log"]), local)
        outcome = _outcome(data, host, str(local))
        if problem:
            outcome.reason = f"{outcome.reason}; {problem}" if outcome.reason else problem
        outcomes.append(outcome)
    said = {o.repo for o in outcomes}
    if "interrupted" not in result and said != set(selected):
        missing = [r for r in repos if r.name not in said]
        outcomes += _all_failed(missing, host, f"no outcome from the sync on host {host.name}", log_dir, dry_run)
        order = {r.name: i for i, r in enumerate(repos)}
        outcomes.sort(key=lambda o: order[o.repo])
    if "interrupted" in result:
        raise runner.RunInterrupted(2, outcomes, 0)
    return outcomes


def _all_failed(repos: Sequence[Repo], host: Host, reason: str, log_dir: Path, dry_run: bool) -> list[HostSyncOutcome]:
    outcomes = []
    for repo in repos:
        local = log_dir / _log_name(repo, dry_run)
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            with _open_log(local) as log:
                log.write(f"# orchestrator sync {repo.name} on host {host.name} ({host.address})\n"
                          f"error: {reason}\n".encode())
        except OSError:
            pass  # the reason is in the outcome either way
        outcomes.append(HostSyncOutcome(repo.name, "failed", reason, repo.default_branch, None, None, str(local),
                                        host=host.name))
    return outcomes


def sync_host(paths: Paths, workspace: Workspace, host: Host, tags: list[str] | None = None, net_jobs: int = 4,
              timeout: float | None = NET_TIMEOUT_S, clone_missing: bool = False, dry_run: bool = False,
              accept_new_host_key: bool = False) -> SyncReport:
    """Sync the selected repos in the host's workspace; outcomes recorded in the local state with `host`."""
    started = monotonic()
    repos = workspace.select(tags=tags)
    known = {r.name for r in workspace.repos}

    def work(connection: Any) -> list[HostSyncOutcome]:
        if isinstance(connection, remote.HostUnreachable):
            return _all_failed(repos, host, f"host unreachable: {connection}", paths.log_dir, dry_run)
        try:
            return _sync_on(connection, host, repos, paths.log_dir, net_jobs, timeout, clone_missing, dry_run)
        except (_HostFailed, remote.HostUnreachable) as err:
            return _all_failed(repos, host, str(err), paths.log_dir, dry_run)
        except (OSError, EOFError, ValueError, TypeError, KeyError) as err:  # SFTP, a lost connection, bad JSON
            reason = f"sync on host {host.name} failed: {type(err).__name__}: {clip(str(err))}"
            return _all_failed(repos, host, reason, paths.log_dir, dry_run)

    # run_each: Ctrl-C/SIGTERM stop run_remote, which kills the driver's process group on the host.
    try:
        outcomes = runner.run_each([host], lambda h: remote.run_on_host(h, work, accept_new_host_key), 1)[0]
    except runner.RunInterrupted as stop:
        finished = [o for o in stop.results if isinstance(o, SyncOutcome)]  # what the host's run had finished
        if not dry_run and finished:
            record(paths.sync_results_file, finished, known, _summary)
        raise
    if dry_run:
        return SyncReport(list(outcomes), monotonic() - started, None)
    record(paths.sync_results_file, outcomes, known, _summary)
    return SyncReport(list(outcomes), monotonic() - started, paths.sync_results_file)


def sync_on_host(paths: Paths, host_name: str, tags: list[str] | None = None, net_jobs: int = 4,
                 timeout: float | None = NET_TIMEOUT_S, clone_missing: bool = False, dry_run: bool = False,
                 accept_new_host_key: bool = False) -> SyncReport:
    """The front doors' entry: config/repos.json and config/hosts.toml loaded, then sync_host."""
    from lib.config import load_workspace
    from lib.fleet import Fleet

    workspace = load_workspace(paths.repos_file)
    return sync_host(paths, workspace, Fleet.load(paths).get(host_name), tags, net_jobs, timeout, clone_missing,
                     dry_run, accept_new_host_key)
