"""The test-all use case: choose repos, run their tests concurrently, record and report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from time import monotonic

from lib.batch import (
    Outcome,
    count_statuses,
    counts_text,
    plan_workflow,
    previously_failing,
    run_with_progress,
    write_junit,
)
from lib.config import Repo, Workspace
from lib.paths import Paths
from lib.workflows import Plan


@dataclass
class TestAllReport:
    outcomes: list[Outcome]
    duration_s: float
    state_file: Path

    @property
    def failing(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.failing]

    def summary_line(self) -> str:
        parts = counts_text(count_statuses(o.status for o in self.outcomes))
        return f"tested {len(self.outcomes)} repos in {self.duration_s:.1f}s: {parts}"


def choose_repos(workspace: Workspace, paths: Paths, tags: list[str] | None, only: list[str] | None,
                 failed: bool) -> list[Repo]:
    """Repos with a known language (or named with --only), narrowed by --tag and --failed."""
    repos = workspace.select(tags=tags, only=only)
    if not only:
        repos = [r for r in repos if r.language != "unknown"]
    if failed:
        again = set(previously_failing(paths.test_results_file))
        repos = [r for r in repos if r.name in again]
    return repos


def plan_test_all(workspace: Workspace, paths: Paths, tags: list[str] | None = None,
                  only: list[str] | None = None, failed: bool = False) -> list[Plan]:
    return plan_workflow(paths, "test", choose_repos(workspace, paths, tags, only, failed))


def run_test_all(workspace: Workspace, paths: Paths, plans: list[Plan], jobs: int, timeout: float | None,
                 junit_xml: Path | None = None) -> TestAllReport:
    started = monotonic()
    outcomes = run_with_progress(paths, workspace, plans, jobs, timeout, "testing")
    if junit_xml is not None:
        write_junit(junit_xml, outcomes)
    return TestAllReport(outcomes, monotonic() - started, paths.test_results_file)
