"""A hostile review of issue 17 items 6-8 (the original's configs, in_progress issues resumed first, --workers 0,
idle workers, worktree_base inside a repository): can it lose work or lie?"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, git
from workers_fixtures import monitor_env, project, tmux_socket  # noqa: F401

PACKAGE = ROOT / "scripts" / "proof-workers"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=PACKAGE, env=monitor_env(env),
                          capture_output=True, text=True, timeout=120)


def issue_of(doc: dict, number: int) -> dict:
    return next(i for i in doc["projects"][0]["issues"] if i["number"] == number)


def row_of(doc: dict, number: int) -> str:
    from orchestrator.report import status_lines

    return next(line for line in "\n".join(status_lines(doc)).splitlines() if line.startswith(f"#{number} "))


# --- a resumed issue whose dependencies are not complete ----------------------------------------------------


@pytest.mark.parametrize("dependency,state", [("failed", "blocked"), ("pending", "waiting")])
def test_an_issue_left_in_progress_behind_an_unfinished_dependency_is_not_shown_as_running(project, dependency,
                                                                                          state):
    """Broke: status showed `in_progress (resuming at write_tests)` for an issue that cannot be resumed while its
    dependency is failed (the monitor had exited: `done` stayed false, and no failure named it) or still pending."""
    from orchestrator.monitor import _finished
    from orchestrator.report import status_document
    from orchestrator.run import open_run

    project([{"number": 1, "title": "dep", "status": dependency},
             {"number": 2, "title": "left", "status": "in_progress", "assigned_worker": 1, "pipeline_stage": 1,
              "depends_on": [1]}])
    run = open_run()
    doc = status_document(run)
    left = issue_of(doc, 2)
    # nothing of it is left here: it starts over (see test_status_says_the_stage_the_plan_resumes_an_issue_at)
    assert (left["status"], left["state"], left["resuming_at"]) == ("in_progress", state, "implement")
    assert f"{state} (resuming at implement)" in row_of(doc, 2)
    if dependency == "failed":
        assert left["blocked_by"] == [1]
        assert {"issue": 2, "reason": "waits on failed #1"}.items() <= next(
            f for f in doc["failures"] if f["issue"] == 2).items()
        assert doc["done"] and _finished(run)  # the monitor stops here, and status agrees
    else:
        assert not doc["done"] and not _finished(run)  # #1 still runs first


# --- what status says an issue left in progress resumes at ---------------------------------------------------


def _left_mid_run(project, where: str):
    """#1 fresh; #2 in_progress on worker 2 at write_tests; its implement commit in its worktree ("worktree"), only
    at the remote ("pushed"), or nowhere ("nothing")."""
    proj = project([{"number": 1, "title": "one"},
                    {"number": 2, "title": "left", "status": "in_progress", "assigned_worker": 2,
                     "pipeline_stage": 1}])
    if where != "nothing":
        worktree = proj.root / "worktrees" / "issue-2"
        git(proj.repo, "worktree", "add", "-q", "-b", "feature/issue-2", str(worktree), "origin/main")
        (worktree / "earlier.txt").write_text("implemented before the restart\n")
        git(worktree, "add", "-A")
        git(worktree, "commit", "-q", "-m", "implement #2 (earlier run)")
        if where == "pushed":
            git(proj.repo, "push", "-q", "origin", "feature/issue-2")
            git(proj.repo, "fetch", "-q", "origin")
            git(proj.repo, "worktree", "remove", str(worktree))
            git(proj.repo, "branch", "-q", "-D", "feature/issue-2")
    return proj


@pytest.mark.parametrize("where,stage", [("worktree", "write_tests"), ("pushed", "write_tests"),
                                         ("nothing", "implement")])
def test_status_says_the_stage_the_plan_resumes_an_issue_at(project, where, stage):
    """Broke: with neither its worktree nor its branch left, status said `in_progress (resuming at write_tests)`
    while the plan (and the monitor) start it over at implement."""
    from orchestrator.report import status_document
    from orchestrator.run import open_run

    _left_mid_run(project, where)
    plan = cli("launch", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert [(a["issue"], a["stage"]) for a in json.loads(plan.stdout)["assignments"]] == [(1, "implement"), (2, stage)]
    doc = status_document(open_run())
    assert issue_of(doc, 2)["resuming_at"] == stage
    assert f"in_progress (resuming at {stage})" in row_of(doc, 2)


# --- worktree_base inside a repository --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["default base beside a subdirectory", "base in another subdirectory"])
def test_a_worktree_base_inside_the_checkout_that_a_subdirectory_repo_path_lies_in_is_a_config_error(project,
                                                                                                     layout):
    """Broke: only repo_path itself was compared, so a repo_path that is a subdirectory of its checkout (a
    monorepo's service) passed with its default worktree_base `<repo_path>-worktrees`: inside that checkout."""
    proj = project([{"number": 1, "title": "one"}])
    service = proj.repo / "services" / "api"
    service.mkdir(parents=True)
    doc = proj.doc()
    doc["repo_path"] = str(service)
    if layout == "default base beside a subdirectory":
        doc.pop("worktree_base")
    else:
        doc["worktree_base"] = str(proj.repo / "services" / "worktrees")
    proj.config.write_text(json.dumps(doc))

    result = cli("launch", "--dry-run")

    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {proj.config}: worktree_base: "), lines
    assert "untracked" in lines[0] and str(proj.repo) in lines[0], lines
    assert git(proj.repo, "status", "--porcelain", "--untracked-files=all") == ""


def test_an_inherited_git_dir_neither_fakes_nor_hides_a_nested_worktree_base(project, make_repo):
    """A git hook's GIT_DIR / GIT_WORK_TREE in our environment must not make another checkout (one that holds
    everything) the repository's, nor the plan guess what is left of an issue from another repository."""
    proj = _left_mid_run(project, "worktree")
    elsewhere = make_repo("elsewhere")
    hook_env = {"GIT_DIR": str(elsewhere.path / ".git"), "GIT_WORK_TREE": "/"}

    plan = cli("launch", "--dry-run", "--json", env=hook_env)

    assert plan.returncode == 0, plan.stderr
    assert [(a["issue"], a["resume"]) for a in json.loads(plan.stdout)["assignments"]] == [(1, None), (2, "worktree")]
    doc = proj.doc()
    doc["worktree_base"] = str(proj.repo / "wt")
    proj.config.write_text(json.dumps(doc))
    nested = cli("launch", "--dry-run", env={"GIT_DIR": str(elsewhere.path / ".git")})
    assert nested.returncode == 2 and "untracked" in nested.stderr, (nested.stdout, nested.stderr)


# --- hostile values for assigned_worker and pipeline_stage ------------------------------------------------

BAD_VALUES = [
    ("assigned_worker 0", {"assigned_worker": 0}, "assigned_worker: must be a worker number (1 or more) or null, got 0"),
    ("assigned_worker negative", {"assigned_worker": -3},
     "assigned_worker: must be a worker number (1 or more) or null, got -3"),
    ("assigned_worker a string", {"assigned_worker": "2"}, "assigned_worker: must be a whole number or null"),
    ("assigned_worker true", {"assigned_worker": True}, "assigned_worker: must be a whole number or null"),
    ("pipeline_stage negative", {"pipeline_stage": -1}, "pipeline_stage: must be 0..1 (or 2: all stages done)"),
    ("pipeline_stage huge", {"pipeline_stage": 10 ** 30}, "pipeline_stage: must be 0..1 (or 2: all stages done)"),
    ("pipeline_stage a string", {"pipeline_stage": "1"}, "pipeline_stage: must be a whole number"),
    ("pipeline_stage a fraction", {"pipeline_stage": 1.5}, "pipeline_stage: must be a whole number"),
]


@pytest.mark.parametrize("name,change,message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_a_hostile_worker_or_stage_of_an_issue_is_one_error_line(tmp_path, name, change, message):
    """Broke (assigned_worker 0 or negative): loaded, and an in_progress issue on `worker -3` was resumed first by
    whichever worker came free. Workers are numbered from 1; null is none."""
    from lib.errors import ConfigError
    from orchestrator.config import load_config

    doc = {"project": "p", "repo_path": "/src/p", "branch_prefix": "p-", "pipeline": ["implement", "test"],
           "issues": [{"number": 1, "title": "a", "status": "in_progress", "assigned_worker": 1, **change}]}
    path = tmp_path / "p-issues.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [line for line in err.value.problems if message in line], err.value.problems


def test_an_issue_left_in_progress_past_its_last_stage_is_not_said_pending_again(project):
    """Broke: the monitor's start rewrote such an issue (the original's aisynth-only #2) to pending, dropped its
    worker, and said `#1: in_progress but held by no worker: pending again`, while it counts as completed and
    never runs again."""
    from orchestrator.monitor import monitor
    from orchestrator.report import status_document
    from orchestrator.run import open_run

    proj = project([{"number": 1, "title": "all stages done", "status": "in_progress", "assigned_worker": 3,
                     "pipeline_stage": 1},
                    {"number": 2, "title": "after it", "depends_on": [1]}], pipeline=["implement"])
    said: list[str] = []

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=said.append) == 0

    assert not [s for s in said if "#1" in s and "pending" in s], said
    assert {k: proj.issue(1)[k] for k in ("status", "assigned_worker", "pipeline_stage")} == {
        "status": "in_progress", "assigned_worker": 3, "pipeline_stage": 1}  # as the original wrote it
    assert proj.issue(2)["status"] == "completed"
    assert [i["state"] for i in status_document(open_run())["projects"][0]["issues"]] == ["completed", "completed"]
    assert not [e for e in proj.events() if e.get("new_issue") == 1 or e.get("issue") == 1]


def test_status_and_the_monitor_say_why_an_issue_past_its_last_stage_counts_as_completed(project):
    """Broke: only `launch` printed the warning. A pipeline shortened while #1 waited at its last stage (review,
    index 2, of implement -> write_tests -> review, now implement -> review) made #1 count as completed: status
    showed `completed` for an issue whose file says pending and whose review never ran, and the monitor (started by
    hand, or reloading the edited file) said nothing either."""
    from orchestrator.monitor import monitor
    from orchestrator.report import status_document, status_lines
    from orchestrator.run import open_run

    proj = project([{"number": 1, "title": "at its review", "pipeline_stage": 2},
                    {"number": 2, "title": "after it", "depends_on": [1]}], pipeline=["implement", "review"])
    warning = "(#1).pipeline_stage: 2 is past the last stage of the pipeline: all stages are done"

    doc = status_document(open_run())
    assert issue_of(doc, 1)["state"] == "completed"
    assert len(doc["warnings"]) == 1 and warning in doc["warnings"][0] and str(proj.config) in doc["warnings"][0]
    assert [line for line in status_lines(doc) if line.startswith("warning: ")] == [f"warning: {doc['warnings'][0]}"]
    said: list[str] = []
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=said.append) == 0
    assert said[0] == f"warning: {doc['warnings'][0]}", said


