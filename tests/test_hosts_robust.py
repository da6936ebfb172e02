"""Build hosts when the link fails: a killed inv, a connection gone silent, a stalled handshake, a hung login shell.

The "host" is this machine (the sshd fixture): every process a run starts there carries the session's
HOME (the fixture's SetEnv), so /proc shows exactly what of a run is left on the host.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import process_running, wait_gone
from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.test_honest_runs import hanging_repo, inv_command, start, wait_for
from tests.test_hosts_attack import sshd_processes
from tests.test_hosts_remote import clone_to


def host_processes(sshd) -> list[int]:
    """Every live process of a session of the fixture's sshd (each one has the session's HOME)."""
    wanted = f"HOME={sshd.remote_home}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted in environ.read_bytes().split(b"\0") and process_running(int(environ.parent.name)):
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile
            continue
    return found


def nothing_left_on_the_host(sshd, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while host_processes(sshd) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not host_processes(sshd)


def hanging_on_host(home, sshd, make_repo, tmp_path, **host_fields) -> Path:
    """Repo `hang` on host h1: its test writes its pid to the returned file, then sleeps a minute."""
    pidfile = tmp_path / "hang.pid"
    ws = tmp_path / "ws"
    clone_to(ws, hanging_repo(make_repo, "hang", pidfile))
    write_hosts(home.path, {"h1": sshd.host_entry(ws, **host_fields)})
    home.write_repos([{"name": "hang", "local": str(tmp_path / "nowhere"), "language": "make", "host": "h1"}])
    return pidfile


def test_inv_killed_with_sigkill_leaves_nothing_running_on_the_host(home, make_repo, sshd, tmp_path):
    """The command's group and a daemon it started outside the group (setsid) both end with the connection."""
    pidfile, daemon = tmp_path / "hang.pid", tmp_path / "daemon.pid"
    ws = tmp_path / "ws"
    clone_to(ws, make_repo("hang", {"Makefile": (
        f"test:\n\t@setsid sh -c 'echo $$$$ > {daemon}; exec sleep 60' &\n"
        f"\t@echo $$$$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 60\n")}))
    write_hosts(home.path, {"h1": sshd.host_entry(ws)})
    home.write_repos([{"name": "hang", "local": str(tmp_path / "nowhere"), "language": "make", "host": "h1"}])
    child, _ = start(inv_command("test", "hang"), tmp_path)
    try:
        wait_for(lambda: pidfile.exists() and daemon.exists() and daemon.read_text() or child.poll() is not None)
        child.kill()  # as the OOM killer or a hard CI cancel would: no handler runs here
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert wait_gone(int(pidfile.read_text()), 30), "the remote test outlived the SIGKILLed inv"
    assert wait_gone(int(daemon.read_text()), 30), "the daemon it started outlived the SIGKILLed inv"
    assert nothing_left_on_the_host(sshd), [Path(f"/proc/{p}/cmdline").read_bytes() for p in host_processes(sshd)]


def stop_the_sessions(sshd) -> list[int]:
    """SIGSTOP the sshd processes serving the open connections (not the listener): they go silent."""
    listener = int((sshd.root / "sshd.pid").read_text())
    stopped = [pid for pid in sshd_processes(sshd) if pid != listener]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    return stopped


@pytest.mark.parametrize("timeout", [None, 3], ids=["no-timeout", "timeout-while-silent"])
def test_a_connection_gone_silent_is_detected_and_the_command_killed_over_a_new_one(
        home, make_repo, inv, sshd, tmp_path, timeout):
    pidfile = hanging_on_host(home, sshd, make_repo, tmp_path, connect_timeout=2)
    stopped: list[int] = []

    def go_silent() -> None:
        wait_for(pidfile.exists, 60)
        stopped.extend(stop_the_sessions(sshd))

    thread = threading.Thread(target=go_silent)
    thread.start()
    try:
        result = inv("test", "hang", *(["--timeout", str(timeout)] if timeout else []))
        thread.join()
        # Killed while the session that started it is still frozen: the kill came over a new connection.
        assert wait_gone(int(pidfile.read_text()), 30), "the command outlived its silent connection"
    finally:
        thread.join()
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    assert result.code == 1, result.out
    if timeout:
        assert "TEST TIMEOUT (timed out after 3s, " in result.out, result.out
    else:
        assert ("TEST ERROR (connection to h1 went silent (no answer for 6s); the command was killed on the host "
                "over a new connection, ") in result.out, result.out
    assert nothing_left_on_the_host(sshd), [Path(f"/proc/{p}/cmdline").read_bytes() for p in host_processes(sshd)]


