"""Invoke tasks: the orchestrator's front door. Thin: parse arguments, call lib/, print.

A task's body raises OrchestratorError for the user's mistakes and lets a stopped run's
exception through: lib.cli's task turns each into its lines and exit code.

Heavy imports (tabulate, fabric, libtmux, rich) happen inside the tasks that
need them, so `inv --list` stays fast.

Over 500 lines, one job: declaring the command line. Each task is
its `@task` help text (every argument's, tests/test_tasks_meta.py), its
signature and a few lines that call one function in lib/ or the proof-workers
package and print; splitting them over files would only scatter `inv --list`.
"""
from __future__ import annotations

import json as jsonlib
import math
from pathlib import Path

from invoke import Collection, Exit

from lib.cli import task
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


class Workers(Count):
    """--workers N of the workers tasks: 1 or more when given (0 used to mean the config's number, silently; the
    upper bound is the orchestrator's own check). Left out, it is UNSET_WORKERS, the default invoke never casts:
    the config's num_workers."""

    def __new__(cls, value: object = 0) -> "Workers":
        number = super().__new__(cls, value)
        if number < 1:
            raise Exit(f"error: --workers: expected 1 or more workers, got {value!r} (leave --workers out for the "
                       "config's num_workers)", code=2)
        return number

    def __deepcopy__(self, memo: dict) -> "Workers":
        return self  # immutable; invoke deep-copies defaults, and a copy made through __new__ would refuse 0


UNSET_WORKERS = int.__new__(Workers, 0)


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


def _warn(lines: list[str]) -> None:
    import sys

    for line in lines:
        print(line, file=sys.stderr)


@task(
    iterable=["tag"],
    help={
        "json": "print the status document (same shape as state/repo-status.json) instead of a table",
        "tag": "TAG: only repos with this tag (repeatable)",
        "dirty": "only repos with uncommitted changes (and repos with errors)",
        "jobs": "N: repos checked at once (default: 4 per core; with --host, at most 8 at once: sshd allows 10 "
                "sessions per connection)",
        "host": "NAME: the repos' status on this build host of config/hosts.toml (<workspace>/<repo name>); "
                "`local` is this machine",
        "accept_new_host_key": "trust and remember a host key never seen before (like ssh's accept-new)",
    },
)
def status(c, json=False, tag=None, dirty=False, jobs=Count(0), host="", accept_new_host_key=False):
    """Show each repo's branch, changes, ahead/behind and last commit."""
    from lib.scan import status_command

    report, host = status_command(Paths.from_env(), tag, dirty, jobs, host, accept_new_host_key)
    if json:
        print(jsonlib.dumps({**report.to_json(), **({"host": host} if host else {})}, indent=2))
    else:
        from lib.views import status_table

        print(status_table(report.repos))
        print(report.summary_line() + (f" (on host {host})" if host else ""))
    if report.errors:
        raise Exit(code=1)


@task(
    iterable=["tag"],
    help={"jobs": "N: repos scanned at once (default: 4 per core)", "tag": "TAG: only repos with this tag (repeatable)"},
)
def scan(c, jobs=Count(0), tag=None):
    """Scan every repo and write state/repo-status.json."""
    from lib.scan import scan_and_save

    report, state_file, not_written = scan_and_save(Paths.from_env(), jobs, tag)
    for repo in report.errors:
        print(f"{repo.name}: {repo.error} ({repo.path})")
    print(report.summary_line() + ("" if not_written else f" -> {state_file}"))
    if not_written:
        raise Exit(not_written, code=2)
    if report.errors:
        raise Exit(code=1)


def _split(names: str) -> list[str] | None:
    from lib.config import split_names

    return split_names(names)


def _print_plans(plans, fleet, groups) -> None:
    from lib.remote.fleet import dry_run_lines

    for line in dry_run_lines(plans, fleet, groups):
        print(line)


