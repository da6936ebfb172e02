"""The pull-request loop never loses track of work nor lies: a damaged pull-requests.json, a network failure
right after an accepted merge.

Real tmux, git and the scripted fake agent; fake gh from tests/forge_fakes.py, never a real forge.
"""
from __future__ import annotations

import json
import os

import pytest

from conftest import git
from forge_fakes import fake_forge  # noqa: F401
from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from orchestrator import pulls
from orchestrator.config import load_config
from orchestrator.monitor import monitor
from orchestrator.report import status_document
from orchestrator.run import open_run

PASS = {"checks": [{"name": "build", "bucket": "pass"}]}


def _one_cycle(lines: list[str]) -> None:
    monitor(open_run(), cycle=0.2, once=True, no_delay=True, say=lines.append)


def _damage(path, kind: str) -> None:
    path.unlink()
    if kind == "garbage":
        path.write_bytes(b"\x00\xff{\"issues\": {\"1\": tru")
    elif kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)


def _is_damaged(path, kind: str) -> bool:
    return {"garbage": path.is_file, "directory": path.is_dir, "fifo": path.is_fifo}[kind]()


@pytest.mark.parametrize("kind", ["garbage", "directory", "fifo"])
def test_a_damaged_pr_file_mid_run_forgets_no_open_pr_and_cleanup_keeps_its_worktree(project, fake_forge, kind):
    """Manual merge: #1 completes with its PR open and green; then pull-requests.json is damaged. While it is,
    status says so and cleanup's reader keeps #1's worktree (asking the forge); #2's first write sets the file
    aside (kept for a look, an event, a status warning) instead of replacing it as if no PR existed, and cleanup
    afterwards still keeps the worktree of #1, whose PR is open, though the fresh file never heard of it."""
    proj = project([{"number": 1, "title": "first"}, {"number": 2, "title": "second", "depends_on": [1]}],
                   pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "manual", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS])
    lines: list[str] = []
    prs_file = proj.state / "pull-requests.json"

    def first_done() -> bool:
        _one_cycle(lines)
        return proj.issue(1).get("status") == "completed"

    retry_until(first_done, seconds=120, interval=0.05)
    assert json.loads(prs_file.read_text())["issues"]["1"]["state"] == "open"
    _damage(prs_file, kind)

    doc = status_document(open_run())
    assert any(str(prs_file) in w and "set aside at the monitor's next write" in w for w in doc["warnings"]), doc
    cfg = load_config(proj.config)
    assert pulls.open_branches(proj.home / "state", cfg)["feature/issue-1"] == (
        "its pull request is open (https://github.com/org/app/pull/1)")  # looked up on the forge

    def second_done() -> bool:
        _one_cycle(lines)
        return proj.issue(2).get("status") == "completed"

    retry_until(second_done, seconds=120, interval=0.05)
    aside = prs_file.with_name("pull-requests.json.corrupt")
    assert _is_damaged(aside, kind)  # kept for a look, as it was
    if kind == "garbage":
        assert aside.read_bytes() == b"\x00\xff{\"issues\": {\"1\": tru"
    [event] = [e for e in proj.events() if e["action"] == "state_set_aside"]
    assert event["aside"] == "pull-requests.json.corrupt" and event["file"] == str(prs_file)
    fresh = json.loads(prs_file.read_text())
    assert fresh["set_aside"]["file"] == "pull-requests.json.corrupt" and "1" not in fresh["issues"]
    doc = status_document(open_run())
    assert any("was set aside as pull-requests.json.corrupt" in w for w in doc["warnings"]), doc["warnings"]
    assert doc["projects"][0]["issues"][1]["pr"]["number"] == 2  # the new entry is whole

    from orchestrator.cleanup import cleanup

    verdicts = {v.branch: v for v in cleanup(open_run()).verdicts}
    assert verdicts["feature/issue-1"].outcome == "kept", verdicts
    assert verdicts["feature/issue-1"].reasons == ["its pull request is open (https://github.com/org/app/pull/1)"]
    assert verdicts["feature/issue-2"].outcome == "kept"
    assert (proj.root / "worktrees" / "issue-1").is_dir()
    fake.update(prs=[{**pr, "state": "MERGED"} for pr in fake.prs()])  # a human merges both
    assert {v.branch: v.outcome for v in cleanup(open_run()).verdicts} == {"feature/issue-1": "removed",
                                                                             "feature/issue-2": "removed"}


