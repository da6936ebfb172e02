"""lib.gitrefs answers what git answers, or None ("ask git"): each case compared with the real git."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lib.gitrefs import (Config, ahead_behind, all_below, git_dirs, is_commit, plain_refname, read_head, read_ref,
                         reflog_values, remote_tips)
from tests.conftest import git


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", str(path))
    git(path, "commit", "-q", "--allow-empty", "-m", "initial")
    return path


def commit(repo: Path) -> str:
    # Distinct messages: two empty commits on one parent in one second would be one object.
    git(repo, "commit", "-q", "--allow-empty", "-m", f"commit {len(list((repo / '.git').rglob('*')))}")
    return git(repo, "rev-parse", "HEAD")


def git_rev(repo: Path, name: str) -> str | None:
    result = run(repo, "rev-parse", "-q", "--verify", f"{name}^{{commit}}")
    return result.stdout.strip() if result.returncode == 0 else None


# --- refnames: True only where `git check-ref-format` agrees ------------------------------------------------

REFNAMES = ["refs/heads/main", "refs/heads/feature/x-1", "refs/heads/v1.2_3+b", "refs/heads/a.b/c",
            "refs/heads/.hidden", "refs/heads/x.lock", "refs/heads/a..b", "refs/heads/end.", "refs/heads/end/",
            "refs/heads//double", "refs/heads/sp ace", "refs/heads/ti~lde", "refs/heads/ca^ret", "refs/heads/co:lon",
            "refs/heads/q?", "refs/heads/st*r", "refs/heads/br[ack", "refs/heads/back\\slash", "refs/heads/at@{x",
            "refs/heads/@", "refs/heads/ünï", "refs/heads/a.lock/b", "refs/heads/-dash", "main", "refs/heads/a\tb",
            "refs/heads/x/.y", "/refs/heads/x", "refs/heads/@x", "refs/heads/x@"]


@pytest.mark.parametrize("name", REFNAMES)
def test_a_refname_taken_as_plain_is_one_git_accepts(tmp_path, name):
    accepted = run(tmp_path, "check-ref-format", name).returncode == 0
    if plain_refname(name):
        assert accepted, f"{name!r} is not a valid refname to git"
    if name in ("refs/heads/main", "refs/heads/feature/x-1", "refs/heads/v1.2_3+b", "refs/heads/a.b/c",
                "refs/heads/-dash"):
        assert plain_refname(name), "a usual branch name needs no git"


# --- git dirs ------------------------------------------------------------------------------------------------

def git_says_dirs(path: Path) -> tuple[Path, Path]:
    out = git(path, "rev-parse", "--absolute-git-dir", "--git-common-dir").splitlines()
    return Path(out[0]), (path / out[1]).resolve()


def test_git_dirs_of_a_repo_through_a_symlink_and_of_a_linked_worktree(repo, tmp_path):
    assert git_dirs(repo) == git_says_dirs(repo)
    (tmp_path / "link").symlink_to(repo)
    assert git_dirs(tmp_path / "link") == git_says_dirs(tmp_path / "link")
    git(repo, "worktree", "add", "-q", "-b", "side", str(tmp_path / "wt"))
    assert git_dirs(tmp_path / "wt") == git_says_dirs(tmp_path / "wt")
    assert git_dirs(tmp_path / "wt")[1] == repo / ".git"


def test_git_dirs_through_a_relative_gitdir_file(repo, tmp_path):
    moved = tmp_path / "elsewhere.git"
    (repo / ".git").rename(moved)
    (repo / ".git").write_text("gitdir: ../elsewhere.git\n")
    assert git_dirs(repo) == git_says_dirs(repo)


@pytest.mark.parametrize("odd", ["gitdir file with two lines", "gitdir file without gitdir:", "no HEAD",
                                 "reftable", "empty commondir", ".git a symlink", ".git a fifo"])
def test_git_dirs_in_doubt_is_none(repo, tmp_path, odd):
    dot_git = repo / ".git"
    if odd == "gitdir file with two lines":
        dot_git.rename(tmp_path / "moved.git")
        dot_git.write_text(f"gitdir: {tmp_path / 'moved.git'}\nmore\n")
    elif odd == "gitdir file without gitdir:":
        dot_git.rename(tmp_path / "moved.git")
        dot_git.write_text(f"{tmp_path / 'moved.git'}\n")
    elif odd == "no HEAD":
        (dot_git / "HEAD").unlink()
    elif odd == "reftable":
        (dot_git / "reftable").mkdir()
    elif odd == "empty commondir":
        (dot_git / "commondir").write_text("")
    elif odd == ".git a symlink":
        dot_git.rename(tmp_path / "moved.git")
        dot_git.symlink_to(tmp_path / "moved.git")
    else:
        dot_git.rename(tmp_path / "moved.git")
        os.mkfifo(dot_git)
    assert git_dirs(repo) is None


def test_the_scans_stash_count_and_commit_read_use_the_git_dir_git_uses(repo, tmp_path):
    """One reader of `.git` and `commondir` for sync and the scan: the scan's reader took `gitdir: X \n` as `X`
    (git keeps the blank: it strips only line ends), missed the stash there and said 0 stashes."""
    from lib.config import Repo
    from lib.gitstatus import scan

    (repo / "f.txt").write_text("1\n")
    git(repo, "add", "f.txt")
    git(repo, "commit", "-q", "-m", "f")
    (repo / "f.txt").write_text("2\n")
    git(repo, "stash", "-q")
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "side", str(worktree))
    admin = repo / ".git" / "worktrees" / "wt"
    admin.rename(admin.with_name("wt "))
    (worktree / ".git").write_text(f"gitdir: {admin.with_name('wt ')}\n")
    assert run(worktree, "rev-parse", "--absolute-git-dir").stdout == f"{admin} \n"  # git keeps the blank
    assert len(git(worktree, "stash", "list").splitlines()) == 1
    row = scan([Repo("wt", worktree)]).repos[0]
    assert row.error is None and row.branch == "side", row
    assert row.stashes in (1, None), f"the scan says {row.stashes} stashes, git lists 1"
    assert git_dirs(worktree) in (None, git_says_dirs(worktree))


def test_a_reftable_store_keeps_the_scans_operation_and_lock_and_leaves_only_the_stash_count_unknown(repo):
    """Refs in a reftable store are git's to read (sync asks git), but the git dir is still where git keeps an
    operation under way and the index lock: the scan never says "no merge" for a repo mid-merge because its refs
    are not plain files, and never counts stashes from a reflog git does not keep there."""
    from lib.config import Repo
    from lib.gitrefs import locate
    from lib.gitstatus import scan

    (repo / "f.txt").write_text("1\n")
    git(repo, "add", "f.txt")
    git(repo, "commit", "-q", "-m", "f")
    git(repo, "checkout", "-q", "-b", "side", "HEAD~1")
    (repo / "f.txt").write_text("2\n")
    git(repo, "add", "f.txt")
    git(repo, "commit", "-q", "-m", "side f")
    assert run(repo, "merge", "-q", "main").returncode != 0  # a conflict: MERGE_HEAD left
    (repo / ".git" / "reftable").mkdir()
    assert git_dirs(repo) is None and locate(repo) == git_says_dirs(repo)
    row = scan([Repo("r", repo)]).repos[0]
    assert row.operation == "merge" and row.stashes is None, row


# --- HEAD ----------------------------------------------------------------------------------------------------

def git_says_head(path: Path) -> str:
    return run(path, "symbolic-ref", "-q", "HEAD").stdout.strip()


def head_of(path: Path) -> str | None:
    dirs = git_dirs(path)
    assert dirs is not None
    return read_head(*dirs)


def test_head_on_a_branch_detached_unborn_and_packed(repo):
    assert head_of(repo) == git_says_head(repo) == "refs/heads/main"
    git(repo, "checkout", "-q", "--detach")
    assert head_of(repo) == git_says_head(repo) == ""
    git(repo, "checkout", "-q", "--orphan", "unborn")
    assert head_of(repo) == git_says_head(repo) == "refs/heads/unborn"
    git(repo, "checkout", "-q", "main")
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert head_of(repo) == git_says_head(repo) == "refs/heads/main"


@pytest.mark.parametrize("content", ["ref: refs/heads/main", "ref:  refs/heads/main\n", "ref: refs/tags/v1\n",
                                     "ref: refs/heads/sp ace\n", "0" * 39 + "\n", "A" * 40 + "\n", ""])
def test_head_in_doubt_is_none(repo, content):
    (repo / ".git" / "HEAD").write_text(content)
    assert head_of(repo) is None


def test_head_on_a_branch_that_is_a_symbolic_ref_is_left_to_git(repo):
    git(repo, "symbolic-ref", "refs/heads/alias", "refs/heads/main")
    git(repo, "symbolic-ref", "HEAD", "refs/heads/alias")
    assert git_says_head(repo) == "refs/heads/main"  # git follows it: not ours to guess
    assert head_of(repo) is None


# --- refs ----------------------------------------------------------------------------------------------------

def ref_of(path: Path, name: str) -> str | None:
    dirs = git_dirs(path)
    assert dirs is not None
    return read_ref(dirs[1], name)


def test_loose_and_packed_refs_read_as_git_reads_them(repo):
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "-a", "-m", "annotated", "v1")  # a peeled line in packed-refs
    git(repo, "update-ref", "refs/remotes/origin/main", first)
    second = commit(repo)
    git(repo, "pack-refs", "--all")
    third = commit(repo)  # main loose again, over its packed entry
    assert ref_of(repo, "refs/heads/main") == git_rev(repo, "refs/heads/main") == third != second
    assert ref_of(repo, "refs/remotes/origin/main") == git_rev(repo, "refs/remotes/origin/main") == first
    assert "^" in (repo / ".git" / "packed-refs").read_text()


def test_a_worktree_reads_the_shared_refs(repo, tmp_path):
    git(repo, "worktree", "add", "-q", "-b", "side", str(tmp_path / "wt"))
    assert ref_of(tmp_path / "wt", "refs/heads/main") == git_rev(tmp_path / "wt", "refs/heads/main")


@pytest.mark.parametrize("odd", ["missing", "symbolic", "directory", "uppercase sha", "no newline",
                                 "packed line without a ref", "packed-refs without a final newline", "a tag ref",
                                 "a name git must judge", "a symlink"])
def test_ref_in_doubt_is_none(repo, odd):
    refs = repo / ".git" / "refs"
    sha = git(repo, "rev-parse", "HEAD")
    name = "refs/heads/x"
    if odd == "symbolic":
        git(repo, "symbolic-ref", name, "refs/heads/main")
    elif odd == "directory":
        git(repo, "update-ref", "refs/heads/x/y", sha)
    elif odd == "uppercase sha":
        (refs / "heads" / "x").write_text(sha.upper() + "\n")
    elif odd == "no newline":
        (refs / "heads" / "x").write_text(sha)
    elif odd == "packed line without a ref":
        (repo / ".git" / "packed-refs").write_text(f"{sha} refs/heads/y\n{sha}\n")
    elif odd == "packed-refs without a final newline":
        (repo / ".git" / "packed-refs").write_text(f"{sha} refs/heads/x")
    elif odd == "a tag ref":
        git(repo, "tag", "x")
        name = "refs/tags/x"
    elif odd == "a name git must judge":
        name = "refs/heads/../../HEAD"
    elif odd == "a symlink":
        (refs / "heads" / "x").symlink_to(refs / "heads" / "main")
    assert ref_of(repo, name) is None


# --- objects -------------------------------------------------------------------------------------------------

def test_is_commit_loose_packed_and_other_types(repo):
    common = repo / ".git"
    loose = commit(repo)
    assert is_commit(common, loose)
    git(repo, "gc", "-q")
    assert not (common / "objects" / loose[:2] / loose[2:]).exists()
    assert is_commit(common, loose)
    git(repo, "tag", "-a", "-m", "t", "v1")
    assert not is_commit(common, git(repo, "rev-parse", "v1"))  # a tag: git peels it, we do not
    assert not is_commit(common, git(repo, "rev-parse", "HEAD^{tree}"))
    assert not is_commit(common, "0" * 40)
    git(repo, "replace", "-f", loose, git(repo, "rev-parse", "HEAD~1"))
    assert not is_commit(common, loose)  # a replace ref: git's to apply


def test_is_commit_finds_a_packed_object_where_the_commit_reader_does(repo):
    """One lookup of a packed object (gitobjects.packed_entry) for the type check and the commit read:
    a commit in the second of two packs, and a pack whose data file is gone (in doubt: git's)."""
    from lib.gitobjects import read_commit_body

    common = repo / ".git"
    first = git(repo, "rev-parse", "HEAD")
    second = commit(repo)
    for sha in (first, second):
        subprocess.run(["git", "pack-objects", "-q", str(common / "objects" / "pack" / "pack")], cwd=repo,
                       input=f"{sha}\n", text=True, check=True, capture_output=True)
        git(repo, "prune-packed")
    assert len(list((common / "objects" / "pack").glob("*.idx"))) == 2
    for sha in (first, second):
        assert is_commit(common, sha) and read_commit_body(common / "objects", sha) is not None
    for data in (common / "objects" / "pack").glob("*.pack"):
        data.unlink()
    assert not is_commit(common, second) and read_commit_body(common / "objects", second) is None


# --- config --------------------------------------------------------------------------------------------------

def config_of(path: Path) -> Config | None:
    listed = subprocess.run(["git", "config", "-z", "--list", "--show-scope"], cwd=path, capture_output=True)
    assert listed.returncode == 0
    return Config.parse(listed.stdout)


CONFIG_TEXT = """
[branch "main"]
\tremote = origin
\tmerge = refs/heads/main
[branch "Main"]
\tremote = " spaced "
[branch.Old]
\tremote = up
[remote "origin"]
\turl = /somewhere
\tfetch = +refs/heads/*:refs/remotes/origin/*
\tfetch = +refs/pull/*:refs/remotes/origin/pull/*
\tfetch = ^refs/heads/skip
\tprune = true
[remote "only-prune"]
\tprune = off
[remote "a.b"]
\turl = /x
[remote]
\tpushDefault = origin
[include]
\tpath = extra.inc
"""


def test_config_values_and_remotes_as_git_gives_them(repo):
    (repo / ".git" / "config").open("a").write(CONFIG_TEXT)
    (repo / ".git" / "extra.inc").write_text('[branch "main"]\n\tremote = included\n')
    config = config_of(repo)
    assert config is not None
    for key in ("branch.main.remote", "branch.main.merge", "branch.Main.remote", "branch.Old.remote",
                "branch.old.remote", "branch.none.remote", "remote.origin.fetch"):
        result = run(repo, "config", "--get", key)
        assert config.last(key) == (result.stdout[:-1] if result.returncode == 0 else None), key
    gets_all = run(repo, "config", "--get-all", "remote.origin.fetch").stdout
    assert "\n".join(config.all("remote.origin.fetch")) + "\n" == gets_all
    assert config.remotes() == tuple(run(repo, "remote").stdout.split())


@pytest.mark.parametrize("text", ['[remote "x"]\n\tfetch\n', '[branch "main"]\n\tremote\n',
                                  '[remote "x"]\n\tprune = maybe\n', '[remote "x"]\n\tnewkey = 1\n',
                                  '[remote "/odd"]\n\turl = y\n', '[remote "x"]\n\tfetch = a b\n',
                                  '[remote "x"]\n\tfetch = +refs/*/*:refs/x/*\n',
                                  '[core]\n\trepositoryformatversion = 1\n[extensions]\n\tobjectformat = sha1\n'])
def test_config_git_remote_might_read_otherwise_gives_no_remotes(repo, text):
    (repo / ".git" / "config").open("a").write(text)
    config = config_of(repo)
    assert config is not None and config.remotes() is None


def test_config_of_a_repo_git_ignores_is_not_taken(repo):
    (repo / ".git" / "config").open("a").write('[extensions]\n\tobjectformat = sha1\n')
    assert config_of(repo) is None  # git warns, ignores the repo, and lists only the other scopes


def test_config_listing_that_is_not_utf8_or_cut_short_is_not_parsed():
    assert Config.parse(b"local\0branch.main.remote\n\xff\0") is None
    assert Config.parse(b"local\0branch.main.remote\norigin") is None
    assert Config.parse(b"local\0") is None
    assert Config.parse(b"global\0user.name\nx\0") is None  # not the repo's own: git did not use it
    assert Config.parse(b"local\0core.bare\nfalse\0") is not None


# --- ahead / behind ------------------------------------------------------------------------------------------

def git_counts(repo: Path, left: str, right: str) -> tuple[int, int]:
    ahead, behind = git(repo, "rev-list", "--left-right", "--count", f"{left}...{right}").split()
    return int(ahead), int(behind)


def test_ahead_and_behind_counted_as_rev_list_counts_them_loose_packed_and_across_merges(repo):
    base = git(repo, "rev-parse", "HEAD")
    commit(repo)
    git(repo, "checkout", "-q", "-b", "side")
    commit(repo)
    git(repo, "checkout", "-q", "main")
    commit(repo)
    git(repo, "merge", "-q", "--no-ff", "-m", "merge", "side")
    tip = commit(repo)
    common = repo / ".git"
    for _ in ("loose", "packed whole"):
        assert ahead_behind(common, tip, base) == git_counts(repo, tip, base) == (5, 0)
        assert ahead_behind(common, base, tip) == git_counts(repo, base, tip) == (0, 5)
        assert ahead_behind(common, tip, tip) == (0, 0)
        git(repo, "repack", "-q", "-a", "-d", "--window=0")
    git(repo, "repack", "-q", "-a", "-d", "-f", "--window=50")  # commits may be deltas now: git's to read
    assert ahead_behind(common, tip, base) in (None, (5, 0))


def test_ahead_behind_in_doubt_is_none(repo):
    base = git(repo, "rev-parse", "HEAD")
    left = commit(repo)
    git(repo, "checkout", "-q", "-b", "other", base)
    right = commit(repo)
    common = repo / ".git"
    assert git_counts(repo, left, right) == (1, 1)
    assert ahead_behind(common, left, right) is None  # diverged: rev-list's to count
    far = left
    for _ in range(5):
        far = commit(repo)
    assert ahead_behind(common, far, right, limit=3) is None
    assert ahead_behind(common, far, right) == git_counts(repo, far, right)
    (common / "shallow").write_text(base + "\n")
    assert ahead_behind(common, far, right) is None


def test_replace_refs_packed_or_loose_leave_the_count_to_git(repo):
    base = git(repo, "rev-parse", "HEAD")
    tip = commit(repo)
    common = repo / ".git"
    git(repo, "replace", "-f", tip, base)
    assert ahead_behind(common, tip, base) is None
    git(repo, "pack-refs", "--all")
    shutil.rmtree(common / "refs" / "replace", ignore_errors=True)  # only the packed entry is left
    assert " refs/replace/" in (common / "packed-refs").read_text()
    assert ahead_behind(common, tip, base) is None
    assert not is_commit(common, tip)


def test_a_far_behind_branch_is_counted_without_walking_the_other_side_to_its_root(repo):
    local = git(repo, "rev-parse", "HEAD")
    upstream = local
    for _ in range(40):
        upstream = commit(repo)
    assert ahead_behind(repo / ".git", local, upstream, limit=40) == git_counts(repo, local, upstream) == (0, 40)


# --- remote-tracking tips, reflog values, "all below": what `git rev-list --remotes` and `git log -g` see ----


def git_remote_tips(repo: Path) -> set[str]:
    return set(git(repo, "rev-parse", "--remotes").split())


def test_remote_tips_loose_packed_and_a_symbolic_head_are_the_ones_git_starts_from(repo):
    first = git(repo, "rev-parse", "HEAD")
    second = commit(repo)
    git(repo, "update-ref", "refs/remotes/origin/main", second)
    git(repo, "update-ref", "refs/remotes/origin/old", first)
    git(repo, "pack-refs", "--all")
    third = commit(repo)
    git(repo, "update-ref", "refs/remotes/origin/main", third)  # loose now, hiding its packed line
    git(repo, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")
    git(repo, "update-ref", "refs/remotes/up/feature/x", first)
    common = repo / ".git"
    assert remote_tips(common) == git_remote_tips(repo) == {first, third}
    git(repo, "update-ref", "-d", "refs/remotes/origin/old")
    assert remote_tips(common) == git_remote_tips(repo) == {first, third}
    git(repo, "update-ref", "-d", "refs/remotes/up/feature/x")
    assert remote_tips(common) == git_remote_tips(repo) == {third}


def test_no_remote_tracking_ref_is_an_empty_set(repo):
    assert remote_tips(repo / ".git") == git_remote_tips(repo) == set()


@pytest.mark.parametrize("odd", ["dangling symbolic", "symlink", "odd line", "odd name", "too many", "not a dir",
                                 "symlinked directory"])
def test_remote_tips_in_doubt_are_none(repo, odd):
    common = repo / ".git"
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "update-ref", "refs/remotes/origin/main", head)
    remotes = common / "refs" / "remotes"
    if odd == "dangling symbolic":
        (remotes / "origin" / "HEAD").write_text("ref: refs/remotes/origin/gone\n")
    elif odd == "symlink":
        (remotes / "origin" / "link").symlink_to(remotes / "origin" / "main")
    elif odd == "odd line":
        (remotes / "origin" / "x").write_text(head + " trailing\n")
    elif odd == "odd name":
        (remotes / "origin" / "a b").write_text(head + "\n")
    elif odd == "symlinked directory":  # git follows it (a fork's refs kept elsewhere); os.walk would not
        elsewhere = repo.parent / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "main").write_text(head + "\n")
        (remotes / "fork").symlink_to(elsewhere)
        assert "refs/remotes/fork/main" in git(repo, "for-each-ref", "refs/remotes")
    elif odd == "too many":
        for i in range(70):
            (remotes / "origin" / f"pr-{i}").write_text(head + "\n")
    else:
        shutil.rmtree(remotes)
        remotes.write_text("")
    assert remote_tips(common) is None