class _TextToBytes:
    """A binary view of a text stream that has no .buffer (a captured stdout)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode("utf-8", "replace"))

    def flush(self) -> None:
        self.stream.flush()


def _run_on_repo(workflow, repo, timeout, dry_run, echo, host="", accept_new_host_key=False, grace=10.0):
    """Run one workflow on one repo, print the original's verdict, exit 1 unless it passed or skipped."""
    import sys

    from lib.batch import check_state, tail
    from lib.onerepo import plan_one
    from lib.views import headline

    paths = Paths.from_env()
    one = plan_one(paths, workflow, repo, host)
    stream = (getattr(sys.stdout, "buffer", None) or _TextToBytes(sys.stdout)) if echo else None
    if dry_run:
        for line in one.dry_run_lines():
            print(line)
        return
    _warn(check_state(paths, workflow))
    if line := one.log_line():
        print(line, flush=True)
    run = one.run(timeout or None, stream, accept_new_host_key, grace)
    outcome = run.outcomes[0]
    print(headline(workflow, outcome))
    if outcome.failing and not echo:
        print(f"--- last 50 lines of {outcome.log} ---")
        print(tail(Path(outcome.log), 50))
    _warn(run.notes)
    if outcome.failing:
        raise Exit(code=1)


RUN_HELP = {
    "repo": "repo name from config/repos.json",
    "timeout": "SECONDS before the whole process group is killed (0: no limit)",
    "dry_run": "print the rendered commands and log path; run nothing",
    "host": "NAME: run on this build host of config/hosts.toml (default: the repo's `host`, else here; "
            "`local`: here)",
    "accept_new_host_key": "trust and remember a host key never seen before (like ssh's accept-new); "
                           "a changed key is always refused",
    "grace": "SECONDS a timed-out command has after SIGINT to print where it hung, before SIGTERM "
             "(then SIGKILL 5 s later); default 10",
}


@task(help=RUN_HELP)
def build(c, repo, timeout=Seconds(1800), dry_run=False, host="", accept_new_host_key=False, grace=Seconds(10)):
    """Build one repo; prints BUILD PASSED/FAILED, log in the log dir."""
    _run_on_repo("build", repo, timeout, dry_run, echo=False, host=host, accept_new_host_key=accept_new_host_key,
                 grace=grace)


@task(help=RUN_HELP)
def test(c, repo, timeout=Seconds(1800), dry_run=False, host="", accept_new_host_key=False, grace=Seconds(10)):
    """Test one repo; prints TEST PASSED/FAILED, log in the log dir."""
    _run_on_repo("test", repo, timeout, dry_run, echo=False, host=host, accept_new_host_key=accept_new_host_key,
                 grace=grace)


@task(
    iterable=["tag"],
    help={
        "jobs": "N: repos tested at once (default: one per core)",
        "timeout": "SECONDS per repo before its process group is killed (0: no limit)",
        "junit_xml": "also write a JUnit XML report to this path (for CI)",
        "tag": "TAG: only repos with this tag (repeatable)",
        "only": "only these repos, comma-separated (any language)",
        "failed": "rerun only the repos that failed or timed out last time",
        "dry_run": "print what would run; run nothing",
        "hosts": "NAMES: spread the repos over these build hosts of config/hosts.toml, comma-separated; "
                 "`local` is this machine (default: each repo on its `host`, else here)",
        "accept_new_host_key": RUN_HELP["accept_new_host_key"],
        "json": "print {summary, results} (each result as in state/test-results.json) instead of the table",
        "changed": "report a repo passed without running it when its HEAD, clean tree, command and host are "
                   "those of its last passed run",
        "matrix": "print the selected repos as a CI matrix, {\"include\": [{repo, language, host}]}; run nothing",
        "grace": RUN_HELP["grace"] + " (repos tested here)",
    },
)
def test_all(c, jobs=Count(0), timeout=Seconds(1800), junit_xml="", tag=None, only="", failed=False,
             dry_run=False, hosts="", accept_new_host_key=False, json=False, changed=False, matrix=False,
             grace=Seconds(10)):
    """Test every repo with a known language, concurrently."""
    from lib.config import load_workspace
    from lib.testall import TestAllOptions, printout, run_command, state_warnings

    paths = Paths.from_env()
    workspace = load_workspace(paths.repos_file)
    options = TestAllOptions(jobs, timeout, Path(junit_xml) if junit_xml else None, tag, _split(only), failed,
                             changed, hosts, accept_new_host_key, grace, dry_run, matrix)
    _warn(state_warnings(paths, options))
    shown = printout(run_command(workspace, paths, options), json)
    for line in shown.out:
        print(line)
    _warn(shown.err)
    if shown.code:
        raise Exit(code=shown.code)


