"""Hostile review of "proof workers never trust the agent": agents and users that try to make the monitor lose work
or lie. Real tmux on a private socket, real git with a bare remote, scripted agents."""
from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path

from conftest import process_running, wait_gone
from workers_fixtures import project, tmux_socket  # noqa: F401

from orchestrator.monitor import monitor
from orchestrator.run import open_run

# An agent that starts a daemon the way `env -i setsid sh -c 'cmd &'` does: the daemon drops the whole
# environment (so the try's ORCHESTRATOR_TRY tag too), leaves the agent's process group and session, and
# its parent exits at once (a double fork). Then it commits and exits 0.
UNTAGGED_DAEMON = r'''
import os, subprocess, sys, time
from pathlib import Path
out = Path(sys.argv[1])
subprocess.run(["env", "-i", "/bin/sh", "-c",
                'setsid /bin/sh -c "sleep 3605 & echo \\$! > \\"$0\\"" </dev/null >/dev/null 2>&1 &', str(out)],
               check=True)
while not out.exists() or not out.read_text().strip():
    time.sleep(0.05)
Path("work.txt").write_text("done\n")
for args in (["add", "-A"], ["commit", "-q", "-m", "work"]):
    subprocess.run(["git", "-c", "user.name=A", "-c", "user.email=a@example.com", *args], check=True)
'''


def _kill_listed(pids_file: Path) -> None:
    text = pids_file.read_text().split() if pids_file.exists() else []
    for pid in map(int, text):
        if process_running(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_daemon_that_drops_its_environment_and_double_forks_does_not_outlive_its_try(project, tmp_path):
    """`env -i setsid sh -c 'cmd &'` carries no try tag and leaves the group: before, it outlived its try."""
    agent = tmp_path / "untagged_daemon.py"
    agent.write_text(UNTAGGED_DAEMON)
    pids_file = tmp_path / "daemon.pid"
    project([{"number": 1, "title": "one"}], pipeline=["implement"],
            agent_command=f"{shlex.quote(sys.executable)} {shlex.quote(str(agent))} {shlex.quote(str(pids_file))}")
    try:
        assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
        daemon = int(pids_file.read_text().split()[0])
        environ = Path(f"/proc/{daemon}/environ").read_bytes() if process_running(daemon) else b""
        assert b"ORCHESTRATOR_TRY" not in environ  # the case under test: no tag to find it by
        assert wait_gone(daemon, 20), "a double-forked daemon without the try's tag outlived its try"
    finally:
        _kill_listed(pids_file)
