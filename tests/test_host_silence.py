"""`sync-all --host` and `status --host` when the host goes quiet: a silent connection, a hung login shell.

The "host" is this machine (the sshd fixture): what a run leaves there shows in /proc.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.conftest import process_running, wait_gone
from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.sync_fixtures import full_snapshot, outside_remote_tracking, slow_fsmonitor
from tests.test_hosts_mends import meanwhile
from tests.test_hosts_remote import clone_to
from tests.test_hosts_robust import host_processes, nothing_left_on_the_host, stop_the_sessions
from tests.test_sync_host import push_new_commit, results, setup
from tests.test_sync_host_robust import (driver_pids, fast_and_hung_slow, inv_subprocess, until_fast_is_done,
                                         wait_until)


def test_a_sync_whose_connection_goes_silent_is_killed_over_a_new_one_and_keeps_what_the_host_reported(
        home, make_repo, sshd, tmp_path):
    workspace, pid_file = fast_and_hung_slow(home, make_repo, sshd, tmp_path, connect_timeout=2)
    before = outside_remote_tracking(full_snapshot(workspace / "slow"))
    err_file = tmp_path / "stderr.txt"
    proc = inv_subprocess(tmp_path, "sync-all", "--host", "builder", stderr=err_file)
    stopped: list[int] = []
    try:
        until_fast_is_done(err_file, pid_file, workspace)
        stopped = stop_the_sessions(sshd)  # the connection goes silent, not closed
        out, _ = proc.communicate(timeout=90)  # before: no end at all
        hung = int(pid_file.read_text().split()[0])
        # Gone while the session that started them is still frozen: the kill came over a new connection.
        assert wait_gone(hung, 30), "the host's fetch outlived the silent connection"
        assert nothing_left_on_the_host(sshd), [Path(f"/proc/{p}/cmdline").read_bytes() for p in host_processes(sshd)]
        assert not driver_pids(workspace)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    err = err_file.read_text()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    entries = results(home)
    assert entries["fast"]["status"] == "updated" and entries["fast"]["host"] == "builder", entries["fast"]
    said = ("connection to host builder went silent (no answer for 6s); "
            "the sync was killed on the host over a new connection")
    assert entries["slow"]["status"] == "failed" and entries["slow"]["reason"] == said, entries["slow"]
    assert f"slow: failed: {said}" in err, err
    assert said in Path(entries["slow"]["log"]).read_text()
    assert "outcome: fast: updated" in Path(entries["fast"]["log"]).read_text()  # copied over a new connection
    assert not list((workspace / ".orchestrator" / "state").glob(".host-sync-*"))  # its report taken, removed
    assert outside_remote_tracking(full_snapshot(workspace / "slow")) == before
    assert nothing_left_on_the_host(sshd)


def hang_logins_counted(sshd, lock: Path, logins: Path) -> None:
    """A stale lock in a shell start-up file: every login waits while it exists (and says it came)."""
    (sshd.remote_home / ".bashrc").write_text(f"echo login >> {logins}\nwhile [ -e {lock} ]; do sleep 0.1; done\n")


def test_status_on_a_host_whose_login_shell_hangs_names_the_timeout_once_per_repo_without_a_login_each(
        home, make_repo, inv, sshd, tmp_path):
    ws = tmp_path / "ws"
    names = [f"r{i}" for i in range(4)]
    for name in names:
        clone_to(ws, make_repo(name))
    write_hosts(home.path, {"b1": sshd.host_entry(ws, connect_timeout=1)})
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n)} for n in names])
    lock, logins = tmp_path / "stale.lock", tmp_path / "logins"
    lock.touch()
    hang_logins_counted(sshd, lock, logins)
    result = inv("status", "--host", "b1", "--json", "--jobs", "1")
    assert result.code == 1, result.out + result.err
    errors = {r["name"]: r["error"] for r in json.loads(result.out)["repos"]}
    assert errors == {n: "host b1: the login shell did not answer within 3 s" for n in names}, errors
    assert "timed out" not in result.out
    assert logins.read_text().count("login") == 1  # one repo found out; the others were told at once
    lock.unlink()
    assert nothing_left_on_the_host(sshd), [Path(f"/proc/{p}/cmdline").read_bytes() for p in host_processes(sshd)]


def test_sync_on_a_host_whose_login_shell_hangs_names_the_timeout_and_runs_nothing(home, make_repo, inv, sshd,
                                                                                  tmp_path):
    handles = [make_repo("api"), make_repo("web")]
    workspace = setup(home, sshd, tmp_path, handles, connect_timeout=1)
    for handle in handles:
        push_new_commit(handle)
    before = {h.path.name: full_snapshot(workspace / h.path.name) for h in handles}
    lock, logins = tmp_path / "stale.lock", tmp_path / "logins"
    lock.touch()
    hang_logins_counted(sshd, lock, logins)
    result = inv("sync-all", "--host", "builder")
    assert result.code == 1, result.out + result.err
    said = "host builder: the login shell did not answer within 3 s"
    assert {n: (e["status"], e["reason"]) for n, e in results(home).items()} == \
        {"api": ("failed", said), "web": ("failed", said)}
    assert "within 30s" not in result.out + result.err and "Traceback" not in result.err
    lock.unlink()
    assert nothing_left_on_the_host(sshd), [Path(f"/proc/{p}/cmdline").read_bytes() for p in host_processes(sshd)]
    assert logins.read_text().count("login") == 1
    assert {h.path.name: full_snapshot(workspace / h.path.name) for h in handles} == before
    assert not (sshd.remote_home / ".cache" / "orchestrator").exists()  # nothing was uploaded


def test_a_slow_git_status_on_a_host_is_that_repos_error_and_the_next_repo_is_read(home, make_repo, inv, sshd,
                                                                                   tmp_path, monkeypatch):
    """The login shell ran it and the link answers: the host is fine, only this repo's git is slow."""
    from lib.remote import status as remote_status

    monkeypatch.setattr(remote_status, "STATUS_TIMEOUT_S", 8.0)
    ws = tmp_path / "ws"
    for name in ("a-slow", "b-quick"):
        clone_to(ws, make_repo(name))
    pid_file = slow_fsmonitor(ws / "a-slow", tmp_path)  # `git status` runs it and waits
    write_hosts(home.path, {"b1": sshd.host_entry(ws, connect_timeout=2)})
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n)} for n in ("a-slow", "b-quick")])
    try:
        result = inv("status", "--host", "b1", "--json", "--jobs", "1")
    finally:
        if pid_file.exists() and pid_file.read_text().strip():
            hung = int(pid_file.read_text())
            if process_running(hung):  # what sshd does with a session we gave up on is no concern here
                os.kill(hung, signal.SIGKILL)
    assert result.code == 1, result.out + result.err
    errors = {r["name"]: r["error"] for r in json.loads(result.out)["repos"]}
    assert errors == {"a-slow": "git status did not finish within 8 s on the host", "b-quick": None}, errors


