"""A second hostile pass over issue 20 as it landed: each test reproduces a defect found in it."""
from __future__ import annotations

import fcntl
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lib.remote import connection as remote
from lib.remote import known_hosts
from lib.remote.connection import HostUnreachable
from lib.remote.hosts import Host
from tests.conftest import require_tool
from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.test_hosts_remote import only_on_host
from tests.test_hosts_robust import banner_only_port  # noqa: F401  (a fixture)
from tests.test_known_hosts import TOUCHING


def test_a_stalled_handshake_waits_the_hosts_connect_timeout_not_paramikos_15s(tmp_path, banner_only_port):
    """connect_timeout bounds the whole handshake: with 20 s, a host that sent its banner is given 20 s,
    and the message's "for 20s" is true (the host-key transport factory once dropped the handshake bound)."""
    host = Host("mute", "127.0.0.1", str(tmp_path), port=banner_only_port, connect_timeout=20,
                known_hosts=tmp_path / "known_hosts")
    started = time.monotonic()
    try:
        remote.connect(host)
    except HostUnreachable as err:
        message = str(err)
    waited = time.monotonic() - started
    assert "host sent its banner, then nothing for 20s" in message
    assert waited >= 19.5, f"gave up after {waited:.1f}s, not the host's 20s"


def test_without_a_known_hosts_in_hosts_toml_a_key_in_known_hosts2_counts_as_ssh_counts_it(
        home, make_repo, inv, sshd, tmp_path, monkeypatch):
    """ssh's default UserKnownHostsFile is `~/.ssh/known_hosts ~/.ssh/known_hosts2` (`ssh -G` says so): a
    host recorded in known_hosts2 with another key is CHANGED for ssh. Before, only known_hosts was read:
    the host was unknown, and --accept-new-host-key trusted the impostor, ran the build and appended it."""
    require_tool("ssh")
    defaults = subprocess.run(["ssh", "-F", "/dev/null", "-G", "example.com"], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL).stdout
    assert re.search(r"^userknownhostsfile \S+/\.ssh/known_hosts \S+/\.ssh/known_hosts2$", defaults, re.M), defaults
    monkeypatch.setattr(known_hosts, "GLOBAL_FILES", (tmp_path / "etc" / "absent",))
    ssh_dir = Path(os.environ["HOME"]) / ".ssh"  # the tests' own HOME (conftest), never the real one
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    other = ssh_dir / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(other)], check=True,
                   stdin=subprocess.DEVNULL)
    (ssh_dir / "known_hosts2").write_text(f"* {other.with_suffix('.pub').read_text().split(' ', 2)[0]} "
                                          f"{other.with_suffix('.pub').read_text().split()[1]}\n")
    workspace = tmp_path / "remote-ws"
    only_on_host(home, sshd, make_repo, tmp_path, "staking", TOUCHING)
    entry = sshd.host_entry(workspace)
    del entry["known_hosts"]
    write_hosts(home.path, {"builder": entry})
    result = inv("build", "staking", "--host", "builder", "--accept-new-host-key")
    assert result.code == 1, result.out + result.err
    assert f"host key CHANGED for [127.0.0.1]:{sshd.port}" in result.out, result.out
    assert f"{ssh_dir / 'known_hosts2'} has another key for it" in result.out, result.out
    assert not (workspace / "ran-on-host").exists()
    assert not (ssh_dir / "known_hosts").exists()


def test_sync_alls_progress_lines_escape_a_config_values_control_characters(home, make_repo, inv):
    """A git config value (here branch.main.merge) reaches the reason of a sync outcome: the table at the
    end escaped it, the progress line printed as each repo finishes wrote ESC and BEL raw to the terminal."""
    repo = make_repo("staking")
    repo.git("config", "branch.main.merge", "refs/tags/\x1b]0;pwned\x07\u202e")
    home.write_repos([{"name": "staking", "local": str(repo.path), "remote": str(repo.remote)}])
    result = inv("sync-all")
    assert "staking: skipped: main's upstream (origin refs/tags/\\x1b]0;pwned\\x07\\u202e)" in result.err, result.err
    for shown in (result.out, result.err):
        assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown, shown


