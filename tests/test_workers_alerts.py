"""Alerts and pauses: agents that reach outside their worktree and branch are seen, said, and (on_alert=pause) held.

Real tmux on a private socket, real git with a bare remote, and a scripted rogue agent whose every try is a
list of shell steps run in its worktree. The monitor is stepped one cycle at a time (`once`), so "no next try
starts until resume" is asserted on cycles, not on time.
"""
from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import ROOT, git
from workers_fixtures import monitor_env, project, retry_until, tmux_socket  # noqa: F401
from workers_fixtures import orchestrator_cli as cli, status_document as status  # noqa: E402

from rich.console import Console

from orchestrator.dashboard import render
from orchestrator.decide import cycle_from_json, decide
from orchestrator.monitor import monitor
from orchestrator.run import open_run
from orchestrator.state import read_lines

PACKAGE = ROOT / "scripts" / "proof-workers"

ROGUE_AGENT = r'''
"""A scripted agent: try N of issue I runs the shell steps script[I][N] in its worktree; COMMIT commits its work."""
import json, os, subprocess, sys
from pathlib import Path

script_file, number, stage = sys.argv[1], sys.argv[2], sys.argv[3]
script = json.loads(Path(script_file).read_text())
runs = Path(script_file).parent / "runs"
runs.mkdir(exist_ok=True)
count_file = runs / f"{number}.count"
attempt = int(count_file.read_text()) if count_file.exists() else 0
count_file.write_text(str(attempt + 1))
plan = script.get(number, [])
steps = plan[attempt] if attempt < len(plan) else ["COMMIT"]
os.environ.update({"GIT_AUTHOR_NAME": "Rogue", "GIT_AUTHOR_EMAIL": "rogue@example.com",
                   "GIT_COMMITTER_NAME": "Rogue", "GIT_COMMITTER_EMAIL": "rogue@example.com",
                   "MAIN": str(Path(subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
                                                   capture_output=True, text=True).stdout.strip()).parent)})
print(f"rogue agent: issue {number} stage {stage} try {attempt}: {steps}", flush=True)
for step in steps:
    if step == "COMMIT":
        Path(f"work-{number}.txt").open("a").write(f"{stage}\n")
        subprocess.run(["git", "add", f"work-{number}.txt"], check=True)
        subprocess.run(["git", "commit", "-q", "-m", f"{stage} #{number}"], check=True)
    else:
        subprocess.run(step, shell=True, check=True)
'''


def rogue(project_factory, issues: list[dict[str, Any]], script: dict[int, list[list[str]]], **settings: Any):
    proj = project_factory(issues, **{"pipeline": ["implement"], "num_workers": 1, **settings})
    agent = proj.root / "rogue" / "agent.py"
    agent.parent.mkdir()
    agent.write_text(ROGUE_AGENT)
    proj.script = agent.parent / "script.json"
    proj.script.write_text(json.dumps({str(k): v for k, v in script.items()}))
    doc = proj.doc()
    doc["agent_command"] = " ".join([*map(shlex.quote, (sys.executable, str(agent), str(proj.script))),
                                     "{{issue.number}}", "{{stage}}"])
    proj.config.write_text(json.dumps(doc, indent=2))
    return proj


def cycle(lines: list[str] | None = None) -> int:
    """One monitor cycle (reconcile first, as every monitor start does)."""
    return monitor(open_run(), once=True, say=(lines.append if lines is not None else lambda _: None))


def try_ended(proj, worker: int, try_id: int) -> None:
    signal = proj.state / "signals" / f"worker-{worker}-try-{try_id}.exit"
    retry_until(signal.exists, seconds=60)


def runs(proj, number: int) -> int:
    count = proj.script.parent / "runs" / f"{number}.count"
    return int(count.read_text()) if count.exists() else 0


def logged_alerts(proj) -> list[dict[str, Any]]:
    return [e for e in proj.events() if e["action"] == "alert"]


