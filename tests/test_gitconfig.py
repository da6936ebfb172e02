"""lib.gitconfig reads a repo's config file as git does, or leaves it to git: never a value git reads otherwise.

Every file here, curated and generated, is read by `git config --file F -z --list` too: the parser must
give the same entries in the same order, or None ("ask git"); where git refuses the file it must give None.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from lib import gitconfig

ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"}

CURATED = [
    b"",
    b"\n\n  \t\n",
    b"[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n"
    b'[remote "origin"]\n\turl = /srv/git/a.git\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n'
    b'[branch "main"]\n\tremote = origin\n\tmerge = refs/heads/main\n',
    b"[Core]\n\tBare\n\tFileMode=TRUE\n",
    b'[Remote "Origin"]\nURL = x\n',
    b"[core] bare = true\n",
    b"[core]bare=true[x]\n",
    b'[a][b "c"] k = v\n',
    b"[a]\nk = v # comment\nl = w;comment\nm = spaced   words\there\n",
    b"[a]\nk =   \n",
    b"[a]\nk =\n",
    b"[a]\nk\n",
    b"[a]\nk   \n",
    b"[a]\n# k = v\n; l = w\n",
    b"[a]\n  k = v\n",
    b"[a]\nk = v",
    b'[a]\nk = "quoted"\n',
    b'[a]\nk = x # "quoted in a comment"\n',
    b"[a]\nk = back\\slash\n",
    b"[a]\nk = line \\\n continued\n",
    b"[a]\r\nk = v\r\n",
    b"\xef\xbb\xbf[a]\nk = v\n",
    b"k = v\n",
    b"[a.b]\nk = v\n",
    b"[a \"b\" ]\nk = v\n",
    b"[ a]\nk = v\n",
    b"[a ]\nk = v\n",
    b"[]\nk = v\n",
    b"[a]\n1k = v\n",
    b"[a]\nk_1 = v\n",
    b"[a]\nk-1 = v\n",
    b"[a]\nk # c\n",
    b"[a]\nk ; c\n",
    b"[a]\nk junk\n",
    b"[a]\nk = caf\xc3\xa9\n",
    b"[a]\nk = \xff\n",
    b'[a "sub section ] # x"]\nk = v\n',
    b'[a "caf\xc3\xa9"]\nk = v\n',
    b"[include]\npath = other\n",
    b'[includeIf "gitdir:/x/"]\npath = other\n',
    b"[IncLude]\npath = other\n",
    b"[a]\nk = v\x00\n",
    b"[a]\nk = v\x0b\n",
    b"[a]\nk = a = b\n",
    b"[a]\nk = [x]\n",
    b"[a]\n]\n",
    b"[a\n",
    b"[a]]\n",
]


def git_reads(path: Path) -> list[tuple[str, str | None]] | None:
    """What `git config --file PATH -z --list` lists, None when git refuses the file."""
    result = subprocess.run(["git", "config", "--file", str(path), "-z", "--list"], env=ENV, capture_output=True)
    if result.returncode != 0:
        return None
    entries: list[tuple[str, str | None]] = []
    for raw in result.stdout.split(b"\0")[:-1]:
        key, newline, value = raw.partition(b"\n")
        entries.append((key.decode("utf-8", "surrogateescape"),
                        value.decode("utf-8", "surrogateescape") if newline else None))
    return entries


def check(data: bytes, path: Path) -> bool:
    """Assert the parser agrees with git on `data`; True when the parser read it (not in doubt)."""
    path.write_bytes(data)
    ours = gitconfig.parse_file(data)
    theirs = git_reads(path)
    if ours is not None:
        assert theirs is not None, f"git refuses {data!r}, the parser read {ours}"
        assert ours == theirs, f"{data!r}: parser {ours}, git {theirs}"
    return ours is not None


@pytest.mark.parametrize("data", CURATED, ids=[repr(d[:40]) for d in CURATED])
def test_curated_files_read_as_git_reads_them_or_left_to_git(data, tmp_path):
    check(data, tmp_path / "config")


def test_the_configs_git_writes_are_read_without_git(tmp_path):
    """The fast path is taken for what clone, branch --set-upstream and remote add write."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], env=ENV, check=True)
    for args in (["remote", "add", "origin", "/srv/a.git"], ["remote", "add", "fork", "git@example.com:me/a.git"],
                 ["config", "branch.main.remote", "origin"], ["config", "branch.main.merge", "refs/heads/main"],
                 ["config", "--add", "remote.origin.fetch", "+refs/pull/*/head:refs/remotes/origin/pr/*"],
                 ["config", "user.name", "Dana Q. Tester"], ["config", "core.hooksPath", ".githooks"]):
        subprocess.run(["git", "-C", str(repo), *args], env=ENV, check=True)
    assert check((repo / ".git" / "config").read_bytes(), tmp_path / "copy")


