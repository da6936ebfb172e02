"""Read and validate config/repos.json (the original system's format, plus optional additions)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lib.errors import ConfigError, UnknownRepoError, clip
from lib.paths import real_paths
from lib.statefile import NESTED, TooDeep, UnreadableFile, loads, read_regular
from lib.templates import check_template

LANGUAGES = ("go", "javascript", "python", "rust", "make", "unknown")

# Marker files that identify a repo's language when `language` is omitted;
# the first match wins, so the order is a priority.
LANGUAGE_MARKERS = (
    ("go.mod", "go"),
    ("package.json", "javascript"),
    ("pyproject.toml", "python"),
    ("setup.py", "python"),
    ("Cargo.toml", "rust"),
    ("Makefile", "make"),
)

# Field name -> (JSON type, description used in error messages).
REPO_FIELDS: dict[str, tuple[type, str]] = {
    "name": (str, "a string"),
    "platform": (str, "a string"),
    "remote": (str, "a string"),
    "local": (str, "a string"),
    "default_branch": (str, "a string"),
    "language": (str, "a string"),
    "has_claude_md": (bool, "true or false"),
    "tags": (list, "a list of strings"),
    "description": (str, "a string"),
    "host": (str, "a string"),
}
# Our per-repo addition beside REPO_FIELDS (not a template variable): {"build": "...", "test": "..."}.
COMMANDS_FIELD = "commands"
TOP_LEVEL_FIELDS = {"repositories", "workspace"}
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")  # used with fullmatch


@dataclass(frozen=True)
class Repo:
    name: str
    local: Path
    platform: str = ""
    remote: str = ""
    default_branch: str = "main"
    language: str = "unknown"
    language_detected: bool = False
    has_claude_md: bool = False
    tags: tuple[str, ...] = ()
    description: str = ""
    host: str | None = None
    commands: tuple[tuple[str, str], ...] = ()  # workflow name -> command template, from "commands"
    # `local` resolved (symlinks followed) when the config was loaded, for the scan's ceiling; "" when not known.
    # Not an init field: a copy made with dataclasses.replace (another `local`) starts without it.
    real: str = field(default="", init=False, compare=False, repr=False)

    def command_for(self, workflow: str) -> str | None:
        """The repo's own command for a workflow (repos.json "commands"), used instead of its run steps."""
        return dict(self.commands).get(workflow)

    def field_value(self, name: str) -> Any:
        """A config field by its repos.json name (for templates and conditions)."""
        if name not in REPO_FIELDS:
            raise KeyError(name)
        value = getattr(self, name)
        return str(value) if isinstance(value, Path) else value


@dataclass(frozen=True)
class Workspace:
    config_file: Path
    repos: tuple[Repo, ...] = field(default_factory=tuple)

    def get(self, name: str) -> Repo:
        for repo in self.repos:
            if repo.name == name:
                return repo
        raise UnknownRepoError(self._unknown_repo_line(name))

    def _unknown_repo_line(self, name: str) -> str:
        names = [r.name for r in self.repos]
        return f"unknown repo {name!r} in {self.config_file}{_hint(name, names, 'repos')}"

    def select(self, tags: list[str] | None = None, only: list[str] | None = None) -> list[Repo]:
        """Repos in config order, restricted to those carrying any of `tags` and named in `only`.

        A selection that names nothing real is an error, never an empty run: every
        unknown `only` name and every tag no repo carries is reported, and
        `only=[]` (`--only ,,,`) is an error, not "everything".
        """
        problems: list[str] = []
        by_name = {r.name: r for r in self.repos}
        if only is not None:
            if not only:
                problems.append("--only: no repo names given (a comma-separated list like a,b)")
            problems += [self._unknown_repo_line(name) for name in dict.fromkeys(only) if name not in by_name]
        known_tags = sorted({t for r in self.repos for t in r.tags})
        for tag in dict.fromkeys(tags or ()):
            if tag not in known_tags:
                problems.append(f"no repo has tag {tag!r} in {self.config_file}{_hint(tag, known_tags, 'tags')}")
        if problems:
            raise UnknownRepoError("\n".join(problems))
        chosen = [r for r in self.repos if only is None or r.name in only]
        if tags:
            wanted = set(tags)
            chosen = [r for r in chosen if wanted.intersection(r.tags)]
        return chosen


