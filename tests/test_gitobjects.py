"""The commit reader prints what `git log -1 --format=%s%x00%an%x00%cI` prints, or None when it cannot be sure."""
from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import pytest

from lib.gitobjects import read_commit
from lib.gitrefs import git_dirs
from tests.conftest import git

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
AUTHOR = b"A U Thor <author@example.com> 1700000000 +0100"
COMMITTER = b"C O Mitter <committer@example.com> 1700003600 -0200"


def git_log_fields(repo: Path, sha: str) -> tuple[str, ...]:
    """What the scan would get from git (replace refs off: the fields must belong to this sha)."""
    log = subprocess.run(["git", "log", "-1", "--no-show-signature", "--format=%s%x00%an%x00%cI", sha], cwd=repo,
                         env={**os.environ, "GIT_NO_REPLACE_OBJECTS": "1"}, capture_output=True)
    assert log.returncode == 0, log.stderr.decode()
    return tuple(log.stdout.decode("utf-8", "replace").rstrip("\n").split("\0"))


def commit_bytes(message: bytes = b"subject\n", author: bytes = AUTHOR, committer: bytes = COMMITTER,
                 extra: bytes = b"", parent: str | None = None) -> bytes:
    parent_line = f"parent {parent}\n".encode() if parent else b""
    return (b"tree %s\n%sauthor %s\ncommitter %s\n%s\n" % (EMPTY_TREE.encode(), parent_line, author, committer, extra)
            + message)


def write_object(repo: Path, raw: bytes, kind: str = "commit") -> str:
    """Store `raw` as a loose object without git's checks (crafted commits are the point)."""
    return subprocess.run(["git", "hash-object", "-t", kind, "-w", "--literally", "--stdin"], cwd=repo, input=raw,
                          capture_output=True, check=True).stdout.decode().strip()


def loose_path(repo: Path, sha: str) -> Path:
    return repo / ".git" / "objects" / sha[:2] / sha[2:]


def pack(repo: Path, *shas: str, options: tuple[str, ...] = ("--window=0",)) -> None:
    """Move exactly these objects into a new pack (no deltas unless asked) and delete their loose copies."""
    subprocess.run(["git", "pack-objects", "-q", *options, ".git/objects/pack/pack"], cwd=repo,
                   input="".join(f"{sha}\n" for sha in shas).encode(), capture_output=True, check=True)
    git(repo, "prune-packed")
    assert not any(loose_path(repo, sha).exists() for sha in shas)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(path))
    git(path, "commit", "-q", "--allow-empty", "-m", "initial")
    return path


GIT_AGREES = {
    "plain": {"message": b"Add the parser\n\nBody text.\n"},
    "leading blank lines": {"message": b"\n\n \t\r\nSubject after blanks\n\nbody\n"},
    "multi-line first paragraph": {"message": b"first line\nsecond line\n  indented third\n\nbody\n"},
    "trailing spaces, tabs and CR": {"message": b"subject \t\r\nnext line\t \r\n"},
    "vertical tab and form feed are not blank to git": {"message": b"\x0bsubject\x0c\n\x0c\nafter\n"},
    "unicode": {"message": "Ünïcödé ✓ 日本語 🎉\n".encode(), "author": "Zoë Ångström <z@e> 1 +0000".encode()},
    "invalid utf-8": {"message": b"bad \xff\xfe bytes \xe2\x82\n", "author": b"N\xe9e \xc3 <n@e> 1 +0000"},
    "empty message": {"message": b""},
    "whitespace-only message": {"message": b"\n \n\t\r\n"},
    "message without a final newline": {"message": b"no newline"},
    "gpgsig-style header with continuation lines": {
        "extra": b"gpgsig -----BEGIN PGP SIGNATURE-----\n \n author Fake <f@e> 1 +0000\n"
                 b" encoding latin1\n -----END PGP SIGNATURE-----\n"},
    "encoding UTF-8 header": {"extra": b"encoding UTF-8\n", "message": "Grüße\n".encode()},
    "encoding utf8 header": {"extra": b"encoding utf8\n", "message": "Grüße\n".encode()},
    "author with no name": {"author": b"<e@example.com> 1 +0000"},
    "name glued to the mail, blanks inside": {"author": b"  Two  Spaces\t<x@e> 1 +0000"},
    "extra > in the mail": {"author": b"Odd <a>b> 5 +0000"},
    "timezone +0530": {"committer": b"C <c@e> 1700000000 +0530"},
    "timezone -0800": {"committer": b"C <c@e> 1700000000 -0800"},
    "timezone -0030 on the epoch in local time": {"committer": b"C <c@e> 1800 -0030"},
    "timezone +0000": {"committer": b"C <c@e> 1700000000 +0000"},
    "timezone -0000 prints as +00:00": {"committer": b"C <c@e> 1700000000 -0000"},
    "last second of year 9999": {"committer": b"C <c@e> 253402300799 +0000"},
}