@task(
    help={
        "name": "workflow name from config/workflows.json (build, test, status, pull, review, or your own)",
        "repo": "repo name from config/repos.json",
        "timeout": "SECONDS before the whole process group is killed (0: no limit)",
        "dry_run": "print the rendered commands; run nothing",
        "host": RUN_HELP["host"],
        "accept_new_host_key": RUN_HELP["accept_new_host_key"],
        "grace": RUN_HELP["grace"],
    },
)
def workflow(c, name, repo, timeout=Seconds(1800), dry_run=False, host="", accept_new_host_key=False,
             grace=Seconds(10)):
    """Run any workflow of config/workflows.json on one repo, showing its output."""
    _run_on_repo(name, repo, timeout, dry_run, echo=True, host=host, accept_new_host_key=accept_new_host_key,
                 grace=grace)


@task(
    help={
        "name": "workflow name from config/workflows.json",
        "jobs": "N: repos at once (default: one per core)",
        "timeout": "SECONDS per repo before its process group is killed (0: no limit)",
        "dry_run": "print the rendered commands; run nothing",
        "hosts": "NAMES: spread the repos over these build hosts, comma-separated; `local` is this machine "
                 "(default: each repo on its `host`, else here)",
        "accept_new_host_key": RUN_HELP["accept_new_host_key"],
    },
)
def workflow_all(c, name, jobs=Count(0), timeout=Seconds(1800), dry_run=False, hosts="", accept_new_host_key=False):
    """Run a workflow on every repo, concurrently; a table of outcomes and logs."""
    from lib.remote import fleet as fleets
    from lib.batch import check_state, plan_workflow, run_with_progress
    from lib.config import load_workspace
    from lib.remote.hosts import LOCAL
    from lib.views import outcomes_table

    paths = Paths.from_env()
    workspace = load_workspace(paths.repos_file)
    plans = plan_workflow(paths, name, workspace.repos)
    fleet, groups = fleets.plan_groups(paths, workspace.repos, hosts, jobs)
    if dry_run:
        _print_plans(plans, fleet, groups)
        return
    _warn(check_state(paths, name))
    if set(groups) != {LOCAL}:
        run = fleets.run_with_progress(paths, workspace, name, groups, fleet, jobs, timeout or None,
                                       accept_new_host_key, name)
    else:
        run = run_with_progress(paths, workspace, plans, jobs, timeout or None, name)
    print(outcomes_table(run.outcomes))
    _warn(run.notes)
    if run.failing:
        raise Exit(code=1)


@task(
    iterable=["tag"],
    help={
        "net_jobs": "N: repos fetched at once (default 4: ssh servers refuse floods)",
        "timeout": "SECONDS per fetch or clone before it is killed (0: no limit)",
        "clone_missing": "clone repos whose path does not exist from their `remote`",
        "tag": "TAG: only repos with this tag (repeatable)",
        "dry_run": "fetch nothing, change nothing: show what would happen with the refs as they are",
        "host": "NAME: sync the repos in this build host's workspace (<workspace>/<repo name>), same rules; "
                "`local` is this machine",
        "accept_new_host_key": "trust and remember a host key never seen before (like ssh's accept-new)",
    },
)
def sync_all(c, net_jobs=Count(4), timeout=Seconds(300), clone_missing=False, tag=None, dry_run=False, host="",
             accept_new_host_key=False):
    """Fetch every repo and fast-forward its default branch when that is safe."""
    from lib.syncall import run_command
    from lib.views import sync_table

    report = run_command(Paths.from_env(), tag, net_jobs, timeout or None, clone_missing, dry_run, host,
                         accept_new_host_key)
    print(sync_table(report.outcomes))
    print(report.closing_line())
    _warn(report.notes)
    if report.failing:
        raise Exit(code=1)


