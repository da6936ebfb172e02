"""One command on a build host over SSH (Fabric): host keys checked, timeouts bounded, the remote process group killable.

Over 500 lines, one job: most of it is each way a command there can hang or be lost, each handled.

Fabric opens and authenticates the connection. Commands run on a channel of
that connection (`Connection.create_session`) rather than `Connection.run`,
which, like Invoke's, keeps all output in memory as text and on timeout only
closes its end: here the output streams to the local log as bytes, and a
timed-out command's whole process group is killed on the host.
"""
from __future__ import annotations

import logging
import os
import re
import select
import shlex
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from time import monotonic, sleep
from typing import Any, BinaryIO, Callable, Iterator, Sequence, TypeVar

from lib import runner
from lib.errors import LogWriteFailed, clip
from lib.remote import known_hosts as host_keys
from lib.remote.hosts import Host
from lib.signals import exit_code, signal_name

Done = TypeVar("Done")
CHUNK = 64 * 1024
PGID_RE = re.compile(rb"orchestrator-pgid (\d+)\n")
NO_DIR = b"orchestrator-no-such-directory\n"
BEGIN = b"orchestrator-output-begins\n"  # capture(): what comes before it is the login shell's, not ours
# Run by /bin/sh on the host inside its own session (setsid): the group id goes to our private stderr
# channel, the command's stdout and stderr both to stdout. Args: cwd, script, grace in tenths, the step's
# marker (NAME=VALUE), KILL_SCRIPT, then the command's environment. Before the command starts, a watcher
# leaves the group (setsid) and the command's children (the subshell), and reads the channel's stdin: that
# ends only when the session does (the command ended, or the connection dropped: inv SIGKILLed, the link
# cut), and then it kills the group and the processes marked with the step, as a timeout would.
WRAPPER = """echo "orchestrator-pgid $$" >&2 || exit 1
cd -- "$1" 2>/dev/null || { echo orchestrator-no-such-directory >&2; exit 1; }
script=$2; exec 3<&0
( env "$4" setsid /bin/sh -c "$5" watch $$ "$3" "$4" watch <&3 3<&- >/dev/null 2>&1 & )
shift 5
exec env "$@" /bin/sh -c "$script" </dev/null 3<&- 2>&1"""
# Waits for the group to go after SIGTERM (in tenths of a second), then SIGKILLs what is left, and
# what left the group (setsid, a daemon) but still carries the step's marker in its environment (the
# watcher too, unless it is the one running this: with `watch`, it first waits for its stdin to end).
KILL_SCRIPT = """pg=$1; tenths=$2; marker=$3
if [ "${4-}" = watch ]; then cat >/dev/null 2>&1; fi
if [ "$pg" -gt 1 ] 2>/dev/null && kill -TERM -$pg 2>/dev/null; then
  while [ "$tenths" -gt 0 ] && kill -0 -$pg 2>/dev/null; do sleep 0.1; tenths=$((tenths - 1)); done
  kill -KILL -$pg 2>/dev/null
fi
for e in $(grep -lzxF -- "$marker" /proc/[0-9]*/environ 2>/dev/null); do
  p=${e#/proc/}; p=${p%/environ}
  [ "$p" != $$ ] && kill -KILL "$p" 2>/dev/null
done
exit 0"""
DRAIN_S = 2.0  # after the command and its group are gone, how long output still held open is read
REMOTE_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"}
# paramiko logs a dead host's errors, tracebacks and all, from its own threads to stderr (logging's
# last resort); the reason reaches the user once, as one line of ours.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

_stopped: list[int] = []  # one entry per remote command a stop ended (for "interrupted: stopped N ...")
_unkilled: list[str] = []  # of those, one line each for the ones the kill did not reach (they may still run)


class HostUnreachable(Exception):
    """The host could not be reached or refused us; the message says exactly why."""


class GivenUp(ConnectionError):
    """A connection given up (closed, lost, gone silent) was asked to run or transfer something: it never is.
    `why` says why it was given up."""

    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(f"{why}; a connection given up is never used again")


def link_error(err: BaseException, connection: Any = None) -> bool:
    """Whether `err` is the link to the host failing (a timeout, a closed, lost or given-up connection), not
    the command there, the host refusing a session or a command, or our own code: the one test `status
    --host` and `sync-all --host` use before they say a connection was lost. One of SSH's own errors is the
    link only when the link does not work (`link_works`): over one that answers, it is the host refusing
    something (sshd out of processes or files closes the session it cannot start a command in)."""
    from paramiko import SSHException

    if isinstance(err, (TimeoutError, EOFError, ConnectionError)):
        return True
    if not isinstance(err, SSHException) or session_refused(err, connection):
        return False
    return connection is None or not link_works(connection)


def link_works(connection: Any) -> bool:
    """The connection is not given up, its transport is active, and the host answers a keepalive over it
    within its connect timeout (a transport that is going down says so at once)."""
    transport = getattr(connection, "transport", None)
    if not usable(connection) or transport is None or not transport.is_active():
        return False
    within = getattr(connection, "connect_kwargs", {}).get("timeout") or 10.0
    return answers(transport, float(within))