# --- what a resume finds in the worktree it was left in ------------------------------------------------------


def test_a_resumed_worktree_with_uncommitted_work_keeps_it(project):
    """The earlier agent's uncommitted edit and new file are still there when the issue resumes in its worktree:
    the next try works on top of them (here it commits them), nothing is reset or cleaned."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = _left_mid_run(project, "worktree")
    worktree = proj.root / "worktrees" / "issue-2"
    (worktree / "earlier.txt").write_text("implemented before the restart\nand edited, never committed\n")
    (worktree / "untracked.txt").write_text("new, never added\n")

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert [i["status"] for i in proj.doc()["issues"]] == ["completed", "completed"]
    assert proj.remote_commits("feature/issue-2") == ["review #2", "write_tests #2", "implement #2 (earlier run)"]
    shown = lambda name: git(proj.remote, "show", f"feature/issue-2:{name}")  # noqa: E731 (output stripped)
    assert shown("earlier.txt") == "implemented before the restart\nand edited, never committed"
    assert shown("untracked.txt") == "new, never added"


@pytest.mark.parametrize("how", ["on another branch", "missing but locked"])
def test_a_worktree_the_issue_cannot_resume_in_fails_it_with_the_reason_and_keeps_everything(project, how):
    """A worktree left on another branch (an agent's checkout, with its commit and an uncommitted edit), or
    registered and locked but gone (a removable disk): the issue fails with the reason, and every commit, branch
    and edit stays where it was; the other issue runs."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = _left_mid_run(project, "worktree")
    worktree = proj.root / "worktrees" / "issue-2"
    issue_head = git(proj.repo, "rev-parse", "feature/issue-2").strip()
    moved = proj.root / "unplugged"
    if how == "on another branch":
        git(worktree, "switch", "-q", "-c", "agent-side-quest")
        (worktree / "side.txt").write_text("side quest\n")
        git(worktree, "add", "side.txt")
        git(worktree, "commit", "-q", "-m", "side quest")
        (worktree / "earlier.txt").write_text("edited on the side, never committed\n")
        side_head = git(worktree, "rev-parse", "HEAD").strip()
    else:
        git(proj.repo, "worktree", "lock", "--reason", "on a removable disk", str(worktree))
        worktree.rename(moved)
    said: list[str] = []

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=said.append) == 1

    assert [i["status"] for i in proj.doc()["issues"]] == ["completed", "failed"]
    reason = next(s for s in said if "#2 failed" in s)
    assert ("agent-side-quest" if how == "on another branch" else "locked") in reason, reason
    assert git(proj.repo, "rev-parse", "feature/issue-2").strip() == issue_head
    if how == "on another branch":
        assert git(worktree, "rev-parse", "HEAD").strip() == side_head
        assert git(worktree, "branch", "--show-current").strip() == "agent-side-quest"
        assert (worktree / "earlier.txt").read_text() == "edited on the side, never committed\n"
    else:
        assert (moved / "earlier.txt").read_text() == "implemented before the restart\n"
        assert "locked" in git(proj.repo, "worktree", "list", "--porcelain")


