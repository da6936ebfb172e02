"""Every git sync-all starts, its reads too, is killed by a stop (Ctrl-C, SIGTERM) and by the watchdog.

A read (the status sync takes for the closing scan, the dirty check, ...) can hang on an fsmonitor
hook or a clean filter just as a fetch can hang on the network.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import ROOT, process_running, stop_when, wait_gone
from tests.sshd_fixtures import sshd  # noqa: F401  (a fixture)
from tests.sync_fixtures import full_snapshot, slow_fsmonitor, wait_for_file


def start_sync(cwd: Path) -> subprocess.Popen:
    """The sync script as a user runs it (its own process: a stop signal is sent to it, not to the test)."""
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py")], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@contextmanager
def reaped(pid: int) -> Iterator[None]:
    """Whatever the test asserts about `pid`, it is not left running after it (SIGKILL on the way out)."""
    try:
        yield
    finally:
        if process_running(pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def results_of(home) -> dict[str, dict]:
    return {r["repo"]: r for r in home.state("sync-results.json")["results"]}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_during_syncs_own_status_kills_it_and_records_the_repo(home, make_repo, tmp_path, signum):
    # The status sync reads of an up-to-date repo (its row for the closing scan) ran as a plain
    # subprocess: a stop said "stopped 0 running commands" and waited for the hook to end.
    repo = make_repo("steady")
    before = full_snapshot(repo.path)
    pid_file = slow_fsmonitor(repo.path, tmp_path)
    home.add(repo)
    sync = start_sync(tmp_path)
    out, _ = stop_when(sync, lambda: wait_for_file(pid_file, 60), signum, seconds=90)
    hook = int(pid_file.read_text().split()[0])
    with reaped(hook):
        assert sync.returncode == 128 + signum and "Traceback" not in out, out
        assert f"interrupted: stopped 1 running command ({signal.Signals(signum).name})" in out, out
        assert wait_gone(hook, 30), "the fsmonitor hook outlived the sync that started it"
        # The repo had synced before its status was stopped: its outcome is recorded, nothing changed.
        entry = results_of(home)["steady"]
        assert entry["status"] == "up to date" and entry["before"] == entry["after"], entry
        subprocess.run(["git", "-C", str(repo.path), "config", "--unset", "core.fsmonitor"], check=True)
        assert full_snapshot(repo.path) == before


def test_a_stop_during_the_dirty_check_kills_it_and_moves_nothing(home, make_repo, tmp_path):
    # The dirty check before a fast-forward is a `git status` too: the hook holds it.
    repo = make_repo("behind")
    upstream = repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    pid_file = slow_fsmonitor(repo.path, tmp_path)
    home.add(repo)
    main_before = subprocess.run(["git", "-C", str(repo.path), "rev-parse", "refs/heads/main"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    sync = start_sync(tmp_path)
    out, _ = stop_when(sync, lambda: wait_for_file(pid_file, 60), signal.SIGINT, seconds=90)
    hook = int(pid_file.read_text().split()[0])
    with reaped(hook):
        assert sync.returncode == 130 and "Traceback" not in out, out
        assert "interrupted: stopped 1 running command (SIGINT)" in out, out
        assert wait_gone(hook, 30), "the fsmonitor hook outlived the sync that started it"
        after = subprocess.run(["git", "-C", str(repo.path), "rev-parse", "refs/heads/main"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert after == main_before != upstream
        # Stopped before its outcome was known: no result is made up for it.
        assert "behind" not in (results_of(home) if (home.path / "state" / "sync-results.json").exists() else {})


def test_a_sync_killed_outright_during_its_status_leaves_nothing_running(home, make_repo, tmp_path):
    # SIGKILL gives sync no chance to stop anything: the watchdog kills its reads as it kills its steps.
    repo = make_repo("steady")
    pid_file = slow_fsmonitor(repo.path, tmp_path)
    home.add(repo)
    sync = start_sync(tmp_path)
    stop_when(sync, lambda: wait_for_file(pid_file, 60), signal.SIGKILL, seconds=90)
    hook = int(pid_file.read_text().split()[0])
    with reaped(hook):
        assert sync.returncode == -signal.SIGKILL
        assert wait_gone(hook, 60), "the fsmonitor hook outlived the sync killed outright"


def test_a_read_that_leaves_a_process_holding_its_pipes_returns_and_kills_it(tmp_path):
    from lib.runner import capture

    pid_file = tmp_path / "held.pid"
    result = capture(["sh", "-c", f"sleep 120 & echo $! > '{pid_file}'; echo done"], None)
    held = int(pid_file.read_text())
    with reaped(held):
        assert result.returncode == 0 and result.stdout == b"done\n"
        assert wait_gone(held, 30), "the process holding the read's pipes outlived it"


def test_what_a_read_left_outside_its_group_is_killed_when_the_run_ends(tmp_path):
    # Not looked for after each read (a /proc scan per git is what made sync slow): the watchdog
    # kills it, by the marker in its environment, once the process that ran the read is gone.
    pid_file = tmp_path / "escaped.pid"
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from lib.runner import capture; "
              "print(capture(['sh', '-c', 'setsid sleep 120 </dev/null >/dev/null 2>&1 & echo $! > ' + sys.argv[2]],"
              " None).returncode)")
    run = subprocess.run([sys.executable, "-c", script, str(ROOT), str(pid_file)], capture_output=True, text=True,
                         timeout=60)
    escaped = int(pid_file.read_text())
    with reaped(escaped):
        assert run.returncode == 0 and run.stdout.strip() == "0", run.stdout + run.stderr
        assert wait_gone(escaped, 30), "a read's leftover outlived the run"


def test_a_stop_during_the_hosts_own_status_records_the_repo_it_had_synced(home, make_repo, sshd, tmp_path):
    # The host's sync reads the status of each repo it left as it was: a stop there kills that git on the
    # host and the repo is recorded here with what the host's sync had found.
    from tests.test_sync_host import results, setup
    from tests.test_sync_host_robust import inv_subprocess, wait_until

    handle = make_repo("steady")
    workspace = setup(home, sshd, tmp_path, [handle])
    pid_file = slow_fsmonitor(workspace / "steady", tmp_path)
    err_file = tmp_path / "stderr.txt"
    proc = inv_subprocess(tmp_path, "sync-all", "--host", "builder", stderr=err_file)
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the host's status")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    hook = int(pid_file.read_text().split()[0])
    with reaped(hook):
        err = err_file.read_text()
        assert proc.returncode == 130 and "Traceback" not in err, out + err
        assert "interrupted: stopped 1 running command (SIGINT)" in err, err
        entry = results(home)["steady"]
        assert entry["status"] == "up to date" and entry["host"] == "builder", entry
        assert wait_gone(hook, 30), "the hook on the host outlived the sync there"


@pytest.mark.parametrize("holding", ["", "its stderr"], ids=["detached", "holding the fetch's stderr"])
def test_what_a_fetch_left_outside_its_group_is_killed_when_the_sync_ends(home, make_repo, tmp_path, holding):
    # A fetch's leftovers (a detached `gc --auto`, an ssh ControlPersist master) are not looked for after
    # each fetch: the watchdog kills them, by the marker in their environment, when sync-all ends. One
    # that keeps the fetch's output pipe open does not hold the sync up.
    repo = make_repo("steady")
    pid_file = tmp_path / "escaped.pid"
    upload_pack = tmp_path / "upload-pack"
    redirects = "</dev/null >/dev/null" + ("" if holding else " 2>&1")
    upload_pack.write_text(f"#!/bin/sh\nsetsid sleep 120 {redirects} &\necho $! > '{pid_file}'\n"
                           'exec git-upload-pack "$@"\n')
    upload_pack.chmod(0o755)
    repo.git("config", "remote.origin.uploadpack", str(upload_pack))
    home.add(repo)
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    escaped = int(pid_file.read_text())
    with reaped(escaped):
        assert run.returncode == 0 and "up to date" in run.stdout, run.stdout + run.stderr
        assert wait_gone(escaped, 30), "a fetch's leftover outlived the sync"
