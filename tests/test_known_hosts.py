"""known_hosts read as OpenSSH reads it: every verdict of lib.remote.known_hosts next to the real ssh's on the same file."""
from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from paramiko import PKey

from lib.remote import known_hosts
from tests.conftest import require_tool
from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.test_honest_runs import wait_for
from tests.test_hosts_remote import log_dir, only_on_host

# The build touches this marker on the host: its absence proves nothing ran there.
TOUCHING = {"Makefile": "all:\n\t@touch ../ran-on-host; echo built\n"}


@dataclass(frozen=True)
class Case:
    id: str
    text: str  # the known_hosts file; {here} is "[127.0.0.1]:PORT", {key} the server's key, {other} ... other keys
    ours: str
    ssh: str | None = None  # where we decide otherwise on purpose (docs/build-hosts.md, "Host keys")
    alias: str | None = None  # the name looked up (ssh's HostKeyAlias) instead of [127.0.0.1]:PORT
    hashed: bool = False  # names hashed by ssh-keygen -H before the comparison
    dest: str = "127.0.0.1"


CASES = [
    Case("exact name, the server's key", "{here} {key}\n", "known"),
    Case("exact name, another key", "{here} {other}\n", "changed"),
    Case("*.example.com, the server's key", "*.example.com {key}\n", "known", alias="build.example.com"),
    Case("*.example.com, another key", "*.example.com {other}\n", "changed", alias="build.example.com"),
    Case("a pattern in capitals", "*.EXAMPLE.COM {other}\n", "changed", alias="build.example.com"),
    Case("*.example.com does not name example.org", "*.example.com {other}\n", "unknown", alias="build.example.org"),
    Case("[127.0.0.?]:PORT, another key", "[127.0.0.?]:{port} {other}\n", "changed"),
    Case("[127.0.0.?]:PORT, the server's key", "[127.0.0.?]:{port} {key}\n", "known"),
    Case("? is exactly one character", "[127.0.0.??]:{port} {other}\n", "unknown"),
    Case("* names every host", "* {other}\n", "changed"),
    Case("a bare address names port 22 only", "127.0.0.1 {other}\n", "unknown"),
    Case("a negation after a match drops the line", "*,!{here} {other}\n", "unknown"),
    Case("a negation before a match drops the line", "!{here},* {other}\n", "unknown"),
    Case("a negation of another host", "!other.example.com,* {other}\n", "changed"),
    Case("a negation alone names nothing", "!other.example.com {other}\n", "unknown"),
    Case("a comma list", "a.example.com,{here},b.example.com {other}\n", "changed"),
    Case("an empty pattern in a list", "a.example.com,,{here} {other}\n", "changed"),
    Case("a pattern of 1022 characters", "{here},{long_1022} {other}\n", "changed"),
    Case("a pattern of 1023 characters drops the line", "{here},{long_1023} {other}\n", "unknown"),
    Case("hashed, the server's key", "{here} {key}\n", "known", hashed=True),
    Case("hashed, another key", "{here} {other}\n", "changed", hashed=True),
    Case("hashed, another host", "other.example.com {other}\n", "unknown", hashed=True),
    Case("hashed names are looked up lowercased", "[localhost]:{port} {key}\n", "known", hashed=True,
         dest="LOCALHOST"),
    Case("a malformed hash", "|1|not-base64|x {other}\n|1|{salt}| {other}\n", "unknown"),
    Case("@revoked", "@revoked {here} {key}\n", "revoked"),
    Case("@revoked beats a line with the key", "{here} {key}\n@revoked * {key}\n", "revoked"),
    Case("@revoked under another name", "{here} {key}\n@revoked other.example.com {key}\n", "revoked",
         ssh="known"),
    Case("@revoked of another key", "@revoked {here} {other}\n", "unknown"),
    Case("@cert-authority is no host key", "@cert-authority * {other}\n", "unknown"),
    Case("@cert-authority with the server's own key", "@cert-authority {here} {key}\n", "unknown"),
    Case("@Revoked (not a marker)", "@Revoked {here} {key}\n", "unknown"),
    Case("two markers", "@revoked @revoked {here} {key}\n", "unknown"),
    Case("a marker line of tabs", "@revoked\t{here}\t{key_type}\t{key_b64}\n", "revoked"),
    Case("a tab after a marker, spaces later", "@revoked\t{here} {key}\n", "unknown"),
    Case("a key of another type only", "{here} {rsa}\n", "changed"),
    Case("keys of two types, one the server's", "{here} {ecdsa}\n{here} {key}\n", "known"),
    Case("two keys of one type, one the server's", "{here} {other}\n* {key}\n", "known"),
    Case("a certificate on a plain line", "{here} {cert}\n", "changed"),
    Case("rsa-sha2-512 as the key type", "{here} rsa-sha2-512 {rsa_b64}\n", "changed"),
    Case("a comment", "# {here} {other}\n  # {here} {other}\n", "unknown"),
    Case("a comment after the key", "{here} {other} reinstalled 2026\n", "changed"),
    Case("a # where the key type goes", "{here} #{other}\n", "unknown"),
    Case("garbled base64", "{here} ssh-ed25519 !!!not-base64\n", "unknown"),
    Case("base64 without its padding", "{here} ecdsa-sha2-nistp256 {ecdsa_unpadded}\n", "unknown"),
    Case("base64 with stray bits", "{here} ecdsa-sha2-nistp256 {ecdsa_stray_bits}\n", "unknown"),
    Case("a truncated key", "{here} ssh-ed25519 {other_truncated}\n", "unknown"),
    Case("bytes after the key", "{here} ssh-ed25519 {other_padded}\n", "unknown"),
    Case("a type that is not the key's", "{here} ssh-rsa {other_b64}\n", "unknown"),
    Case("another curve than the key's", "{here} ecdsa-sha2-nistp384 {ecdsa_b64}\n", "unknown"),
    Case("an unknown key type", "{here} ssh-foo {other_b64}\n", "unknown"),
    Case("no key", "{here} ssh-ed25519\n{here}\n", "unknown"),
    Case("CRLF line ends, the server's key", "{here} {key}\r\n", "known"),
    Case("CRLF line ends, another key", "{here} {other}\r\n", "changed"),
    Case("an indented line", " \t{here} {other}\n", "changed"),
    Case("a NUL ends the line", "{here} {key}\0garbage\n", "known"),
    Case("a NUL inside the host field", "{here}\0x {other}\n", "unknown"),
    Case("an empty file", "", "unknown"),
]