@pytest.fixture
def banner_only_port():
    """A server that sends an SSH banner and then nothing, ever."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                peer, _ = server.accept()
            except OSError:
                return
            peer.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            accepted.append(peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    for peer in accepted:
        peer.close()


def test_a_stalled_handshake_says_the_host_sent_its_banner_then_nothing(home, inv, tmp_path, banner_only_port):
    write_hosts(home.path, {"mute": {"host": "127.0.0.1", "port": banner_only_port, "workspace": str(tmp_path),
                                     "connect_timeout": 1, "known_hosts": str(tmp_path / "known_hosts")}})
    home.write_repos([{"name": "r1", "local": str(tmp_path / "r1"), "language": "make"}])
    result = inv("build", "r1", "--host", "mute")
    assert result.code == 1
    assert "BUILD ERROR (host unreachable: mute (127.0.0.1:" in result.out, result.out
    assert "): host sent its banner, then nothing for 1s, " in result.out, result.out
    assert "No existing session" not in result.out


def hang_logins_while(lock: Path, sshd) -> None:
    """A stale lock in a shell start-up file: every login waits while it exists."""
    (sshd.remote_home / ".bashrc").write_text(f"while [ -e {lock} ]; do sleep 0.1; done\n")


def test_a_hung_login_shell_is_an_error_naming_the_timeout_never_a_missing_tool(home, make_repo, inv, sshd,
                                                                                 tmp_path):
    ran = tmp_path / "ran"
    ws = tmp_path / "ws"
    clone_to(ws, make_repo("staking", {"Makefile": f"all:\n\t@touch {ran}\n"}))
    write_hosts(home.path, {"b1": sshd.host_entry(ws, connect_timeout=1)})
    home.write_repos([{"name": "staking", "local": str(tmp_path / "nowhere"), "language": "make"}])
    lock = tmp_path / "stale.lock"
    lock.touch()
    hang_logins_while(lock, sshd)
    result = inv("build", "staking", "--host", "b1")
    assert result.code == 1, result.out
    assert "BUILD ERROR (host b1: the login shell did not answer within 3 s, " in result.out, result.out
    assert "not found" not in result.out
    entry = home.state("build-results.json")["results"][0]
    assert (entry["status"], entry["reason"]) == ("error", "host b1: the login shell did not answer within 3 s")
    lock.unlink()  # the lock clears: the logins we gave up on go on, and must run nothing of ours
    assert nothing_left_on_the_host(sshd), [Path(f"/proc/{p}/cmdline").read_bytes() for p in host_processes(sshd)]
    assert not ran.exists()


def test_host_check_names_a_hung_login_shell_and_says_how_long_a_login_took(home, inv, sshd, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    write_hosts(home.path, {"b1": sshd.host_entry(ws, connect_timeout=1)})
    lock = tmp_path / "stale.lock"
    lock.touch()
    hang_logins_while(lock, sshd)
    hung = inv("host.check")
    assert hung.code == 1
    row = next(line for line in hung.out.splitlines() if line.startswith("b1 "))
    assert "host b1: the login shell did not answer within 3 s" in row, hung.out
    lock.unlink()
    assert nothing_left_on_the_host(sshd)
    (sshd.remote_home / ".bashrc").write_text("sleep 0.5\n")  # a slow start-up file, within the limit
    write_hosts(home.path, {"b1": sshd.host_entry(ws, connect_timeout=5)})  # room for a busy machine
    slow = inv("host.check")
    assert slow.code == 0, slow.out
    header, _, row = slow.out.splitlines()[:3]
    assert header.split() == ["HOST", "ADDRESS", "CHECK", "LOGIN", "WORKSPACE"]
    login = float(re.fullmatch(r"(\d+\.\d)s", row.split()[3]).group(1))
    assert login >= 0.5, slow.out  # the start-up file's wait shows


def test_a_host_whose_login_shell_hangs_fails_its_other_repos_without_a_login_each(home, make_repo, inv, sshd,
                                                                                   tmp_path):
    """Every login waits on the same stale lock: one repo finds out, the others say the same at once."""
    ws = tmp_path / "ws"
    names = [f"r{i}" for i in range(4)]
    for name in names:
        clone_to(ws, make_repo(name, {"Makefile": "test:\n\t@true\n"}))
    write_hosts(home.path, {"b1": sshd.host_entry(ws, connect_timeout=1, jobs=1)})
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n), "language": "make"} for n in names])
    lock, logins = tmp_path / "stale.lock", tmp_path / "logins"
    lock.touch()
    (sshd.remote_home / ".bashrc").write_text(f"echo login >> {logins}\nwhile [ -e {lock} ]; do sleep 0.1; done\n")
    result = inv("test-all", "--hosts", "b1")
    assert result.code == 1, result.out
    reasons = {r["repo"]: r["reason"] for r in home.state("test-results.json")["results"]}
    assert reasons == {n: "host b1: the login shell did not answer within 3 s" for n in names}, reasons
    assert logins.read_text().count("login") == 1
    lock.unlink()
    assert nothing_left_on_the_host(sshd)


def test_a_connection_silent_for_less_than_the_limit_is_not_given_up(home, make_repo, inv, sshd, tmp_path):
    """A host that stalls for a moment (under 3 x connect_timeout) gets its command's verdict, not an error."""
    started, go = tmp_path / "started", tmp_path / "go"
    ws = tmp_path / "ws"
    clone_to(ws, make_repo("pause", {"Makefile": (
        f"test:\n\t@touch {started}; while [ ! -e {go} ]; do sleep 0.1; done; echo finished\n")}))
    write_hosts(home.path, {"h1": sshd.host_entry(ws, connect_timeout=2)})
    home.write_repos([{"name": "pause", "local": str(tmp_path / "nowhere"), "language": "make", "host": "h1"}])

    def stall_briefly() -> None:
        wait_for(started.exists, 60)
        stopped = stop_the_sessions(sshd)
        time.sleep(3)  # silent for 3 s of the 6 s allowed
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        go.touch()

    thread = threading.Thread(target=stall_briefly)
    thread.start()
    try:
        result = inv("test", "pause")
    finally:
        thread.join()
    assert result.code == 0 and "TEST PASSED" in result.out, result.out


