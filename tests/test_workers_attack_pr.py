"""The pull-request loop attacked: forges that answer otherwise than hoped, people who push, retarget or fork.

Each case asks: can the loop merge what it did not judge green, record a merge that did not happen, adopt a PR
that is not ours, or pass terminal escapes and huge logs through? Fake gh/glab from tests/forge_fakes.py.
"""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import git
from forge_fakes import fake_forge, push_issue_branch  # noqa: F401
from workers_fixtures import project, tmux_socket  # noqa: F401

from lib.paths import Paths
from orchestrator import pins, pulls
from orchestrator.config import load_config
from orchestrator.forge import ForgeError, ForgeRepo, forge_for
from orchestrator.state import WorkerRecord

PASS = {"checks": [{"name": "build", "bucket": "pass"}]}


def _setup(project, fake_forge, platform="github", rounds=None, **state):
    proj = project([{"number": 1, "title": "t"}], pipeline=["implement"], platform=platform,
                   review={"open": "pr", "merge": "auto", "poll_seconds": 5})
    cfg = load_config(proj.config)
    state_root = proj.home / "state"
    assert pins.ensure([cfg], state_root, Paths.from_env().home) == {}
    fake = fake_forge(proj.remote, rounds or [PASS], **state)
    return proj, cfg, state_root, fake


def _opened(proj, cfg, state_root) -> WorkerRecord:
    record = WorkerRecord(1, status="running", project="demo", issue_number=1, branch="feature/issue-1")
    push_issue_branch(proj, "a")
    pulls.open_pr(state_root, cfg, cfg.issues[0], record, 0.0)
    return record


def _prs_file(proj):
    return json.loads((proj.state / "pull-requests.json").read_text())["issues"]


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_a_merge_the_forge_only_queued_is_not_recorded_as_merged(project, fake_forge, platform):
    """gh with a merge queue, glab with auto-merge: the CLI exits 0 and the PR stays open. Recording it merged
    would complete the issue (and start its dependents) on code that is not on the default branch."""
    proj, cfg, state_root, fake = _setup(project, fake_forge, platform, merge_queue=True)
    record = _opened(proj, cfg, state_root)
    main_before = git(proj.remote, "rev-parse", "main")
    assert pulls.merge(state_root, cfg, cfg.issues[0], record) == "queued"
    entry = _prs_file(proj)["1"]
    assert entry["state"] == "open" and entry["phase"] == "pr_open" and entry["merge_queued"] is True
    assert git(proj.remote, "rev-parse", "main") == main_before
    [seen] = pulls.poll(state_root, lambda _: cfg, [record], 100.0, lambda r: None, lambda _: None)
    assert seen.state == "open" and seen.queued  # GitHub's isInMergeQueue, glab's merge_when_pipeline_succeeds


