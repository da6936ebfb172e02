"""Invoke tasks: the orchestrator's front door. Thin: parse arguments, call lib/, print.

Heavy imports (tabulate, GitPython, fabric, libtmux) happen inside the tasks that
need them, so `inv --list` stays fast.
"""
from __future__ import annotations

import json as jsonlib
import math
import shlex
from pathlib import Path

from invoke import Collection, Exit, task

from lib.errors import OrchestratorError, error_lines
from lib.paths import Paths


class Count(int):
    """An argument kind for whole numbers: a bad value is a one-line usage error (exit 2).

    Invoke casts a flag's value with the type of its default and lets a
    ValueError escape as a traceback; raising Exit here goes through its own
    error path instead.
    """

    def __new__(cls, value: object = 0) -> "Count":
        try:
            number = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise Exit(f"error: expected a whole number, got {value!r}", code=2) from None
        if number < 0:
            raise Exit(f"error: expected a number >= 0, got {value!r}", code=2)
        return super().__new__(cls, number)


class Seconds(float):
    """An argument kind for durations in seconds (0: no limit); bad values exit 2."""

    def __new__(cls, value: object = 0.0) -> "Seconds":
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise Exit(f"error: expected a number of seconds, got {value!r}", code=2) from None
        if number < 0 or not math.isfinite(number):
            raise Exit(f"error: expected a finite number of seconds >= 0, got {value!r}", code=2)
        return super().__new__(cls, number)


def _fail(err: OrchestratorError) -> Exit:
    return Exit(error_lines(err), code=err.exit_code)


@task(
    iterable=["tag"],
    help={
        "json": "print the status document (same shape as state/repo-status.json) instead of a table",
        "tag": "only repos with this tag (repeatable)",
        "dirty": "only repos with uncommitted changes (and repos with errors)",
        "jobs": "N: repos checked at once (default: 2 per core)",
    },
)
def status(c, json=False, tag=None, dirty=False, jobs=Count(0)):
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
    help={"jobs": "N: repos scanned at once (default: 2 per core)", "tag": "only repos with this tag (repeatable)"},
)
def scan(c, jobs=Count(0), tag=None):
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


def _split(names: str) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


def _print_plan(plan) -> None:
    if plan.skip_reason:
        print(f"{plan.repo.name}: would skip ({plan.skip_reason}); log: {plan.log}")
        return
    print(f"{plan.repo.name}: would run {plan.workflow} (log: {plan.log})")
    for command in plan.commands:
        print(f"  cd {shlex.quote(str(command.cwd))} && {command.command}")


class _TextToBytes:
    """A binary view of a text stream that has no .buffer (a captured stdout)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode("utf-8", "replace"))

    def flush(self) -> None:
        self.stream.flush()


def _run_on_repo(workflow, repo, timeout, dry_run, echo):
    """Run one workflow on one repo, print the original's verdict, exit 1 unless it passed or skipped."""
    import sys

    from lib.batch import plan_workflow, run_and_record, tail
    from lib.config import load_workspace
    from lib.views import headline

    try:
        paths = Paths.from_env()
        workspace = load_workspace(paths.repos_file)
        plans = plan_workflow(paths, workflow, [workspace.get(repo)])
    except OrchestratorError as err:
        raise _fail(err) from None
    if dry_run:
        _print_plan(plans[0])
        return
    print(f"log: {plans[0].log}", flush=True)
    outcome = run_and_record(paths, workspace, plans, 1, timeout or None,
                             echo=getattr(sys.stdout, "buffer", None) or _TextToBytes(sys.stdout) if echo else None)[0]
    print(headline(workflow, outcome))
    if outcome.failing and not echo:
        print(f"--- last 50 lines of {outcome.log} ---")
        print(tail(Path(outcome.log), 50))
    if outcome.failing:
        raise Exit(code=1)


RUN_HELP = {
    "repo": "repo name from config/repos.json",
    "timeout": "SECONDS before the whole process group is killed (0: no limit)",
    "dry_run": "print the rendered commands and log path; run nothing",
}


@task(help=RUN_HELP)
def build(c, repo, timeout=Seconds(1800), dry_run=False):
    """Build one repo; prints BUILD PASSED/FAILED, log in the log dir."""
    _run_on_repo("build", repo, timeout, dry_run, echo=False)


@task(help=RUN_HELP)
def test(c, repo, timeout=Seconds(1800), dry_run=False):
    """Test one repo; prints TEST PASSED/FAILED, log in the log dir."""
    _run_on_repo("test", repo, timeout, dry_run, echo=False)


