"""proof-issues.json: load and validate (one line per problem), locked atomic issue updates.

Over 500 lines, one job: every field of the original's formats and ours is checked here, with its error line.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable

from lib.errors import ConfigError
from lib.logcut import DEFAULT_LOG_CAP, MIN_LOG_CAP
from lib.statefile import locked, write_json
from orchestrator.agents import DEFAULT_COMMANDS, KINDS, RESUMABLE_KINDS
from orchestrator.hooks import Hook
from orchestrator.hooks import parse as parse_hook
from orchestrator.worktree_setup import WorktreeSetup
from orchestrator.worktree_setup import parse as parse_setup

# The original's stages, and the Go rewrite's `test` (a stage without a built-in prompt gets a generic one).
VALID_STAGES = ("implement", "optimize", "write_tests", "run_tests_fix", "document", "research", "draft",
                "validate", "review", "test")

class IssueStatus(StrEnum):
    """An issue's status in the config; the value is the word proof-issues.json says (the original's four)."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


AGENT_PLACEHOLDERS = ("prompt_file", "worktree", "issue.number", "stage")
# Claude Code in print mode with structured output, reading the prompt from its file (never typed, never on a
# command line): what runs when the config names neither `agent` nor `agent_command`.
DEFAULT_AGENT_COMMAND = DEFAULT_COMMANDS["claude"]
PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
BAD_REF = re.compile(r"[\s~^:?*\[\\]|\.\.|@\{|//|^/|\.lock$|^-")
MAX_WORKERS = 64
SANDBOXES = ("none", "bwrap")
AGENT_KINDS = ("claude", "codex", "gemini")
# What each known agent writes outside its worktree (its login, settings, sessions): writable in the sandbox.
AGENT_STATE_PATHS = {
    "claude": ("~/.claude", "~/.claude.json", "~/.local/state/claude"),
    "codex": ("~/.codex",),
    "gemini": ("~/.gemini",),
}
PLACEHOLDER_WORD = "\0"  # what agent_words puts where a placeholder was: its value is known only per try
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
ON_ALERT = ("warn", "pause")  # what an alert does besides being recorded and shown
INIT_HINT = "python3 -m orchestrator init --repo NAME (or inv workers.init --repo NAME)"
PR_STAGES = ("fix_ci", "address_review")  # stages the pull-request loop starts (prompts may override them)
PLATFORMS = ("github", "gitlab")
# The `review` block of the original's Go rewrite (its own review sessions): loads with a warning, does nothing here.
GO_REVIEW_KEYS = ("enabled", "parallel_workers", "session_timeout", "post_comments", "strict_mode")


@dataclass(frozen=True)
class RepoConfig:
    name: str
    path: Path
    default_branch: str
    worktree_base: Path
    branch_prefix: str
    platform: str = ""  # github | gitlab; "": from the pinned url's host (orchestrator.forge.platform_for)
    setup: WorktreeSetup | None = None  # worktree_setup: the repo's own, else the config's top-level one


@dataclass(frozen=True)
class ReviewConfig:
    """The pull-request loop (`review`): open "none" is the run without it."""

    open: str = "none"  # none | pr
    merge: str = "manual"  # manual | auto
    max_ci_fixes: int = 3
    max_review_rounds: int = 2
    poll_seconds: float = 60.0


@dataclass(frozen=True)
class Issue:
    number: int
    title: str
    priority: int = 1
    depends_on: tuple[int, ...] = ()
    wave: int = 1
    status: IssueStatus = IssueStatus.PENDING
    assigned_worker: int | None = None
    repo: str = ""
    pipeline_stage: int = 0
    description: str = ""
    budget: tuple[tuple[str, float], ...] = ()  # (max_cost_usd | max_turns | max_tokens, limit): own or the default


