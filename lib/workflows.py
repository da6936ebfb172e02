"""config/workflows.json: load and check templated workflows, and plan one for a repo.

Everything that can be wrong with a workflow file is found when it is loaded,
not halfway through a run. A value in a `run` command reaches the shell as a
quoted variable (never as code); a `cd` target or `log_file` is a path and
never meets a shell.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib.conditions import ConditionError, Node, as_text, evaluate, parse_condition
from lib.config import NAME_RE, REPO_FIELDS, Repo, read_config_json
from lib.errors import ConfigError, UnknownWorkflowError, clip
from lib.paths import SHIPPED_CONFIG_DIR, Paths
from lib.templates import ASSIGNMENT_RE, PLACEHOLDER_RE, check_template

WORKFLOW_KEYS = {"description", "steps", "log_file"}
STEP_KEYS = {"cd": {"action", "target", "condition"}, "run": {"action", "command", "condition"}}
# First words a shell runs itself (POSIX built-ins and reserved words, plus
# common bash ones): nothing to look up on PATH.
SHELL_WORDS = {
    "!", "{", "}", "(", ")", ".", ":", "[", "[[", "]]", "alias", "bg", "bind", "break", "builtin", "caller",
    "case", "cd", "command", "compgen", "complete", "continue", "coproc", "declare", "dirs", "disown", "do",
    "done", "echo", "elif", "else", "enable", "esac", "eval", "exec", "exit", "export", "false", "fc", "fg",
    "fi", "for", "function", "getopts", "hash", "help", "history", "if", "in", "jobs", "kill", "let", "local",
    "logout", "mapfile", "popd", "printf", "pushd", "pwd", "read", "readarray", "readonly", "return", "select",
    "set", "shift", "shopt", "source", "suspend", "test", "then", "time", "times", "trap", "true", "type",
    "typeset", "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
}
# A name PATH lookup applies to: no path, no expansion, no quoting.
BARE_COMMAND_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class Step:
    action: str
    template: str
    condition: Node | None = None


@dataclass(frozen=True)
class Workflow:
    name: str
    description: str
    steps: tuple[Step, ...]
    log_file: str | None
    source: Path


@dataclass(frozen=True)
class Command:
    """One `run` step for one repo.

    `script` is what /bin/sh runs: each placeholder became `"${ORCH_...}"` and its
    value travels in `env`, so the shell expands it as one word and never parses
    it as code. `command` is the same line with the values shell-quoted in
    place: what dry runs, logs and state files show.
    """

    cwd: Path
    command: str
    script: str = ""
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Plan:
    workflow: str
    repo: Repo
    commands: tuple[Command, ...]
    log: Path
    skip_reason: str | None = None

    @property
    def command_line(self) -> str:
        return " && ".join(c.command for c in self.commands)


def parse_workflows(data: Any, source: Path) -> dict[str, Workflow]:
    problems: list[str] = []

    def problem(where: str, what: str) -> None:
        problems.append(f"{source}: {where}: {what}")

    if not isinstance(data, dict) or not isinstance(data.get("workflows"), dict):
        raise ConfigError(f"{source}: top level: must be an object with a \"workflows\" object")
    for key in sorted(set(data) - {"workflows"}):
        problem(clip(key), "unknown key (allowed: workflows)")
    workflows: dict[str, Workflow] = {}
    for name, spec in data["workflows"].items():
        where = f"workflows.{clip(name)}"
        before = len(problems)
        if not NAME_RE.fullmatch(name):
            problem(where, "workflow names use only A-Z a-z 0-9 . _ - and do not start with . or -")
        if not isinstance(spec, dict):
            problem(where, "must be an object with description and steps")
            continue
        for key in sorted(set(spec) - WORKFLOW_KEYS):
            problem(f"{where}.{clip(key)}", f"unknown key (allowed: {', '.join(sorted(WORKFLOW_KEYS))})")
        description = spec.get("description", "")
        if not isinstance(description, str):
            problem(f"{where}.description", "must be a string")
        log_file = spec.get("log_file")
        if log_file is not None:
            if isinstance(log_file, str) and log_file.strip():
                check_template(log_file, f"{source}: {where}.log_file", problems, REPO_FIELDS, in_shell=False)
            else:
                problem(f"{where}.log_file", "must be a non-empty string (a path)")
        raw_steps = spec.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            problem(f"{where}.steps", "must be a non-empty list of steps")
            raw_steps = []
        steps = []
        for index, raw in enumerate(raw_steps):
            step_where = f"{where}.steps[{index}]"
            step = _parse_step(raw, step_where, source, problem, problems)
            if step is not None:
                steps.append(step)
        if len(problems) == before:
            workflows[name] = Workflow(name, description, tuple(steps), log_file, source)
    if problems:
        raise ConfigError(problems)
    return workflows


def _parse_step(raw: Any, where: str, source: Path, problem, problems: list[str]) -> Step | None:
    if not isinstance(raw, dict):
        problem(where, "must be an object like {\"action\": \"run\", \"command\": \"...\"}")
        return None
    action = raw.get("action")
    if action not in STEP_KEYS:
        problem(f"{where}.action", f"unknown action {clip(json.dumps(action))} (allowed: cd, run)")
        return None
    for key in sorted(set(raw) - STEP_KEYS[action]):
        problem(f"{where}.{clip(key)}", f"unknown key for a {action} step (allowed: {', '.join(sorted(STEP_KEYS[action]))})")
    value_key = "target" if action == "cd" else "command"
    template = raw.get(value_key)
    if not isinstance(template, str) or not template.strip():
        problem(f"{where}.{value_key}", "missing or empty")
        return None
    check_template(template, f"{source}: {where}.{value_key}", problems, REPO_FIELDS, in_shell=action == "run")
    condition = None
    if "condition" in raw:
        text = raw["condition"]
        if not isinstance(text, str):
            problem(f"{where}.condition", "must be a string like \"repo.language == 'go'\"")
            return None
        try:
            condition = parse_condition(text, set(REPO_FIELDS))
        except ConditionError as err:
            problem(f"{where}.condition", f"{clip(repr(text))} {err}")
            return None
    return Step(action, template, condition)


def _load_file(path: Path) -> dict[str, Workflow]:
    return parse_workflows(read_config_json(path), path)


def load_workflows(paths: Paths) -> dict[str, Workflow]:
    """The home's workflows, falling back to the shipped defaults for names it lacks."""
    shipped_file = SHIPPED_CONFIG_DIR / "workflows.json"
    workflows = _load_file(shipped_file)
    home_file = paths.workflows_file
    if home_file.exists() and home_file.resolve() != shipped_file.resolve():
        workflows.update(_load_file(home_file))
    return workflows