def assert_journal_replays(proj) -> None:
    journal = read_lines(proj.state / "journal.jsonl")
    assert journal
    for entry in journal:
        snapshots, state, settings, actions = cycle_from_json(entry)
        assert decide(snapshots, state, settings) == actions


def test_an_honest_run_with_failed_tries_and_worktrees_inside_the_repository_raises_no_alert(project):
    """No alert lies: restarts, pushes, stage after stage on two workers, the worktrees under the main checkout
    (created by the run, not written by an agent) and branches created by the run are all the run's own doing."""
    proj = rogue(project, [{"number": n, "title": f"issue {n}", "depends_on": [1] if n == 3 else []}
                           for n in (1, 2, 3)],
                 {1: [["exit 3"], ["COMMIT"]], 2: [["COMMIT", "exit 4"]]},
                 pipeline=["implement", "review"], num_workers=2, on_alert="pause")
    doc = proj.doc()
    doc["worktree_base"] = str(proj.repo / ".worktrees")
    proj.config.write_text(json.dumps(doc))

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert [i["status"] for i in proj.doc()["issues"]] == ["completed"] * 3
    assert status()["alerts"] == [] and logged_alerts(proj) == []
    assert sum(1 for e in proj.events() if e["action"] == "restart") == 2


def test_an_agent_that_rewrites_the_shared_git_config_is_reported_and_the_run_goes_on_under_warn(project):
    """on_alert defaults to warn: the alert is recorded (status --json, text status, jsonl log) and work goes on."""
    proj = rogue(project, [{"number": 1, "title": "one"}],
                 {1: [["git config core.hooksPath /tmp/agent-hooks", "git config url.file:///elsewhere/.insteadOf "
                       "https://example.com/", "COMMIT"]]})

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.remote_commits("feature/issue-1") == ["implement #1"]
    doc = status()
    # One alert per distinct change the monitor saw: one, or two when a cycle fell between the agent's two
    # `git config` commands (a busy machine); together they name both changes.
    found = doc["alerts"]
    assert 1 <= len(found) <= 2 and all(a["kind"] == "git_config_changed" and a["project"] == "demo"
                                        and a["issue"] is None for a in found)
    details = " ".join(a["detail"] for a in found)
    assert "core.hookspath = /tmp/agent-hooks" in details and "insteadof" in found[-1]["detail"]
    assert all(set(a) >= {"kind", "issue", "worker", "detail", "at"} for a in found)
    logged = logged_alerts(proj)
    assert len(logged) == len(found) and all(a["kind"] == "git_config_changed" and a["paused"] is False
                                             for a in logged)
    assert doc["done"] and doc["projects"][0]["paused"] == []
    text = cli("status").stdout
    assert "alert: git_config_changed demo" in text and "core.hookspath" in text


def test_with_on_alert_pause_a_config_change_holds_the_verified_stage_until_resume(project):
    """The stage verified while the project is paused is neither pushed nor advanced; no next try starts over
    several cycles; done stays false; resume lets it go on. Every decision replays from the journal."""
    proj = rogue(project, [{"number": 1, "title": "one"}],
                 {1: [["git config remote.origin.pushurl /tmp/nowhere.git", "git config --unset "
                       "remote.origin.pushurl", "git config core.bare false", "git config core.autocrlf true",
                       "COMMIT"]]},
                 pipeline=["implement", "review"], on_alert="pause")
    cycle()  # assigns #1
    try_ended(proj, 1, 1)
    lines: list[str] = []
    for _ in range(3):
        cycle(lines)
    assert any("ALERT git_config_changed" in line for line in lines), lines
    assert runs(proj, 1) == 1 and git(proj.remote, "branch", "--list", "feature/issue-1") == ""
    doc = status()
    [paused] = doc["projects"][0]["paused"]
    assert paused["reason"] == "alert" and "git_config_changed" in paused["detail"] and paused["until"] is None
    assert paused["since"] and not doc["done"]
    assert "paused: alert" in cli("status").stdout
    screen = io.StringIO()
    Console(file=screen, width=200, color_system=None).print(render(doc))
    assert "demo paused: alert" in screen.getvalue() and "alert: git_config_changed demo" in screen.getvalue()
    assert [a["kind"] for a in logged_alerts(proj)] == ["git_config_changed"]
    assert logged_alerts(proj)[0]["paused"] is True

    resumed = cli("resume")
    assert resumed.returncode == 0 and "resumed demo: alert" in resumed.stdout, resumed.stderr
    cycle()  # push, advance, the review try starts
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]
    try_ended(proj, 1, 2)
    cycle()
    assert proj.issue(1)["status"] == "completed" and runs(proj, 1) == 2
    assert [a["kind"] for a in logged_alerts(proj)] == ["git_config_changed"], "an alert is raised once per run"
    assert_journal_replays(proj)