def test_a_merge_call_that_exits_0_leaving_the_pr_open_in_no_queue_is_a_failed_merge(project, fake_forge):
    """Neither merged nor queued: never watched as queued (that would wait for a queue that has no PR)."""
    proj, cfg, state_root, fake = _setup(project, fake_forge, merge_noop=True)
    record = _opened(proj, cfg, state_root)
    with pytest.raises(ForgeError, match="still open after the merge was accepted and in no merge queue"):
        pulls.merge(state_root, cfg, cfg.issues[0], record)
    assert _prs_file(proj)["1"]["state"] == "open" and not _prs_file(proj)["1"].get("merge_queued")


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_a_push_after_the_green_poll_is_never_merged(project, fake_forge, platform):
    """The checks were green on our head; someone pushes before the merge call: the forge must refuse (gh
    --match-head-commit, glab --sha), never merge a head nobody judged."""
    proj, cfg, state_root, fake = _setup(project, fake_forge, platform)
    record = _opened(proj, cfg, state_root)
    judged = record.pr["head"]
    [seen] = pulls.poll(state_root, lambda _: cfg, [record], 100.0, lambda r: None, lambda _: None)
    assert seen.checks == "passing" and seen.head == judged
    foreign = push_issue_branch(proj, "sneaky")  # someone else pushes to the PR's branch
    with pytest.raises(ForgeError):
        pulls.merge(state_root, cfg, cfg.issues[0], record)
    contained = subprocess.run(["git", "--git-dir", str(proj.remote), "merge-base", "--is-ancestor", foreign, "main"])
    assert contained.returncode == 1  # main does not hold the foreign commit
    assert [p["state"] for p in fake.prs()] == ["OPEN"]


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_a_fork_pr_or_a_pr_into_another_base_for_the_branch_is_never_adopted(project, fake_forge, platform):
    """A fork's PR from a branch of the same name, or a PR of our branch into `release`: adopting either would
    watch (and auto-merge) someone else's code or merge into the wrong branch. Ours is opened beside them."""
    proj, cfg, state_root, fake = _setup(project, fake_forge, platform, next_number=3, prs=[
        {"number": 1, "url": "https://x/pull/1", "head": "feature/issue-1", "base": "main", "cross": True,
         "title": "fork", "body": "", "state": "OPEN"},
        {"number": 2, "url": "https://x/pull/2", "head": "feature/issue-1", "base": "release",
         "title": "backport", "body": "", "state": "OPEN"}])
    record = _opened(proj, cfg, state_root)
    assert record.pr["number"] == 3
    assert [(p["number"], p["base"]) for p in fake.prs()] == [(1, "main"), (2, "release"), (3, "main")]


def test_a_pr_retargeted_to_another_base_is_never_merged_nor_completed(project, fake_forge):
    """A human retargets the watched PR to `release`: its poll is an error (said, tried again), so decide
    neither merges it into release nor completes the issue on it."""
    proj, cfg, state_root, fake = _setup(project, fake_forge)
    record = _opened(proj, cfg, state_root)
    fake.update(prs=[{**p, "base": "release"} for p in fake.prs()])
    said: list[str] = []
    [seen] = pulls.poll(state_root, lambda _: cfg, [record], 100.0, lambda r: None, said.append)
    assert "release" in seen.error and "main" in seen.error
    assert "release" in record.last_reason


def test_check_names_and_review_comments_carry_no_terminal_escapes(project, fake_forge):
    """A check named with ESC sequences (a workflow anyone can edit) reaches the monitor's lines, status and the
    agent's prompt: control characters are replaced; a comment keeps its newlines."""
    rounds = [{"checks": [{"name": "te\x1b]0;owned\x07sts\x1b[2J", "bucket": "fail"}],
               "review": "CHANGES_REQUESTED", "comments": ["line one\nline\x1b[31m two\r"]}]
    proj, cfg, state_root, fake = _setup(project, fake_forge, rounds=rounds)
    record = _opened(proj, cfg, state_root)
    hub = forge_for(ForgeRepo("github"), proj.repo)
    seen = hub.observe(record.pr["number"])
    [(name, _)] = seen.failed
    assert "\x1b" not in name and "\x07" not in name and name.startswith("te")
    [comment] = seen.comments
    assert "\x1b" not in comment and "\r" not in comment and "line one\nline" in comment


