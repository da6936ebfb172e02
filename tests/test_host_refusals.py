"""A host that refuses something over a working link is said to refuse it, never to have lost the link, timed
out a command that never ran, or killed one by a signal.

The "host" is this machine (the sshd fixture).
"""
from __future__ import annotations

import io
import os
import threading
import time

import pytest

from tests.conftest import require_tool
from tests.sshd_fixtures import closing_all, free_one, hold_every_session, in_a_thread, refusals, relay
from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.test_sync_host_robust import wait_until


def test_a_session_refused_for_longer_than_the_commands_time_is_the_refusal_and_nothing_runs(home, sshd, tmp_path):
    """The repo has 2 s left; sshd refuses the command's session (MaxSessions) past them: run_remote went on asking
    for 3 x connect_timeout (15 s), then, once a slot freed, exec'd the command and killed it at once, reported
    `timed out` although it never ran. Now the refusal stands once the command's time is spent, and nothing is
    exec'd (the login shell, which records each command it is given, never sees ours)."""
    from lib.remote import connection as remote
    from lib.remote.hosts import load_hosts

    write_hosts(home.path, {"b1": sshd.host_entry(tmp_path)})
    host = load_hosts(home.path / "config" / "hosts.toml")["b1"]
    connection = remote.connect(host)
    given = tmp_path / "commands-given"
    log = io.BytesIO()
    refused = refusals(sshd)
    budget, held = 2.0, []
    with closing_all(connection, held):
        held += hold_every_session(connection)
        (sshd.remote_home / ".bashrc").write_text(f'printf "%s\\n" "$BASH_EXECUTION_STRING" >> {given}\n')
        started = time.monotonic()
        thread, done = in_a_thread(lambda: remote.run_remote(connection, str(tmp_path), "echo ran here", {}, log,
                                                             budget, host=host))
        try:
            wait_until(lambda: done or refusals(sshd) > refused, 60, "a refused session")
            # A slot frees only after the command's time is spent (it may have given up already: as it should).
            wait_until(lambda: done or time.monotonic() - started > budget + 1, 60, "the command's time spent")
            free_one(held)
        finally:
            thread.join(120)
    assert len(done) == 1 and isinstance(done[0], Exception), (done, log.getvalue())
    assert remote.session_refused(done[0]), done
    assert log.getvalue() == b""
    assert "orchestrator-pgid" not in (given.read_text() if given.exists() else "")


@pytest.mark.parametrize("call", ["run_remote", "probe"])
def test_a_session_the_host_opens_after_the_refusals_wait_is_used_not_thrown_away(home, sshd, tmp_path, call):
    """sshd refuses the command's session (MaxSessions), and it is asked for again for 30 s (3 x connect_timeout).
    The link stalls (a relay holds what we send) 5 s before those 30 s are over, with a request for the session
    under way; a slot frees, and the link comes back after them: the session opened, and was closed unused and
    the refusal reported, for a command with no timeout of its own (it never ran) and for a probe. Now a session
    that opened is used: the command runs, and a probe's login shell gets its whole wait from the session's
    opening (never `did not answer`)."""
    from lib.remote import connection as remote
    from lib.remote.hosts import load_hosts

    ran, sleeper = tmp_path / "ran", tmp_path / "sleeper.pid"
    command = f"touch {ran} && echo ran here"
    log = io.BytesIO()
    with relay(sshd) as link:
        write_hosts(home.path, {"b1": sshd.host_entry(tmp_path, port=link.port, known_hosts=str(link.known_hosts),
                                                      connect_timeout=10)})
        host = load_hosts(home.path / "config" / "hosts.toml")["b1"]
        within = remote.answer_within(host)  # 30 s; a session request waits 10 s for its answer (channel_timeout)
        connection = remote.connect(host)
        refused, held = refusals(sshd), []
        with closing_all(connection, held):
            held += hold_every_session(connection, 9)
            # The tenth slot: a session closed on our side whose command lives on (sshd keeps its slot until the
            # command ends, and then frees it with no word from us: the relay may be holding our words then).
            last = connection.create_session()
            last.exec_command(f"echo $$ > {sleeper}; exec sleep 600")
            wait_until(lambda: sleeper.exists() and sleeper.read_text().strip(), 60, "the tenth session's command")
            last.close()
            thread, done = in_a_thread(
                (lambda: remote.run_remote(connection, str(tmp_path), command, {}, log, None, host=host))
                if call == "run_remote" else (lambda: remote.probe(connection, host, command, "the probe")))
            try:
                wait_until(lambda: done or refusals(sshd) > refused, 60, "a refused session")
                first_refusal = time.monotonic()  # the wait for a session began before it
                wait_until(lambda: done or time.monotonic() > first_refusal + within - 5, 60, "5 s of the wait left")
                link.hold()  # the next request for the session waits in the relay
                os.kill(int(sleeper.read_text()), 9)  # its slot frees
                wait_until(lambda: done or time.monotonic() > first_refusal + within + 1, 60, "the wait over")
                link.send_held()  # the request reaches sshd, which opens the session
                wait_until(lambda: done or ran.exists(), 120, "the command run")
            finally:
                thread.join(120)
    assert len(done) == 1, done
    if call == "run_remote":
        assert isinstance(done[0], remote.RemoteResult) and done[0].exit_code == 0, (done, log.getvalue())
        assert b"ran here" in log.getvalue()
    else:
        assert done[0] == (0, b"ran here\n", b""), done


