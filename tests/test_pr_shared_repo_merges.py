"""Two projects on one repository (allowed: their branches and worktrees apart, config._shared_branches): a queue
lands both projects' PRs together, and whichever merge a poll sees first, the other project's merge under way is
ours too: no default_branch_moved alert, the default branch's new head taken (as alerts.check counts every
project's merges of a repository). A direct push among them is still alerted."""
from __future__ import annotations

import workers_fixtures  # noqa: F401  (the orchestrator package on sys.path)
from conftest import git

from orchestrator import alerts
from orchestrator.config import parse_config
from orchestrator.state import WorkerRecord


def _commit(work, name: str, message: str) -> str:
    (work / name).write_text(f"{name}\n")
    git(work, "add", name)
    git(work, "commit", "-q", "-m", message)
    return git(work, "rev-parse", "HEAD")


def _two_projects_landed(make_repo, tmp_path, direct_push: bool = False):
    handle = make_repo("app")
    cfg = parse_config(tmp_path / "p-issues.json", {
        "project": "p", "repo_path": str(handle.path), "branch_prefix": "f-", "default_branch": "main",
        "issues": [{"number": 1, "title": "a"}, {"number": 2, "title": "b"}]})
    cfg_q = parse_config(tmp_path / "q-issues.json", {
        "project": "q", "repo_path": str(handle.path), "branch_prefix": "g-", "default_branch": "main",
        "worktree_base": str(tmp_path / "wq"), "issues": [{"number": 1, "title": "qa"}]})
    root = tmp_path / "state" / "p"
    alerts.current(root, [cfg, cfg_q], 1000.0)
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(handle.remote), str(work))
    heads = {}
    for key, branch in (("q1", "g-1"), ("p2", "f-2")):
        git(work, "switch", "-q", "-c", branch, "origin/main")
        heads[key] = _commit(work, f"{branch}.txt", f"work of {branch}")
        git(work, "push", "-q", "origin", branch)
        handle.git("fetch", "-q", "origin", branch)
    git(work, "switch", "-q", "main")
    git(work, "merge", "-q", "--no-ff", "g-1", "-m", "Merge q#1")
    if direct_push:
        _commit(work, "direct.txt", "pushed straight to main")
    git(work, "merge", "-q", "--no-ff", "f-2", "-m", "Merge p#2")
    git(work, "push", "-q", "origin", "main")
    other = WorkerRecord(1, status="running", project="q", issue_number=1, branch="g-1",
                         pr={"watching": True, "merging": True, "head": heads["q1"]})
    return handle, cfg, root, heads, other


def test_the_other_projects_merge_landing_in_the_same_queue_raises_no_alert(make_repo, tmp_path):
    handle, cfg, root, heads, other = _two_projects_landed(make_repo, tmp_path)
    said: list[str] = []
    got = alerts.accept_default_head(root, cfg, cfg.issues[1], heads["p2"], [other], said.append)
    assert got == git(handle.remote, "rev-parse", "main")
    assert said == [] and alerts.load(root)["alerts"] == []


def test_a_direct_push_between_the_two_projects_merges_is_alerted(make_repo, tmp_path):
    handle, cfg, root, heads, other = _two_projects_landed(make_repo, tmp_path, direct_push=True)
    said: list[str] = []
    assert alerts.accept_default_head(root, cfg, cfg.issues[1], heads["p2"], [other], said.append) is None
    assert [a["kind"] for a in alerts.load(root)["alerts"]] == ["default_branch_moved"]
