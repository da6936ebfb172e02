"""What one dashboard tick costs (the status document, redrawn every 2 s): no git for an issue being resumed when
its refs can be read from the files, and pull-requests.json read once per project, not twice.
"""
from __future__ import annotations

import subprocess

import pytest

from conftest import git
from workers_fixtures import project, tmux_socket  # noqa: F401

from orchestrator import pulls
from orchestrator.report import status_document
from orchestrator.run import open_run
from test_workers_resume import _left_on_worker_2


class CountingPopen(subprocess.Popen):
    started: list[list[str]] = []

    def __init__(self, args, *rest, **kw):  # type: ignore[no-untyped-def]
        CountingPopen.started.append([str(a) for a in args] if not isinstance(args, (str, bytes)) else [str(args)])
        super().__init__(args, *rest, **kw)


@pytest.mark.parametrize("where,stage", [("worktree", "write_tests"), ("branch", "write_tests"),
                                         ("pushed", "write_tests"), ("fresh", "implement")])
def test_a_dashboard_tick_runs_no_git_to_tell_where_an_issue_resumes(project, monkeypatch, where, stage):
    _left_on_worker_2(project, where)
    run = open_run()
    monkeypatch.setattr(subprocess, "Popen", CountingPopen)
    CountingPopen.started = []
    for _ in range(3):
        doc = status_document(run)
        assert doc["projects"][0]["issues"][2]["resuming_at"] == stage
    gits = [argv for argv in CountingPopen.started if argv and argv[0].endswith("git")]
    assert gits == [], gits


def test_a_branch_only_packed_is_still_found_without_git(project, monkeypatch):
    proj = _left_on_worker_2(project, "branch")
    git(proj.repo, "pack-refs", "--all")
    run = open_run()
    monkeypatch.setattr(subprocess, "Popen", CountingPopen)
    CountingPopen.started = []
    assert status_document(run)["projects"][0]["issues"][2]["resuming_at"] == "write_tests"
    assert [argv for argv in CountingPopen.started if argv and argv[0].endswith("git")] == []


def test_refs_git_must_judge_are_asked_of_git_and_still_answer_right(project, monkeypatch):
    """A symbolic branch ref (an agent's `git symbolic-ref`), which the files alone do not settle: git is asked."""
    proj = _left_on_worker_2(project, "fresh")
    git(proj.repo, "symbolic-ref", "refs/heads/feature/issue-3", "refs/heads/main")
    run = open_run()
    monkeypatch.setattr(subprocess, "Popen", CountingPopen)
    CountingPopen.started = []
    assert status_document(run)["projects"][0]["issues"][2]["resuming_at"] == "write_tests"
    assert [argv for argv in CountingPopen.started if argv and argv[0].endswith("git")] != []


def test_a_tick_reads_pull_requests_json_once_per_project(project, monkeypatch):
    proj = project([{"number": 1, "title": "one"}], review={"open": "pr", "merge": "auto", "poll_seconds": 5})
    run = open_run()
    pulls.save(run.state_root, "demo", 1, number=7, url="https://forge/pull/7", state="open", checks="pending",
               phase="pr_open")
    reads: list[str] = []
    real = pulls.read_json

    def counted(path, *args, **kw):  # type: ignore[no-untyped-def]
        reads.append(str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(pulls, "read_json", counted)
    for _ in range(3):
        status_document(run)
    assert reads == [str(pulls.prs_file(run.state_root, "demo"))] * 3
