"""Status tells the truth whatever a repo's config says, and shows operations in progress and stale locks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from lib.config import load_workspace
from lib.gitstatus import scan


def status_of(home, *handles):
    home.add(*handles)
    report = scan(load_workspace(home.repos_file).repos, jobs=2)
    return report.repos[0] if len(report.repos) == 1 else report.repos


def untracked_tree(repo):
    (repo.path / "loose.txt").write_text("x")
    (repo.path / "newdir").mkdir()
    for name in ("a", "b", "c"):
        (repo.path / "newdir" / name).write_text(name)


@pytest.mark.parametrize("value", ["no", "all", "normal"])
def test_show_untracked_files_config_does_not_change_the_counts(home, make_repo, value):
    plain, configured = make_repo("plain"), make_repo("configured")
    configured.git("config", "status.showUntrackedFiles", value)
    for repo in (plain, configured):
        untracked_tree(repo)
    a, b = status_of(home, plain, configured)
    assert (a.untracked, a.dirty, a.clean) == (2, 2, False)  # an untracked directory counts once
    assert (b.untracked, b.dirty, b.clean) == (a.untracked, a.dirty, a.clean)


@pytest.mark.parametrize("key", ["status.renames", "diff.renames"])
def test_rename_config_does_not_change_the_counts(home, make_repo, key):
    repo = make_repo("alpha", {"old.txt": "content\n" * 20})
    repo.git("config", key, "false")
    repo.git("mv", "old.txt", "new.txt")
    s = status_of(home, repo)
    assert (s.staged, s.modified, s.dirty) == (1, 0, 1)


def test_other_porcelain_affecting_config_is_ignored(home, make_repo, tmp_path):
    repo = make_repo("alpha")
    repo.push_from_elsewhere(tmp_path, {"up": "1"})
    repo.git("fetch", "-q")
    repo.commit({"mine": "1"}, "local")
    repo.git("stash", "list")
    (repo.path / "mine").write_text("edited\n")
    repo.git("stash", "-q")
    for key, value in (("status.aheadBehind", "false"), ("status.showStash", "true"),
                       ("status.branch", "false"), ("core.quotePath", "true"), ("color.status", "always")):
        repo.git("config", key, value)
    (repo.path / "ünïcode \"name\".txt").write_text("x")
    s = status_of(home, repo)
    assert (s.ahead, s.behind) == (1, 1)
    assert (s.untracked, s.dirty) == (1, 1)


def test_inherited_git_dir_does_not_make_every_repo_look_like_one(home, make_repo, monkeypatch):
    """A scan run from a git hook inherits GIT_DIR: each repo must still report itself."""
    a, b = make_repo("a"), make_repo("b")
    b.commit({"x": "1"}, "second in b")
    heads = a.head(), b.head()
    monkeypatch.setenv("GIT_DIR", str(a.path / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(a.path))
    monkeypatch.setenv("GIT_INDEX_FILE", str(a.path / ".git" / "index"))
    sa, sb = status_of(home, a, b)
    assert (sa.head, sb.head) == heads
    assert sb.last_commit.subject == "second in b"


def test_table_keeps_names_verbatim(home, make_repo, inv):
    repo = make_repo("007")
    repo.git("checkout", "-q", "-b", "1.10")
    home.add(repo)
    result = inv("status")
    row = result.out.splitlines()[2].split()
    assert row[:2] == ["007", "1.10"], result.out


# --- operations in progress and locks -------------------------------------------------------------

def conflicting_branches(repo):
    repo.commit({"f.txt": "base\n"}, "base")
    repo.git("checkout", "-q", "-b", "other")
    repo.commit({"f.txt": "other\n"}, "other side")
    repo.git("checkout", "-q", "main")
    repo.commit({"f.txt": "main side\n"}, "main side")


def attempt(repo, *args):
    return subprocess.run(["git", *args], cwd=repo.path, capture_output=True, text=True)


@pytest.mark.parametrize("operation", ["merge", "rebase", "cherry-pick", "revert", "am"])
def test_operation_in_progress_is_reported(home, make_repo, operation, tmp_path):
    repo = make_repo("alpha")
    conflicting_branches(repo)
    if operation == "merge":
        assert attempt(repo, "merge", "other").returncode != 0
    elif operation == "rebase":
        assert attempt(repo, "rebase", "other").returncode != 0
    elif operation == "cherry-pick":
        assert attempt(repo, "cherry-pick", "other").returncode != 0
    elif operation == "revert":
        repo.commit({"f.txt": "later\n"}, "later")
        assert attempt(repo, "revert", "--no-edit", "HEAD~1").returncode != 0
    else:
        patch = tmp_path / "p.patch"
        patch.write_text(repo.git("format-patch", "-1", "other", "--stdout") + "\n")
        assert attempt(repo, "am", str(patch)).returncode != 0
    s = status_of(home, repo)
    assert s.operation == operation and s.error is None


def test_bisect_in_progress_is_reported_and_a_plain_repo_has_none(home, make_repo):
    repo, plain = make_repo("alpha"), make_repo("plain")
    repo.commit({"x": "1"}, "second")
    repo.git("bisect", "start", "HEAD", "HEAD~1")
    s, p = status_of(home, repo, plain)
    assert s.operation == "bisect" and p.operation is None
    assert p.index_lock is None


def test_operation_in_a_linked_worktree_is_found_in_its_own_git_dir(home, make_repo, tmp_path):
    repo = make_repo("alpha")
    conflicting_branches(repo)
    repo.git("branch", "side", "main")
    linked = tmp_path / "linked"
    repo.git("worktree", "add", "-q", str(linked), "side")
    assert subprocess.run(["git", "merge", "other"], cwd=linked, capture_output=True).returncode != 0
    home.write_repos([{"name": "main-tree", "local": str(repo.path)}, {"name": "linked", "local": str(linked)}])
    main_tree, linked_tree = scan(load_workspace(home.repos_file).repos).repos
    assert linked_tree.operation == "merge" and main_tree.operation is None


def test_a_stale_index_lock_is_flagged_in_the_document_and_table(home, make_repo, inv):
    repo = make_repo("alpha")
    (repo.path / ".git" / "index.lock").write_text("")
    home.add(repo)
    doc = json.loads(inv("status", "--json").out)
    assert doc["repos"][0]["index_lock"] == "stale" and doc["repos"][0]["operation"] is None
    table = inv("status").out
    assert "stale index.lock" in table


def test_an_index_lock_held_by_a_running_git_is_not_called_stale(home, make_repo):
    repo = make_repo("alpha")
    # `git add` holds index.lock while a clean filter runs: a slow one keeps it held.
    repo.git("config", "filter.slow.clean", "sleep 30; cat")
    (repo.path / ".gitattributes").write_text("*.slow filter=slow\n")
    (repo.path / "f.slow").write_text("x")
    commit = subprocess.Popen(["git", "add", "f.slow"], cwd=repo.path, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (repo.path / ".git" / "index.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (repo.path / ".git" / "index.lock").exists()
        assert status_of(home, repo).index_lock == "held"
    finally:
        os.killpg(commit.pid, signal.SIGKILL)
        commit.wait()


def test_operation_shows_in_the_table(home, make_repo, inv):
    repo = make_repo("alpha")
    conflicting_branches(repo)
    attempt(repo, "merge", "other")
    home.add(repo)
    row = inv("status").out.splitlines()[2]
    assert "merge in progress" in row and "1 conflicted" in row