@pytest.mark.parametrize("storage", ["loose", "packed"])
@pytest.mark.parametrize("case", GIT_AGREES, ids=list(GIT_AGREES))
def test_reader_prints_what_git_log_prints(repo, case, storage):
    sha = write_object(repo, commit_bytes(parent=git(repo, "rev-parse", "HEAD"), **GIT_AGREES[case]))
    if storage == "packed":
        pack(repo, sha)
    assert read_commit(repo / ".git", sha) == git_log_fields(repo, sha)


def test_commits_made_by_git_and_a_commit_without_a_blank_line_after_its_header(repo):
    made_by_git = git(repo, "rev-parse", "HEAD")
    header_only = write_object(repo, commit_bytes(message=b"")[:-1])
    for sha in (made_by_git, header_only):
        assert read_commit(repo / ".git", sha) == git_log_fields(repo, sha)
    assert read_commit(repo / ".git", header_only)[0] == ""


def test_linked_worktree_reads_the_common_object_store(repo, tmp_path):
    linked = tmp_path / "linked"
    git(repo, "worktree", "add", "-q", "-b", "side", str(linked))
    git(linked, "commit", "-q", "--allow-empty", "-m", "made in the linked worktree")
    sha = git(linked, "rev-parse", "HEAD")
    git_dir, common_dir = git_dirs(linked)
    assert (git_dir / "commondir").is_file() and common_dir == (repo / ".git").resolve()
    assert read_commit(common_dir, sha) == git_log_fields(linked, sha)
    git(repo, "gc", "-q")
    assert not loose_path(repo, sha).exists()
    assert read_commit(common_dir, sha) == git_log_fields(linked, sha)
    assert read_commit(common_dir, sha)[:2] == ("made in the linked worktree", "Test User")


GIT_WOULD_DIFFER = {
    "latin-1 encoding (git re-encodes)": {"extra": b"encoding ISO-8859-1\n", "message": b"caf\xe9\n"},
    "duplicate author (git takes the last)": {"extra": b"author Second <s@e> 2 +0000\n"},
    "duplicate committer": {"extra": b"committer Second <s@e> 2 +0000\n"},
    "NUL in the message (git stops there)": {"message": b"before\0after\n"},
    "no < in the author": {"author": b"No Mail 1 +0000"},
    "no > in the author": {"author": b"N <unclosed 1 +0000"},
    "no date": {"author": b"N <e>"},
    "no timezone": {"committer": b"C <c> 1700000000"},
    "timestamp not digits": {"committer": b"C <c> -1 +0000"},
    "timezone without sign": {"committer": b"C <c> 1 0100"},
    "three-digit timezone": {"committer": b"C <c> 1 +100"},
    "five-digit timezone": {"committer": b"C <c> 1 +01000"},
    "timezone minutes over 59": {"committer": b"C <c> 1 +0060"},
    "trailing text after the timezone": {"committer": b"C <c> 1 +0000 x"},
    "before the epoch in local time (git dies)": {"committer": b"C <c> 0 -0800"},
    "year 10000 (git prints five digits)": {"committer": b"C <c> 253402300800 +0000"},
    "year 10000 in local time": {"committer": b"C <c> 253402300799 +0100"},
}


@pytest.mark.parametrize("case", GIT_WOULD_DIFFER, ids=list(GIT_WOULD_DIFFER))
def test_content_git_would_print_differently_gives_none(repo, case):
    sha = write_object(repo, commit_bytes(**GIT_WOULD_DIFFER[case]))
    assert read_commit(repo / ".git", sha) is None
    pack(repo, sha)
    assert read_commit(repo / ".git", sha) is None


@pytest.mark.parametrize("raw", [b"tree 123\nauthor A <a> 1 +0000\ncommitter C <c> 1 +0000\n\nx\n",
                                 commit_bytes(parent="not-a-sha")], ids=["bad tree line", "bad parent line"])
def test_commit_git_log_refuses_gives_none(repo, raw):
    sha = write_object(repo, raw)
    assert subprocess.run(["git", "log", "-1", sha], cwd=repo, capture_output=True).returncode != 0
    assert read_commit(repo / ".git", sha) is None


