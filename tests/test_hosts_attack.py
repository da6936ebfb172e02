"""Build hosts attacked: signals, host keys, dead and hostile hosts, odd input; every verdict matches the host."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from lib.remote.hosts import load_hosts
from tests.conftest import ROOT, wait_gone
from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.test_honest_runs import PASSING, hanging_repo, inv_command, start, wait_for
from tests.test_hosts_remote import clone_to


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("entry", ["inv", "script"])
def test_a_signal_during_test_all_over_a_host_stops_both_sides_and_keeps_what_finished(
        home, make_repo, sshd, tmp_path, signum, entry):
    ws = tmp_path / "ws"
    there, here = tmp_path / "there.pid", tmp_path / "here.pid"
    clone_to(ws, make_repo("quick-there", PASSING))
    clone_to(ws, hanging_repo(make_repo, "hang-there", there))
    write_hosts(home.path, {"h1": sshd.host_entry(ws, jobs=2)})
    home.write_repos([{"name": "quick-there", "local": str(tmp_path / "nowhere" / "q"), "language": "make", "host": "h1"},
                      {"name": "hang-there", "local": str(tmp_path / "nowhere" / "h"), "language": "make", "host": "h1"},
                      {"name": "quick-here", "local": str(make_repo("quick-here", PASSING).path),
                       "language": "make"},
                      {"name": "hang-here", "local": str(hanging_repo(make_repo, "hang-here", here).path),
                       "language": "make"}])
    args = (inv_command("test-all", "--hosts", "h1,local", "--jobs", "2") if entry == "inv"
            else [sys.executable, str(ROOT / "scripts" / "run_all_tests.py"), "--hosts", "h1,local", "--jobs", "2"])
    child, err = start(args, tmp_path)
    try:
        wait_for(lambda: child.poll() is None and there.exists() and here.exists()
                 and b"quick-there: passed" in err.read_bytes() and b"quick-here: passed" in err.read_bytes())
        child.send_signal(signum)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    text = err.read_text()
    assert child.returncode == 128 + signum, text
    assert "Traceback" not in text
    assert text.splitlines()[-1] == f"interrupted: stopped 2 running commands ({signal.Signals(signum).name})"
    assert wait_gone(int(there.read_text()), 2), "the remote test outlived the interrupted run"
    assert wait_gone(int(here.read_text()), 2), "the local test outlived the interrupted run"
    results = home.state("test-results.json")["results"]
    assert [(r["repo"], r["status"], r["host"]) for r in results] == [
        ("quick-here", "passed", "local"), ("quick-there", "passed", "h1")]


def sshd_processes(sshd) -> list[int]:
    """The fixture's sshd and every session process under it (the host, as far as ssh goes)."""
    listener = int((sshd.root / "sshd.pid").read_text())
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [listener]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [c for c in children.get(pid, []) if Path(f"/proc/{c}/comm").read_text().strip().startswith("sshd")]
    return found


def one_on_host(home, sshd, make_repo, tmp_path, name, files, **host_fields) -> Path:
    ws = tmp_path / "ws"
    clone_to(ws, make_repo(name, files))
    write_hosts(home.path, {"h1": sshd.host_entry(ws, **host_fields)})
    home.write_repos([{"name": name, "local": str(tmp_path / "nowhere" / name), "language": "make", "host": "h1"}])
    return ws


