"""Workflows across build hosts: each repo on its host or here, each host its own bounded pool, one record.

A plan runs on a host as `batch.execute` runs it here (`execute_remote`): same steps, and the same recorder
(`batch.Recorder`: the log written locally, the outcome); the command itself goes through
`lib.remote.connection.run_remote`.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

from lib import batch, runner
from lib.config import LANGUAGE_MARKERS, LANGUAGES, Repo, Workspace
from lib.errors import OrchestratorError
from lib.paths import Paths
from lib.progress import Progress
from lib.remote import connection as remote
from lib.remote.hosts import LOCAL, Host, get_host, hosts_file, load_hosts
from lib.workflows import Plan, Workflow, first_tool, get_workflow, load_workflows, plan_for


class NotPlanned(remote.HostUnreachable):
    """The host answered, but looking at its repos failed for a reason that is not the link (connection.failure):
    every repo's error, said as what it is, never `host unreachable`."""


@dataclass
class Fleet:
    """The hosts of hosts.toml and the file they came from (for error messages)."""

    hosts: dict[str, Host]
    source: Path

    @classmethod
    def load(cls, paths: Paths) -> Fleet:
        return cls(load_hosts(hosts_file(paths)), hosts_file(paths))

    def get(self, name: str) -> Host:
        return get_host(self.hosts, name, self.source)