def failure(err: BaseException, connection: Any, host: Host, doing: str) -> str:
    """What went wrong on a host when it is not the link (link_error): our own reading of an answer, a session
    or a command the host refused; one line, `DOING failed on host NAME: ...`, with what run_remote added (a
    kill that could not reach the command)."""
    from paramiko import SSHException

    if session_refused(err, connection):
        what = "the host refused a new session on the connection (MaxSessions)"
    elif type(err) is SSHException and str(err) == "Channel closed.":  # paramiko's words for a refused exec
        what = "the host refused to start the command (it closed the session; the connection still works)"
    else:
        what = f"{type(err).__name__}: {clip(' '.join(str(err).split()))}"
    return "; ".join([f"{doing} failed on host {host.name}: {what}", *getattr(err, "__notes__", [])])


def session_refused(err: BaseException, connection: Any = None) -> bool:
    """The host refused a new session over a link that works (sshd's MaxSessions, 10 by default): paramiko
    raises ChannelException, or, when another thread's refusal took that reason first, its "Unable to open
    channel." with the connection still up."""
    from paramiko import ChannelException, SSHException

    if isinstance(err, ChannelException):
        return True
    return type(err) is SSHException and str(err) == "Unable to open channel." and connection is not None \
        and usable(connection)


class HostKeyRefused(Exception):
    """The host's key is not trusted (unknown, changed, revoked) or could not be recorded; the message says why."""


def _refusal(verdict: host_keys.Verdict, key: Any, known_hosts: Path) -> HostKeyRefused:
    shown = f"{key.get_name()} {key.fingerprint}"
    files = " and ".join(dict.fromkeys(entry.source or str(known_hosts) for entry in verdict.lines))
    if verdict.status == "revoked":
        return HostKeyRefused(f"host key for {verdict.name} ({shown}) is REVOKED in {files} "
                              f"({verdict.describe_lines()}); refusing to connect")
    if verdict.status == "changed":
        return HostKeyRefused(
            f"host key CHANGED for {verdict.name} ({shown}; {files} has another key for it: "
            f"{verdict.describe_lines()}); refusing to connect: if the host really was reinstalled, "
            f"remove those lines from {files}")
    return HostKeyRefused(f"unknown host key for {verdict.name} ({shown}), not in {known_hosts}; "
                          "verify it and rerun with --accept-new-host-key, or add it to that file")


def _host_key_policy(known_hosts: Path, known: host_keys.Known, system: host_keys.Known, accept_new: bool) -> Any:
    from paramiko import MissingHostKeyPolicy

    class CheckHostKey(MissingHostKeyPolicy):
        """Judges every server key by lib.remote.known_hosts, right after the handshake and before we authenticate.

        paramiko is given no host keys of its own (its lookup knows neither patterns nor @revoked), so it
        asks this policy for every connection. With accept_new, like ssh's accept-new, a host no line
        names is trusted and appended; a changed or revoked key is refused all the same."""

        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            verdict = host_keys.verdict(known, key)
            if verdict.status == "unknown" and accept_new:
                try:
                    verdict = host_keys.accept_new(known_hosts, known.name, key, also=system)
                except OSError as err:
                    raise HostKeyRefused(f"cannot add the host key for {known.name} to {known_hosts}: "
                                         f"{err.strerror or err}; refusing to connect") from None
                if verdict.status == "unknown":  # appended
                    return
            if verdict.status != "known":
                raise _refusal(verdict, key, known_hosts)

    return CheckHostKey()


def _offering_known_key_types_first(known: host_keys.Known, make: Callable[..., Any]) -> Callable[..., Any]:
    """A transport factory for paramiko that, as ssh does, asks the host first for the key types the file
    knows for it: a host known by its RSA key that also has an Ed25519 one then shows the RSA key.
    `make` makes the transport (`_transport_factory`: its handshake bounded by connect_timeout)."""
    preferred = known.key_types()

    def rank(algorithm: str) -> int:
        key_type = host_keys.BLOB_TYPES.get(algorithm, algorithm)
        return preferred.index(key_type) if key_type in preferred else len(preferred)

    def factory(sock: Any, **kwargs: Any) -> Any:
        transport = make(sock, **kwargs)
        options = transport.get_security_options()
        options.key_types = sorted(options.key_types, key=rank)
        return transport

    return factory


def known_hosts_file(host: Host) -> Path:
    return host.known_hosts or Path("~/.ssh/known_hosts").expanduser()


def read_only_known_hosts_files(host: Host) -> list[Path]:
    """The files read besides known_hosts_file, never written: ssh's global ones and, when hosts.toml names no
    known_hosts, ~/.ssh/known_hosts2 (ssh's default UserKnownHostsFile is `~/.ssh/known_hosts
    ~/.ssh/known_hosts2`)."""
    user = [] if host.known_hosts else [Path("~/.ssh/known_hosts2").expanduser()]
    return [*user, *host_keys.GLOBAL_FILES]


