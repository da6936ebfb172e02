"""gh shows where a PR stands in a merge queue the way a real gh can: `gh api graphql` (PullRequest.isInMergeQueue,
mergeQueueEntry, autoMergeRequest), never `gh pr view --json isInMergeQueue`, which every gh refuses (the field is
not in gh's PullRequestFields: gh reads it only inside `gh pr merge`).

A queue however slow is watched while the forge shows the PR in it; a server whose schema has no merge queue (an
older GitHub Enterprise) has none to wait in; only a query the forge refuses leaves the state unknown, waited for a
bounded number of polls with a reason that names the refusal.
"""
from __future__ import annotations

import subprocess

import pytest

from forge_fakes import fake_forge, opened_pr, push_issue_branch  # noqa: F401
from workers_fixtures import project, tmux_socket  # noqa: F401

from orchestrator import pulls
from orchestrator.decide import MAX_UNSEEN_POLLS
from orchestrator.forge import ForgeError, MergeUnconfirmed

PASS = {"checks": [{"name": "build", "bucket": "pass"}]}
NO_QUEUE_SCHEMA = {"graphql_unknown_fields": ["isInMergeQueue", "mergeQueueEntry"]}  # GitHub Enterprise before 3.8
REFUSED = {"fail": {"api graphql": {"code": 1, "stderr": "gh: Resource not accessible by integration"}}}


def _graphql(fake) -> list[list[str]]:
    return [c for c in fake.calls("gh") if c[:2] == ["api", "graphql"]]


def _poll(cfg, state_root, record, now: float):
    [seen] = pulls.poll(state_root, lambda _: cfg, [record], now, lambda r: None, lambda _: None)
    return seen


def test_the_fake_gh_refuses_isInMergeQueue_in_pr_view_as_real_gh_does(project, fake_forge):
    proj = project([{"number": 1, "title": "t"}], pipeline=["implement"])
    fake = fake_forge(proj.remote, [PASS])
    called = subprocess.run([str(fake.bin_dir / "gh"), "pr", "view", "1", "--json", "number,isInMergeQueue"],
                            capture_output=True, text=True)
    assert called.returncode == 1 and called.stdout == ""
    lines = called.stderr.splitlines()
    assert lines[:2] == ['Unknown JSON field: "isInMergeQueue"', "Available fields:"]
    assert "  autoMergeRequest" in lines and "  headRefOid" in lines and "  isInMergeQueue" not in lines


def test_a_queued_pr_is_seen_queued_through_graphql(project, fake_forge):
    proj, cfg, state_root, fake, record = opened_pr(project, fake_forge, merge_queue=True)
    record.pr["merging"] = True
    assert pulls.merge(state_root, cfg, cfg.issues[0], record) == "queued"
    record.pr["merge_queued"] = record.pr["head"]
    seen = _poll(cfg, state_root, record, 100.0)
    assert seen.error == "" and seen.queued is True and seen.state == "open"
    assert "merging (queued): position 1, awaiting checks" in record.last_reason
    assert not any("isInMergeQueue" in " ".join(c) for c in fake.calls("gh") if c[:2] == ["pr", "view"])
    [asked, *_] = _graphql(fake)
    assert "number=1" in asked and any("mergeQueueEntry" in a and "autoMergeRequest" in a for a in asked)


