"""One run's context: its configs (the first one leads: session, workers, timings), state files, tmux server."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from lib.errors import ConfigError
from lib.paths import Paths
from orchestrator.config import ProjectConfig, config_files, load_configs
from orchestrator.state import RunFiles

if TYPE_CHECKING:
    import libtmux


@dataclass
class Run:
    configs: list[ProjectConfig]
    files: RunFiles
    server: libtmux.Server
    state_root: Path
    sources: list[Path] = field(default_factory=list)
    workers_override: int = 0
    session_override: str = ""
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    @property
    def lead(self) -> ProjectConfig:
        return self.configs[0]

    @property
    def session(self) -> str:
        return self.lead.tmux_session

    @property
    def num_workers(self) -> int:
        return self.lead.num_workers

    def config_of(self, project: str) -> ProjectConfig:
        for cfg in self.configs:
            if cfg.project == project:
                return cfg
        raise ConfigError(f"project {project!r} is no longer in the configs ({', '.join(str(s) for s in self.sources)})")

    def locks(self) -> list[tuple[str, Path]]:
        """The monitor's locks: one per project, and one for the tmux session it drives."""
        import os

        from orchestrator.tmux import SOCKET_ENV

        socket = (os.environ.get(SOCKET_ENV) or self.lead.tmux_socket or "default").replace("/", "%")
        return [(cfg.project, RunFiles(self.state_root / cfg.project).lock) for cfg in self.configs] + [
            (f"tmux session {self.session}", self.state_root / f".session-{socket}-{self.session}.lock")]

    def reload(self) -> None:
        """Re-read the configs (add-issue and status writes land there); a broken edit keeps the last good one."""
        self.configs = _override(load_configs(self.sources), self.workers_override, self.session_override)


def open_run(config: Path | None = None, config_dir: Path | None = None, workers: int = 0,
             session: str = "", server: libtmux.Server | None = None) -> Run:
    from orchestrator import tmux

    paths = Paths.from_env()
    sources = config_files(config, config_dir, paths.home)
    loaded = _override(load_configs(sources), workers, session)
    srv = server if server is not None else tmux.server(loaded[0].tmux_socket)
    return Run(configs=loaded, files=RunFiles(paths.state_dir / loaded[0].project), server=srv,
               state_root=paths.state_dir, sources=sources, workers_override=workers, session_override=session)


def _override(loaded: list[ProjectConfig], workers: int, session: str) -> list[ProjectConfig]:
    """--workers and --session replace the lead config's values for this run (the file is not changed)."""
    if workers or session:
        loaded[0] = replace(loaded[0], num_workers=workers or loaded[0].num_workers,
                            tmux_session=session or loaded[0].tmux_session)
    return loaded
