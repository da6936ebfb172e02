"""Configs a user does not hand-write: the starter proof-issues.json (`init`), and which config and repo an
`add-issue` goes to."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from lib.config import Repo
from lib.errors import OrchestratorError
from lib.paths import Paths
from lib.statefile import fsync_dir, write_temp
from orchestrator.config import NAME, VALID_STAGES, ProjectConfig, config_files, load_config, parse_config


def add_issue_target(config: Path | None, config_dir: Path | None, repo: str, home: Path) -> tuple[Path, str]:
    """The config file an issue is appended to, and the `repo` value its entry gets ("" on a single-repo
    config). `--repo` is required when that config has several repos and must be one of them; with a
    directory of configs it also picks the config (the only one that has that repo)."""
    files = config_files(config, config_dir, home)
    if config_dir is None:
        cfg = load_config(files[0])
        return cfg.path, _repo_of(cfg, repo)
    loaded = [load_config(path) for path in files]
    if repo:
        having = [cfg for cfg in loaded if repo in cfg.repos]
        if not having:
            known = sorted({name for cfg in loaded for name in cfg.repos})
            raise OrchestratorError(f"add-issue: --repo {repo}: no config in {config_dir} has it "
                                    f"(known: {', '.join(known)})")
        if len(having) > 1:
            raise OrchestratorError(f"add-issue: --repo {repo} is in several configs of {config_dir} "
                                    f"({', '.join(cfg.path.name for cfg in having)}): name one with --config")
        return having[0].path, _repo_of(having[0], repo)
    if len(loaded) > 1:
        raise OrchestratorError(f"add-issue: {config_dir} has several configs "
                                f"({', '.join(cfg.path.name for cfg in loaded)}): name one with --repo or --config")
    return loaded[0].path, _repo_of(loaded[0], repo)


def _repo_of(cfg: ProjectConfig, repo: str) -> str:
    if repo and repo not in cfg.repos:
        raise OrchestratorError(f"add-issue: --repo {repo}: not a repo of {cfg.path} (known: {', '.join(cfg.repos)})")
    if len(cfg.repos) > 1:
        if not repo:
            raise OrchestratorError(f"add-issue: --repo is required: {cfg.path} has several repos "
                                    f"({', '.join(cfg.repos)})")
        return repo
    return ""  # a single-repo config keeps its shape: its issues name no repo



DEFAULT_PIPELINE = ("implement",)


def _commands(repo: Repo, paths: Paths) -> dict[str, str]:
    """The repo's build and test commands as `inv build` / `inv test` would run them (its own from repos.json,
    else the workflow's steps for its language), one shell line each; none when no step applies."""
    from lib.workflows import get_workflow, load_workflows, plan_for

    workflows = load_workflows(paths)
    out: dict[str, str] = {}
    for name in ("build", "test"):
        if name not in workflows:
            continue
        plan = plan_for(get_workflow(workflows, name), repo, paths.log_dir)
        lines = []
        for command in plan.commands:
            where = os.path.relpath(command.cwd, repo.local)
            lines.append(command.command if where == "." else f"cd {shlex.quote(where)} && {command.command}")
        if lines:
            out[f"{name}_command"] = " && ".join(lines)
    return out


def starter(repo: Repo, pipeline: tuple[str, ...], paths: Paths, agent_command: str = "") -> dict[str, Any]:
    """A proof-issues.json of the original's shape for one repos.json entry, with one example issue."""
    project = repo.name if NAME.match(repo.name) else "proof"
    doc: dict[str, Any] = {
        "project": project, "repo": repo.name, "repo_path": str(repo.local),
        "worktree_base": str(repo.local.with_name(repo.local.name + "-worktrees")),
        "branch_prefix": "proof/issue-", "default_branch": repo.default_branch,
        "platform": repo.platform or "gitlab", "remote": repo.remote,
        "pipeline": list(pipeline),
        "project_context": {"language": repo.language, **_commands(repo, paths), "safety_rules": [],
                            "commit_prefix": project, "key_files": []},
        "issues": [{"number": 1, "title": "Example: replace with the first change to make", "priority": 1,
                    "depends_on": [], "wave": 1, "status": "pending", "assigned_worker": None,
                    "description": "Say what the agent should do and how to check it is done."}],
        "num_workers": 2, "cycle_interval": 60, "max_retries": 3, "stall_timeout": 900,
        "wall_clock_timeout": 1800, "stagger_delay": 30, "tmux_session": "proof-orchestrator",
        "tmux_socket": "proof-workers",
    }
    if agent_command:
        doc["agent_command"] = agent_command
    return doc


def init(paths: Paths, repo_name: str, pipeline: str = "", config: Path | None = None,
         agent_command: str = "") -> Path:
    """Write a starter config for a repos.json repo; never over an existing file. Returns its path."""
    from lib.config import load_workspace

    stages = tuple(s.strip() for s in pipeline.split(",") if s.strip()) if pipeline else DEFAULT_PIPELINE
    unknown = [s for s in stages if s not in VALID_STAGES]
    if unknown or not stages:
        raise OrchestratorError(f"init: --pipeline: unknown stage {unknown[0]!r} (known: {', '.join(VALID_STAGES)})"
                                if unknown else "init: --pipeline: name at least one stage, like implement,review")
    if not repo_name:
        raise OrchestratorError("init: --repo NAME is required (a repo of config/repos.json)")
    path = Path(config).expanduser().resolve() if config else paths.config_dir / "proof-issues.json"
    if os.path.lexists(path):
        raise OrchestratorError(f"init: {path} exists; not overwriting it (move it away, or give --config "
                                "another file)")
    repo = load_workspace(paths.repos_file).get(repo_name)
    doc = starter(repo, stages, paths, agent_command)
    parse_config(path, json.loads(json.dumps(doc)))  # what is written loads
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OrchestratorError(f"init: cannot write {path}: {err.strerror or err}") from None
    tmp = ""
    try:
        # statefile's temp file: a plain file's mode and fsynced; linked, not renamed, so it never replaces one
        tmp = write_temp(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        os.link(tmp, path)  # fails if the file appeared meanwhile: never replaced
        fsync_dir(path.parent)
    except FileExistsError:
        raise OrchestratorError(f"init: {path} exists; not overwriting it (move it away, or give --config "
                                "another file)") from None
    except OSError as err:
        raise OrchestratorError(f"init: cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
    return path


def init_notes(agent_command: str) -> list[str]:
    """What the user should know about the file just written, on this machine."""
    if not agent_command and os.geteuid() == 0:
        return ["note: running as root, Claude Code refuses --dangerously-skip-permissions: launch will ask for "
                "IS_SANDBOX=1 at the start of agent_command (give it with --agent-command, or run as a user)"]
    return []