@pytest.mark.parametrize("sha", ["a" * 64, "A" * 40, "g" * 40, "a" * 39, "a" * 40 + "\n", ""])
def test_not_a_sha1_gives_none(repo, sha):
    assert read_commit(repo / ".git", sha) is None


def test_missing_object_and_missing_git_dir_give_none(repo, tmp_path):
    assert read_commit(repo / ".git", "1" * 40) is None
    assert read_commit(tmp_path / "nowhere", git(repo, "rev-parse", "HEAD")) is None


def test_other_object_types_give_none(repo):
    blob = write_object(repo, b"commit 5\0hello", kind="blob")
    assert read_commit(repo / ".git", blob) is None


def test_corrupt_loose_object_gives_none(repo):
    sha = git(repo, "rev-parse", "HEAD")
    path = loose_path(repo, sha)
    data = zlib.decompress(path.read_bytes())
    path.chmod(0o644)
    path.write_bytes(zlib.compress(data.replace(b"initial", b"forged!")))  # same length, valid zlib
    assert read_commit(repo / ".git", sha) is None
    path.write_bytes(zlib.compress(data)[:-6])  # cut short
    assert read_commit(repo / ".git", sha) is None


def test_commit_over_one_mib_gives_none_loose_and_packed(repo):
    sha = write_object(repo, commit_bytes(message=b"big\n\n" + b"x" * (1 << 20)))
    assert git_log_fields(repo, sha)[0] == "big"
    assert read_commit(repo / ".git", sha) is None
    pack(repo, sha)
    assert read_commit(repo / ".git", sha) is None