def keygen(path: Path, kind: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def b64_of(key: str) -> str:
    return key.split()[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, str]:
    """Keys that are not the server's, written as known_hosts shows them, good and spoiled (made once: RSA is slow)."""
    folder = tmp_path_factory.mktemp("keys")
    other, rsa = keygen(folder / "other", "ed25519"), keygen(folder / "rsa", "rsa")
    ecdsa = keygen(folder / "ecdsa", "ecdsa")
    subprocess.run(["ssh-keygen", "-q", "-s", str(folder / "other"), "-I", "host", "-h", "-n", "127.0.0.1",
                    str(folder / "ecdsa.pub")], check=True, stdin=subprocess.DEVNULL)
    ecdsa_b64, other_blob = b64_of(ecdsa), base64.b64decode(b64_of(other))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    assert ecdsa_b64.endswith("=") and not ecdsa_b64.endswith("==")
    stray = ecdsa_b64[:-2] + alphabet[alphabet.index(ecdsa_b64[-2]) | 1] + "="
    return {"other": other, "other_b64": b64_of(other), "rsa": rsa, "rsa_b64": b64_of(rsa), "ecdsa": ecdsa,
            "ecdsa_b64": ecdsa_b64, "ecdsa_unpadded": ecdsa_b64.rstrip("="), "ecdsa_stray_bits": stray,
            "cert": " ".join((folder / "ecdsa-cert.pub").read_text().split()[:2]),
            "other_truncated": base64.b64encode(other_blob[:-1]).decode(),
            "other_padded": base64.b64encode(other_blob + b"junk").decode(),
            "salt": base64.b64encode(b"short salt").decode(), "long_1022": "x" * 1022, "long_1023": "x" * 1023}


def placeholders(sshd, keys: dict[str, str]) -> dict[str, str]:
    return {**keys, "port": str(sshd.port), "here": f"[127.0.0.1]:{sshd.port}", "key": sshd.host_key_pub,
            "key_type": sshd.host_key_pub.split()[0], "key_b64": b64_of(sshd.host_key_pub)}


def presented(sshd) -> PKey:
    key_type, encoded = sshd.host_key_pub.split()
    return PKey.from_type_string(key_type, base64.b64decode(encoded))


def ssh_verdict(sshd, file: Path, dest: str, alias: str | None, global_file: str = "/dev/null") -> str:
    """What `ssh -o StrictHostKeyChecking=accept-new` decides on the file: known, changed, revoked or unknown
    (it connected and added a line)."""
    before = file.read_bytes()
    command = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
               "-o", f"UserKnownHostsFile={file}", "-o", f"GlobalKnownHostsFile={global_file}", "-o", "UpdateHostKeys=no",
               "-o", "CheckHostIP=no", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=60",
               "-i", str(sshd.client_key), "-p", str(sshd.port), "-l", sshd.user,
               *(["-o", f"HostKeyAlias={alias}"] if alias else []), dest, "true"]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr:
        return "changed"
    if "REVOKED HOST KEY" in result.stderr:
        return "revoked"
    if result.returncode == 0:
        return "known" if file.read_bytes() == before else "unknown"
    return f"ssh failed ({result.returncode}): {result.stderr.strip()}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_each_verdict_is_the_one_ssh_reaches_on_the_same_file(sshd, keys, tmp_path, case):
    require_tool("ssh")
    file = tmp_path / "known_hosts"
    file.write_bytes(case.text.format(**placeholders(sshd, keys)).encode())
    if case.hashed:
        subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(file)], check=True, capture_output=True)
        assert "|1|" in file.read_text()
    name = known_hosts.host_name(case.alias, 22) if case.alias else known_hosts.host_name(case.dest, sshd.port)
    ours = known_hosts.verdict(known_hosts.read(file, name), presented(sshd)).status
    assert (ours, ssh_verdict(sshd, file, case.dest, case.alias)) == (case.ours, case.ssh or case.ours)