def test_a_100_mb_failed_log_is_read_as_its_tail_without_holding_it_in_memory(project, fake_forge):
    import tracemalloc

    from orchestrator.forge import Observation

    big = "x" * 99 + "\n"
    rounds = [{"checks": [{"name": "tests", "bucket": "fail"}], "log": ""}]
    proj, cfg, state_root, fake = _setup(project, fake_forge, rounds=rounds)
    script = (fake.bin_dir / "gh").read_text()
    # `gh run view --log-failed` prints 100 MB, then the line that matters.
    script = script.replace('key = " ".join(args[:2])',
                            'key = " ".join(args[:2])\nif args[:2] == ["run", "view"]:\n'
                            f'    chunk = {big!r} * 10000\n'
                            '    for _ in range(100):\n        sys.stdout.write(chunk)\n'
                            '    print("FAILED the last line"); sys.exit(0)')
    (fake.bin_dir / "gh").write_text(script)
    hub = forge_for(ForgeRepo("github"), proj.repo)
    seen = Observation(1, "u", "open", failed=(("tests", "https://github.com/o/a/actions/runs/100/job/1"),))
    tracemalloc.start()
    try:
        logs = hub.failed_logs(seen, 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert logs.splitlines()[-1].endswith("FAILED the last line")
    assert peak < 32 * 1024 * 1024, peak


def test_our_merge_in_flight_never_raises_default_branch_moved_when_another_stage_ends_first(make_repo, tmp_path):
    """kill -9 of the monitor between `gh pr merge` and its recording (or an answer lost): the record says a
    merge of ours is under way until the next poll sees it merged. Another worker's stage ending in the same
    repository meanwhile checks the default branch: our merge moved it, which is no alert."""
    from orchestrator import alerts
    from orchestrator.config import parse_config
    from orchestrator.decide import Snapshot

    handle = make_repo("app")
    cfg = parse_config(tmp_path / "p-issues.json", {
        "project": "p", "repo_path": str(handle.path), "branch_prefix": "f-", "default_branch": "main",
        "issues": [{"number": 1, "title": "a"}, {"number": 2, "title": "b"}]})
    doc = alerts.current(tmp_path / "state", [cfg], 1000.0)
    handle.git("switch", "-q", "-c", "f-1")
    head = handle.commit({"merged.txt": "x"}, "the PR's work")
    handle.git("switch", "-q", "main")
    handle.git("merge", "-q", "--no-ff", "f-1", "-m", "Merge pull request #1")  # what our merge did to main
    handle.git("push", "-q", "origin", "main")
    handle.git("reset", "-q", "--hard", "HEAD~1")  # the main checkout as it was (its own check is another alert)
    ours = WorkerRecord(1, status="running", project="p", issue_number=1, branch="f-1",
                        pr={"watching": True, "merging": True, "number": 1, "head": head})
    other = WorkerRecord(2, status="running", project="p", issue_number=2, branch="f-2", try_id=1,
                         stage="implement")
    ended = Snapshot(2, 1, True, False, 0, 1, False, 0, 5)
    _, found, _ = alerts.check(doc, [cfg], [ours, other], [ended], 1010.0, lambda r: 1005.0, lambda _: None)
    assert "default_branch_moved" not in [a["kind"] for a in found]
    ours.pr.clear()  # no merge of ours under way: the same move, at the next stage end, is an alert
    other.try_id = 2
    _, found, _ = alerts.check(doc, [cfg], [ours, other], [Snapshot(2, 2, True, False, 0, 1, False, 0, 5)],
                               1020.0, lambda r: 1015.0, lambda _: None)
    assert "default_branch_moved" in [a["kind"] for a in found]


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_a_pr_merged_before_our_last_push_is_never_shown_merged(project, fake_forge, platform):
    """The agent of a fix_ci stage runs `gh pr merge` itself (checks failing), then commits its fix, which the
    monitor pushes: the PR was merged at the old head, the fix is on no default branch. Completing the issue
    as `merged` would lie; the poll says why instead (and never takes the merged head for ours)."""
    proj, cfg, state_root, fake = _setup(project, fake_forge, platform,
                                         rounds=[{"checks": [{"name": "tests", "bucket": "fail"}]}])
    record = _opened(proj, cfg, state_root)
    hub = forge_for(ForgeRepo(platform), proj.repo)
    hub._merge(record.pr["number"], "")  # the agent merges its own PR
    record.pr["head"] = push_issue_branch(proj, "fix")  # then its fix is pushed
    said: list[str] = []
    for now in (100.0, 200.0, 300.0, 400.0):
        [seen] = pulls.poll(state_root, lambda _: cfg, [record], now, lambda r: None, said.append)
        assert seen.error and "merged" in seen.error and seen.state != "merged", seen
    assert _prs_file(proj)["1"].get("phase") != "merged" and _prs_file(proj)["1"]["state"] != "merged"


def test_a_slow_forge_holds_a_poll_or_a_merge_no_longer_than_its_budget(project, fake_forge, monkeypatch):
    """One poll is two calls (view, checks) and a merge four (repo view, merge, view, checks): each call's own
    timeout added up would hold the cycle minutes with a hanging gh. The step's budget bounds them all."""
    proj, cfg, state_root, fake = _setup(project, fake_forge)
    record = _opened(proj, cfg, state_root)
    fake.update(hang=["pr checks"])  # the view answers, the checks hang
    [seen] = pulls.poll(state_root, lambda _: cfg, [record], 100.0, lambda r: None, lambda _: None,
                        timeout=600.0, budget=2.0)
    assert re.search(r"timed out after [0-2]s", seen.error), seen.error
    monkeypatch.setattr(pulls, "STEP_BUDGET_S", 2.0)
    fake.update(hang=["pr merge"])
    with pytest.raises(ForgeError, match=r"timed out after [0-2]s"):
        pulls.merge(state_root, cfg, cfg.issues[0], record)


def test_no_check_reported_for_a_few_quick_polls_is_not_green_before_ci_had_time_to_start(project, fake_forge):
    """poll_seconds small: two polls seconds apart without a check would call a fresh PR green and auto-merge it
    before its CI even registered. Silence counts as "no CI" only once it lasted QUIET_GREEN_S."""
    proj, cfg, state_root, fake = _setup(project, fake_forge, rounds=[{"checks": []}])
    record = _opened(proj, cfg, state_root)
    quiet = []
    for now in (10.0, 15.0, 20.0, 25.0):  # poll_seconds 5
        [seen] = pulls.poll(state_root, lambda _: cfg, [record], now, lambda r: None, lambda _: None)
        quiet.append(seen.quiet_polls)
    assert max(quiet) < 2, quiet  # decide would merge at 2
    [seen] = pulls.poll(state_root, lambda _: cfg, [record], 10.0 + pulls.QUIET_GREEN_S, lambda r: None,
                        lambda _: None)
    assert seen.checks == "none" and seen.quiet_polls >= 2  # a repository without CI, after all


def test_what_the_cli_says_reaches_an_error_line_without_its_terminal_escapes(project, fake_forge):
    """gh's own error text (or a proxy's error page) goes into error lines, the monitor's output and status."""
    proj, cfg, state_root, fake = _setup(project, fake_forge, fail={"pr create": {
        "code": 1, "stderr": "HTTP 502\x1b]0;pwned\x07\x1b[2J: bad gateway"}})
    hub = forge_for(ForgeRepo("github"), proj.repo)
    with pytest.raises(ForgeError) as err:
        hub.find_or_create("feature/issue-1", "main", "t", "b")
    assert "\x1b" not in str(err.value) and "\x07" not in str(err.value) and "bad gateway" in str(err.value)


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_a_pr_in_a_merge_queue_completes_as_merged_when_the_queue_merges_it(project, fake_forge, platform):
    """A queue slower than 3 polls: the PR is watched as queued (never a failed merge, never merged again) until
    the forge shows it merged."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = project([{"number": 1, "title": "a"}], pipeline=["implement"], platform=platform,
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS], merge_queue=6)  # merged at the 6th view after it was queued
    failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None)
    assert failed == 0 and proj.issue(1)["status"] == "completed"
    assert [p["state"] for p in fake.prs()] == ["MERGED"]
    tool = {"github": "gh", "gitlab": "glab"}[platform]
    assert [c[:2] for c in fake.calls(tool)].count(["pr" if tool == "gh" else "mr", "merge"]) == 1
    kinds = [e["action"] for e in proj.events() if e.get("issue") == 1]
    assert "merge_failed" not in kinds and kinds.index("merge_queued") < kinds.index("pr_merged")
    assert _prs_file(proj)["1"]["state"] == "merged" and _prs_file(proj)["1"]["merge_queued"] is False
    _replays(proj)


def test_a_pr_the_merge_queue_drops_goes_to_a_fix_ci_round_and_is_merged_after_it(project, fake_forge):
    """The queue drops the PR unmerged (its checks there failed): a fix_ci stage (counted in max_ci_fixes, told
    the PR left the queue) commits; its head is judged green and merged anew, never the dropped head again."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = project([{"number": 1, "title": "a"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS, PASS], merge_queue=3, dequeue=1)
    failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None)
    assert failed == 0 and proj.issue(1)["status"] == "completed"
    [pr] = fake.prs()
    assert pr["state"] == "MERGED" and len(pr["heads"]) == 2 and pr["merged_sha"] == pr["heads"][1]
    merges = [c for c in fake.calls("gh") if c[:2] == ["pr", "merge"]]
    assert [m for m in merges if f"--match-head-commit={pr['heads'][0]}" in m] == merges[:1] and len(merges) == 2
    events = [e for e in proj.events() if e.get("issue") == 1]
    kinds = [e["action"] for e in events]
    assert kinds.index("merge_queued") < kinds.index("fix_ci") < kinds.index("pr_merged")
    assert next(e for e in events if e["action"] == "fix_ci")["reason"] == "left the merge queue unmerged; fix 1/3"
    prompt = next(p for p in proj.prompts(1) if "Stage: fix_ci" in p)
    assert "left the queue unmerged" in prompt
    assert _prs_file(proj)["1"]["ci_fixes"] == 1
    _replays(proj)