def parse_host_list(text: str, fleet: Fleet) -> list[str]:
    """`a,b,local` -> the names, each checked (an unknown one is a usage error)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise OrchestratorError("--hosts needs at least one name (a host of hosts.toml, or local)")
    for name in names:
        if name != LOCAL:
            fleet.get(name)
    return list(dict.fromkeys(names))


def assign(repos: Sequence[Repo], fleet: Fleet, chosen: list[str] | None, local_jobs: int) -> dict[str, list[Repo]]:
    """Which repos run where. Without `chosen`, each repo on its own `host` (or here).

    With `chosen`, a repo whose `host` is among them goes there; the others are
    dealt in turn to the host with the least work per job slot, so a host with
    more `jobs` gets more repos.
    """
    groups: dict[str, list[Repo]] = {}
    if chosen is None:
        for repo in repos:
            name = repo.host or LOCAL
            if name != LOCAL:
                fleet.get(name)
            groups.setdefault(name, []).append(repo)
        return groups
    groups = {name: [] for name in chosen}
    slots = {name: local_jobs if name == LOCAL else fleet.get(name).jobs for name in chosen}
    for repo in repos:
        if repo.host in groups:
            groups[repo.host].append(repo)
    for repo in repos:
        if repo.host not in groups:
            name = min(chosen, key=lambda n: len(groups[n]) / slots[n])
            groups[name].append(repo)
    return {name: group for name, group in groups.items() if group}


def remote_repo(connection: Any, host: Host, repo: Repo, workspace: str) -> Repo:
    """The repo as it is on the host: its path there, and its language detected there when not configured."""
    path = f"{workspace.rstrip('/')}/{repo.name}"
    language = repo.language
    if repo.language_detected:
        tests = " || ".join(f"{{ [ -f {shlex.quote(marker)} ] && echo {lang}; }}" for marker, lang in LANGUAGE_MARKERS)
        check = f"cd -- {shlex.quote(path)} 2>/dev/null && {{ {tests} || echo unknown; }}"
        code, out, _ = remote.probe(connection, host, check, "the language check")
        found = (out.decode("utf-8", "replace").strip().splitlines() or ["unknown"])[-1]
        language = found if code == 0 and found in LANGUAGES else "unknown"
    return replace(repo, local=Path(path), language=language)


def plan_on_host(workflow: Workflow, repo: Repo, log_dir: Path) -> Plan:
    """A plan for the repo as it is on the host; whether its tools exist is checked there, when it runs."""
    plan = plan_for(workflow, repo, log_dir)
    return replace(plan, skip_reason=None if plan.commands else plan.skip_reason)


def execute_remote(plan: Plan, host: Host, connection: Any, timeout: float | None, echo: BinaryIO | None = None,
                   grace: float = runner.GRACE_S,
                   on_stalled: Callable[[remote.HostStalled], None] | None = None) -> batch.Outcome:
    """batch.execute's twin for a host: same steps, the same recorder (batch.Recorder: outcomes, the log
    written locally). `on_stalled` hears of a host that stopped answering (the pool then spares the next repos
    the wait)."""
    recorder = batch.Recorder(plan, host.name, f" on host {host.name} ({host.address})")
    return recorder.run(lambda: _execute_logged(plan, host, connection, recorder, timeout, echo, grace, on_stalled))


def _execute_logged(plan: Plan, host: Host, connection: Any, recorder: batch.Recorder, timeout: float | None,
                    echo: BinaryIO | None, grace: float,
                    on_stalled: Callable[[remote.HostStalled], None] | None) -> batch.Outcome:
    if isinstance(connection, remote.HostUnreachable):
        return recorder.error(str(connection) if isinstance(connection, (remote.HostStalled, NotPlanned))
                              else f"host unreachable: {connection}")
    if plan.skip_reason:
        return recorder.skipped(plan.skip_reason)
    try:
        return _run_commands(plan, host, connection, recorder, timeout, echo, grace)
    except (runner.Stopping, batch.LogWriteFailed):
        raise
    except remote.CommandStalled as err:  # the host answers; only this command was slow: this repo's failure
        return recorder.error(str(err))
    except remote.HostStalled as err:  # connected, but the host did not answer: never "not found", never a skip
        if on_stalled is not None:
            on_stalled(err)
        return recorder.error(str(err))
    except Exception as err:  # this repo's outcome, not a crash
        if not remote.link_error(err, connection):  # our reading of an answer, a session refused: as it is
            return recorder.error(remote.failure(err, connection, host, f"running the {plan.workflow}"),
                                  after_output=True)
        reason = "; ".join([f"connection to {host.name} failed: {type(err).__name__}: {err}",
                            *getattr(err, "__notes__", [])])
        remote.give_up(connection, reason)  # the link broke halfway: the pool opens a new one for the next repo
        return recorder.error(reason, after_output=True)


def _run_commands(plan: Plan, host: Host, connection: Any, recorder: batch.Recorder, timeout: float | None,
                  echo: BinaryIO | None, grace: float) -> batch.Outcome:
    for command in plan.commands:
        cwd = str(command.cwd)
        tool = first_tool(command.command)
        if tool is not None and "/" not in tool:
            check = f"cd -- {shlex.quote(cwd)} 2>/dev/null; command -v {shlex.quote(tool)} >/dev/null 2>&1"
            if remote.probe(connection, host, check, f"the check for {tool}")[0] != 0:
                return recorder.skipped(f"{tool} not found on PATH on the host")
        remaining = recorder.remaining(timeout)
        recorder.write(f"$ cd {shlex.quote(cwd)}\n$ {command.command}\n")
        result = remote.run_remote(connection, cwd, command.script, dict(command.env), recorder.log, remaining, echo,
                                   grace, host)
        verdict = recorder.ended(command_end(result, host, cwd), timeout)
        if verdict is not None:
            return verdict
    return recorder.passed()


def command_end(result: remote.RemoteResult, host: Host, cwd: str) -> batch.CommandEnd:
    """A command's end on the host, in the words batch.Recorder judges for a run here too."""
    if result.lost is not None:
        done = ("the command was killed on the host over a new connection" if result.problem is None else
                f"could not kill it on the host, it may still run ({result.problem})")
        return batch.CommandEnd(None, error=f"connection to {host.name} {result.lost}; {done}")
    if result.no_directory:
        return batch.CommandEnd(None, error=f"directory does not exist on the host: {cwd}", ran=False)
    if result.timed_out:  # SIGTERM, then SIGKILL: no SIGINT first on a host
        return batch.CommandEnd(None, timed_out=True, kill_failed=result.problem)
    if result.problem:  # the command could not be started there
        return batch.CommandEnd(None, error=result.problem, ran=False)
    return batch.CommandEnd(result.exit_code, killed_by=result.killed_by)