def connect(host: Host, accept_new_host_key: bool = False) -> Any:
    """An open, authenticated fabric.Connection, or HostUnreachable with the exact reason."""
    import paramiko
    from fabric import Config

    # lazy: no ~/.fabric.yaml, no ~/.ssh/config; everything comes from hosts.toml.
    config = Config(lazy=True, overrides={"load_ssh_configs": False})
    timeout = host.connect_timeout
    kwargs: dict[str, Any] = {"timeout": timeout, "banner_timeout": timeout, "auth_timeout": timeout,
                              "channel_timeout": timeout, "transport_factory": _transport_factory(timeout)}
    where = f"{host.name} ({host.address})"
    if host.key_file is not None:
        kwargs.update(key_filename=str(host.key_file), look_for_keys=False, allow_agent=False)
    elif not _agent_answers(timeout):
        raise HostUnreachable(f"{where}: the SSH agent ({clip(os.environ.get('SSH_AUTH_SOCK', ''))}) did not answer "
                              f"within {timeout:g}s; fix it, unset SSH_AUTH_SOCK, or give the host a key_file")
    known_hosts = known_hosts_file(host)
    name = host_keys.host_name(host.host, host.port)
    try:
        own = host_keys.read(known_hosts, name)
    except OSError as err:
        raise HostUnreachable(f"{where}: cannot read {known_hosts}: {err.strerror or err}") from None
    try:
        system = host_keys.read_global(name, read_only_known_hosts_files(host))  # as ssh does
    except OSError as err:
        raise HostUnreachable(f"{where}: cannot read {err.filename or 'a global known_hosts file'}: "
                              f"{err.strerror or err}") from None
    known = host_keys.merged(own, system)
    kwargs["transport_factory"] = _offering_known_key_types_first(known, kwargs["transport_factory"])
    connection = _connection_type()(host.host, user=host.user, port=host.port, config=config,
                                    connect_kwargs=kwargs)
    connection.lost = lost_reason(host)
    connection.client.set_missing_host_key_policy(_host_key_policy(known_hosts, known, system,
                                                                   accept_new_host_key))
    try:
        connection.open()
    except HostKeyRefused as err:
        connection.client.close()  # the handshake's transport is still up
        raise HostUnreachable(f"{where}: {err}") from None
    except paramiko.AuthenticationException as err:
        if str(err) == "Authentication timeout.":  # paramiko's words when the host never answered: no refusal
            raise HostUnreachable(f"{where}: no answer to the authentication within {timeout:g}s") from None
        raise HostUnreachable(f"{where}: authentication failed"
                              f"{f' with key {host.key_file}' if host.key_file else ''}: {err}") from None
    except paramiko.ssh_exception.NoValidConnectionsError as err:
        reasons = {e.strerror or str(e) for e in err.errors.values()}
        raise HostUnreachable(f"{where}: cannot connect: {'; '.join(sorted(reasons))}") from None
    except (socket.timeout, TimeoutError):
        raise HostUnreachable(f"{where}: connection timed out after {timeout:g}s") from None
    except socket.gaierror as err:
        raise HostUnreachable(f"{where}: cannot resolve {host.host}: {err.strerror}") from None
    except (paramiko.SSHException, OSError, EOFError) as err:
        transport = connection.client.get_transport()
        if transport is not None and not transport.remote_version:
            # paramiko then reports "No existing session" or the like; the truth is that nothing spoke SSH.
            raise HostUnreachable(f"{where}: no SSH banner within {timeout:g}s (is an SSH server on that port?)") \
                from None
        if transport is not None and not transport.initial_kex_done:
            # Also "No existing session": paramiko gave up waiting for the key exchange without a word.
            stalled = "then nothing" if transport.kex_engine is None else "then stalled in the key exchange"
            raise HostUnreachable(f"{where}: host sent its banner, {stalled} for {timeout:g}s") from None
        raise HostUnreachable(f"{where}: {type(err).__name__}: {err or 'connection closed'}") from None
    connection.transport.set_keepalive(15)
    return connection


@cache
def _connection_type() -> type:
    """fabric.Connection, opened once. Fabric opens a closed or lost Connection again on its next use (each
    call that needs the link calls open() first), so a connection given up as silent would quietly come
    back, to a host that may be hung, and a stop would wait on it again. Ours refuses (GivenUp) instead."""
    from fabric import Connection

    class OpenedOnce(Connection):  # type: ignore[misc]
        given_up: str | None = None  # why, once given up
        lost = "the connection was lost"  # connect() names the host in it

        def open(self) -> Any:
            if self.given_up is None and self.transport is not None and not self.is_connected:
                self.given_up = self.lost
            if self.given_up is not None:
                raise GivenUp(self.given_up)
            return super().open()

    return OpenedOnce


def lost_reason(host: Host) -> str:
    return f"host {host.name}: the connection was lost"


def lost(connection: Any, host: Host, err: BaseException, doing: str | None = None) -> HostStalled:
    """A link failure (`link_error`) said as one: the connection is given up for good, and the HostStalled says
    why (GivenUp: whatever gave it up first, say another repo's read); `doing`, what was under way and what it
    means for what ran there ("planning the run; no command of the build had started there")."""
    why = err.why if isinstance(err, GivenUp) else lost_reason(host)
    give_up(connection, why)
    return HostStalled(why if doing is None else f"{why} while {doing}")