def test_a_damaged_pr_file_and_a_forge_that_cannot_be_asked_keep_every_worktree(project, fake_forge):
    """No answer from the forge while the file is unreadable: each issue's worktree is kept, saying why."""
    proj = project([{"number": 1, "title": "first"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "manual", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS])
    lines: list[str] = []

    def done() -> bool:
        _one_cycle(lines)
        return proj.issue(1).get("status") == "completed"

    retry_until(done, seconds=120, interval=0.05)
    (proj.state / "pull-requests.json").write_text("[]")  # JSON, but not a PR document
    fake.update(fail={"pr list": {"code": 1, "stderr": "HTTP 502: Bad Gateway (https://api.github.com/graphql)"}})
    from orchestrator.cleanup import cleanup

    [verdict] = cleanup(open_run()).verdicts
    assert verdict.outcome == "kept" and "its pull request may be open" in verdict.reasons[0]
    assert "not a pull-request document" in verdict.reasons[0] and "HTTP 502" in verdict.reasons[0]
    assert (proj.root / "worktrees" / "issue-1").is_dir()
    assert git(proj.remote, "rev-parse", "main")  # nothing else touched


# --- a network failure right after an accepted merge ----------------------------------------------------------

BAD_GATEWAY = "HTTP 502: Bad Gateway (https://api.github.com/graphql)"


@pytest.mark.parametrize("times", [1, 3])
def test_a_network_failure_right_after_an_accepted_merge_is_neither_a_failed_merge_nor_a_merge(project, fake_forge,
                                                                                             times):
    """gh pr merge is accepted, then the view that would show the PR merged answers 502 (once, or for three
    polls more): no merge attempt is used (no merge_failed), nothing is recorded merged before the forge shows
    it, the merge is never made twice, and the next poll that works completes the issue as our merge."""
    proj = project([{"number": 1, "title": "a"}, {"number": 2, "title": "b", "depends_on": [1]}],
                   pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS],
                      after_merge_fail={"pr view": {"code": 1, "stderr": BAD_GATEWAY, "times": times}})
    lines: list[str] = []
    failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lines.append)
    assert failed == 0, lines
    assert proj.issue(1)["status"] == "completed" and proj.issue(2)["status"] == "completed"
    kinds = [e["action"] for e in proj.events() if e.get("issue") == 1]
    assert "merge_failed" not in kinds and kinds.count("merge_unconfirmed") == 1
    assert kinds.index("merge_unconfirmed") < kinds.index("pr_merged")
    [unconfirmed] = [e for e in proj.events() if e["action"] == "merge_unconfirmed"]
    assert "the merge was accepted" in unconfirmed["error"] and "HTTP 502" in unconfirmed["error"]
    assert [c[:3] for c in fake.calls("gh")].count(["pr", "merge", "1"]) == 1
    assert status_document(open_run())["alerts"] == []


def test_every_failed_view_of_a_pr_says_whether_it_looks_transient(project, fake_forge):
    from lib.paths import Paths
    from orchestrator import pins
    from orchestrator.forge import ForgeError, forge_for, forge_repo

    proj = project([{"number": 1, "title": "t"}], pipeline=["implement"], platform="github",
                   review={"open": "pr"})
    cfg = load_config(proj.config)
    assert pins.ensure([cfg], proj.home / "state", Paths.from_env().home) == {}
    fake = fake_forge(proj.remote, [PASS], prs=[{"number": 1, "url": "https://github.com/org/app/pull/1",
                                                 "head": "main", "base": "main", "state": "OPEN"}])
    hub = forge_for(forge_repo("github", "git@github.com:org/app.git"), proj.repo, 20.0)
    for call, stderr, transient in [("pr view", BAD_GATEWAY, True),
                                    ("pr checks", "error connecting to api.github.com", True),
                                    ("pr view", "HTTP 404: Not Found (https://api.github.com/graphql)", False)]:
        fake.update(fail={call: {"code": 1, "stderr": stderr}})
        with pytest.raises(ForgeError) as err:
            hub.observe(1)
        assert err.value.transient is transient, (call, stderr)

