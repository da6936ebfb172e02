"""Mends of the build-host code: a connection given up stays given up, a slow command is its repo's failure,
hosts.toml written as every state file is, one log opener and one kill script.

The "host" is this machine (the sshd fixture): what a run leaves there shows in /proc.
"""
from __future__ import annotations

import io
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import process_running, wait_gone
from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.test_attack_hosts2 import inv_unless_it_hangs, read_pipe  # noqa: F401  (a fixture)
from tests.test_hosts_robust import host_processes, nothing_left_on_the_host, stop_the_sessions
from tests.test_sync_host import results
from tests.test_sync_host_robust import children_of_sshd, driver_pids, fast_and_hung_slow, outcome_shown, wait_until


@pytest.fixture
def logins(monkeypatch) -> dict[int, int]:
    """How many times each SSH client (one per fabric Connection) connected: a reopened connection shows as 2."""
    import paramiko

    counts: dict[int, int] = {}
    real = paramiko.SSHClient.connect

    def counted(self, *args, **kwargs):
        counts[id(self)] = counts.get(id(self), 0) + 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(paramiko.SSHClient, "connect", counted)
    return counts


def builder(home, sshd, tmp_path, **fields):
    from lib.remote.hosts import load_hosts

    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    write_hosts(home.path, {"builder": sshd.host_entry(workspace, **fields)})
    return load_hosts(home.path / "config" / "hosts.toml")["builder"]


def test_a_connection_given_up_is_never_opened_again_whatever_runs_or_transfers_over_it(home, sshd, tmp_path,
                                                                                      logins):
    """Fabric opens a closed Connection again on its next use; a connection given up must stay given up."""
    from lib.remote import connection as remote
    from lib.remote import sync as remote_sync

    host = builder(home, sshd, tmp_path)
    connection = remote.connect(host)
    assert remote.capture(connection, "true")[0] == 0
    connection.close()  # how a silent or lost connection is given up
    target = tmp_path / "ws" / "put.txt"
    attempts = {
        "capture": lambda: remote.capture(connection, "touch ran"),
        "probe": lambda: remote.probe(connection, host, "touch ran", "touch"),
        "run_remote": lambda: remote.run_remote(connection, str(tmp_path), "touch ran", {}, io.BytesIO(), 30, host=host),
        "sftp": lambda: remote_sync._sftp(connection),
        "put": lambda: connection.put(io.BytesIO(b"x"), str(target)),
        "get": lambda: connection.get(str(sshd.known_hosts), local=io.BytesIO()),
    }
    for name, attempt in attempts.items():
        with pytest.raises(remote.GivenUp):
            attempt()
        assert not connection.is_connected, name
    # The kill and the sweep say why they could not, over it.
    assert "never used again" in remote.kill_remote_group(connection, None, 0, "m")
    assert list(logins.values()) == [1]
    assert not (Path.home() / "ran").exists() and not target.exists()


def test_give_up_marks_before_it_closes_and_a_lost_connection_is_refused_too(home, sshd, tmp_path, logins):
    from lib.remote import connection as remote

    host = builder(home, sshd, tmp_path)
    connection = remote.connect(host)
    assert remote.usable(connection)
    remote.give_up(connection, "host builder: the connection went silent (no answer for 15s)")
    assert not remote.usable(connection)
    with pytest.raises(remote.GivenUp) as refused:
        remote.capture(connection, "true")
    assert refused.value.why == "host builder: the connection went silent (no answer for 15s)"
    lost = remote.connect(host)
    lost.transport.close()  # the link dropped under it
    with pytest.raises(remote.GivenUp, match="the connection was lost"):
        remote.capture(lost, "true")
    assert list(logins.values()) == [1, 1]


def test_ctrl_c_while_the_sync_connection_is_silent_takes_the_report_over_a_new_connection_never_the_old_one(
        home, make_repo, inv, sshd, tmp_path, monkeypatch, logins):

    workspace, pid_file = fast_and_hung_slow(home, make_repo, sshd, tmp_path, connect_timeout=2)
    shown = outcome_shown(monkeypatch, "fast")
    stopped: list[int] = []

    def freeze_then_interrupt() -> None:
        wait_until(lambda: shown.is_set() and pid_file.exists() and pid_file.read_text().strip()
                   and driver_pids(workspace), what="the fast repo's outcome")
        stopped.extend(stop_the_sessions(sshd))  # the connection goes silent
        os.kill(os.getpid(), signal.SIGINT)

    stopper = threading.Thread(target=freeze_then_interrupt)
    stopper.start()
    try:
        result = inv("sync-all", "--host", "builder")
    finally:
        stopper.join()
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    hung = int(pid_file.read_text().split()[0])
    try:
        assert result.code == 130, result.out + result.err
        assert "Traceback" not in result.err
        # The frozen connection was never opened again: the kill and the report each came over a new one.
        assert logins and set(logins.values()) == {1}, logins
        entry = results(home)["fast"]
        assert entry["status"] == "updated" and entry["host"] == "builder"
        assert "outcome: fast: updated" in Path(entry["log"]).read_text()  # copied over the new connection
        assert not list((workspace / ".orchestrator" / "state").glob(".host-sync-*"))  # its report taken
        assert wait_gone(hung, 30), "Ctrl-C left the host's fetch running"
        assert nothing_left_on_the_host(sshd), [Path(f"/proc/{p}/cmdline").read_bytes() for p in host_processes(sshd)]
    finally:
        if process_running(hung):
            os.kill(hung, signal.SIGKILL)