def give_up(connection: Any, why: str = "the connection was given up") -> None:
    """Close `connection` for good: whatever still waits on it returns, and nothing runs over it again."""
    if getattr(connection, "given_up", None) is None:
        connection.given_up = why  # first: another thread must not reopen it while it closes
    try:
        connection.close()
    except Exception:  # a broken transport may fail to close cleanly: it is closed all the same
        pass


def usable(connection: Any) -> bool:
    """Whether `connection` may still be used: never given up, and not known to be disconnected."""
    return getattr(connection, "given_up", None) is None and getattr(connection, "is_connected", True)


def _agent_answers(timeout: float) -> bool:
    """False when SSH_AUTH_SOCK names an agent that takes the connection but does not answer a request for its
    keys within `timeout` (paramiko would wait for it without end). No agent, or one that refuses: True
    (paramiko then does without it)."""
    path = os.environ.get("SSH_AUTH_SOCK")
    if not path:
        return True
    with socket.socket(socket.AF_UNIX) as agent:
        agent.settimeout(timeout)
        try:
            agent.connect(path)
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            return True
        try:
            agent.sendall(b"\0\0\0\1\x0b")  # SSH_AGENTC_REQUEST_IDENTITIES (draft-miller-ssh-agent)
            agent.recv(5)  # an answer, or the agent hung up: either way, it does not hold paramiko
            return True
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            return True


def _transport_factory(timeout: float) -> Callable[..., Any]:
    """paramiko's Transport with the whole handshake bounded by `timeout` (its own default: 15 s)."""
    from paramiko import Transport

    def make(sock: Any, **kwargs: Any) -> Any:
        transport = Transport(sock, **kwargs)
        transport.handshake_timeout = timeout
        return transport

    return make


def answer_within(host: Host) -> float:
    """How long a short command (`pwd`, `command -v make`), or a keepalive, may wait for the host's answer."""
    return 3 * host.connect_timeout


class HostStalled(HostUnreachable):
    """Connected, but the host stopped answering: a hung login shell, a probe that never ends, a silent link;
    or a login shell that ends before it runs our command (a start-up file's `exit`)."""


class CommandStalled(HostStalled):
    """The login shell ran the command and the link answers, but the command did not finish in time."""


class Pulse:
    """Asks the host for an answer over the connection every `every` seconds, as ssh's ServerAliveInterval
    does (paramiko's keepalive asks for none): a connection that stops answering is silent, not idle."""

    def __init__(self, transport: Any, every: float) -> None:
        self.transport = transport
        self.every = every
        self.asked_at: float | None = None
        self.done = threading.Event()
        threading.Thread(target=self._ask, name="orchestrator-pulse", daemon=True).start()

    def _ask(self) -> None:
        while not self.done.wait(self.every) and self.transport.is_active():
            self.asked_at = monotonic()
            try:  # returns on any answer (OpenSSH refuses the request: an answer) or when the transport closes
                self.transport.global_request("keepalive@openssh.com", wait=True)
            except Exception:
                return
            if not self.transport.is_active():
                return
            self.asked_at = None

    def unanswered(self) -> float:
        """For how long a question has gone unanswered (0 when none is pending)."""
        asked = self.asked_at
        return 0.0 if asked is None else max(0.0, monotonic() - asked)

    def stop(self) -> None:
        self.done.set()


def answers(transport: Any, within: float) -> bool:
    """Whether the host answers a keepalive over this connection within `within` seconds."""
    done, answered = threading.Event(), []

    def ask() -> None:
        try:  # returns at once when the transport is (or gets) closed
            transport.global_request("keepalive@openssh.com", wait=True)
            answered.append(transport.is_active())
        except Exception:
            pass
        done.set()

    threading.Thread(target=ask, name="orchestrator-ask", daemon=True).start()
    return done.wait(within) and answered == [True]


def capture(connection: Any, command: str, timeout: float = 30.0) -> tuple[int | None, bytes, bytes]:
    """Run a short command on the host; (exit code or None on timeout, stdout, stderr).

    What a chatty login shell prints first (a .bashrc `printf` with no newline, say) is cut off at
    a marker the command prints on both streams before anything else.
    """
    code, out, err, _ = _capture(connection, command, timeout)
    return code, out, err


def _capture(connection: Any, command: str, timeout: float,
             login_within: float | None = None) -> tuple[int | None, bytes, bytes, bool]:
    """capture(), and whether the command began (the login shell got as far as running it); given up
    after `login_within` seconds too when it has not begun by then."""
    begin = BEGIN.decode().strip()
    channel = _open_session(connection, monotonic() + (login_within or timeout))
    started = monotonic()  # the login shell's wait and the command's time count from the session's opening
    with channel:
        # `|| exit`: a shell that ignores SIGPIPE must not run the command once we have gone.
        channel.exec_command(f"echo {begin} || exit 1; echo {begin} >&2 || exit 1; {command}")
        out, err = bytearray(), bytearray()
        deadline = started + timeout
        began = login_within is None
        while not _finished(channel):
            now = monotonic()
            began = began or BEGIN in out
            if now > deadline or not began and now - started > (login_within or 0.0):
                _signal(channel, "KILL")
                return None, _after_begin(out), _after_begin(err), BEGIN in out or BEGIN in err
            select.select([channel], [], [], 0.1)
            _read_ready(channel, out.extend, err.extend)
        _read_ready(channel, out.extend, err.extend)
        # No marker on either stream: the login shell ended (a start-up file's `exit`) before our command.
        return channel.recv_exit_status(), _after_begin(out), _after_begin(err), BEGIN in out or BEGIN in err


