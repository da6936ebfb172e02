"""One workflow on one repo (`inv build`, `inv test`, `inv workflow`): here or on its build host, one record."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import BinaryIO

from lib.batch import BatchRun, plan_lines, plan_workflow, run_and_record
from lib.config import Repo, Workspace, load_workspace
from lib.paths import Paths
from lib.remote.fleet import Fleet, run_distributed
from lib.remote.hosts import LOCAL, Host
from lib.workflows import Plan


@dataclass
class OneRepo:
    """A workflow planned for one repo, and the build host it runs on (None: here)."""

    paths: Paths
    workspace: Workspace
    plan: Plan
    host: Host | None
    fleet: Fleet | None

    @property
    def repo(self) -> Repo:
        return self.plan.repo

    def dry_run_lines(self) -> list[str]:
        if self.host is None:
            return plan_lines(self.plan)
        return [f"{self.repo.name}: would run {self.plan.workflow} on host {self.host.name} ({self.host.address}) "
                f"in {shlex.quote(self.host.repo_dir(self.repo.name))}"]

    def log_line(self) -> str | None:
        """Where the run's log goes, said before it starts; None for a repo skipped here (it writes no log)."""
        if self.host is None:
            return None if self.plan.skip_reason else f"log: {self.plan.log}"
        return f"log: {self.plan.log} (host: {self.host.name}, {self.host.address})"

    def run(self, timeout: float | None, echo: BinaryIO | None = None, accept_new_host_key: bool = False,
            grace: float | None = None) -> BatchRun:
        """Run and record it; a stop (runner.RunInterrupted) goes through with what was recorded."""
        if self.host is None or self.fleet is None:
            return run_and_record(self.paths, self.workspace, [self.plan], 1, timeout, echo=echo,
                                  interrupt_grace=grace)
        return run_distributed(self.paths, self.workspace, self.plan.workflow, {self.host.name: [self.repo]},
                               self.fleet, 1, timeout, accept_new_host_key, echo=echo)


def plan_one(paths: Paths, workflow: str, repo_name: str, host_flag: str = "") -> OneRepo:
    """The repo from config/repos.json, its plan, and its host: `host_flag`, else the repo's `host`, else here
    (`local` is here)."""
    workspace = load_workspace(paths.repos_file)
    repo = workspace.get(repo_name)
    plan = plan_workflow(paths, workflow, [repo])[0]
    name = host_flag or repo.host or LOCAL
    if name == LOCAL:
        return OneRepo(paths, workspace, plan, None, None)
    fleet = Fleet.load(paths)
    return OneRepo(paths, workspace, plan, fleet.get(name), fleet)
