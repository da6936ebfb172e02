"""The pull-request loop never loses track of work nor lies: a damaged pull-requests.json, a network failure
right after an accepted merge, a direct push to the default branch while our merge waits in a queue, someone
else's force-push or rebase of the PR's branch, answers the forge's CLI never gives.

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
    assert fresh["set_aside"]["file"] == "pull-requests.json.corrupt" and fresh["set_aside"]["recovered"] == 1
    assert fresh["issues"]["1"]["recovered"] is True  # #1's PR as the event log last told it
    doc = status_document(open_run())
    assert any("was set aside as pull-requests.json.corrupt" in w for w in doc["warnings"]), doc["warnings"]
    first, second = doc["projects"][0]["issues"]
    assert first["pr"] == {"url": "https://github.com/org/app/pull/1", "number": 1, "state": "open",
                           "checks": "pending"}
    assert second["pr"]["number"] == 2  # the new entry is whole

    from orchestrator.cleanup import cleanup

    verdicts = {v.branch: v for v in cleanup(open_run()).verdicts}
    assert verdicts["feature/issue-1"].outcome == "kept", verdicts  # the forge asked again: still open
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


@pytest.mark.parametrize("damage", ["garbage", "set aside"])
def test_a_damaged_pr_file_in_a_project_that_opens_no_prs_says_exactly_how_cleanup_removes_its_worktrees(
        project, damage):
    """review.open "none": the monitor never writes pull-requests.json, so a damaged one is never set aside by
    itself, and one set aside keeps its note. Cleanup keeps the worktree (the forge cannot be asked) and its reason
    says exactly what to do; doing it (the `mv` it names, or removing the key it names) lets cleanup remove the
    clean, pushed worktree."""
    proj = project([{"number": 1, "title": "first"}], pipeline=["implement"])
    lines: list[str] = []

    def done() -> bool:
        _one_cycle(lines)
        return proj.issue(1).get("status") == "completed"

    retry_until(done, seconds=120, interval=0.05)
    path = proj.state / "pull-requests.json"
    if damage == "garbage":
        path.write_text("not json")
    else:
        path.write_text(json.dumps({"issues": {}, "set_aside": {"file": "pull-requests.json.corrupt", "why": "x",
                                                                "at": "2031-01-01T00:00:00Z", "recovered": 0}}))
    from orchestrator.cleanup import cleanup

    [verdict] = cleanup(open_run()).verdicts
    assert verdict.outcome == "kept" and (proj.root / "worktrees" / "issue-1").is_dir()
    [why] = verdict.reasons
    assert "`cleanup --force`" in why
    if damage == "garbage":
        assert f"move it away yourself: mv {path} {path}.corrupt" in why, why
        path.rename(f"{path}.corrupt")
    else:
        assert f"remove the \"set_aside\" key from {path}" in why, why
        doc = json.loads(path.read_text())
        del doc["set_aside"]
        path.write_text(json.dumps(doc))
    [verdict] = cleanup(open_run()).verdicts
    assert verdict.outcome == "removed" and not (proj.root / "worktrees" / "issue-1").exists()


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


# --- a direct push to the default branch while our merge waits -------------------------------------------------

def _clone(tmp_path, handle):
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(handle.remote), str(work))
    return work


def _commit(work, name: str, message: str) -> str:
    (work / name).write_text(f"{name}\n")
    git(work, "add", name)
    git(work, "commit", "-q", "-m", message)
    return git(work, "rev-parse", "HEAD")


def _rebase_onto_main(work, branch: str) -> None:
    """What a forge's rebase merge does: each commit of the PR made anew on main (new committer date)."""
    import subprocess

    for sha in git(work, "rev-list", "--reverse", f"main..{branch}").split():
        subprocess.run(["git", "cherry-pick", "--allow-empty", sha], cwd=work, check=True, capture_output=True,
                       env={**os.environ, "GIT_COMMITTER_DATE": "2031-01-01T00:00:00Z"})


