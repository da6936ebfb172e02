"""Probes and locks without tmux: per-try signal files, and one monitor per project and per session."""
from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts" / "proof-workers"))

from orchestrator.probe import snapshot  # noqa: E402
from orchestrator.run import open_run  # noqa: E402
from orchestrator.state import MonitorBusy, RunFiles, WorkerRecord, monitor_lock  # noqa: E402


def test_a_stale_exit_code_from_an_earlier_try_or_another_worker_never_decides(tmp_path):
    files = RunFiles(tmp_path)
    for worker, try_id in ((1, 1), (2, 2)):
        path = files.signal(worker, try_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("0\n")
    record = WorkerRecord(1, "running", "p", 1, "b", None, try_id=2, started_at=0)
    snap = snapshot(record, None, {}, files, now=10)
    assert snap.exit_code is None and snap.try_id == 2 and not snap.agent_alive and not snap.pane_exists
    files.signal(1, 2).write_text("garbage")
    assert snapshot(record, None, {}, files, now=10).exit_code is None
    files.signal(1, 2).write_text("3\n")
    assert snapshot(record, None, {}, files, now=10).exit_code == 3


def write_config(home, name, project, session):
    path = home / "config" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"project": project, "repo_path": str(home / "repo"), "branch_prefix": "x-",
                                "tmux_session": session, "issues": []}))
    return path


def test_one_monitor_per_project_and_per_tmux_session(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path))
    monkeypatch.setenv("ORCHESTRATOR_TMUX_SOCKET", "never-started")
    a = open_run(write_config(tmp_path, "a-issues.json", "alpha", "shared"))
    same_project = open_run(write_config(tmp_path, "a2-issues.json", "alpha", "other"))
    same_session = open_run(write_config(tmp_path, "b-issues.json", "beta", "shared"))
    elsewhere = open_run(write_config(tmp_path, "c-issues.json", "gamma", "own"))
    with monitor_lock(a.locks()):
        with pytest.raises(MonitorBusy, match="another monitor is running for alpha"):
            with monitor_lock(same_project.locks()):
                pass
        with pytest.raises(MonitorBusy, match="tmux session shared"):
            with monitor_lock(same_session.locks()):
                pass
        with monitor_lock(elsewhere.locks()):
            pass
    with monitor_lock(same_session.locks()):
        pass


def test_a_try_seen_running_or_finished_counts_as_started_even_if_the_monitor_died_before_recording_it(tmp_path):
    files = RunFiles(tmp_path)
    record = WorkerRecord(1, "running", "p", 1, "b", None, try_id=3, launched=False, started_at=0)
    snapshot(record, None, {}, files, now=1)
    assert not record.launched
    files.signal(1, 3).parent.mkdir(parents=True, exist_ok=True)
    files.signal(1, 3).write_text("0\n")
    snapshot(record, None, {}, files, now=2)
    assert record.launched


def test_a_tmux_listing_that_fails_is_an_error_not_an_empty_session():
    from orchestrator.tmux import TmuxFailed, panes

    class Result:
        def __init__(self, code, stderr):
            self.returncode, self.stderr, self.stdout = code, stderr, []

    class Server:
        def __init__(self, result):
            self.result = result

        def cmd(self, *args):
            return self.result

    assert panes(Server(Result(1, ["can't find session: =x"])), "x") == {}
    assert panes(Server(Result(1, ["no server running on /tmp/tmux-0/s"])), "x") == {}
    assert panes(Server(Result(1, ["error connecting to /tmp/tmux-0/s (No such file or directory)"])), "x") == {}
    for transient in ("lost server", "error connecting to /tmp/tmux-0/s (Resource temporarily unavailable)"):
        with pytest.raises(TmuxFailed, match=transient.split(" (")[0]):
            panes(Server(Result(1, [transient])), "x")


FIFO_LOCK = """
import os, sys; sys.path.insert(0, %r); sys.path.insert(0, %r)
from pathlib import Path
from lib.errors import OrchestratorError
from orchestrator.state import monitor_lock
os.mkfifo(%r)
try:
    with monitor_lock([("alpha", Path(%r))]):
        print("held")
except OrchestratorError as err:
    print("refused:", err)
"""


def test_a_fifo_where_the_monitor_lock_belongs_is_refused_in_one_line_never_waited_on(tmp_path):
    """open(path, "a+") on a FIFO was a traceback (not seekable) from the monitor, launch and every verb."""
    import subprocess
    lock = tmp_path / "state" / "alpha" / "monitor.lock"
    lock.parent.mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", FIFO_LOCK % (str(ROOT), str(ROOT / "scripts" / "proof-workers"),
                                                               str(lock), str(lock))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        pytest.fail("the monitor lock waited on a FIFO")
    assert out.startswith("refused:") and "not a regular file" in out and str(lock) in out, (out, err)


def test_the_monitor_lock_names_its_holder_and_is_emptied_when_released(tmp_path):
    lock = tmp_path / "monitor.lock"
    with monitor_lock([("alpha", lock)]):
        with pytest.raises(MonitorBusy, match=rf"another monitor is running for alpha \(pid {os.getpid()} started "):
            with monitor_lock([("alpha", lock)]):
                pass
    assert lock.read_text() == ""