@dataclass(frozen=True)
class ProjectConfig:
    path: Path
    project: str
    repos: dict[str, RepoConfig]
    pipeline: tuple[str, ...]
    project_context: dict[str, Any]
    issues: tuple[Issue, ...]
    num_workers: int = 5
    cycle_interval: float = 60.0
    max_retries: int = 10
    stall_timeout: float = 900.0
    wall_clock_timeout: float = 1800.0
    stagger_delay: float = 30.0
    tmux_session: str = "proof-orchestrator"
    tmux_socket: str | None = None
    agent_command: str = DEFAULT_AGENT_COMMAND
    agent: str = "claude"  # how the try's output reads: claude | codex | gemini (events) or command (text)
    prompts: dict[str, str] = field(default_factory=dict)
    sandbox: str = "none"
    sandbox_writable: tuple[Path, ...] = ()
    on_alert: str = "warn"
    max_total_cost_usd: float | None = None  # the project's budget: past it the project pauses (reason budget)
    resume_sessions: bool = True  # a restarted try continues the agent's session (claude --resume)
    warnings: tuple[str, ...] = ()  # what loads but deserves a word (launch prints them): `file: field: what`
    max_log_bytes: int = DEFAULT_LOG_CAP  # each try's log: past it, its head, a cut mark and its tail
    on_event: Hook | None = None  # run with one event-log line on stdin (orchestrator.hooks)
    review: ReviewConfig = ReviewConfig()

    def issue(self, number: int) -> Issue | None:
        return next((i for i in self.issues if i.number == number), None)

    def repo_for(self, issue: Issue) -> RepoConfig:
        return self.repos[issue.repo] if issue.repo else next(iter(self.repos.values()))

    def branch_for(self, issue: Issue) -> str:
        return f"{self.repo_for(issue).branch_prefix}{issue.number}"

    def worktree_for(self, issue: Issue) -> Path:
        return self.repo_for(issue).worktree_base / f"issue-{issue.number}"

    def stages_done(self, issue: Issue) -> bool:
        """pipeline_stage one past the last stage (the original wrote it after a last stage): nothing left to run."""
        return issue.pipeline_stage >= len(self.pipeline)

    def stage_name(self, issue: Issue) -> str | None:
        """The issue's current stage, None once all stages are done."""
        return None if self.stages_done(issue) else self.pipeline[issue.pipeline_stage]