def test_reflog_values_are_the_commits_git_log_g_names(repo):
    values = [git(repo, "rev-parse", "HEAD")]
    git(repo, "update-ref", "-m", "fetch", "refs/remotes/origin/main", values[0])
    for _ in range(4):
        values.append(commit(repo))
        git(repo, "update-ref", "-m", "fetch", "refs/remotes/origin/main", values[-1])
    common = repo / ".git"

    def git_log_g(count: int) -> list[str]:
        return git(repo, "log", "-g", "--format=%H", "-n", str(count), "refs/remotes/origin/main").split()

    assert sorted(reflog_values(common, "refs/remotes/origin/main", 500)) == sorted(git_log_g(500))
    assert sorted(reflog_values(common, "refs/remotes/origin/main", 2)) == sorted(git_log_g(2)) == sorted(values[-2:])
    assert reflog_values(common, "refs/remotes/origin/none", 500) == []
    log = common / "logs" / "refs" / "remotes" / "origin" / "main"
    log.write_text(log.read_text() + "not a reflog line\n")
    assert reflog_values(common, "refs/remotes/origin/main", 500) is None
    log.write_text(f"{values[0]} {'0' * 40} x <x@y> 1 +0000\tdeleted\n")
    assert reflog_values(common, "refs/remotes/origin/main", 500) is None
    # An entry git cannot parse (no identity, a zero timestamp) is one it skips: which are the newest is git's.
    for odd in (f"{values[0]} {values[1]} junk", f"{values[0]} {values[1]} x <x@y> 0 +0000\tfetch"):
        log.write_text(f"{values[0]} {values[1]} x <x@y> 1 +0000\tfetch\n{odd}\n")
        assert reflog_values(common, "refs/remotes/origin/main", 500) is None, odd


def test_all_below_only_when_each_commit_is_the_tip_or_met_below_it(repo):
    base = git(repo, "rev-parse", "HEAD")
    middle = commit(repo)
    tip = commit(repo)
    git(repo, "checkout", "-q", "-b", "side", base)
    side = commit(repo)
    common = repo / ".git"
    assert all_below(common, tip, {tip, middle, base})
    assert all_below(common, tip, set())
    assert not all_below(common, tip, {side})  # elsewhere
    assert not all_below(common, middle, {tip})  # above
    assert not all_below(common, tip, {base}, limit=1)  # further down than the walk goes: git's to say
    (common / "shallow").write_text(middle + "\n")
    assert not all_below(common, tip, {middle})
