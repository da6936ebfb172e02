"""A commit's subject, author and date read from the object store without starting git (stdlib only: scan path)."""
from __future__ import annotations

import os
import re
import struct
import zlib
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

from lib.statefile import open_regular

MAX_COMMIT = 1 << 20  # a bigger commit goes to git log: never inflate more than this
READ_CHUNK = 16384
SHA1_HEX = re.compile(r"[0-9a-f]{40}")
IDX_V2 = b"\377tOc\0\0\0\2"
IDX_SHAS = 8 + 256 * 4  # the sorted names follow the magic, the version and the fanout table
PACK_COMMIT = 1  # pack entry types: 1 commit, 2 tree, 3 blob, 4 tag, 6 OFS_DELTA, 7 REF_DELTA
GIT_SPACE = b" \t\n\r"  # git's isspace(): \v and \f are not space to git
# What git's parse_commit_buffer insists on (else `git log` fails): the tree line, then parent lines.
COMMIT_START = re.compile(rb"tree [0-9a-f]{40}\n(?:parent [0-9a-f]{40}\n)*")
IDENT_DATE = re.compile(rb" ([0-9]+) ([+-])([0-9]{2})([0-5][0-9])")
UTF8_NAME = re.compile(rb"utf-?8", re.IGNORECASE)  # git's same_utf_encoding: not re-encoded
EPOCH = datetime(1970, 1, 1)


def read_commit(common_dir: Path, sha: str) -> tuple[str, str, str] | None:
    """(subject, author name, committer date) as `git log -1 --format=%s%x00%an%x00%cI <sha>` prints them.

    `common_dir`: the repo's common git dir, where its objects live (lib.gitrefs.git_dirs finds it). None
    whenever in doubt (then ask git): not sha1, not found (alternates are not searched), a delta, over 1 MiB,
    corrupt or odd. Replace refs are not applied.
    """
    try:
        body = read_commit_body(common_dir / "objects", sha)
        return None if body is None else _fields(body)
    except (OSError, zlib.error, ValueError, struct.error, IndexError, OverflowError):
        return None


def read_commit_body(objects: Path, sha: str) -> bytes | None:
    """The commit `sha` as `git cat-file commit` prints it, from the object store `objects` (loose, or a whole
    entry in a v2-indexed pack) and checked against its name. None whenever in doubt: not sha1, not found
    (alternates are not searched), not a commit, a delta, over 1 MiB, corrupt or unreadable."""
    if not isinstance(sha, str) or not SHA1_HEX.fullmatch(sha):
        return None
    import hashlib  # here, not at the top: a warm scan never reads a commit, and hashlib loads OpenSSL
    try:
        try:
            body = _read_loose(objects / sha[:2] / sha[2:])
        except FileNotFoundError:
            body = _read_packed(objects / "pack", bytes.fromhex(sha))
    except (OSError, zlib.error, ValueError, struct.error, IndexError, OverflowError):
        return None
    # The name is the content's hash: a corrupt or planted object cannot pass for this commit.
    if body is None or hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest() != sha:
        return None
    return body