def test_a_host_that_freezes_mid_command_times_out_and_says_the_kill_failed(home, make_repo, inv, sshd, tmp_path):
    started_file = tmp_path / "started"
    one_on_host(home, sshd, make_repo, tmp_path, "frozen",
                {"Makefile": f"test:\n\t@touch {started_file}; exec sleep 30\n"}, connect_timeout=2)
    frozen: list[int] = []

    def freeze() -> None:
        wait_for(started_file.exists)
        frozen.extend(sshd_processes(sshd))
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)

    thread = threading.Thread(target=freeze)
    thread.start()
    try:
        began = time.monotonic()
        result = inv("test", "frozen", "--timeout", "3")
        took = time.monotonic() - began
    finally:
        thread.join()
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert took < 20, f"a frozen host hung the run for {took:.0f}s"
    assert result.code == 1, result.out
    # The kill could not reach the frozen host: the verdict says so rather than "killed".
    assert "TEST TIMEOUT (timed out after 3s; may still run on the host (kill failed: " in result.out
    log = (Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-test-frozen.log").read_text()
    assert "killed after" not in log and "could not kill it on the host, it may still run" in log


@pytest.mark.parametrize("how", ["setsid", "setsid env -i"], ids=["marked", "unmarked"])
def test_a_daemon_that_leaves_the_group_and_keeps_writing_does_not_hold_the_run(how, home, make_repo, inv, sshd,
                                                                                tmp_path):
    """Marked (its environment kept) it is killed, as locally; unmarked it cannot be found: the log says so."""
    pidfile = tmp_path / "daemon.pid"
    one_on_host(home, sshd, make_repo, tmp_path, "daemon", {"Makefile": (
        f"test:\n\t@{how} /bin/sh -c 'echo $$$$ > {pidfile}; while :; do echo tick; sleep 0.1; done' &\n"
        f"\t@sh -c 'while [ ! -s {pidfile} ]; do sleep 0.05; done; echo started'\n")})
    began = time.monotonic()
    result = inv("test", "daemon", "--timeout", "20")
    took = time.monotonic() - began
    try:
        assert took < 15, f"took {took:.0f}s: {result.out}"
        assert result.code == 0 and "TEST PASSED" in result.out, result.out
        log = (Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-test-daemon.log").read_text()
        if how == "setsid":
            assert wait_gone(int(pidfile.read_text()), 2), "the daemon the test left on the host survived"
            assert "warning" not in log
        else:
            assert "still holds its output on the host; it was not killed" in log
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_host_add_takes_relative_paths_from_where_they_were_typed(home, inv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = inv("host.add", "--name", "b1", "--host", "h", "--workspace", "w", "--key-file", "keys/id",
                 "--known-hosts", "kh")
    assert result.code == 0, result.err
    host = load_hosts(home.path / "config" / "hosts.toml")["b1"]
    assert (host.key_file, host.known_hosts) == (tmp_path / "keys" / "id", tmp_path / "kh")


def test_a_login_shell_that_prints_without_a_newline_changes_no_verdict(home, make_repo, inv, sshd, tmp_path):
    (sshd.remote_home / ".bashrc").write_text("printf 'Welcome!'; printf 'Last login: never' >&2\n")
    ws = tmp_path / "ws"
    clone_to(ws, make_repo("staking", PASSING))
    write_hosts(home.path, {"builder": sshd.host_entry(ws)})
    home.write_repos([{"name": "staking", "local": str(tmp_path / "nowhere")},  # language detected there
                      {"name": "gone", "local": str(tmp_path / "nowhere-too")}])
    built = inv("build", "staking", "--host", "builder")
    assert built.code == 0 and "BUILD PASSED" in built.out, built.out
    checked = inv("host.check")
    assert checked.code == 0 and "builder: git git version 2." in checked.out, checked.out
    status = inv("status", "--host", "builder", "--json")
    repos = {r["name"]: r for r in __import__("json").loads(status.out)["repos"]}
    assert repos["staking"]["clean"] and repos["staking"]["error"] is None, repos["staking"]
    assert repos["gone"]["error"] == "path does not exist" and not repos["gone"]["exists"]


def test_known_hosts_lines_paramiko_cannot_parse_are_skipped_as_openssh_does(home, inv, sshd, tmp_path):
    """A user's known_hosts often has @cert-authority lines; one odd line must not make every host unreachable."""
    ws = tmp_path / "ws"
    ws.mkdir()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("@cert-authority *.example.com " + sshd.host_key_pub + "\n"
                           f"[127.0.0.1]:{sshd.port} ssh-ed25519 !!!not-base64\n" + sshd.known_hosts.read_text())
    write_hosts(home.path, {"h1": sshd.host_entry(ws, known_hosts=str(known_hosts))})
    result = inv("host.check")
    assert result.code == 0, result.out + result.err


@pytest.mark.parametrize("flags", [(), ("--accept-new-host-key",)], ids=["refuse", "accept-new"])
def test_a_revoked_host_key_is_refused_even_when_also_listed_or_with_accept_new(home, inv, sshd, tmp_path, flags):
    ws = tmp_path / "ws"
    ws.mkdir()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts.read_text() + "@revoked " + sshd.known_hosts.read_text())
    before = known_hosts.read_text()
    write_hosts(home.path, {"h1": sshd.host_entry(ws, known_hosts=str(known_hosts))})
    result = inv("host.check", *flags)
    assert result.code == 1 and "is REVOKED in " in result.out, result.out
    assert known_hosts.read_text() == before


@pytest.mark.parametrize("field,value,message", [
    ("host", "ci@build1", "hosts.b1.host: 'ci@build1' must be one name or address: put the user in `user`"),
    ("host", "build1:2222", "hosts.b1.host: 'build1:2222' must be one name or address: put the port in `port`"),
    ("workspace", "~ci/src", "hosts.b1.workspace: '~ci/src': only ~ and ~/ are understood (the login directory)"),
])
def test_a_host_entry_fabric_would_read_differently_is_refused(home, inv, field, value, message):
    (home.path / "config").mkdir(parents=True, exist_ok=True)
    (home.path / "config" / "hosts.toml").write_text(
        '[hosts.b1]\n' + "".join(f'{k} = "{v}"\n' for k, v in {"host": "build1", "workspace": "w", field: value}.items()))
    result = inv("host.check")
    assert (result.code, result.err.strip()) == (2, f"error: {home.path / 'config' / 'hosts.toml'}: {message}")


def test_accept_new_keeps_a_last_line_that_has_no_newline(home, inv, sshd, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    known_hosts = tmp_path / "known_hosts"
    other = "other.example.com " + sshd.host_key_pub
    known_hosts.write_text(other)  # hand-edited: no newline at the end
    write_hosts(home.path, {"h1": sshd.host_entry(ws, known_hosts=str(known_hosts))})
    assert inv("host.check", "--accept-new-host-key").code == 0
    assert known_hosts.read_text().splitlines() == [other, f"[127.0.0.1]:{sshd.port} {sshd.host_key_pub}"]
    assert inv("host.check").code == 0


def test_a_host_with_more_jobs_than_sshd_lets_authenticate_at_once_runs_every_repo(home, make_repo, inv, sshd,
                                                                                   tmp_path):
    """sshd drops connections beyond MaxStartups that are still authenticating (default 10:30:100, so
    any host with jobs > 10): opening one per job slot all at once failed repos of a reachable host."""
    config = sshd.root / "sshd_config"
    config.write_text(config.read_text().replace("MaxStartups 50", "MaxStartups 2"))
    os.kill(int((sshd.root / "sshd.pid").read_text()), signal.SIGHUP)  # sshd re-reads its config
    wait_for(lambda: sshd.log.read_text().count("Server listening on") == 2)
    ws = tmp_path / "ws"
    names = [f"r{i}" for i in range(6)]
    for name in names:
        clone_to(ws, make_repo(name, {"Makefile": "test:\n\t@sleep 0.3; echo ok\n"}))
    write_hosts(home.path, {"big": sshd.host_entry(ws, jobs=6)})
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n), "language": "make"} for n in names])
    result = inv("test-all", "--hosts", "big")
    assert result.code == 0, result.out
    assert home.state("test-results.json")["summary"]["passed"] == 6


