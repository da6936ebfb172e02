"""A repo's own config file read the way git reads it, for the plain files most repos have; None when in doubt.

Sync needs a repo's config (the branch's upstream, the remotes and their fetch
refspecs) and used to start `git config --list` in every repo for it. What is
the same for every repo of a run (system and global config, which may include
other files) is listed by git once per run (`run_listing`), outside any repo;
each repo's own `config` file is then parsed here, and the two together are
what `git config -z --list --show-scope` would list in that repo.

The parser accepts only a strict subset of git's grammar and answers None
("ask git") for anything beyond it, so it can never read a value git reads
otherwise: quotes, backslashes (escapes, continued lines), carriage returns
and other control characters, a byte-order mark, the old `[section.sub]`
headers, a key before any section, include and includeIf sections, bytes
that are not UTF-8, a file over 64 KiB. The same goes for the run: an
includeIf anywhere in the system or global config (its condition depends on
the repo), or a scope other than system and global. tests/test_gitconfig.py
compares this parser with `git config --file` on thousands of generated files.
Within that subset git's rules are kept exactly: section and key names are
case-insensitive (lowercased), subsections are not; a `#` or `;` starts a
comment anywhere, a value's leading and trailing blanks go, and each blank
inside becomes one space (a tab too); a key without `=` has no value.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from lib.statefile import read_small

MAX_CONFIG = 64 * 1024
HEADER = re.compile(r'\[([A-Za-z0-9-]+)(?:[ \t]+"([^"\\]*)")?\]')
KEY = re.compile(r"([A-Za-z][A-Za-z0-9-]*)[ \t]*(=|$)")
# Bytes left to git anywhere: control characters but tab and newline (a carriage return, a NUL), DEL, and
# backslashes (escapes, continued lines). A quote is read only around a header's subsection.
ODD_BYTES = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f\\]")
# Where git finds the system and global config: relative values are taken from the directory git runs in.
RELATIVE_TO_REPO = ("HOME", "XDG_CONFIG_HOME", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM")
Entry = tuple[str, str, "str | None"]  # (scope, key, value): None for a key without `=`


def parse_file(data: bytes) -> list[tuple[str, str | None]] | None:
    """(key, value) pairs as `git config --file F -z --list` lists them, or None when git must read the file."""
    if data.startswith(b"\xef\xbb\xbf") or ODD_BYTES.search(data):
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    entries: list[tuple[str, str | None]] = []
    section: str | None = None
    for line in text.split("\n"):
        rest = line.lstrip(" \t")
        while rest and rest[0] == "[":  # a header, maybe followed by more on the same line
            header = HEADER.match(rest)
            if header is None:
                return None
            name = header.group(1).lower()
            if name in ("include", "includeif"):
                return None  # git reads other files (maybe on conditions): its own listing says what
            section = name if header.group(2) is None else f"{name}.{header.group(2)}"
            rest = rest[header.end():].lstrip(" \t")
        if not rest or rest[0] in "#;":
            continue
        key = KEY.match(rest)
        if key is None or section is None or '"' in rest:
            return None  # not a key line git would read, or one before any section
        full = f"{section}.{key.group(1).lower()}"
        if not key.group(2):
            entries.append((full, None))
            continue
        value = re.split(r"[#;]", rest[key.end():], maxsplit=1)[0]
        entries.append((full, value.strip(" \t").replace("\t", " ")))
    return entries


def run_listing(env: Mapping[str, str], read: Callable[[list[str], Mapping[str, str]], tuple[int, bytes, bytes]]
                ) -> list[Entry] | None:
    """What every repo of the run lists before its own config (system, global, and what they include), or None
    when a repo's listing could differ from it plus the repo's file (an includeIf, another scope).

    `read(argv, env)` runs git and gives (exit code, stdout, stderr). Git runs in a new empty directory with
    discovery stopped there (GIT_CEILING_DIRECTORIES), so no repo around it adds its config. None too when
    HOME, XDG_CONFIG_HOME, GIT_CONFIG_GLOBAL or GIT_CONFIG_SYSTEM is a relative path (git takes it from the
    repo it runs in). OSError when git or the directory cannot be made at all.
    """
    if any(env.get(name) and not os.path.isabs(env[name]) for name in RELATIVE_TO_REPO):
        return None  # git reads these from the repo's top directory: each repo's listing may differ
    with tempfile.TemporaryDirectory(prefix="orchestrator-config-") as empty:
        ceiling = os.path.dirname(os.path.realpath(empty))
        code, out, err = read(["git", "-C", empty, "config", "-z", "--list", "--show-scope"],
                              {**env, "GIT_CEILING_DIRECTORIES": ceiling})
    entries = parse_listing(out) if code == 0 and not err else None
    if entries is None or any(scope not in ("system", "global") or key.startswith("includeif.")
                              for scope, key, _ in entries):
        return None
    return entries


def parse_listing(data: bytes) -> list[Entry] | None:
    """The entries of a `git config -z --list --show-scope` output: `scope`, then `key\nvalue` or a bare `key`
    (no value), all UTF-8; None when it is anything else."""
    if data and not data.endswith(b"\0"):
        return None
    fields = data.split(b"\0")[:-1]
    if len(fields) % 2:
        return None
    entries: list[Entry] = []
    for scope, raw in zip(fields[0::2], fields[1::2]):
        key, newline, value = raw.partition(b"\n")
        try:
            entries.append((scope.decode(), key.decode(), value.decode() if newline else None))
        except UnicodeDecodeError:
            return None
    return entries


def repo_listing(base: list[Entry], git_dir: Path, common_dir: Path, worktree: Path,
                 env: Mapping[str, str]) -> list[Entry] | None:
    """`git config -z --list --show-scope` of one repo as entries: the run's, then its own file's; None in doubt.

    In doubt, besides what parse_file leaves to git: a repo git would refuse for its owner (every directory
    it checks must be ours, and sudo's SUDO_UID, which git honours for root, must be unset), a config that is
    missing, a symlink or not a regular file, and a repository format version other than 0 or 1.
    """
    uid = os.geteuid()
    if (uid == 0 and "SUDO_UID" in env) or "GIT_TEST_ASSUME_DIFFERENT_OWNER" in env:
        return None
    try:
        if any(os.stat(path).st_uid != uid for path in (worktree, git_dir, common_dir)) \
                or os.lstat(f"{worktree}/.git").st_uid != uid:
            return None
        if not stat.S_ISREG(os.lstat(f"{common_dir}/config").st_mode):
            return None
    except OSError:
        return None
    data = read_small(f"{common_dir}/config", MAX_CONFIG, follow_symlinks=False)
    own = None if data is None else parse_file(data)
    if own is None:
        return None
    versions = [value for key, value in own if key == "core.repositoryformatversion"]
    if versions and versions[-1] not in ("0", "1"):
        return None
    if any(key.startswith("extensions.") for key, _ in own):
        return None  # a worktree config (extensions.worktreeConfig), another object format: git's to list
    return [*base, *(("local", key, value) for key, value in own)]