def test_a_queue_slower_than_the_unseen_bound_merges_and_completes_the_issue(project, fake_forge):
    """The review's repro: a queue that lands the PR well after MAX_UNSEEN_POLLS views never fails the issue."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = project([{"number": 1, "title": "a"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS], merge_queue=MAX_UNSEEN_POLLS + 10)
    lines: list[str] = []
    failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lines.append)
    assert failed == 0 and proj.issue(1)["status"] == "completed", lines
    assert [p["state"] for p in fake.prs()] == ["MERGED"]
    kinds = [e["action"] for e in proj.events() if e.get("issue") == 1]
    assert "merge_queued" in kinds and "pr_merged" in kinds
    assert "merge_unconfirmed" not in kinds and "skip" not in kinds and "fix_ci" not in kinds
    assert [c[:2] for c in fake.calls("gh")].count(["pr", "merge"]) == 1


def test_a_server_without_merge_queues_says_not_queued_and_a_merge_left_open_is_a_failed_merge(
        project, fake_forge):
    """An older GitHub Enterprise has no isInMergeQueue in its schema, and so no merge queue to wait in (gh itself
    drops the field there): known, not queued; asked again without those fields, so auto-merge is still read."""
    proj, cfg, state_root, fake, record = opened_pr(project, fake_forge, merge_noop=True, **NO_QUEUE_SCHEMA)
    seen = _poll(cfg, state_root, record, 10.0)
    assert seen.error == "" and seen.queued is False
    with pytest.raises(ForgeError, match="in no merge queue") as raised:
        pulls.merge(state_root, cfg, cfg.issues[0], record)
    assert not isinstance(raised.value, MergeUnconfirmed)
    fake.update(auto_merge=True)  # a human enabled auto-merge: that server has it
    assert _poll(cfg, state_root, record, 20.0).queued is True
    assert any("autoMergeRequest" in " ".join(c) and "isInMergeQueue" not in " ".join(c) for c in _graphql(fake))


def test_a_server_without_merge_queues_costs_one_query_a_poll_once_known(project, fake_forge):
    """The first poll learns the schema has no merge queue (refused, asked without mergeQueueEntry, then without
    isInMergeQueue too); the monitor keeps that for its life, so each later poll asks once, only for auto-merge."""
    proj, cfg, state_root, fake, record = opened_pr(project, fake_forge, **NO_QUEUE_SCHEMA)
    seen = [_poll(cfg, state_root, record, now) for now in (10.0, 20.0, 30.0)]
    assert [(s.error, s.queued) for s in seen] == [("", False)] * 3
    asked = [c[-1] for c in _graphql(fake)]
    assert len(asked) == 5, asked
    assert "mergeQueueEntry" in asked[0] and "isInMergeQueue" not in asked[0]  # the entry says it already
    assert all("mergeQueueEntry" not in a and "isInMergeQueue" not in a and "autoMergeRequest" in a
               for a in asked[2:])


def test_a_server_with_isInMergeQueue_but_no_mergeQueueEntry_still_shows_a_queue(project, fake_forge):
    proj, cfg, state_root, fake, record = opened_pr(project, fake_forge, merge_queue=True,
                                                    graphql_unknown_fields=["mergeQueueEntry"])
    record.pr["merging"] = True
    assert pulls.merge(state_root, cfg, cfg.issues[0], record) == "queued"
    record.pr["merge_queued"] = record.pr["head"]
    assert [_poll(cfg, state_root, record, now).queued for now in (10.0, 20.0)] == [True, True]
    asked = [c[-1] for c in _graphql(fake)]
    assert len(asked) == 2 + 1 + 1 and all("isInMergeQueue" in a for a in asked[1:])  # the merge's view learns


def test_a_merge_asks_the_whole_question_again_and_sees_a_queue_the_server_gained(project, fake_forge):
    """A server upgraded while the monitor runs (merge queues now in its schema): the merge's own view asks again,
    so a PR our merge put in a queue is seen queued, never a failed merge "in no merge queue"."""
    proj, cfg, state_root, fake, record = opened_pr(project, fake_forge, merge_queue=True, **NO_QUEUE_SCHEMA)
    assert _poll(cfg, state_root, record, 10.0).queued is False
    fake.update(graphql_unknown_fields=[])
    record.pr["merging"] = True
    assert pulls.merge(state_root, cfg, cfg.issues[0], record) == "queued"
    record.pr["merge_queued"] = record.pr["head"]
    seen = _poll(cfg, state_root, record, 20.0)
    assert seen.error == "" and seen.queued is True and "merging (queued): position 1" in record.last_reason


def test_a_refused_merge_forgets_what_the_server_was_found_to_lack(project, fake_forge):
    """A server upgraded while the monitor runs: a PR someone queued meanwhile reads as in no queue (the polls no
    longer ask about queues), and an older gh refuses to merge a queued PR. The refusal makes the next poll ask the
    whole question again, so the queue is seen, never merged at again until the issue fails."""
    proj, cfg, state_root, fake, record = opened_pr(project, fake_forge, merge_queue=True, **NO_QUEUE_SCHEMA)
    assert _poll(cfg, state_root, record, 10.0).queued is False
    fake.update(graphql_unknown_fields=[],
                fail={"pr merge": {"code": 1, "stderr": "GraphQL: Pull request is already queued to merge"}})
    record.pr["merging"] = True
    with pytest.raises(ForgeError):
        pulls.merge(state_root, cfg, cfg.issues[0], record)
    before = len(_graphql(fake))
    _poll(cfg, state_root, record, 20.0)
    asked = [c[-1] for c in _graphql(fake)][before:]
    assert asked and "mergeQueueEntry" in asked[0], asked


def test_a_refused_queue_query_leaves_the_state_unknown_and_says_why(project, fake_forge):
    proj, cfg, state_root, fake, record = opened_pr(project, fake_forge, merge_noop=True, **REFUSED)
    seen = _poll(cfg, state_root, record, 10.0)
    assert seen.error == "" and seen.queued is None and seen.checks == "passing"
    assert "Resource not accessible by integration" in seen.queue_doubt
    with pytest.raises(MergeUnconfirmed) as raised:
        pulls.merge(state_root, cfg, cfg.issues[0], record)
    said = str(raised.value)
    assert "Resource not accessible by integration" in said and "merge queue" in said
    assert "too old" not in said and "upgrade" not in said.lower()


def test_a_queue_query_that_fails_on_the_network_fails_the_poll_for_a_later_one(project, fake_forge):
    proj, cfg, state_root, fake, record = opened_pr(project, fake_forge, fail={"api graphql": {
        "code": 1, "stderr": "error connecting to api.github.com\ncheck your internet connection or "
                             "https://githubstatus.com", "times": 1}})
    first = _poll(cfg, state_root, record, 10.0)
    assert "error connecting" in first.error and first.queued is False  # a failed poll: decide waits
    again = _poll(cfg, state_root, record, 20.0)
    assert again.error == "" and again.queued is False


def test_a_project_that_merges_by_hand_asks_no_queue(project, fake_forge):
    proj, cfg, state_root, fake, record = opened_pr(project, fake_forge, merge="manual", merge_queue=True)
    seen = _poll(cfg, state_root, record, 10.0)
    assert seen.error == "" and seen.checks == "passing"
    assert _graphql(fake) == []


@pytest.mark.parametrize("said", [
    "gh: API rate limit exceeded for user ID 1234. If you reach out to GitHub Support for help, please include the "
    "request ID ABCD:1234:5678.",
    "gh: You have exceeded a secondary rate limit. Please wait a few minutes before you try again."])
def test_a_rate_limited_queue_query_fails_the_poll_and_never_counts_toward_the_bound(project, fake_forge, said):
    """A rate limit passes: a slow queue watched through one must never fail its issue as "merge not seen"."""
    proj, cfg, state_root, fake, record = opened_pr(project, fake_forge, fail={"api graphql": {"code": 1,
                                                                                           "stderr": said}})
    record.pr.update(merging=True, merge_queued=record.pr["head"])
    seen = _poll(cfg, state_root, record, 10.0)
    assert "rate limit" in seen.error and not record.pr.get("merge_unseen")
