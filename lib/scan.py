"""The scan use case: configured repos -> their status -> state/repo-status.json.

The previous state file doubles as a cache: a repo whose HEAD is the one recorded
there reuses the recorded last commit (a warm scan writes the same document).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lib.config import Workspace, load_workspace
from lib.gitstatus import ScanReport, known_commits, read_state, scan, state_text
from lib.paths import Paths
from lib.progress import Progress
from lib.statefile import write_text


def scan_workspace(workspace: Workspace, jobs: int = 0, tags: list[str] | None = None,
                   previous: Any = None) -> ScanReport:
    """Status of the selected repos; `previous` is the last scan's document (read, never written here)."""
    repos = workspace.select(tags=tags)
    # One live counter line on a terminal; nothing per repo (500 lines would bury the summary).
    with Progress("scanning", len(repos), item_lines=False) as progress:
        return scan(repos, jobs, on_result=lambda s: progress.finish(s.name, s.name, failed=bool(s.error)),
                    known=known_commits(previous))


def scan_and_save(paths: Paths, jobs: int = 0,
                  tags: list[str] | None = None) -> tuple[ScanReport, Path, str | None]:
    """Scan and write the state file; the third item says why it could not be written (None: written).

    A `--tag` scan refreshes its repos' rows and keeps the other configured
    repos' rows from the last scan, as a `--tag` sync keeps their results.
    """
    workspace = load_workspace(paths.repos_file)
    previous = read_state(paths.repo_status_file)
    report = scan_workspace(workspace, jobs, tags, previous)
    rows = [status.to_json() for status in report.repos]
    if tags:
        rows = _merged(workspace, rows, previous)
    try:
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