def test_a_command_with_no_time_left_is_not_started_on_the_host(home, sshd, tmp_path):
    """A repo whose time ran out in its first command: its next one was exec'd and killed at once (it may have
    done a part of its work); it times out without being started."""
    from lib.remote import connection as remote
    from lib.remote.hosts import load_hosts

    write_hosts(home.path, {"b1": sshd.host_entry(tmp_path)})
    host = load_hosts(home.path / "config" / "hosts.toml")["b1"]
    given = tmp_path / "commands-given"
    (sshd.remote_home / ".bashrc").write_text(f'printf "%s\\n" "$BASH_EXECUTION_STRING" >> {given}\n')
    connection = remote.connect(host)
    try:
        result = remote.run_remote(connection, str(tmp_path), f"touch {tmp_path / 'ran'}", {}, io.BytesIO(), 0.0,
                                   host=host)
        # Anything it had started there would have been killed by now, over this same connection.
        remote.probe(connection, host, "true", "true")
    finally:
        connection.close()
    assert result.timed_out and result.problem is None, result
    assert not (tmp_path / "ran").exists()
    assert "orchestrator-pgid" not in (given.read_text() if given.exists() else "")


def out_of_files_once_connected(monkeypatch, sshd) -> list:
    """Every connection made: its sshd processes then have no descriptor left (`prlimit --nofile` at what they
    hold), so sshd refuses to start a command over a link that works (its log: `do_exec_no_pty: pipe in: Too
    many open files`; paramiko: SSHException('Channel closed.') with the transport still active)."""
    import subprocess

    from lib import procs
    from lib.remote import connection as remote

    require_tool("prlimit")
    connect, made = remote.connect, []
    listener = int((sshd.root / "sshd.pid").read_text())

    def connect_then_starve(*args, **kwargs):
        connection = connect(*args, **kwargs)
        made.append(connection)
        for pid in procs.descendants(procs.process_table(), listener):
            try:
                held = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue
            subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={held}:"], check=False, capture_output=True)
        return connection

    monkeypatch.setattr(remote, "connect", connect_then_starve)
    return made


REFUSED = "the host refused to start the command (it closed the session; the connection still works)"


@pytest.mark.parametrize("door", ["status", "host.check", "build"])
def test_a_host_that_refuses_to_start_a_command_over_a_working_link_says_so_never_lost(
        home, make_repo, inv, sshd, tmp_path, monkeypatch, door):
    """sshd at its descriptor limit refuses each command (`Channel closed.`) while the link answers: every repo
    said `host b1: the connection was lost` and host.check `... lost while checking the host`, and the live
    connection was given up."""
    import json

    from tests.test_hosts_remote import clone_to

    ws = tmp_path / "ws"
    names = ["a-first", "b-next"]
    for name in names:
        clone_to(ws, make_repo(name))
    write_hosts(home.path, {"b1": sshd.host_entry(ws)})
    made = out_of_files_once_connected(monkeypatch, sshd)
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n), "host": "b1"} for n in names])
    result = {"status": lambda: inv("status", "--host", "b1", "--json"), "host.check": lambda: inv("host.check"),
              "build": lambda: inv("workflow-all", "build")}[door]()
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err
    assert "Too many open files" in sshd.log.read_text()
    assert len(made) == 1 and made[0].given_up is None  # the link worked: never given up
    if door == "status":
        errors = {r["name"]: r["error"] for r in json.loads(result.out)["repos"]}
        assert errors == dict.fromkeys(names, f"reading the status failed on host b1: {REFUSED}"), errors
    elif door == "build":  # the language checks of the planning: refused there
        entries = {e["repo"]: (e["status"], e["reason"]) for e in home.state("build-results.json")["results"]}
        said = f"planning the run failed on host b1: {REFUSED}"
        assert entries == dict.fromkeys(names, ("error", said)), entries
    else:
        row = next(line for line in result.out.splitlines() if line.startswith("b1 "))
        assert f"checking the host failed on host b1: {REFUSED}" in row, result.out
        assert "lost" not in row and "unreachable" not in row, result.out