def _open_session(connection: Any, until: float) -> Any:
    """A new session; one the host refuses (MaxSessions: a slot frees once sshd has reaped an ended session)
    is asked for again until `until` (monotonic), then the refusal stands. A session that opened is returned,
    even after `until` (asked for before it, answered after it: a slow link): the caller's own clocks say
    whether there is time left to use it."""
    while True:
        try:
            return connection.create_session()
        except Exception as err:
            if not session_refused(err, connection) or monotonic() >= until or runner.stopping():
                raise
        sleep(0.1)


def _signal(channel: Any, name: str) -> None:
    """Ask sshd to send SIG`name` to the session's process group (RFC 4254 6.9; paramiko has no call for it).

    OpenSSH does it for sessions of users other than root; otherwise the session's processes end when their
    start-up is over: the channel is closed, so their first write fails and they run nothing of ours.
    """
    from paramiko import Message
    from paramiko.common import cMSG_CHANNEL_REQUEST

    if channel.closed:  # a request on a channel the host has closed would be a protocol error
        return
    message = Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("signal")
    message.add_boolean(False)
    message.add_string(name)
    try:
        channel.transport._send_user_message(message)
    except Exception:  # the connection is gone: so is the session
        pass


def probe(connection: Any, host: Host, command: str, what: str,
          timeout: float | None = None) -> tuple[int, bytes, bytes]:
    """capture() for a command that answers at once (or within `timeout` seconds once the login shell has
    run it: a `git status`); HostStalled, saying which part did not, if no answer came."""
    within = answer_within(host)
    code, out, err, began = _capture(connection, command, max(within, timeout or 0.0), login_within=within)
    if code is not None and began:
        return code, out, err
    if code is not None:  # its exit code is the login shell's, not the command's: never "not found"
        said = err.decode("utf-8", "replace").strip().splitlines()
        raise HostStalled(f"host {host.name}: the login shell ended (exit {code}) before running {what}"
                          f"{f': {clip(said[-1])}' if said else ''}")
    if not answers(connection.transport, within):
        silent = f"host {host.name}: the connection went silent (no answer for {within:g}s)"
        give_up(connection, silent)  # what still waits on it returns
        raise HostStalled(silent)
    if not began:
        raise HostStalled(f"host {host.name}: the login shell did not answer within {within:g} s")
    raise CommandStalled(f"host {host.name}: {what} did not finish within {max(within, timeout or 0.0):g} s")


def _after_begin(data: bytearray) -> bytes:
    _, found, rest = bytes(data).partition(BEGIN)
    return rest if found else bytes(data)


def _finished(channel: Any) -> bool:
    """The command has exited and its output is all in, or the connection is gone (then it raises)."""
    if channel.closed and not channel.recv_ready() and not channel.recv_stderr_ready():
        if channel.exit_status_ready() and channel.recv_exit_status() != -1 or channel.eof_received:
            return True
        raise ConnectionError("the connection to the host was lost")
    return channel.exit_status_ready() and channel.eof_received


def _read_ready(channel: Any, on_out: Callable[[bytes], Any], on_err: Callable[[bytes], Any]) -> None:
    while channel.recv_ready():
        on_out(channel.recv(CHUNK))
    while channel.recv_stderr_ready():
        on_err(channel.recv_stderr(CHUNK))


def resolve_workspace(connection: Any, host: Host) -> str:
    """The host's workspace as an absolute path (a relative one starts in the login directory)."""
    if host.workspace.startswith("/"):
        return host.workspace
    code, out, err = probe(connection, host, "pwd", "pwd")
    # The last line: a chatty shell start-up file may print before it.
    login_dir = (out.decode("utf-8", "replace").strip().splitlines() or [""])[-1]
    if code != 0 or not login_dir.startswith("/"):
        raise HostUnreachable(f"{host.name}: cannot find the login directory: {err.decode('utf-8', 'replace')}")
    return f"{login_dir.rstrip('/')}/{host.workspace}"


def remote_command(cwd: str, script: str, env: dict[str, str], marker: str, grace: float) -> str:
    """One line for the login shell: every value a single-quoted word, so nothing in it is parsed as code.
    The command's environment gets the step's `marker`, which finds what left its group."""
    words = ["exec", "setsid", "-w", "/bin/sh", "-c", WRAPPER, "orchestrator", cwd, script, _tenths(grace),
             f"{runner.STEP_VAR}={marker}", KILL_SCRIPT,
             *(f"{k}={v}" for k, v in {**env, runner.STEP_VAR: marker}.items())]
    return " ".join(shlex.quote(w) for w in words)


def _tenths(grace: float) -> str:
    return str(max(0, int(grace * 10)))


@dataclass
class RemoteResult:
    exit_code: int | None
    timed_out: bool = False
    no_directory: bool = False
    problem: str | None = None  # the wrapper could not start the command (no setsid, say), or the kill failed
    lost: str | None = None  # the connection was lost or went silent while the command ran
    killed_by: str | None = None  # the signal that killed the command ("SIGKILL"); exit_code is then 128 + it


