"""The pull-request loop: review config, decide's PR transitions, and end-to-end runs against fake gh/glab."""
from __future__ import annotations

import json

import pytest

from forge_fakes import fake_forge, push_issue_branch  # noqa: F401
from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from lib.errors import ConfigError
from orchestrator.config import parse_config
from orchestrator.decide import (PrView, PrWork, Settings, Snapshot, State, WorkerView, cycle_from_json,
                                 cycle_to_json, decide)
from orchestrator.monitor import monitor
from orchestrator.queue import IssueRef, IssueView
from orchestrator.run import open_run
from orchestrator.state import read_lines

REF = IssueRef("demo", 1)
SETTINGS = Settings(max_retries=2, stall_timeout=100, wall_clock_timeout=1000)
FAIL = {"checks": [{"name": "build", "bucket": "pass"}, {"name": "tests", "bucket": "fail"}],
        "log": "FAILED test_app.py::test_add - assert 3 == 4"}
PASS = {"checks": [{"name": "build", "bucket": "pass"}, {"name": "tests", "bucket": "pass"}]}


# --- config ---------------------------------------------------------------------------------------------------

def _config(tmp_path, **extra):
    raw = {"project": "demo", "repo_path": str(tmp_path), "branch_prefix": "f/issue-", "issues": [], **extra}
    return parse_config(tmp_path / "demo-issues.json", raw)


def test_review_defaults_to_no_pull_requests(tmp_path):
    review = _config(tmp_path).review
    assert (review.open, review.merge, review.max_ci_fixes, review.max_review_rounds, review.poll_seconds) == \
        ("none", "manual", 3, 2, 60.0)


@pytest.mark.parametrize("review,problem", [
    ({"open": "yes"}, "review.open: must be \"none\" or \"pr\""),
    ({"merge": "always"}, "review.merge: must be \"manual\" or \"auto\""),
    ({"max_ci_fixes": -1}, "review.max_ci_fixes: must be >= 0"),
    ({"max_review_rounds": 1.5}, "review.max_review_rounds: must be a whole number"),
    ({"poll_seconds": 0}, "review.poll_seconds: must be > 0 seconds"),
    ({"pol_seconds": 5}, "review.pol_seconds: unknown key"),
])
def test_bad_review_values_are_config_errors(tmp_path, review, problem):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, review=review)
    assert any(problem in line for line in err.value.problems), err.value.problems


def test_open_pr_needs_a_known_platform(tmp_path):
    with pytest.raises(ConfigError, match="needs github or gitlab"):
        _config(tmp_path, review={"open": "pr"}, platform="bitbucket")
    assert _config(tmp_path, platform="bitbucket").review.open == "none"  # without PRs: as before


def test_the_pr_stages_prompts_may_be_overridden(tmp_path):
    cfg = _config(tmp_path, prompts={"fix_ci": "fix: {{pr_task}}"})
    assert cfg.prompts["fix_ci"] == "fix: {{pr_task}}"


# --- decide ---------------------------------------------------------------------------------------------------

def _watching(**work) -> WorkerView:
    return WorkerView(1, REF, stage_index=0, pr=PrWork(watching=True, head="abc", **work))


def _poll(**seen) -> PrView:
    return PrView(1, 7, "https://x/pull/7", **{"state": "open", "head": "abc", **seen})


def _decide(worker: WorkerView, *polls: PrView, snapshots=()) -> list[tuple[str, str]]:
    state = State((worker,), (IssueView(REF, "in_progress"),), prs=polls)
    actions = decide(list(snapshots), state, SETTINGS)
    doc = json.loads(json.dumps(cycle_to_json(list(snapshots), state, SETTINGS, actions)))
    assert cycle_from_json(doc) == (list(snapshots), state, SETTINGS, actions)  # journalled and replayed
    return [(a.kind, a.reason) for a in actions]


