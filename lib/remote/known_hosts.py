"""Whether a host's key is trusted, read from a known_hosts file as OpenSSH's ssh reads it.

The format is sshd(8)'s "SSH_KNOWN_HOSTS FILE FORMAT": an optional marker
(`@cert-authority`, `@revoked`), a comma-separated list of host patterns (`*`
and `?` wildcards, `!` negation, `[host]:port` for ports other than 22) or one
hashed name (`|1|salt|hash`, HMAC-SHA1), the key type, the base64 key, a
comment. The rules, each checked against ssh (tests/test_known_hosts.py):

- A line names the host when one of its patterns matches the name (`host`, or
  `[host]:port` for another port; lowercased, as ssh does) and none of its `!`
  patterns does: a negated match drops the whole line.
- A line ssh cannot parse (unknown key type, bad base64, a key that does not
  decode, a type that does not match the key, a marker other than the two, a
  bad hash) is skipped, as ssh skips it.
- Among the plain lines that name the host: one with the presented key makes it
  `known`; otherwise any other key, whatever its type, makes it `changed` (ssh
  too: a host known only by an RSA key that now shows an Ed25519 key is
  changed, not new); no line at all makes it `unknown`.
- A key on an `@revoked` line is `revoked`, before all of the above.
- `@cert-authority` lines are not host keys (paramiko has no host certificates).

Stricter than ssh in two corners, on purpose: a revoked key is revoked for
every host, whatever host its line names; a key of a type paramiko cannot
decode on a line for the host counts as another key even where ssh would find
it garbled.
"""
from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Iterable, Literal

from lib.statefile import open_regular

Status = Literal["known", "changed", "revoked", "unknown"]

# The key types OpenSSH's ssh reads on a known_hosts line, and the type their key blob must carry.
PLAIN_TYPES = {
    "ssh-ed25519": "ssh-ed25519", "ssh-rsa": "ssh-rsa", "rsa-sha2-256": "ssh-rsa", "rsa-sha2-512": "ssh-rsa",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521", "ssh-dss": "ssh-dss",
    "sk-ssh-ed25519@openssh.com": "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com": "sk-ecdsa-sha2-nistp256@openssh.com",
}


def _certificate(key_type: str) -> str:
    return key_type.removesuffix("@openssh.com") + "-cert-v01@openssh.com"


BLOB_TYPES = {**PLAIN_TYPES, **{_certificate(name): _certificate(blob) for name, blob in PLAIN_TYPES.items()}}
# Types paramiko decodes: their keys are checked as ssh checks them. The others (DSA, security-key and
# certificate types) can never be a key paramiko is shown, so only their type is checked: on a line for
# the host they count as another key (changed).
DECODED_TYPES = {"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"}
RSA_MINIMUM_BITS = 1024  # ssh refuses to read a shorter RSA key
HASH_MAGIC = b"|1|"
MAX_PATTERN = 1022  # ssh's buffer for one pattern of a list
BASE64_RE = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
WHITESPACE = b" \t"
PATTERN_CHARS = re.compile(r"[*?!,\s\0]|^[|#@]")  # a name with these would be a pattern (or no name) on a line
# ssh reads these too (GlobalKnownHostsFile), whatever UserKnownHostsFile says: a key recorded for the host
# there counts like one in the user's file. Read, never written.
GLOBAL_FILES = (Path("/etc/ssh/ssh_known_hosts"), Path("/etc/ssh/ssh_known_hosts2"))


@dataclass(frozen=True)
class Entry:
    """One usable line: its number, its key type as written, and the key blob."""

    line: int
    key_type: str
    blob: bytes
    source: str | None = None  # the file it is in when that is not the user's known_hosts (a global one)

    @property
    def blob_type(self) -> str:
        return BLOB_TYPES[self.key_type]


@dataclass(frozen=True)
class Known:
    """What a known_hosts file says about one host name."""

    name: str
    entries: tuple[Entry, ...] = ()  # the plain lines that name the host
    revoked: tuple[Entry, ...] = ()  # every @revoked line, whatever host it names

    def key_types(self) -> list[str]:
        """The types of the host's known keys, in file order: ssh offers these first in the handshake."""
        return list(dict.fromkeys(entry.blob_type for entry in self.entries))