@task(
    positional=["command"],
    iterable=["tag"],
    help={
        "command": "shell command run with /bin/sh -c in each repo's directory (repo fields in $ORCH_REPO_*)",
        "jobs": "N: repos at once (default: one per core)",
        "timeout": "SECONDS per repo before its process group is killed (0: no limit)",
        "tag": "TAG: only repos with this tag (repeatable)",
        "only": "only these repos, comma-separated",
        "dirty": "only repos with uncommitted changes (from a fresh status)",
        "json": "print {command, results: [{repo, exit_code, status, duration_s, output, log}]} instead",
    },
)
def foreach(c, command=None, jobs=Count(0), timeout=Seconds(1800), tag=None, only="", dirty=False, json=False):
    """Run one shell command in every selected repo, concurrently; output per repo in config order."""
    from lib.config import load_workspace
    from lib.foreach import check_command, choose_repos, run_foreach

    def show(result) -> None:
        print(f"=== {result.outcome.line()} ===")
        print(result.output, end="" if result.output.endswith("\n") or not result.output else "\n", flush=True)

    paths = Paths.from_env()
    command = check_command(command)
    repos = choose_repos(load_workspace(paths.repos_file), paths, tag, _split(only), dirty)
    if not repos:
        why = "no selected repo is dirty" if dirty else "no repo matches both --tag and --only"
        print(jsonlib.dumps({"command": command, "results": []}) if json else f"nothing to do: {why}")
        return
    report = run_foreach(paths, repos, command, jobs, timeout or None, on_result=None if json else show)
    if json:
        print(jsonlib.dumps(report.to_json(), indent=2))
    else:
        print(report.summary_line())
    if report.failing:
        raise Exit(code=1)


@task(
    name="check",
    help={
        "name": "only this host (default: every host of config/hosts.toml)",
        "accept_new_host_key": RUN_HELP["accept_new_host_key"],
    },
)
def host_check(c, name="", accept_new_host_key=False):
    """Connect to each build host: reachable or the exact reason, and git/toolchain versions there."""
    from lib.remote.fleet import Fleet
    from lib.remote.connection import check_hosts
    from lib.views import host_check_table, host_versions_lines

    fleet = Fleet.load(Paths.from_env())
    hosts = [fleet.get(name)] if name else list(fleet.hosts.values())
    if not hosts:
        print(f"no hosts defined in {fleet.source} (add one with `inv host.add`)")
        return
    checks = check_hosts(hosts, accept_new_host_key)
    print(host_check_table(checks))
    for line in host_versions_lines(checks):
        print(line)
    if any(check.problems for check in checks):
        raise Exit(code=1)


