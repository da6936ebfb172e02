"""The scan use case: configured repos -> their status -> state/repo-status.json.

The previous state file doubles as a cache: a repo whose HEAD is the one recorded
there reuses the recorded last commit (a warm scan writes the same document).
"""
from __future__ import annotations

from pathlib import Path

from lib.config import Workspace, load_workspace
from lib.gitstatus import ScanReport, read_known_commits, scan
from lib.paths import Paths
from lib.progress import Progress
from lib.statefile import write_text


def scan_workspace(workspace: Workspace, jobs: int = 0, tags: list[str] | None = None,
                   previous: Path | None = None) -> ScanReport:
    """Status of the selected repos; `previous` is a state file to read (never written here)."""
    repos = workspace.select(tags=tags)
    known = read_known_commits(previous) if previous is not None else {}
    # One live counter line on a terminal; nothing per repo (500 lines would bury the summary).
    with Progress("scanning", len(repos), item_lines=False) as progress:
        return scan(repos, jobs, on_result=lambda s: progress.finish(s.name, s.name, failed=bool(s.error)),
                    known=known)


def scan_and_save(paths: Paths, jobs: int = 0,
                  tags: list[str] | None = None) -> tuple[ScanReport, Path, str | None]:
    """Scan and write the state file; the third item says why it could not be written (None: written)."""
    report = scan_workspace(load_workspace(paths.repos_file), jobs, tags, paths.repo_status_file)
    try:
        write_text(paths.repo_status_file, report.json_text())
    except OSError as err:
        return report, paths.repo_status_file, (f"error: cannot write {paths.repo_status_file}: "
                                                f"{err.strerror or err}; the scan was not recorded")
    return report, paths.repo_status_file, None
