"""An issue the config says is in_progress on a worker is resumed first, by that worker, where it was left."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, git
from workers_fixtures import monitor_env, project, tmux_socket  # noqa: F401
from workers_fixtures import orchestrator_cli as cli  # noqa: E402

from orchestrator.decide import Action, Pause, Settings, Snapshot, State, WorkerView, decide  # noqa: E402
from orchestrator.queue import IssueRef, IssueView  # noqa: E402

PACKAGE = ROOT / "scripts" / "proof-workers"
SETTINGS = Settings(max_retries=2, stall_timeout=100, wall_clock_timeout=1000)


def fresh(n: int, wave: int = 1, priority: int = 1) -> IssueView:
    return IssueView(IssueRef("p", n), "pending", wave, priority)


def left(n: int, worker: int, wave: int = 3, priority: int = 3) -> IssueView:
    """In progress in the config on `worker`, held by no worker record: to be resumed."""
    return IssueView(IssueRef("p", n), "in_progress", wave, priority, resume_worker=worker)


def holding(worker: int, n: int) -> WorkerView:
    return WorkerView(worker, IssueRef("p", n), try_id=1)


RUNNING = [Snapshot(2, 1, True, True, None, 0, False, 1, 1)]

CASES = [
    ("its worker takes it before fresh work of a better wave; another worker never does",
     (WorkerView(1), WorkerView(2)), (fresh(1), fresh(2), left(9, 2)), (), [(1, 1), (2, 9)]),
    ("its worker is busy: it waits for that worker, the others take fresh work",
     (WorkerView(1), holding(2, 5)), (fresh(1), left(9, 2), IssueView(IssueRef("p", 5), "in_progress")), (),
     [(1, 1)]),
    ("its worker is not in this run (fewer --workers): the first free worker resumes it before fresh work",
     (WorkerView(1), WorkerView(2)), (fresh(1), left(9, 7)), (), [(1, 9), (2, 1)]),
    ("two left on one worker: the better one first, the other waits for it",
     (WorkerView(1), WorkerView(2)), (left(9, 2, wave=4), left(8, 2, wave=4), fresh(1)), (), [(1, 1), (2, 8)]),
    ("paused: not resumed, its worker takes fresh work meanwhile",
     (WorkerView(1),), (fresh(1), left(9, 1)), (Pause("p", 9, "user"),), [(1, 1)]),
    ("its dependencies are not all completed: not resumed",
     (WorkerView(1),), (IssueView(IssueRef("p", 9), "in_progress", depends_on=(3,), resume_worker=1),
                        IssueView(IssueRef("p", 3), "failed")), (), []),
]


@pytest.mark.parametrize("name,workers,issues,paused,expected", CASES, ids=[c[0] for c in CASES])
def test_decide_resumes_an_in_progress_issue_first_by_its_worker(name, workers, issues, paused, expected):
    snapshots = RUNNING if any(w.issue for w in workers) else []
    actions = decide(snapshots, State(workers, issues, paused), SETTINGS)
    assert [(a.worker, a.issue.number) for a in actions if a.kind == "reassign"] == expected
    assert all(a.kind == "reassign" for a in actions)


def test_a_resume_is_said_in_the_action_reason():
    actions = decide([], State((WorkerView(2),), (left(9, 2),)), SETTINGS)
    assert actions == [Action("reassign", 2, IssueRef("p", 9), "resumes #9 (in_progress on worker 2 in the config)")]


def _left_on_worker_2(project, where: str):
    """#1 and #2 fresh in wave 1; #3 in_progress on worker 2 at stage write_tests (wave 2), its implement commit on
    its branch (where: "worktree" left in place, "branch" only, "pushed": the branch only at the remote, or
    "fresh": nothing left)."""
    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "two"},
                    {"number": 3, "title": "left mid-run", "wave": 2, "priority": 3, "status": "in_progress",
                     "assigned_worker": 2, "pipeline_stage": 1}])
    worktree = proj.root / "worktrees" / "issue-3"
    if where != "fresh":
        git(proj.repo, "worktree", "add", "-q", "-b", "feature/issue-3", str(worktree), "origin/main")
        (worktree / "earlier.txt").write_text("implemented before the restart\n")
        git(worktree, "add", "-A")
        git(worktree, "commit", "-q", "-m", "implement #3 (earlier run)")
    if where in ("branch", "pushed"):
        git(proj.repo, "worktree", "remove", str(worktree))
    if where == "pushed":  # only the remote has it now
        git(proj.repo, "push", "-q", "origin", "feature/issue-3")
        git(proj.repo, "branch", "-q", "-D", "feature/issue-3")
    return proj


def test_status_and_the_plan_show_the_issue_resuming_at_its_stage(project):
    from orchestrator.report import status_document, status_lines
    from orchestrator.run import open_run

    _left_on_worker_2(project, "worktree")
    doc = status_document(open_run())
    issue = doc["projects"][0]["issues"][2]
    assert (issue["state"], issue["resuming_at"], issue["assigned_worker"]) == ("in_progress", "write_tests", 2)
    assert doc["projects"][0]["issues"][0]["resuming_at"] is None
    row = next(line for line in "\n".join(status_lines(doc)).splitlines() if line.startswith("#3 "))
    assert "in_progress (resuming at write_tests)" in row
    plan = subprocess.run([sys.executable, "-m", "orchestrator", "launch", "--dry-run", "--json"], cwd=PACKAGE,
                          env=monitor_env(), capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert [(a["worker"], a["issue"], a["stage"], a["resume"]) for a in json.loads(plan.stdout)["assignments"]] == [
        (1, 1, "implement", None), (2, 3, "write_tests", "worktree")]


@pytest.mark.parametrize("where", ["worktree", "branch", "pushed", "fresh"])
def test_a_real_run_resumes_the_issue_first_on_its_worker_and_keeps_its_commits(project, where):
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = _left_on_worker_2(project, where)
    said: list[str] = []

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=said.append) == 0

    reassigns = [e for e in proj.events() if e["action"] == "reassign"]
    assert [(e["worker"], e["new_issue"]) for e in reassigns[:2]] == [(1, 1), (2, 3)], reassigns
    assert reassigns[1]["resumed"] == {"pushed": "branch"}.get(where, where)
    assert [i["status"] for i in proj.doc()["issues"]] == ["completed"] * 3
    if where == "fresh":
        assert any("resumes #3 from its first stage (implement): neither its worktree nor its branch is left" in s
                   for s in said), said
        assert "Stage: implement" in proj.prompts(3)[0]
        assert proj.remote_commits("feature/issue-3") == ["review #3", "write_tests #3", "implement #3"]
    else:
        assert "Stage: write_tests" in proj.prompts(3)[0]
        assert proj.remote_commits("feature/issue-3") == ["review #3", "write_tests #3", "implement #3 (earlier run)"]


# --- item 8: --workers 0, idle workers, worktree_base inside a repository -----------------------------------


def test_workers_0_is_a_usage_error_and_no_flag_keeps_the_configs_number_in_both_front_doors(project, inv):
    project([{"number": 1, "title": "one"}], num_workers=3)
    for verb in ("launch", "status", "monitor"):
        for bad in ("0", "65"):
            result = cli(verb, "--workers", bad, *(["--dry-run"] if verb == "launch" else []))
            assert result.returncode == 2, (verb, bad, result.stdout, result.stderr)
            assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
            assert "--workers" in result.stderr and "num_workers" in result.stderr
    bad = inv("workers.launch", "--dry-run", "--workers", "0")
    assert bad.code == 2 and "--workers" in bad.err and "num_workers" in bad.err, (bad.out, bad.err)
    windows = lambda out: json.loads(out)["windows"]  # noqa: E731
    assert windows(cli("launch", "--dry-run", "--json").stdout) == ["orchestrator", "worker-1", "worker-2",
                                                                    "worker-3", "dashboard"]
    default = inv("workers.launch", "--dry-run", "--json")
    assert default.code == 0 and windows(default.out)[1:-1] == ["worker-1", "worker-2", "worker-3"]
    two = inv("workers.launch", "--dry-run", "--json", "--workers", "2")
    assert two.code == 0 and windows(two.out)[1:-1] == ["worker-1", "worker-2"]


def test_the_plan_says_how_many_workers_will_idle(project):
    project([{"number": 1, "title": "one"}, {"number": 2, "title": "two"}, {"number": 3, "title": "after one",
                                                                            "depends_on": [1]}], num_workers=5)
    text = cli("launch", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert [line for line in text.stdout.splitlines() if "idle" in line] == [
        "(dry run) 3 of 5 workers will idle: no other issue is eligible for them now"]
    assert json.loads(cli("launch", "--dry-run", "--json").stdout)["idle"] == 3
    busy = cli("launch", "--dry-run", "--workers", "2")
    assert busy.returncode == 0 and "idle" not in busy.stdout


@pytest.mark.parametrize("layout", ["inside", "the repository itself", "through a symlink",
                                    "inside another repo of the map"])
def test_a_worktree_base_inside_a_repository_is_a_config_error(project, make_repo, layout):
    proj = project([{"number": 1, "title": "one"}])
    doc = proj.doc()
    if layout == "inside":
        doc["worktree_base"] = str(proj.repo / "worktrees")
    elif layout == "the repository itself":
        doc["worktree_base"] = str(proj.repo)
    elif layout == "through a symlink":
        alias = proj.root / "alias"
        alias.symlink_to(proj.repo)
        doc["worktree_base"] = str(alias / "sub" / "worktrees")
    else:
        other = make_repo("lib")
        for key in ("repo_path", "worktree_base", "branch_prefix", "default_branch"):
            doc.pop(key)
        doc["repos"] = {"app": {"path": str(proj.repo), "branch_prefix": "app-",
                                "worktree_base": str(other.path / ".wt")},
                        "lib": {"path": str(other.path), "branch_prefix": "lib-"}}
        doc["issues"][0]["repo"] = "app"
    proj.config.write_text(json.dumps(doc))

    result = cli("launch", "--dry-run")

    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {proj.config}: ") and "worktree_base" in lines[0]
    assert "untracked" in lines[0], lines
    assert not (proj.repo / "worktrees").exists()


def test_launch_itself_resumes_an_issue_with_nothing_left_from_its_first_stage(project, tmux_socket):
    """Broke: launch made the planned worktrees before the monitor started, so the monitor found a worktree for
    #3 (made just now, empty) and ran only its later stages on it: an issue completed without its first stage."""
    from workers_fixtures import retry_until

    proj = _left_on_worker_2(project, "fresh")
    launched = cli("launch")
    assert launched.returncode == 0, launched.stderr
    retry_until(lambda: any(e["action"] == "shutdown" for e in proj.events()), seconds=90)
    assert [i["status"] for i in proj.doc()["issues"]] == ["completed"] * 3
    resumed = next(e for e in proj.events() if e["action"] == "reassign" and e["new_issue"] == 3)
    assert (resumed["worker"], resumed["resumed"]) == (2, "fresh")
    assert proj.remote_commits("feature/issue-3") == ["review #3", "write_tests #3", "implement #3"]
