"""launch: plan the session (windows, worktrees, first assignments), then create it with the monitor in window 0."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lib.errors import ConfigError, OrchestratorError, clip
from lib.paths import Paths
from orchestrator import pins, pulls, resume, sandbox, tmux, worktrees
from orchestrator.config import PLACEHOLDER_WORD, IssueStatus, ProjectConfig, agent_kind, agent_words
from orchestrator.decide import ActionKind, State, decide
from orchestrator.inputs import active_pauses, issue_views, settings_of, worker_views
from orchestrator.run import Run
from orchestrator.state import monitor_lock
from orchestrator.windows import PACKAGE_DIR, ensure_dashboard, verb_line, window_env, worker_window

VERSION_TIMEOUT_S = 30.0
# Flags that make Claude Code refuse to start as root unless IS_SANDBOX=1.
CLAUDE_ROOT_REFUSES = ("--dangerously-skip-permissions", "--allow-dangerously-skip-permissions",
                       "--permission-mode=bypassPermissions")


@dataclass(frozen=True)
class Assignment:
    worker: int
    issue: int
    project: str
    title: str
    branch: str
    worktree: str
    stage: str  # the pipeline stage its first try works on
    resume: str | None = None  # an in_progress issue resumed from: worktree, branch or fresh (orchestrator.resume)


@dataclass(frozen=True)
class AgentCheck:
    project: str
    kind: str | None  # claude, codex, gemini; None: another command
    path: str
    version: str  # what `--version` printed (known kinds only)
    sandbox: str
    sandbox_writable: list[str]

    def line(self) -> str:
        what = f"{self.kind} {self.version} ({self.path})" if self.kind else f"{self.path} (found)"
        return f"agent ({self.project}): {what}"


@dataclass(frozen=True)
class Preflight:
    agents: list[AgentCheck]
    bwrap_problem: str | None  # None: bwrap runs here

    def to_json(self) -> dict[str, Any]:
        return {"agents": [asdict(a) for a in self.agents], "bwrap_runs": self.bwrap_problem is None,
                "bwrap_problem": self.bwrap_problem}


@dataclass(frozen=True)
class LaunchPlan:
    session: str
    windows: list[str]
    assignments: list[Assignment]
    state_dir: str
    configs: list[str]
    preflight: Preflight | None = None
    sandbox_lines: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # the configs' own (config.ProjectConfig.warnings)
    idle: int = 0  # free workers left without an issue: fewer eligible issues than workers

    def to_json(self) -> dict[str, Any]:
        return {"session": self.session, "windows": self.windows, "state_dir": self.state_dir,
                "configs": self.configs, "assignments": [asdict(a) for a in self.assignments],
                "warnings": list(self.warnings), "idle": self.idle,
                "preflight": self.preflight.to_json() if self.preflight else None}

    def lines(self) -> list[str]:
        out = [f"warning: {w}" for w in self.warnings]
        out += [f"session: {self.session}", "windows: " + ", ".join(f"{n}:{w}" for n, w in enumerate(self.windows)),
                f"state: {self.state_dir}"]
        if self.preflight:
            out += [a.line() for a in self.preflight.agents]
            problem = self.preflight.bwrap_problem
            out.append("bwrap: runs here" if problem is None else f"bwrap: cannot run here: {problem}")
        out += self.sandbox_lines
        if not self.assignments:
            out.append("nothing eligible to run")
        for a in self.assignments:
            how = {None: "", "worktree": ", resumed in its worktree", "branch": ", resumed on its branch",
                   "fresh": ", resumed from scratch: nothing of it is left"}[a.resume]
            out.append(f"worker-{a.worker}: #{a.issue} {a.title!r} ({a.stage}{how}) on {a.branch} in {a.worktree}")
        if self.idle:
            out.append(f"{self.idle} of {len(self.windows) - 2} workers will idle: no other issue is eligible for "
                       "them now")
        return out


def nested_worktree_bases(run: Run) -> list[str]:
    """A worktree_base inside a repository of the run (its own or another's; symlinks resolved): its worktrees
    would show in that checkout as untracked files (and an agent's `git add -A` there would take them)."""
    checkouts = [(name, checkout) for cfg in run.configs for name, repo in cfg.repos.items()
                 for checkout in _checkouts(repo.path)]
    problems = []
    for cfg in run.configs:
        for repo in cfg.repos.values():
            base = os.path.realpath(repo.worktree_base)
            for name, checkout in checkouts:
                if base == checkout or base.startswith(checkout.rstrip("/") + "/"):
                    problems.append(f"{cfg.path}: worktree_base: {repo.worktree_base} is inside the checkout of repo "
                                    f"{name} ({checkout}): its worktrees would show there as untracked files; put "
                                    "it beside the repository (default: <repo path>-worktrees)")
                    break
    return problems


def _checkouts(path: Path) -> list[str]:
    """The checkout a repo_path lies in (its top level: a repo_path may be a monorepo's subdirectory), and the
    path itself; symlinks resolved."""
    top = ""
    if path.is_dir():
        try:
            top = worktrees.git(path, "rev-parse", "--show-toplevel", check=False).strip()
        except OrchestratorError:
            pass  # git hangs there: check_repos says what is wrong with it
    return [os.path.realpath(p) for p in (top, path) if p]


def check_repos(run: Run) -> None:
    """Every repo is a git repository with an origin that has its default branch, and no worktree_base lies inside
    a repository (read-only checks)."""
    problems = nested_worktree_bases(run)
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
            elif worktrees.inside(repo.path, repo.worktree_base):  # the other way round: nested_worktree_bases
                problems.append(f"{cfg.path}: worktree_base: {repo.worktree_base} holds the repository itself")
    if problems:
        raise ConfigError(problems)


def _answers_version(path: str, env: dict[str, str]) -> tuple[str | None, str]:
    """(first line of `path --version`, "") when it answers with exit 0, else (None, why not).

    Output goes to a file, not a pipe: a child it leaves behind holding the output cannot make us wait.
    """
    with tempfile.TemporaryFile() as out:
        try:
            child = subprocess.Popen([path, "--version"], stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as err:
            return None, f"cannot run it: {err.strerror or err}"
        try:
            code = child.wait(timeout=VERSION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.wait()
            return None, f"no answer within {VERSION_TIMEOUT_S:g}s"
        out.seek(0)
        text = out.read(4096).decode("utf-8", "replace").strip()
    first = clip(text.splitlines()[0] if text else "", 100)
    if code != 0:
        return None, f"exit {code}" + (f": {first}" if first else "")
    return first or "(no version printed)", ""


def _resolve_command(word: str, env: dict[str, str]) -> str | None:
    """What /bin/sh would run for this first word (a path, or the name of a builtin), or None."""
    try:
        result = subprocess.run(["/bin/sh", "-c", 'command -v -- "$1"', "sh", word], capture_output=True,
                                text=True, errors="replace", env=env, timeout=VERSION_TIMEOUT_S,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = result.stdout.strip()
    return found if result.returncode == 0 and found else None


def _under_private_tmp(path: str, cfg: ProjectConfig) -> bool:
    """Whether the sandbox hides this program: under /tmp (as it is named) and in no writable path it binds."""
    if not path.startswith("/"):
        return False  # a shell builtin
    inside = lambda p, base: p == base or p.startswith(base.rstrip("/") + "/")  # noqa: E731
    return inside(os.path.abspath(path), "/tmp") and not any(
        inside(os.path.abspath(path), str(w)) for w in cfg.sandbox_writable)


def check_agent(cfg: ProjectConfig, problems: list[str]) -> AgentCheck | None:
    """The agent_command's program is there (and a known agent CLI answers --version); root + claude's
    skip-permissions flag without IS_SANDBOX=1 is reported with its fix. Problems are appended."""
    where = f"{cfg.path}: agent_command"
    try:
        assignments, words = agent_words(cfg.agent_command)
    except ValueError as err:
        problems.append(f"{where}: cannot be split into words ({err})")
        return None
    if not words:
        problems.append(f"{where}: names no program to run")
        return None
    if PLACEHOLDER_WORD in words[0]:  # e.g. {{worktree}}/agent.sh: there is nothing to look at before the try
        return AgentCheck(cfg.project, None, "(" + words[0].replace(PLACEHOLDER_WORD, "{{...}}") + ": not checked)",
                          "", cfg.sandbox, [str(p) for p in cfg.sandbox_writable])
    env = worktrees.clean_env(assignments)
    path = _resolve_command(words[0], env)
    if path is None:
        problems.append(f"{where}: {clip(words[0])!r} not found on PATH" if "/" not in words[0]
                        else f"{where}: {clip(words[0])!r} is not an executable file")
        return None
    if cfg.sandbox == "bwrap" and _under_private_tmp(path, cfg):
        problems.append(f"{where}: {clip(path)} is under /tmp, which the sandbox replaces with a private /tmp: "
                        "the agent would not be found there; install it (or the virtualenv it is in) elsewhere")
        return None
    kind, version = agent_kind(cfg.agent_command), ""
    if kind:
        answer, why = _answers_version(path, env)
        if answer is None:
            problems.append(f"{where}: `{words[0]} --version` failed ({why}): is {kind} installed and working?")
            return None
        version = answer
    bypass = any(w in CLAUDE_ROOT_REFUSES for w in words) or any(
        a == "--permission-mode" and b == "bypassPermissions" for a, b in zip(words, words[1:]))
    if kind == "claude" and bypass and os.geteuid() == 0 and assignments.get("IS_SANDBOX") != "1":
        problems.append(f"{where}: running as root, claude refuses --dangerously-skip-permissions: start "
                        "agent_command with IS_SANDBOX=1 (IS_SANDBOX=1 claude -p ...) or run the workers as "
                        "another user")
    return AgentCheck(cfg.project, kind, path, version, cfg.sandbox, [str(p) for p in cfg.sandbox_writable])


def preflight(run: Run) -> Preflight:
    """Before any worktree is made: every project's agent can start, and bwrap runs where a project asks for it."""
    problems: list[str] = []
    agents = [check for cfg in run.configs if (check := check_agent(cfg, problems))]
    bwrap_problem = sandbox.bwrap_problem()
    for cfg in run.configs:
        if cfg.sandbox != "none":
            problems += sandbox.writable_problems(cfg)
        if cfg.sandbox == "bwrap" and bwrap_problem:
            problems.append(f"{cfg.path}: sandbox: \"bwrap\" cannot be used here: {bwrap_problem}")
        if cfg.review.open == "pr":
            problems += pulls.preflight_problems(run.state_root, cfg, Paths.from_env().home)
    if problems:
        raise ConfigError(problems)
    return Preflight(agents, bwrap_problem)


def plan_launch(run: Run) -> LaunchPlan:
    """What launch would do, computed by the same decide the monitor runs (nothing is changed)."""
    check_repos(run)
    checked = preflight(run)
    records = run.files.load_workers(run.num_workers)
    state = State(worker_views(records, run), issue_views(run, records), active_pauses(run, run.clock()))
    assignments, problems = [], []
    for action in decide([], state, settings_of(run)):
        if action.kind != ActionKind.REASSIGN or action.issue is None:
            continue
        cfg = run.config_of(action.issue.project)
        issue = cfg.issue(action.issue.number)
        assert issue is not None
        branch, worktree = cfg.branch_for(issue), cfg.worktree_for(issue)
        source = resume.left_behind(cfg.repo_for(issue), worktree, branch, origin=True) \
            if issue.status == IssueStatus.IN_PROGRESS else None
        if source == resume.WORKTREE and (why := resume.unusable(cfg.repo_for(issue), worktree, branch)):
            problems.append(f"{cfg.path}: #{issue.number}: {why}")  # the monitor would fail it at once
        stage = cfg.pipeline[0 if source == resume.FRESH else issue.pipeline_stage]
        assignments.append(Assignment(action.worker, issue.number, cfg.project, issue.title, branch, str(worktree),
                                      stage, source))
    if problems:
        raise ConfigError(problems)
    windows = ["orchestrator"] + [worker_window(n) for n in range(1, run.num_workers + 1)] + ["dashboard"]
    free = sum(1 for w in state.workers if w.issue is None)
    return LaunchPlan(run.session, windows, assignments, str(run.files.root), [str(c.path) for c in run.configs],
                      checked, tuple(sandbox.describe(cfg) for cfg in run.configs),
                      tuple(w for cfg in run.configs for w in cfg.warnings), free - len(assignments))


def apply_launch(run: Run, plan: LaunchPlan) -> None:
    """Worktrees, then the session and its windows (under the monitor lock, so two launches cannot race),
    then the monitor in window 0 once the lock is free for it."""
    with monitor_lock(run.locks()):  # refuses while a monitor (or another launch) runs for these projects
        if tmux.session_exists(run.server, run.session):
            raise OrchestratorError(f"tmux session {run.session!r} already exists: attach to it, or run cleanup first")
        unpinned = pins.ensure(run.configs, run.state_root, Paths.from_env().home)  # before any agent runs
        if unpinned:
            raise ConfigError(sorted(set(unpinned.values())))
        # A resumed issue's worktree is the monitor's to make: it judges what is left of the issue by what is there.
        for a in (a for a in plan.assignments if a.resume is None):
            cfg = run.config_of(a.project)
            issue = cfg.issue(a.issue)
            assert issue is not None
            repo = cfg.repo_for(issue)
            worktrees.ensure_worktree(repo.path, repo.default_branch, repo.worktree_base, Path(a.worktree), a.branch,
                                      pins.start_for(run.state_root, cfg, repo, a.branch))
        # Every window exists before the monitor starts in window 0 (it would create missing ones itself).
        tmux.create_session(run.server, run.session, "orchestrator", None, str(PACKAGE_DIR))
        tmux.set_keep_dead(run.server, run.session, "orchestrator")
        for n in range(1, run.num_workers + 1):
            tmux.ensure_window(run.server, run.session, worker_window(n), keep_dead=True)
        ensure_dashboard(run)
    monitor_pane = tmux.panes(run.server, run.session)["orchestrator"]
    tmux.respawn(run.server, monitor_pane.pane_id, verb_line("monitor", run, "--no-delay"), cwd=str(PACKAGE_DIR),
                 env=window_env())
