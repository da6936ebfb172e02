"""config/workflows.json: load and check templated workflows, and plan one for a repo.

Everything that can be wrong with a workflow file is found when it is loaded,
not halfway through a run. Values substituted into a `run` command are
shell-quoted; a `cd` target or `log_file` is a path and never meets a shell.
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
from lib.errors import ConfigError, UnknownWorkflowError
from lib.paths import SHIPPED_CONFIG_DIR, Paths

PLACEHOLDER_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
WORKFLOW_KEYS = {"description", "steps", "log_file"}
STEP_KEYS = {"cd": {"action", "target", "condition"}, "run": {"action", "command", "condition"}}
# First words a shell runs itself: nothing to look up on PATH.
SHELL_WORDS = {"cd", "exit", "true", "false", "test", "[", "echo", "printf", "export", "set", "unset",
               "if", "for", "while", "until", "case", "{", "(", "!", "exec", "source", ".", ":", "eval"}


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
    cwd: Path
    command: str


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


def _check_template(text: str, where: str, in_shell: bool, problems: list[str]) -> None:
    for match in PLACEHOLDER_RE.finditer(text):
        variable = match.group(1)
        if variable != "log_dir" and not (variable.startswith("repo.") and variable[5:] in REPO_FIELDS):
            problems.append(f"{where}: unknown variable {{{{{variable}}}}} "
                            f"(use {{{{log_dir}}}} or {{{{repo.FIELD}}}} with FIELD one of {', '.join(REPO_FIELDS)})")
            continue
        unsafe = _unsafe_spot(text, match.start(), match.end()) if in_shell else None
        if unsafe:
            problems.append(f"{where}: {{{{{variable}}}}} {unsafe}")
    if "{{" in PLACEHOLDER_RE.sub("", text):
        problems.append(f"{where}: unclosed '{{{{' in {text!r}")


def _unsafe_spot(text: str, start: int, end: int) -> str | None:
    """Why a placeholder at text[start:end] would not stay one quoted word, or None.

    Substituted values are shell-quoted, which holds only where the shell reads
    them as a plain word: not inside quotes, not glued to a quoted word or a `$`,
    not in a here-document (whose body expands $(...) even within quotes).
    """
    quote = None
    in_comment = False
    heredoc = False
    i = 0
    while i < start:
        char = text[i]
        if in_comment:
            in_comment = char != "\n"
        elif quote == "'":
            quote = None if char == "'" else quote
        elif char == "\\":
            i += 1
        elif quote == '"':
            quote = None if char == '"' else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] in " \t\n;&|()"):
            in_comment = True
        elif text.startswith("<<<", i):
            i += 2  # a here-string takes one ordinary word
        elif text.startswith("<<", i):
            heredoc = True
            i += 1
        i += 1
    if in_comment:
        return None
    if quote:
        return "is inside quotes; remove them: values are shell-quoted for you"
    if heredoc:
        return "follows a here-document (<<), where quoting does not protect values"
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    if before in ("'", '"', "$") or after in ("'", '"'):
        return "is joined to a quoted word or a $; leave it a separate word"
    return None


def parse_workflows(data: Any, source: Path) -> dict[str, Workflow]:
    problems: list[str] = []

    def problem(where: str, what: str) -> None:
        problems.append(f"{source}: {where}: {what}")

    if not isinstance(data, dict) or not isinstance(data.get("workflows"), dict):
        raise ConfigError(f"{source}: top level: must be an object with a \"workflows\" object")
    for key in sorted(set(data) - {"workflows"}):
        problem(key, "unknown key (allowed: workflows)")
    workflows: dict[str, Workflow] = {}
    for name, spec in data["workflows"].items():
        where = f"workflows.{name}"
        before = len(problems)
        if not NAME_RE.fullmatch(name):
            problem(where, "workflow names use only A-Z a-z 0-9 . _ - and do not start with . or -")
        if not isinstance(spec, dict):
            problem(where, "must be an object with description and steps")
            continue
        for key in sorted(set(spec) - WORKFLOW_KEYS):
            problem(f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(WORKFLOW_KEYS))})")
        description = spec.get("description", "")
        if not isinstance(description, str):
            problem(f"{where}.description", "must be a string")
        log_file = spec.get("log_file")
        if log_file is not None:
            if isinstance(log_file, str) and log_file.strip():
                _check_template(log_file, f"{source}: {where}.log_file", False, problems)
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
        problem(f"{where}.action", f"unknown action {json.dumps(action)} (allowed: cd, run)")
        return None
    for key in sorted(set(raw) - STEP_KEYS[action]):
        problem(f"{where}.{key}", f"unknown key for a {action} step (allowed: {', '.join(sorted(STEP_KEYS[action]))})")
    value_key = "target" if action == "cd" else "command"
    template = raw.get(value_key)
    if not isinstance(template, str) or not template.strip():
        problem(f"{where}.{value_key}", "missing or empty")
        return None
    _check_template(template, f"{source}: {where}.{value_key}", action == "run", problems)
    condition = None
    if "condition" in raw:
        text = raw["condition"]
        if not isinstance(text, str):
            problem(f"{where}.condition", "must be a string like \"repo.language == 'go'\"")
            return None
        try:
            condition = parse_condition(text, set(REPO_FIELDS))
        except ConditionError as err:
            problem(f"{where}.condition", f"{text!r} {err}")
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
        raise UnknownWorkflowError(f"unknown workflow {name!r}; defined: {', '.join(sorted(workflows))}")
    return workflows[name]


def render(template: str, repo: Repo, log_dir: Path, shell: bool) -> str:
    def substitute(match: re.Match[str]) -> str:
        variable = match.group(1)
        value: Any = str(log_dir) if variable == "log_dir" else repo.field_value(variable[5:])
        if not shell:
            return as_text(value)
        if isinstance(value, (list, tuple)):
            return " ".join(shlex.quote(str(v)) for v in value) or "''"
        return shlex.quote(as_text(value))

    return PLACEHOLDER_RE.sub(substitute, template)


def missing_tool(command: str, cwd: Path) -> str | None:
    """The command's first word when it is not on PATH (a missing toolchain), else None."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    words = [w for w in words if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)]
    if not words or words[0] in SHELL_WORDS:
        return None
    tool = words[0]
    if "/" in tool:
        return None if os.access(cwd / tool, os.X_OK) else tool
    return None if shutil.which(tool) else tool


def plan_for(workflow: Workflow, repo: Repo, log_dir: Path) -> Plan:
    cwd = repo.local
    commands: list[Command] = []
    for step in workflow.steps:
        if step.condition is not None and not evaluate(step.condition, repo.field_value):
            continue
        if step.action == "cd":
            cwd = Path(os.path.normpath(cwd / render(step.template, repo, log_dir, shell=False)))
        else:
            commands.append(Command(cwd, render(step.template, repo, log_dir, shell=True)))
    if workflow.log_file:
        log = Path(render(workflow.log_file, repo, log_dir, shell=False)).expanduser()
    else:
        log = log_dir / f"orchestrator-{workflow.name}-{repo.name}.log"
    skip = None
    if not commands:
        skip = f"no step of {workflow.name!r} applies (language {repo.language})"
    else:
        for command in commands:
            tool = missing_tool(command.command, command.cwd)
            if tool:
                skip = f"{tool} not found on PATH"
                break
    return Plan(workflow.name, repo, tuple(commands), log, skip)
