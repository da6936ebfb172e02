"""A hostile user against sync-all, status and scan: what each prints must match what is on disk."""
from __future__ import annotations

import json

from tests.sync_fixtures import full_snapshot, ref


def outcome_of(home, name: str) -> dict:
    return next(r for r in home.state("sync-results.json")["results"] if r["repo"] == name)


def test_inherited_git_namespace_neither_prunes_tracking_refs_nor_reports_upstream_gone(home, make_repo, inv,
                                                                                        tmp_path, monkeypatch):
    # GIT_NAMESPACE (set for a server's hooks) hides the remote's branches: a pruning fetch deleted every
    # refs/remotes/origin/* and each repo was reported "upstream gone".
    repo = make_repo("spaced")
    upstream = repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    home.add(repo)
    monkeypatch.setenv("GIT_NAMESPACE", "elsewhere")
    result = inv("sync-all")
    assert result.code == 0, result.out + result.err
    assert ref(repo.path, "refs/remotes/origin/main") == upstream
    assert ref(repo.path, "refs/heads/main") == upstream
    assert outcome_of(home, "spaced")["status"] == "updated"


def test_a_broken_git_dir_inside_another_repo_is_never_mistaken_for_that_repo(home, make_repo, inv, tmp_path):
    # An empty `.git` directory is no repository: git walks up to the enclosing one, and sync moved
    # *its* main (reporting the configured repo updated) while status showed its branch.
    outer = make_repo("outer")
    outer.push_from_elsewhere(tmp_path, {"outer-new.txt": "1"})
    outer.git("checkout", "-q", "-b", "feat")
    inner = outer.path / "inner"
    (inner / ".git").mkdir(parents=True)
    (outer.path / ".git" / "info" / "exclude").write_text("inner/\n")
    before = full_snapshot(outer.path)
    home.write_repos([{"name": "inner", "local": str(inner)}])
    result = inv("sync-all")
    assert result.code == 1, result.out + result.err
    o = outcome_of(home, "inner")
    assert o["status"] == "failed" and "not a git repository" in o["reason"], o
    assert full_snapshot(outer.path) == before, "the enclosing repo was fetched or moved"
    status = json.loads(inv("status", "--json").out)["repos"][0]
    assert status["branch"] is None and "not a git repository" in status["error"], status
