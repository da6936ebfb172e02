"""Invoke tasks: the orchestrator's front door. Thin: parse arguments, call lib/, print.

Heavy imports (tabulate, GitPython, fabric, libtmux) happen inside the tasks that
need them, so `inv --list` stays fast.
"""
from __future__ import annotations

import json as jsonlib

from invoke import Collection, Exit, task

from lib.errors import OrchestratorError, error_lines
from lib.paths import Paths


def _fail(err: OrchestratorError) -> Exit:
    return Exit(error_lines(err), code=err.exit_code)


@task(
    iterable=["tag"],
    help={
        "json": "print the status document (same shape as state/repo-status.json) instead of a table",
        "tag": "only repos with this tag (repeatable)",
        "dirty": "only repos with uncommitted changes (and repos with errors)",
        "jobs": "repos checked at once (default: 2 per core)",
    },
)
def status(c, json=False, tag=None, dirty=False, jobs=0):
    """Show each repo's branch, changes, ahead/behind and last commit."""
    from lib.config import load_workspace
    from lib.scan import scan_workspace

    try:
        report = scan_workspace(load_workspace(Paths.from_env().repos_file), jobs, tag)
    except OrchestratorError as err:
        raise _fail(err) from None
    if dirty:
        report.repos = [r for r in report.repos if r.error or r.dirty]
    if json:
        print(jsonlib.dumps(report.to_json(), indent=2))
    else:
        from lib.views import status_table

        print(status_table(report.repos))
        print(report.summary_line())
    if report.errors:
        raise Exit(code=1)


@task(
    iterable=["tag"],
    help={"jobs": "repos scanned at once (default: 2 per core)", "tag": "only repos with this tag (repeatable)"},
)
def scan(c, jobs=0, tag=None):
    """Scan every repo and write state/repo-status.json."""
    from lib.scan import scan_and_save

    try:
        report, state_file = scan_and_save(Paths.from_env(), jobs, tag)
    except OrchestratorError as err:
        raise _fail(err) from None
    for repo in report.errors:
        print(f"{repo.name}: {repo.error} ({repo.path})")
    print(f"{report.summary_line()} -> {state_file}")
    if report.errors:
        raise Exit(code=1)


namespace = Collection(status, scan)
