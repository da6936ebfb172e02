"""A repo's git dirs, HEAD, refs and remotes read from its files and one `git config --list` (stdlib only: sync path).

Each reader answers only what it is sure git would answer; anything else is
None ("in doubt") and the caller asks git, as lib.gitobjects does for commits.
"""
from __future__ import annotations

import os
import re
import stat
import struct
import zlib
from pathlib import Path
from typing import Generator

from lib.gitconfig import parse_listing
from lib.gitobjects import PACK_COMMIT, packed_entry, regular_file
from lib.statefile import read_small

SHA1_LINE = re.compile(rb"([0-9a-f]{40})\n")
SYMREF_LINE = re.compile(rb"ref: (refs/[^\0\n]+)\n")
# Refname characters and rules checked here (git's check_refname_format); any other character is for git to judge.
PLAIN_REFNAME = re.compile(r"[A-Za-z0-9._+/-]+")
PACKED_HEADER = b"# pack-refs with:"
PACKED_LINE = re.compile(rb"([0-9a-f]{40}) (refs/[^\0\n]+)")
PEELED_LINE = re.compile(rb"\^[0-9a-f]{40}")
MAX_REF_FILE = 4096
MAX_PACKED_REFS = 1 << 20  # bigger: git (mmap and a binary search) reads it faster than a line scan here
WALK_LIMIT = 128  # commits read to count ahead/behind before git's rev-list is asked
REMOTE_TIPS_LIMIT = 64  # remote-tracking refs read to tell a branch's commits are on none of them
MAX_REFLOG = 256 * 1024
# A reflog entry as git writes it (old, new, `Name <email>`, a timestamp, a zone, a tab and the message); git skips
# an entry it cannot parse, so a file with any other line is git's to read.
REFLOG_LINE = re.compile(rb"[0-9a-f]{40} ([0-9a-f]{40}) [^\n<>]*<[^\n<>]*> [1-9][0-9]* [+-][0-9]{4}(?:\t[^\n]*)?")
# What `git remote` (remote.c) accepts under remote.<name>.*: strings, and booleans it parses
# (dying on a bad one). Any other key, or a value-less string, is git's to judge.
REMOTE_STRINGS = {"url", "pushurl", "push", "fetch", "receivepack", "uploadpack", "tagopt", "proxy",
                  "proxyauthmethod", "vcs", "serveroption", "partialclonefilter"}
REMOTE_BOOLEANS = {"skipdefaultupdate", "skipfetchall", "prune", "prunetags", "mirror", "promisor"}
BOOLEAN_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0", ""}
BRANCH_STRINGS = {"remote", "pushremote", "merge"}


class Config:
    """`git config -z --list --show-scope` of a repo: every value of a key, in order; a value-less key has None."""

    def __init__(self, entries: list[tuple[str, str, str | None]]) -> None:
        self.values: dict[str, list[str | None]] = {}
        self.scopes = {scope for scope, _, _ in entries}
        for _, key, value in entries:
            self.values.setdefault(key, []).append(value)

    @classmethod
    def parse(cls, data: bytes) -> Config | None:
        """None unless every entry is `scope`, then `key\nvalue` or a bare `key`, all UTF-8, and one of them is
        the repo's own (git ignores a repo it cannot use, and lists the rest all the same)."""
        entries = parse_listing(data)
        if entries is None:
            return None
        config = cls(entries)
        return config if "local" in config.scopes else None

    def last(self, key: str) -> str | None:
        """As `git config --get KEY` prints it (a value-less key prints an empty line), None when unset."""
        values = self.values.get(key)
        if not values:
            return None
        return values[-1] or ""

    def all(self, key: str) -> list[str]:
        """As `git config --get-all KEY` prints them."""
        return [value or "" for value in self.values.get(key, [])]

    def remotes(self) -> tuple[str, ...] | None:
        """The names `git remote` lists (sorted), or None when git might list others or fail on this config."""
        names = set()
        for key, values in self.values.items():
            if key.startswith("extensions."):
                return None  # another ref storage or object format: not ours to read
            section, dot, rest = key.partition(".")
            if section not in ("remote", "branch") or not dot:
                continue
            name, dot, variable = rest.rpartition(".")
            if not dot or not name:  # remote.pushdefault, say: no subsection
                if any(value is None for value in values):
                    return None
                continue
            if section == "branch":
                if variable in BRANCH_STRINGS and any(value is None for value in values):
                    return None
                continue
            if variable in ("fetch", "push"):
                if not all(value is not None and plain_refspec(value) for value in values):
                    return None  # git remote parses every refspec and dies on a bad one
            elif variable in REMOTE_STRINGS:
                if any(value is None for value in values):
                    return None
            elif variable not in REMOTE_BOOLEANS or any((value or "").lower() not in BOOLEAN_WORDS for value in values):
                return None
            if name.startswith("/") or not PLAIN_REFNAME.fullmatch(name):
                return None  # git warns and skips a '/' name; any odd one is git's to judge
            names.add(name)
        return tuple(sorted(names))