@task(
    name="add",
    help={
        "name": "the host's name in config/hosts.toml (used by --host NAME)",
        "host": "its address or DNS name",
        "workspace": "directory on the host that holds the repos (<workspace>/<repo name>); relative: to the login dir",
        "user": "ssh user (default: yours)",
        "port": "ssh port (default 22)",
        "key_file": "private key to log in with (default: ssh-agent and ~/.ssh/id_*)",
        "jobs": "repos tested there at once by test-all --hosts (default 2)",
        "known_hosts": "known_hosts file to check its key against (default ~/.ssh/known_hosts)",
        "connect_timeout": "SECONDS for the TCP connect, the SSH banner and auth each (default 10)",
    },
)
def host_add(c, name, host, workspace, user="", port=Count(22), key_file="", jobs=Count(2), known_hosts="",
             connect_timeout=Seconds(10)):
    """Add a build host to config/hosts.toml (comments and other hosts are kept)."""
    from lib.remote.hosts import add_host, hosts_file

    def typed_here(local: str) -> str | None:  # as the user meant it: relative to where they typed it
        return str(Path(local).expanduser().absolute()) if local else None

    path = hosts_file(Paths.from_env())
    fields = {"host": host, "user": user or None, "port": int(port), "key_file": typed_here(key_file),
              "workspace": workspace, "jobs": int(jobs), "known_hosts": typed_here(known_hosts),
              "connect_timeout": float(connect_timeout)}
    added = add_host(path, name, fields)
    print(f"added host {added.name} ({added.address}, workspace {added.workspace}) to {path}; "
          f"try it: inv host.check --name {added.name}")


@task(name="list")
def host_list(c):
    """List the build hosts of config/hosts.toml."""
    from lib.remote.fleet import Fleet
    from lib.views import plain_table

    fleet = Fleet.load(Paths.from_env())
    rows = [[h.name, h.address, h.workspace, h.jobs, h.key_file or "agent / ~/.ssh", h.known_hosts or "~/.ssh/known_hosts"]
            for h in fleet.hosts.values()]
    print(plain_table(rows, ["HOST", "ADDRESS", "WORKSPACE", "JOBS", "KEY", "KNOWN HOSTS"]) if rows
          else f"no hosts defined in {fleet.source} (add one with `inv host.add`)")


namespace = Collection(status, scan, build, test, test_all, sync_all, workflow, workflow_all, foreach)
namespace.add_collection(Collection("host", host_check, host_add, host_list))


# --- the task lifecycle: tasks/backlog.md -> active.md -> completed.md ---

def _task_store():
    from lib.backlog import TaskStore

    return TaskStore(Paths.from_env().tasks_dir)


@task(
    name="list",
    help={
        "state": "only tasks in this state: backlog, active or completed",
        "repo": "only tasks whose `repo` field is this",
        "json": "print {\"tasks\": [...]} (every field, file and line, age_days) instead of a table",
    },
)
def task_list(c, state="", repo="", json=False):
    """List tasks: id, title, repo, priority, state, age (days since created/started/completed)."""
    from datetime import date

    from lib.views import tasks_table

    found = _task_store().list(state, repo)
    today = date.today()
    if json:
        print(jsonlib.dumps({"tasks": [t.to_json(today) for t in found]}, indent=2))
    else:
        print(tasks_table(found, today) if found else "no tasks" + (f" in {state}" if state else ""))


def _move(verb: str, task_id: str) -> None:
    moved = _task_store().move(verb, task_id)
    print(f"{moved.id} {moved.title}: now {moved.state} ({moved.path})")


@task(name="start", help={"id": "task id, e.g. task-007 (must be in tasks/backlog.md)"})
def task_start(c, id):
    """Move a task from backlog.md to active.md, stamping its started date."""
    _move("start", id)


@task(name="complete", help={"id": "task id, e.g. task-007 (must be in tasks/active.md)"})
def task_complete(c, id):
    """Move a task from active.md to completed.md, stamping its completed date."""
    _move("complete", id)


@task(
    name="add",
    help={
        "title": "short title (one line)",
        "repo": "repo the task is about (required; a name from config/repos.json, not checked)",
        "priority": "high, medium or low (required; any word: a matching `## High Priority` section receives it)",
        "type": "bug-fix, feature, refactor, docs, infra, ...",
        "description": "what needs to be done (one line)",
    },
)
def task_add(c, title, repo="", priority="", type="", description=""):
    """Add a task to backlog.md with the next free task-NNN id across all three files."""
    added = _task_store().add(title, repo, priority, type, description)
    print(f"{added.id} {added.title}: added to {added.path}")