@pytest.mark.parametrize("name,worker,poll,expected", [
    ("not polled this cycle: nothing", _watching(), None, []),
    ("a failed poll: wait", _watching(), _poll(state="", error="gh pr view: timed out"), []),
    ("pending checks: wait", _watching(), _poll(checks="pending"), []),
    ("checks of an older head: wait", _watching(), _poll(head="old", checks="failing", failed=("t",)), []),
    ("failing: fix_ci", _watching(), _poll(checks="failing", failed=("tests",)),
     [("fix_ci", "checks failed: tests; fix 1/3")]),
    ("failing past max_ci_fixes: failed", _watching(ci_fixes=3), _poll(checks="failing", failed=("tests",)),
     [("skip", "checks still failing (tests) after 3 fix round(s) (max_ci_fixes 3)"), ("idle", "no eligible issue")]),
    ("no CI fixes allowed", _watching(max_ci_fixes=0), _poll(checks="failing", failed=("tests",)),
     [("skip", "checks still failing (tests) after 0 fix round(s) (max_ci_fixes 0)"), ("idle", "no eligible issue")]),
    ("changes requested: address_review", _watching(), _poll(checks="passing", review="changes_requested",
                                                             review_id="R1"),
     [("address_review", "review requested changes; round 1/2")]),
    ("the same review already addressed: wait for the reviewer", _watching(review_seen="R1", review_rounds=1),
     _poll(checks="passing", review="changes_requested", review_id="R1"), []),
    ("review rounds used up: failed", _watching(review_rounds=2),
     _poll(checks="passing", review="changes_requested", review_id="R3"),
     [("skip", "review still requests changes after 2 round(s) (max_review_rounds 2)"),
      ("idle", "no eligible issue")]),
    ("green, manual: complete", _watching(), _poll(checks="passing"),
     [("pr_done", "open and green; a human merges"), ("idle", "no eligible issue")]),
    ("green, auto: merge", _watching(merge="auto"), _poll(checks="passing"), [("merge_pr", "checks green")]),
    ("green, auto, approval required: wait", _watching(merge="auto"), _poll(checks="passing", review="required"),
     []),
    ("green and approved: merge", _watching(merge="auto"), _poll(checks="passing", review="approved"),
     [("merge_pr", "checks green, approved")]),
    ("no checks once: wait", _watching(merge="auto"), _poll(checks="none", quiet_polls=1), []),
    ("no checks twice: a repo without CI is green", _watching(merge="auto"), _poll(checks="none", quiet_polls=2),
     [("merge_pr", "checks green")]),
    ("merged by a human", _watching(), _poll(state="merged"), [("pr_done", "merged"), ("idle", "no eligible issue")]),
    ("closed unmerged: failed", _watching(), _poll(state="closed"),
     [("skip", "pr closed"), ("idle", "no eligible issue")]),
])
def test_decide_a_watched_pr(name, worker, poll, expected):
    assert _decide(worker, *([poll] if poll else [])) == expected, name


def _ended(commits: int = 1) -> Snapshot:
    return Snapshot(1, 0, True, False, 0, commits, False, 0, 1)


def test_the_last_stage_pushed_opens_a_pr_instead_of_completing():
    worker = WorkerView(1, REF, stage_index=0, pr=PrWork())
    assert [k for k, _ in _decide(worker, snapshots=[_ended()])] == ["push", "open_pr"]
    assert [k for k, _ in _decide(WorkerView(1, REF), snapshots=[_ended()])] == ["push", "mark_complete", "idle"]


def test_a_fix_stage_pushed_goes_back_to_watching_and_a_failed_one_uses_retries_not_fix_rounds():
    worker = WorkerView(1, REF, pr=PrWork(in_stage=True, ci_fixes=1))
    assert [k for k, _ in _decide(worker, snapshots=[_ended()])] == ["push", "watch_pr"]
    assert _decide(worker, snapshots=[_ended(commits=0)]) == [
        ("restart", "exit 0 without a new commit in this stage; retry 1/2")]


def test_a_watching_worker_keeps_its_issue_and_dependents_wait():
    dependent = IssueView(IssueRef("demo", 2), "pending", depends_on=(1,))
    state = State((_watching(), WorkerView(2)), (IssueView(REF, "in_progress"), dependent),
                  prs=(_poll(checks="pending"),))
    assert decide([], state, SETTINGS) == []