MOVES = {  # how main moves after the snapshot, made in a clone and pushed, as the forge or an agent would
    "the merge commit of our PR": ["git merge -q --no-ff f-1 -m Merge"],
    "the squash of our PR": ["git merge -q --squash f-1", "git commit -q -m Squash"],
    "a fast-forward to our PR": ["git merge -q --ff-only f-1"],
    "a rebase of our PR's two commits": ["REBASE"],
    "a direct push": ["ROGUE"],
    "a direct push, then the merge commit of our PR": ["ROGUE", "git merge -q --no-ff f-1 -m Merge"],
    "the squash of our PR on top of a direct push": ["ROGUE", "git merge -q --squash f-1", "git commit -q -m Sq"],
    "a merge commit of our PR with a change of its own": ["git merge -q --no-ff --no-commit f-1", "EXTRA",
                                                          "git commit -q -m Merge"],
    "a direct push after the merge commit of our PR": ["git merge -q --no-ff f-1 -m Merge", "ROGUE"],
}
OURS = {"the merge commit of our PR", "the squash of our PR", "a fast-forward to our PR",
        "a rebase of our PR's two commits"}


@pytest.mark.parametrize("git_version", ["2.38 or later", "before 2.38"])
@pytest.mark.parametrize("move", list(MOVES))
def test_while_our_merge_is_under_way_only_its_own_move_of_main_raises_no_alert(make_repo, tmp_path, monkeypatch,
                                                                                move, git_version):
    """Our PR waits in a merge queue (record `merging`); another worker's stage ends in the same repository, which
    checks the default branch; later the poll sees the PR merged and the snapshot is to take main's new head. Main
    moved by our merge alone (merge commit, squash, fast-forward, rebase): no alert, the snapshot takes it. Main
    holding anything else (a direct push before, under or after our merge; a merge commit with changes of its
    own): default_branch_moved at the stage end, and the merge's landing never swallows it. The same on a git
    without `merge-tree --write-tree` (before 2.38: forced here by giving git an option it does not know, as
    such a git answers it), whose fallback reads a PR head that holds the base as its own merged tree."""
    import shlex
    import subprocess

    from orchestrator import alerts, worktrees

    if git_version == "before 2.38":
        real_git = worktrees.git

        def old_git(cwd, *args, **kwargs):
            if "merge-tree" in args:  # what git 2.37 answers: usage, exit 129, nothing on stdout
                args = tuple("--no-such-option-before-2.38" if a == "--write-tree" else a for a in args)
            return real_git(cwd, *args, **kwargs)

        monkeypatch.setattr(worktrees, "git", old_git)
    from orchestrator.config import parse_config
    from orchestrator.decide import Snapshot
    from orchestrator.state import WorkerRecord

    handle = make_repo("app")
    cfg = parse_config(tmp_path / "p-issues.json", {
        "project": "p", "repo_path": str(handle.path), "branch_prefix": "f-", "default_branch": "main",
        "issues": [{"number": 1, "title": "a"}, {"number": 2, "title": "b"}]})
    root = tmp_path / "state"
    doc = alerts.current(root, [cfg], 1000.0)
    old = git(handle.remote, "rev-parse", "main")
    work = _clone(tmp_path, handle)
    git(work, "switch", "-q", "-c", "f-1")
    _commit(work, "one.txt", "one")
    head = _commit(work, "two.txt", "two")
    git(work, "push", "-q", "origin", "f-1")
    git(work, "switch", "-q", "main")
    handle.git("fetch", "-q", "origin", "f-1")  # our worktree made these commits: the repository has them
    for step in MOVES[move]:
        if step == "ROGUE":
            _commit(work, "rogue.txt", "pushed straight to main")
        elif step == "EXTRA":
            (work / "extra.txt").write_text("slipped in\n")
            git(work, "add", "extra.txt")
        elif step == "REBASE":
            _rebase_onto_main(work, "f-1")
        else:
            subprocess.run(shlex.split(step), cwd=work, check=True, capture_output=True)
    git(work, "push", "-q", "origin", "main")
    new = git(handle.remote, "rev-parse", "main")
    assert new != old

    ours = WorkerRecord(1, status="running", project="p", issue_number=1, branch="f-1",
                        pr={"watching": True, "merging": True, "merge_queued": head, "number": 1, "head": head})
    other = WorkerRecord(2, status="running", project="p", issue_number=2, branch="f-2", try_id=1,
                         stage="implement")
    errors: list[str] = []
    _, found, _ = alerts.check(doc, [cfg], [ours, other], [Snapshot(2, 1, True, False, 0, 1, False, 0, 5)],
                               1010.0, lambda r: 1005.0, errors.append)
    assert errors == []
    moved = [a for a in found if a["kind"] == "default_branch_moved"]
    assert bool(moved) is (move not in OURS), (move, found)
    alerts.end(root)  # a run whose snapshot is still the old head, for the landing
    doc = alerts.current(root, [cfg], 2000.0)
    doc["repos"][str(handle.path)]["default_head"] = old
    from lib.statefile import write_json

    write_json(alerts.run_file(root), doc)
    said: list[str] = []
    accepted = alerts.accept_default_head(root, cfg, cfg.issues[0], head, [], said.append)
    assert accepted == (new if move in OURS else None), move
    landed = [a for a in alerts.load(root)["alerts"] if a["kind"] == "default_branch_moved"]
    assert bool(landed) is (move not in OURS), move
    if landed:  # announced as the monitor announces one
        assert f"our merge of {head[:12]} landed and main holds more than the merge of our PR" in landed[0]["detail"]
        assert said == [f"ALERT default_branch_moved (project p): {landed[0]['detail']}"]
        events = [json.loads(line)["event"] for line in (root / "orchestrator-log.jsonl").read_text().splitlines()]
        assert [e["kind"] for e in events if e["action"] == "alert"] == ["default_branch_moved"]
    else:
        assert alerts.load(root)["repos"][str(handle.path)]["default_head"] == new