def _run_group_on_host(host: Host, workflow: Workflow, repos: list[Repo], log_dir: Path, timeout: float | None,
                       accept_new_host_key: bool, on_start: Callable[[Plan], None] | None,
                       on_done: Callable[[batch.Outcome], None] | None,
                       echo: BinaryIO | None) -> list[batch.Outcome]:
    def work(connection: Any) -> list[batch.Outcome]:
        if isinstance(connection, remote.HostUnreachable):
            # Every repo of this host fails with the reason; nothing is planned against a host we cannot see.
            plans = [plan_on_host(workflow, repo, log_dir) for repo in repos]
            outcomes = []
            for plan in plans:
                if on_start is not None:
                    on_start(plan)
                outcomes.append(execute_remote(plan, host, connection, timeout))
                if on_done is not None:
                    on_done(outcomes[-1])
            return outcomes
        slow: dict[str, remote.CommandStalled] = {}  # repo -> its language check that did not finish

        def plan_there(repo: Repo, workspace: str) -> Plan:
            try:
                return plan_on_host(workflow, remote_repo(connection, host, repo, workspace), log_dir)
            except remote.CommandStalled as err:  # the host answers: this repo fails, the others run
                slow[repo.name] = err
                return plan_on_host(workflow, repo, log_dir)

        try:
            workspace = remote.resolve_workspace(connection, host)
            plans = [plan_there(repo, workspace) for repo in repos]
        except remote.HostUnreachable as err:  # a hung login shell, say: its own words
            return work(err)
        except Exception as err:
            if not remote.link_error(err, connection):  # our reading of an answer, a session refused: as it is
                return work(NotPlanned(remote.failure(err, connection, host, "planning the run")))
            # It was reached: the link went while we looked at its repos, before any command of the run.
            return work(remote.lost(connection, host, err, f"planning the run; no command of the {workflow.name} "
                                                           "had started there"))
        if len(plans) == 1 and echo is not None:
            return [execute_remote(plans[0], host, slow.get(plans[0].repo.name, connection), timeout, echo)]
        connections = remote.Connections(host, connection, accept_new_host_key)

        def execute(plan: Plan) -> batch.Outcome:
            if plan.repo.name in slow:
                return execute_remote(plan, host, slow[plan.repo.name], timeout)
            taken = connections.take()
            try:
                return execute_remote(plan, host, taken, timeout, on_stalled=connections.stall)
            finally:
                connections.give(taken)

        try:
            return runner.run_each(plans, execute, host.jobs, on_start, on_done)
        finally:
            connections.close()

    return remote.run_on_host(host, work, accept_new_host_key)


def run_distributed(paths: Paths, workspace: Workspace, workflow_name: str, groups: dict[str, list[Repo]],
                    fleet: Fleet, jobs: int, timeout: float | None, accept_new_host_key: bool = False,
                    on_start: Callable[[Plan], None] | None = None,
                    on_done: Callable[[batch.Outcome], None] | None = None,
                    echo: BinaryIO | None = None) -> batch.BatchRun:
    """Run a workflow on every group at once (here: `jobs` at a time; a host: its `jobs`); record the outcomes."""
    workflow = get_workflow(load_workflows(paths), workflow_name)
    finished: list[batch.Outcome] = []

    def done(outcome: batch.Outcome) -> None:
        if runner.stopping():  # ended by the stop: neither shown nor recorded, as in a local run
            return
        finished.append(outcome)
        if on_done is not None:
            on_done(outcome)

    def run_group(name: str) -> list[batch.Outcome]:
        repos = groups[name]
        if name == LOCAL:
            plans = batch.plan_workflow(paths, workflow_name, repos)
            if len(plans) == 1 and echo is not None:
                return [batch.execute(plans[0], timeout, echo)]
            return runner.run_each(plans, lambda plan: batch.execute(plan, timeout), jobs or batch.default_jobs(),
                                   on_start, done)
        return _run_group_on_host(fleet.get(name), workflow, repos, paths.log_dir, timeout, accept_new_host_key,
                                  on_start, done, echo)

    state_file = batch.results_file(paths, workflow_name)
    order = {repo.name: i for i, repo in enumerate(workspace.repos)}

    def in_config_order(per_group: Sequence[list[batch.Outcome]]) -> list[batch.Outcome]:
        return sorted((o for group in per_group for o in group), key=lambda o: order.get(o.repo, len(order)))

    # One thread per group under runner.run_each, so a signal is handled as in a local run: every
    # command (local groups and, through runner.stopping(), remote ones) is stopped and what finished is kept.
    with remote.one_run():  # what its stop ended on hosts counts from zero
        try:
            per_group = runner.run_each(list(groups), run_group, max(1, len(groups)))
        except runner.RunInterrupted as stop:
            # The groups' threads are done: what finished in every group (not only in whole groups) is kept,
            # and the remote commands the stop ended are counted with the local ones.
            unkilled = remote.unkilled_notes()  # never counted stopped: they may still run there
            interrupted = runner.RunInterrupted(stop.signum, in_config_order([finished]),
                                                stop.stopped + remote.stopped_count() - len(unkilled))
            interrupted.notes = stop.notes + unkilled + batch.keep_results(state_file, interrupted.results, workspace)
            raise interrupted from None
    outcomes = in_config_order(per_group)
    return batch.BatchRun(outcomes, state_file, batch.keep_results(state_file, outcomes, workspace))