def plain_refname(name: str) -> bool:
    """True when `git check-ref-format NAME` accepts it for sure; False when git must judge it.

    Only letters, digits and `._+/-`, so the rules left to check are git's about dots, slashes and `.lock`.
    """
    if not PLAIN_REFNAME.fullmatch(name) or ".." in name or name.endswith((".", "/")) or "/" not in name:
        return False
    return all(part and not part.startswith(".") and not part.endswith(".lock") for part in name.split("/"))


def plain_refspec(spec: str) -> bool:
    """True when git surely parses this fetch/push refspec: `[+]src[:dst]` or `^src`, plain names, one `*` a side."""
    negative = spec.startswith("^")
    body = spec[1:] if negative or spec.startswith("+") else spec
    source, colon, destination = body.partition(":")
    if negative and (colon or body.startswith("+")):
        return False
    sides = [source, destination] if colon else [source]
    stars = [side.count("*") for side in sides]
    if any(count > 1 for count in stars) or (colon and stars[0] != stars[1]) or (colon and not destination):
        return False
    return all(plain_refname(side.replace("*", "x")) for side in sides)


def git_dirs(worktree: Path) -> tuple[Path, Path] | None:
    """(git dir, common dir) of a repo whose refs we can read: `locate`'s, except a reftable store (git's own)."""
    dirs = locate(worktree)
    return dirs if dirs is not None and files_refs(dirs[1]) else None


def files_refs(common_dir: Path) -> bool:
    """Whether refs (and reflogs, the stash's included) are plain files we can read, not a reftable store."""
    return not os.path.lexists(f"{common_dir}/reftable") and os.path.isdir(f"{common_dir}/refs")


def locate(worktree: Path) -> tuple[Path, Path] | None:
    """(git dir, common dir), as `git rev-parse --absolute-git-dir` and `--git-common-dir` (resolved) name them.

    None when in doubt: `.git` neither a directory nor a one-line `gitdir:` file (a FIFO there is never opened),
    no HEAD there, an odd commondir.
    """
    dot_git = f"{worktree}/.git"  # strings, not Paths, on sync's per-repo path: pathlib was most of its Python
    try:
        mode = os.lstat(dot_git).st_mode
        if stat.S_ISDIR(mode):
            git_dir = Path(os.path.realpath(dot_git))
        elif stat.S_ISREG(mode):
            text = _small_file(dot_git)
            match = re.fullmatch(rb"gitdir: ([^\0\n]+)\n", text or b"")
            if match is None:
                return None
            git_dir = Path(os.path.realpath(os.path.join(worktree, os.fsdecode(match.group(1)))))
        else:
            return None
        if not os.path.isfile(f"{git_dir}/HEAD"):
            return None
        common = git_dir
        if os.path.lexists(f"{git_dir}/commondir"):
            text = _small_file(f"{git_dir}/commondir")
            match = re.fullmatch(rb"([^\0\n]+)\n?", text or b"")
            if match is None:
                return None
            common = Path(os.path.realpath(os.path.join(git_dir, os.fsdecode(match.group(1)))))
        return git_dir, common
    except (OSError, ValueError):
        return None


def read_head(git_dir: Path, common_dir: Path) -> str | None:
    """HEAD as `git symbolic-ref -q HEAD` prints it ("" when detached), None when in doubt.

    A HEAD on a branch that is itself a symbolic ref is git's to follow.
    """
    text = _small_file(f"{git_dir}/HEAD")
    if text is None:
        return None
    if SHA1_LINE.fullmatch(text):
        return ""
    match = SYMREF_LINE.fullmatch(text)
    target = match.group(1).decode("ascii", "replace") if match else ""
    if not target.startswith("refs/heads/") or not plain_refname(target):
        return None
    try:
        mode = os.lstat(f"{common_dir}/{target}").st_mode
    except FileNotFoundError:
        return target  # an unborn or packed branch: a packed ref is never symbolic
    except OSError:
        return None
    return target if stat.S_ISREG(mode) and SHA1_LINE.fullmatch(_small_file(f"{common_dir}/{target}") or b"") else None


def read_ref(common_dir: Path, name: str) -> str | None:
    """The sha a branch or remote-tracking ref holds (loose, else packed), None when missing, symbolic or odd."""
    if not plain_refname(name) or not name.startswith(("refs/heads/", "refs/remotes/")):
        return None
    path = f"{common_dir}/{name}"
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return _packed_ref(common_dir, name)
    except OSError:
        return None
    if not stat.S_ISREG(mode):  # a directory (a D/F clash), a symlink (an old-style symref): git's to read
        return None
    text = _small_file(path)
    match = SHA1_LINE.fullmatch(text or b"")
    return match.group(1).decode() if match else None


