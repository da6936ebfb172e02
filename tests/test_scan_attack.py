"""The scan attacked as a hostile user would: odd paths, signals, concurrent runs. It must never lie or leave things behind."""
from __future__ import annotations

from lib.config import load_workspace
from lib.gitstatus import scan
from tests.conftest import git


def test_a_broken_repo_under_a_directory_with_a_colon_never_reports_the_repo_around_it(home, make_repo, tmp_path):
    """GIT_CEILING_DIRECTORIES is colon-separated with no escape: `a:b` must not unconfine git."""
    outer = make_repo("outer")
    broken = outer.path / "a:b" / "inner"
    (broken / ".git").mkdir(parents=True)  # a .git that is no repository
    home.write_repos([{"name": "inner", "local": str(broken)}])
    row = scan(load_workspace(home.repos_file).repos, jobs=1).repos[0]
    assert row.error and "not a git repository" in row.error
    assert row.head is None and row.last_commit is None  # not the outer repo's "initial"


def test_a_repo_under_a_directory_with_a_colon_still_scans(home, make_repo, tmp_path):
    parent = tmp_path / "x:y"
    parent.mkdir()
    git(parent, "init", "-q", "-b", "main", "repo")
    git(parent / "repo", "commit", "-q", "--allow-empty", "-m", "in x:y")
    home.write_repos([{"name": "repo", "local": str(parent / "repo")}])
    row = scan(load_workspace(home.repos_file).repos, jobs=1).repos[0]
    assert row.error is None and row.last_commit.subject == "in x:y"