# --- a pipeline shortened under a running issue ---------------------------------------------------------------


def test_a_pipeline_shortened_under_an_issue_at_a_removed_stage_fails_it_and_never_crashes_the_monitor(project):
    """Broke: with a pipeline_stage past the last stage now loading (the original's files), a pipeline shortened
    while #1 runs its write_tests stage (index 1 of implement -> write_tests, now only implement) was taken; the
    next try's prompt then read a stage that no longer exists (IndexError): the monitor died, and died again at
    every start. Now that try cannot start, said why; after max_retries starts the issue fails, its commits kept."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run
    from workers_fixtures import retry_until

    proj = project([{"number": 1, "title": "one"}], script={1: ["ok", "fail"]},
                   pipeline=["implement", "write_tests"])
    said: list[str] = []

    def cycle() -> list[dict]:
        monitor(open_run(), cycle=0.2, once=True, no_delay=True, say=said.append)
        return proj.events()

    retry_until(lambda: any(e["action"] == "advance_stage" for e in cycle()), seconds=90, interval=0.2)
    doc = proj.doc()
    doc["pipeline"] = ["implement"]  # write_tests dropped while #1 runs it
    proj.config.write_text(json.dumps(doc, indent=2))

    retry_until(lambda: cycle() and proj.issue(1)["status"] == "failed", seconds=90, interval=0.2)

    assert any("past the last stage" in s for s in said), said
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]


@pytest.mark.parametrize("how", ["on another branch", "a directory that is no worktree"])
def test_the_plan_refuses_a_worktree_an_issue_cannot_resume_in_instead_of_promising_it(project, how):
    """Broke: the dry run planned `(write_tests, resumed in its worktree)` for a worktree left on another branch
    (or a plain directory at its path), and launch then failed the issue at once. Now launch and its dry run stop
    with one line saying what to do, before anything is made."""
    proj = _left_mid_run(project, "worktree" if how == "on another branch" else "nothing")
    worktree = proj.root / "worktrees" / "issue-2"
    if how == "on another branch":
        git(worktree, "switch", "-q", "-c", "agent-side-quest")
    else:
        worktree.mkdir(parents=True)
        (worktree / "notes.txt").write_text("someone's notes\n")

    for args in (["--dry-run"], []):
        result = cli("launch", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {proj.config}: ") and "#2" in lines[0], lines
        assert ("agent-side-quest" if how == "on another branch" else "not a registered worktree") in lines[0]
    assert not (proj.root / "worktrees" / "issue-1").exists()
    assert proj.issue(2)["status"] == "in_progress"
    if how == "on another branch":
        assert git(worktree, "branch", "--show-current") == "agent-side-quest"
    else:
        assert (worktree / "notes.txt").read_text() == "someone's notes\n"


# --- work an earlier run did in the stage it was stopped in -----------------------------------------------


@pytest.mark.xfail(strict=True, reason="a resumed issue's stage starts at its branch's head (act.do_reassign: "
                   "stage_base), so commits the earlier run made in that stage before it stopped count for nothing; "
                   "counting the commits past the pinned url's branch (the last verified stage's push) needs a read "
                   "of that url in do_reassign and a rule for a branch the agent then deletes: not a small fix")
def test_commits_made_in_the_stage_before_the_monitor_stopped_count_for_that_stage(project):
    """The monitor stopped (kill -9, state/ deleted) after #2's agent committed its write_tests work but before the
    verdict. Resumed in its worktree at write_tests, the next try finds the work done and exits 0 without a new
    commit: that stage should pass on the earlier commit; today it is restarted (and, try after try, failed)."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = _left_mid_run(project, "worktree")
    worktree = proj.root / "worktrees" / "issue-2"
    git(worktree, "push", "-q", "origin", "feature/issue-2")  # implement: verified and pushed by the earlier run
    (worktree / "tests.txt").write_text("tests written before the restart\n")
    git(worktree, "add", "-A")
    git(worktree, "commit", "-q", "-m", "write_tests #2 (earlier run)")
    proj.script.write_text(json.dumps({"2": ["nocommit", "ok"]}))

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    after = [e["action"] for e in proj.events() if e.get("issue") == 2 or e.get("new_issue") == 2]
    assert after[:3] == ["reassign", "push", "advance_stage"], after
    assert proj.remote_commits("feature/issue-2") == ["review #2", "write_tests #2 (earlier run)",
                                                      "implement #2 (earlier run)"]