@dataclass(frozen=True)
class Verdict:
    status: Status
    name: str
    # known: the line with the key; changed: the lines whose keys differ; revoked: the @revoked lines
    lines: tuple[Entry, ...] = ()

    def describe_lines(self, limit: int = 5) -> str:
        """`line 3 (ssh-ed25519), line 7 (ssh-rsa)`, the first `limit` of them."""
        shown = ", ".join(f"{f'{entry.source} ' if entry.source else ''}line {entry.line} ({entry.key_type})"
                          for entry in self.lines[:limit])
        more = len(self.lines) - limit
        return f"{shown} and {more} more" if more > 0 else shown


def host_name(host: str, port: int) -> str:
    """The name ssh looks up: the host, lowercased, as `[host]:port` unless the port is 22."""
    name = host.encode().lower().decode()  # ASCII letters only, as ssh's tolower
    return name if port == 22 else f"[{name}]:{port}"


def glob_match(name: bytes, pattern: bytes) -> bool:
    """OpenSSH's match_pattern: `*` any run of bytes, `?` any one byte; linear, so no pattern can hang it."""
    i = j = 0
    star, mark = -1, 0
    while i < len(name):
        if j < len(pattern) and pattern[j] in (ord("?"), name[i]):
            i, j = i + 1, j + 1
        elif j < len(pattern) and pattern[j] == ord("*"):
            star, mark, j = j, i, j + 1
        elif star >= 0:
            mark += 1
            i, j = mark, star + 1
        else:
            return False
    return pattern[j:].strip(b"*") == b""


def names_host(field: bytes, name: bytes) -> bool:
    """Whether a line's host field names the host (`name` already lowercased)."""
    if field.startswith(b"|"):
        return _hashed_match(field, name)
    positive = False
    for pattern in field.lower().split(b","):
        negated = pattern.startswith(b"!")
        pattern = pattern[1:] if negated else pattern
        if len(pattern) > MAX_PATTERN:  # ssh gives up on the whole line
            return False
        if glob_match(name, pattern):
            if negated:
                return False
            positive = True
    return positive


def _hashed_match(field: bytes, name: bytes) -> bool:
    if not field.startswith(HASH_MAGIC):
        return False
    encoded_salt, found, _ = field[len(HASH_MAGIC):].partition(b"|")
    try:
        salt = base64.b64decode(encoded_salt, validate=True)
    except binascii.Error:
        return False
    if not found or len(salt) != hashlib.sha1().digest_size:
        return False
    digest = hmac.new(salt, name, hashlib.sha1).digest()
    return hmac.compare_digest(field, HASH_MAGIC + base64.b64encode(salt) + b"|" + base64.b64encode(digest))


def _marker(rest: bytes) -> tuple[bytes | None, bytes] | None:
    """The line's marker and what follows it, or None for a marker ssh refuses (then it skips the line).

    As ssh's check_markers: a marker ends at the line's first space, or its first tab if it has no space."""
    marker = None
    while rest.startswith(b"@"):
        end = rest.find(b" ")
        end = rest.find(b"\t") if end < 0 else end
        if marker is not None or end <= 1 or end >= 32 or rest[:end] not in (b"@cert-authority", b"@revoked"):
            return None
        marker, rest = rest[:end], rest[end:].lstrip(WHITESPACE)
    return marker, rest


def _split_field(text: bytes) -> tuple[bytes, bytes]:
    """The text up to the first space or tab, and the rest after the blanks that follow it."""
    match = re.match(rb"[^ \t]*", text)
    end = match.end() if match else 0
    return text[:end], text[end:].lstrip(WHITESPACE)


def _key(text: bytes, number: int) -> Entry | None:
    """The key that starts `text` (`type base64 [comment]`), or None where ssh would not read one."""
    key_type, rest = _split_field(text)
    if not rest or key_type.decode("latin-1") not in BLOB_TYPES:
        return None  # ssh needs a blank after the type, then the key
    encoded = _split_field(rest)[0].translate(None, b"\r\v\f")  # ssh's base64 decoder skips these
    if not BASE64_RE.fullmatch(encoded) or len(encoded) % 4:
        return None
    blob = base64.b64decode(encoded)
    if base64.b64encode(blob) != encoded:  # ssh refuses stray padding bits
        return None
    entry = Entry(number, key_type.decode(), blob)
    return entry if _valid_blob(entry) else None