def run_with_progress(paths: Paths, workspace: Workspace, workflow_name: str, groups: dict[str, list[Repo]],
                      fleet: Fleet, jobs: int, timeout: float | None, accept_new_host_key: bool,
                      label: str, on_start: Callable[[Plan], None] | None = None) -> batch.BatchRun:
    total = sum(len(g) for g in groups.values())

    def started(plan: Plan) -> None:
        if on_start is not None:
            on_start(plan)
        progress.start(plan.repo.name)

    with Progress(label, total) as progress:
        return run_distributed(paths, workspace, workflow_name, groups, fleet, jobs, timeout, accept_new_host_key,
                               on_start=started,
                               on_done=lambda o: progress.finish(o.repo, f"{o.line()} [{o.host}]", o.failing))


def plan_groups(paths: Paths, repos: Sequence[Repo], hosts_text: str, jobs: int) -> tuple[Fleet, dict[str, list[Repo]]]:
    """Where each repo runs for `--hosts a,b,local` (or, without it, on its own `host`)."""
    if not hosts_text and not any(repo.host for repo in repos):
        return Fleet({}, hosts_file(paths)), {LOCAL: list(repos)}  # all here: hosts.toml is not even read
    fleet = Fleet.load(paths)
    chosen = parse_host_list(hosts_text, fleet) if hosts_text else None
    return fleet, assign(repos, fleet, chosen, jobs or batch.default_jobs())


def dry_run_lines(plans: Sequence[Plan], fleet: Fleet, groups: dict[str, list[Repo]]) -> list[str]:
    """A dry run over many repos: each one's commands here, or the host and directory it would run in."""
    lines: list[str] = []
    for plan in plans:
        where = next(name for name, repos in groups.items() if plan.repo in repos)
        if where in fleet.hosts:
            lines.append(f"{plan.repo.name}: would run {plan.workflow} on host {where} in "
                         f"{shlex.quote(fleet.get(where).repo_dir(plan.repo.name))}")
        else:
            lines += batch.plan_lines(plan)
    return lines


def dry_run_document(plans: Sequence[Plan], fleet: Fleet, groups: dict[str, list[Repo]]) -> dict[str, Any]:
    """dry_run_lines for --json: `{"dry_run": [...]}`, a repo here as batch.plan_document says it, one on a
    host as `{repo, host, directory, log}` (its commands are planned there, when it runs)."""
    entries: list[dict[str, Any]] = []
    for plan in plans:
        where = next(name for name, repos in groups.items() if plan.repo in repos)
        entries.append({"repo": plan.repo.name, "host": where, "directory": fleet.get(where).repo_dir(plan.repo.name),
                        "log": str(plan.log)} if where in fleet.hosts else batch.plan_document(plan))
    return {"dry_run": entries}