def test_ctrl_c_while_the_connection_is_silent_kills_the_command_over_a_new_one(home, make_repo, sshd, tmp_path):
    pidfile = hanging_on_host(home, sshd, make_repo, tmp_path, connect_timeout=2)
    child, err = start(inv_command("test", "hang"), tmp_path)
    stopped: list[int] = []
    try:
        wait_for(lambda: pidfile.exists() or child.poll() is not None, 60)
        stopped = stop_the_sessions(sshd)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
        assert wait_gone(int(pidfile.read_text()), 30), "Ctrl-C left the command running behind a silent connection"
    finally:
        if child.poll() is None:
            child.kill()
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    assert child.returncode == 130, err.read_text()
    assert nothing_left_on_the_host(sshd)


def test_a_connection_lost_mid_run_is_an_error_and_the_command_is_killed_over_a_new_one(home, make_repo, inv, sshd,
                                                                                         tmp_path):
    pidfile = hanging_on_host(home, sshd, make_repo, tmp_path)

    def cut() -> None:
        wait_for(pidfile.exists, 60)
        listener = int((sshd.root / "sshd.pid").read_text())
        for pid in sshd_processes(sshd):
            if pid != listener:
                os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=cut)
    thread.start()
    try:
        result = inv("test", "hang")
    finally:
        thread.join()
    assert result.code == 1, result.out
    assert ("TEST ERROR (connection to h1 was lost; the command was killed on the host over a new connection, "
            in result.out), result.out
    assert wait_gone(int(pidfile.read_text()), 30)
    assert nothing_left_on_the_host(sshd)


@pytest.fixture
def mute_at_auth(sshd):
    """An SSH server (paramiko's, with the fixture's host key) that finishes the key exchange and then never
    answers the authentication; its port, with the key in the fixture's known_hosts."""
    import paramiko

    host_key = paramiko.Ed25519Key(filename=str(sshd.root / "host_key"))
    release = threading.Event()

    class Mute(paramiko.ServerInterface):
        def get_allowed_auths(self, username: str) -> str:
            return "publickey"

        def check_auth_publickey(self, username: str, key) -> int:
            release.wait(60)  # holds the server's thread: no answer goes out
            return paramiko.AUTH_FAILED

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    transports = []

    def serve() -> None:
        while True:
            try:
                peer, _ = server.accept()
            except OSError:
                return
            transport = paramiko.Transport(peer)
            transport.add_server_key(host_key)
            transport.start_server(server=Mute())
            transports.append(transport)

    threading.Thread(target=serve, daemon=True).start()
    with open(sshd.known_hosts, "a") as known:
        known.write(f"[127.0.0.1]:{port} {sshd.host_key_pub}\n")
    yield port
    release.set()
    server.close()
    for transport in transports:
        transport.close()


def test_a_host_that_never_answers_the_authentication_is_not_said_to_refuse_the_key(home, inv, sshd, tmp_path,
                                                                                     mute_at_auth):
    write_hosts(home.path, {"mute": sshd.host_entry(tmp_path, port=mute_at_auth, connect_timeout=1)})
    result = inv("host.check")
    assert result.code == 1
    assert "unreachable: mute (" in result.out and "): no answer to the authentication within 1s" in result.out, \
        result.out
    assert "authentication failed" not in result.out


def test_after_a_connection_went_silent_the_next_repo_runs_over_a_new_one(home, make_repo, inv, sshd, tmp_path):
    pidfile = tmp_path / "hang.pid"
    ws = tmp_path / "ws"
    clone_to(ws, hanging_repo(make_repo, "a-hang", pidfile))
    clone_to(ws, make_repo("b-quick", {"Makefile": "test:\n\t@echo quick\n"}))
    write_hosts(home.path, {"h1": sshd.host_entry(ws, connect_timeout=2, jobs=1)})
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n), "language": "make"}
                      for n in ("a-hang", "b-quick")])
    stopped: list[int] = []

    def go_silent() -> None:
        wait_for(pidfile.exists, 60)
        stopped.extend(stop_the_sessions(sshd))

    thread = threading.Thread(target=go_silent)
    thread.start()
    try:
        result = inv("test-all", "--hosts", "h1")
    finally:
        thread.join()
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    statuses = {r["repo"]: (r["status"], r["reason"]) for r in home.state("test-results.json")["results"]}
    assert statuses["a-hang"][0] == "error" and "went silent" in statuses["a-hang"][1], statuses
    assert statuses["b-quick"] == ("passed", None), statuses
    assert nothing_left_on_the_host(sshd)
