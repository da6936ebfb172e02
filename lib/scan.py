"""The scan use case: configured repos -> their status -> state/repo-status.json.

The previous state file doubles as a cache: a repo whose HEAD is the one recorded
there reuses the recorded last commit (a warm scan writes the same document).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from lib import signals
from lib.config import Workspace, load_workspace
from lib.gitstatus import STATUS_ARGS, RepoStatus, ScanReport, known_commits, read_state, scan, state_text
from lib.paths import Paths
from lib.progress import Progress
from lib.statefile import locked, write_text


class ScanStopped(signals.Stopped):
    """The scan was stopped by a signal: its gits and helpers are gone and the state file was left as it was."""

    def __init__(self, signum: int, state_file: Path | None = None) -> None:
        unwritten = f"; {state_file} not written" if state_file is not None else ""
        super().__init__(signum, f"interrupted: scan stopped ({signals.signal_name(signum)}){unwritten}")


@contextmanager
def stoppable_git_reads() -> Iterator[None]:
    """Git reads that belong to a scan (test-all's check for changes status hides): a stop signal is ScanStopped.

    subprocess.run kills its git when the signal's exception passes through it.
    """
    try:
        with signals.raised():
            yield
    except signals.Signalled as stop:
        raise ScanStopped(stop.signum) from None


def scan_workspace(workspace: Workspace, jobs: int = 0, tags: list[str] | None = None,
                   previous: Any = None, reuse: Mapping[str, RepoStatus] | None = None,
                   status_args: tuple[str, ...] = STATUS_ARGS) -> ScanReport:
    """Status of the selected repos; `previous` is the last scan's document (read, never written here).
    `status_args`: gitstatus.scan's (test-all --changed sees submodules whatever their config says).

    `reuse`: rows already read by the caller (sync-all, for the repos it did not move), by name;
    a row is taken only for the repo at the same path, the others are scanned.
    Raises ScanStopped when a signal stops the scan (its gits and helpers are stopped first).
    """
    repos = workspace.select(tags=tags)
    given = {repo.name: reuse[repo.name] for repo in repos
             if reuse and repo.name in reuse and reuse[repo.name].path == str(repo.local)}
    # One live counter line on a terminal; nothing per repo (500 lines would bury the summary).
    try:
        with signals.raised(), Progress("scanning", len(repos) - len(given), item_lines=False) as progress:
            report = scan([repo for repo in repos if repo.name not in given], jobs,
                          on_result=lambda s: progress.finish(s.name, s.name, failed=bool(s.error)),
                          known=known_commits(previous), status_args=status_args)
    except signals.Signalled as stop:
        raise ScanStopped(stop.signum) from None
    if given:
        scanned = {status.name: status for status in report.repos}
        report.repos = [given.get(repo.name) or scanned[repo.name] for repo in repos]
    return report


def scan_and_save(paths: Paths, jobs: int = 0, tags: list[str] | None = None,
                  reuse: Mapping[str, RepoStatus] | None = None,
                  previous: Any = None, workspace: Workspace | None = None) -> tuple[ScanReport, Path, str | None]:
    """Scan and write the state file; the third item says why it could not be written (None: written).

    `previous`: the last scan's document when the caller has read it (sync-all, once for its rows and
    this scan; `{}` when there was none), else None and it is read here. `workspace`: repos.json as the
    caller loaded it (sync-all's), else loaded here.

    Raises ScanStopped when a signal stops the scan (the state file is not touched).

    A `--tag` scan refreshes its repos' rows and keeps the other configured
    repos' rows from the last scan, as a `--tag` sync keeps their results.
    """
    workspace = load_workspace(paths.repos_file) if workspace is None else workspace
    previous = read_state(paths.repo_status_file) if previous is None else previous
    try:
        report = scan_workspace(workspace, jobs, tags, previous, reuse)
    except ScanStopped as stop:
        raise ScanStopped(stop.signum, paths.repo_status_file) from None
    rows = [status.to_json() for status in report.repos]
    try:
        with locked(paths.repo_status_file):
            if tags:  # merged into the file as it is now: another scan may have written it meanwhile
                rows = _merged(workspace, rows, read_state(paths.repo_status_file))
            write_text(paths.repo_status_file, state_text(report.generated_at, rows))
    except OSError as err:
        return report, paths.repo_status_file, (f"error: cannot write {paths.repo_status_file}: "
                                                f"{err.strerror or err}; the scan was not recorded")
    return report, paths.repo_status_file, None


def _merged(workspace: Workspace, fresh: list[dict[str, Any]], previous: Any) -> list[dict[str, Any]]:
    """Every configured repo's row in config order: the fresh one, else the last scan's (repos gone from config drop out)."""
    old_rows = previous.get("repos") if isinstance(previous, dict) else None
    fields = set(fresh[0]) if fresh else set()
    by_name = {row["name"]: row for row in old_rows if isinstance(row, dict) and set(row) == fields and isinstance(row["name"], str)} \
        if isinstance(old_rows, list) else {}
    by_name.update((row["name"], row) for row in fresh)
    # A row is kept only for the repo it describes: same name, same path (a moved repo waits for a full scan).
    return [by_name[repo.name] for repo in workspace.repos
            if repo.name in by_name and by_name[repo.name].get("path") == str(repo.local)]


def status_command(paths: Paths, tags: list[str] | None = None, dirty: bool = False, jobs: int = 0, host: str = "",
                   accept_new_host_key: bool = False) -> tuple[ScanReport, str]:
    """`inv status`: the selected repos' status here, or on build host `host` (`local`: here), nothing written;
    with `dirty`, only repos with uncommitted changes or an error. Returns the report and the host read ("": here).

    lib.remote (fabric) is imported only for a host: the scan here stays standard library only.
    """
    workspace = load_workspace(paths.repos_file)
    if host:
        from lib.remote.hosts import LOCAL

        host = "" if host == LOCAL else host
    if host:
        from lib.remote.fleet import Fleet
        from lib.remote.status import scan_host

        report = scan_host(Fleet.load(paths).get(host), workspace.select(tags=tags), jobs, accept_new_host_key)
    else:
        report = scan_workspace(workspace, jobs, tags, read_state(paths.repo_status_file))
    if dirty:
        report.repos = [r for r in report.repos if r.error or r.dirty]
    return report, host