class _Checker:
    """Collects `file: field: problem` lines; reads typed values with defaults."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def bad(self, where: str, what: str) -> None:
        self.problems.append(f"{self.path}: {where}: {what}")

    def warn(self, where: str, what: str) -> None:
        self.warnings.append(f"{self.path}: {where}: {what}")

    def get(self, doc: dict[str, Any], key: str, kind: str, default: Any, where: str = "") -> Any:
        label = f"{where}{key}"
        if key not in doc or (doc[key] is None and kind == "int?"):
            return default
        value = doc[key]
        checks: dict[str, Callable[[Any], bool]] = {
            "str": lambda v: isinstance(v, str),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "int?": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "num": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf"),
            "list": lambda v: isinstance(v, list),
            "dict": lambda v: isinstance(v, dict),
        }
        if not checks[kind](value):
            names = {"str": "a string", "int": "a whole number", "int?": "a whole number or null",
                     "num": "a finite number", "list": "a list", "dict": "an object"}
            self.bad(label, f"must be {names[kind]}, got {json.dumps(value)[:60]}")
            return default
        return value


def read_raw(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; write a starter one with: {INIT_HINT}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a JSON object at the top level")
    return raw


def _resolve(base: Path, value: str) -> Path:
    return (base / Path(value).expanduser()).resolve() if value else base


def _template_problem(template: str, allowed: tuple[str, ...]) -> str | None:
    unknown = sorted({m.group(1) for m in PLACEHOLDER.finditer(template)} - set(allowed))
    if unknown:
        return f"unknown placeholder {{{{{unknown[0]}}}}} (known: {', '.join(allowed)})"
    if "{{" in PLACEHOLDER.sub("", template) or "}}" in PLACEHOLDER.sub("", template):
        return "unbalanced {{ or }}"
    return None


def agent_words(command: str) -> tuple[dict[str, str], list[str]]:
    """The agent_command's leading `NAME=value` assignments and the words after them (placeholders as words).

    Raises ValueError when the shell could not split it either (an unclosed quote).
    """
    words = shlex.split(PLACEHOLDER.sub(PLACEHOLDER_WORD, command))
    assignments: dict[str, str] = {}
    while words and ASSIGNMENT.match(words[0]):
        name, value = words.pop(0).split("=", 1)
        assignments[name] = value
    if words[:1] == ["exec"]:
        words.pop(0)
    return assignments, words


def agent_kind(command: str) -> str | None:
    """claude, codex or gemini when the agent_command runs that CLI (by its first word's name), else None."""
    try:
        words = agent_words(command)[1]
    except ValueError:
        return None
    name = os.path.basename(words[0]) if words else ""
    return name if name in AGENT_KINDS else None


def _sandbox(raw: dict[str, Any], check: _Checker, agent: str, repos: dict[str, RepoConfig]) -> tuple[str, tuple[Path, ...]]:
    kind = check.get(raw, "sandbox", "str", "none")
    if kind not in SANDBOXES:
        check.bad("sandbox", f"unknown sandbox {kind!r} (known: {', '.join(SANDBOXES)})")
    default = list(AGENT_STATE_PATHS.get(agent_kind(agent) or "", ()))
    entries = check.get(raw, "sandbox_writable", "list", default)
    paths: list[Path] = []
    for index, entry in enumerate(entries):
        where = f"sandbox_writable[{index}]"
        if not isinstance(entry, str) or not entry.strip():
            check.bad(where, f"must be a path, got {json.dumps(entry)[:60]}")
            continue
        path = Path(os.path.normpath(Path(entry).expanduser()))
        if not path.is_absolute():
            check.bad(where, f"must be an absolute path or start with ~/, got {entry!r}")
            continue
        guarded = [(f"repo {r.name}", r.path) for r in repos.values()] + \
            [(f"repo {r.name}'s worktree_base", r.worktree_base) for r in repos.values()]
        real = Path(os.path.realpath(path))
        for what, target in guarded:
            if real == target or real in target.parents or target in real.parents:
                check.bad(where, f"{entry!r} would make {what} ({target}) writable to every agent")
                break
        else:
            paths.append(path)
    return kind, tuple(paths)


def _repos(raw: dict[str, Any], check: _Checker, base: Path) -> dict[str, RepoConfig]:
    def one(name: str, doc: dict[str, Any], where: str, path_key: str) -> RepoConfig | None:
        path = check.get(doc, path_key, "str", "", where)
        prefix = check.get(doc, "branch_prefix", "str", "", where)
        branch = check.get(doc, "default_branch", "str", "main", where)
        base_dir = check.get(doc, "worktree_base", "str", "", where)
        platform = check.get(doc, "platform", "str", "", where)
        if not path:
            check.bad(f"{where}{path_key}", "missing: the repository's path")
            return None
        if not prefix or BAD_REF.search(prefix):
            check.bad(f"{where}branch_prefix", f"must be a non-empty branch name prefix, got {prefix!r}")
        if not branch or BAD_REF.search(branch):
            check.bad(f"{where}default_branch", f"not a branch name: {branch!r}")
        repo_path = _resolve(base, path)
        worktree_base = _resolve(base, base_dir) if base_dir else repo_path.with_name(repo_path.name + "-worktrees")
        setup = parse_setup(doc.get("worktree_setup", raw.get("worktree_setup")), repo_path, check.bad,
                            f"{where}worktree_setup" if "worktree_setup" in doc else "worktree_setup")
        return RepoConfig(name, repo_path, branch, worktree_base, prefix, platform, setup)

    repos: dict[str, RepoConfig] = {}
    if "repos" in raw:
        table = check.get(raw, "repos", "dict", {})
        for name, doc in table.items():
            if not isinstance(doc, dict):
                check.bad(f"repos.{name}", "must be an object")
                continue
            repo = one(name, doc, f"repos.{name}.", "path")
            if repo:
                repos[name] = repo
        if not table:
            check.bad("repos", "must name at least one repository")
    else:
        name = check.get(raw, "repo", "str", "default")
        repo = one(name, raw, "", "repo_path")
        if repo:
            repos[name] = repo
    return repos


BUDGET_KEYS = ("max_cost_usd", "max_turns", "max_tokens")


def _budget(doc: dict[str, Any], check: _Checker, where: str = "") -> dict[str, float]:
    """The budget keys `doc` sets (an issue's own, or the project's default for every issue): positive numbers."""
    out: dict[str, float] = {}
    for key in BUDGET_KEYS:
        value = check.get(doc, key, "num" if key == "max_cost_usd" else "int", None, where)
        if value is None:
            continue
        if value <= 0:
            check.bad(f"{where}{key}", f"must be > 0, got {value}")
            continue
        out[key] = value
    return out


def _issues(raw: dict[str, Any], check: _Checker, repos: dict[str, RepoConfig], stages: int) -> tuple[Issue, ...]:
    items = check.get(raw, "issues", "list", [])
    defaults = _budget(raw, check)
    issues: list[Issue] = []
    seen: set[int] = set()
    for index, doc in enumerate(items):
        where = f"issues[{index}]."
        if not isinstance(doc, dict):
            check.bad(f"issues[{index}]", "must be an object")
            continue
        if "number" not in doc:
            check.bad(f"{where}number", "missing")
            continue
        number = check.get(doc, "number", "int", None, where)
        if number is None:
            continue
        where = f"issues[{index}] (#{number})."
        if number <= 0:
            check.bad(f"{where}number", "must be positive")
        if number in seen:
            check.bad(f"{where}number", f"duplicate issue number {number}")
        seen.add(number)
        depends = check.get(doc, "depends_on", "list", [], where)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in depends):
            check.bad(f"{where}depends_on", "must be a list of issue numbers")
            depends = []
        word = check.get(doc, "status", "str", IssueStatus.PENDING.value, where)
        try:
            status = IssueStatus(word)
        except ValueError:
            check.bad(f"{where}status", f"unknown status {word!r} (known: {', '.join(IssueStatus)})")
            status = IssueStatus.PENDING
        repo = check.get(doc, "repo", "str", "", where)
        if repo and repo not in repos and repos:
            check.bad(f"{where}repo", f"unknown repo {repo!r} (known: {', '.join(repos)})")
        if not repo and len(repos) > 1:
            check.bad(f"{where}repo", "required when the config has several repos")
        stage = check.get(doc, "pipeline_stage", "int", 0, where)
        if not 0 <= stage <= max(stages, 1):  # one past the last stage: all done (the original wrote that)
            check.bad(f"{where}pipeline_stage", f"must be 0..{max(stages, 1) - 1} (or {max(stages, 1)}: all stages "
                                                f"done), got {stage}")
            stage = 0
        elif stage == stages and status in (IssueStatus.PENDING, IssueStatus.IN_PROGRESS):
            check.warn(f"{where}pipeline_stage", f"{stage} is past the last stage of the pipeline: all stages are "
                                                 f"done, so #{number} counts as completed and is not run again "
                                                 "(set its status to completed to silence this)")
        worker = check.get(doc, "assigned_worker", "int?", None, where)
        if worker is not None and worker < 1:  # workers are worker-1..N; null is none
            check.bad(f"{where}assigned_worker", f"must be a worker number (1 or more) or null, got {worker}")
            worker = None
        issues.append(Issue(
            number=number,
            title=check.get(doc, "title", "str", "", where),
            priority=check.get(doc, "priority", "int", 1, where),
            depends_on=tuple(depends),
            wave=check.get(doc, "wave", "int", 1, where),
            status=status,
            assigned_worker=worker,
            repo=repo,
            pipeline_stage=stage,
            description=check.get(doc, "description", "str", "", where),
            budget=tuple({**defaults, **_budget(doc, check, where)}.items()),
        ))
    _check_dependencies(issues, check)
    return tuple(issues)


