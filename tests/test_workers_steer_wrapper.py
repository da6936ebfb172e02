"""Which process is a try's wrapper, when the monitor ends a try whose agent has not started (act.end_try): the one
its pane's command was started as (tagged with ORCHESTRATOR_WRAPPER at respawn), or the worker's pane's own process
running the try's spec; never a process whose arguments merely name the wrapper and the spec.

Real processes, a real tmux server on a private socket (the `project` fixture); the try is ended in this process,
its "wrappers" are stand-ins whose arguments and environment are those of the case.
"""
from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from workers_fixtures import one_try_given_a_follow_up, project, retry_until, tmux_socket  # noqa: F401

from orchestrator import act, tmux
from orchestrator import commands as steering
from orchestrator.run import open_run
from orchestrator.state import WorkerRecord
from orchestrator.windows import try_tag, worker_window
from orchestrator.wrapper import WRAPPER_VAR

# A wrapper stuck before its agent: SIGTERM is not heeded.
STUCK = "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n" \
        "time.sleep(3600)"


def kept(run: Any) -> list[str]:
    return [e["text"] for e in steering.pending_followups(run.state_root, "demo", 1)]


def test_a_command_naming_the_wrapper_and_the_spec_is_never_signalled_and_the_follow_up_is_given_back(
        project, monkeypatch):
    """`tail -f <wrapper> <spec>` ends with the wrapper's two arguments: it was taken for the try's wrapper and sent
    SIGTERM. It runs on untouched; no wrapper of the try runs, so its follow-up is kept again at once."""
    run, record = one_try_given_a_follow_up(project)
    monkeypatch.setattr(act, "WRAPPER_STOP_WAIT", 1.0)
    tail = subprocess.Popen(["tail", "-f", str(act.WRAPPER), str(run.files.try_spec(1, 1))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        retry_until(lambda: Path(f"/proc/{tail.pid}/cmdline").read_bytes().endswith(
            str(run.files.try_spec(1, 1)).encode() + b"\0"), seconds=60)
        act.end_try(run, record)
        assert tail.poll() is None, "a user's tail was signalled"
    finally:
        tail.kill()
        tail.wait()
    assert kept(run) == ["mind the changelog"]


def test_a_wrapper_started_from_another_checkout_is_stopped_before_its_follow_up_is_given_back(project, monkeypatch):
    """A try's wrapper started by another checkout of the tool (another path to wrapper.py and to python) carries
    the try's ORCHESTRATOR_WRAPPER tag: it is found, stopped (SIGKILL: it does not heed SIGTERM), and only then is
    the follow-up kept again. It was not matched at all, and the follow-up given back while it could still start
    its agent with it."""
    run, record = one_try_given_a_follow_up(project)
    monkeypatch.setattr(act, "WRAPPER_STOP_WAIT", 1.0)
    stuck = subprocess.Popen([sys.executable, "-c", STUCK, "/elsewhere/orchestrator/wrapper.py",
                              str(run.files.try_spec(1, 1))], stdout=subprocess.PIPE, text=True,
                             env={"PATH": "/usr/bin:/bin", WRAPPER_VAR: try_tag(run, 1, 1)})
    try:
        assert stuck.stdout.readline() == "ready\n"
        act.end_try(run, record)
        assert stuck.poll() == -signal.SIGKILL
    finally:
        if stuck.poll() is None:
            stuck.kill()
        stuck.wait()
    assert kept(run) == ["mind the changelog"]


def test_an_untagged_wrapper_in_the_workers_pane_is_stopped_before_its_follow_up_is_given_back(project, monkeypatch):
    """A wrapper of an older version carries no tag, from another checkout: found as the worker's pane's process
    running this try's spec, stopped, and only then the follow-up kept again."""
    run, record = one_try_given_a_follow_up(project)
    monkeypatch.setattr(act, "WRAPPER_STOP_WAIT", 1.0)
    window = worker_window(1)
    tmux.create_session(run.server, run.session, "dashboard", None)
    tmux.ensure_window(run.server, run.session, window, keep_dead=True)
    ready = run.files.root / "stand-in-ready"
    line = "exec " + shlex.join([sys.executable, "-c", STUCK.replace("print('ready', flush=True)",
                                                                     f"open({str(ready)!r}, 'w').close()"),
                                 "/elsewhere/orchestrator/wrapper.py", str(run.files.try_spec(1, 1))])
    tmux.respawn(run.server, tmux.panes(run.server, run.session)[window].pane_id, line)
    retry_until(ready.exists, seconds=60)
    act.end_try(run, record)
    retry_until(lambda: tmux.panes(run.server, run.session)[window].dead, seconds=60)
    assert kept(run) == ["mind the changelog"]


def test_a_wrapper_that_survives_sigkill_leaves_its_follow_up_given_and_says_so_in_the_event_log_and_status(
        project, monkeypatch):
    """A wrapper that not even SIGKILL ends (stuck in the kernel; here its signals are dropped) may still start its
    agent with the follow-up: it stays given to that try, never given twice. That was silent; now a `followup`
    event says so, and status shows it, so the user can send it again."""
    import os

    from workers_fixtures import orchestrator_cli as cli, status_document

    run, record = one_try_given_a_follow_up(project)
    monkeypatch.setattr(act, "WRAPPER_STOP_WAIT", 0.5)
    stuck = subprocess.Popen([sys.executable, "-c", STUCK, str(act.WRAPPER), str(run.files.try_spec(1, 1))],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, WRAPPER_VAR: try_tag(run, 1, 1)})
    real_kill, dropped = os.kill, []

    def kill(pid: int, signum: int) -> None:
        if pid == stuck.pid:
            dropped.append(signum)  # the signal does not end it
            return
        real_kill(pid, signum)

    try:
        assert stuck.stdout.readline() == "ready\n"
        monkeypatch.setattr(os, "kill", kill)
        act.end_try(run, record)
        act.end_try(run, record)  # ended again (a repeated skip): said once
        monkeypatch.setattr(os, "kill", real_kill)
        assert stuck.poll() is None and signal.SIGKILL in dropped
    finally:
        stuck.kill()
        stuck.wait()
    assert kept(run) == []
    events = [json.loads(line)["event"] for line in run.files.events.read_text().splitlines()]
    assert [(e["id"], e["delivered"], e.get("wrapper_unstopped")) for e in events if e["action"] == "followup"] == \
        [("f1", None, "worker-1-try-1")]
    [issue] = status_document()["projects"][0]["issues"]
    assert [(f["id"], f["given_in"]) for f in issue["followups_in_doubt"]] == [("f1", "worker-1-try-1")]
    text = cli("status").stdout
    assert '#1: 1 follow-up given to worker-1-try-1, whose wrapper could not be stopped' in text, text
