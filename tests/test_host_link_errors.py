"""Only a failing link is called a lost connection: anything else (git there, our own reading of its output)
is what it is, one line for that repo, whatever state the connection is in.

The "host" is this machine (the sshd fixture).
"""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.test_hosts_remote import clone_to

ODD_AB = "reading the status failed on host b1: ValueError: not enough values to unpack (expected 2, got 1)"


def odd_git_in(sshd, tmp_path: Path, repo: str) -> None:
    """A git on the host's PATH whose `status` in `repo` says `branch.ab` with one count (a git of its own)."""
    real = shutil.which("git")
    fake = tmp_path / "host-bin"
    fake.mkdir()
    (fake / "git").write_text(f"""#!/bin/sh
case $PWD in */{repo}) for a; do [ "$a" = status ] || continue
  printf '# branch.oid %s\\0# branch.head main\\0# branch.ab +1\\0' "$('{real}' rev-parse HEAD)"; exit 0
done ;; esac
exec '{real}' "$@"
""")
    (fake / "git").chmod(0o755)
    (sshd.remote_home / ".bashrc").write_text(f"export PATH='{fake}':$PATH\n")


def refuse_every_connection_after_the_first(monkeypatch, sshd, first: int = 1) -> list[str]:
    """The run's own connection (and `first` - 1 more) are made; the host then refuses our key on every new one
    (a kill, a report). Returns the hosts of every connection asked for."""
    from lib.remote import connection as remote

    real_connect, connects = remote.connect, []

    def connect(host, accept_new_host_key=False):
        connects.append(host.name)
        if len(connects) == first + 1:
            (sshd.root / "authorized_keys").write_text("")
        return real_connect(host, accept_new_host_key)

    monkeypatch.setattr(remote, "connect", connect)
    return connects


@pytest.mark.parametrize("given_up", [False, True], ids=["link-up", "given-up-meanwhile"])
def test_a_status_our_code_cannot_read_is_that_repos_error_never_a_lost_connection(
        home, make_repo, inv, sshd, tmp_path, monkeypatch, given_up):
    """given-up-meanwhile: another repo's read gave the connection up while this one's output was parsed."""
    from lib.remote import connection as remote

    ws = tmp_path / "ws"
    names = ["a-odd", "b-next"]
    for name in names:
        clone_to(ws, make_repo(name))
    odd_git_in(sshd, tmp_path, "a-odd")
    write_hosts(home.path, {"b1": sshd.host_entry(ws)})
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n)} for n in names])
    silent = "host b1: the connection went silent (no answer for 15s)"
    real_probe = remote.probe

    def probe(connection, host, command, what, timeout=None):
        answer = real_probe(connection, host, command, what, timeout)
        if given_up and what == "git status":
            remote.give_up(connection, silent)
        return answer

    monkeypatch.setattr(remote, "probe", probe)
    result = inv("status", "--host", "b1", "--json", "--jobs", "1")
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err
    rows = {r["name"]: r for r in json.loads(result.out)["repos"]}
    assert rows["a-odd"]["error"] == ODD_AB
    # Not read is never "does not exist": `exists` is false only for a path seen missing (as the local scan).
    assert rows["a-odd"]["exists"] is True and rows["a-odd"]["clean"] is False
    if given_up:
        assert rows["b-next"]["error"] == silent  # the link's own reason, for the repo it kept from being read
        assert rows["b-next"]["exists"] is True and rows["b-next"]["clean"] is False
    else:
        assert rows["b-next"]["error"] is None and rows["b-next"]["clean"] is True


def test_a_workspace_the_host_cannot_name_is_every_repos_error_not_a_traceback(home, make_repo, inv, sshd,
                                                                            tmp_path):
    """A relative workspace, and a login shell whose `pwd` says no absolute path."""
    ws = sshd.remote_home / "ws"
    clone_to(ws, make_repo("a"))
    (sshd.remote_home / ".bashrc").write_text("pwd() { echo somewhere; }\n")
    write_hosts(home.path, {"b1": sshd.host_entry(Path("ws"))})
    home.write_repos([{"name": "a", "local": str(tmp_path / "nowhere" / "a")}])
    result = inv("status", "--host", "b1", "--json")
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err
    [row] = json.loads(result.out)["repos"]
    assert row["error"].startswith("b1: cannot find the login directory"), row