def is_commit(common_dir: Path, sha: str) -> bool:
    """True when the object is in the repo's own store (loose, or whole in a v2-indexed pack) and is a commit.

    False means "not sure" (a tag to peel, a delta, an alternate, a replace ref): ask git.
    """
    if not re.fullmatch(r"[0-9a-f]{40}", sha) or _replaced(common_dir):
        return False  # a replaced object's type is the replacement's
    objects = common_dir / "objects"
    try:
        try:
            with regular_file(f"{objects}/{sha[:2]}/{sha[2:]}") as fd:
                head = zlib.decompressobj().decompress(os.pread(fd, 256, 0), 32)
        except FileNotFoundError:
            return _packed_commit(objects / "pack", bytes.fromhex(sha))
        return re.match(rb"commit [0-9]+\0", head) is not None
    except (OSError, zlib.error, ValueError, struct.error, IndexError):
        return False


def _packed_commit(pack_dir: Path, oid: bytes) -> bool:
    """Whether the entry git would read for `oid` (gitobjects finds it as it finds a commit to read) is a whole commit."""
    found = packed_entry(pack_dir, oid)
    if found is None:
        return False
    with regular_file(found[0]) as fd:
        first = os.pread(fd, 1, found[1])
    return len(first) == 1 and first[0] >> 4 & 7 == PACK_COMMIT


def _packed_ref(common_dir: Path, name: str) -> str | None:
    packed = _packed_refs(common_dir)
    return None if packed is None else packed.get(name)


def _small_file(path: Path | str, limit: int = MAX_REF_FILE) -> bytes | None:
    """A ref-sized regular file's bytes, never through a symlink (git's to follow); None when missing, odd or big."""
    return read_small(path, limit, follow_symlinks=False)


def ahead_behind(common_dir: Path, local: str, upstream: str, limit: int = WALK_LIMIT) -> tuple[int, int] | None:
    """(ahead, behind) as `git rev-list --left-right --count LOCAL...UPSTREAM` counts them, when one is an
    ancestor of the other within `limit` commits; None otherwise (diverged, far apart, or in doubt: ask git)."""
    if local == upstream:
        return 0, 0
    if _replaced(common_dir) or any(os.path.lexists(f"{common_dir}/{odd}") for odd in ("shallow", "info/grafts")):
        return None  # parents that rev-list would see differently
    objects = common_dir / "objects"
    walks = {"ahead": _walk(objects, local, upstream, limit), "behind": _walk(objects, upstream, local, limit)}
    while walks:  # a commit from each side in turn: the one that descends from the other ends first
        for side, walk in list(walks.items()):
            try:
                next(walk)
            except StopIteration as end:
                if end.value is not None:
                    return (end.value, 0) if side == "ahead" else (0, end.value)
                del walks[side]
    return None


def _walk(objects: Path, tip: str, base: str, limit: int) -> Generator[None, None, int | None]:
    """Yields once per commit read; returns how many commits `tip` has that `base` lacks, if every path
    down from `tip` meets `base`, else None.

    Every commit the walk passes has `base` below it on each of its paths, so none of them
    is an ancestor of `base` (the history has no cycles), and each commit `tip` has that
    `base` lacks is on a path the walk follows: the count is exactly git's.
    """
    seen: set[str] = set()
    pending = [tip]
    while pending:
        sha = pending.pop()
        if sha == base or sha in seen:
            continue
        if len(seen) >= limit:
            return None
        yield
        parents = _parents(objects, sha)
        if not parents:  # a root below which `base` is not, or a commit not read for sure
            return None
        seen.add(sha)
        pending.extend(parents)
    return len(seen)


