"""An older gh (2.18 to 2.28: headRefOid, but no autoMergeRequest in `gh pr view --json`) costs one `gh pr view`
per poll, never a refused one: the view asks only fields gh has offered since 2.18, and the merge queue and
auto-merge are read through `gh api graphql`, which the server answers whatever gh's version. Nothing about a gh is remembered, so a
version manager's shim that picks gh per directory (gh runs in the repository) gets the same questions everywhere.
"""
from __future__ import annotations

from forge_fakes import fake_forge, opened_pr  # noqa: F401
from workers_fixtures import project, tmux_socket  # noqa: F401

from orchestrator import pulls

OLD_GH = {"unknown_fields": ["autoMergeRequest", "fullDatabaseId"]}
GH_2_18_FIELDS = {"number", "url", "state", "headRefOid", "baseRefName", "reviewDecision", "reviews"}


def _views(fake) -> list[list[str]]:
    return [c for c in fake.calls("gh") if c[:2] == ["pr", "view"]]


def _poll(cfg, state_root, record, now: float):
    [seen] = pulls.poll(state_root, lambda _: cfg, [record], now, lambda r: None, lambda _: None)
    assert seen.error == "", seen
    return seen


def test_an_old_gh_is_asked_one_view_a_poll_and_still_shows_the_queue(project, fake_forge):
    proj, cfg, state_root, fake, record = opened_pr(project, fake_forge, merge_queue=True, **OLD_GH)
    before = len(_views(fake))
    assert [_poll(cfg, state_root, record, now).queued for now in (10.0, 20.0)] == [False, False]
    record.pr["merging"] = True
    assert pulls.merge(state_root, cfg, cfg.issues[0], record) == "queued"
    record.pr["merge_queued"] = record.pr["head"]
    assert _poll(cfg, state_root, record, 30.0).queued is True
    asked = _views(fake)[before:]
    assert len(asked) == 4, asked  # 3 polls and the merge's view: none refused, none asked twice
    assert all(set(a[a.index("--json") + 1].split(",")) <= GH_2_18_FIELDS for a in asked)


SHIM = r"""
import json, os, sys
# A version manager's shim: which gh runs depends on the directory (an older one in old-repo).
old = "old-repo" in os.getcwd()
args = sys.argv[1:]
def opt(name):
    for n, arg in enumerate(args):
        if arg == name:
            return args[n + 1]
if args[:2] == ["pr", "view"]:
    fields = opt("--json").split(",")
    for field in fields:
        if field in ("isInMergeQueue",) + (("autoMergeRequest",) if old else ()):
            sys.exit(print('Unknown JSON field: "%s"' % field, file=sys.stderr) or 1)
    doc = {"number": 1, "url": "https://github.com/o/r/pull/1", "state": "OPEN", "headRefOid": "a" * 40,
           "baseRefName": "main", "reviewDecision": "", "reviews": [], "autoMergeRequest": None}
    print(json.dumps({f: doc.get(f) for f in fields}))
elif args[:2] == ["pr", "checks"]:
    print(json.dumps([{"name": "b", "state": "SUCCESS", "bucket": "pass", "link": ""}]))
elif args[:2] == ["api", "graphql"]:
    # In a queue, as GitHub says it: isInMergeQueue and its mergeQueueEntry.
    entry = {"state": "QUEUED", "position": 1}
    print(json.dumps({"data": {"repository": {"pullRequest": {"isInMergeQueue": True, "mergeQueueEntry": entry,
                                                                "autoMergeRequest": None}}}}))
else:
    sys.exit(1)
"""


def test_a_shim_that_picks_gh_per_directory_gets_the_same_answer_in_each(tmp_path, monkeypatch):
    """Nothing is remembered of one directory's gh for another's (gh runs in the repository)."""
    import os
    import sys

    from orchestrator.forge import ForgeRepo, GitHub

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "gh"
    shim.write_text(f"#!{os.path.realpath(sys.executable)}\n" + SHIM)
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    repo = ForgeRepo("github", "github.com", "o/r")
    new, old = (tmp_path / "new-repo", tmp_path / "old-repo")
    new.mkdir()
    old.mkdir()
    seen = [GitHub(repo, where).observe(1) for where in (new, old, new, old)]
    assert [(s.queued, s.checks, s.queue_doubt) for s in seen] == [(True, "passing", "")] * 4
