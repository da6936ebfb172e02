"""Configs a user does not hand-write: the starter proof-issues.json (`init`), and which config and repo an
`add-issue` goes to."""
from __future__ import annotations

from pathlib import Path

from lib.errors import OrchestratorError
from orchestrator.config import ProjectConfig, config_files, load_config


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

