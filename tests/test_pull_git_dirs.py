"""The PR loop's gits in a throwaway bare git dir name it (`--git-dir`): a user's global config cannot make them
blind. `safe.bareRepository=explicit` (set through GIT_CONFIG_GLOBAL, a file in tmp_path, never ~/.gitconfig) makes
git refuse a bare repository it finds from its working directory.
"""
from __future__ import annotations

import pytest

from conftest import git
from forge_fakes import fake_forge  # noqa: F401
from workers_fixtures import project, tmux_socket  # noqa: F401

from orchestrator import pulls
from test_pr_mends import _commit, _force_push_from_main, _pr_setup


@pytest.fixture
def explicit_bare_only(tmp_path, monkeypatch):
    """From now on, git refuses every bare repository not named by --git-dir or GIT_DIR."""
    config = tmp_path / "user-gitconfig"
    config.write_text("[safe]\n\tbareRepository = explicit\n")

    def arm() -> None:
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    return arm


def test_someone_elses_rebase_of_the_pr_counts_under_safe_bare_repository_explicit(
        project, fake_forge, tmp_path, explicit_bare_only):
    """The force-push check reads the PR's new head in its throwaway git dir: with the user's
    safe.bareRepository=explicit it still tells that the rebased head holds our work (never "cannot tell" on every
    poll, which would hold the PR forever)."""
    proj, cfg, state_root, fake, record, ours = _pr_setup(project, fake_forge)
    work = tmp_path / "rebaser"
    git(tmp_path, "clone", "-q", str(proj.remote), str(work))
    _commit(work, "main-moved.txt", "main moved on")
    git(work, "push", "-q", "origin", "main")
    git(work, "switch", "-q", "feature/issue-1")
    git(work, "-c", "user.name=Human", "-c", "user.email=h@example.com", "rebase", "-q", "main")
    git(work, "push", "-q", "-f", "origin", "feature/issue-1")
    rebased = git(work, "rev-parse", "HEAD")
    explicit_bare_only()
    said: list[str] = []
    views = [pulls.poll(state_root, lambda _: cfg, [record], now, lambda r: None, said.append)[0]
             for now in (10.0, 20.0, 30.0)]
    assert [v.error for v in views] == ["", "", ""], said
    assert record.pr["head"] == rebased and "its checks count from now" in said[-1]


def test_a_force_push_that_dropped_our_work_is_still_told_under_safe_bare_repository_explicit(
        project, fake_forge, tmp_path, explicit_bare_only):
    """The verdict itself, not "cannot tell": the head someone force-pushed does not hold our last push."""
    proj, cfg, state_root, fake, record, ours = _pr_setup(project, fake_forge)
    theirs = _force_push_from_main(proj, tmp_path, "theirs.txt")
    explicit_bare_only()
    views = [pulls.poll(state_root, lambda _: cfg, [record], now, lambda r: None, lambda _: None)[0]
             for now in (10.0, 20.0, 30.0)]
    assert f"PR #1's head {theirs[:12]} does not hold our last push {ours[:12]}" in views[2].error, views[2]
    assert "cannot tell" not in views[2].error


def test_our_merge_is_told_from_a_direct_push_under_safe_bare_repository_explicit(make_repo, tmp_path,
                                                                                  explicit_bare_only):
    """The alerts' read of the default branch's move (alerts.merges_of_ours, its own throwaway git dir, the forge's
    commits fetched into it) names its git dir too: our merge is ours, a direct push is not, whatever the user's
    global config says."""
    from orchestrator import alerts
    from test_workers_pr_hangs import _commit as commit_in

    handle = make_repo("app")
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(handle.remote), str(work))
    old = git(work, "rev-parse", "HEAD")
    git(work, "switch", "-q", "-c", "f-1")
    ours = commit_in(work, "one.txt")
    git(work, "switch", "-q", "main")
    git(work, "merge", "-q", "--no-ff", "f-1", "-m", "Merge #1")
    merged = git(work, "push", "-q", "origin", "main") or git(work, "rev-parse", "HEAD")
    explicit_bare_only()
    url = str(handle.remote)
    assert alerts.merges_of_ours(handle.path, url, "main", old, merged, frozenset({ours}), 20.0) is True
    pushed = commit_in(work, "direct.txt")
    git(work, "push", "-q", "origin", "main")
    assert alerts.merges_of_ours(handle.path, url, "main", old, pushed, frozenset({ours}), 20.0) is False