def _replays(proj):
    """decide stays pure: every journalled cycle gives the same actions again from its recorded input."""
    from orchestrator.decide import cycle_from_json, decide
    from orchestrator.state import read_lines

    entries = read_lines(proj.state / "journal.jsonl")
    assert entries
    for entry in entries:
        snapshots, state, settings, actions = cycle_from_json(entry)
        assert decide(snapshots, state, settings) == actions


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_a_queued_merge_whose_answer_was_lost_is_still_watched_as_queued(project, fake_forge, platform):
    """The merge call was accepted into the queue but the monitor died before recording it (only `merging` was
    saved): the next poll sees the PR queued and takes it as our queued merge (its drop is a fix round, never a
    merge call again)."""
    proj, cfg, state_root, fake = _setup(project, fake_forge, platform, merge_queue=True)
    record = _opened(proj, cfg, state_root)
    record.pr["merging"] = True
    pulls.merge(state_root, cfg, cfg.issues[0], record)  # its answer never recorded in the worker's record
    assert not record.pr.get("merge_queued")
    [seen] = pulls.poll(state_root, lambda _: cfg, [record], 100.0, lambda r: None, lambda _: None)
    assert seen.queued and record.pr["merge_queued"] == record.pr["head"]
    assert "merging (queued)" in record.last_reason
    assert pulls.work_of(cfg, record).merge_queued == record.pr["head"]