def test_status_on_a_host_whose_connection_goes_silent_says_so_for_every_repo_without_a_wait_each(
        home, make_repo, inv, sshd, tmp_path, monkeypatch):
    from lib.remote import status as remote_status

    monkeypatch.setattr(remote_status, "STATUS_TIMEOUT_S", 20.0)  # the freeze comes well within it
    ws = tmp_path / "ws"
    names = ["a-first", "b-next", "c-last"]
    for name in names:
        clone_to(ws, make_repo(name))
    pid_file = slow_fsmonitor(ws / "a-first", tmp_path)  # holds the first repo's status open
    write_hosts(home.path, {"b1": sshd.host_entry(ws, connect_timeout=2)})
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n)} for n in names])
    stopped: list[int] = []

    def go_silent() -> None:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the first repo's status")
        stopped.extend(stop_the_sessions(sshd))

    try:
        with meanwhile(go_silent):
            result = inv("status", "--host", "b1", "--json", "--jobs", "1")
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        if pid_file.exists() and pid_file.read_text().strip() and process_running(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert result.code == 1, result.out + result.err
    errors = {r["name"]: r["error"] for r in json.loads(result.out)["repos"]}
    assert errors == {n: "host b1: the connection went silent (no answer for 6s)" for n in names}, errors