@contextmanager
def regular_file(path: Path | str) -> Iterator[int]:
    """A read-only descriptor on `path`; statefile.NotRegular unless it is a regular file (a FIFO or device would
    hang us)."""
    fd = open_regular(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def _inflate(fd: int, offset: int, limit: int) -> bytes | None:
    """The zlib stream starting at `offset`; None if it inflates to more than `limit` bytes or is cut short."""
    inflater = zlib.decompressobj()
    out = b""
    end = offset + limit + READ_CHUNK  # bounds the input too: empty deflate blocks inflate to nothing
    while not inflater.eof:
        chunk = os.pread(fd, READ_CHUNK, offset)
        if not chunk or offset > end:
            return None
        offset += len(chunk)
        out += inflater.decompress(chunk, limit + 1 - len(out))
        if len(out) > limit:
            return None
    return out


def _read_loose(path: Path) -> bytes | None:
    """A loose object's body, if its header says it is a commit of exactly that length."""
    with regular_file(path) as fd:
        data = _inflate(fd, 0, MAX_COMMIT + 32)
    header, nul, body = (data or b"").partition(b"\0")
    return body if nul and header == b"commit %d" % len(body) else None


def _read_packed(pack_dir: Path, oid: bytes) -> bytes | None:
    """The commit's body from the first pack whose index lists it."""
    found = packed_entry(pack_dir, oid)
    return None if found is None else _read_pack_entry(*found)


def packed_entry(pack_dir: Path, oid: bytes) -> tuple[Path, int] | None:
    """(pack file, offset of the entry) of the first pack, by name, whose v2 index lists `oid`; None if none does."""
    try:
        names = sorted(os.listdir(pack_dir))
    except FileNotFoundError:
        return None
    for name in names:
        if name.endswith(".idx"):
            offset = _offset_in_index(pack_dir / name, oid)
            if offset is not None:
                return pack_dir / f"{name[:-4]}.pack", offset
    return None


def _offset_in_index(path: Path, oid: bytes) -> int | None:
    """Where `oid` starts in the pack: a binary search in a version-2 index, a few small reads (v1 is skipped)."""
    with regular_file(path) as fd:
        head = os.pread(fd, IDX_SHAS, 0)
        if head[:8] != IDX_V2 or len(head) != IDX_SHAS:
            return None
        fanout = struct.unpack(">256I", head[8:])
        count = fanout[255]
        low, high = fanout[oid[0] - 1] if oid[0] else 0, fanout[oid[0]]
        if not low <= high <= count or IDX_SHAS + 28 * count > os.fstat(fd).st_size:
            return None
        while low < high:
            middle = (low + high) // 2
            name = os.pread(fd, 20, IDX_SHAS + 20 * middle)
            if name == oid:
                break
            low, high = (middle + 1, high) if name < oid else (low, middle)
        else:
            return None
        (offset,) = struct.unpack(">I", os.pread(fd, 4, IDX_SHAS + 24 * count + 4 * middle))
        if offset & 0x80000000:  # packs over 2 GiB: the rest indexes the table of 8-byte offsets
            (offset,) = struct.unpack(">Q", os.pread(fd, 8, IDX_SHAS + 28 * count + 8 * (offset & 0x7FFFFFFF)))
        return offset


def _read_pack_entry(path: Path, offset: int) -> bytes | None:
    """A commit stored whole at `offset`; a delta (or any other type) is None: resolving one is git's job."""
    with regular_file(path) as fd:
        head = os.pread(fd, 16, offset)
        kind, size, used = head[0] >> 4 & 7, head[0] & 15, 1
        while head[used - 1] & 0x80:  # the size goes on, 7 bits a byte, while the top bit is set
            size |= (head[used] & 0x7F) << (4 + 7 * (used - 1))
            used += 1
        if kind != PACK_COMMIT or size > MAX_COMMIT:
            return None
        body = _inflate(fd, offset + used, size)
    return body if body is not None and len(body) == size else None


def _fields(body: bytes) -> tuple[str, str, str] | None:
    """What %s, %an and %cI print for this commit body (git's pretty.c), or None for anything odd."""
    start = COMMIT_START.match(body)
    if b"\0" in body or start is None or body.startswith(b"parent ", start.end()):
        return None  # git stops at a NUL, and fails on a bad tree or parent line
    header, _, message = body.partition(b"\n\n")
    lines = header.split(b"\n")  # continuation lines (gpgsig's) start with a space: never a header
    authors = [line[7:] for line in lines if line.startswith(b"author ")]
    committers = [line[10:] for line in lines if line.startswith(b"committer ")]
    encodings = [line[9:] for line in lines if line.startswith(b"encoding ")]
    if len(authors) != 1 or len(committers) != 1 or not all(UTF8_NAME.fullmatch(e) for e in encodings):
        return None  # git would re-encode the message, or take the last of two idents
    author, committer = _ident(authors[0]), _ident(committers[0])
    if author is None or committer is None:
        return None
    return _text(_subject(message)), _text(author[0]), _iso8601_strict(committer[1], committer[2])


def _subject(message: bytes) -> bytes:
    """git's format_subject: blank lines skipped, then the first paragraph's lines right-trimmed, joined by spaces."""
    trimmed = b"\n".join(line.rstrip(GIT_SPACE) for line in message.split(b"\n"))
    return trimmed.strip(b"\n").split(b"\n\n", 1)[0].replace(b"\n", b" ")  # blank lines are empty now


def _ident(value: bytes) -> tuple[bytes, int, int] | None:
    """(name, timestamp, offset in minutes) of `Name <mail> 1700000000 +0100`; None unless exactly that shape."""
    name, lt, rest = value.partition(b"<")
    _, gt, date = rest.rpartition(b">")  # git reads the date after the last '>'
    match = IDENT_DATE.fullmatch(date)
    if not lt or not gt or match is None:
        return None
    timestamp, sign, hours, minutes = match.groups()
    offset = (-1 if sign == b"-" else 1) * (int(hours) * 60 + int(minutes))
    return name.rstrip(GIT_SPACE), int(timestamp), offset


def _iso8601_strict(timestamp: int, offset: int) -> str:
    """%cI: the time in the committer's own offset. git prints -0000 as +00:00 (the offset is the number 0)."""
    if timestamp + 60 * offset < 0:
        raise ValueError("before the epoch in local time: git log dies")
    local = EPOCH + timedelta(seconds=timestamp, minutes=offset)  # OverflowError past 9999: git prints 5 digits
    hours, minutes = divmod(abs(offset), 60)
    return f"{local.year:04d}-{local:%m-%dT%H:%M:%S}{'-' if offset < 0 else '+'}{hours:02d}:{minutes:02d}"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")  # as lib.gitstatus decodes git's output