def test_status_on_a_host_with_many_jobs_reads_at_most_8_repos_at_once_over_its_connection(
        home, make_repo, inv, sshd, tmp_path, monkeypatch):
    """sshd allows 10 sessions on one connection (MaxSessions): `--jobs 12` had the 11th refused, and that was a
    traceback (or, the connection given up meanwhile, "the connection was lost" for every repo left).

    Every read is held until 8 are held on the host, so exactly 8 readers are at work then; a ninth reader (a
    limit of 9) has its own thread and takes its repo before any read ends: what the threads did tells it, where
    a count of the reads held on the host, taken once 8 were, could miss one still on its way."""
    import threading

    from lib.remote import connection as remote
    from tests.conftest import git
    from tests.test_hosts_mends import meanwhile
    from tests.test_sync_host_robust import wait_until

    ws = tmp_path / "ws"
    names = [f"r{i:02}" for i in range(12)]
    started, release = tmp_path / "started", tmp_path / "release"
    hook = tmp_path / "held-status"  # each repo's `git status` is held open until the test lets them all go
    hook.write_text(f"#!/bin/sh\necho $$ >> '{started}'\nwhile [ ! -e '{release}' ]; do sleep 0.1; done\nexit 1\n")
    hook.chmod(0o755)
    for name in names:
        git(clone_to(ws, make_repo(name)), "config", "core.fsmonitor", str(hook))
    write_hosts(home.path, {"b1": sshd.host_entry(ws)})
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n)} for n in names])
    held: list[int] = []
    lock, readers, reading, most = threading.Lock(), set(), [0], [0]  # threads that read; reads under way; peak
    real_probe = remote.probe

    def probe(connection, host, command, what, timeout=None):
        if what != "git status":
            return real_probe(connection, host, command, what, timeout)
        with lock:
            readers.add(threading.get_ident())
            reading[0] += 1
            most[0] = max(most[0], reading[0])
        try:
            return real_probe(connection, host, command, what, timeout)
        finally:
            with lock:
                reading[0] -= 1

    monkeypatch.setattr(remote, "probe", probe)

    def let_go() -> None:
        try:
            # Eight held, or (read more at once) sshd refused a session: sshd says "no more sessions".
            wait_until(lambda: started.exists() and len(started.read_text().split()) >= 8
                       or "no more sessions" in sshd.log.read_text(), 100, "8 reads at once")
            held.append(len(started.read_text().split()) if started.exists() else 0)
        finally:
            release.touch()

    with meanwhile(let_go):
        try:
            result = inv("status", "--host", "b1", "--json", "--jobs", "12")
        finally:
            release.touch()
    assert result.code == 0, result.out + result.err
    assert {r["name"]: r["error"] for r in json.loads(result.out)["repos"]} == {n: None for n in names}
    assert held == [8]  # none finished before the release: 8 at once
    assert (len(readers), most[0]) == (8, 8), (readers, most)  # and never more, by as few as one


def test_status_jobs_help_and_the_commands_page_say_a_host_is_read_8_at_most_at_once(inv):
    from lib.remote.status import READS_AT_ONCE

    shown = " ".join(inv("--help", "status").out.split())
    assert f"with --host, at most {READS_AT_ONCE} at once" in shown, shown
    page = " ".join((Path(__file__).parents[1] / "docs" / "commands.md").read_text().split())
    assert f"`--jobs N` (with `--host`, at most {READS_AT_ONCE})" in page


def test_host_check_calls_a_host_that_answered_reachable_whatever_else_went_wrong(home, inv, sshd, tmp_path):
    """The login directory the host cannot name was `unreachable: b1: HostUnreachable: ...`: it answered."""
    (sshd.remote_home / ".bashrc").write_text("pwd() { echo somewhere; }\n")
    write_hosts(home.path, {"b1": sshd.host_entry(Path("ws"))})
    result = inv("host.check")
    assert result.code == 1, result.out
    row = next(line for line in result.out.splitlines() if line.startswith("b1 "))
    assert "b1: cannot find the login directory" in row and "unreachable" not in row, result.out
    assert "HostUnreachable" not in row, result.out


