"""Run planned workflows on one or many repos; each repo ends with one outcome, recorded in state/."""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from time import monotonic
from typing import Any, BinaryIO, Callable, Iterable, Sequence
from xml.etree import ElementTree

from lib import runner
from lib.config import Repo, Workspace
from lib.gitstatus import without_repo_local_git_vars
from lib.paths import Paths
from lib.progress import Progress
from lib.statefile import read_json, update_json
from lib.workflows import Plan, get_workflow, load_workflows, plan_for

STATUSES = ("passed", "failed", "timeout", "skipped", "error")
FAILING = {"failed", "timeout", "error"}
# Characters XML 1.0 cannot carry (terminal escapes in a test log, say).
XML_INVALID_RE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Outcome:
    repo: str
    language: str
    status: str
    exit_code: int | None
    duration_s: float
    command: str
    log: str
    reason: str | None
    finished_at: str

    @property
    def failing(self) -> bool:
        return self.status in FAILING

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        detail = f" ({self.reason})" if self.reason else ""
        return f"{self.repo}: {self.status}{detail} in {self.duration_s:.1f}s"


# Set when we run under `make test-all`; a repo's own make must not inherit our
# make's level or jobserver (it would print "make[1]: ..." or warn about it).
PARENT_MAKE_VARS = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


