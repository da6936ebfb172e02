"""A gh too old for the merge-queue fields costs one `gh pr view` per poll, not two: its refusal (`Unknown JSON
field`) is remembered for that very gh binary; another one in its place (an upgrade) is asked with them again.
"""
from __future__ import annotations

import os

from forge_fakes import fake_forge  # noqa: F401
from workers_fixtures import project, tmux_socket  # noqa: F401

from orchestrator import pulls
from test_merge_queue_unknown import OLD_GH, _opened


def _views(fake) -> list[list[str]]:
    return [c for c in fake.calls("gh") if c[:2] == ["pr", "view"]]


def _poll(cfg, state_root, record, now: float):
    [seen] = pulls.poll(state_root, lambda _: cfg, [record], now, lambda r: None, lambda _: None)
    assert seen.error == "", seen
    return seen


def test_an_old_gh_is_asked_once_per_poll_after_its_first_refusal(project, fake_forge):
    proj, cfg, state_root, fake, record = _opened(project, fake_forge, **OLD_GH)
    before = len(_views(fake))
    seen = [_poll(cfg, state_root, record, now) for now in (10.0, 20.0, 30.0, 40.0)]
    assert [s.queued for s in seen] == [None] * 4 and all(s.checks == "passing" for s in seen)
    asked = _views(fake)[before:]
    assert len(asked) == 5, asked  # the one refusal, then one view a poll
    assert all("isInMergeQueue" not in " ".join(a) for a in asked[-3:])


def test_a_gh_upgraded_in_place_is_asked_for_the_queue_fields_again(project, fake_forge):
    proj, cfg, state_root, fake, record = _opened(project, fake_forge, **OLD_GH)
    assert _poll(cfg, state_root, record, 10.0).queued is None
    fake.update(unknown_fields=[])  # a newer gh installed over the old one
    gh = fake.bin_dir / "gh"
    gh.write_text(gh.read_text())
    stat = gh.stat()
    os.utime(gh, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert _poll(cfg, state_root, record, 20.0).queued is False
    assert "isInMergeQueue" in " ".join(_views(fake)[-1])


def test_a_gh_that_stays_the_same_file_is_asked_for_the_queue_fields_again_once_the_time_is_up(
        project, fake_forge, monkeypatch):
    """A version manager's shim stays the same file while the gh behind it is upgraded: the refusal is remembered
    for forge.QUEUE_FIELDS_RECHECK_S, not for the monitor's whole life."""
    from orchestrator import forge

    proj, cfg, state_root, fake, record = _opened(project, fake_forge, **OLD_GH)
    assert _poll(cfg, state_root, record, 10.0).queued is None
    fake.update(unknown_fields=[])  # the gh behind the shim was upgraded; the shim itself did not change
    assert _poll(cfg, state_root, record, 20.0).queued is None  # still remembered
    monkeypatch.setattr(forge, "QUEUE_FIELDS_RECHECK_S", 0.0)
    assert _poll(cfg, state_root, record, 30.0).queued is False