@task(
    iterable=["tag"],
    help={
        "jobs": "N: repos tested at once (default: one per core)",
        "timeout": "SECONDS per repo before its process group is killed (0: no limit)",
        "junit_xml": "also write a JUnit XML report to this path (for CI)",
        "tag": "only repos with this tag (repeatable)",
        "only": "only these repos, comma-separated (any language)",
        "failed": "rerun only the repos that failed or timed out last time",
        "dry_run": "print what would run; run nothing",
    },
)
def test_all(c, jobs=Count(0), timeout=Seconds(1800), junit_xml="", tag=None, only="", failed=False,
             dry_run=False):
    """Test every repo with a known language, concurrently."""
    from lib.config import load_workspace
    from lib.testall import plan_test_all, run_test_all
    from lib.views import outcomes_table

    try:
        paths = Paths.from_env()
        workspace = load_workspace(paths.repos_file)
        plans = plan_test_all(workspace, paths, tag, _split(only), failed)
    except OrchestratorError as err:
        raise _fail(err) from None
    if not plans:
        print("nothing to test" + (" (nothing failed last time)" if failed else ""))
        return
    if dry_run:
        for plan in plans:
            _print_plan(plan)
        return
    report = run_test_all(workspace, paths, plans, jobs, timeout or None, Path(junit_xml) if junit_xml else None)
    print(outcomes_table(report.outcomes))
    print(f"{report.summary_line()} -> {report.state_file}")
    if report.failing:
        raise Exit(code=1)


@task(
    help={
        "name": "workflow name from config/workflows.json (build, test, status, pull, review, or your own)",
        "repo": "repo name from config/repos.json",
        "timeout": "SECONDS before the whole process group is killed (0: no limit)",
        "dry_run": "print the rendered commands; run nothing",
    },
)
def workflow(c, name, repo, timeout=Seconds(1800), dry_run=False):
    """Run any workflow of config/workflows.json on one repo, showing its output."""
    _run_on_repo(name, repo, timeout, dry_run, echo=True)


@task(
    help={
        "name": "workflow name from config/workflows.json",
        "jobs": "N: repos at once (default: one per core)",
        "timeout": "SECONDS per repo before its process group is killed (0: no limit)",
        "dry_run": "print the rendered commands; run nothing",
    },
)
def workflow_all(c, name, jobs=Count(0), timeout=Seconds(1800), dry_run=False):
    """Run a workflow on every repo, concurrently; a table of outcomes and logs."""
    from lib.batch import plan_workflow, run_with_progress
    from lib.config import load_workspace
    from lib.views import outcomes_table

    try:
        paths = Paths.from_env()
        workspace = load_workspace(paths.repos_file)
        plans = plan_workflow(paths, name, workspace.repos)
    except OrchestratorError as err:
        raise _fail(err) from None
    if dry_run:
        for plan in plans:
            _print_plan(plan)
        return
    outcomes = run_with_progress(paths, workspace, plans, jobs, timeout or None, name)
    print(outcomes_table(outcomes))
    if any(o.failing for o in outcomes):
        raise Exit(code=1)


@task(
    iterable=["tag"],
    help={
        "net_jobs": "N: repos fetched at once (default 4: ssh servers refuse floods)",
        "timeout": "SECONDS per fetch or clone before it is killed (0: no limit)",
        "clone_missing": "clone repos whose path does not exist from their `remote`",
        "tag": "only repos with this tag (repeatable)",
        "dry_run": "fetch nothing, change nothing: show what would happen with the refs as they are",
    },
)
def sync_all(c, net_jobs=Count(4), timeout=Seconds(300), clone_missing=False, tag=None, dry_run=False):
    """Fetch every repo and fast-forward its default branch when that is safe."""
    from lib.config import load_workspace
    from lib.sync import run_sync
    from lib.views import sync_table

    try:
        paths = Paths.from_env()
        report = run_sync(paths, load_workspace(paths.repos_file), tag, net_jobs, timeout or None, clone_missing,
                          dry_run)
    except OrchestratorError as err:
        raise _fail(err) from None
    print(sync_table(report.outcomes))
    print(report.summary_line() + (f" -> {report.state_file}" if report.state_file else " (dry run)"))
    if report.failing:
        raise Exit(code=1)


namespace = Collection(status, scan, build, test, test_all, sync_all, workflow, workflow_all)


# --- workers: the proof-worker orchestrator (scripts/proof-workers), same code as `python3 -m orchestrator` ---

