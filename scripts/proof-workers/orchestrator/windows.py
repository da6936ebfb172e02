"""A run's tmux session, named and filled: worker windows, each try's process tag, the dashboard window and the
verb lines the monitor's and dashboard's windows run. A leaf: act, launch, monitor and show all use it."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lib.paths import Paths
from orchestrator import tmux

if TYPE_CHECKING:
    from orchestrator.run import Run

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def worker_window(worker: int) -> str:
    return f"worker-{worker}"


def try_tag(run: Run, worker: int, try_id: int) -> str:
    """The value of ORCHESTRATOR_TRY in every process of this try: unique to the run (its state dir)."""
    return f"{run.files.root}/worker-{worker}/try-{try_id}"


def verb_line(verb: str, run: Run, *extra: str) -> str:
    """The shell line a window runs for a verb of this run, with the run's own config and overrides."""
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


def window_env() -> dict[str, str]:
    """What a window of ours needs from this environment: the home, and the private tmux socket if set."""
    env = {"ORCHESTRATOR_HOME": str(Paths.from_env().home)}
    if os.environ.get(tmux.SOCKET_ENV):
        env[tmux.SOCKET_ENV] = os.environ[tmux.SOCKET_ENV]
    return env


def ensure_dashboard(run: Run) -> None:
    """The dashboard window, running the dashboard verb (created when missing: a session re-made after tmux died)."""
    tmux.ensure_window(run.server, run.session, "dashboard", verb_line("dashboard", run), cwd=str(PACKAGE_DIR),
                       env=window_env(), keep_dead=True)