def test_host_check_shows_a_hosts_tool_versions_escaped(home, inv, sshd, tmp_path):
    """The versions host.check prints come from the host (`make --version`): a host, or a tool on it,
    that prints ESC/BEL/bidi there must not drive our terminal (they were printed raw)."""
    tools = tmp_path / "host-tools"
    tools.mkdir()
    (tools / "make").write_text("#!/bin/sh\nprintf 'GNU Make \\033]0;pwned\\007\\342\\200\\256 4.3\\n'\n")
    (tools / "make").chmod(0o755)
    (sshd.remote_home / ".bashrc").write_text(f"PATH={tools}:$PATH\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    write_hosts(home.path, {"b1": sshd.host_entry(ws)})
    result = inv("host.check")
    assert result.code == 0, result.out + result.err
    assert "make GNU Make \\x1b]0;pwned\\x07\\u202e 4.3;" in result.out, result.out
    assert "\x1b" not in result.out and "\x07" not in result.out and "\u202e" not in result.out


@pytest.mark.parametrize("code", [1, 0])
def test_a_login_shell_that_ends_before_our_command_is_an_error_never_a_missing_tool(home, make_repo, inv, sshd,
                                                                                    tmp_path, code):
    """A start-up file that ends every login (`exit 1`, a broken .bashrc) ran none of our checks: it was
    `BUILD SKIPPED (make not found on PATH on the host)`, exit 0; with `exit 0` every check "passed"."""
    workspace = only_on_host(home, sshd, make_repo, tmp_path, "staking", TOUCHING)
    (sshd.remote_home / ".bashrc").write_text(f"printf 'profile broken\\n' >&2; exit {code}\n")
    result = inv("build", "staking", "--host", "builder")
    assert result.code == 1, result.out
    assert (f"BUILD ERROR (host builder: the login shell ended (exit {code}) before running the check for make: "
            "profile broken, ") in result.out, result.out
    assert not (workspace / "ran-on-host").exists()
    check = inv("host.check")
    assert check.code == 1
    assert f"host builder: the login shell ended (exit {code}) before running true: profile broken" in check.out, \
        check.out


def test_a_run_on_a_host_does_not_truncate_the_log_of_a_run_still_writing_it(home, make_repo, inv, sshd, tmp_path):
    """Local runs lock their log (one writer); a run on a host opened it with "wb", emptying the log a local
    run of the same repo and workflow (same log name) was still writing."""
    workspace = only_on_host(home, sshd, make_repo, tmp_path, "staking", TOUCHING)
    log = Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-build-staking.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as running:  # another run, writing its log under the lock
        fcntl.flock(running.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        running.write(b"the other run's output\n")
        running.flush()
        result = inv("build", "staking", "--host", "builder")
    assert result.code == 1, result.out
    assert f"BUILD ERROR (log {log} is in use by another run" in result.out, result.out
    assert log.read_bytes() == b"the other run's output\n"
    assert not (workspace / "ran-on-host").exists()


@pytest.fixture
def inv_unless_it_hangs(inv):
    """`inv(*args)` in a thread, given 100 s (under pytest-timeout's 120 s: a busy machine gets room, a hang is
    still caught). Still running then, the test fails with `hang`; `release` first lets the run go on so the
    test can end (without it, a fixture's end must: the run is left to it)."""

    def run(*args, hang, release=None):
        results = []
        thread = threading.Thread(target=lambda: results.append(inv(*args)))
        thread.start()
        thread.join(100)
        if thread.is_alive():
            if release is not None:
                release()
                thread.join()
            pytest.fail(hang)
        return results[0]

    return run


def read_pipe(path: Path):
    """A release for inv_unless_it_hangs: a run blocked opening the named pipe `path` goes on once it has a reader."""

    def release() -> None:
        with open(path, "rb") as reader:
            reader.read()

    return release


def test_a_named_pipe_as_the_log_of_a_run_on_a_host_is_an_error_not_a_hang(home, make_repo, inv_unless_it_hangs,
                                                                             sshd, tmp_path):
    only_on_host(home, sshd, make_repo, tmp_path, "staking", TOUCHING)
    log = Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-build-staking.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(log)
    result = inv_unless_it_hangs("build", "staking", "--host", "builder", hang="the run waited for a reader of its log",
                                 release=read_pipe(log))
    assert result.code == 1, result.out
    assert "BUILD ERROR (cannot write log " in result.out and "named pipe" in result.out, result.out


@pytest.fixture
def mute_agent(tmp_path):
    """An SSH agent socket that takes connections and never answers (a frozen forwarded agent, say)."""
    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    yield path
    server.close()
    for peer in accepted:
        peer.close()


def test_an_ssh_agent_that_never_answers_costs_the_connect_timeout_not_forever(home, make_repo, inv_unless_it_hangs,
                                                                               sshd, tmp_path, mute_agent,
                                                                               monkeypatch):
    """An inherited SSH_AUTH_SOCK whose agent never answers hung every connection of a host without key_file:
    paramiko asks the agent with no timeout at all."""
    monkeypatch.setenv("SSH_AUTH_SOCK", str(mute_agent))
    workspace = only_on_host(home, sshd, make_repo, tmp_path, "staking", TOUCHING)
    entry = sshd.host_entry(workspace, connect_timeout=2)
    del entry["key_file"]
    write_hosts(home.path, {"builder": entry})
    # Hung, the mute_agent fixture's end closes the agent's connections, and lets it go on.
    result = inv_unless_it_hangs("build", "staking", "--host", "builder",
                                 hang="the connection waited for the agent without end")
    assert result.code == 1, result.out
    assert f"the SSH agent ({mute_agent}) did not answer within 2s" in result.out, result.out
    assert not (workspace / "ran-on-host").exists()


def test_a_working_ssh_agent_still_logs_in_a_host_without_key_file(home, make_repo, inv, sshd, tmp_path,
                                                                     monkeypatch):
    """The other side of the agent check: an agent that answers is used as before."""
    require_tool("ssh-agent")
    require_tool("ssh-add")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        subprocess.run(["ssh-add", "-q", str(sshd.client_key)], check=True, stdin=subprocess.DEVNULL,
                       capture_output=True)
        workspace = only_on_host(home, sshd, make_repo, tmp_path, "staking", TOUCHING)
        entry = sshd.host_entry(workspace)
        del entry["key_file"]
        write_hosts(home.path, {"builder": entry})
        result = inv("build", "staking", "--host", "builder")
        assert result.code == 0, result.out
        assert (workspace / "ran-on-host").exists()
    finally:
        agent.terminate()
        agent.wait(timeout=60)


def test_a_hosts_words_in_a_runs_verdict_line_are_shown_escaped(home, make_repo, inv, sshd, tmp_path):
    """`BUILD ERROR (could not start the command on the host ...: <what the host said>)`: the host's stderr
    reached the terminal raw in the verdict line (the outcomes table escaped it)."""
    tools = tmp_path / "host-tools"
    tools.mkdir()
    (tools / "setsid").write_text("#!/bin/sh\nprintf 'no setsid \\033]0;pwned\\007\\n' >&2; exit 1\n")
    (tools / "setsid").chmod(0o755)
    workspace = only_on_host(home, sshd, make_repo, tmp_path, "staking", TOUCHING)
    (sshd.remote_home / ".bashrc").write_text(f"PATH={tools}:$PATH\n")
    result = inv("build", "staking", "--host", "builder")
    assert result.code == 1, result.out
    verdict = next(line for line in result.out.splitlines() if line.startswith("BUILD "))
    assert verdict.startswith("BUILD ERROR (could not start the command on the host (needs /bin/sh and setsid): "
                              "no setsid \\x1b]0;pwned\\x07, "), result.out
    assert not (workspace / "ran-on-host").exists()