def test_a_changed_verdict_names_every_line_whose_key_differs_with_its_type(sshd, keys, tmp_path):
    values = placeholders(sshd, keys)
    file = tmp_path / "known_hosts"
    file.write_text("# build hosts\n{here} {rsa}\nother.example.com {other}\n*.0.0.1]:{port} {other}\n"
                    "@cert-authority * {other}\n".format(**values))
    decided = known_hosts.verdict(known_hosts.read(file, f"[127.0.0.1]:{sshd.port}"), presented(sshd))
    assert decided.status == "changed"
    assert decided.describe_lines() == "line 2 (ssh-rsa), line 4 (ssh-ed25519)"


def test_patterns_match_in_linear_time_and_as_openssh_globs():
    assert not known_hosts.glob_match(b"a" * 400, b"*a" * 100 + b"b")  # backtracking would never end
    for name, pattern, matches in [(b"build1.example.com", b"build?.example.com", True),
                                   (b"build.example.com", b"build?.example.com", False),
                                   (b"x", b"**", True), (b"", b"*", True), (b"ab", b"a*b*", True),
                                   (b"[a]:22", b"[a]:2?", True), (b"a.b", b"a[.]b", False)]:
        assert known_hosts.glob_match(name, pattern) is matches, (name, pattern)


def test_accept_new_decides_again_under_the_lock_and_appends_nothing_then(sshd, keys, tmp_path):
    """Another run added a different key for the host since our first read: that key wins, nothing appended."""
    values = placeholders(sshd, keys)
    file = tmp_path / "known_hosts"
    name = f"[127.0.0.1]:{sshd.port}"
    known = known_hosts.read(file, name)
    assert known_hosts.verdict(known, presented(sshd)).status == "unknown"
    file.write_text("* {other}\n".format(**values))
    assert known_hosts.accept_new(file, name, presented(sshd)).status == "changed"
    assert file.read_text() == "* {other}\n".format(**values)


def test_runs_accepting_the_same_new_host_at_once_append_one_line(sshd, tmp_path):
    file = tmp_path / "known_hosts"
    name = f"[127.0.0.1]:{sshd.port}"
    start = threading.Barrier(8)

    def accept() -> str:
        start.wait()
        return known_hosts.accept_new(file, name, presented(sshd)).status

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(lambda _: accept(), range(8)))
    assert statuses == ["known"] * 7 + ["unknown"]
    assert file.read_text() == f"{name} {sshd.host_key_pub}\n"