@task(name="show", help={"id": "task id, e.g. task-007"})
def task_show(c, id):
    """Print one task's block as it stands in its file, with its state, file and line."""
    import sys

    found, text = _task_store().show(id)
    print(f"# {found.state}: {found.path}:{found.line}", flush=True)
    out = getattr(sys.stdout, "buffer", None)
    if out is None:  # a captured stdout without bytes
        print(text.decode("utf-8", "replace").rstrip("\r\n"))
    else:
        out.write(text.rstrip(b"\r\n") + b"\n")
        out.flush()


task_collection = Collection("task", task_list, task_start, task_complete, task_add, task_show)
namespace.add_collection(task_collection)


@task(
    help={
        "date": "YYYY-MM-DD: the report's date and file name (default: today)",
        "since": "YYYY-MM-DD: first day of the period for completed tasks (default: 6 days before --date)",
        "notes": "text for the {{notes}} placeholder",
        "force": "replace a report of that date even if it was edited by hand since it was written",
    },
)
def report(c, date="", since="", notes="", force=False):
    """Write reports/weekly-status-DATE.md from reports/templates/weekly-status.md; prints its path."""
    import sys

    from lib.report import write_report

    path, warnings = write_report(Paths.from_env(), date, since, notes, force=force)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(path)


namespace.add_task(report)


# --- workers: the proof-worker orchestrator (scripts/proof-workers), same code as `python3 -m orchestrator` ---