@pytest.mark.parametrize("err, link", [
    (ConnectionResetError(104, "Connection reset by peer"), True), (EOFError(), True), (socket.timeout(), True),
    (TimeoutError(), True), ("given-up", True), ("ssh", True), ("session-refused", False),
    (ValueError("not enough values"), False), (KeyError("x"), False), (OSError(28, "No space left on device"), False),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), False), ("unreachable", False),
], ids=lambda v: v if isinstance(v, (str, bool)) else type(v).__name__)
def test_link_error_names_the_link_failing_and_nothing_else(err, link):
    import paramiko

    from lib.remote import connection as remote

    made = {"given-up": remote.GivenUp("host b1: the connection was lost"),
            "ssh": paramiko.SSHException("SSH session not active"),
            "session-refused": paramiko.ChannelException(2, "Connect failed"),  # sshd: "no more sessions"
            "unreachable": remote.HostUnreachable("b1: cannot resolve x")}
    assert remote.link_error(made.get(err, err) if isinstance(err, str) else err) is link


def test_a_sync_given_up_says_why_no_new_connection_could_collect_what_the_host_finished(
        home, make_repo, inv, sshd, tmp_path, monkeypatch):
    """The sync's connection drops; the kill over a new one works, then the host refuses our key: the reason
    says so (before: only that the connection was lost, as if the host's report had been looked for)."""
    import os
    import signal

    from tests.conftest import process_running
    from tests.test_hosts_mends import link_dropped_once
    from tests.test_sync_host import results
    from tests.test_sync_host_robust import fast_and_hung_slow

    workspace, pid_file = fast_and_hung_slow(home, make_repo, sshd, tmp_path)
    # The first is the sync's, the second the kill's: then the host refuses us.
    connects = refuse_every_connection_after_the_first(monkeypatch, sshd, first=2)

    try:
        with link_dropped_once(sshd, pid_file, "the slow repo's fetch"):
            result = inv("sync-all", "--host", "builder")
    finally:
        hung = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        if hung is not None and process_running(hung):  # not swept: no connection to do it over
            os.killpg(os.getpgid(hung), signal.SIGKILL)
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err
    assert len(connects) == 3
    entry = results(home)["slow"]
    said = "connection to host builder was lost; the sync was killed on the host over a new connection; "
    assert entry["status"] == "failed" and entry["reason"].startswith(said), entry
    why = entry["reason"][len(said):]
    assert why.startswith("no new connection to the host: builder (") and "authentication failed" in why
    fast = results(home)["fast"]  # reported before the drop or not (its own log says which): never silent on why
    assert "no new connection to the host: builder (" in fast["reason"], fast


def test_a_session_the_host_refuses_is_no_link_error_while_the_connection_works(home, sshd, tmp_path):
    """sshd refuses the 11th session of a connection (MaxSessions); paramiko says ChannelException, or, when
    another thread's refusal took that reason first, "Unable to open channel." with the link still up."""
    import paramiko

    from lib.remote import connection as remote
    from lib.remote.hosts import load_hosts

    write_hosts(home.path, {"b1": sshd.host_entry(tmp_path)})
    connection = remote.connect(load_hosts(home.path / "config" / "hosts.toml")["b1"])
    held = []
    try:
        for _ in range(10):
            held.append(connection.create_session())
            held[-1].exec_command("sleep 60")
        with pytest.raises(paramiko.ChannelException) as refused:
            connection.create_session()
        assert "no more sessions" in sshd.log.read_text()
        unable = paramiko.SSHException("Unable to open channel.")
        assert remote.usable(connection)
        assert not remote.link_error(refused.value, connection) and remote.session_refused(refused.value)
        assert not remote.link_error(unable, connection) and remote.session_refused(unable, connection)
    finally:
        for channel in held:
            channel.close()
        connection.close()
    assert remote.link_error(unable, connection) and remote.link_error(unable)  # gone, or not known to be up
    assert remote.link_error(paramiko.SSHException("SSH session not active"), connection)