@pytest.mark.parametrize("name", ["*", "a,b", "!x", "|1|x", "#x", "@x", "a b"])
def test_accept_new_never_writes_a_name_that_would_be_a_pattern(sshd, tmp_path, name):
    file = tmp_path / "ssh" / "known_hosts"
    with pytest.raises(OSError, match="would be a pattern"):
        known_hosts.accept_new(file, name, presented(sshd))
    assert not file.parent.exists()


def test_a_known_hosts_path_that_is_a_fifo_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "known_hosts"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        known_hosts.read(fifo, "host")


@pytest.mark.parametrize("line", ["[127.0.0.?]:{port} {other}", "* {other}", "*,!other.example.com {other}",
                                  "{hashed}", "[127.0.0.1]:{port} {rsa}"],
                         ids=["question-mark", "star", "list-with-negation", "hashed", "other-key-type"])
def test_a_pattern_line_with_another_key_is_refused_as_changed_nothing_runs_nothing_is_appended(
        home, make_repo, inv, sshd, keys, tmp_path, line):
    values = placeholders(sshd, keys)
    hashed = tmp_path / "hashed"
    hashed.write_text("[127.0.0.1]:{port} {other}\n".format(**values))
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(hashed)], check=True, capture_output=True)
    values["hashed"] = hashed.read_text().strip()
    file = tmp_path / "known_hosts"
    file.write_text("# build hosts\n" + line.format(**values) + "\n")
    before = file.read_bytes()
    workspace = only_on_host(home, sshd, make_repo, tmp_path, "staking", TOUCHING, {"known_hosts": str(file)})
    result = inv("build", "staking", "--host", "builder", "--accept-new-host-key")
    key_type = "ssh-rsa" if "rsa" in line else "ssh-ed25519"
    assert result.code == 1, result.out + result.err
    assert f"host key CHANGED for [127.0.0.1]:{sshd.port} (ssh-ed25519 SHA256:" in result.out
    assert f"{file} has another key for it: line 2 ({key_type})" in result.out
    assert not (workspace / "ran-on-host").exists()
    assert "$ make" not in (log_dir() / "orchestrator-build-staking.log").read_text()
    assert file.read_bytes() == before
    checked = inv("host.check", "--accept-new-host-key")
    assert checked.code == 1 and "host key CHANGED" in checked.out
    assert file.read_bytes() == before


@pytest.mark.parametrize("line", ["[127.0.0.?]:{port} {key}", "* {key}", "{hashed}"], ids=["question-mark", "star",
                                                                                       "hashed"])
def test_a_pattern_or_hashed_line_with_the_hosts_key_is_trusted_without_asking(home, make_repo, inv, sshd, keys,
                                                                              tmp_path, line):
    values = placeholders(sshd, keys)
    values["hashed"] = sshd.known_hosts.read_text().strip()
    file = tmp_path / "known_hosts"
    file.write_text(line.format(**values) + "\n")
    if line == "{hashed}":
        subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(file)], check=True, capture_output=True)
    before = file.read_bytes()
    workspace = only_on_host(home, sshd, make_repo, tmp_path, "staking", TOUCHING, {"known_hosts": str(file)})
    result = inv("build", "staking", "--host", "builder")
    assert result.code == 0, result.out + result.err
    assert (workspace / "ran-on-host").exists() and file.read_bytes() == before


