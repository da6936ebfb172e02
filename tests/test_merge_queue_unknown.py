"""A forge that will not say whether a PR waits in a merge queue: "cannot say" never counts as queued.

Its GraphQL refuses the question (`gh api graphql`: a token without access, say), so a PR's queue state is unknown
(None). A merge call that left such a PR open may have queued it, or done nothing: the loop says it cannot tell and
why, watches a bounded number of polls, and then fails the issue with that reason, never watches forever, never
says "queued".
"""
from __future__ import annotations

import json
import time

import pytest

from forge_fakes import fake_forge, opened_pr, push_issue_branch  # noqa: F401
from workers_fixtures import project, tmux_socket  # noqa: F401

from orchestrator import pulls
from orchestrator.decide import MAX_UNSEEN_POLLS, ActionKind, PrView, PrWork, _judge_pr
from orchestrator.forge import MergeUnconfirmed
from orchestrator.queue import IssueRef

PASS = {"checks": [{"name": "build", "bucket": "pass"}]}
REFUSED = {"fail": {"api graphql": {"code": 1, "stderr": "gh: Resource not accessible by integration"}}}


class WatchedWithoutLimit(Exception):
    pass


def test_a_merge_call_that_did_nothing_where_the_queue_cannot_be_read_is_never_taken_as_queued(project, fake_forge):
    """gh exits 0 having done nothing; the PR is still open and the forge will not say whether a queue holds it: not
    "queued" (which would be watched as a merge under way), but a merge not seen, said so."""
    proj, cfg, state_root, fake, record = opened_pr(project, fake_forge, merge_noop=True, **REFUSED)
    with pytest.raises(MergeUnconfirmed, match="still open after the merge was accepted.*would not say whether "
                                               "it waits in a merge queue.*Resource not accessible"):
        pulls.merge(state_root, cfg, cfg.issues[0], record)
    entry = json.loads((proj.state / "pull-requests.json").read_text())["issues"]["1"]
    assert entry["state"] == "open" and not entry.get("merge_queued")
    assert [p["state"] for p in fake.prs()] == ["OPEN"]


def test_a_merge_that_did_nothing_where_the_queue_cannot_be_read_fails_the_issue_after_a_bounded_wait_saying_why(
        project, fake_forge):
    """The whole loop: one merge call, a bounded number of polls of a PR that stays open, then the issue fails with
    a reason that says the merge was not seen and why; never `merging (queued)`, never a watch without end."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = project([{"number": 1, "title": "a"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS], merge_noop=True, **REFUSED)
    lines: list[str] = []
    run = open_run()

    def sleep(seconds: float) -> None:  # the monitor's wait between cycles: a watch without end is a failure here
        views = [c for c in fake.calls("gh") if c[:2] == ["pr", "view"]]
        if len(views) > 4 * MAX_UNSEEN_POLLS + 20:
            raise WatchedWithoutLimit(f"{len(views)} views of an open PR after one merge call")
        time.sleep(seconds)

    run.sleep = sleep
    failed = monitor(run, cycle=0.2, no_delay=True, say=lines.append)
    assert failed == 1 and proj.issue(1)["status"] == "failed", lines
    [skip] = [e for e in proj.events() if e["action"] == "skip" and e.get("issue") == 1]
    assert "merge not seen" in skip["reason"] and "would not say whether it waits in a merge queue" in skip["reason"]
    assert "Resource not accessible by integration" in skip["reason"] and "too old" not in skip["reason"]
    assert [c[:2] for c in fake.calls("gh")].count(["pr", "merge"]) == 1
    kinds = [e["action"] for e in proj.events() if e.get("issue") == 1]
    assert "merge_queued" not in kinds and "merge_unconfirmed" in kinds and "pr_merged" not in kinds
    assert not any("merging (queued)" in line for line in lines)
    assert [p["state"] for p in fake.prs()] == ["OPEN"]  # left as it is, for a human


def _unseen_work(**kw):
    return PrWork(**{"watching": True, "head": "h1", "merge": "auto", **kw})


def _open_poll(**kw):
    return PrView(**{"worker_id": 1, "number": 7, "state": "open", "head": "h1", "checks": "passing",
                     "queued": None, "queue_doubt": "gh api graphql: gh: Resource not accessible by integration", **kw})


def _worker():
    from orchestrator.decide import WorkerView

    return WorkerView(worker_id=1, issue=IssueRef("demo", 1))


@pytest.mark.parametrize("name,work,poll,expected", [
    ("our merge unseen, within the bound: wait, no second merge", _unseen_work(merge_unseen=3), _open_poll(), []),
    ("our merge unseen, at the bound: failed, saying so", _unseen_work(merge_unseen=MAX_UNSEEN_POLLS), _open_poll(),
     [ActionKind.SKIP]),
    ("queued, now unknown, past the bound: failed",
     _unseen_work(merge_queued="h1", merge_unseen=MAX_UNSEEN_POLLS + 1), _open_poll(), [ActionKind.SKIP]),
    ("our merge unseen, merged meanwhile: done", _unseen_work(merge_unseen=MAX_UNSEEN_POLLS),
     _open_poll(state="merged"), [ActionKind.PR_DONE]),
    ("our merge unseen, its checks fail: a fix round", _unseen_work(merge_unseen=2),
     _open_poll(checks="failing", failed=("tests",)), [ActionKind.FIX_CI]),
    ("no merge of ours: an unknown queue state merges green", _unseen_work(), _open_poll(), [ActionKind.MERGE_PR]),
    ("our merge unseen, but the forge now shows no queue: merged again", _unseen_work(merge_unseen=2),
     _open_poll(queued=False), [ActionKind.MERGE_PR]),
])
def test_decide_never_waits_without_limit_on_a_queue_it_cannot_see(name, work, poll, expected):
    actions = _judge_pr(_worker(), work, poll)
    assert [a.kind for a in actions] == expected, name
    if expected == [ActionKind.SKIP]:
        assert "merge not seen" in actions[0].reason and "would not say" in actions[0].reason
        assert "Resource not accessible" in actions[0].reason