def _valid_blob(entry: Entry) -> bool:
    if entry.blob_type not in DECODED_TYPES:
        name = entry.blob_type.encode()
        return entry.blob[:4 + len(name)] == len(name).to_bytes(4, "big") + name
    from paramiko import PKey

    try:
        key = PKey.from_type_string(entry.blob_type, entry.blob)
    except Exception:  # paramiko raises SSHException, ValueError, TypeError... for a key it cannot decode
        return False
    if key.get_name() != entry.blob_type or key.asbytes() != entry.blob:  # another curve; bytes after the key
        return False
    return entry.blob_type != "ssh-rsa" or key.get_bits() >= RSA_MINIMUM_BITS


def parse(lines: Iterable[bytes], name: str) -> Known:
    """What the lines (a known_hosts file, split at newlines) say about the host `name` (see host_name)."""
    wanted = name.encode().lower()
    entries: list[Entry] = []
    revoked: list[Entry] = []
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip(b"\n").split(b"\0", 1)[0]  # ssh reads a line as a C string
        rest = line.lstrip(WHITESPACE)
        if not rest or rest.startswith(b"#"):
            continue
        marked = _marker(rest)
        if marked is None:
            continue
        marker, rest = marked
        hosts, rest = _split_field(rest)
        if rest.startswith(b"#") or marker == b"@cert-authority":
            continue
        if marker == b"@revoked":
            entry = _key(rest, number)
            if entry is not None:
                revoked.append(entry)
        elif names_host(hosts, wanted):
            entry = _key(rest, number)
            if entry is not None:
                entries.append(entry)
    return Known(name, tuple(entries), tuple(revoked))


def read(path: Path, name: str) -> Known:
    """What the file says about `name`; a missing file knows no host. OSError if it cannot be read.

    Not statefile.read_regular: ssh reads a known_hosts file of any size (its 16 MiB cap would refuse a host
    ssh accepts) line by line, and accept_new must parse the very descriptor it holds locked; the opener,
    which refuses a FIFO or a device, is the same."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return Known(name)
    with os.fdopen(fd, "rb") as file:
        return parse(file, name)


def read_global(name: str, files: Iterable[Path] | None = None) -> Known:
    """What ssh's global known_hosts files (GLOBAL_FILES) say about `name`; each entry carries its file.
    A missing file knows no host; OSError if one cannot be read."""
    known = Known(name)
    for path in GLOBAL_FILES if files is None else files:
        known = merged(known, read(path, name), str(path))
    return known


def merged(known: Known, other: Known, source: str | None = None) -> Known:
    """`known` with the entries of `other` added (marked with `source` where given)."""
    def marked(entries: tuple[Entry, ...]) -> tuple[Entry, ...]:
        return tuple(replace(e, source=source) for e in entries) if source else entries

    return Known(known.name, known.entries + marked(other.entries), known.revoked + marked(other.revoked))


def verdict(known: Known, key: Any) -> Verdict:
    """Known, changed, revoked or unknown: the presented `key` (a paramiko PKey) against what the file says."""
    blob = key.asbytes()
    revoked = tuple(entry for entry in known.revoked if entry.blob == blob)
    if revoked:
        return Verdict("revoked", known.name, revoked)
    same = tuple(entry for entry in known.entries if entry.blob == blob)
    if same:
        return Verdict("known", known.name, same[:1])
    if known.entries:
        return Verdict("changed", known.name, known.entries)
    return Verdict("unknown", known.name)


def accept_new(path: Path, name: str, key: Any, also: Known | None = None) -> Verdict:
    """ssh's accept-new: the key is appended when, with the file locked, the host is still unknown.

    The verdict is decided again under the lock (another run may have added a key since the first
    read), with the entries of `also` (the global files) counted too; anything but `unknown` is
    returned as it is and nothing is written.
    """
    if PATTERN_CHARS.search(name):
        raise OSError(errno.EINVAL, f"the name {name!r} would be a pattern there; add its key by hand")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with os.fdopen(open_regular(path, os.O_RDWR | os.O_APPEND | os.O_CREAT), "r+b") as file:
        fcntl.flock(file, fcntl.LOCK_EX)  # another run accepting at once appends after us, not inside
        decided = verdict(merged(parse(_lines(file), name), also or Known(name)), key)
        if decided.status == "unknown":
            _append(file, f"{name} {key.get_name()} {key.get_base64()}\n".encode())
        return decided


def _lines(file: IO[bytes]) -> IO[bytes]:
    file.seek(0)
    return file


def _append(file: IO[bytes], line: bytes) -> None:
    end = file.seek(0, os.SEEK_END)
    if end:
        file.seek(end - 1)
        if file.read(1) != b"\n":  # a hand-edited last line without one stays a line of its own
            line = b"\n" + line
    file.write(line)
    file.flush()
