"""tmux through libtmux on an injected Server: exact targets only, one listing call per monitor cycle (a second
only to confirm a try lost to tmux: monitor.confirm_panes)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lib.errors import OrchestratorError

if TYPE_CHECKING:
    import libtmux

SOCKET_ENV = "ORCHESTRATOR_TMUX_SOCKET"


class TmuxFailed(OrchestratorError):
    exit_code = 1


def call(srv: libtmux.Server, *args: str) -> Any:
    """One tmux command; a missing tmux binary is a one-line error, not a traceback."""
    from libtmux.exc import TmuxCommandNotFound

    try:
        return srv.cmd(*args)
    except TmuxCommandNotFound:
        raise OrchestratorError("tmux is not installed (needed to run workers)") from None


@dataclass(frozen=True)
class Pane:
    window: str
    pane_id: str
    pid: int | None
    dead: bool
    server: str = ""  # the tmux server's pid and start time: pane ids start again at %0 in a new server

    @property
    def identity(self) -> str:
        """Names this pane and no later one: a pane re-created after tmux died has another identity."""
        return f"{self.server}/{self.pane_id}"


def server(socket: str | None = None) -> libtmux.Server:
    """The tmux server to drive: ORCHESTRATOR_TMUX_SOCKET, else the config's tmux_socket, else the default."""
    import libtmux

    chosen = os.environ.get(SOCKET_ENV) or socket
    if not chosen:
        return libtmux.Server()
    if "/" in chosen:
        return libtmux.Server(socket_path=chosen)
    return libtmux.Server(socket_name=chosen)


def _cmd(srv: libtmux.Server, *args: str) -> list[str]:
    result = call(srv, *args)
    if result.returncode != 0:
        raise TmuxFailed(f"tmux {args[0]}: {' '.join(result.stderr) or 'failed'}")
    return list(result.stdout)


def session_exists(srv: libtmux.Server, name: str) -> bool:
    # `=name` makes tmux match the whole name, never a prefix.
    return bool(call(srv, "has-session", "-t", f"={name}").returncode == 0)


def panes(srv: libtmux.Server, session: str) -> dict[str, Pane]:
    """Every pane of the session by window name, in one tmux call ({} when the session or server is gone).

    Any other failure raises: an unanswered listing must never read as "every agent is gone".
    """
    result = call(srv, "list-panes", "-s", "-t", f"={session}", "-F",
                     "#{window_name}\t#{pane_id}\t#{pane_pid}\t#{pane_dead}\t#{pid}@#{start_time}")
    if result.returncode != 0:
        message = " ".join(result.stderr)
        # Only these mean "not there"; a busy or interrupted server ("Resource temporarily unavailable",
        # "lost server") is an error to retry next cycle.
        if any(gone in message for gone in ("can't find", "no server running", "No such file or directory",
                                            "Connection refused")):
            return {}
        raise TmuxFailed(f"tmux list-panes: {message or 'failed'}")
    table: dict[str, Pane] = {}
    for line in result.stdout:
        parts = line.split("\t")
        if len(parts) != 5:
            continue
        window, pane_id, pid, dead, server = parts
        table.setdefault(window, Pane(window, pane_id, int(pid) if pid.isdigit() else None, dead == "1", server))
    return table


def create_session(srv: libtmux.Server, name: str, first_window: str, command: str | None,
                   cwd: str | None = None) -> None:
    """A detached session; `-t`-free, so no name matching is involved (tmux refuses a duplicate name)."""
    _cmd(srv, "new-session", "-d", "-s", name, "-n", first_window, *(["-c", cwd] if cwd else []),
         *([command] if command else []))


def _options(cwd: str | None, env: dict[str, str] | None) -> list[str]:
    args = ["-c", cwd] if cwd else []
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    return args


def ensure_window(srv: libtmux.Server, session: str, window: str, command: str | None = None,
                  cwd: str | None = None, env: dict[str, str] | None = None, keep_dead: bool = False) -> None:
    """Create the window when missing (found by exact name); worker windows keep a dead pane visible."""
    if window in panes(srv, session):
        return
    _cmd(srv, "new-window", "-d", "-t", f"={session}:", "-n", window, *_options(cwd, env),
         *([command] if command else []))
    if keep_dead:
        set_keep_dead(srv, session, window)


def set_keep_dead(srv: libtmux.Server, session: str, window: str) -> None:
    """remain-on-exit: a finished command leaves a dead pane (and its pid) to inspect, not a closed window."""
    _cmd(srv, "set-option", "-w", "-t", f"={session}:={window}", "remain-on-exit", "on")


def respawn(srv: libtmux.Server, pane_id: str, command: str, cwd: str | None = None,
            env: dict[str, str] | None = None) -> None:
    """Replace whatever runs in the pane with `command` (a line of shell-quoted paths)."""
    _cmd(srv, "respawn-pane", "-k", "-t", pane_id, *_options(cwd, env), command)


def kill_session(srv: libtmux.Server, name: str) -> bool:
    if not session_exists(srv, name):
        return False
    _cmd(srv, "kill-session", "-t", f"={name}")
    return True