def test_status_of_an_issue_left_in_progress_in_a_repository_that_is_gone_still_answers(project):
    """Status reads what is left of a resumed issue with git: a repository moved away is no traceback; it says
    the config's stage."""
    from orchestrator.report import status_document
    from orchestrator.run import open_run

    proj = _left_mid_run(project, "nothing")
    proj.repo.rename(proj.root / "moved-away")
    doc = status_document(open_run())
    assert issue_of(doc, 2)["resuming_at"] == "write_tests"


# --- a worktree whose `git worktree add` was stopped half-way ------------------------------------------------


def _half_made(proj) -> None:
    """#2's worktree as a `git worktree add` killed during its checkout leaves it (seen with git 2.39 on 30,000
    files: registered, on its branch, locked `initializing`, the files not yet written staged as deleted)."""
    worktree = proj.root / "worktrees" / "issue-2"
    git(worktree, "rm", "-q", "README.md")
    common = git(proj.repo, "rev-parse", "--path-format=absolute", "--git-common-dir")
    (Path(common) / "worktrees" / "issue-2" / "locked").write_text("initializing")


def test_a_worktree_whose_add_was_stopped_half_way_is_never_resumed_in(project):
    """Broke: after a kill (a tmux window closed on the monitor, a power cut) during `git worktree add`, the issue
    was resumed in that worktree: the next try's `git add -A` committed the deletion of every file not yet checked
    out, and the push sent it. Now launch refuses it and the monitor fails the issue with the reason; the branch
    keeps its files."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = _left_mid_run(project, "worktree")
    _half_made(proj)

    plan = cli("launch", "--dry-run")
    assert plan.returncode == 2 and "git worktree add" in plan.stderr and "#2" in plan.stderr, plan
    said: list[str] = []
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=said.append) == 1

    assert [i["status"] for i in proj.doc()["issues"]] == ["completed", "failed"]
    assert any("#2 failed" in s and "git worktree add" in s for s in said), said
    assert "README.md" in git(proj.repo, "ls-tree", "--name-only", "feature/issue-2").split()
    assert git(proj.remote, "branch", "--list", "feature/issue-2") == ""  # nothing of it was pushed


def test_a_retry_never_starts_in_a_worktree_whose_add_was_stopped_half_way(project):
    """The same half-made worktree under an issue a worker holds (its worktree deleted by the agent, and the
    monitor killed while it made it again): the retry did not check it and committed the deletions."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run
    from workers_fixtures import retry_until

    proj = project([{"number": 2, "title": "held"}], script={2: ["fail", "ok"]}, pipeline=["implement"])
    said: list[str] = []
    monitor(open_run(), cycle=0.2, once=True, no_delay=True, say=said.append)  # takes #2; its first try fails
    _half_made(proj)

    retry_until(lambda: monitor(open_run(), cycle=0.2, once=True, no_delay=True, say=said.append) is not None
                and proj.issue(2)["status"] in ("completed", "failed"), seconds=90, interval=0.2)

    assert proj.issue(2)["status"] == "failed"
    assert any("git worktree add" in s for s in said), said
    assert git(proj.remote, "branch", "--list", "feature/issue-2") == ""
