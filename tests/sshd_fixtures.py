"""A real OpenSSH server on 127.0.0.1 for the remote-host tests: own host key, own authorized key, own known_hosts.

Nothing here reads or writes the user's ~/.ssh: keys, known_hosts and the
server's config live in tmp_path, and the server's sessions get a HOME in
tmp_path too.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import tomli_w

from tests.conftest import REQUIRE_SYSTEM

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")


def _unavailable(reason: str) -> None:
    if REQUIRE_SYSTEM:
        pytest.fail(f"{reason} (ORCHESTRATOR_REQUIRE_SYSTEM_TESTS=1)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orchestrator-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)


@dataclass
class Sshd:
    root: Path
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    host_key_pub: str
    remote_home: Path
    log: Path

    def host_entry(self, workspace: Path, **fields: object) -> dict[str, object]:
        """A hosts.toml table for this server."""
        entry: dict[str, object] = {"host": "127.0.0.1", "port": self.port, "user": self.user,
                                    "key_file": str(self.client_key), "known_hosts": str(self.known_hosts),
                                    "workspace": str(workspace), "connect_timeout": 5}
        entry.update(fields)
        return entry


def write_hosts(home_path: Path, hosts: dict[str, dict[str, object]]) -> Path:
    path = home_path / "config" / "hosts.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps({"hosts": hosts}))
    return path


def _server_command(config: Path) -> list[str]:
    """sshd needs its privilege separation dir; without one, give it a private /run (root only)."""
    command = [SSHD, "-D", "-e", "-f", str(config)]
    if PRIVSEP_DIR.is_dir():
        return command
    unshare = shutil.which("unshare")
    if os.geteuid() == 0 and unshare:
        probe = subprocess.run([unshare, "--mount", "--propagation", "private", "true"], capture_output=True)
        if probe.returncode == 0:
            script = f"mount -t tmpfs orchestrator-test /run && mkdir -m 0755 {PRIVSEP_DIR} && exec \"$@\""
            return [unshare, "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh", *command]
    _unavailable(f"sshd needs {PRIVSEP_DIR} (mkdir -p -m 0755 {PRIVSEP_DIR}, as .ci/run does)")
    raise AssertionError("unreachable")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh-keygen") is None:
        _unavailable(f"OpenSSH server not installed ({SSHD})")
    root = tmp_path / "sshd"
    root.mkdir()
    for name in ("host_key", "client_key"):
        _keygen(root / name)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    remote_home = tmp_path / "remote-home"
    remote_home.mkdir()
    port = free_port()
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}", f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", "StrictModes no", "UsePAM no",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", "PermitUserRC no", "PrintMotd no", "PrintLastLog no",
        "Subsystem sftp internal-sftp",  # as on a real host (sync-all --host uploads lib/ with it)
        "MaxStartups 50",  # MaxSessions stays at its default (10), as on a real host
        f"SetEnv HOME={remote_home} GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL={remote_home / '.gitconfig'}",
        "",
    ]))
    host_key_pub = (root / "host_key.pub").read_text().split()
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key_pub[0]} {host_key_pub[1]}\n")
    log = root / "sshd.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(_server_command(config), stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited with {proc.returncode}: {log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"sshd did not answer on port {port}: {log.read_text()}")
            time.sleep(0.05)
        yield Sshd(root, port, getpass.getuser(), root / "client_key", known_hosts,
                   " ".join(host_key_pub[:2]), remote_home, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def hold_every_session(connection, n: int = 10) -> list:
    """sshd's MaxSessions (10 by default) used up on `connection`: each held session runs `cat`, which ends once
    its input does (then sshd frees its slot)."""
    held = []
    for _ in range(n):
        held.append(connection.create_session())
        held[-1].exec_command("cat")
    return held


@contextmanager
def closing_all(connection, held: list) -> Iterator[None]:
    """At the end, whatever the test did: the held sessions closed, then `connection`."""
    try:
        yield
    finally:
        for channel in held:
            channel.close()
        connection.close()


def free_one(held: list) -> None:
    """One held session's slot freed: its `cat` ends at the end of its input, and sshd reaps it."""
    freed = held.pop()
    freed.shutdown_write()
    freed.recv_exit_status()
    freed.close()


def refusals(sshd: Sshd) -> int:
    """How many sessions sshd has refused so far (MaxSessions: its log says `no more sessions`)."""
    return sshd.log.read_text().count("no more sessions")


def in_a_thread(call: Callable[[], object]) -> tuple[threading.Thread, list]:
    """`call()` started in a thread of its own; the list gets what it returned or raised (one item, once it ends)."""
    done: list = []

    def run() -> None:
        try:
            done.append(call())
        except BaseException as err:  # the refusal or the stop under test
            done.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, done



class Relay:
    """A TCP relay to the sshd fixture (one connection) that can hold back what the client sends (`hold`,
    then `send_held`), as a link that stalls one way would: the server, not reached, answers nothing meanwhile.
    `known_hosts` names the server's key at the relay's port."""

    def __init__(self, sshd: Sshd) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sshd_port = sshd.port
        self.known_hosts = sshd.root / f"known_hosts-{self.port}"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {sshd.host_key_pub}\n")
        self._holding = False
        self.held = False  # something we sent is being held
        self._ended = False
        self._changed = threading.Condition()
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        with self._changed:
            self._holding = True

    def send_held(self) -> None:
        with self._changed:
            self._holding = False
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._ended = True
            self._changed.notify_all()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
            server = socket.create_connection(("127.0.0.1", self._sshd_port))
        except OSError:
            return
        self._sockets += [client, server]
        threading.Thread(target=self._up, args=(client, server), daemon=True).start()
        threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                with self._changed:
                    self.held = self._holding
                    self._changed.wait_for(lambda: not self._holding or self._ended)
                    self.held = False
                    if self._ended:
                        return
                server.sendall(data)
            server.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _down(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(65536):
                client.sendall(data)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@contextmanager
def relay(sshd: Sshd) -> Iterator[Relay]:
    link = Relay(sshd)
    try:
        yield link
    finally:
        link.close()
