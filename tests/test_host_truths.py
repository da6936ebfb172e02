"""A build host's run says what happened there: a link lost while planning is lost, not unreachable; a command
a signal killed names the signal; a refused session is asked for again before it fails a repo.

The "host" is this machine (the sshd fixture).
"""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.conftest import process_running
from tests.sshd_fixtures import closing_all, free_one, hold_every_session, in_a_thread, refusals  # noqa: E402
from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.test_hosts_mends import link_dropped_once
from tests.test_hosts_remote import PASSING, clone_to


def test_a_link_lost_while_planning_says_it_was_lost_and_that_nothing_of_the_run_started(
        home, make_repo, inv, sshd, tmp_path):
    """The host answered (pwd, a first language check), then its connection dropped during the next language
    check: every repo said `host unreachable: b1: ConnectionError: ...`, a lie about a host that was reached."""
    ws = tmp_path / "ws"
    names = ("a-first", "b-held", "c-last")
    for name in names:
        clone_to(ws, make_repo(name, PASSING))
    pid_file, lock = tmp_path / "held.pid", tmp_path / "lock"
    lock.write_text("")
    # The login shell's `cd` into b-held (its language check) writes its pid and waits: the link drops meanwhile.
    (sshd.remote_home / ".bashrc").write_text(
        f'cd() {{ case "$*" in */b-held) echo $$ > {pid_file}; while [ -e {lock} ]; do sleep 0.1; done ;; esac; '
        'builtin cd "$@"; }\n')
    write_hosts(home.path, {"b1": sshd.host_entry(ws)})
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n), "host": "b1"} for n in names])
    try:
        with link_dropped_once(sshd, pid_file, "the language check of b-held"):
            result = inv("workflow-all", "build")
    finally:
        lock.unlink()
        if pid_file.exists() and pid_file.read_text().strip() and process_running(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err
    entries = {e["repo"]: e for e in home.state("build-results.json")["results"]}
    said = "host b1: the connection was lost while planning the run; no command of the build had started there"
    assert {n: (e["status"], e["reason"]) for n, e in entries.items()} == dict.fromkeys(names, ("error", said))
    assert "unreachable" not in result.out
    log = (Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-build-c-last.log").read_text()
    assert f"error: {said}\n" in log, log


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])


KILLED_SETSID = ("setsid, which ran the sync on host builder, was killed by a signal; the sync was then stopped "
                 "(SIGTERM) before this repo finished")


@pytest.mark.parametrize("victim, said", [
    ("driver", {"sync on host builder gave no result: killed by SIGKILL"}),
    # The sync there is then ended as a command's leftovers are: it stops (SIGTERM), or, not stopped within its
    # grace (a busy host), is killed.
    ("setsid", {KILLED_SETSID, "sync on host builder gave no result: killed by a signal"})])
def test_a_sync_driver_a_signal_killed_on_the_host_names_the_signal_not_the_shells_words(
        home, make_repo, sshd, tmp_path, victim, said):
    """The OOM killer's SIGKILL to the driver there: its repos said `gave no result: Killed` (the words /bin/sh
    prints for a child it lost), where a run here says `killed by SIGKILL`. setsid, which waits for the driver,
    killed instead: the session ends with no exit status, so no signal can be named (never `exit None`), and
    the driver, then stopped by us, is never said to have been stopped there by someone."""
    from tests.conftest import wait_gone
    from tests.test_sync_host import results
    from tests.test_sync_host_robust import driver_pids, fast_and_hung_slow, inv_subprocess, until_fast_is_done

    workspace, pid_file = fast_and_hung_slow(home, make_repo, sshd, tmp_path)
    err_file = tmp_path / "stderr.txt"
    proc = inv_subprocess(tmp_path, "sync-all", "--host", "builder", stderr=err_file)
    try:
        until_fast_is_done(err_file, pid_file, workspace)
        for pid in driver_pids(workspace):
            os.kill(pid if victim == "driver" else parent_of(pid), signal.SIGKILL)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    hung = int(pid_file.read_text().split()[0])
    try:
        assert proc.returncode == 1, out + err_file.read_text()
        entries = results(home)
        assert entries["fast"]["status"] == "updated", entries["fast"]
        assert entries["slow"]["status"] == "failed" and entries["slow"]["reason"] in said, entries["slow"]
        assert wait_gone(hung, 30), "the host's fetch outlived the sync that started it"
    finally:
        if process_running(hung):
            os.kill(hung, signal.SIGKILL)


def test_a_command_whose_session_the_host_refuses_for_a_while_runs_once_a_session_frees(home, sshd, tmp_path):
    """sshd refuses an 11th session on one connection (MaxSessions); short commands asked again
    (connection._open_session), while run_remote failed its repo at the first refusal."""
    import io

    from lib.remote import connection as remote
    from lib.remote.hosts import load_hosts
    from tests.test_sync_host_robust import wait_until

    write_hosts(home.path, {"b1": sshd.host_entry(tmp_path)})
    host = load_hosts(home.path / "config" / "hosts.toml")["b1"]
    connection = remote.connect(host)
    held, log = [], io.BytesIO()
    refused = refusals(sshd)
    with closing_all(connection, held):
        held += hold_every_session(connection)
        thread, done = in_a_thread(lambda: remote.run_remote(connection, str(tmp_path), "echo ran here", {}, log, 60,
                                                             host=host))
        try:
            wait_until(lambda: done or refusals(sshd) > refused, 60, "a refused session")
            free_one(held)
        finally:
            thread.join(120)
    assert len(done) == 1 and isinstance(done[0], remote.RemoteResult), done
    assert done[0].exit_code == 0 and b"ran here" in log.getvalue(), (done, log.getvalue())