def test_a_forge_that_will_not_show_the_merge_queue_still_sees_a_queue_that_merges_within_its_bound(
        project, fake_forge):
    """The forge refuses the queue question (`gh api graphql`, exit 1): the poll reads the rest. A merge of ours left
    open is neither a failure nor "queued" (nothing tells): it is waited for (decide.MAX_UNSEEN_POLLS polls at
    most), and a queue that merges it meanwhile completes the issue; never a second merge call."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = project([{"number": 1, "title": "a"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS], merge_queue=5,
                      fail={"api graphql": {"code": 1, "stderr": "gh: Resource not accessible by integration"}})
    lines: list[str] = []
    failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lines.append)
    assert failed == 0 and proj.issue(1)["status"] == "completed", lines
    assert [p["state"] for p in fake.prs()] == ["MERGED"]
    kinds = [e["action"] for e in proj.events() if e.get("issue") == 1]
    assert "fix_ci" not in kinds and "merge_failed" not in kinds and "merge_queued" not in kinds
    assert "merge_unconfirmed" in kinds and [c[:2] for c in fake.calls("gh")].count(["pr", "merge"]) == 1
    assert not any("poll failed" in line or "merging (queued)" in line for line in lines)


def test_a_queued_pr_closed_by_a_human_fails_the_issue(project, fake_forge):
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = project([{"number": 1, "title": "a"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS], merge_queue=True)

    def close_once_queued():
        if any(c[:2] == ["pr", "merge"] for c in fake.calls("gh")):
            fake.update(close=True)
        return False

    failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: close_once_queued())
    assert failed == 1 and proj.issue(1)["status"] == "failed"
    assert any(e["action"] == "skip" and e["reason"] == "pr closed" for e in proj.events())
    assert [p["state"] for p in fake.prs()] == ["CLOSED"]
    assert [c[:2] for c in fake.calls("gh")].count(["pr", "merge"]) == 1


def _queued_work(**kw):
    from orchestrator.decide import PrWork

    return PrWork(**{"watching": True, "head": "h1", "merge": "auto", "merge_queued": "h1", **kw})


def _queued_poll(**kw):
    from orchestrator.decide import PrView

    return PrView(**{"worker_id": 1, "number": 7, "state": "open", "head": "h1", "checks": "passing",
                     "queued": True, **kw})


@pytest.mark.parametrize("name,work,poll,expected", [
    ("queued, green: wait, never a second merge", _queued_work(), _queued_poll(), []),
    ("queued, the poll failed: wait", _queued_work(), _queued_poll(state="", error="timed out", queued=False), []),
    ("queued, checks pending: wait", _queued_work(), _queued_poll(checks="pending"), []),
    ("queued at a 3rd fix round: waits all the same", _queued_work(ci_fixes=3), _queued_poll(), []),
    ("the queue merged it", _queued_work(), _queued_poll(state="merged", queued=False), [("pr_done", "merged")]),
    ("closed while queued", _queued_work(), _queued_poll(state="closed", queued=False), [("skip", "pr closed")]),
    ("dropped from the queue: fix_ci", _queued_work(), _queued_poll(queued=False),
     [("fix_ci", "left the merge queue unmerged; fix 1/3")]),
    ("dropped, its checks failed: fix_ci naming them", _queued_work(),
     _queued_poll(queued=False, checks="failing", failed=("tests",)),
     [("fix_ci", "left the merge queue unmerged (checks failed: tests); fix 1/3")]),
    ("dropped at another head: fix_ci, never a merge there", _queued_work(), _queued_poll(queued=False, head="h2"),
     [("fix_ci", "left the merge queue unmerged; fix 1/3")]),
    ("dropped past max_ci_fixes: failed", _queued_work(ci_fixes=3), _queued_poll(queued=False),
     [("skip", "left the merge queue unmerged after 3 fix round(s) (max_ci_fixes 3)")]),
    ("queued, the head's checks fail: fix_ci", _queued_work(),
     _queued_poll(checks="failing", failed=("tests",)),
     [("fix_ci", "checks failed while queued to merge: tests; fix 1/3")]),
    ("the forge would not say, ours is queued: wait", _queued_work(), _queued_poll(queued=None), []),
    ("the forge would not say, nothing queued: merge", _queued_work(merge_queued=""), _queued_poll(queued=None),
     [("merge_pr", "checks green")]),
    ("queued before our answer was recorded: wait, no merge", _queued_work(merge_queued=""), _queued_poll(), []),
    ("manual: a human's auto-merge changes nothing", _queued_work(merge="manual", merge_queued=""), _queued_poll(),
     [("pr_done", "open and green; a human merges")]),
])
def test_decide_a_pr_left_queued_by_our_merge(name, work, poll, expected):
    from orchestrator.decide import Settings, State, WorkerView, decide
    from orchestrator.queue import IssueRef, IssueView

    ref = IssueRef("demo", 1)
    state = State((WorkerView(1, ref, pr=work),), (IssueView(ref, "in_progress"),), prs=(poll,))
    actions = decide([], state, Settings(max_retries=2, stall_timeout=100, wall_clock_timeout=1000))
    assert [(a.kind, a.reason) for a in actions if a.kind != "idle"] == expected, name


# --- opening the PR: a network failure is tried again, a refusal fails at once -----------------------------------

GH_OFFLINE = "error connecting to api.github.com\ncheck your internet connection or https://githubstatus.com"


def _opening_run(project, fake_forge, **state):
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = project([{"number": 1, "title": "a"}, {"number": 2, "title": "b", "depends_on": [1]}],
                   pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS], **state)
    lines: list[str] = []
    failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lines.append)
    creates = [c for c in fake.calls("gh") if c[:2] == ["pr", "create"] and "--head=feature/issue-1" in c]
    return proj, fake, failed, lines, creates


def test_a_network_failure_opening_the_pr_is_tried_again_at_the_next_poll(project, fake_forge):
    """gh cannot reach GitHub twice (its own words, exit 1): the PR is opened at the third try, one PR, and the
    issue goes on to be merged; the dependent waits meanwhile."""
    proj, fake, failed, lines, creates = _opening_run(
        project, fake_forge, fail={"pr create": {"code": 1, "stderr": GH_OFFLINE, "times": 2}})
    assert failed == 0 and proj.issue(1)["status"] == "completed", lines
    assert len(creates) == 3 and [p["head"] for p in fake.prs()] == ["feature/issue-1", "feature/issue-2"]
    events = [e for e in proj.events() if e.get("issue") == 1]
    assert [e["failures"] for e in events if e["action"] == "pr_open_failed"] == [1, 2]
    assert "error connecting to api.github.com" in next(e for e in events if e["action"] == "pr_open_failed")["error"]
    assert [e["action"] for e in events].count("pr_opened") == 1
    _replays(proj)


def test_a_network_failure_that_lasts_fails_the_issue_after_three_tries_with_ghs_words(project, fake_forge):
    proj, fake, failed, lines, creates = _opening_run(
        project, fake_forge, fail={"pr create": {"code": 1, "stderr": GH_OFFLINE}})
    assert failed == 1 and proj.issue(1)["status"] == "failed" and proj.issue(2).get("status", "pending") == "pending"
    assert len(creates) == pulls.MAX_OPEN_ATTEMPTS == 3 and fake.prs() == []
    skip = next(e for e in proj.events() if e["action"] == "skip" and e.get("issue") == 1)
    assert skip["reason"] == ("pull request not opened: gh pr create: error connecting to api.github.com / check "
                              "your internet connection or https://githubstatus.com")
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]  # pushed, kept


@pytest.mark.parametrize("stderr", [
    "GraphQL: Resource not accessible by integration (createPullRequest)",
    "HTTP 404: Not Found (https://api.github.com/repos/org/app)",
])
def test_a_refusal_opening_the_pr_fails_the_issue_at_once(project, fake_forge, stderr):
    proj, fake, failed, lines, creates = _opening_run(project, fake_forge,
                                                      fail={"pr create": {"code": 1, "stderr": stderr}})
    assert failed == 1 and proj.issue(1)["status"] == "failed" and len(creates) == 1
    assert not any(e["action"] == "pr_open_failed" for e in proj.events())
    skip = next(e for e in proj.events() if e["action"] == "skip" and e.get("issue") == 1)
    assert skip["reason"] == f"pull request not opened: gh pr create: {stderr}"


def test_a_pr_opened_whose_answer_was_lost_is_adopted_at_the_next_try_never_duplicated(project, fake_forge):
    proj, fake, failed, lines, creates = _opening_run(project, fake_forge, lost_answer=["pr create"])
    assert failed == 0 and proj.issue(1)["status"] == "completed", lines
    assert len(creates) == 1 and [p["head"] for p in fake.prs()].count("feature/issue-1") == 1
    kinds = [e["action"] for e in proj.events() if e.get("issue") == 1]
    assert kinds.index("pr_open_failed") < kinds.index("pr_adopted") < kinds.index("pr_merged")


def test_decide_a_pr_not_opened_yet():
    from orchestrator.decide import PrView, PrWork, Settings, State, WorkerView, decide
    from orchestrator.queue import IssueRef, IssueView

    ref = IssueRef("demo", 1)
    work = PrWork(watching=True, open_failures=1)

    def actions(*polls):
        state = State((WorkerView(1, ref, pr=work),), (IssueView(ref, "in_progress"),), prs=polls)
        return [(a.kind, a.reason) for a in decide([], state, Settings(2, 100, 1000))]

    assert actions() == []  # not due yet
    assert actions(PrView(1)) == [("open_pr", "opening the pull request again (it failed 1 time(s) on the network)")]
