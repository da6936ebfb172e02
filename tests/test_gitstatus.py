"""Repo status against real repos, each state built for real with git."""
from __future__ import annotations

import os

import pytest

from lib.config import load_workspace
from lib.gitstatus import LastCommit, last_commit_of, parse_porcelain_v2, scan
from tests.conftest import git


def status_of(home, *handles, **fields):
    home.add(*handles, **fields)
    report = scan(load_workspace(home.repos_file).repos, jobs=2)
    return report.repos[0] if len(report.repos) == 1 else report.repos


def test_clean_repo_reports_branch_head_upstream_and_last_commit(home, make_repo):
    repo = make_repo("alpha")
    s = status_of(home, repo)
    assert s.clean and s.exists and s.error is None
    assert s.branch == "main" and not s.detached
    assert s.head == repo.head() and len(s.head) == 40
    assert s.upstream == "origin/main" and (s.ahead, s.behind) == (0, 0)
    assert (s.staged, s.modified, s.untracked, s.conflicted, s.dirty) == (0, 0, 0, 0, 0)
    assert s.last_commit.sha == repo.head()
    assert s.last_commit.subject == "initial"
    assert s.last_commit.author == "Test User"
    assert s.last_commit.date[:4].isdigit() and "T" in s.last_commit.date


def test_modified_staged_and_untracked_are_counted_separately(home, make_repo):
    repo = make_repo("alpha", {"a.txt": "a\n", "b.txt": "b\n", "c.txt": "c\n"})
    (repo.path / "a.txt").write_text("changed\n")           # modified only
    (repo.path / "b.txt").write_text("staged\n")
    repo.git("add", "b.txt")                                  # staged only
    (repo.path / "c.txt").write_text("staged\n")
    repo.git("add", "c.txt")
    (repo.path / "c.txt").write_text("and modified again\n")  # staged and modified: one entry
    (repo.path / "new1.txt").write_text("x")
    (repo.path / "new2.txt").write_text("y")                  # two untracked
    s = status_of(home, repo)
    assert not s.clean
    assert (s.staged, s.modified, s.untracked, s.conflicted) == (2, 2, 2, 0)
    assert s.dirty == 5


def test_rename_counts_once(home, make_repo):
    repo = make_repo("alpha", {"old.txt": "content\n"})
    repo.git("mv", "old.txt", "new.txt")
    s = status_of(home, repo)
    assert (s.staged, s.modified, s.dirty) == (1, 0, 1)


def test_conflicted_merge_is_counted(home, make_repo):
    repo = make_repo("alpha", {"f.txt": "base\n"})
    repo.git("checkout", "-q", "-b", "other")
    repo.commit({"f.txt": "other\n"}, "other side")
    repo.git("checkout", "-q", "main")
    repo.commit({"f.txt": "main side\n"}, "main side")
    result = os.system(f"git -C {repo.path} merge -q other >/dev/null 2>&1")
    assert result != 0
    s = status_of(home, repo)
    assert s.conflicted == 1 and s.dirty == 1 and not s.clean


def test_ahead_behind_and_both(home, make_repo, tmp_path):
    ahead, behind, both = make_repo("ahead"), make_repo("behind"), make_repo("both")
    ahead.commit({"x": "1"}, "local 1")
    ahead.commit({"y": "2"}, "local 2")
    behind.push_from_elsewhere(tmp_path, {"up": "1"})
    behind.git("fetch", "-q")
    both.push_from_elsewhere(tmp_path, {"up": "1"})
    both.git("fetch", "-q")
    both.commit({"mine": "1"}, "local")
    statuses = status_of(home, ahead, behind, both)
    assert [(s.ahead, s.behind) for s in statuses] == [(2, 0), (0, 1), (1, 1)]
    assert all(s.clean for s in statuses)


def test_detached_head(home, make_repo):
    repo = make_repo("alpha")
    first = repo.head()
    repo.commit({"x": "1"}, "second")
    repo.git("checkout", "-q", "--detach", first)
    s = status_of(home, repo)
    assert s.detached and s.branch is None and s.head == first
    assert s.upstream is None and s.ahead is None
    assert s.last_commit.sha == first and s.error is None


def test_unborn_branch_is_an_error_row_not_a_crash(home, tmp_path):
    path = tmp_path / "empty"
    git(tmp_path, "init", "-q", "-b", "main", str(path))
    (path / "draft.txt").write_text("x")
    home.write_repos([{"name": "empty", "local": str(path)}])
    s = scan(load_workspace(home.repos_file).repos).repos[0]
    assert s.error == "no commits yet"
    assert s.branch == "main" and s.head is None and s.untracked == 1 and not s.clean


@pytest.mark.parametrize("kind", ["missing", "plain directory", "file"])
def test_bad_paths_are_error_rows(home, tmp_path, kind):
    path = tmp_path / "thing"
    if kind == "plain directory":
        path.mkdir()
    elif kind == "file":
        path.write_text("not a repo")
    home.write_repos([{"name": "thing", "local": str(path)}])
    s = scan(load_workspace(home.repos_file).repos).repos[0]
    expected = {"missing": "path does not exist", "plain directory": "not a git repository (no .git)",
                "file": "path is not a directory"}[kind]
    assert s.error == expected
    assert s.exists is (kind != "missing")
    assert not s.clean and s.dirty is None and s.last_commit is None


def test_subdirectory_of_another_repo_is_not_mistaken_for_a_repo(home, make_repo):
    outer = make_repo("outer")
    (outer.path / "sub").mkdir()
    home.write_repos([{"name": "sub", "local": str(outer.path / "sub")}])
    s = scan(load_workspace(home.repos_file).repos).repos[0]
    assert s.error == "not a git repository (no .git)"


def test_upstream_gone_keeps_upstream_name_without_counts(home, make_repo):
    repo = make_repo("alpha")
    repo.git("update-ref", "-d", "refs/remotes/origin/main")
    s = status_of(home, repo)
    assert s.upstream == "origin/main" and s.ahead is None and s.behind is None


def test_scan_keeps_config_order_with_many_repos(home, make_repo):
    handles = [make_repo(f"r{i:02d}") for i in range(12)]
    statuses = status_of(home, *handles)
    assert [s.name for s in statuses] == [h.path.name for h in handles]


def test_porcelain_parser_handles_rename_with_nul_separated_origin():
    data = (b"# branch.oid abc\0# branch.head main\0"
            b"2 R. N... 100644 100644 100644 aaa bbb R100 new name.txt\0old name.txt\0"
            b"? untracked file\0")
    p = parse_porcelain_v2(data)
    assert (p.staged, p.modified, p.untracked, p.dirty) == (1, 0, 1, 2)
    assert p.branch == "main" and p.upstream is None


@pytest.mark.parametrize("date, stored", [
    ("2026-11-20T10:00:00Z", "2026-11-20T10:00:00+00:00"),  # git 2.45+
    ("2026-11-20T10:00:00+00:00", "2026-11-20T10:00:00+00:00"),  # older gits, and lib.gitobjects
    ("2026-11-20T10:00:00-08:00", "2026-11-20T10:00:00-08:00"),
])
def test_a_logged_utc_date_is_stored_in_one_form_whatever_git_prints(date, stored):
    commit = last_commit_of(f"{'a' * 40}\0subject\0Ann\0{date}\n".encode())
    assert commit == LastCommit("a" * 40, "subject", "Ann", stored)
    assert last_commit_of(b"truncated\0output\n") is None