def test_an_agent_that_pushes_to_main_is_caught_when_its_stage_ends_and_paused_before_completion(project):
    proj = rogue(project, [{"number": 1, "title": "one"}],
                 {1: [["COMMIT", "git push -q origin HEAD:main"]]}, on_alert="pause")
    before = git(proj.remote, "rev-parse", "main")
    cycle()
    try_ended(proj, 1, 1)
    cycle()
    cycle()
    assert git(proj.remote, "rev-parse", "main") != before
    [alert] = status()["alerts"]
    assert alert["kind"] == "default_branch_moved" and before[:12] in alert["detail"] and "main" in alert["detail"]
    assert proj.issue(1)["status"] == "in_progress", "reported completed while main was moved behind our back"
    assert [(a["kind"], a["paused"]) for a in logged_alerts(proj)] == [("default_branch_moved", True)]
    assert git(proj.remote, "branch", "--list", "feature/issue-1") == ""
    assert cli("resume", "--project", "demo").returncode == 0
    cycle()
    assert proj.issue(1)["status"] == "completed"
    assert [a["kind"] for a in logged_alerts(proj)] == ["default_branch_moved"]


def test_an_agent_that_switches_branch_is_named_and_its_retry_runs_on_the_issue_branch(project):
    """The try ends on a rogue branch: the reason says which (never 'without a new commit'); under pause the
    retry waits for resume; before it the worktree is put back on its branch; the rogue branch keeps its
    commit and the untracked file the agent left stays."""
    proj = rogue(project, [{"number": 1, "title": "one"}],
                 {1: [["git switch -q -c rogue-branch", "COMMIT", "echo notes > left-behind.txt"], ["COMMIT"]]},
                 on_alert="pause")
    cycle()
    try_ended(proj, 1, 1)
    cycle()
    cycle()
    [alert] = status()["alerts"]
    assert alert["kind"] == "branch_switched" and alert["issue"] == 1 and alert["worker"] == 1
    assert "rogue-branch" in alert["detail"]
    doc = status()
    assert doc["projects"][0]["paused"] == [] and doc["projects"][0]["issues"][0]["paused"][0]["reason"] == "alert"
    assert "#1 paused: alert" in cli("status").stdout
    assert runs(proj, 1) == 1, "the retry started while the issue was paused"
    assert [(a["kind"], a["issue"], a["paused"]) for a in logged_alerts(proj)] == [("branch_switched", 1, True)]
    worktree = proj.root / "worktrees" / "issue-1"
    rogue_head = git(worktree, "rev-parse", "rogue-branch")

    assert cli("resume", "--project", "demo", "--issue", "1").returncode == 0
    cycle()  # the retry: put back first
    try_ended(proj, 1, 2)
    cycle()
    restart = next(e for e in proj.events() if e["action"] == "restart")
    assert "rogue-branch" in restart["reason"] and "without a new commit" not in restart["reason"]
    assert any(e["action"] == "branch_restored" and e["was_on"] == "rogue-branch" for e in proj.events())
    assert proj.issue(1)["status"] == "completed"
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]
    assert git(worktree, "rev-parse", "rogue-branch") == rogue_head  # kept for inspection
    assert git(worktree, "log", "-1", "--format=%s", "rogue-branch") == "implement #1"
    assert (worktree / "left-behind.txt").read_text() == "notes\n"
    assert git(worktree, "branch", "--show-current") == "feature/issue-1"


