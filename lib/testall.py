"""The test-all use case: choose repos, run their tests concurrently, record and report."""
from __future__ import annotations

import json
import math
import os
import shlex
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import Any

from lib.batch import (
    Outcome,
    RunStatus,
    check_report_path,
    check_state,
    keep_results,
    plan_workflow,
    previously_failing,
    run_with_progress,
    write_junit,
)
from lib.config import Repo, Workspace
from lib.errors import OrchestratorError
from lib.gitstatus import STATUS_ARGS, confined_to, git_env
from lib.paths import Paths
from lib.remote import fleet as fleets
from lib.results import count_statuses, counts_text, now_iso, results_problem, summarize
from lib.remote.hosts import LOCAL
from lib.runner import RunInterrupted, stopping
from lib.scan import ScanStopped, scan_workspace, stoppable_git_reads
from lib.signals import signal_name
from lib.statefile import read_json
from lib.views import outcomes_table
from lib.workflows import Plan


# A timeout sends SIGINT first (pytest, go test and node then print where they hung), SIGTERM this much later.
INTERRUPT_GRACE_S = 10.0


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


@dataclass(frozen=True)
class TestAllOptions:
    """What `inv test-all` and scripts/run_all_tests.py take (docs/build-and-test.md), checked here for both."""

    __test__ = False  # not a pytest class

    jobs: int = 0  # 0: one per core
    timeout: float = 1800.0  # seconds per repo; 0: no limit
    junit_xml: Path | None = None
    tags: list[str] | None = None
    only: list[str] | None = None
    failed: bool = False
    changed: bool = False
    hosts: str = ""
    accept_new_host_key: bool = False
    grace: float = INTERRUPT_GRACE_S
    dry_run: bool = False
    matrix: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 0:
            raise OrchestratorError(f"--jobs: expected a whole number >= 0, got {self.jobs!r}")
        for name in ("timeout", "grace"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                    or not math.isfinite(value):
                raise OrchestratorError(f"--{name}: expected a finite number of seconds >= 0, got {value!r}")


@dataclass
class TestAllAnswer:
    """What the front doors print: `lines` (the CI matrix, a dry run, nothing to test), else the run's report."""

    __test__ = False  # not a pytest class

    lines: list[str]
    report: TestAllReport | None = None
    document: dict[str, Any] | None = None  # what --json prints instead of `lines` (nothing to test, a dry run)


@dataclass
class Printout:
    """What a front door prints: `out` on stdout, then `err` on stderr, and exits `code`."""

    out: list[str]
    err: list[str] = field(default_factory=list)
    code: int = 0


def state_warnings(paths: Paths, options: TestAllOptions) -> list[str]:
    """Before a run: a results file that cannot be read is set aside, a `warning:` line each (none for a dry run
    or a matrix, which write nothing)."""
    return [] if options.dry_run or options.matrix else check_state(paths, "test")


def printout(answer: TestAllAnswer, as_json: bool) -> Printout:
    """`inv test-all`'s and scripts/run_all_tests.py's output for `answer`: its document (--json) or lines, else
    the run's table (or JSON) and summary, its notes on stderr; exit 1 when a repo failed."""
    if as_json and answer.document is not None:  # nothing to test, a dry run: one JSON document too
        return Printout([json.dumps(answer.document, indent=2)])
    out = list(answer.lines)
    report = answer.report
    if report is None:
        return Printout(out)
    if as_json:
        out.append(json.dumps(report.to_json(), indent=2))
    else:
        out += [outcomes_table(report.outcomes), f"{report.summary_line()} -> {report.state_file}"]
    return Printout(out, list(report.notes), 1 if report.failing else 0)


def run_command(workspace: Workspace, paths: Paths, options: TestAllOptions) -> TestAllAnswer:
    """`inv test-all` and scripts/run_all_tests.py: plan (every config or usage error first, exit 2), then the
    matrix, the dry run, or the run here (lib.testall's own) or spread over the build hosts."""
    plans = plan_test_all(workspace, paths, options.tags, options.only, options.failed, options.junit_xml)
    fleet, groups = fleets.plan_groups(paths, [p.repo for p in plans], options.hosts, options.jobs)
    if options.changed and set(groups) - {LOCAL}:
        raise OrchestratorError("--changed: only for repos tested here; leave out --hosts and repos' `host`")
    if options.matrix:  # one line: what a CI step puts in $GITHUB_OUTPUT
        return TestAllAnswer([json.dumps(ci_matrix(plans, groups))])
    if not plans:
        nothing = "nothing to test" + (" (nothing failed last time)" if options.failed else "")
        return TestAllAnswer([nothing], document={**TestAllReport([], 0, paths.test_results_file).to_json(),
                                                  "note": nothing})
    if options.dry_run:
        return TestAllAnswer(fleets.dry_run_lines(plans, fleet, groups),
                             document=fleets.dry_run_document(plans, fleet, groups))
    timeout = options.timeout or None
    if set(groups) <= {LOCAL}:
        return TestAllAnswer([], run_test_all(workspace, paths, plans, options.jobs, timeout, options.junit_xml,
                                              options.changed, options.grace))
    return TestAllAnswer([], run_over_hosts(workspace, paths, plans, fleet, groups, options.jobs, timeout,
                                            options.junit_xml, options.accept_new_host_key))


def run_over_hosts(workspace: Workspace, paths: Paths, plans: list[Plan], fleet: fleets.Fleet,
                   groups: dict[str, list[Repo]], jobs: int, timeout: float | None, junit_xml: Path | None,
                   accept_new_host_key: bool = False) -> TestAllReport:
    """test-all spread over build hosts (and here): one results file, one JUnit report."""
    started = monotonic()
    notes = unfinished_junit(junit_xml, plans)  # what a run killed outright leaves: red, not an old green
    begun: dict[str, float] = {}  # as in run_test_all: a stopped run's report names every repo

    def on_start(plan: Plan) -> None:
        if not stopping():  # a host's pool may still hand out a repo while the stop is under way: not run
            begun.setdefault(plan.repo.name, monotonic())

    try:
        run = fleets.run_with_progress(paths, workspace, "test", groups, fleet, jobs, timeout, accept_new_host_key,
                                       "testing", on_start=on_start)
    except RunInterrupted as stop:
        host_of = {repo.name: host for host, repos in groups.items() for repo in repos}
        stop.notes += junit_notes(junit_xml, stopped_outcomes(plans, stop.results, begun, host_of),
                                  monotonic() - started, signal_name(stop.signum))
        raise
    return TestAllReport(run.outcomes, monotonic() - started, paths.test_results_file,
                         notes + run.notes + junit_notes(junit_xml, run.outcomes, monotonic() - started))


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


def ci_matrix(plans: list[Plan], groups: dict[str, list[Repo]]) -> dict[str, Any]:
    """The selected repos as a CI matrix (GitHub's `strategy.matrix` shape): one entry per repo to fan out,
    with the host it would be tested on (`local`, or a build host: see lib.remote.fleet.plan_groups)."""
    host_of = {repo.name: host for host, repos in groups.items() for repo in repos}
    return {"include": [{"repo": p.repo.name, "language": p.repo.language, "host": host_of.get(p.repo.name, LOCAL)}
                        for p in plans]}


def run_test_all(workspace: Workspace, paths: Paths, plans: list[Plan], jobs: int, timeout: float | None,
                 junit_xml: Path | None = None, changed: bool = False,
                 grace: float = INTERRUPT_GRACE_S) -> TestAllReport:
    """Run and record; interrupted (runner.RunInterrupted), the repos that finished are recorded and reported.

    `changed`: a repo whose HEAD, clean tree, command and host are those of its last
    passed run is reported passed (`cached`) without running, and a pass is recorded
    as one it may trust. Without it no git runs: the run neither reads nor records that.
    """
    started = monotonic()
    notes = unfinished_junit(junit_xml, plans)
    previous = previous_results(paths.test_results_file)
    cached: list[Outcome] = []
    to_run: list[Plan] = list(plans)
    before: dict[str, tuple[str, bool]] = {}
    try:
        if changed:
            before = tree_states(workspace, [plan.repo for plan in plans])
            to_run = []
            with stoppable_git_reads():  # why_not_cacheable: asked only of a repo that would otherwise be cached
                for plan in plans:
                    since = unchanged_since(plan, before.get(plan.repo.name), previous.get(plan.repo.name))
                    if since is None or why_not_cacheable(plan.repo.local):
                        to_run.append(plan)
                    else:
                        cached.append(cached_outcome(plan, previous[plan.repo.name], since))
    except ScanStopped as stop:  # stopped before any test ran: CI's report says so, as for a stopped run
        stop.notes += notes + junit_notes(junit_xml, stopped_outcomes(plans, [], {}), monotonic() - started,
                                          signal_name(stop.signum))
        raise
    to_run = longest_first(to_run, previous)
    begun: dict[str, float] = {}  # repo -> when its tests started (a pool thread writes, we read after the stop)
    try:
        run = run_with_progress(paths, workspace, to_run, jobs, timeout, "testing",
                                on_start=lambda plan: begun.setdefault(plan.repo.name, monotonic()),
                                interrupt_grace=grace)
    except RunInterrupted as stop:
        everything = stopped_outcomes(plans, stop.results + cached, begun)
        stop.notes += junit_notes(junit_xml, everything, monotonic() - started, signal_name(stop.signum))
        raise
    marked: list[Outcome] = []
    try:
        if changed:  # what a later --changed may trust: a scan and up to one git per passed repo
            after = tree_states(workspace, [plan.repo for plan in to_run])
            with stoppable_git_reads():
                marked = mark_last_passed(run.outcomes, before, after,
                                           {plan.repo.name: command_text(plan) for plan in to_run},
                                           {plan.repo.name: plan.repo.local for plan in to_run})
    except ScanStopped as stop:  # every repo was tested and recorded: CI's report says so, not "did not finish"
        stop.notes += notes + run.notes + junit_notes(junit_xml, in_plan_order(plans, run.outcomes + cached),
                                                      monotonic() - started)
        raise
    # Recorded again with what --changed trusts or why it may not (a run where every repo was cached recorded
    # nothing yet).
    if marked or cached:
        run.notes += keep_results(paths.test_results_file, marked + cached, workspace)
    notes += run.notes
    outcomes = in_plan_order(plans, run.outcomes + cached)
    notes += junit_notes(junit_xml, outcomes, monotonic() - started)
    return TestAllReport(outcomes, monotonic() - started, paths.test_results_file, notes)


def longest_first(plans: list[Plan], previous: dict[str, dict[str, Any]]) -> list[Plan]:
    """Start order: repos never timed first (they may be the slowest), then by last duration, longest first.

    The slowest repo then never starts last, so the wall time approaches
    max(slowest repo, sum / jobs). A cached entry's 0 s is not a duration: unknown.
    """
    def key(plan: Plan) -> tuple[int, float]:
        entry = previous.get(plan.repo.name) or {}
        seconds = entry.get("duration_s")
        if entry.get("cached") or isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            return (0, 0.0)
        return (1, -float(seconds))

    return sorted(plans, key=key)  # stable: config order among equals


# A submodule's changes are code the tests run, whatever `ignore` in .gitmodules or `diff.ignoreSubmodules`
# tells git status: the scan --changed trusts reads them (its one status per repo).
TREE_STATUS_ARGS = (*STATUS_ARGS, "--ignore-submodules=none")


def tree_states(workspace: Workspace, repos: list[Repo]) -> dict[str, tuple[str, bool]]:
    """Repo name -> (HEAD, clean work tree, submodules included), from one status scan; a repo git cannot
    read is left out.

    A stop signal during it is lib.scan.ScanStopped (its gits are killed first).
    """
    if not repos:
        return {}
    report = scan_workspace(Workspace(workspace.config_file, tuple(repos)), status_args=TREE_STATUS_ARGS)
    return {s.name: (s.head, bool(s.clean)) for s in report.repos if s.head and not s.error}


# What `git status` never looks at, yet is code the tests run: index entries marked assume-unchanged
# (ls-files -v: a lowercase tag) or skip-worktree (`S`). The status itself is tree_states' scan.
HIDDEN_CHECK_TIMEOUT_S = 300.0
NOT_CACHEABLE = "not cacheable by --changed"
GITLINK_MODE = b"160000"


def why_not_cacheable(path: Path) -> str | None:
    """Why a repo tree_states found clean must run all the same (None: nothing hidden): its index keeps git status
    from seeing edits, it has submodules, or git cannot tell. One `git ls-files`, no second status.

    A submodule (a gitlink in the index, or a .gitmodules file) hides edits no look at this repo sees: marks in
    its own index, a nested submodule its .gitmodules ignores. Proving every one unchanged, recursively, would
    be a scan of its own: such a repo runs its tests every time instead.
    """
    try:
        result = subprocess.run(["git", "-C", str(path), "ls-files", "-v", "-s", "-z"], stdin=subprocess.DEVNULL,
                                capture_output=True, env=confined_to(path, git_env()),
                                timeout=HIDDEN_CHECK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"{NOT_CACHEABLE}: git ls-files did not finish within {HIDDEN_CHECK_TIMEOUT_S:g} s"
    except OSError as err:
        return f"{NOT_CACHEABLE}: cannot run git: {err.strerror or err}"
    if result.returncode != 0:
        return f"{NOT_CACHEABLE}: git ls-files failed"
    hidden = submodules = False
    for entry in result.stdout.split(b"\0"):
        if not entry:
            continue
        fields, _, name = entry.partition(b"\t")  # `<tag> <mode> <object> <stage>\t<path>`
        tag, _, rest = fields.partition(b" ")
        hidden = hidden or tag.islower() or tag == b"S"
        # A tracked .gitmodules: the file may be absent from the work tree (a sparse checkout's skip-worktree).
        submodules = submodules or rest.startswith(GITLINK_MODE + b" ") or name == b".gitmodules"
    if submodules or os.path.lexists(path / ".gitmodules"):  # an untracked one too (ignored: status shows none)
        return f"{NOT_CACHEABLE}: it has submodules"
    if hidden:
        return f"{NOT_CACHEABLE}: files marked assume-unchanged or skip-worktree"
    return None


def previous_results(state_file: Path) -> dict[str, dict[str, Any]]:
    """The results file's entries by repo; a file that is missing or malformed has none."""
    try:
        document = read_json(state_file, default={}) or {}
    except (OSError, ValueError, OrchestratorError):
        return {}
    if results_problem(document):
        return {}
    return {r["repo"]: r for r in document.get("results", [])}


def unchanged_since(plan: Plan, state: tuple[str, bool] | None, entry: dict[str, Any] | None) -> str | None:
    """When the repo's last passed run was, if its HEAD, clean tree, command and host are the same now; else None."""
    if state is None or entry is None or plan.skip_reason or entry.get("status") != RunStatus.PASSED:
        return None
    head, clean = state
    last = entry.get("last_passed")
    if not clean or not isinstance(last, dict) or not isinstance(last.get("at"), str):
        return None
    if (last.get("head"), last.get("command"), last.get("host"), last.get("machine")) != (
            head, command_text(plan), LOCAL, this_machine()):
        return None  # "local" is every machine's name for itself: a results file copied from another one runs
    return last["at"]


def this_machine() -> str:
    """The name of the machine a pass was recorded on (its host name): a cache from another machine never counts."""
    return socket.gethostname()


def cached_outcome(plan: Plan, entry: dict[str, Any], since: str) -> Outcome:
    counts = entry.get("counts")
    log = entry.get("log")
    return Outcome(plan.repo.name, plan.repo.language, RunStatus.PASSED, 0, 0.0, plan.command_line,
                   log if isinstance(log, str) else None, f"unchanged since {since}", now_iso(), LOCAL,
                   counts if isinstance(counts, dict) else None, cached=True, last_passed=entry["last_passed"])


def command_text(plan: Plan) -> str:
    """The command text --changed compares: each command, with the directory it runs in when that is not the
    repo's own (a workflow's `cd` step moves the same command to another suite)."""
    parts = []
    for command in plan.commands:
        where = os.path.relpath(command.cwd, plan.repo.local)
        parts.append(command.command if where == "." else f"cd {shlex.quote(where)} && {command.command}")
    return " && ".join(parts)


def mark_last_passed(outcomes: list[Outcome], before: dict[str, tuple[str, bool]],
                     after: dict[str, tuple[str, bool]], commands: dict[str, str],
                     paths: dict[str, Path]) -> list[Outcome]:
    """Mark each passed repo whose HEAD and clean tree held from before the run to after it: `last_passed`, what
    --changed may trust, or, when it may not all the same (why_not_cacheable), why in its reason. Returns them."""
    marked = []
    for outcome in outcomes:
        state = before.get(outcome.repo)
        held = state is not None and state[1] and after.get(outcome.repo) == state
        if outcome.status != RunStatus.PASSED or outcome.host != LOCAL or not held:
            continue
        # What git status hides is asked after the run only (a git per passed repo, not per repo twice).
        why_not = why_not_cacheable(paths[outcome.repo])
        if why_not:
            outcome.reason = "; ".join(filter(None, (outcome.reason, why_not)))
        else:
            outcome.last_passed = {"head": state[0], "command": commands.get(outcome.repo, outcome.command),
                                   "host": LOCAL, "machine": this_machine(), "at": outcome.finished_at}
        marked.append(outcome)
    return marked


def in_plan_order(plans: list[Plan], outcomes: list[Outcome]) -> list[Outcome]:
    by_repo = {o.repo: o for o in outcomes}
    return [by_repo[plan.repo.name] for plan in plans if plan.repo.name in by_repo]


def stopped_outcomes(plans: list[Plan], finished: list[Outcome], begun: dict[str, float],
                     host_of: dict[str, str] | None = None) -> list[Outcome]:
    """Every planned repo of a stopped run, in plan order: its outcome, else `error: interrupted` (killed
    while running) or `skipped: not run: interrupted` (never started), on the host it was given to (`host_of`;
    else here). For the report only, never recorded."""
    done = {o.repo: o for o in finished}
    now = monotonic()
    outcomes = []
    for plan in plans:
        if plan.repo.name in done:
            outcomes.append(done[plan.repo.name])
            continue
        status, reason = (RunStatus.ERROR, "interrupted") if plan.repo.name in begun \
            else (RunStatus.SKIPPED, "not run: interrupted")
        ran = round(now - begun[plan.repo.name], 3) if plan.repo.name in begun else 0.0
        outcomes.append(Outcome(plan.repo.name, plan.repo.language, status, None, ran, plan.command_line,
                                str(plan.log), reason, now_iso(), (host_of or {}).get(plan.repo.name, LOCAL)))
    return outcomes


UNFINISHED = "did not finish: the run was killed before it wrote its report"


def unfinished_junit(junit_xml: Path | None, plans: list[Plan]) -> list[str]:
    """Before anything runs: a report whose every repo is an error, which the run's own report replaces.

    A run killed outright (SIGKILL, the OOM killer, a hard CI cancel) then leaves a red report at the path
    CI reads, never the green one of an earlier run.
    """
    if junit_xml is None:
        return []
    outcomes = [Outcome(plan.repo.name, plan.repo.language, RunStatus.ERROR, None, 0.0, plan.command_line, None,
                        UNFINISHED, now_iso()) for plan in plans]
    try:
        write_junit(junit_xml, outcomes, wall_s=0.0, unfinished=True)
    except OSError as err:
        return [f"warning: JUnit report not written to {junit_xml}: {err.strerror or err}"]
    return []


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