def slow_cd_into(sshd, name: str, lock: Path) -> None:
    """The login shell's `cd` into the repo `name` waits while `lock` exists (a hung automounter, say);
    the host answers all along."""
    (sshd.remote_home / ".bashrc").write_text(
        f'cd() {{ case "$*" in */{name}) while [ -e {lock} ]; do sleep 0.1; done ;; esac; builtin cd "$@"; }}\n')


@pytest.mark.parametrize("detected", [False, True], ids=["tool-check", "language-check"])
def test_a_slow_check_on_a_host_that_answers_fails_that_repo_only(home, make_repo, inv, sshd, tmp_path, detected):
    """Only a host whose connection went silent is stalled; a check that is slow there is its repo's failure."""
    from tests.test_hosts_remote import PASSING, clone_to

    ws = tmp_path / "ws"
    for name in ("slow", "fast", "later"):
        clone_to(ws, make_repo(name, PASSING))
    lock = tmp_path / "lock"
    lock.write_text("")
    slow_cd_into(sshd, "slow", lock)
    write_hosts(home.path, {"b1": sshd.host_entry(ws, connect_timeout=2, jobs=1)})
    language = {} if detected else {"language": "make"}
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n), "host": "b1", **language}
                      for n in ("slow", "fast", "later")])
    try:
        result = inv("workflow-all", "build")
    finally:
        lock.unlink()
    assert result.code == 1, result.out + result.err
    entries = {e["repo"]: e for e in home.state("build-results.json")["results"]}
    check = "the language check" if detected else "the check for make"
    assert entries["slow"]["status"] == "error"
    assert entries["slow"]["reason"] == f"host b1: {check} did not finish within 6 s", entries["slow"]
    for name in ("fast", "later"):
        assert entries[name]["status"] == "passed", entries[name]
    assert "Traceback" not in result.err
    assert nothing_left_on_the_host(sshd)


@pytest.fixture
def fsynced(monkeypatch) -> list[tuple[bool, int]]:
    """Every fsync: (whether it was a directory, its inode)."""
    import stat

    calls: list[tuple[bool, int]] = []
    real = os.fsync

    def recorded(fd):
        info = os.fstat(fd)
        calls.append((stat.S_ISDIR(info.st_mode), info.st_ino))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recorded)
    return calls


def test_host_add_fsyncs_the_directory_so_a_host_it_reported_survives_a_crash(home, inv, fsynced):
    """The rename is only durable once the directory is synced: without it, a crash after `added host` can lose it."""
    path = home.path / "config" / "hosts.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('[hosts.old]\nhost = "h"\nworkspace = "w"\n')
    path.chmod(0o640)  # the user's choice is kept
    result = inv("host.add", "new", "--host", "10.0.0.5", "--workspace", "/srv/src")
    assert result.code == 0, result.err
    assert (True, path.parent.stat().st_ino) in fsynced
    assert (False, path.stat().st_ino) in fsynced  # the file itself, before its rename
    assert path.stat().st_mode & 0o777 == 0o640
    assert 'host = "h"' in path.read_text() and "[hosts.new]" in path.read_text()
    assert not list(path.parent.glob("*.tmp"))  # no temp file left


def test_host_add_makes_a_new_hosts_file_private_as_before(home, inv):
    assert inv("host.add", "b1", "--host", "h", "--workspace", "src").code == 0
    assert (home.path / "config" / "hosts.toml").stat().st_mode & 0o777 == 0o600


def test_update_json_reads_the_file_once_and_changes_what_it_checked(tmp_path, monkeypatch):
    """A writer that does not take the lock may replace the file at any time: the document checked is the
    document changed, never a second read of something else (a traceback when that one is cut short)."""
    from lib import statefile

    path = tmp_path / "state.json"
    statefile.write_json(path, {"runs": 1})
    reads = []
    real = statefile.read_regular
    monkeypatch.setattr(statefile, "read_regular", lambda p, *a: reads.append(p) or real(p, *a))

    def problem(document):
        path.write_text('{"runs": ')  # another writer, mid-write, right after our read
        return None

    updated = statefile.update_json(path, lambda d: {"runs": d["runs"] + 1}, {}, problem)
    assert reads == [path]
    assert updated == {"runs": 2} and statefile.read_json(path) == {"runs": 2}


def test_update_json_still_sets_a_bad_file_aside_and_starts_afresh(tmp_path):
    from lib import statefile

    path = tmp_path / "state.json"
    path.write_text("not json")
    assert statefile.update_json(path, lambda d: {**d, "n": 1}, {}) == {"n": 1}
    assert (tmp_path / "state.json.corrupt").read_text() == "not json"
    statefile.write_json(path, [1])
    assert statefile.update_json(path, lambda d: {**d, "n": 2}, {},
                                 lambda d: None if isinstance(d, dict) else "not an object") == {"n": 2}
    assert (tmp_path / "state.json.corrupt").read_text().split() == ["[", "1", "]"]


