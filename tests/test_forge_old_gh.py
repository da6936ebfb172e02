"""An old gh (2.4, Ubuntu 22.04's package: no autoMergeRequest in `gh pr view --json`) costs one `gh pr view` per
poll, never a refused one: the view asks only fields every gh 2 offers, and the merge queue and auto-merge are read
through `gh api graphql`, which the server answers whatever gh's version. Nothing about a gh is remembered, so a
version manager's shim that picks gh per directory (gh runs in the repository) gets the same questions everywhere.
"""
from __future__ import annotations

from forge_fakes import fake_forge  # noqa: F401
from workers_fixtures import project, tmux_socket  # noqa: F401

from orchestrator import forge, pulls
from test_forge_merge_queue import _opened

OLD_GH = {"unknown_fields": ["autoMergeRequest", "fullDatabaseId", "projectItems"]}
GH_2_FIELDS = {"number", "url", "state", "headRefOid", "baseRefName", "reviewDecision", "reviews"}


def _views(fake) -> list[list[str]]:
    return [c for c in fake.calls("gh") if c[:2] == ["pr", "view"]]


def _poll(cfg, state_root, record, now: float):
    [seen] = pulls.poll(state_root, lambda _: cfg, [record], now, lambda r: None, lambda _: None)
    assert seen.error == "", seen
    return seen


def test_an_old_gh_is_asked_one_view_a_poll_and_still_shows_the_queue(project, fake_forge):
    proj, cfg, state_root, fake, record = _opened(project, fake_forge, merge_queue=True, **OLD_GH)
    before = len(_views(fake))
    assert [_poll(cfg, state_root, record, now).queued for now in (10.0, 20.0)] == [False, False]
    record.pr["merging"] = True
    assert pulls.merge(state_root, cfg, cfg.issues[0], record) == "queued"
    record.pr["merge_queued"] = record.pr["head"]
    assert _poll(cfg, state_root, record, 30.0).queued is True
    asked = _views(fake)[before:]
    assert len(asked) == 4, asked  # 3 polls and the merge's view: none refused, none asked twice
    assert all(set(a[a.index("--json") + 1].split(",")) <= GH_2_FIELDS for a in asked)


def test_no_refusal_of_a_gh_is_remembered():
    """The memory of refusals keyed by the gh binary is gone with the fields it served (a shim is one file for
    several gh versions, picked per directory)."""
    assert not any(name.startswith(("_NO_QUEUE", "QUEUE_FIELDS")) for name in vars(forge))