def test_ctrl_c_while_silent_with_no_new_connection_says_the_sync_there_could_not_be_checked(
        home, make_repo, inv, sshd, tmp_path, monkeypatch):
    """The sync's connection goes silent, Ctrl-C, and the host refuses every new connection: nothing could
    kill the sync there or take its report; the stop said nothing of it (the kill's problem was dropped)."""
    import os
    import signal

    from tests.conftest import process_running
    from tests.test_hosts_mends import meanwhile
    from tests.test_hosts_robust import stop_the_sessions
    from tests.test_sync_host_robust import driver_pids, fast_and_hung_slow, wait_until

    workspace, pid_file = fast_and_hung_slow(home, make_repo, sshd, tmp_path, connect_timeout=2)
    refuse_every_connection_after_the_first(monkeypatch, sshd)
    stopped: list[int] = []

    def freeze_then_interrupt() -> None:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() and driver_pids(workspace),
                   what="the slow repo's fetch")
        stopped.extend(stop_the_sessions(sshd))  # the connection goes silent
        os.kill(os.getpid(), signal.SIGINT)

    try:
        with meanwhile(freeze_then_interrupt):
            result = inv("sync-all", "--host", "builder")
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        for pid in [*driver_pids(workspace), *([int(pid_file.read_text().split()[0])] if pid_file.exists() else [])]:
            if process_running(pid):  # nothing could reach them: the test's own clean-up
                os.killpg(os.getpgid(pid), signal.SIGKILL)
    assert result.code == 130, result.out + result.err
    assert "Traceback" not in result.err
    said = [line for line in result.err.splitlines() if "could not be checked" in line]
    assert len(said) == 1, result.err
    assert said[0].startswith("on host builder: no new connection to the host: builder ("), said
    assert "authentication failed" in said[0] and "the sync there may still run" in said[0], said


def test_ctrl_c_when_the_kill_cannot_reach_the_host_says_the_command_there_may_still_run(
        home, make_repo, inv, sshd, tmp_path, monkeypatch):
    """A test on a host, its connection frozen, Ctrl-C, and the host refuses every new connection: the kill
    reached nothing; the stop said nothing of it (the kill's problem was dropped) and counted it stopped."""
    import os
    import signal

    from tests.conftest import process_running
    from tests.test_hosts_mends import meanwhile
    from tests.test_hosts_robust import hanging_on_host, stop_the_sessions
    from tests.test_sync_host_robust import wait_until

    pidfile = hanging_on_host(home, sshd, make_repo, tmp_path, connect_timeout=2)
    refuse_every_connection_after_the_first(monkeypatch, sshd)
    stopped: list[int] = []

    def freeze_then_interrupt() -> None:
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the hanging test")
        stopped.extend(stop_the_sessions(sshd))  # the connection goes silent
        os.kill(os.getpid(), signal.SIGINT)

    try:
        with meanwhile(freeze_then_interrupt):
            result = inv("test", "hang")
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        if pidfile.exists() and pidfile.read_text().strip() and process_running(int(pidfile.read_text())):
            os.killpg(os.getpgid(int(pidfile.read_text())), signal.SIGKILL)  # nothing could reach it
    assert result.code == 130, result.out + result.err
    assert "Traceback" not in result.err
    assert "interrupted: stopped 0 running commands (SIGINT)" in result.err, result.err
    said = [line for line in result.err.splitlines() if "may still run" in line]
    assert len(said) == 1, result.err
    assert said[0].startswith(f"on host h1: could not kill the command in {tmp_path / 'ws' / 'hang'}, it may "
                              "still run there ("), said
    assert "a new connection failed too: h1 (" in said[0] and "authentication failed" in said[0], said


@pytest.mark.parametrize("step", ["pwd", "the check for make"], ids=["planning", "running"])
def test_a_run_on_a_host_calls_only_a_failing_link_unreachable_or_a_failed_connection(
        home, make_repo, inv, sshd, tmp_path, monkeypatch, step):
    """Our own code failing on a host that answers (here: a probe's answer it cannot take) is what it is, one
    line per repo, never `host unreachable` nor `connection to b1 failed` (connection.link_error decides)."""
    from lib.remote import connection as remote

    ws = sshd.remote_home / "ws"
    for name in ("a", "b"):
        clone_to(ws, make_repo(name, {"Makefile": "test:\n\t@echo ok\n"}))
    write_hosts(home.path, {"b1": sshd.host_entry(Path("ws"))})  # relative: planning asks the host's `pwd`
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n), "language": "make"} for n in "ab"])
    real_probe = remote.probe

    def probe(connection, host, command, what, timeout=None):
        if what == step:
            raise ValueError("an answer we cannot take")
        return real_probe(connection, host, command, what, timeout)

    monkeypatch.setattr(remote, "probe", probe)
    result = inv("test-all", "--hosts", "b1", "--json")
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err
    doing = "planning the run" if step == "pwd" else "running the test"
    reasons = {r["repo"]: r["reason"] for r in json.loads(result.out)["results"]}
    assert reasons == dict.fromkeys("ab", f"{doing} failed on host b1: ValueError: an answer we cannot take")