@pytest.mark.parametrize("pushed", [False, True])
def test_a_direct_push_to_main_while_our_merge_waits_in_the_queue_is_alerted_and_our_merge_alone_is_not(
        project, fake_forge, tmp_path, pushed):
    """gh with a merge queue that merges with a merge commit: our PR is queued; meanwhile something pushes
    straight to main (as a rogue agent would). The queue merges our PR on top of it; seeing it merged completes
    the issue and, the landed main holding more than our merge, raises default_branch_moved right then (the run
    ends with this merge: no later check would). Without the push: merged, no alert."""
    proj = project([{"number": 1, "title": "a"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS], merge_queue=6, merge_method="merge")
    lines: list[str] = []

    def queued() -> bool:
        _one_cycle(lines)
        return any(pr.get("queued") for pr in fake.prs())

    retry_until(queued, seconds=120, interval=0.05)
    if pushed:
        work = tmp_path / "rogue"
        git(tmp_path, "clone", "-q", str(proj.remote), str(work))
        _commit(work, "rogue.txt", "pushed straight to main")
        git(work, "push", "-q", "origin", "main")

    def completed() -> bool:
        _one_cycle(lines)
        return proj.issue(1).get("status") == "completed"

    retry_until(completed, seconds=120, interval=0.05)
    assert [pr["state"] for pr in fake.prs()] == ["MERGED"]
    main = git(proj.remote, "rev-parse", "main")
    subject = git(proj.remote, "log", "-1", "--format=%s", "main")
    assert subject == ("Merge pull request #1" if pushed else "implement #1")
    [merged] = [e for e in proj.events() if e["action"] == "pr_merged"]
    alerts = status_document(open_run())["alerts"]
    if pushed:
        assert merged["default_head"] is None
        [alert] = alerts
        assert alert["kind"] == "default_branch_moved" and f"-> {main[:12]}" in alert["detail"]
        assert any(line.startswith("ALERT default_branch_moved") for line in lines), lines
        assert [e["kind"] for e in proj.events() if e["action"] == "alert"] == ["default_branch_moved"]
    else:
        assert merged["default_head"] == main and alerts == []


# --- someone else force-pushes the PR's branch -------------------------------------------------------------------

def _pr_setup(project, fake_forge, **state):
    from lib.paths import Paths
    from orchestrator import pins
    from orchestrator.state import WorkerRecord

    from forge_fakes import push_issue_branch

    proj = project([{"number": 1, "title": "t"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 5})
    cfg = load_config(proj.config)
    state_root = proj.home / "state"
    assert pins.ensure([cfg], state_root, Paths.from_env().home) == {}
    fake = fake_forge(proj.remote, [PASS], **state)
    record = WorkerRecord(1, status="running", project="demo", issue_number=1, branch="feature/issue-1")
    ours = push_issue_branch(proj, "ours.txt")
    pulls.open_pr(state_root, cfg, cfg.issues[0], record, 0.0)
    assert record.pr["head"] == ours
    return proj, cfg, state_root, fake, record, ours


def _force_push_from_main(proj, tmp_path, name: str) -> str:
    """Someone else's clone resets the PR's branch to main plus a commit of theirs, and force-pushes it."""
    work = tmp_path / f"other-{name}"
    git(tmp_path, "clone", "-q", str(proj.remote), str(work))
    git(work, "switch", "-q", "-C", "feature/issue-1", "origin/main")
    sha = _commit(work, name, "someone else's work")
    git(work, "push", "-q", "-f", "origin", "feature/issue-1")
    return sha


def test_a_force_push_that_drops_our_commits_is_never_taken_as_the_prs_head_nor_merged(project, fake_forge, tmp_path):
    """After three polls someone else's head of the PR counts, but only when it holds our last push: one that
    dropped it (a force-push from main) fails each poll, saying so, and is never merged; a push on top of ours
    is taken as before."""
    from orchestrator.decide import PrWork

    proj, cfg, state_root, fake, record, ours = _pr_setup(project, fake_forge)
    theirs = _force_push_from_main(proj, tmp_path, "theirs.txt")
    said: list[str] = []
    views = [pulls.poll(state_root, lambda _: cfg, [record], now, lambda r: None, said.append)[0]
             for now in (10.0, 20.0, 30.0, 40.0)]
    assert [v.error for v in views[:2]] == ["", ""] and views[0].head == theirs  # older head: decide waits
    for view in views[2:]:
        assert f"PR #1's head {theirs[:12]} does not hold our last push {ours[:12]}" in view.error, view
    assert record.pr["head"] == ours and "force-pushed" in record.last_reason
    work = pulls.work_of(cfg, record)
    assert isinstance(work, PrWork) and work.head == ours
    assert not any(c[:2] == ["pr", "merge"] for c in fake.calls("gh"))
    # Our commits pushed back, with theirs on top: their head holds ours and counts from the next poll.
    git(proj.repo, "switch", "-q", "feature/issue-1")
    git(proj.repo, "fetch", "-q", "origin", "feature/issue-1")
    git(proj.repo, "merge", "-q", "--no-edit", "FETCH_HEAD")
    git(proj.repo, "push", "-q", "origin", "feature/issue-1")
    both = git(proj.repo, "rev-parse", "HEAD")
    [view] = pulls.poll(state_root, lambda _: cfg, [record], 50.0, lambda r: None, said.append)
    assert view.error == "" and record.pr["head"] == both and "its checks count from now" in said[-1]


def test_a_pr_merged_by_a_human_after_a_force_push_that_dropped_our_commits_is_never_shown_merged(
        project, fake_forge, tmp_path):
    proj, cfg, state_root, fake, record, ours = _pr_setup(project, fake_forge)
    theirs = _force_push_from_main(proj, tmp_path, "theirs.txt")
    fake.update(prs=[{**pr, "state": "MERGED", "merged_sha": theirs} for pr in fake.prs()])  # a human merges it
    [view] = pulls.poll(state_root, lambda _: cfg, [record], 10.0, lambda r: None, lambda _: None)
    assert f"PR #1 was merged at {theirs[:12]}, which does not hold our last push {ours[:12]}" in view.error
    assert view.state == "" and json.loads((proj.state / "pull-requests.json").read_text())["issues"]["1"][
        "state"] == "open"


def test_a_set_aside_note_lasts_until_the_user_removes_it_and_a_damaged_file_is_never_read_as_no_pr(tmp_path):
    """Without a monitor: status's reader says the file is damaged; the first write sets it aside and says so once
    (its return value and an event); the fresh file keeps the note until the user removes its key."""
    state_root = tmp_path / "state"
    path = pulls.prs_file(state_root, "demo")
    path.parent.mkdir(parents=True)
    path.write_text('{"issues": {"1": "not an object"}}')
    recorded = pulls.read(state_root, "demo")
    assert recorded.entries == {} and "an issue's entry is not an object" in recorded.doubt
    note = pulls.save(state_root, "demo", 2, number=9, url="u", state="open")
    assert note and "set aside as pull-requests.json.corrupt" in note
    assert path.with_name("pull-requests.json.corrupt").read_text() == '{"issues": {"1": "not an object"}}'
    assert pulls.save(state_root, "demo", 2, checks="passing") is None  # said once
    warning = pulls.read(state_root, "demo").doubt
    assert pulls.read(state_root, "other").doubt == ""
    assert f"once you have looked at {path.with_name('pull-requests.json.corrupt')}, remove the \"set_aside\" key " \
           f"from {path} (its \"issues\" stay; nothing removes it by itself), or remove the worktrees anyway with " \
           "`cleanup --force`" in warning
    doc = json.loads(path.read_text())
    assert doc["issues"]["2"]["number"] == 9 and doc["issues"]["2"]["checks"] == "passing"
    del doc["set_aside"]
    path.write_text(json.dumps(doc))
    assert pulls.read(state_root, "demo").doubt == ""
    path.write_text("damaged again")  # the older .corrupt, the only record of PR 1's time, is kept
    second = pulls.save(state_root, "demo", 3, number=10)
    [newer] = [p for p in path.parent.iterdir() if p.name.startswith("pull-requests.json.corrupt-")]
    assert f"set aside as {newer.name}" in second and newer.read_text() == "damaged again"
    assert path.with_name("pull-requests.json.corrupt").read_text() == '{"issues": {"1": "not an object"}}'


@pytest.mark.parametrize("state", ["DRAFT", None, "open"])
def test_a_pr_in_a_state_gh_never_prints_is_a_failed_poll_never_judged_open(project, fake_forge, state):
    """A green PR whose state reads as nothing gh documents is neither merged nor completed as "open and green":
    the poll fails, saying what came back, and is tried again."""
    proj, cfg, state_root, fake, record, ours = _pr_setup(project, fake_forge)
    fake.update(prs=[{**pr, "state": state} for pr in fake.prs()])
    [view] = pulls.poll(state_root, lambda _: cfg, [record], 10.0, lambda r: None, lambda _: None)
    assert "unexpected JSON" in view.error and "unknown PR state" in view.error and view.state == ""
    fake.update(prs=[{**pr, "state": "OPEN"} for pr in fake.prs()])
    [view] = pulls.poll(state_root, lambda _: cfg, [record], 20.0, lambda r: None, lambda _: None)
    assert view.error == "" and view.state == "open" and view.checks == "passing"


def test_a_pr_created_that_the_forges_list_does_not_show_yet_is_adopted_at_the_next_try_never_duplicated(
        project, fake_forge):
    """gh pr create worked, but gh pr list does not show the new PR yet: a transient failure (tried again at the
    next poll, which adopts it), never a failed issue nor a second PR."""
    proj = project([{"number": 1, "title": "a"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS], list_lag=1)
    lines: list[str] = []
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lines.append) == 0, lines
    assert proj.issue(1)["status"] == "completed"
    assert [(pr["number"], pr["state"]) for pr in fake.prs()] == [(1, "MERGED")]
    kinds = [e["action"] for e in proj.events() if e.get("issue") == 1]
    assert kinds.index("pr_open_failed") < kinds.index("pr_adopted") < kinds.index("pr_merged")
    [failure] = [e for e in proj.events() if e["action"] == "pr_open_failed"]
    assert "was created but cannot be found" in failure["error"]


def test_a_pr_branch_rebased_by_someone_else_still_holds_our_work_and_counts_after_three_polls(
        project, fake_forge, tmp_path):
    """A human rebases the PR's branch onto a newer main and force-pushes: our commits are there as the same
    patches, so the new head counts (as a push on top of ours would); nothing is failed."""
    proj, cfg, state_root, fake, record, ours = _pr_setup(project, fake_forge)
    work = tmp_path / "rebaser"
    git(tmp_path, "clone", "-q", str(proj.remote), str(work))
    _commit(work, "main-moved.txt", "main moved on")
    git(work, "push", "-q", "origin", "main")
    git(work, "switch", "-q", "feature/issue-1")
    git(work, "-c", "user.name=Human", "-c", "user.email=h@example.com", "rebase", "-q", "main")
    git(work, "push", "-q", "-f", "origin", "feature/issue-1")
    rebased = git(work, "rev-parse", "HEAD")
    said: list[str] = []
    views = [pulls.poll(state_root, lambda _: cfg, [record], now, lambda r: None, said.append)[0]
             for now in (10.0, 20.0, 30.0)]
    assert [v.error for v in views] == ["", "", ""] and record.pr["head"] == rebased
    assert "its checks count from now" in said[-1]


def test_a_fresh_pr_file_starts_from_what_the_event_log_last_said_of_each_pr(tmp_path):
    state_root = tmp_path / "state"
    path = pulls.prs_file(state_root, "demo")
    path.parent.mkdir(parents=True)
    events = [{"action": "pr_opened", "issue": 5, "url": "https://github.com/o/a/pull/15"},
              {"action": "pr_merged", "issue": 5},
              {"action": "pr_opened", "issue": 6, "url": "https://gitlab.example.com/g/a/-/merge_requests/16"},
              {"action": "skip", "issue": 6, "reason": "pr closed"},
              {"action": "pr_adopted", "issue": 7, "url": "https://github.com/o/a/pull/17"},
              {"action": "pr_opened", "issue": True, "url": "https://github.com/o/a/pull/18"},
              {"action": "pr_opened", "issue": 8, "url": "https://github.com/o/a/issues/19"}]
    (path.parent / "orchestrator-log.jsonl").write_text(
        "".join(json.dumps({"timestamp": "t", "event": e}) + "\n" for e in events) + "{cut by a cra\n[]\n")
    os.mkfifo(path)
    assert "set aside as pull-requests.json.corrupt, a fresh one is written with the 3 PR(s)" in pulls.save(
        state_root, "demo", 9, number=20)
    entries = pulls.read(state_root, "demo").entries
    assert {k: (v.get("number"), v.get("state")) for k, v in entries.items()} == {
        "5": (15, "merged"), "6": (16, "closed"), "7": (17, "open"), "9": (20, None)}


def test_two_merges_of_ours_landing_together_raise_no_alert_whichever_is_seen_first(make_repo, tmp_path,
                                                                                    monkeypatch):
    """A queue lands #1's PR, then #2's on top; the poll sees #2 merged first: both merges are ours (the other
    merge under way is in its worker's record, as the caller holds it: no record is read again), no alert, and
    main's new head is taken."""
    from orchestrator import alerts
    from orchestrator.config import parse_config
    from orchestrator.state import RunFiles, WorkerRecord

    handle = make_repo("app")
    cfg = parse_config(tmp_path / "p-issues.json", {
        "project": "p", "repo_path": str(handle.path), "branch_prefix": "f-", "default_branch": "main",
        "issues": [{"number": 1, "title": "a"}, {"number": 2, "title": "b"}]})
    root = tmp_path / "state" / "p"
    alerts.current(root, [cfg], 1000.0)
    work = _clone(tmp_path, handle)
    heads = {}
    for n in (1, 2):
        git(work, "switch", "-q", "-c", f"f-{n}", "origin/main")
        heads[n] = _commit(work, f"{n}.txt", f"work of #{n}")
        git(work, "push", "-q", "origin", f"f-{n}")
        handle.git("fetch", "-q", "origin", f"f-{n}")
    git(work, "switch", "-q", "main")
    git(work, "merge", "-q", "--no-ff", "f-1", "-m", "Merge #1")
    git(work, "merge", "-q", "--no-ff", "f-2", "-m", "Merge #2")
    git(work, "push", "-q", "origin", "main")
    other = WorkerRecord(1, status="running", project="p", issue_number=1, branch="f-1",
                         pr={"watching": True, "merging": True, "head": heads[1]})
    RunFiles(root).save_worker(other)
    read: list[int] = []
    monkeypatch.setattr(RunFiles, "load_worker", lambda self, n: read.append(n) or other)
    monkeypatch.setattr(RunFiles, "recorded_workers", lambda self: read.append(0) or [1])
    said: list[str] = []
    assert alerts.accept_default_head(root, cfg, cfg.issues[1], heads[2], [other], said.append) == \
        git(handle.remote, "rev-parse", "main")
    assert said == [] and alerts.load(root)["alerts"] == []
    assert read == []  # the caller's records: none read again