def read_commit_within(seconds: float, git_dir: Path, sha: str) -> object:
    """read_commit in a thread, so a hang fails the test instead of stalling the suite."""
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(read_commit(git_dir, sha)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "read_commit blocked"
    return result[0]


@pytest.mark.parametrize("planted", ["pack index", "loose object"])
def test_fifo_planted_in_the_object_store_gives_none_promptly(repo, planted):
    sha = write_object(repo, commit_bytes())
    if planted == "pack index":
        pack(repo, sha)
        fifo = next((repo / ".git/objects/pack").glob("*.idx"))
        fifo.unlink()
    else:
        fifo = loose_path(repo, sha)
        fifo.unlink()
    os.mkfifo(fifo)
    assert read_commit_within(5, repo / ".git", sha) is None


def entry_types(repo: Path) -> dict[str, int]:
    """sha -> type of its entry in the repo's one pack (1 commit, 6 OFS_DELTA, 7 REF_DELTA)."""
    idx = next((repo / ".git/objects/pack").glob("*.idx"))
    pack_data = idx.with_suffix(".pack").read_bytes()
    rows = [line.split() for line in git(repo, "verify-pack", "-v", str(idx)).splitlines()]
    return {row[0]: pack_data[int(row[4])] >> 4 & 7 for row in rows if row[1:2] == ["commit"]}


@pytest.mark.parametrize("delta_type, options", [(6, ("--delta-base-offset",)), (7, ())],
                         ids=["OFS_DELTA", "REF_DELTA"])
def test_commit_stored_as_a_delta_gives_none_and_its_base_reads(repo, delta_type, options):
    story = b"".join(b"line %d of a long and repetitive commit message body\n" % i for i in range(200))
    shas = [write_object(repo, commit_bytes(message=b"version %d\n\n%s" % (n, story))) for n in (1, 2)]
    pack(repo, *shas, options=("--window=10", "--depth=10", *options))
    types = entry_types(repo)
    assert sorted(types.values()) == [1, delta_type]
    for sha, entry_type in types.items():
        assert read_commit(repo / ".git", sha) == (git_log_fields(repo, sha) if entry_type == 1 else None)


def pack_entry(entry_type: int, data: bytes) -> bytes:
    """A pack entry: type and size (4 bits, then 7 bits a byte while the top bit is set), then the data deflated."""
    header, size = bytes([entry_type << 4 | 0x80 | len(data) & 15]), len(data) >> 4
    while size > 0x7F:
        header, size = header + bytes([size & 0x7F | 0x80]), size >> 7
    return header + bytes([size]) + zlib.compress(data)


def synthetic_pack(repo: Path, body: bytes, entry_type: int, large_offset: bool = False, idx_version: int = 2,
                   named_as: bytes | None = None) -> str:
    """A pack holding `body` deflated as an entry of `entry_type` (and a blob), with its index; returns body's sha.

    `large_offset` puts the entry's offset in the 8-byte table (git allows it only with two or more objects);
    `named_as`: the index names the entry by the sha of this other body (a corrupt pack).
    """
    filler, name = b"filler\n", named_as or body
    objects = [(hashlib.sha1(b"commit %d\0" % len(name) + name).digest(), pack_entry(entry_type, body)),
               (hashlib.sha1(b"blob %d\0" % len(filler) + filler).digest(), pack_entry(3, filler))]
    pack_data, offsets = b"PACK" + struct.pack(">II", 2, len(objects)), {}
    for sha, entry in objects:
        offsets[sha] = len(pack_data)
        pack_data += entry
    pack_data += hashlib.sha1(pack_data).digest()
    names = sorted(offsets)
    idx = struct.pack(">256I", *[sum(name[0] <= i for name in names) for i in range(256)])
    if idx_version == 1:
        idx += b"".join(struct.pack(">I", offsets[name]) + name for name in names)
    else:
        crcs = {sha: zlib.crc32(entry) for sha, entry in objects}
        big = [name for name in names if large_offset and name == objects[0][0]]
        idx = (b"\377tOc" + struct.pack(">I", 2) + idx + b"".join(names)
               + b"".join(struct.pack(">I", crcs[name]) for name in names)
               + b"".join(struct.pack(">I", 0x80000000 if name in big else offsets[name]) for name in names)
               + b"".join(struct.pack(">Q", offsets[name]) for name in big))
    idx += pack_data[-20:]
    idx += hashlib.sha1(idx).digest()
    base = repo / ".git/objects/pack" / f"pack-{pack_data[-20:].hex()}"
    base.with_suffix(".pack").write_bytes(pack_data)
    base.with_suffix(".idx").write_bytes(idx)
    return objects[0][0].hex()


@pytest.mark.parametrize("layout", [{}, {"large_offset": True}], ids=["offset", "large-offset table"])
def test_synthetic_pack_reads_like_git(repo, layout):
    sha = synthetic_pack(repo, commit_bytes(message=b"synthetic\n"), entry_type=1, **layout)
    assert read_commit(repo / ".git", sha) == git_log_fields(repo, sha) == ("synthetic", "A U Thor",
                                                                             "2023-11-14T21:13:20-02:00")


@pytest.mark.parametrize("entry_type", [3, 6, 7], ids=["blob", "OFS_DELTA", "REF_DELTA"])
def test_pack_entry_of_another_type_is_never_read_as_a_commit(repo, entry_type):
    # The entry's data is a valid commit, so only the type check stands between it and a result.
    sha = synthetic_pack(repo, commit_bytes(message=b"lying type\n"), entry_type=entry_type)
    assert read_commit(repo / ".git", sha) is None


def test_pack_entry_that_does_not_hash_to_its_name_gives_none(repo):
    real, forged = commit_bytes(message=b"real\n"), commit_bytes(message=b"forged\n")
    sha = synthetic_pack(repo, forged, entry_type=1, named_as=real)
    assert read_commit(repo / ".git", sha) is None


def test_version_1_pack_index_is_not_read(repo):
    sha = synthetic_pack(repo, commit_bytes(message=b"old index\n"), entry_type=1, idx_version=1)
    assert git_log_fields(repo, sha)[0] == "old index"
    assert read_commit(repo / ".git", sha) is None


def test_commit_body_is_what_git_cat_file_prints_loose_and_packed_and_none_when_forged(repo):
    """read_commit_body is the one verified read of a commit (read_commit's and gitrefs' ahead/behind walk)."""
    from lib.gitobjects import read_commit_body

    objects = repo / ".git" / "objects"
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    second = git(repo, "rev-parse", "HEAD")
    cat = subprocess.run(["git", "cat-file", "commit", second], cwd=repo, capture_output=True, check=True).stdout
    assert read_commit_body(objects, second) == cat
    pack(repo, first, second)
    assert read_commit_body(objects, second) == cat
    blob = write_object(repo, b"commit 5\0hello", kind="blob")
    forged = write_object(repo, cat.replace(b"second", b"forged"))
    planted = loose_path(repo, first)  # a valid commit object, at the name of another: not that commit
    planted.parent.mkdir(exist_ok=True)
    planted.write_bytes(loose_path(repo, forged).read_bytes())
    assert read_commit_body(objects, first) is None
    assert read_commit_body(objects, forged) == cat.replace(b"second", b"forged")
    assert read_commit_body(objects, blob) is None
    assert read_commit_body(objects, "1" * 40) is None
    assert read_commit_body(objects, "not a sha") is None