def test_an_agent_that_commits_into_a_finished_siblings_worktree_is_a_foreign_write(project):
    proj = rogue(project, [{"number": 1, "title": "one"}, {"number": 2, "title": "two", "depends_on": [1]}],
                 {2: [["echo sneaky > ../issue-1/sneaky.txt", "git -C ../issue-1 add sneaky.txt",
                       "git -C ../issue-1 commit -q -m sneaky", "COMMIT"]]}, on_alert="pause")
    cycle()
    try_ended(proj, 1, 1)
    cycle()  # #1 pushed and completed
    assert proj.issue(1)["status"] == "completed"
    cycle()  # its dependent #2 is taken a cycle later
    try_ended(proj, 1, 2)
    cycle()
    [alert] = status()["alerts"]
    assert alert["kind"] == "foreign_write" and alert["issue"] == 1 and "feature/issue-1" in alert["detail"]
    assert "sneaky" in alert["detail"]
    [logged] = logged_alerts(proj)
    assert logged["issue"] == 1 and logged["paused"] is True
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]  # the sneaky commit was never pushed
    assert proj.issue(2)["status"] == "completed"  # #2's own work is not held by #1's pause


def test_an_agent_that_commits_in_the_main_checkout_pauses_the_project(project):
    proj = rogue(project, [{"number": 1, "title": "one"}, {"number": 2, "title": "two"}],
                 {1: [["echo x > \"$MAIN/stray.txt\"", "git -C \"$MAIN\" add stray.txt",
                       "git -C \"$MAIN\" commit -q -m stray", "COMMIT"]]}, on_alert="pause")
    cycle()
    try_ended(proj, 1, 1)
    cycle()
    cycle()
    [alert] = status()["alerts"]
    assert alert["kind"] == "foreign_write" and alert["issue"] is None and str(proj.repo) in alert["detail"]
    assert "HEAD" in alert["detail"]
    assert [(a["kind"], a["issue"], a["paused"]) for a in logged_alerts(proj)] == [("foreign_write", None, True)]
    assert proj.issue(1)["status"] == "in_progress" and runs(proj, 2) == 0, "no try starts while paused"
    assert not status()["done"]
    assert cli("resume").returncode == 0
    cycle()
    try_ended(proj, 1, 2)
    cycle()
    assert [i["status"] for i in proj.doc()["issues"]] == ["completed", "completed"]


def test_a_user_pause_lets_the_running_try_finish_and_starts_nothing_until_resume(project, inv):
    proj = rogue(project, [{"number": 1, "title": "one"}, {"number": 2, "title": "two"}],
                 {1: [["sleep 1", "COMMIT"]]})
    cycle()
    paused = inv("workers.pause", "--detail", "lunch")
    assert paused.code == 0 and "paused demo" in paused.out, paused.err
    try_ended(proj, 1, 1)  # the running try finished
    cycle()
    cycle()
    assert proj.issue(1)["status"] == "in_progress" and runs(proj, 2) == 0
    doc = status()
    assert doc["projects"][0]["paused"][0]["reason"] == "user" and doc["projects"][0]["paused"][0]["detail"] == "lunch"
    assert not doc["done"] and doc["alerts"] == [] and doc["next_eligible"] == []
    assert "paused: user" in cli("status").stdout
    again = inv("workers.resume")
    assert again.code == 0 and "resumed demo: user" in again.out
    assert "nothing to resume" in inv("workers.resume").out
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert [i["status"] for i in proj.doc()["issues"]] == ["completed", "completed"]
    assert_journal_replays(proj)