def test_a_host_that_refused_a_new_connection_fails_the_next_ones_without_trying_again(tmp_path):
    from lib.remote.hosts import Host
    from lib.remote.connection import Connections, HostUnreachable
    from tests.sshd_fixtures import free_port

    host = Host("gone", "127.0.0.1", str(tmp_path), port=free_port(), connect_timeout=1,
                known_hosts=tmp_path / "known_hosts")
    connections = Connections(host, first=object(), accept_new_host_key=False)
    connections.take()  # the idle first connection
    refused = connections.take()
    assert isinstance(refused, HostUnreachable) and "Connection refused" in str(refused)
    assert connections.take() is refused  # a silent host would otherwise cost connect_timeout per repo


@pytest.mark.parametrize("command", [("host.check",), ("status", "--host", "silent")], ids=["host.check", "status"])
def test_ctrl_c_while_connecting_is_an_interrupted_line_not_a_traceback(home, tmp_path, command):
    import socket

    with socket.socket() as silent:  # the kernel completes the handshake; nobody ever speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        write_hosts(home.path, {"silent": {"host": "127.0.0.1", "port": silent.getsockname()[1],
                                           "workspace": str(tmp_path), "connect_timeout": 3,
                                           "known_hosts": str(tmp_path / "known_hosts")}})
        home.write_repos([{"name": "r1", "local": str(tmp_path / "r1")}])
        child, err = start(inv_command(*command), tmp_path)
        try:
            wait_for(lambda: child.poll() is None and established(silent.getsockname()[1]))
            child.send_signal(signal.SIGINT)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
    text = err.read_text()
    assert child.returncode == 130 and "Traceback" not in text, text
    assert text.splitlines()[-1].startswith("interrupted"), text


def established(port: int) -> bool:
    """A connection to 127.0.0.1:port is open (read from /proc/net/tcp, no extra dependency)."""
    wanted = f"0100007F:{port:04X}"
    return any(line.split()[2] == wanted and line.split()[3] == "01"
               for line in Path("/proc/net/tcp").read_text().splitlines()[1:])


def test_a_silent_host_is_one_line_on_stderr_never_paramikos_traceback(home, tmp_path):
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        write_hosts(home.path, {"silent": {"host": "127.0.0.1", "port": silent.getsockname()[1],
                                           "workspace": str(tmp_path), "connect_timeout": 1,
                                           "known_hosts": str(tmp_path / "known_hosts")}})
        home.write_repos([{"name": "r1", "local": str(tmp_path / "r1"), "language": "make"}])
        child, err = start(inv_command("build", "r1", "--host", "silent"), tmp_path)
        out, _ = child.communicate(timeout=30)
    assert child.returncode == 1 and b"no SSH banner within 1s" in out
    assert err.read_text() == ""


@pytest.mark.parametrize("output", ["small", "big"])
def test_a_log_that_cannot_be_written_is_said_as_such_never_a_lost_connection(home, make_repo, inv, sshd, tmp_path,
                                                                             output):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    pidfile = tmp_path / "cmd.pid"
    noisy = "head -c 1000000 /dev/zero" if output == "big" else "echo ok"
    one_on_host(home, sshd, make_repo, tmp_path, "full", {"Makefile": f"test:\n\t@echo $$$$ > {pidfile}; {noisy}\n"})
    log = Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-test-full.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.symlink_to("/dev/full")  # a full disk
    result = inv("test", "full")
    assert result.code == 1, result.out + result.err
    assert f"TEST ERROR (cannot write log {log}: No space left on device" in result.out, result.out
    assert not pidfile.exists() or wait_gone(int(pidfile.read_text()), 2), "the command ran on, unlogged"
