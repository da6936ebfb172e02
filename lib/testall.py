"""The test-all use case: choose repos, run their tests concurrently, record and report."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import Any

from lib.batch import (
    Outcome,
    check_report_path,
    count_statuses,
    counts_text,
    now_iso,
    plan_workflow,
    previously_failing,
    run_with_progress,
    summarize,
    write_junit,
)
from lib.config import Repo, Workspace
from lib.paths import Paths
from lib.runner import RunInterrupted, signal_name
from lib.workflows import Plan


@dataclass
class TestAllReport:
    outcomes: list[Outcome]
    duration_s: float
    state_file: Path
    notes: list[str] = field(default_factory=list)  # printed after the table: what could not be written

    @property
    def failing(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.failing]

    def to_json(self) -> dict[str, Any]:
        """What `inv test-all --json` prints: the summary and every outcome as the results file keeps it."""
        results = [o.to_json() for o in self.outcomes]
        return {"duration_s": round(self.duration_s, 3), "summary": summarize(results), "results": results}

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
                  only: list[str] | None = None, failed: bool = False, junit_xml: Path | None = None) -> list[Plan]:
    """Everything that can be wrong is found here, before anything runs (exit 2)."""
    if junit_xml is not None:
        check_report_path(junit_xml)
    return plan_workflow(paths, "test", choose_repos(workspace, paths, tags, only, failed))


def run_test_all(workspace: Workspace, paths: Paths, plans: list[Plan], jobs: int, timeout: float | None,
                 junit_xml: Path | None = None) -> TestAllReport:
    """Run and record; interrupted (runner.RunInterrupted), the repos that finished are recorded and reported."""
    started = monotonic()
    begun: dict[str, float] = {}  # repo -> when its tests started (a pool thread writes, we read after the stop)
    try:
        run = run_with_progress(paths, workspace, plans, jobs, timeout, "testing",
                                on_start=lambda plan: begun.setdefault(plan.repo.name, monotonic()))
    except RunInterrupted as stop:
        everything = stopped_outcomes(plans, stop.results, begun)
        stop.notes += junit_notes(junit_xml, everything, monotonic() - started, signal_name(stop.signum))
        raise
    notes = run.notes + junit_notes(junit_xml, run.outcomes, monotonic() - started)
    return TestAllReport(run.outcomes, monotonic() - started, paths.test_results_file, notes)


def stopped_outcomes(plans: list[Plan], finished: list[Outcome], begun: dict[str, float]) -> list[Outcome]:
    """Every planned repo of a stopped run, in plan order: its outcome, else `error: interrupted` (killed
    while running) or `skipped: not run: interrupted` (never started). For the report only, never recorded."""
    done = {o.repo: o for o in finished}
    now = monotonic()
    outcomes = []
    for plan in plans:
        if plan.repo.name in done:
            outcomes.append(done[plan.repo.name])
            continue
        status, reason = ("error", "interrupted") if plan.repo.name in begun else ("skipped", "not run: interrupted")
        ran = round(now - begun[plan.repo.name], 3) if plan.repo.name in begun else 0.0
        outcomes.append(Outcome(plan.repo.name, plan.repo.language, status, None, ran, plan.command_line,
                                str(plan.log), reason, now_iso()))
    return outcomes


def junit_notes(junit_xml: Path | None, outcomes: list[Outcome], wall_s: float | None = None,
                interrupted: str | None = None) -> list[str]:
    """Write the JUnit report if asked; a path we cannot write is a line after the table, not a crash."""
    if junit_xml is None:
        return []
    try:
        write_junit(junit_xml, outcomes, wall_s=wall_s, interrupted=interrupted)
    except OSError as err:
        return [f"warning: JUnit report not written to {junit_xml}: {err.strerror or err}"]
    return []