WORKERS_CONFIG_HELP = {
    "config": "a proof-issues.json (default: config/proof-issues.json under ORCHESTRATOR_HOME)",
    "config_dir": "use every *-issues.json in this directory",
    "workers": "N >= 1: number of workers (default: the config's num_workers)",
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
def workers_launch(c, config="", config_dir="", workers=UNSET_WORKERS, session="", dry_run=False, json=False):
    """Launch the tmux session: monitor (window 0), worker-1..N, dashboard."""
    _workers_cli("launch", _flag(dry_run, "--dry-run"), _flag(json, "--json"), config=config,
                 config_dir=config_dir, workers=workers, session=session)


@task(name="monitor", help={**WORKERS_CONFIG_HELP, "cycle": "SECONDS between cycles (0: the config's cycle_interval)",
                            "no_delay": "skip the initial wait", "once": "run one cycle and exit"})
def workers_monitor(c, config="", config_dir="", workers=UNSET_WORKERS, session="", cycle=Seconds(0), no_delay=False,
                    once=False):
    """Run the monitor loop (launch starts it in window 0)."""
    _workers_cli("monitor", *(["--cycle", cycle] if cycle else []), _flag(no_delay, "--no-delay"),
                 _flag(once, "--once"), config=config, config_dir=config_dir, workers=workers, session=session)


@task(name="status", help={**WORKERS_CONFIG_HELP, "json": "print the status document as JSON"})
def workers_status(c, config="", config_dir="", workers=UNSET_WORKERS, session="", json=False):
    """Show workers, issues, waves, next eligible and failures once."""
    _workers_cli("status", _flag(json, "--json"), config=config, config_dir=config_dir, workers=workers,
                 session=session)


@task(name="dashboard", help={**WORKERS_CONFIG_HELP, "interval": "SECONDS between redraws",
                              "once": "draw one frame and exit"})
def workers_dashboard(c, config="", config_dir="", workers=UNSET_WORKERS, session="", interval=Seconds(2), once=False):
    """Live read-only view of the workers (Ctrl-C quits)."""
    _workers_cli("dashboard", "--interval", interval, _flag(once, "--once"), config=config, config_dir=config_dir,
                 workers=workers, session=session)


@task(name="cleanup", help={**WORKERS_CONFIG_HELP, "keep_worktrees": "kill the session only",
                            "force": "also remove worktrees with unsaved work, after saving it on a backup ref",
                            "json": "print the outcome as JSON"})
def workers_cleanup(c, config="", config_dir="", workers=UNSET_WORKERS, session="", keep_worktrees=False, force=False,
                    json=False):
    """Kill the session and agents; remove worktrees that are clean and pushed (exit 1 if any is kept)."""
    _workers_cli("cleanup", _flag(keep_worktrees, "--keep-worktrees"), _flag(force, "--force"),
                 _flag(json, "--json"), config=config, config_dir=config_dir, workers=workers, session=session)


@task(name="repin", help={**WORKERS_CONFIG_HELP, "repo": "only this repo (a name from the config's repos)",
                          "json": "print what was pinned as JSON"})
def workers_repin(c, config="", config_dir="", workers=UNSET_WORKERS, session="", repo="", json=False):
    """Pin each repo's push target again (repos.json remote, else origin's push url now)."""
    _workers_cli("repin", *(["--repo", repo] if repo else []), _flag(json, "--json"), config=config,
                 config_dir=config_dir, workers=workers, session=session)


@task(name="add-issue", help={"number": "the new issue's number", "title": "its title",
                              "priority": "lower runs first (default 1)", "wave": "wave number (default 1)",
                              "depends_on": "issue numbers it waits for, comma-separated",
                              "description": "what the agent should do",
                              "repo": "its repo, a name from the config's repos (required when it has several; "
                                      "with --config-dir it also picks the config)",
                              "config": WORKERS_CONFIG_HELP["config"],
                              "config_dir": "a directory of *-issues.json: append to the one with --repo"})
def workers_add_issue(c, number, title, priority=Count(1), wave=Count(1), depends_on="", description="", repo="",
                      config="", config_dir=""):
    """Append an issue to the config (a running monitor picks it up)."""
    _workers_cli("add-issue", number, "--title", title, "--priority", priority, "--wave", wave,
                 *(["--depends-on", depends_on] if depends_on else []),
                 *(["--description", description] if description else []), *(["--repo", repo] if repo else []),
                 config=config, config_dir=config_dir)


@task(name="pause", help={**WORKERS_CONFIG_HELP, "project": "only this project (default: every project of the run)",
                          "issue": "only this issue (0: the project and all its issues)",
                          "detail": "why, shown by status"})
def workers_pause(c, config="", config_dir="", workers=UNSET_WORKERS, session="", project="", issue=Count(0),
                  detail=""):
    """Pause the project(s) or one issue (reason user): no try starts; running tries finish."""
    _workers_cli("pause", *(["--project", project] if project else []), *(["--issue", issue] if issue else []),
                 *(["--detail", detail] if detail else []), config=config, config_dir=config_dir, workers=workers,
                 session=session)


@task(name="resume", help={**WORKERS_CONFIG_HELP, "project": "only this project (default: every project of the run)",
                           "issue": "only this issue (0: the project and all its issues)"})
def workers_resume(c, config="", config_dir="", workers=UNSET_WORKERS, session="", project="", issue=Count(0)):
    """Clear the user, alert and auth pauses of the project(s), or of one issue."""
    _workers_cli("resume", *(["--project", project] if project else []), *(["--issue", issue] if issue else []),
                 config=config, config_dir=config_dir, workers=workers, session=session)


WORKERS_ISSUE_HELP = {**WORKERS_CONFIG_HELP, "issue": "the issue's number",
                      "project": "the issue's project (needed when several have the number)"}


@task(name="attach", help=WORKERS_ISSUE_HELP)
def workers_attach(c, issue, config="", config_dir="", workers=UNSET_WORKERS, session="", project=""):
    """Show the tmux window of the worker running an issue (attach, or switch inside tmux)."""
    _workers_cli("attach", issue, *(["--project", project] if project else []), config=config,
                 config_dir=config_dir, workers=workers, session=session)


@task(name="logs", help={**WORKERS_ISSUE_HELP, "follow": "keep printing the running try's log until it ends"})
def workers_logs(c, issue, config="", config_dir="", workers=UNSET_WORKERS, session="", project="", follow=False):
    """Print an issue's try logs in order (no monitor needed)."""
    _workers_cli("logs", issue, *(["--project", project] if project else []), _flag(follow, "--follow"),
                 config=config, config_dir=config_dir, workers=workers, session=session)


@task(name="diff", help={**WORKERS_ISSUE_HELP, "stat": "only the diffstat"})
def workers_diff(c, issue, config="", config_dir="", workers=UNSET_WORKERS, session="", project="", stat=False):
    """An issue's branch against its merge-base with the default branch, recorded when it was assigned."""
    _workers_cli("diff", issue, *(["--project", project] if project else []), _flag(stat, "--stat"),
                 config=config, config_dir=config_dir, workers=workers, session=session)


@task(name="init", help={"repo": "the repo: a name from config/repos.json",
                         "pipeline": "its stages, comma-separated (empty: implement)",
                         "config": "where to write (empty: config/proof-issues.json under ORCHESTRATOR_HOME); never "
                                   "overwritten",
                         "agent_command": "the agent_command to write (empty: none, Claude Code with structured "
                                          "output)"})
def workers_init(c, repo="", pipeline="", config="", agent_command=""):
    """Write a starter proof-issues.json for a repo of repos.json (refuses to overwrite)."""
    _workers_cli("init", *(["--repo", repo] if repo else []), *(["--pipeline", pipeline] if pipeline else []),
                 *(["--agent-command", agent_command] if agent_command else []), config=config)


STEER_HELP = {**WORKERS_CONFIG_HELP, "issue": "the issue number",
              "project": "the issue's project (default: the run's only project)",
              "wait": "SECONDS to wait for a running monitor to apply it (0: the default, 30)"}


def _steer_cli(verb: str, issue: object, *extra: object, project: str = "", wait: float = 0, config: str = "",
               config_dir: str = "", workers: int = 0, session: str = "") -> None:
    """A steering verb: options first, then `--` and the issue (and text), so a text starting with `-` is text."""
    options = [(f, v) for f, v in (("--project", project), ("--wait", wait), ("--config", config),
                                   ("--config-dir", config_dir), ("--workers", workers), ("--session", session)) if v]
    _workers_cli(verb, *(x for pair in options for x in pair), "--", issue, *extra)


@task(name="retry", help=STEER_HELP)
def workers_retry(c, issue, config="", config_dir="", workers=UNSET_WORKERS, session="", project="", wait=Seconds(0)):
    """Put a failed issue back to pending, its retries reset (its branch and commits are kept)."""
    _steer_cli("retry", issue, project=project, wait=wait, config=config, config_dir=config_dir, workers=workers,
               session=session)


@task(name="kill", help=STEER_HELP)
def workers_kill(c, issue, config="", config_dir="", workers=UNSET_WORKERS, session="", project="", wait=Seconds(0)):
    """Stop an issue's running try now; the issue fails with `killed by user` (no automatic retry)."""
    _steer_cli("kill", issue, project=project, wait=wait, config=config, config_dir=config_dir, workers=workers,
               session=session)


@task(name="send", help={**STEER_HELP, "text": "the instruction (quote it)"})
def workers_send(c, issue, text, config="", config_dir="", workers=UNSET_WORKERS, session="", project="", wait=Seconds(0)):
    """Give an issue's agent a follow-up instruction: to the running agent where it takes streaming input, else at
    the start of the issue's next try."""
    _steer_cli("send", issue, text, project=project, wait=wait, config=config, config_dir=config_dir,
               workers=workers, session=session)


namespace.add_collection(Collection("workers", workers_launch, workers_monitor, workers_status, workers_dashboard,
                                    workers_cleanup, workers_repin, workers_add_issue, workers_pause,
                                    workers_resume, workers_retry, workers_kill, workers_send, workers_attach,
                                    workers_logs, workers_diff, workers_init))