WORKERS_CONFIG_HELP = {
    "config": "a proof-issues.json (default: config/proof-issues.json under ORCHESTRATOR_HOME)",
    "config_dir": "use every *-issues.json in this directory",
    "workers": "N: number of workers (default: the config's num_workers)",
    "session": "tmux session name (default: the config's tmux_session)",
}


def _workers_cli(verb: str, *args: object, config: str = "", config_dir: str = "", workers: int = 0,
                 session: str = "") -> None:
    """Run one verb of the orchestrator package in-process; its exit code becomes ours."""
    import sys

    package = str(Path(__file__).resolve().parent / "scripts" / "proof-workers")
    if package not in sys.path:
        sys.path.insert(0, package)
    from orchestrator.cli import main

    argv = [verb, *(str(a) for a in args if a is not None and a is not False)]
    for flag, value in (("--config", config), ("--config-dir", config_dir), ("--workers", workers),
                        ("--session", session)):
        if value:
            argv += [flag, str(value)]
    code = main(argv)
    if code:
        raise Exit(code=code)


def _flag(enabled: bool, name: str) -> str | None:
    return name if enabled else None


@task(name="launch", help={**WORKERS_CONFIG_HELP, "dry_run": "validate and print the plan; change nothing",
                           "json": "print the plan as JSON"})
def workers_launch(c, config="", config_dir="", workers=Count(0), session="", dry_run=False, json=False):
    """Launch the tmux session: monitor (window 0), worker-1..N, dashboard."""
    _workers_cli("launch", _flag(dry_run, "--dry-run"), _flag(json, "--json"), config=config,
                 config_dir=config_dir, workers=workers, session=session)


@task(name="monitor", help={**WORKERS_CONFIG_HELP, "cycle": "SECONDS between cycles (0: the config's cycle_interval)",
                            "no_delay": "skip the initial wait", "once": "run one cycle and exit"})
def workers_monitor(c, config="", config_dir="", workers=Count(0), session="", cycle=Seconds(0), no_delay=False,
                    once=False):
    """Run the monitor loop (launch starts it in window 0)."""
    _workers_cli("monitor", *(["--cycle", cycle] if cycle else []), _flag(no_delay, "--no-delay"),
                 _flag(once, "--once"), config=config, config_dir=config_dir, workers=workers, session=session)


@task(name="status", help={**WORKERS_CONFIG_HELP, "json": "print the status document as JSON"})
def workers_status(c, config="", config_dir="", workers=Count(0), session="", json=False):
    """Show workers, issues, waves, next eligible and failures once."""
    _workers_cli("status", _flag(json, "--json"), config=config, config_dir=config_dir, workers=workers,
                 session=session)


@task(name="dashboard", help={**WORKERS_CONFIG_HELP, "interval": "SECONDS between redraws",
                              "once": "draw one frame and exit"})
def workers_dashboard(c, config="", config_dir="", workers=Count(0), session="", interval=Seconds(2), once=False):
    """Live read-only view of the workers (Ctrl-C quits)."""
    _workers_cli("dashboard", "--interval", interval, _flag(once, "--once"), config=config, config_dir=config_dir,
                 workers=workers, session=session)


@task(name="cleanup", help={**WORKERS_CONFIG_HELP, "keep_worktrees": "kill the session only",
                            "force": "also remove worktrees with unsaved work, after saving it on a backup ref",
                            "json": "print the outcome as JSON"})
def workers_cleanup(c, config="", config_dir="", workers=Count(0), session="", keep_worktrees=False, force=False,
                    json=False):
    """Kill the session and agents; remove worktrees that are clean and pushed (exit 1 if any is kept)."""
    _workers_cli("cleanup", _flag(keep_worktrees, "--keep-worktrees"), _flag(force, "--force"),
                 _flag(json, "--json"), config=config, config_dir=config_dir, workers=workers, session=session)


@task(name="add-issue", help={"number": "the new issue's number", "title": "its title",
                              "priority": "lower runs first (default 1)", "wave": "wave number (default 1)",
                              "depends_on": "issue numbers it waits for, comma-separated",
                              "description": "what the agent should do", "config": WORKERS_CONFIG_HELP["config"]})
def workers_add_issue(c, number, title, priority=Count(1), wave=Count(1), depends_on="", description="", config=""):
    """Append an issue to the config (a running monitor picks it up)."""
    _workers_cli("add-issue", number, "--title", title, "--priority", priority, "--wave", wave,
                 *(["--depends-on", depends_on] if depends_on else []),
                 *(["--description", description] if description else []), config=config)


namespace.add_collection(Collection("workers", workers_launch, workers_monitor, workers_status, workers_dashboard,
                                    workers_cleanup, workers_add_issue))