def test_a_paramiko_error_is_a_lost_link_only_when_the_link_does_not_answer(home, sshd, tmp_path):
    """connection.link_error: SSHException('Channel closed.') over a link that answers is the host's refusal;
    the same once the connection is closed or given up is the link."""
    import paramiko

    from lib.remote import connection as remote
    from lib.remote.hosts import load_hosts

    write_hosts(home.path, {"b1": sshd.host_entry(tmp_path)})
    connection = remote.connect(load_hosts(home.path / "config" / "hosts.toml")["b1"])
    closed = paramiko.SSHException("Channel closed.")
    try:
        assert not remote.link_error(closed, connection)
        assert remote.link_error(EOFError(), connection) and remote.link_error(TimeoutError(), connection)
    finally:
        connection.close()
    assert remote.link_error(closed, connection) and remote.link_error(closed)


def test_a_sync_whose_home_on_the_host_vanished_before_the_driver_started_says_so_not_a_signal(
        home, make_repo, inv, sshd, tmp_path):
    """The sync's home there (<workspace>/.orchestrator) is gone when the driver's `cd` runs (another machine's
    clean-up, say): every repo said `gave no result: killed by a signal`, though nothing was killed."""
    import shlex

    from tests.test_sync_host import results, setup

    handles = [make_repo("alpha"), make_repo("beta")]
    workspace = setup(home, sshd, tmp_path, handles)
    sync_home = workspace / ".orchestrator"
    # The login shell that is given the driver moves the home away first.
    (sshd.remote_home / ".bashrc").write_text(
        f'case "$BASH_EXECUTION_STRING" in *orchestrator-no-such-directory*python3*) '
        f'mv -- {shlex.quote(str(sync_home))} {shlex.quote(str(workspace / "moved-away"))} ;; esac\n')
    result = inv("sync-all", "--host", "builder")
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err
    assert (workspace / "moved-away").is_dir()
    said = (f"sync on host builder gave no result: its home {sync_home} on the host could not be entered "
            "(removed, or no longer ours, since it was prepared); nothing of the sync ran there")
    assert {n: (e["status"], e["reason"]) for n, e in results(home).items()} == dict.fromkeys(
        ["alpha", "beta"], ("failed", said)), results(home)


@pytest.mark.parametrize("result, said", [
    ({"no_directory": True}, "its home /ws/.orchestrator on the host could not be entered (removed, or no longer "
                             "ours, since it was prepared); nothing of the sync ran there"),
    ({"killed_by": "SIGKILL", "exit_code": 137}, "killed by SIGKILL"),
    ({}, "killed by a signal"),  # setsid itself killed: no exit status
    ({"exit_code": 3}, "exit 3"),
], ids=["no-directory", "signal", "setsid-killed", "exited"])
def test_a_driver_that_gave_no_result_is_said_as_it_ended(result, said):
    from lib.remote import connection as remote
    from lib.remote.sync import _driver_end, _HostOutput

    ended = remote.RemoteResult(**{"exit_code": None, **result})
    assert _driver_end(ended, _HostOutput(lambda data: None), "/ws/.orchestrator") == said


def test_a_run_that_ended_in_an_error_leaves_no_stop_behind_for_the_next_one_in_this_process(
        home, make_repo, sshd, tmp_path, monkeypatch):
    """run_distributed ends in an error (here its display's), and the stop it raised on its way out (then its
    own flag in lib.remote.connection; now the runner's, from run_each's terminate_all) must not outlive it: a
    later host check whose session sshd refused for a moment was never asked for again (it failed at once),
    as if that check were being stopped."""
    from lib.config import load_workspace
    from lib.paths import Paths
    from lib.remote import connection as remote
    from lib.remote.fleet import plan_groups, run_distributed
    from lib.remote.hosts import load_hosts
    from tests.test_hosts_remote import PASSING, clone_to

    ws = tmp_path / "ws"
    clone_to(ws, make_repo("alpha", PASSING))
    write_hosts(home.path, {"b1": sshd.host_entry(ws)})
    home.write_repos([{"name": "alpha", "local": str(tmp_path / "nowhere" / "alpha"), "host": "b1"}])
    paths = Paths.from_env()
    workspace = load_workspace(paths.repos_file)
    fleet, groups = plan_groups(paths, workspace.repos, "", 1)

    def display_fails(outcome) -> None:
        raise RuntimeError("the display failed")

    with pytest.raises(RuntimeError, match="the display failed"):
        run_distributed(paths, workspace, "build", groups, fleet, 1, 60, on_done=display_fails)

    # The check's connection has every session taken; one frees once sshd has refused the check's.
    connect, freeing = remote.connect, []

    def connect_full(*args, **kwargs):
        connection = connect(*args, **kwargs)
        held, refused = hold_every_session(connection), refusals(sshd)

        def free_after_a_refusal() -> None:
            wait_until(lambda: refusals(sshd) > refused, 60, "a refused session")
            free_one(held)

        freeing.append(threading.Thread(target=free_after_a_refusal, daemon=True))
        freeing[-1].start()
        return connection

    monkeypatch.setattr(remote, "connect", connect_full)
    [checked] = remote.check_hosts([load_hosts(home.path / "config" / "hosts.toml")["b1"]])
    for thread in freeing:
        thread.join(60)
    assert checked.reason is None and checked.tools is not None, checked.reason