def remote_tips(common_dir: Path) -> set[str] | None:
    """The commits the remote-tracking refs hold (where `git rev-list --remotes` starts), None when in doubt.

    Loose refs under refs/remotes/ and the packed ones no loose ref hides. A symbolic ref (origin/HEAD) counts
    when it names one of them; anything odd (a symlink, a name or line git might read otherwise, a dangling
    symbolic ref, more than REMOTE_TIPS_LIMIT refs) is git's to read.
    """
    root = f"{common_dir}/refs/remotes"
    tips: dict[str, str] = {}
    symbolic: dict[str, str] = {}
    try:
        if os.path.lexists(root) and not stat.S_ISDIR(os.lstat(root).st_mode):
            return None
        for directory, subdirectories, files in os.walk(root, onerror=_raise) if os.path.lexists(root) else ():
            if any(os.path.islink(f"{directory}/{sub}") for sub in subdirectories):
                return None  # a symlinked directory: git follows it, os.walk does not
            for file in files:
                name = os.path.relpath(f"{directory}/{file}", common_dir)
                text = _small_file(f"{directory}/{file}")
                if text is None or not plain_refname(name) or len(tips) + len(symbolic) >= REMOTE_TIPS_LIMIT:
                    return None
                sha, symref = SHA1_LINE.fullmatch(text), SYMREF_LINE.fullmatch(text)
                if sha is not None:
                    tips[name] = sha.group(1).decode()
                elif symref is not None:
                    symbolic[name] = symref.group(1).decode("ascii", "replace")
                else:
                    return None
    except OSError:
        return None
    packed = _packed_refs(common_dir)
    if packed is None:
        return None
    for name, sha in packed.items():
        if name.startswith("refs/remotes/") and name not in tips and name not in symbolic:
            tips[name] = sha
    if len(tips) + len(symbolic) > REMOTE_TIPS_LIMIT or any(target not in tips for target in symbolic.values()):
        return None
    return set(tips.values())


def _raise(err: OSError) -> None:
    raise err


def _packed_refs(common_dir: Path) -> dict[str, str] | None:
    """Every packed ref -> its sha ({} when there is no packed-refs file), None when in doubt (a line git might
    read otherwise)."""
    if not os.path.lexists(f"{common_dir}/packed-refs"):
        return {}
    text = _small_file(f"{common_dir}/packed-refs", MAX_PACKED_REFS)
    if text is None or (text and not text.endswith(b"\n")):
        return None
    found: dict[str, str] = {}
    for number, line in enumerate(text.split(b"\n")[:-1]):
        if number == 0 and line.startswith(PACKED_HEADER):
            continue
        match = PACKED_LINE.fullmatch(line)
        if match is None:
            if PEELED_LINE.fullmatch(line) and number > 0:
                continue
            return None
        found[match.group(2).decode("ascii", "replace")] = match.group(1).decode()
    return found


def reflog_values(common_dir: Path, name: str, count: int) -> list[str] | None:
    """The commits the newest `count` entries of a remote-tracking ref's reflog recorded, as
    `git log -g --format=%H -n COUNT NAME` names them ([] without a reflog); None when in doubt."""
    if not plain_refname(name) or not name.startswith("refs/remotes/"):
        return None
    path = f"{common_dir}/logs/{name}"
    if not os.path.lexists(path):
        return []
    text = _small_file(path, MAX_REFLOG)
    if text is None or (text and not text.endswith(b"\n")):
        return None
    values = []
    for line in text.split(b"\n")[:-1]:  # every line: one git skips moves which entries are the newest `count`
        match = REFLOG_LINE.fullmatch(line)
        if match is None or match.group(1) == b"0" * 40:
            return None
        values.append(match.group(1).decode())
    return values[-count:] if count > 0 else []


def all_below(common_dir: Path, tip: str, shas: set[str], limit: int = WALK_LIMIT) -> bool:
    """True when every commit in `shas` is `tip` or one of its ancestors, met within `limit` commits of a walk
    down from `tip`; False when not met (then git must say: a commit elsewhere, far below, or not read)."""
    wanted = set(shas) - {tip}
    if not wanted:
        return True
    if _replaced(common_dir) or any(os.path.lexists(f"{common_dir}/{odd}") for odd in ("shallow", "info/grafts")):
        return False
    objects = common_dir / "objects"
    seen = {tip}
    pending = [tip]
    while pending and len(seen) <= limit:
        parents = _parents(objects, pending.pop(0))
        if parents is None:
            return False
        for parent in parents:
            wanted.discard(parent)
            if parent not in seen:
                seen.add(parent)
                pending.append(parent)
        if not wanted:
            return True
    return False


def _replaced(common_dir: Path) -> bool:
    """Whether replace refs may exist (loose or packed): git would see some objects as others."""
    if os.path.lexists(f"{common_dir}/refs/replace"):
        return True
    if not os.path.lexists(f"{common_dir}/packed-refs"):
        return False
    packed = _small_file(f"{common_dir}/packed-refs", MAX_PACKED_REFS)
    return packed is None or b" refs/replace/" in packed


def _parents(objects: Path, sha: str) -> list[str] | None:
    """A commit's parents from the object store (checked against its name), None when not read for sure."""
    from lib.gitobjects import COMMIT_START, read_commit_body

    body = read_commit_body(objects, sha)
    if body is None:
        return None
    start = COMMIT_START.match(body)
    if start is None or body.startswith(b"parent ", start.end()):
        return None
    return [line[7:].decode() for line in body[:start.end()].split(b"\n") if line.startswith(b"parent ")]