def test_a_rate_limit_until_a_time_lapses_by_itself_and_resume_does_not_clear_it(project):
    from orchestrator import pauses

    proj = rogue(project, [{"number": 1, "title": "one"}], {})
    path = pauses.pause_file(proj.home / "state", "demo")
    pauses.add(path, "rate_limit", "429", now=1000.0, until=4_000_000_000.0)
    pauses.add(path, "budget", "spent", now=1000.0, issue=1, until=1500.0)  # lapsed long ago
    result = cli("resume")
    assert result.returncode == 0 and "still paused demo: rate_limit until 2096" in result.stdout
    cycle()
    assert runs(proj, 1) == 0 and proj.issue(1).get("status", "pending") == "pending"
    doc = status()
    [held] = doc["projects"][0]["paused"]
    assert held["until"].startswith("2096") and doc["projects"][0]["issues"][0]["paused"] == []
    assert "paused: rate_limit until 2096" in cli("status").stdout


def test_pause_and_resume_refuse_bad_input_in_one_line_with_exit_2(project):
    project([{"number": 1, "title": "one"}])
    for args, words in ((["resume", "--project", "nope"], "unknown project 'nope'"),
                        (["pause", "--issue", "9"], "issue #9 is not in the issue list"),
                        (["resume", "--issue", "x"], "expected a whole number")):
        result = cli(*args)
        assert result.returncode == 2 and words in result.stderr and len(result.stderr.splitlines()) == 1, result


def test_on_alert_must_be_warn_or_pause(project):
    proj = project([{"number": 1, "title": "one"}], on_alert="panic")
    result = cli("status")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {proj.config}: on_alert: must be one of warn, pause, got 'panic'"


def test_a_corrupt_pause_file_holds_the_project_until_resume_starts_it_afresh(project):
    proj = project([{"number": 1, "title": "one"}])
    path = proj.home / "state" / "demo" / "paused.json"
    path.parent.mkdir(parents=True)
    path.write_text("{half")
    cycle()
    assert proj.issue(1).get("status", "pending") == "pending"
    doc = status()
    [held] = doc["projects"][0]["paused"]
    assert held["reason"] == "user" and "paused.json" in held["detail"]
    assert cli("resume").returncode == 0
    assert (path.parent / "paused.json.corrupt").read_text() == "{half"
    assert status()["projects"][0]["paused"] == []


def test_putting_a_worktree_back_keeps_a_detached_commit_and_refuses_to_overwrite_uncommitted_work(make_repo,
                                                                                                  tmp_path):
    from orchestrator import alerts, worktrees

    handle = make_repo("app")
    base = tmp_path / "worktrees"
    detached = worktrees.ensure_worktree(handle.path, "main", base, base / "issue-1", "feature/issue-1")
    git(detached, "checkout", "-q", "--detach")
    (detached / "only-here.txt").write_text("x")
    git(detached, "add", "only-here.txt")
    git(detached, "commit", "-q", "-m", "only here")
    lone = git(detached, "rev-parse", "HEAD")
    (detached / "notes.txt").write_text("uncommitted")

    assert alerts.put_back_on_branch(detached, "feature/issue-1") == "a detached HEAD"

    assert git(detached, "branch", "--show-current") == "feature/issue-1"
    assert git(handle.path, "for-each-ref", "--format=%(objectname)", "refs/orchestrator-rogue/") == lone
    assert (detached / "notes.txt").read_text() == "uncommitted"
    assert alerts.put_back_on_branch(detached, "feature/issue-1") is None  # already there: nothing done

    clash = worktrees.ensure_worktree(handle.path, "main", base, base / "issue-2", "feature/issue-2")
    git(clash, "switch", "-q", "-c", "rogue")
    (clash / "README.md").write_text("changed on rogue\n")
    git(clash, "commit", "-q", "-am", "rogue change")
    (clash / "README.md").write_text("uncommitted on top\n")
    import pytest

    with pytest.raises(worktrees.GitFailed, match="cannot put .* back on feature/issue-2 from rogue"):
        alerts.put_back_on_branch(clash, "feature/issue-2")
    assert git(clash, "branch", "--show-current") == "rogue"
    assert (clash / "README.md").read_text() == "uncommitted on top\n"


