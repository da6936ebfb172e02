"""launch: plan the session (windows, worktrees, first assignments), then create it with the monitor in window 0."""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lib.errors import ConfigError, OrchestratorError
from lib.paths import Paths
from orchestrator import pins, tmux, worktrees
from orchestrator.act import worker_window
from orchestrator.decide import State, decide
from orchestrator.monitor import issue_views, settings_of, worker_views
from orchestrator.run import Run
from orchestrator.state import monitor_lock

PACKAGE_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Assignment:
    worker: int
    issue: int
    project: str
    title: str
    branch: str
    worktree: str


@dataclass(frozen=True)
class LaunchPlan:
    session: str
    windows: list[str]
    assignments: list[Assignment]
    state_dir: str
    configs: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"session": self.session, "windows": self.windows, "state_dir": self.state_dir,
                "configs": self.configs, "assignments": [asdict(a) for a in self.assignments]}

    def lines(self) -> list[str]:
        out = [f"session: {self.session}", "windows: " + ", ".join(f"{n}:{w}" for n, w in enumerate(self.windows)),
               f"state: {self.state_dir}"]
        if not self.assignments:
            out.append("nothing eligible to run")
        for a in self.assignments:
            out.append(f"worker-{a.worker}: #{a.issue} {a.title!r} on {a.branch} in {a.worktree}")
        return out


def check_repos(run: Run) -> None:
    """Every repo is a git repository with an origin that has its default branch (read-only checks)."""
    problems = []
    for cfg in run.configs:
        for name, repo in cfg.repos.items():
            field = f"repo {name}"
            if not repo.path.is_dir():
                problems.append(f"{cfg.path}: {field}: {repo.path} does not exist")
            elif not worktrees.ok(repo.path, "rev-parse", "--git-dir"):
                problems.append(f"{cfg.path}: {field}: {repo.path} is not a git repository")
            elif not worktrees.ok(repo.path, "rev-parse", "--verify", "-q",
                                  f"refs/remotes/origin/{repo.default_branch}"):
                problems.append(f"{cfg.path}: default_branch: origin/{repo.default_branch} not found in {repo.path} "
                                "(add the origin remote and fetch)")
            elif worktrees.inside(repo.path, repo.worktree_base) or repo.path.resolve() == repo.worktree_base.resolve():
                problems.append(f"{cfg.path}: worktree_base: {repo.worktree_base} holds the repository itself")
    if problems:
        raise ConfigError(problems)


def plan_launch(run: Run) -> LaunchPlan:
    """What launch would do, computed by the same decide the monitor runs (nothing is changed)."""
    check_repos(run)
    records = run.files.load_workers(run.num_workers)
    state = State(worker_views(records), issue_views(run, records))
    assignments = []
    for action in decide([], state, settings_of(run)):
        if action.kind != "reassign" or action.issue is None:
            continue
        cfg = run.config_of(action.issue.project)
        issue = cfg.issue(action.issue.number)
        assert issue is not None
        assignments.append(Assignment(action.worker, issue.number, cfg.project, issue.title, cfg.branch_for(issue),
                                      str(cfg.worktree_for(issue))))
    windows = ["orchestrator"] + [worker_window(n) for n in range(1, run.num_workers + 1)] + ["dashboard"]
    return LaunchPlan(run.session, windows, assignments, str(run.files.root), [str(c.path) for c in run.configs])


def _verb_line(verb: str, run: Run, *extra: str) -> str:
    args = [sys.executable, "-m", "orchestrator", verb]
    if len(run.sources) == 1:
        args += ["--config", str(run.sources[0])]
    else:
        args += ["--config-dir", str(run.sources[0].parent)]
    if run.workers_override:
        args += ["--workers", str(run.workers_override)]
    if run.session_override:
        args += ["--session", run.session_override]
    return "exec " + shlex.join([*args, *extra])


def apply_launch(run: Run, plan: LaunchPlan) -> None:
    """Worktrees, then the session and its windows (under the monitor lock, so two launches cannot race),
    then the monitor in window 0 once the lock is free for it."""
    with monitor_lock(run.locks()):  # refuses while a monitor (or another launch) runs for these projects
        if tmux.session_exists(run.server, run.session):
            raise OrchestratorError(f"tmux session {run.session!r} already exists: attach to it, or run cleanup first")
        unpinned = pins.ensure(run.configs, run.state_root, Paths.from_env().home)  # before any agent runs
        if unpinned:
            raise ConfigError(sorted(set(unpinned.values())))
        for a in plan.assignments:
            cfg = run.config_of(a.project)
            issue = cfg.issue(a.issue)
            assert issue is not None
            repo = cfg.repo_for(issue)
            worktrees.ensure_worktree(repo.path, repo.default_branch, repo.worktree_base, Path(a.worktree), a.branch,
                                      pins.start_for(run.state_root, cfg, repo, a.branch))
        env = {"ORCHESTRATOR_HOME": str(Paths.from_env().home)}
        if os.environ.get(tmux.SOCKET_ENV):
            env[tmux.SOCKET_ENV] = os.environ[tmux.SOCKET_ENV]
        cwd = str(PACKAGE_DIR)
        # Every window exists before the monitor starts in window 0 (it would create missing ones itself).
        tmux.create_session(run.server, run.session, "orchestrator", None, cwd)
        tmux.set_keep_dead(run.server, run.session, "orchestrator")
        for n in range(1, run.num_workers + 1):
            tmux.ensure_window(run.server, run.session, worker_window(n), keep_dead=True)
        tmux.ensure_window(run.server, run.session, "dashboard", _verb_line("dashboard", run), cwd=cwd, env=env,
                           keep_dead=True)
    monitor_pane = tmux.panes(run.server, run.session)["orchestrator"]
    tmux.respawn(run.server, monitor_pane.pane_id, _verb_line("monitor", run, "--no-delay"), cwd=cwd, env=env)