@pytest.mark.parametrize("where", ["here", "on-host"])
def test_a_named_pipe_made_at_the_log_after_the_look_is_an_error_not_a_hang(home, make_repo, inv_unless_it_hangs,
                                                                          sshd, tmp_path, monkeypatch, where):
    """One log opener for local and host runs: it never waits for a reader, even for a pipe made after a look."""
    import pathlib

    from tests.test_hosts_remote import PASSING, only_on_host

    if where == "here":
        home.add(make_repo("staking", PASSING), language="make")
        args = ("build", "staking")
    else:
        only_on_host(home, sshd, make_repo, tmp_path, "staking", PASSING)
        args = ("build", "staking", "--host", "builder")
    log = Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-build-staking.log"
    real_mkdir = pathlib.Path.mkdir

    def mkdir_then_a_pipe_appears(self, *a, **k):  # between the run's look at its log and its opening it
        real_mkdir(self, *a, **k)
        if self == log.parent and not os.path.lexists(log):
            os.mkfifo(log)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir_then_a_pipe_appears)
    result = inv_unless_it_hangs(*args, hang="the run waited for a reader of its log", release=read_pipe(log))
    assert result.code == 1, result.out
    assert f"BUILD ERROR (cannot write log {log}: it is a named pipe" in result.out, result.out


def test_the_sweep_kills_what_carries_the_runs_mark_and_nothing_else(home, sshd, tmp_path):
    """A dead driver's gits (sessions of their own) are found by the run's mark, with remote's one kill script."""
    import subprocess

    from lib.remote import connection as remote
    from lib.remote import sync as remote_sync

    host = builder(home, sshd, tmp_path)
    mark = "orchestrator-sync-0123"
    ours = subprocess.Popen(["setsid", "sleep", "300"], env={**os.environ, remote_sync.RUN_VAR: mark})
    other = subprocess.Popen(["sleep", "300"], env={**os.environ, remote_sync.RUN_VAR: f"{mark}-other"})
    try:
        connection = remote.connect(host)
        try:
            remote_sync._sweep(connection, mark)
        finally:
            connection.close()
        assert ours.wait(timeout=30) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for proc in (ours, other):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_an_idle_pooled_connection_that_dropped_is_replaced_never_reopened(home, sshd, tmp_path, logins):
    """Between two repos the host dropped a pooled connection (sshd restarted, a NAT timeout): the next repo gets
    a new connection, not an error, and the dropped one is never opened again."""
    from lib.remote import connection as remote

    host = builder(home, sshd, tmp_path)
    first = remote.connect(host)
    pool = remote.Connections(host, first, False)
    taken = pool.take()
    assert taken is first
    pool.give(taken)
    first.transport.close()  # dropped while idle in the pool
    again = pool.take()
    try:
        assert again is not first and remote.usable(again)
        assert remote.capture(again, "true")[0] == 0
    finally:
        pool.give(again)
        pool.close()
        first.close()
    assert list(logins.values()) == [1, 1]


@contextmanager
def meanwhile(action: Callable[[], object]) -> Iterator[None]:
    """`action` in a thread while the block runs (it waits for what it needs itself); joined on the way out."""
    thread = threading.Thread(target=action)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def link_dropped_once(sshd, written: Path, what: str):
    """While the block runs: once a pid is `written` (the host is at the step `what`), every session of the
    host is killed: the connection drops."""

    def drop() -> None:
        wait_until(lambda: written.exists() and written.read_text().strip(), what=what)
        for pid in children_of_sshd(sshd):
            os.kill(pid, signal.SIGKILL)

    return meanwhile(drop)


def test_status_on_a_host_whose_connection_drops_says_so_for_every_repo_it_could_not_read(
        home, make_repo, inv, sshd, tmp_path):
    """The link drops while a repo is read: that repo and the rest say the connection was lost (no traceback,
    and the dropped connection is not opened again behind our back for the rest)."""
    import json

    from tests.sync_fixtures import slow_fsmonitor
    from tests.test_hosts_remote import clone_to

    ws = tmp_path / "ws"
    names = ["a-first", "b-next", "c-last"]
    for name in names:
        clone_to(ws, make_repo(name))
    pid_file = slow_fsmonitor(ws / "a-first", tmp_path)  # holds the first repo's status open
    write_hosts(home.path, {"b1": sshd.host_entry(ws)})
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n)} for n in names])

    try:
        with link_dropped_once(sshd, pid_file, "the first repo's status"):
            result = inv("status", "--host", "b1", "--json", "--jobs", "1")
    finally:
        if pid_file.exists() and pid_file.read_text().strip() and process_running(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err
    errors = {r["name"]: r["error"] for r in json.loads(result.out)["repos"]}
    assert errors == {n: "host b1: the connection was lost" for n in names}, errors