def get_workflow(workflows: dict[str, Workflow], name: str) -> Workflow:
    if name not in workflows:
        raise UnknownWorkflowError(f"unknown workflow {clip(repr(name))}; defined: {', '.join(sorted(workflows))}")
    return workflows[name]


def _value(variable: str, repo: Repo, log_dir: Path) -> str:
    return str(log_dir) if variable == "log_dir" else as_text(repo.field_value(variable[5:]))


def env_name(variable: str) -> str:
    """`repo.default_branch` -> `ORCH_REPO_DEFAULT_BRANCH`, `log_dir` -> `ORCH_LOG_DIR`."""
    return "ORCH_" + variable.replace(".", "_").upper()


def render_path(template: str, repo: Repo, log_dir: Path) -> str:
    """A cd target or log_file: values pasted as text (a path never meets a shell)."""
    return PLACEHOLDER_RE.sub(lambda m: _value(m.group(1), repo, log_dir), template)


def render_command(template: str, repo: Repo, log_dir: Path, cwd: Path) -> Command:
    env: dict[str, str] = {}

    def to_variable(match: re.Match[str]) -> str:
        name = env_name(match.group(1))
        env[name] = _value(match.group(1), repo, log_dir)
        return f'"${{{name}}}"'

    script = PLACEHOLDER_RE.sub(to_variable, template)
    shown = PLACEHOLDER_RE.sub(lambda m: shlex.quote(_value(m.group(1), repo, log_dir)), template)
    return Command(cwd, shown, script, tuple(sorted(env.items())))


def first_tool(command: str) -> str | None:
    """The bare command name a command line starts with (after any VAR=value), else None.

    Only a plain name can be looked up: a path (`./x`, `~/bin/x`), anything
    the shell expands (`$HOME/bin/x`), a keyword or a builtin runs, and
    fails honestly if it is missing.
    """
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        words = command.split()
    words = [w for w in words if not ASSIGNMENT_RE.match(w)]
    raw_words = [w for w in command.split() if not ASSIGNMENT_RE.match(w)]
    if not words or not raw_words:
        return None
    tool = words[0]
    if tool in SHELL_WORDS or raw_words[0] != tool or not BARE_COMMAND_RE.fullmatch(tool):
        return None
    return tool


def missing_tool(command: str) -> str | None:
    """The command's first word when it is a bare command name not on PATH (a missing toolchain), else None."""
    tool = first_tool(command)
    return None if tool is None or shutil.which(tool) else tool


def plan_for(workflow: Workflow, repo: Repo, log_dir: Path) -> Plan:
    """The repo's commands for `workflow`: its run steps, or the repo's own command from repos.json (in its directory)."""
    cwd = repo.local
    commands: list[Command] = []
    own = repo.command_for(workflow.name)
    if own is not None:
        commands.append(render_command(own, repo, log_dir, repo.local))
    for step in () if own is not None else workflow.steps:
        if step.condition is not None and not evaluate(step.condition, repo.field_value):
            continue
        if step.action == "cd":
            cwd = Path(os.path.normpath(cwd / render_path(step.template, repo, log_dir)))
        else:
            commands.append(render_command(step.template, repo, log_dir, cwd))
    if workflow.log_file:
        log = log_dir / Path(render_path(workflow.log_file, repo, log_dir)).expanduser()  # relative: in log_dir
    else:
        log = log_dir / f"orchestrator-{workflow.name}-{repo.name}.log"
    skip = None
    if not commands:
        skip = f"no step of {workflow.name!r} applies (language {repo.language})"
    else:
        for command in commands:
            tool = missing_tool(command.command)
            if tool:
                skip = f"{tool} not found on PATH"
                break
    return Plan(workflow.name, repo, tuple(commands), log, skip)