def split_names(text: str | None) -> list[str] | None:
    """`--only a,b` -> ["a", "b"]; not given -> None; `--only ,,,` -> [] (which select() rejects)."""
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


MAX_SUGGESTIONS = 3
MAX_LISTED = 10


def _hint(name: str, known: list[str], what: str) -> str:
    """`; did you mean a, b?` or a short list of what exists (capped: a workspace may hold thousands)."""
    import difflib  # only on an error: every scan imports this module

    close = difflib.get_close_matches(name, known, n=MAX_SUGGESTIONS, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join(close)}?"
    if not known:
        return f"; there are no {what}"
    shown = ", ".join(known[:MAX_LISTED])
    return f"; known {what}: {shown}" + (f", ... ({len(known)} {what})" if len(known) > MAX_LISTED else "")


def detect_language(path: Path) -> str:
    for marker, language in LANGUAGE_MARKERS:
        if (path / marker).is_file():
            return language
    return "unknown"


def load_workspace(config_file: Path) -> Workspace:
    """Load repos.json; every problem found is reported at once, one line each."""
    if not config_file.exists():
        raise ConfigError(
            f"{config_file}: not found; create it with "
            '{"repositories": [{"name": "myrepo", "local": "/path/to/myrepo"}]} '
            "(see docs/config-and-state.md) or set ORCHESTRATOR_HOME to a directory that has config/repos.json"
        )
    return parse_workspace(read_config_json(config_file), config_file)