def test_a_host_with_two_key_types_shows_the_one_known_for_it(home, inv, sshd, tmp_path):
    """paramiko would pick Ed25519 first; ssh, and we, first ask for a type the file knows for the host."""
    ecdsa_key = sshd.root / "host_key_ecdsa"
    ecdsa = keygen(ecdsa_key, "ecdsa")
    config = sshd.root / "sshd_config"
    config.write_text(config.read_text() + f"HostKey {ecdsa_key}\n")
    os.kill(int((sshd.root / "sshd.pid").read_text()), signal.SIGHUP)  # sshd re-reads its config
    wait_for(lambda: sshd.log.read_text().count("Server listening on") == 2)
    file = tmp_path / "known_hosts"
    file.write_text(f"[127.0.0.?]:{sshd.port} {ecdsa}\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    write_hosts(home.path, {"h1": sshd.host_entry(ws, known_hosts=str(file))})
    result = inv("host.check")
    assert result.code == 0, result.out + result.err
    file.write_text(f"[127.0.0.?]:{sshd.port} {ecdsa}\n[127.0.0.?]:{sshd.port} {sshd.host_key_pub}\n")
    assert inv("host.check").code == 0


def test_what_accept_new_appends_ssh_reads_as_known(home, inv, sshd, tmp_path):
    require_tool("ssh")
    if shutil.which("getent") and subprocess.run(["getent", "hosts", "localhost"], capture_output=True).returncode:
        pytest.skip("localhost does not resolve here")
    file = tmp_path / "known_hosts"
    file.write_text("@cert-authority * " + sshd.host_key_pub + "\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    write_hosts(home.path, {"h1": sshd.host_entry(ws, host="LocalHost", known_hosts=str(file))})
    assert inv("host.check").code == 1
    assert inv("host.check", "--accept-new-host-key").code == 0
    assert file.read_text().splitlines()[1] == f"[localhost]:{sshd.port} {sshd.host_key_pub}"
    assert ssh_verdict(sshd, file, "localhost", None) == "known"
    assert inv("host.check").code == 0


def test_a_known_hosts_that_is_a_directory_stops_the_host_before_connecting(home, inv, sshd, tmp_path):
    folder = tmp_path / "known_hosts"
    folder.mkdir()
    ws = tmp_path / "ws"
    ws.mkdir()
    write_hosts(home.path, {"h1": sshd.host_entry(ws, known_hosts=str(folder))})
    result = inv("host.check", "--accept-new-host-key")
    assert result.code == 1 and f"cannot read {folder}: not a regular file" in result.out, result.out
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("line,expected", [("* {other}", "changed"), ("[127.0.0.1]:{port} {key}", "known"),
                                           ("other.example.com {other}", "unknown")],
                         ids=["another key there", "the key there", "another host there"])
def test_a_global_known_hosts_file_counts_as_ssh_counts_it(sshd, keys, tmp_path, line, expected):
    """ssh also reads /etc/ssh/ssh_known_hosts: a key recorded there for the host is known, another is CHANGED."""
    require_tool("ssh")
    values = placeholders(sshd, keys)
    system = tmp_path / "ssh_known_hosts"
    system.write_text(line.format(**values) + "\n")
    user = tmp_path / "known_hosts"
    user.write_text("")
    name = known_hosts.host_name("127.0.0.1", sshd.port)
    known = known_hosts.merged(known_hosts.read(user, name), known_hosts.read_global(name, [system]))
    ours = known_hosts.verdict(known, presented(sshd)).status
    assert (ours, ssh_verdict(sshd, user, "127.0.0.1", None, str(system))) == (expected, expected)


def test_a_host_whose_global_key_differs_is_refused_even_with_accept_new_and_nothing_is_appended(
        home, make_repo, inv, sshd, keys, tmp_path, monkeypatch):
    """Before: only the user's file was read, so --accept-new-host-key trusted a host the system file
    knew by another key (ssh refuses it) and appended the impostor's key."""
    values = placeholders(sshd, keys)
    system = tmp_path / "etc" / "ssh_known_hosts"
    system.parent.mkdir()
    system.write_text("# fleet\n* {other}\n".format(**values))
    monkeypatch.setattr(known_hosts, "GLOBAL_FILES", (system, tmp_path / "etc" / "absent"))
    file = tmp_path / "known_hosts"
    workspace = only_on_host(home, sshd, make_repo, tmp_path, "staking", TOUCHING, {"known_hosts": str(file)})
    result = inv("build", "staking", "--host", "builder", "--accept-new-host-key")
    assert result.code == 1, result.out + result.err
    assert f"host key CHANGED for [127.0.0.1]:{sshd.port}" in result.out
    assert f"{system} has another key for it: {system} line 2 (ssh-ed25519)" in result.out
    assert not (workspace / "ran-on-host").exists() and not file.exists()
    system.write_text("* {key}\n".format(**values))
    trusted = inv("build", "staking", "--host", "builder")
    assert trusted.code == 0, trusted.out + trusted.err
    assert (workspace / "ran-on-host").exists() and not file.exists()
