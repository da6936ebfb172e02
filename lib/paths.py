"""Where things live: ORCHESTRATOR_HOME (config/, state/, tasks/, reports/) and the log dir."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

CHECKOUT_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG_DIR = CHECKOUT_ROOT / "config"


@dataclass(frozen=True)
class Paths:
    home: Path
    log_dir: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Paths:
        env = os.environ if environ is None else environ
        home = env.get("ORCHESTRATOR_HOME") or str(CHECKOUT_ROOT)
        log_dir = env.get("ORCHESTRATOR_LOG_DIR") or tempfile.gettempdir()
        return cls(home=Path(home).expanduser().resolve(), log_dir=Path(log_dir).expanduser().resolve())

    @property
    def config_dir(self) -> Path:
        return self.home / "config"

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @property
    def repos_file(self) -> Path:
        return self.config_dir / "repos.json"

    @property
    def workflows_file(self) -> Path:
        return self.config_dir / "workflows.json"

    @property
    def repo_status_file(self) -> Path:
        return self.state_dir / "repo-status.json"

    @property
    def build_results_file(self) -> Path:
        return self.state_dir / "build-results.json"

    @property
    def test_results_file(self) -> Path:
        return self.state_dir / "test-results.json"

    @property
    def sync_results_file(self) -> Path:
        return self.state_dir / "sync-results.json"

    @property
    def tasks_dir(self) -> Path:
        return self.home / "tasks"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"


def real_paths(paths: Iterable[os.PathLike[str] | str]) -> list[str]:
    """`os.path.realpath` of each path, resolving each parent directory once.

    Hundreds of repos share a parent; realpath would lstat every component of
    every path again. A path whose last component is a symlink (or `..`) is
    resolved in full.
    """
    parents: dict[str, str] = {}
    resolved = []
    for path in map(os.fspath, paths):
        head, name = os.path.split(path)
        if not os.path.isabs(path) or name in ("", ".", "..") or os.path.islink(path):
            resolved.append(os.path.realpath(path))
            continue
        if head not in parents:
            parents[head] = os.path.realpath(head)
        resolved.append(os.path.join(parents[head], name))
    return resolved