def _check_dependencies(issues: list[Issue], check: _Checker) -> None:
    numbers = {i.number for i in issues}
    for issue in issues:
        for dep in issue.depends_on:
            if dep == issue.number:
                check.bad(f"issue #{issue.number}.depends_on", "depends on itself")
            elif dep not in numbers:
                check.bad(f"issue #{issue.number}.depends_on", f"#{dep} is not in the issue list")
    graph = {i.number: [d for d in i.depends_on if d in numbers and d != i.number] for i in issues}
    state: dict[int, int] = {}  # 1: on the current path, 2: done

    def visit(node: int, path: list[int]) -> list[int] | None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep] if dep in path else [node, dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[node] = 2
        return None

    for number in sorted(graph):
        if number not in state:
            cycle = visit(number, [number])
            if cycle:
                check.bad("issues", "dependency cycle: " + " -> ".join(f"#{n}" for n in cycle))
                return


def parse_config(path: Path, raw: dict[str, Any]) -> ProjectConfig:
    """Validate a parsed config; every problem becomes one `file: field: what` line."""
    check = _Checker(path)
    base = path.parent
    project = check.get(raw, "project", "str", "") or path.stem.removesuffix("-issues")
    if not NAME.match(project):
        check.bad("project", f"must be a plain name (letters, digits, . _ -), got {project!r}")
    repos = _repos(raw, check, base)
    pipeline = check.get(raw, "pipeline", "list", ["implement"])
    for stage in pipeline:
        if stage not in VALID_STAGES:
            check.bad("pipeline", f"unknown stage {stage!r} (known: {', '.join(VALID_STAGES)})")
    if not pipeline:
        check.bad("pipeline", "must list at least one stage")
    issues = _issues(raw, check, repos, len(pipeline))
    context = check.get(raw, "project_context", "dict", {})
    workers = check.get(raw, "num_workers", "int", 5)
    if not 1 <= workers <= MAX_WORKERS:
        check.bad("num_workers", f"must be 1..{MAX_WORKERS}, got {workers}")
    timings = {}
    for key, default, minimum in (("cycle_interval", 60.0, 0.0), ("stall_timeout", 900.0, 0.0),
                                  ("wall_clock_timeout", 1800.0, 0.0), ("stagger_delay", 30.0, -1.0)):
        value = check.get(raw, key, "num", default)
        if value <= minimum:
            check.bad(key, f"must be {'> 0' if minimum == 0 else '>= 0'} seconds, got {value}")
        timings[key] = float(value)
    retries = check.get(raw, "max_retries", "int", 10)
    if retries < 0:
        check.bad("max_retries", f"must be >= 0, got {retries}")
    session = check.get(raw, "tmux_session", "str", "proof-orchestrator")
    if not NAME.match(session) or "." in session:
        check.bad("tmux_session", f"must be a plain name (letters, digits, _ -), got {session!r}")
    socket = check.get(raw, "tmux_socket", "str", "") or None
    kind = check.get(raw, "agent", "str", "claude" if "agent_command" not in raw else "command")
    if kind not in KINDS:
        check.bad("agent", f"unknown agent {kind!r} (known: {', '.join(KINDS)})")
        kind = "command"
    if kind == "command" and "agent_command" not in raw:
        check.bad("agent", "\"command\" needs an agent_command")
    agent = check.get(raw, "agent_command", "str", DEFAULT_COMMANDS.get(kind, DEFAULT_AGENT_COMMAND))
    if kind == "claude" and agent_kind(agent) == "claude" and "stream-json" not in agent:
        check.bad("agent_command", "agent \"claude\" reads the CLI's events: add --output-format stream-json "
                                   "--verbose (or set \"agent\": \"command\" for text output)")
    problem = _template_problem(agent, AGENT_PLACEHOLDERS)
    if problem or not agent.strip():
        check.bad("agent_command", problem or "must not be empty")
    sandbox, sandbox_writable = _sandbox(raw, check, agent, repos)
    prompts = check.get(raw, "prompts", "dict", {})
    for stage, template in prompts.items():
        if stage not in VALID_STAGES + PR_STAGES:
            check.bad(f"prompts.{stage}", f"unknown stage (known: {', '.join(VALID_STAGES + PR_STAGES)})")
        elif not isinstance(template, str):
            check.bad(f"prompts.{stage}", "must be a string")
    on_alert = check.get(raw, "on_alert", "str", "warn")
    if on_alert not in ON_ALERT:
        check.bad("on_alert", f"must be one of {', '.join(ON_ALERT)}, got {on_alert!r}")
    resume_sessions = raw.get("resume_sessions", kind == "claude")
    if not isinstance(resume_sessions, bool):
        check.bad("resume_sessions", f"must be true or false, got {json.dumps(resume_sessions)[:60]}")
    elif resume_sessions and kind not in RESUMABLE_KINDS:
        check.bad("resume_sessions",
                  f"agent {kind!r} cannot resume a session here (only: {', '.join(RESUMABLE_KINDS)})")
    total = check.get(raw, "max_total_cost_usd", "num", None)
    if total is not None and total <= 0:
        check.bad("max_total_cost_usd", f"must be > 0, got {total}")
    max_log_bytes = check.get(raw, "max_log_bytes", "int", DEFAULT_LOG_CAP)
    if max_log_bytes < MIN_LOG_CAP:
        check.bad("max_log_bytes", f"must be at least {MIN_LOG_CAP} (64 KiB), got {max_log_bytes}")
    on_event = parse_hook(raw.get("on_event"), check.bad)
    review = _review(raw, check, repos)
    if check.problems:
        raise ConfigError(check.problems)
    return ProjectConfig(
        path=path, project=project, repos=repos, pipeline=tuple(pipeline), project_context=context,
        issues=issues, num_workers=workers, max_retries=retries, tmux_session=session, tmux_socket=socket,
        agent_command=agent, agent=kind, prompts=dict(prompts), sandbox=sandbox, sandbox_writable=sandbox_writable,
        on_alert=on_alert, max_total_cost_usd=total, resume_sessions=resume_sessions is True, on_event=on_event,
        review=review,
        warnings=tuple(check.warnings), max_log_bytes=max_log_bytes, **timings)


def _review(raw: dict[str, Any], check: _Checker, repos: dict[str, RepoConfig]) -> ReviewConfig:
    doc = check.get(raw, "review", "dict", {})
    known = {"open", "merge", "max_ci_fixes", "max_review_rounds", "poll_seconds"}
    go_keys = [key for key in GO_REVIEW_KEYS if key in doc]
    if go_keys:  # the original's Go rewrite: its review sessions are not ours; the file still loads
        check.warn("review", f"{', '.join(go_keys)}: settings of the original's Go rewrite, not used here (this "
                             "tool's `review` is the pull-request loop)")
    for key in sorted(set(doc) - known - set(GO_REVIEW_KEYS)):
        check.bad(f"review.{key}", f"unknown key (known: {', '.join(sorted(known))})")
    opened = check.get(doc, "open", "str", "none", "review.")
    if opened not in ("none", "pr"):
        check.bad("review.open", f"must be \"none\" or \"pr\", got {json.dumps(opened)[:60]}")
    merge = check.get(doc, "merge", "str", "manual", "review.")
    if merge not in ("manual", "auto"):
        check.bad("review.merge", f"must be \"manual\" or \"auto\", got {json.dumps(merge)[:60]}")
    limits = {key: check.get(doc, key, "int", default, "review.")
              for key, default in (("max_ci_fixes", 3), ("max_review_rounds", 2))}
    for key, value in limits.items():
        if value < 0:
            check.bad(f"review.{key}", f"must be >= 0, got {value}")
    poll = check.get(doc, "poll_seconds", "num", 60.0, "review.")
    if poll <= 0:
        check.bad("review.poll_seconds", f"must be > 0 seconds, got {poll}")
    if opened == "pr":
        for repo in repos.values():
            if repo.platform and repo.platform not in PLATFORMS:
                check.bad(f"repos.{repo.name}.platform" if "repos" in raw else "platform",
                          f"review.open \"pr\" needs github or gitlab, got {repo.platform!r}")
    return ReviewConfig(opened, merge, limits["max_ci_fixes"], limits["max_review_rounds"], float(poll))


def load_config(path: Path) -> ProjectConfig:
    path = Path(path).expanduser().resolve()
    return parse_config(path, read_raw(path))


def config_files(config: Path | None, config_dir: Path | None, home: Path) -> list[Path]:
    """The config files a run uses: one file, every *-issues.json of a directory, or the default."""
    if config and config_dir:
        raise ConfigError("give --config or --config-dir, not both")
    if config_dir:
        directory = Path(config_dir).expanduser().resolve()
        if not directory.is_dir():
            raise ConfigError(f"{directory}: not a directory")
        files = sorted(directory.glob("*-issues.json"))
        if not files:
            raise ConfigError(f"{directory}: no *-issues.json files; write a starter one with: {INIT_HINT} "
                              f"--config {directory}/NAME-issues.json")
        return files
    return [Path(config).expanduser().resolve() if config else home / "config" / "proof-issues.json"]


def load_configs(files: list[Path]) -> list[ProjectConfig]:
    """Load every file (all problems reported together); projects must be distinct."""
    configs: list[ProjectConfig] = []
    problems: list[str] = []
    for path in files:
        try:
            configs.append(load_config(path))
        except ConfigError as err:
            problems.extend(err.problems)
    seen: dict[str, Path] = {}
    for cfg in configs:
        if cfg.project in seen:
            problems.append(f"{cfg.path}: project: {cfg.project!r} is also the project of {seen[cfg.project]}")
        seen[cfg.project] = cfg.path
    problems += _shared_branches(configs)
    if problems:
        raise ConfigError(problems)
    return configs


def _shared_branches(configs: list[ProjectConfig]) -> list[str]:
    """Issues of two projects that would work on one branch of one repo, or in one worktree (both number from 1):
    one line per pair of projects."""
    if len(configs) < 2:
        return []
    owners: dict[tuple[str, str], tuple[ProjectConfig, int]] = {}
    clashes: dict[tuple[str, str], list[str]] = {}
    real = {p: os.path.realpath(p) for cfg in configs for r in cfg.repos.values() for p in (r.path, r.worktree_base)}
    for cfg in configs:
        for issue in cfg.issues:
            repo, branch, worktree = cfg.repo_for(issue), cfg.branch_for(issue), cfg.worktree_for(issue)
            for key, what in (((real[repo.path], branch), f"branch {branch} of {repo.path}"),
                              (("", os.path.join(real[repo.worktree_base], worktree.name)), f"worktree {worktree}")):
                other, number = owners.setdefault(key, (cfg, issue.number))
                if other.project != cfg.project:
                    clashes.setdefault((other.project, cfg.project), []).append(
                        f"{cfg.path}: issue #{issue.number} would share {what} with project {other.project}'s "
                        f"#{number}")
                    break
    return [f"{found[0]}{f' (and {len(found) - 1} more)' if len(found) > 1 else ''}; give one of the projects "
            "another branch_prefix and worktree_base" for found in clashes.values()]


def update_issues(path: Path, change: Callable[[list[dict[str, Any]]], None]) -> None:
    """Change the issues list of a config file under its lock, atomically, keeping every other key."""
    path = Path(path).resolve()  # a symlinked config stays a symlink: its target is what changes
    with locked(path):
        raw = read_raw(path)
        issues = raw.setdefault("issues", [])
        change(issues)
        parse_config(path, raw)  # never write a file that no longer loads
        write_json(path, raw)


def set_issue(path: Path, number: int, **fields: Any) -> None:
    def change(issues: list[dict[str, Any]]) -> None:
        for doc in issues:
            if isinstance(doc, dict) and doc.get("number") == number:
                doc.update(fields)
                return
        raise ConfigError(f"{path}: issue #{number} is not in the issue list")

    update_issues(path, change)


def add_issue(path: Path, number: int, title: str, priority: int = 1, wave: int = 1,
              depends_on: list[int] | None = None, description: str = "", repo: str = "") -> None:
    def change(issues: list[dict[str, Any]]) -> None:
        if any(isinstance(doc, dict) and doc.get("number") == number for doc in issues):
            raise ConfigError(f"{path}: issue #{number} already exists")
        doc: dict[str, Any] = {"number": number, "title": title, "priority": priority,
                               "depends_on": list(depends_on or []), "wave": wave, "status": IssueStatus.PENDING,
                               "assigned_worker": None}
        if description:
            doc["description"] = description
        if repo:
            doc["repo"] = repo
        issues.append(doc)

    update_issues(path, change)