PIECES = ["[", "]", '"', "\\", "#", ";", "=", " ", "\t", "\n", "\r", ".", "-", "_", "a", "B", "k", "1", "é",
          "\x0b", "\x00", "x y"]


def generated(rng: random.Random) -> bytes:
    """A config file of plausible lines (mostly what git writes), some with odd pieces, some damaged."""
    lines = []
    for number in range(rng.randint(1, 6)):
        if number == 0 or rng.random() < 0.3:
            name = rng.choice(["core", "Remote", "branch", "a-b", "x1", "core", "remote", "branch",
                               "include", "includeIf", "a.b", ""])
            sub = rng.choice([None, None, "origin", "Main", "with space", "semi;colon", "hash#", "br]acket", "q\"t",
                              "é"])
            gap = rng.choice([" ", " ", "  ", "\t", ""])
            lines.append(f"[{name}]" if sub is None else f'[{name}{gap}"{sub}"]')
        else:
            key = rng.choice(["url", "Fetch", "merge", "k-1", "bare", "url", "remote", "1x", "_k", "k k"])
            value = "".join(rng.choice(["v", "refs/heads/*", "v", "x.git", " ", "\t", "#c", ";c", "é", "=", "[x]",
                                        '"q"', "\\"]) for _ in range(rng.randint(0, 5)))
            separator = rng.choice([" = ", " = ", "=", "\t=\t", "", " "])
            lines.append(rng.choice(["", "\t", "\t", " "]) + key + (separator + value if separator.strip() else separator))
        if rng.random() < 0.1:
            line = lines[-1]
            at = rng.randint(0, len(line))
            lines[-1] = line[:at] + rng.choice(PIECES) + line[at:]
    return ("\n".join(lines) + rng.choice(["\n", "\n", "", "\r\n"])).encode("utf-8", "surrogatepass")


def test_generated_files_read_as_git_reads_them_or_left_to_git(tmp_path):
    rng = random.Random(2126)
    read = sum(check(generated(rng), tmp_path / "config") for _ in range(1000))
    # About 30% of these files are ones git reads, and the parser reads about 40% of those: enough of
    # its accepting paths are compared with git (and the clean configs git writes are read: above).
    assert read >= 80, f"the parser read only {read} of 1000 files: the comparison would prove little"


@pytest.mark.parametrize("name", gitconfig.RELATIVE_TO_REPO)
def test_a_config_location_relative_to_the_repo_leaves_every_listing_to_git(name):
    """git takes a relative XDG_CONFIG_HOME (GIT_CONFIG_GLOBAL, ...) from the repo it runs in: one listing
    made elsewhere would miss what each repo's git reads."""
    def read(args, env):
        raise AssertionError("no listing is made for the run")

    assert gitconfig.run_listing({**ENV, name: "."}, read) is None


def test_a_repo_with_extensions_is_listed_by_git(tmp_path):
    """extensions.worktreeConfig adds config.worktree, which the file reader does not read: git lists it."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], env=ENV, check=True)
    git_dir = repo / ".git"
    base = []
    assert gitconfig.repo_listing(base, git_dir, git_dir, repo, ENV) is not None
    subprocess.run(["git", "-C", str(repo), "config", "extensions.worktreeConfig", "true"], env=ENV, check=True)
    assert gitconfig.repo_listing(base, git_dir, git_dir, repo, ENV) is None