def test_a_log_that_refuses_a_write_while_a_command_runs_on_a_host_is_the_recorders_own_log_failure(
        home, sshd, tmp_path):
    """One type says a run's log refused a write, here or on a host: the Recorder's batch.LogWriteFailed (the
    host's run had its own twin, connection.LogWriteError, which every catch had to name too)."""
    import pytest

    from lib import batch
    from lib.remote import connection as remote
    from lib.remote.hosts import load_hosts

    write_hosts(home.path, {"b1": sshd.host_entry(tmp_path)})
    host = load_hosts(home.path / "config" / "hosts.toml")["b1"]
    connection = remote.connect(host)
    try:
        with open("/dev/full", "wb", buffering=0) as full, pytest.raises(batch.LogWriteFailed) as refused:
            remote.run_remote(connection, str(tmp_path), "echo some output", {}, full, 60, host=host)
    finally:
        connection.close()
    assert refused.value.strerror == "No space left on device"
    assert not hasattr(remote, "LogWriteError")


def test_host_check_says_a_link_lost_after_the_host_answered_was_lost_never_unreachable(home, inv, sshd, tmp_path):
    """The host answered (a login, `true`), then the link dropped during the tool probe: the row said
    `unreachable: b1: ConnectionError: ...` of a host it had just logged in to."""
    pid_file, lock = tmp_path / "held.pid", tmp_path / "lock"
    lock.write_text("")
    (sshd.remote_home / ".bashrc").write_text(
        f'case "$BASH_EXECUTION_STRING" in *"for tool in"*) echo $$ > {pid_file}; '
        f'while [ -e {lock} ]; do sleep 0.1; done ;; esac\n')
    write_hosts(home.path, {"b1": sshd.host_entry(tmp_path)})
    try:
        with link_dropped_once(sshd, pid_file, "the tool probe"):
            result = inv("host.check")
    finally:
        lock.unlink()
    assert result.code == 1, result.out + result.err
    assert "Traceback" not in result.err
    row = next(line for line in result.out.splitlines() if line.startswith("b1 "))
    assert "host b1: the connection was lost while checking the host" in row, result.out
    assert "unreachable" not in row and "ConnectionError" not in row, result.out
    assert re.search(r" \d+\.\ds ", row), result.out  # the login it took before the drop is still shown


def test_a_stop_while_the_host_refuses_the_commands_session_is_a_stop_not_the_refusal(home, sshd, tmp_path):
    """Ctrl-C in a multi-host run (run_each's terminate_all raises the runner's stop) while run_remote asks again
    for a session sshd refuses: the command never started, and the stop says so (runner.Stopping), never `the
    host refused a new session`."""
    import io

    from lib import runner
    from lib.remote import connection as remote
    from lib.remote.hosts import load_hosts
    from tests.test_sync_host_robust import wait_until

    write_hosts(home.path, {"b1": sshd.host_entry(tmp_path)})
    host = load_hosts(home.path / "config" / "hosts.toml")["b1"]
    connection = remote.connect(host)
    held = []
    refused = refusals(sshd)
    try:
        held += hold_every_session(connection)
        thread, done = in_a_thread(lambda: remote.run_remote(connection, str(tmp_path), "echo ran", {}, io.BytesIO(),
                                                             60, host=host))
        try:
            wait_until(lambda: done or refusals(sshd) > refused, 60, "a refused session")
            runner.terminate_all()
        finally:
            thread.join(120)
    finally:
        runner._stopping.clear()
        for channel in held:
            channel.close()
        connection.close()
    assert len(done) == 1 and isinstance(done[0], runner.Stopping), done


def test_a_stop_while_the_commands_session_opens_starts_nothing_there(home, sshd, tmp_path):
    """The run is stopped while the host has not yet answered the request for the command's session (a relay
    holds it); the session then opens. run_remote exec'd the command and killed it at once: it may have done a
    part of its work, and the stop counted it among the commands it stopped. Now nothing is started there:
    runner.Stopping, the login shell never given our command, nothing counted stopped."""
    import io

    from lib import runner
    from lib.remote import connection as remote
    from lib.remote.hosts import load_hosts
    from tests.sshd_fixtures import relay
    from tests.test_sync_host_robust import wait_until

    given = tmp_path / "commands-given"
    (sshd.remote_home / ".bashrc").write_text(f'printf "%s\\n" "$BASH_EXECUTION_STRING" >> {given}\n')
    with relay(sshd) as link:
        write_hosts(home.path, {"b1": sshd.host_entry(tmp_path, port=link.port, known_hosts=str(link.known_hosts),
                                                      connect_timeout=20)})
        host = load_hosts(home.path / "config" / "hosts.toml")["b1"]
        connection = remote.connect(host)
        try:
            with remote.one_run():
                link.hold()
                thread, done = in_a_thread(lambda: remote.run_remote(connection, str(tmp_path), "echo ran", {},
                                                                     io.BytesIO(), 60, host=host))
                try:
                    wait_until(lambda: done or link.held, 60, "the request for the session held")
                    runner.terminate_all()
                    link.send_held()
                finally:
                    thread.join(120)
                counted = remote.stopped_count()
            remote.probe(connection, host, "true", "true")  # over the same connection: anything exec'd is in
        finally:
            runner._stopping.clear()
            connection.close()
    assert len(done) == 1 and isinstance(done[0], runner.Stopping), done
    assert counted == 0
    assert "orchestrator-pgid" not in (given.read_text() if given.exists() else "")