# --- end to end: real tmux, git and a scripted agent; fake gh ------------------------------------------------

def _run(proj):
    lines: list[str] = []
    failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lines.append)
    return failed, lines


def _prs_file(proj):
    return json.loads((proj.state / "pull-requests.json").read_text())["issues"]


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_a_failing_check_is_fixed_by_a_fix_ci_stage_then_the_pr_is_merged(project, fake_forge, platform):
    """PR opened; the check fails; a fix_ci stage gets the failed check and its log, commits; the checks pass;
    the monitor merges (auto) and the issue is merged. The merge moving main is recorded, never alerted."""
    proj = project([{"number": 1, "title": "Add feature", "description": "Make it work."},
                    {"number": 2, "title": "after it", "depends_on": [1]}],
                   pipeline=["implement"], platform=platform,
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [{**FAIL, "pending_polls": 1}, {**PASS, "pending_polls": 1}])
    tool = {"github": "gh", "gitlab": "glab"}[platform]

    failed, lines = _run(proj)

    assert failed == 0, lines
    assert proj.issue(1)["status"] == "completed" and proj.issue(2)["status"] == "completed"
    prs = fake.prs()
    assert [(p["head"], p["base"], p["title"], p["state"]) for p in prs] == [
        ("feature/issue-1", "main", "Add feature", "MERGED"), ("feature/issue-2", "main", "after it", "MERGED")]
    assert prs[0]["body"].startswith("Make it work.") and "- implement: done" in prs[0]["body"]
    assert proj.remote_commits("feature/issue-1") == []  # merged: main has them
    assert "fix_ci #1" in [s for s in _git_log(proj, "main")]
    fix_prompt = next(p for p in proj.prompts(1) if "Stage: fix_ci" in p)
    assert "Failed checks: tests" in fix_prompt and "FAILED test_app.py::test_add" in fix_prompt
    kinds = [e["action"] for e in proj.events() if e.get("issue") == 1]
    assert kinds.index("pr_opened") < kinds.index("fix_ci") < kinds.index("pr_merged")
    assert _prs_file(proj)["1"]["state"] == "merged"
    run = open_run()
    from orchestrator.report import status_document

    doc = status_document(run)
    first = doc["projects"][0]["issues"][0]
    assert first["state"] == "merged" and first["pr"] == {"url": prs[0]["url"], "number": 1, "state": "merged",
                                                          "checks": "passing"}
    assert doc["alerts"] == [] and doc["done"] is True
    from lib.report import proof_workers

    assert "Pull requests: 2 merged, 0 open." in proof_workers(proj.home / "state")
    # The dependent started only after #1 was merged.
    events = proj.events()
    merged_at = next(n for n, e in enumerate(events) if e["action"] == "pr_merged" and e["issue"] == 1)
    assert next(n for n, e in enumerate(events) if e.get("new_issue") == 2) > merged_at
    assert fake.calls(tool) and not fake.calls({"gh": "glab", "glab": "gh"}[tool])
    for entry in read_lines(proj.state / "journal.jsonl"):
        snapshots, state, settings, actions = cycle_from_json(entry)
        assert decide(snapshots, state, settings) == actions


def _git_log(proj, ref):
    from conftest import git

    return git(proj.remote, "log", "--format=%s", ref).splitlines()