def read_config_json(path: Path) -> Any:
    """A config file's JSON, or a ConfigError naming the file, line and column.

    Only a regular file of sane size is read (a FIFO would hang the command), and
    a document nested deeper than any config needs is refused (never a RecursionError).
    """
    try:
        data = read_regular(path)
        if data is None:
            raise ConfigError(f"{path}: cannot read: not found")
        return loads(data.decode("utf-8"))
    except UnreadableFile as err:
        raise ConfigError(str(err)) from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: line {err.lineno} column {err.colno}: invalid JSON: {err.msg}") from None
    except TooDeep:
        raise ConfigError(f"{path}: invalid JSON: {NESTED}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None
    except ValueError as err:  # a number of more than 4300 digits
        raise ConfigError(f"{path}: invalid JSON: {clip(str(err))}") from None


def parse_workspace(data: Any, config_file: Path) -> Workspace:
    problems: list[str] = []

    def problem(where: str, what: str) -> None:
        problems.append(f"{config_file}: {where}: {what}")

    if not isinstance(data, dict):
        raise ConfigError(f"{config_file}: top level: must be an object with a \"repositories\" list")
    for key in sorted(set(data) - TOP_LEVEL_FIELDS):
        problem(key, f"unknown key (allowed: {', '.join(sorted(TOP_LEVEL_FIELDS))})")
    workspace_dir = config_file.parent.parent
    if "workspace" in data:
        if isinstance(data["workspace"], str) and data["workspace"].strip():
            workspace_dir = workspace_dir / Path(data["workspace"]).expanduser()
        else:
            problem("workspace", "must be a non-empty string (a directory)")
    entries = data.get("repositories")
    if not isinstance(entries, list):
        problem("repositories", "must be a list of repository objects")
        entries = []

    repos: list[Repo] = []
    wheres: list[str] = []
    first_seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"repositories[{index}]"
        if not isinstance(entry, dict):
            problem(where, "must be an object")
            continue
        if isinstance(entry.get("name"), str):
            shown = entry["name"]
            where += f" ({shown})" if NAME_RE.fullmatch(shown) else f" ({shown!r})"
        before = len(problems)
        for key in sorted(set(entry).difference(REPO_FIELDS, {COMMANDS_FIELD})):
            problem(f"{where}.{key}", f"unknown key (allowed: {', '.join([*REPO_FIELDS, COMMANDS_FIELD])})")
        if COMMANDS_FIELD in entry:
            _check_commands(entry[COMMANDS_FIELD], f"{config_file}: {where}.{COMMANDS_FIELD}", problems)
        for key, (kind, described) in REPO_FIELDS.items():
            value = entry.get(key)
            if key in entry and not isinstance(value, kind):
                problem(f"{where}.{key}", f"must be {described}, got {json.dumps(value)}")
        if isinstance(entry.get("tags"), list) and not all(isinstance(t, str) for t in entry["tags"]):
            problem(f"{where}.tags", "must be a list of strings")
        name = entry.get("name")
        if "name" not in entry:
            problem(f"{where}.name", "missing")
        elif isinstance(name, str):
            if not NAME_RE.fullmatch(name):
                problem(f"{where}.name", f"{name!r} must use only A-Z a-z 0-9 . _ - and not start with . or -")
            elif name in first_seen:
                problem(f"{where}.name", f"duplicate name {name!r} (also repositories[{first_seen[name]}])")
            else:
                first_seen[name] = index
        local = entry.get("local")
        if "local" not in entry:
            problem(f"{where}.local", "missing (the repo's path)")
        elif isinstance(local, str) and not local.strip():
            problem(f"{where}.local", "must not be empty")
        elif isinstance(local, str) and not os.path.isabs(os.path.expanduser(local)):
            normalized = os.path.normpath(local)
            if normalized == ".." or normalized.startswith("../"):
                problem(f"{where}.local", f"{local!r} escapes the workspace ({workspace_dir}); use an absolute path")
        language = entry.get("language")
        if isinstance(language, str) and language not in LANGUAGES:
            problem(f"{where}.language", f"{language!r} is not one of {', '.join(LANGUAGES)}")
        if len(problems) > before:
            continue
        repos.append(_make_repo(entry, workspace_dir))
        wheres.append(where)
    for repo, real in zip(repos, _same_directory_problems(repos, wheres, problem)):
        object.__setattr__(repo, "real", real)  # frozen: set once, before anyone else sees the repo

    if problems:
        raise ConfigError(problems)
    return Workspace(config_file=config_file, repos=tuple(repos))


def _check_commands(value: Any, where: str, problems: list[str]) -> None:
    """`"commands": {"test": "pytest -q"}`: workflow names to non-empty command templates (workflow rules)."""
    if not isinstance(value, dict):
        problems.append(f"{where}: must be an object like {{\"test\": \"pytest -q\"}}, got {clip(json.dumps(value))}")
        return
    for name, command in value.items():
        if not NAME_RE.fullmatch(name):
            problems.append(f"{where}: {clip(repr(name))} is not a workflow name (A-Z a-z 0-9 . _ -)")
        elif not isinstance(command, str) or not command.strip():
            problems.append(f"{where}.{name}: must be a non-empty string (a shell command)")
        else:
            check_template(command, f"{where}.{name}", problems, REPO_FIELDS)


def _same_directory_problems(repos: list[Repo], wheres: list[str], problem: Callable[[str, str], None]) -> list[str]:
    """Two entries for one directory (`/x/r` and `/x/r/`, a symlink) would be synced against themselves.

    Returns each repo's resolved path."""
    seen: dict[str, str] = {}
    reals = real_paths(repo.local for repo in repos)
    for where, real in zip(wheres, reals):
        if real in seen:
            problem(f"{where}.local", f"same directory as {seen[real]} ({real}); each repo needs its own entry")
        else:
            seen[real] = where
    return reals


def _make_repo(entry: dict[str, Any], workspace_dir: Path) -> Repo:
    # String operations and one Path: a config of hundreds of repos is read by every command.
    local = os.path.join(workspace_dir, os.path.expanduser(entry["local"]))  # an absolute `local` wins
    local = Path(os.path.normpath(local))
    language = entry.get("language")
    detected = language is None
    if language is None:
        language = detect_language(local)
    return Repo(
        name=entry["name"],
        local=local,
        platform=entry.get("platform", ""),
        remote=entry.get("remote", ""),
        default_branch=entry.get("default_branch") or "main",
        language=language,
        language_detected=detected,
        has_claude_md=entry.get("has_claude_md", False),
        tags=tuple(entry.get("tags", ())),
        description=entry.get("description", ""),
        host=entry.get("host"),
        commands=tuple(sorted(entry.get(COMMANDS_FIELD, {}).items())),
    )