def kill_remote_group(connection: Any, pgid: int | None, grace: float, marker: str,
                      within: float = 30.0, variable: str = runner.STEP_VAR) -> str | None:
    """SIGTERM the group on the host, SIGKILL it after `grace` seconds, and kill what left it (found by
    `variable`=`marker` in its environment); the problem, if it could not be done. Without a pgid, only the
    marked processes."""
    command = " ".join(shlex.quote(w) for w in ["/bin/sh", "-c", KILL_SCRIPT, "kill", str(pgid or 0),
                                                 _tenths(grace), f"{variable}={marker}"])
    try:
        code, _, err = capture(connection, command, timeout=grace + within)
    except Exception as error:  # the connection died: the host is out of its reach
        return f"{type(error).__name__}: {error}"
    if code is None:
        return f"the kill got no answer within {grace + within:g}s"
    return None if code == 0 else (err.decode("utf-8", "replace").strip() or f"kill exited {code}")


def _kill_anywhere(connection: Any, host: Host | None, pgid: int | None, grace: float, marker: str,
                   healthy: bool) -> str | None:
    """kill_remote_group over the command's connection, or, when that is lost, silent or fails, over a new one
    (a dead link must not leave the command running: the host may be fine)."""
    within = 30.0 if host is None else answer_within(host)
    problem = (kill_remote_group(connection, pgid, grace, marker, within) if healthy
               else "its own connection is lost or silent")
    if problem is None or host is None:
        return problem
    give_up(connection, f"host {host.name}: {problem}")  # the Connections pool drops it
    try:
        fresh = connect(host)
    except HostUnreachable as err:
        return f"{problem}; a new connection failed too: {err}"
    try:
        again = kill_remote_group(fresh, pgid, grace, marker, within)
    finally:
        fresh.close()
    return None if again is None else f"{problem}; over a new connection: {again}"


def run_remote(connection: Any, cwd: str, script: str, env: dict[str, str], log: BinaryIO, timeout: float | None,
               echo: BinaryIO | None = None, grace: float = runner.GRACE_S, host: Host | None = None) -> RemoteResult:
    """Run one command in its own process group on the host, output streamed to `log` (and `echo`).

    With `host`, the connection is asked for an answer every `connect_timeout` seconds: one silent for
    `answer_within(host)` is given up, and the command is killed over a new connection, as it is when the
    connection is lost or a kill over it fails.
    """
    if runner.stopping():
        raise runner.Stopping("the run is being stopped")
    try:
        log.flush()
    except OSError as err:
        raise LogWriteFailed(err.errno, err.strerror) from None
    started = monotonic()
    # A session the host refuses (MaxSessions) is asked for again while a short command's answer may take, and
    # never past the command's own time: then the refusal stands, and nothing is started there.
    until = started + (30.0 if host is None else answer_within(host))
    try:
        channel = _open_session(connection, until if timeout is None else min(until, started + timeout))
    except Exception:
        if runner.stopping():  # nothing started there: the stop is the news, not the refusal
            raise runner.Stopping("the run is being stopped") from None
        raise
    if runner.stopping():  # stopped while the session opened: nothing is started there, nothing counted stopped
        channel.close()
        raise runner.Stopping("the run is being stopped")
    if timeout is not None and monotonic() - started >= timeout:  # no time left (the repo's, say): never started
        channel.close()
        return RemoteResult(None, timed_out=True)
    private = bytearray()
    pgid: int | None = None

    def write(data: bytes) -> None:
        try:
            log.write(data)
        except OSError as err:
            raise LogWriteFailed(err.errno, err.strerror) from None
        if echo is not None:
            try:
                echo.write(data)
                echo.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass

    def read_private(data: bytes) -> None:
        nonlocal pgid
        private.extend(data)
        match = PGID_RE.search(private)
        if match and pgid is None and int(match.group(1)) > 1:  # `kill -TERM -1` would hit every process
            pgid = int(match.group(1))

    marker = f"{os.getpid()}-{uuid.uuid4().hex}"
    pulse = None if host is None else Pulse(connection.transport, max(1.0, host.connect_timeout))
    silent_after = None if host is None else answer_within(host)

    def silent() -> bool:
        if host is None or pulse is None or silent_after is None or pulse.unanswered() <= silent_after:
            return False
        # One more question first: when inv itself was stopped (Ctrl-Z), the answer may be there, unread.
        return not answers(connection.transport, host.connect_timeout)

    def kill() -> str | None:
        return _kill_anywhere(connection, host, pgid, grace, marker, connection.is_connected and not silent())

    try:
        with channel:
            channel.exec_command(remote_command(cwd, script, {**REMOTE_ENV, **env}, marker, grace))
            exited_at: float | None = None
            reaped = False
            try:
                while not _finished(channel):
                    if timeout is not None and monotonic() - started > timeout:
                        return RemoteResult(None, timed_out=True, problem=kill())
                    if runner.stopping():
                        _stopped.append(pgid or 0)
                        raise runner.Stopping("the run is being stopped")
                    if silent():
                        return RemoteResult(None, lost=f"went silent (no answer for {silent_after:g}s)",
                                            problem=kill())
                    if channel.exit_status_ready() and pgid is not None and not reaped:
                        # The command is done but something it started still holds its output: end the group.
                        exited_at = exited_at or monotonic()
                        if monotonic() - exited_at > 0.5:
                            kill_remote_group(connection, pgid, grace, marker)
                            reaped = True
                    if reaped and monotonic() - (exited_at or 0) > 0.5 + DRAIN_S:
                        # Something we could not kill (no marker, no /proc) still holds the output: the verdict stands.
                        _read_ready(channel, write, read_private)
                        write(b"\nwarning: a process the command started still holds its output on the host; "
                              b"it was not killed and its later output is not logged\n")
                        break
                    select.select([channel], [], [], 0.1)
                    _read_ready(channel, write, read_private)
                _read_ready(channel, write, read_private)
                if pgid is not None and not reaped:
                    kill_remote_group(connection, pgid, grace, marker)  # nothing it started outlives it, as locally
            except ConnectionError:  # lost mid-run: the host may be fine and the command running there
                problem = kill()
                if host is None:  # a caller that cannot reconnect hears of it as before
                    raise
                return RemoteResult(None, lost="was lost", problem=problem)
            except BaseException as err:
                problem = kill()
                if isinstance(err, runner.Stopping) and problem is not None:
                    _unkilled.append(f"on host {host.name if host else connection.host}: could not kill the "
                                     f"command in {cwd}, it may still run there ({problem})")
                elif isinstance(err, LogWriteFailed) and problem is not None:  # the outcome's reason says it
                    raise LogWriteFailed(err.errno, f"{err.strerror}; could not kill the command on the host, "
                                                   f"it may still run ({problem})") from None
                elif isinstance(err, Exception) and problem is not None:  # connection.failure says it
                    err.add_note(f"could not kill the command on the host, it may still run ({problem})")
                raise
            code = channel.recv_exit_status()
    finally:
        if pulse is not None:
            pulse.stop()
    if NO_DIR in private:
        return RemoteResult(None, no_directory=True)
    if pgid is None:
        stray = private.decode("utf-8", "replace").strip()
        return RemoteResult(None, problem=f"could not start the command on the host (needs /bin/sh and setsid): "
                                          f"{stray or f'exit {code}'}")
    signum = killed_by_signal(private, pgid, code)
    if signum is not None:  # as runner.ProcessResult says it here: 128 + the signal, and which one
        return RemoteResult(exit_code(signum), killed_by=signal_name(signum))
    # setsid itself killed by a signal reports no exit status over ssh (paramiko: -1): "killed by a signal".
    return RemoteResult(None if code == -1 else code)