def test_a_review_requesting_changes_starts_address_review_with_its_comments(project, fake_forge):
    proj = project([{"number": 1, "title": "Add feature"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [{**PASS, "review": "CHANGES_REQUESTED", "comments": ["Rename foo to bar."]},
                                    {**PASS, "review": "APPROVED"}])

    failed, lines = _run(proj)

    assert failed == 0, lines
    prompt = next(p for p in proj.prompts(1) if "Stage: address_review" in p)
    assert "reviewer: Rename foo to bar." in prompt
    assert fake.prs()[0]["state"] == "MERGED"
    assert "address_review #1" in _git_log(proj, "main")
    assert [e["action"] for e in proj.events() if e.get("issue") == 1].count("address_review") == 1


def test_a_pr_that_cannot_be_opened_fails_the_issue_with_ghs_words_and_keeps_the_branch(project, fake_forge):
    proj = project([{"number": 1, "title": "Add feature"}, {"number": 2, "title": "after", "depends_on": [1]}],
                   pipeline=["implement"], platform="github", review={"open": "pr", "poll_seconds": 0.2})
    fake_forge(proj.remote, fail={"pr create": {"code": 1, "stderr": "GraphQL: Resource not accessible by "
                                                                     "integration (createPullRequest)"}})

    failed, lines = _run(proj)

    assert failed == 1
    assert proj.issue(1)["status"] == "failed" and proj.issue(2).get("status", "pending") == "pending"
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]  # pushed, kept
    run = open_run()
    from orchestrator.report import status_document

    failure = status_document(run)["failures"][0]
    assert failure["issue"] == 1 and failure["reason"] == (
        "pull request not opened: gh pr create: GraphQL: Resource not accessible by integration (createPullRequest)")


def test_a_pr_closed_by_a_human_fails_the_issue(project, fake_forge):
    proj = project([{"number": 1, "title": "Add feature"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "poll_seconds": 0.2})
    fake_forge(proj.remote, [{**PASS, "pending_polls": 2}], close=True)
    failed, _ = _run(proj)
    assert failed == 1 and proj.issue(1)["status"] == "failed"
    assert any(e["action"] == "skip" and e["reason"] == "pr closed" for e in proj.events())


def test_cleanup_keeps_the_worktree_of_an_issue_whose_pr_is_open(project, fake_forge):
    """Manual merge: the issue completes with its PR open and green; cleanup keeps its worktree (a later fix or
    review round works there) even though everything in it is pushed; once a human merged it, cleanup removes
    it (the forge is asked again)."""
    proj = project([{"number": 1, "title": "Add feature"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "manual", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [PASS])
    failed, lines = _run(proj)
    assert failed == 0, lines
    from orchestrator.report import status_document

    doc = status_document(open_run())
    issue = doc["projects"][0]["issues"][0]
    assert issue["state"] == "completed" and issue["pr"]["state"] == "open" and issue["pr"]["checks"] == "passing"
    from orchestrator.report import status_lines

    assert any("#1 open, checks passing https://github.com/org/app/pull/1" in line for line in status_lines(doc))
    from rich.console import Console

    from orchestrator.dashboard import render

    console = Console(record=True, width=300)
    console.print(render(doc))
    assert "#1 open, checks passing" in console.export_text()
    from orchestrator.cleanup import cleanup

    report = cleanup(open_run())
    [verdict] = report.verdicts
    assert verdict.outcome == "kept"
    assert verdict.reasons == ["its pull request is open (https://github.com/org/app/pull/1)"]
    assert (proj.root / "worktrees" / "issue-1").is_dir()
    fake.update(prs=[{**pr, "state": "MERGED"} for pr in fake.prs()])  # a human merges it
    [verdict] = cleanup(open_run()).verdicts
    assert verdict.outcome == "removed" and not (proj.root / "worktrees" / "issue-1").exists()
    assert _prs_file(proj)["1"]["state"] == "merged"


@pytest.mark.parametrize("platform,auth,path_kept,fix", [
    ("github", False, True, "run `gh auth login`"),
    ("gitlab", False, True, "run `glab auth login`"),
    ("github", True, False, "install the GitHub CLI"),
])
def test_launch_refuses_without_a_logged_in_cli_in_one_line_naming_the_fix(project, fake_forge, platform, auth,
                                                                          path_kept, fix):
    import os
    import subprocess
    import sys

    from conftest import ROOT
    from workers_fixtures import monitor_env

    proj = project([{"number": 1, "title": "t"}], pipeline=["implement"], platform=platform,
                   review={"open": "pr"})
    fake = fake_forge(proj.remote, auth=auth)
    env = monitor_env()
    if not path_kept:
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(fake.bin_dir))
        if any(os.access(os.path.join(p, "gh"), os.X_OK) for p in env["PATH"].split(os.pathsep)):
            pytest.skip("a real gh is installed here")
    result = subprocess.run([sys.executable, "-m", "orchestrator", "launch", "--dry-run"],
                            cwd=ROOT / "scripts" / "proof-workers", env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = [l for l in result.stderr.splitlines() if "review.open" in l]
    assert line.startswith("error: ") and fix in line, result.stderr
    assert not (proj.root / "worktrees").exists()
    fake.update(auth=True)  # logged in: launch goes on
    if path_kept:
        again = subprocess.run([sys.executable, "-m", "orchestrator", "launch", "--dry-run"],
                               cwd=ROOT / "scripts" / "proof-workers", env=env, capture_output=True, text=True,
                               timeout=120)
        assert again.returncode == 0, again.stderr


def test_polls_no_check_on_a_repo_with_ci_is_never_green_and_a_foreign_head_counts_after_three_polls(
        project, fake_forge, tmp_path):
    from lib.paths import Paths
    from orchestrator import pins, pulls
    from orchestrator.config import load_config
    from orchestrator.state import WorkerRecord

    proj = project([{"number": 1, "title": "t"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "poll_seconds": 5})
    cfg = load_config(proj.config)
    state_root = proj.home / "state"
    assert pins.ensure([cfg], state_root, Paths.from_env().home) == {}
    fake = fake_forge(proj.remote, [PASS, {"checks": []}])

    record = WorkerRecord(1, status="running", project="demo", issue_number=1, branch="feature/issue-1")
    first = push_issue_branch(proj, "a")
    assert pulls.open_pr(state_root, cfg, cfg.issues[0], record, 0.0) is True  # opened, not adopted
    record.pr["head"] = first
    said: list[str] = []

    def poll(now: float):
        return pulls.poll(state_root, lambda _: cfg, [record], now, lambda r: None, said.append)

    assert poll(1.0) == ()  # not due yet: poll_seconds
    [seen] = poll(10.0)
    assert seen.checks == "passing" and seen.head == first
    record.pr["head"] = push_issue_branch(proj, "b")  # our next push: no check reported on it (yet)
    for now in (20.0, 30.0, 40.0):
        [seen] = poll(now)
        assert seen.checks == "none" and seen.quiet_polls == 0  # this PR had checks: never green by silence
    ours = record.pr["head"]
    foreign = push_issue_branch(proj, "c")  # someone else pushes to the PR's branch
    record.pr["head"] = ours
    for now in (50.0, 60.0):
        poll(now)
        assert record.pr["head"] == ours
    poll(70.0)
    assert record.pr["head"] == foreign and "its checks count from now" in said[-1]
    assert len(fake.prs()) == 1


def test_a_watched_pr_stays_judged_when_the_config_turns_prs_off(tmp_path):
    from orchestrator import pulls
    from orchestrator.state import WorkerRecord

    cfg = _config(tmp_path)  # review.open "none"
    record = WorkerRecord(1, project="demo", issue_number=1, pr={"watching": True, "number": 3})
    assert pulls.work_of(cfg, record).watching
    assert pulls.work_of(cfg, WorkerRecord(1, project="demo", issue_number=1)) is None


def test_a_monitor_restarted_at_every_cycle_adopts_its_pr_and_neither_repeats_nor_loses_a_round(project, fake_forge):
    """Each `monitor --once` is a new monitor (reconcile first): through a fix_ci round and the merge, with a
    PR someone opened for the branch before the run: it is adopted, never duplicated."""
    proj = project([{"number": 1, "title": "Add feature"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake = fake_forge(proj.remote, [FAIL, PASS], next_number=8, prs=[
        {"number": 7, "url": "https://github.com/org/app/pull/7", "head": "feature/issue-1", "base": "main",
         "title": "by hand", "body": "", "state": "OPEN"}])

    from orchestrator.report import status_document

    seen: set[tuple[str, str]] = set()

    def one_cycle() -> bool:
        monitor(open_run(), cycle=0.2, once=True, no_delay=True, say=lambda _: None)
        doc = status_document(open_run())
        seen.add((doc["workers"][0]["status"], doc["projects"][0]["issues"][0]["state"]))
        return proj.issue(1).get("status") == "completed"

    retry_until(one_cycle, seconds=120, interval=0.2)
    assert {("watching_pr", "pr_open"), ("idle", "merged")} <= seen
    assert any(state == "ci_failed" for _, state in seen), seen
    assert [(p["number"], p["state"]) for p in fake.prs()] == [(7, "MERGED")]
    kinds = [e["action"] for e in proj.events() if e.get("issue") == 1]
    assert kinds.count("pr_adopted") == 1 and "pr_opened" not in kinds
    assert kinds.count("fix_ci") == 1 and kinds.count("pr_merged") == 1
    assert _git_log(proj, "main")[:2] == ["fix_ci #1", "implement #1"]


def test_a_record_without_a_pr_number_is_a_failed_poll_not_a_crash(project, fake_forge):
    from orchestrator import pulls
    from orchestrator.config import load_config
    from orchestrator.state import WorkerRecord

    proj = project([{"number": 1, "title": "t"}], pipeline=["implement"], platform="github",
                   review={"open": "pr"})
    cfg = load_config(proj.config)
    record = WorkerRecord(1, project="demo", issue_number=1, pr={"watching": True, "number": "7; rm -rf /"})
    [seen] = pulls.poll(proj.home / "state", lambda _: cfg, [record], 100.0, lambda r: None, lambda _: None)
    assert "names no PR number" in seen.error and "PR poll failed" in record.last_reason
    assert _decide(_watching(), PrView(1, error=seen.error)) == []


def test_a_hung_forge_delays_a_cycle_by_its_poll_budget_and_the_other_prs_are_polled_next_cycle(project, fake_forge):
    from lib.paths import Paths
    from orchestrator import pins, pulls
    from orchestrator.config import load_config
    from orchestrator.state import WorkerRecord

    proj = project([{"number": 1, "title": "a"}, {"number": 2, "title": "b"}], pipeline=["implement"],
                   platform="github", review={"open": "pr", "poll_seconds": 5})
    cfg = load_config(proj.config)
    assert pins.ensure([cfg], proj.home / "state", Paths.from_env().home) == {}
    fake = fake_forge(proj.remote, hang=["pr view"])
    records = [WorkerRecord(n, project="demo", issue_number=n, pr={"watching": True, "number": n,
                                                                    "polled_at": float(n)}) for n in (1, 2)]
    views = pulls.poll(proj.home / "state", lambda _: cfg, records, 100.0, lambda r: None, lambda _: None,
                       timeout=1.0, budget=0.5)
    assert [(v.worker_id, "timed out" in v.error) for v in views] == [(1, True)]  # the longest waiting first
    assert records[1].pr["polled_at"] == 2.0  # still due: polled next cycle
    assert [c[:2] for c in fake.calls("gh")] == [["pr", "view"]]


def test_a_merge_whose_answer_was_lost_is_still_ours_and_raises_no_alert(project, fake_forge):
    """gh merged the PR but the connection dropped before it said so: the next poll sees it merged, the issue
    completes, and the default branch it moved is recorded (pr_merged), never a default_branch_moved alert."""
    proj = project([{"number": 1, "title": "a"}, {"number": 2, "title": "b", "depends_on": [1]}],
                   pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake_forge(proj.remote, [PASS], lost_answer=["pr merge"])
    failed, lines = _run(proj)
    assert failed == 0, lines
    events = proj.events()
    assert [e["action"] for e in events if e.get("issue") == 1].count("merge_failed") == 1
    merged = [e for e in events if e["action"] == "pr_merged"]
    assert [e["issue"] for e in merged] == [1, 2] and merged[0]["default_head"]
    from orchestrator.report import status_document

    assert status_document(open_run())["alerts"] == []