def command_env() -> dict[str, str]:
    env = {k: v for k, v in without_repo_local_git_vars(os.environ).items() if k not in PARENT_MAKE_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _header(log: BinaryIO, plan: Plan) -> None:
    log.write(f"# orchestrator {plan.workflow} {plan.repo.name} at {now_iso()}\n".encode())


def execute(plan: Plan, timeout: float | None, echo: BinaryIO | None = None,
            grace: float = runner.GRACE_S) -> Outcome:
    """Run a plan's commands in order, stopping at the first failure; never raises for the repo's sake."""
    started = monotonic()

    def outcome(status: str, exit_code: int | None = None, reason: str | None = None) -> Outcome:
        return Outcome(plan.repo.name, plan.repo.language, status, exit_code, round(monotonic() - started, 3),
                       plan.command_line, str(plan.log), reason, now_iso())

    try:
        plan.log.parent.mkdir(parents=True, exist_ok=True)
        log = open(plan.log, "wb")
    except OSError as err:
        return outcome("error", reason=f"cannot write log {plan.log}: {err.strerror}")
    with log:
        _header(log, plan)
        path = plan.repo.local
        problem = None if path.is_dir() else ("path does not exist" if not path.exists() else "path is not a directory")
        if problem:
            log.write(f"error: {problem}: {path}\n".encode())
            return outcome("error", reason=problem)
        if plan.skip_reason:
            log.write(f"skipped: {plan.skip_reason}\n".encode())
            return outcome("skipped", reason=plan.skip_reason)
        env = command_env()
        for command in plan.commands:
            remaining = None if timeout is None else max(0.0, timeout - (monotonic() - started))
            log.write(f"$ cd {command.cwd}\n$ {command.command}\n".encode())
            if not command.cwd.is_dir():
                log.write(f"error: directory does not exist: {command.cwd}\n".encode())
                return outcome("error", reason=f"directory does not exist: {command.cwd}")
            result = runner.run_in_group(command.script, command.cwd, log, remaining, {**env, **dict(command.env)},
                                         echo, grace)
            if result.timed_out:
                log.write(f"\ntimeout: killed after {timeout:g}s\n".encode())
                return outcome("timeout", reason=f"timed out after {timeout:g}s")
            if result.exit_code != 0:
                return outcome("failed", result.exit_code, f"exit {result.exit_code}")
        return outcome("passed", 0)


def execute_many(plans: Sequence[Plan], jobs: int, timeout: float | None,
                 on_start: Callable[[Plan], None] | None = None,
                 on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run plans concurrently (bounded); outcomes come back in plan order."""
    return runner.run_each(plans, lambda plan: execute(plan, timeout), jobs, on_start, on_done)


def count_statuses(statuses: Iterable[str]) -> dict[str, int]:
    """How many of each status, in order of first appearance."""
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items()) or "nothing to do"


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The state files' summary: a total and a count for every status, zeros included."""
    return {"total": len(results), **dict.fromkeys(STATUSES, 0), **count_statuses(r["status"] for r in results)}


def record(state_file: Path, outcomes: Sequence[Outcome], known_repos: set[str]) -> dict[str, Any]:
    """Merge outcomes into a results file by repo (a rerun replaces its repo's entry)."""

    def merge(document: Any) -> dict[str, Any]:
        previous = document.get("results", []) if isinstance(document, dict) else []
        by_repo = {r["repo"]: r for r in previous if isinstance(r, dict) and r.get("repo") in known_repos}
        by_repo.update({o.repo: o.to_json() for o in outcomes})
        results = sorted(by_repo.values(), key=lambda r: r["repo"])
        return {"generated_at": now_iso(), "summary": summarize(results), "results": results}

    return update_json(state_file, merge, default={})


def previously_failing(state_file: Path) -> list[str]:
    document = read_json(state_file, default={}) or {}
    return [r["repo"] for r in document.get("results", []) if r.get("status") in ("failed", "timeout")]


def tail(path: Path, lines: int = 50, max_bytes: int = 256 * 1024) -> str:
    """The last lines of a log, read from its end (logs can be huge and not UTF-8)."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - max_bytes))
            data = log.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def write_junit(path: Path, outcomes: Sequence[Outcome], suite: str = "test-all") -> None:
    failures = sum(1 for o in outcomes if o.status in ("failed", "timeout"))
    errors = sum(1 for o in outcomes if o.status == "error")
    skipped = sum(1 for o in outcomes if o.status == "skipped")
    root = ElementTree.Element("testsuites")
    tests = ElementTree.SubElement(root, "testsuite", name=f"orchestrator {suite}", tests=str(len(outcomes)),
                                   failures=str(failures), errors=str(errors), skipped=str(skipped),
                                   time=f"{sum(o.duration_s for o in outcomes):.3f}", timestamp=now_iso())
    for o in outcomes:
        case = ElementTree.SubElement(tests, "testcase", classname=f"orchestrator.{suite}", name=o.repo,
                                      time=f"{o.duration_s:.3f}")
        if o.status in ("failed", "timeout"):
            node = ElementTree.SubElement(case, "failure", message=o.reason or o.status, type=o.status)
            node.text = XML_INVALID_RE.sub("\ufffd", tail(Path(o.log)))
        elif o.status == "error":
            ElementTree.SubElement(case, "error", message=o.reason or "error", type="error")
        elif o.status == "skipped":
            ElementTree.SubElement(case, "skipped", message=o.reason or "skipped")
        ElementTree.SubElement(case, "system-out").text = f"log: {o.log}\ncommand: {o.command}"
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def results_file(paths: Paths, workflow: str) -> Path | None:
    """Where a workflow's outcomes are kept: build and test have state files."""
    return {"build": paths.build_results_file, "test": paths.test_results_file}.get(workflow)


def plan_workflow(paths: Paths, workflow: str, repos: Sequence[Repo]) -> list[Plan]:
    """Plans for `repos`; loading workflows.json is where every config error surfaces."""
    chosen = get_workflow(load_workflows(paths), workflow)
    return [plan_for(chosen, repo, paths.log_dir) for repo in repos]


def default_jobs() -> int:
    """Builds and tests are CPU work: one repo per core."""
    return os.cpu_count() or 2


def run_with_progress(paths: Paths, workspace: Workspace, plans: Sequence[Plan], jobs: int,
                      timeout: float | None, label: str) -> list[Outcome]:
    """Run plans on many repos with the live line (terminal) or one line per repo, then record."""
    with Progress(label, len(plans)) as progress:
        return run_and_record(paths, workspace, plans, jobs or default_jobs(), timeout,
                              on_start=lambda plan: progress.start(plan.repo.name),
                              on_done=lambda o: progress.finish(o.repo, o.line(), o.failing))


def run_and_record(paths: Paths, workspace: Workspace, plans: Sequence[Plan], jobs: int, timeout: float | None,
                   on_start: Callable[[Plan], None] | None = None,
                   on_done: Callable[[Outcome], None] | None = None,
                   echo: BinaryIO | None = None) -> list[Outcome]:
    if len(plans) == 1 and echo is not None:
        outcomes = [execute(plans[0], timeout, echo)]
    else:
        outcomes = execute_many(plans, jobs, timeout, on_start, on_done)
    state_file = results_file(paths, plans[0].workflow) if plans else None
    if state_file is not None:
        record(state_file, outcomes, {r.name for r in workspace.repos})
    return outcomes