def killed_by_signal(private: bytes | bytearray, pgid: int, code: int) -> int | None:
    """The signal that killed the command, or None when it exited. `setsid -w` (util-linux) exits with the bare
    wait status of its child (the command: its pid is the group's id) when a signal killed it (SIGKILL: 9, as
    `exit 9` would) and says so on our private stream, `setsid: child PID did not exit normally: ...` (in the
    host's language: the pid and setsid's name are what is matched). Nothing of the command reaches that
    stream (its stderr goes to stdout), so a summary line it prints cannot forge it.

    >>> killed_by_signal(b"orchestrator-pgid 41\\nsetsid: child 41 did not exit normally: Success\\n", 41, 9)
    9
    >>> killed_by_signal(b"orchestrator-pgid 41\\nsetsid: child 41 did not exit normally\\n", 41, 139)  # core
    11
    >>> killed_by_signal(b"orchestrator-pgid 41\\n", 41, 9) is None  # its own `exit 9`
    True
    >>> killed_by_signal(b"orchestrator-pgid 41\\nsetsid: child 410 did not exit normally\\n", 41, 9) is None
    True
    """
    _, found, after = bytes(private).partition(b"orchestrator-pgid %d\n" % pgid)
    if not found or not 0 < code < 256 or not re.search(rb"^setsid: .*\b%d\b" % pgid, after, re.MULTILINE):
        return None
    signum = code & 0x7F  # 0x80: it dumped core
    return signum if 0 < signum < 0x7F else None


@contextmanager
def one_run() -> Iterator[None]:
    """A run over hosts (a build, a sync): what its stop comes to (stopped_count, unkilled_notes) counts from
    zero, and stays readable until the next run. The stop itself is the runner's (runner.stopping(), raised
    by run_each's terminate_all), which run_remote checks while a command runs."""
    _stopped.clear()
    _unkilled.clear()
    yield


def stopped_count() -> int:
    """How many running remote commands the stop came to in this run (unkilled_notes: those it could not
    kill)."""
    return len(_stopped)


def unkilled_notes() -> list[str]:
    """One line per running remote command the stop could not kill in this run (it may still run)."""
    return list(_unkilled)


def run_on_host(host: Host, work: Callable[[Any], Sequence[Done]], accept_new_host_key: bool) -> list[Done]:
    """Connect once, run `work(connection)` (or `work(HostUnreachable)` so every repo says why), disconnect."""
    try:
        connection = connect(host, accept_new_host_key)
    except HostUnreachable as err:
        return list(work(err))
    try:
        return list(work(connection))
    finally:
        connection.close()