def test_launch_dry_run_of_a_paused_project_plans_no_assignment(project):
    project([{"number": 1, "title": "one"}])
    assert cli("pause", "--project", "demo").returncode == 0
    plan = cli("launch", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["assignments"] == []
    assert cli("resume").returncode == 0
    assert [a["issue"] for a in json.loads(cli("launch", "--dry-run", "--json").stdout)["assignments"]] == [1]


def test_a_commit_into_a_held_worktree_whose_try_has_ended_is_a_foreign_write(project, tmp_path):
    """#1's try ended (its verdict waits under a user pause); #2's agent then commits into #1's worktree. The
    alert names #1 and no worker (who did it is not known), and says #1's try had ended."""
    gate = tmp_path / "gate"
    proj = rogue(project, [{"number": 1, "title": "one"}, {"number": 2, "title": "two"}],
                 {2: [[f"while [ ! -e {gate} ]; do sleep 0.05; done", "echo x > ../issue-1/sneaky.txt",
                       "git -C ../issue-1 add sneaky.txt", "git -C ../issue-1 commit -q -m sneaky", "COMMIT"]]},
                 num_workers=2)
    cycle()
    assert cli("pause", "--issue", "1").returncode == 0
    try_ended(proj, 1, 1)
    cycle()  # #1's try is seen ended; its verdict waits
    gate.write_text("go")
    try_ended(proj, 2, 1)
    cycle()
    [alert] = status()["alerts"]
    assert alert["kind"] == "foreign_write" and alert["issue"] == 1 and alert["worker"] is None
    assert "worker 1's try had ended" in alert["detail"] and "sneaky" in alert["detail"]
    assert proj.issue(2)["status"] == "completed"


def test_a_config_change_undone_and_made_again_is_a_new_alert_and_a_quiet_cycle_starts_no_git(make_repo, tmp_path,
                                                                                               monkeypatch):
    from orchestrator import alerts, worktrees
    from orchestrator.config import parse_config

    handle = make_repo("app")
    cfg = parse_config(tmp_path / "p-issues.json", {"project": "p", "repo_path": str(handle.path),
                                                    "branch_prefix": "f-", "issues": [{"number": 1, "title": "t"}]})
    state = tmp_path / "state"
    doc = alerts.current(state, [cfg], 1000.0)

    def look() -> list[str]:
        _, found, _ = alerts.check(doc, [cfg], [], [], 1001.0, lambda _: None, lambda text: None)
        return [a["detail"] for a in found]

    assert look() == []
    calls: list[tuple] = []
    real = worktrees.git
    monkeypatch.setattr(worktrees, "git", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert look() == [] and calls == [], "a quiet cycle starts git"
    git(handle.path, "config", "remote.origin.url", "/elsewhere.git")
    assert ["remote.origin.url: " in d and "-> /elsewhere.git" in d for d in look()] == [True]
    assert look() == []
    git(handle.path, "config", "remote.origin.url", str(handle.remote))
    assert look() == []
    git(handle.path, "config", "remote.origin.url", "/elsewhere.git")
    assert len(look()) == 1
    assert len(doc["alerts"]) == 2


def test_a_remote_unreachable_at_launch_takes_its_first_answer_as_the_baseline(make_repo, tmp_path):
    """Never 'moved' against a head that was never read: the first answer is the baseline, later moves alert."""
    from orchestrator import alerts
    from orchestrator.config import parse_config

    handle = make_repo("app")
    cfg = parse_config(tmp_path / "p-issues.json", {"project": "p", "repo_path": str(handle.path),
                                                    "branch_prefix": "f-", "issues": []})
    away = handle.remote.with_name("away.git")
    handle.remote.rename(away)
    doc = alerts.current(tmp_path / "state", [cfg], 1000.0)
    handle.remote.with_name("away.git").rename(handle.remote)
    key, snap = next(iter(doc["repos"].items()))
    assert snap["default_unknown"] is True

    checks = alerts.Checks(doc, [cfg])
    checks.default_branch(key, snap, "a stage ended")
    assert checks.found == [] and snap["default_head"] == git(handle.remote, "rev-parse", "main")
    handle.commit({"new.txt": "x"}, "moved")
    handle.git("push", "-q", "origin", "main")
    checks.default_branch(key, snap, "a stage ended")
    assert [a["kind"] for a in checks.found] == ["default_branch_moved"]


def test_the_proof_workers_page_names_every_alert_kind_and_pause_reason():
    from orchestrator import alerts, pauses

    readme = (ROOT / "docs" / "proof-workers.md").read_text()
    assert all(f"`{kind}`" in readme for kind in alerts.KINDS)
    assert all(f"`{reason}`" in readme for reason in pauses.REASONS)


def test_an_inherited_git_dir_and_odd_user_config_neither_hide_an_alert_nor_make_one_up(project, tmp_path):
    import os

    proj = rogue(project, [{"number": 1, "title": "one"}, {"number": 2, "title": "two"}],
                 {2: [["git config core.sshCommand 'ssh -o ProxyCommand=evil'", "COMMIT"]]}, num_workers=2)
    with open(os.environ["GIT_CONFIG_GLOBAL"], "a") as config:
        config.write("[status]\n\tshowUntrackedFiles = no\n[color]\n\tui = always\n[core]\n\tquotePath = true\n"
                     "[log]\n\tshowSignature = true\n")
    decoy = tmp_path / "decoy"
    git(tmp_path, "init", "-q", str(decoy))
    monitor_run = subprocess.run([sys.executable, "-m", "orchestrator", "monitor", "--cycle", "0.2", "--no-delay"],
                                 cwd=PACKAGE, env=monitor_env({"GIT_DIR": str(decoy / ".git"),
                                                               "GIT_WORK_TREE": str(decoy)}),
                                 capture_output=True, text=True, timeout=120)
    assert monitor_run.returncode == 0, monitor_run.stderr
    assert [i["status"] for i in proj.doc()["issues"]] == ["completed", "completed"]
    [alert] = status()["alerts"]
    assert alert["kind"] == "git_config_changed" and "core.sshcommand = ssh -o ProxyCommand=evil" in alert["detail"]
    assert "ALERT git_config_changed" in monitor_run.stdout
    assert not (decoy / ".git" / "refs" / "orchestrator-rogue").exists() and git(decoy, "status", "--short") == ""


def test_a_fifo_planted_as_git_files_never_hangs_the_checks(make_repo, tmp_path):
    import os

    from orchestrator import alerts, worktrees
    from orchestrator.config import parse_config

    handle = make_repo("app")
    base = tmp_path / "worktrees"
    path = worktrees.ensure_worktree(handle.path, "main", base, base / "issue-1", "f-1")
    (path / ".git").unlink()
    os.mkfifo(path / ".git")
    assert alerts.current_branch(path) is None and alerts.put_back_on_branch(path, "f-1") is None
    cfg = parse_config(tmp_path / "p-issues.json", {"project": "p", "repo_path": str(handle.path),
                                                    "branch_prefix": "f-", "issues": [{"number": 1, "title": "t"}]})
    doc = alerts.current(tmp_path / "state", [cfg], 1000.0)
    reflog = handle.path / ".git" / "logs" / "refs" / "heads" / "f-1"
    reflog.unlink()
    os.mkfifo(reflog)
    _, found, _ = alerts.check(doc, [cfg], [], [], 1001.0, lambda _: None, lambda _: None)
    assert found == []
    config = handle.path / ".git" / "config"
    config.unlink()
    os.mkfifo(config)
    _, found, _ = alerts.check(doc, [cfg], [], [], 1002.0, lambda _: None, lambda _: None)
    assert [a["kind"] for a in found] == ["git_config_changed"] and "no longer reads" in found[0]["detail"]
