"""A host that refuses something over a working link is said to refuse it, never to have lost the link, timed
out a command that never ran, or killed one by a signal.

The "host" is this machine (the sshd fixture).
"""
from __future__ import annotations

import io
import threading
import time

from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.test_sync_host_robust import wait_until


def hold_every_session(connection, n: int = 10) -> list:
    """sshd's MaxSessions (10 by default) used up on `connection`: each held session runs `cat`, which ends once
    its input does (then sshd frees its slot)."""
    held = []
    for _ in range(n):
        held.append(connection.create_session())
        held[-1].exec_command("cat")
    return held


def free_one(held: list) -> None:
    freed = held.pop()
    freed.shutdown_write()
    freed.recv_exit_status()
    freed.close()


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
    done, log = [], io.BytesIO()
    refusals = sshd.log.read_text().count("no more sessions")
    budget, held = 2.0, []
    try:
        held += hold_every_session(connection)
        (sshd.remote_home / ".bashrc").write_text(f'printf "%s\\n" "$BASH_EXECUTION_STRING" >> {given}\n')
        started = time.monotonic()

        def run() -> None:
            try:
                done.append(remote.run_remote(connection, str(tmp_path), "echo ran here", {}, log, budget, host=host))
            except Exception as err:
                done.append(err)

        thread = threading.Thread(target=run)
        thread.start()
        try:
            wait_until(lambda: done or sshd.log.read_text().count("no more sessions") > refusals, 60,
                       "a refused session")
            # A slot frees only after the command's time is spent (it may have given up already: as it should).
            wait_until(lambda: done or time.monotonic() - started > budget + 1, 60, "the command's time spent")
            free_one(held)
        finally:
            thread.join(120)
    finally:
        for channel in held:
            channel.close()
        connection.close()
    assert len(done) == 1 and isinstance(done[0], Exception), (done, log.getvalue())
    assert remote.session_refused(done[0]), done
    assert log.getvalue() == b""
    assert "orchestrator-pgid" not in (given.read_text() if given.exists() else "")


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