PROBE_TOOLS = ("git", "make", "go", "node", "python3", "cargo", "setsid")
PROBE = """for tool in git make go node python3 cargo setsid; do
  if ! command -v "$tool" >/dev/null 2>&1; then version=missing
  elif [ "$tool" = go ]; then version=$(go version 2>&1 | head -n 1)
  elif [ "$tool" = setsid ]; then version=found
  else version=$("$tool" --version 2>&1 | head -n 1); fi
  printf '%s=%s\\n' "$tool" "$version"
done
if [ -d "$1" ]; then echo workspace=found; else echo workspace=missing; fi"""


@dataclass
class HostCheck:
    host: Host
    reachable: bool
    reason: str | None = None
    workspace: str | None = None
    tools: dict[str, str] | None = None
    login_s: float | None = None  # from connecting until the login shell ran a command

    @property
    def problems(self) -> list[str]:
        """What stops builds on a reachable host: no workspace, no git, no setsid."""
        if not self.reachable or self.tools is None:
            return [self.reason or "unreachable"]
        found = [] if self.tools.get("workspace") == "found" else [f"workspace {self.workspace} does not exist"]
        return found + [f"{tool} missing" for tool in ("git", "setsid") if self.tools.get(tool) == "missing"]


def check_host(host: Host, accept_new_host_key: bool = False) -> HostCheck:
    """Connect, time a login, then report the workspace and the versions of git and the toolchains found there."""
    started = monotonic()
    try:
        connection = connect(host, accept_new_host_key)
    except HostUnreachable as err:
        return HostCheck(host, False, str(err))
    login_s: float | None = None
    workspace: str | None = None
    try:
        probe(connection, host, "true", "true")
        login_s = monotonic() - started
        workspace = resolve_workspace(connection, host)
        code, out, err = probe(connection, host, " ".join(shlex.quote(w) for w in ["/bin/sh", "-c", PROBE, "probe",
                                                                                  workspace]), "the tool probe")
        if code != 0:
            return HostCheck(host, True, f"probe failed: {err.decode('utf-8', 'replace').strip() or code}",
                             workspace, login_s=login_s)
        tools = dict(line.partition("=")[::2] for line in out.decode("utf-8", "replace").splitlines() if "=" in line)
        return HostCheck(host, True, None, workspace, tools, login_s)
    except HostUnreachable as err:  # connected, then no answer, or one that stops us: the host's, not a tool's
        return HostCheck(host, True, str(err), workspace, login_s=login_s)
    except Exception as err:  # it was reached: a link that dropped since is lost, never unreachable
        reason = str(lost(connection, host, err, "checking the host")) if link_error(err, connection) \
            else failure(err, connection, host, "checking the host")
        return HostCheck(host, True, reason, workspace, login_s=login_s)
    finally:
        connection.close()


def check_hosts(hosts: Sequence[Host], accept_new_host_key: bool = False) -> list[HostCheck]:
    """Every host at once (a dead one costs its connect timeout, never more)."""
    return runner.run_each(hosts, lambda h: check_host(h, accept_new_host_key), max(1, min(16, len(hosts))))


class Connections:
    """One SSH connection per job slot on a host: sshd caps the sessions of one connection (MaxSessions,
    default 10), and each running command may need two (itself and its kill)."""

    def __init__(self, host: Host, first: Any, accept_new_host_key: bool) -> None:
        self.host = host
        self.accept_new_host_key = accept_new_host_key
        self.idle = [first]
        self.opened: list[Any] = []
        self.lock = threading.Lock()
        self.opening = threading.Lock()
        self.failed: HostUnreachable | None = None
        self.stalled: HostStalled | None = None

    def take(self) -> Any:
        """An idle connection, or a new one; a HostUnreachable (for execute_remote to report) if that fails,
        or once the host stopped answering (a hung login shell hangs every login: no repo waits for it again)."""
        with self.lock:
            if self.stalled is not None:
                return self.stalled
            idle = self._idle()
            if idle is not None:
                return idle
        # One at a time: sshd drops connections still authenticating beyond MaxStartups (default 10).
        # A host that failed a connection once fails the rest at once, not one connect timeout each.
        with self.opening:
            with self.lock:
                idle = self._idle()  # one came back while we waited
                if idle is not None:
                    return idle
            if self.failed is not None:
                return self.failed
            try:
                connection = connect(self.host, self.accept_new_host_key)
            except HostUnreachable as err:
                self.failed = err
                return err
        with self.lock:
            self.opened.append(connection)
        return connection

    def _idle(self) -> Any:
        """An idle connection still up, or None; one the host dropped while it waited here is given up."""
        while self.idle:
            connection = self.idle.pop()
            if usable(connection):
                return connection
            give_up(connection, f"host {self.host.name}: the connection was lost while idle")
        return None

    def stall(self, err: HostStalled) -> None:
        self.stalled = err

    def give(self, connection: Any) -> None:
        """Back to the pool; one that was lost or given up (gone silent) is dropped, the next take() opens anew."""
        if not isinstance(connection, HostUnreachable) and usable(connection):
            with self.lock:
                self.idle.append(connection)

    def close(self) -> None:
        for connection in self.opened:
            connection.close()
