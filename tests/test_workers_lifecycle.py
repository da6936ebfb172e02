"""One worker's lifecycle is one type's (orchestrator.worker.Worker): every transition checked, whole or not at all,
saved, journalled; no other module assigns a lifecycle field of a worker's record."""
from __future__ import annotations

import ast
import json
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import pytest
from forge_fakes import fake_forge  # noqa: F401
from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from conftest import ROOT
from lib.errors import OrchestratorError
from orchestrator.state import RunFiles, WorkerRecord, read_lines
from orchestrator.worker import LIFECYCLE_FIELDS, OBSERVATIONS, IllegalTransition, Worker

PACKAGE = ROOT / "scripts" / "proof-workers" / "orchestrator"


def lifecycle_writes(source: str) -> list[str]:
    """Each place that assigns a lifecycle field (`x.try_id = ...`, `x.retry_count += 1`, a tuple target,
    setattr with its name) or replaces a record's fields wholesale (`__dict__`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        while targets:
            target = targets.pop()
            if isinstance(target, (ast.Tuple, ast.List)):
                targets.extend(target.elts)
            elif isinstance(target, ast.Attribute) and target.attr in LIFECYCLE_FIELDS:
                found.append(f"line {target.lineno}: .{target.attr} =")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" and \
                len(node.args) > 1 and isinstance(name := node.args[1], ast.Constant) and \
                name.value in LIFECYCLE_FIELDS:
            found.append(f"line {node.lineno}: setattr(..., {name.value!r})")
        if isinstance(node, ast.Attribute) and node.attr == "__dict__":
            found.append(f"line {node.lineno}: __dict__")
        if isinstance(node, ast.Attribute) and node.attr == "reset":
            found.append(f"line {node.lineno}: .reset")
    return found


def test_no_module_but_worker_assigns_a_lifecycle_field_of_a_worker_record():
    """act's handlers, the monitor's release and reconcile, the probe and the PR loop each set try_id, stage,
    launched, the counters... themselves: a half-done change could be saved by an error path."""
    offenders = {path.name: lifecycle_writes(path.read_text(encoding="utf-8"))
                 for path in sorted(PACKAGE.glob("*.py")) if path.name != "worker.py"}
    assert {name: lines for name, lines in offenders.items() if lines} == {}


def test_the_rule_catches_each_way_of_writing_a_field_and_every_field_is_classified():
    assert sorted(lifecycle_writes("record.try_id += 1\nr.stage, r.stage_base = a, b\nsetattr(r, 'launched', True)\n"
                                   "r.__dict__.update({})\nrecord.reset()\n")) == [
        "line 1: .try_id =", "line 2: .stage =", "line 2: .stage_base =", "line 3: setattr(..., 'launched')",
        "line 4: __dict__", "line 5: .reset"]
    assert lifecycle_writes("record.pr['merging'] = True\nrecord.agent = {}\nx = record.try_id\n") == []
    # A field added to WorkerRecord is a lifecycle field unless it is named an observation on purpose.
    assert LIFECYCLE_FIELDS | OBSERVATIONS | {"worker_id"} == {f.name for f in fields(WorkerRecord)}
    assert {"try_id", "issue_number", "stage", "stage_index", "launched", "retry_count", "status"} <= LIFECYCLE_FIELDS


def saved(files: RunFiles, worker: int) -> dict:
    return json.loads(files.worker_file(worker).read_text())


def assigned(tmp_path: Path) -> tuple[Worker, RunFiles]:
    files = RunFiles(tmp_path / "state")
    worker = Worker(WorkerRecord(1, try_id=4), files)
    worker.assign(project="demo", issue=7, branch="feature/issue-7", worktree=str(tmp_path / "wt"), push_url="u",
                  pipeline=["implement", "review"], stage_index=0, stage_base="abc", resumed=None, base=None,
                  now=100.0)
    return worker, files


def test_a_worker_through_its_life_is_saved_and_journalled_at_each_transition(tmp_path):
    worker, files = assigned(tmp_path)
    record = worker.record
    assert saved(files, 1) == asdict(record)
    assert (record.status, record.issue_number, record.stage, record.try_id, record.launched) == \
        ("running", 7, "implement", 5, False)
    worker.prepare_try({"kind": "claude"})
    worker.started("srv:%1", 101.0)
    assert saved(files, 1)["launched"] and saved(files, 1)["pane"] == "srv:%1"
    worker.restart(counted=True, nudge=False, reason="exit 1", continuation=True, session=None, now=102.0)
    worker.started("srv:%1", 103.0)
    worker.advance_stage(pipeline=["implement", "review"], stage_base="def", now=104.0)
    assert (record.stage_index, record.stage, record.retry_count, record.try_id, record.launched) == \
        (1, "review", 0, 7, False)
    worker.complete()
    assert saved(files, 1) == asdict(WorkerRecord(1, try_id=7))  # free again; the try counter never goes back
    assert [e["event"] for e in read_lines(files.events)] == [
        {"action": "reassign", "worker": 1, "new_issue": 7, "project": "demo", "branch": "feature/issue-7",
         "resumed": None, "base": None},
        {"action": "restart", "worker": 1, "issue": 7, "retry_count": 1, "counted": True, "reason": "exit 1",
         "continuation": True, "session": None},
        {"action": "advance_stage", "worker": 1, "issue": 7, "stage": "review"},
        {"action": "mark_complete", "worker": 1, "issue": 7, "project": "demo"}]


def start(worker: Worker) -> None:
    worker.started("srv:%1", 1.0)


@pytest.mark.parametrize("name, before, transition", [
    ("a busy worker takes another issue", None, lambda w: w.assign(
        project="demo", issue=8, branch="b", worktree="w", push_url=None, pipeline=["implement"], stage_index=0,
        stage_base=None, resumed=None, base=None, now=1.0)),
    ("past the last stage", None, lambda w: w.advance_stage(pipeline=["implement"], stage_base="x", now=1.0)),
    ("a try started twice", start, lambda w: w.started("srv:%2", 2.0)),
    ("a started try prepared again", start, lambda w: w.prepare_try({})),
    ("a PR stage that is none", None, lambda w: w.enter_pr_stage(kind="deploy", stage_base=None, reason="r",
                                                                 now=1.0)),
    ("watching a stage the pipeline lost", None, lambda w: w.watch_pr([])),
])
def test_an_illegal_transition_is_one_line_and_changes_nothing(tmp_path, name, before, transition):
    worker, files = assigned(tmp_path)
    if before is not None:
        before(worker)
    record, on_disk, events = asdict(worker.record), files.worker_file(1).read_bytes(), files.events.read_bytes()
    with pytest.raises(IllegalTransition) as err:
        transition(worker)
    assert isinstance(err.value, OrchestratorError) and "\n" not in str(err.value)
    assert asdict(worker.record) == record and files.worker_file(1).read_bytes() == on_disk
    assert files.events.read_bytes() == events


@pytest.mark.parametrize("transition", [
    lambda w: w.restart(counted=True, nudge=False, reason="r", continuation=False, session=None, now=1.0),
    lambda w: w.hold(reason="rate_limit", rate_limited=True, until=None, now=1.0),
    lambda w: w.advance_stage(pipeline=["a", "b"], stage_base=None, now=1.0),
    lambda w: w.push_failed("no route", True), lambda w: w.complete(), lambda w: w.fail("x"),
    lambda w: w.release("gone"), lambda w: w.free(), lambda w: w.prepare_try({}), lambda w: w.started("p", 1.0)])
def test_a_free_worker_has_no_try_to_restart_no_stage_to_advance_and_nothing_to_release(tmp_path, transition):
    files = RunFiles(tmp_path / "state")
    worker = Worker(WorkerRecord(1, try_id=3), files)
    with pytest.raises(IllegalTransition, match="^worker 1 holds no issue: it cannot "):
        transition(worker)
    assert worker.record == WorkerRecord(1, try_id=3) and not files.worker_file(1).exists()


def test_a_worktree_gone_during_the_push_leaves_the_stage_whole_and_the_issue_still_completes(project, monkeypatch):
    """The push succeeded, then the next stage's base could not be read (the worktree vanished under the monitor).
    Before: the error path saved a half-advanced record (the next stage, the old try, the old stage's counts)
    that disagreed with the config's pipeline_stage. Now the advance happens whole or not at all."""
    from orchestrator import worktrees
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = project([{"number": 1, "title": "two stages"}], pipeline=["implement", "review"], num_workers=1)
    real_push = worktrees.push_pinned
    vanished: list[str] = []

    def push_then_vanish(repo, branch, url, settings):
        answer = real_push(repo, branch, url, settings)
        if not vanished:
            vanished.append(str(proj.root / "worktrees" / "issue-1"))
            shutil.rmtree(vanished[0])
        return answer

    monkeypatch.setattr(worktrees, "push_pinned", push_then_vanish)
    files = open_run().files

    def cycle_until_pushed() -> bool:
        monitor(open_run(), once=True, no_delay=True, say=lambda _: None)
        return any(e["action"] == "push" for e in proj.events())

    retry_until(cycle_until_pushed, seconds=90, interval=0.1)
    record = files.load_worker(1)
    assert (record.stage_index, record.stage, proj.issue(1).get("pipeline_stage", 0)) == (0, "implement", 0)
    assert record.try_id == 1 and record.launched and "does not exist" in record.last_reason
    assert [e for e in proj.events() if e["action"] == "error"][0]["during"] == "advance_stage"

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert proj.issue(1)["status"] == "completed"
    assert proj.remote_commits("feature/issue-1") == ["review #1", "implement #1"]


CHECKS_FAIL = {"checks": [{"name": "build", "bucket": "pass"}, {"name": "tests", "bucket": "fail"}],
               "log": "FAILED test_app.py::test_add - assert 3 == 4"}
CHECKS_PASS = {"checks": [{"name": "build", "bucket": "pass"}, {"name": "tests", "bucket": "pass"}]}


class CyclesOver(Exception):
    pass


def monitor_until(monkeypatch, over, cycles: int = 120) -> int:
    """One monitor, stopped once `over()` holds or after `cycles` cycles (a loop that never ends shows as the
    count); returns the cycles run."""
    from orchestrator import monitor as monitor_module
    from orchestrator.run import open_run

    real_cycle, count = monitor_module.run_cycle, [0]

    def bounded_cycle(run, number, say):
        if over() or count[0] >= cycles:
            raise CyclesOver()
        count[0] += 1
        return real_cycle(run, number, say)

    monkeypatch.setattr(monitor_module, "run_cycle", bounded_cycle)
    try:
        monitor_module.monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None)
    except CyclesOver:
        pass
    return count[0]


def open_then(monkeypatch, change) -> None:
    """Once the PR is opened (and watched, no try running), `change()` happens to the issue's worktree."""
    from orchestrator import pulls

    real_open = pulls.open_pr

    def open_and_change(*args, **kwargs):
        answer = real_open(*args, **kwargs)
        change()
        return answer

    monkeypatch.setattr(pulls, "open_pr", open_and_change)


def test_a_watched_pr_whose_worktree_vanished_is_fixed_within_one_monitor(project, fake_forge, monkeypatch):
    """The worktree removed while the PR is watched (no try runs to notice): its fix_ci stage brings it back
    from the branch first, as any try does. Before: branch_head failed first, the same fix_ci failed at every
    poll and nothing ever restored the worktree."""
    proj = project([{"number": 1, "title": "Add feature"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake_forge(proj.remote, [{**CHECKS_FAIL, "pending_polls": 1}, CHECKS_PASS])
    worktree = proj.root / "worktrees" / "issue-1"
    open_then(monkeypatch, lambda: shutil.rmtree(worktree))
    monitor_until(monkeypatch, lambda: proj.issue(1).get("status") in ("completed", "failed"))
    assert proj.issue(1).get("status") == "completed", [e for e in proj.events() if e["action"] == "error"][:1]
    assert [e for e in proj.events() if e["action"] == "error"] == []
    assert [e["action"] for e in proj.events() if e["action"] in ("fix_ci", "pr_watch", "pr_merged")] == \
        ["fix_ci", "pr_watch", "pr_merged"]
    from conftest import git

    assert worktree.is_dir() and git(proj.remote, "log", "-1", "--format=%s", "main") == "fix_ci #1"


def test_a_pr_stage_that_cannot_begin_fails_the_issue_after_max_retries_never_each_poll_forever(
        project, fake_forge, monkeypatch):
    """A file where the worktree was (nothing of ours may replace it): each fix_ci fails to begin; the
    max_retries-th fails the issue with the reason, and the file is left as it was."""
    proj = project([{"number": 1, "title": "Add feature"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake_forge(proj.remote, [CHECKS_FAIL] * 50)
    worktree = proj.root / "worktrees" / "issue-1"

    def replace_by_a_file() -> None:
        shutil.rmtree(worktree)
        worktree.write_text("a user's notes\n")

    open_then(monkeypatch, replace_by_a_file)
    monitor_until(monkeypatch, lambda: proj.issue(1).get("status") in ("completed", "failed"))
    assert proj.issue(1)["status"] == "failed"
    errors = [e for e in proj.events() if e["action"] == "error"]
    assert [e["during"] for e in errors] == ["fix_ci"]  # max_retries 2: one error, then the issue fails
    skip = next(e for e in proj.events() if e["action"] == "skip")
    assert skip["reason"].startswith("fix_ci could not begin (2 attempts): ") and "move it away" in skip["reason"]
    assert worktree.read_text() == "a user's notes\n"


def test_a_record_naming_an_issue_but_no_project_is_freed_and_never_stops_the_monitor(project, monkeypatch):
    """A record edited by hand (or cut) names an issue but no project. Beyond --workers, reconcile frees any
    record naming an issue: free() refused it (holding needs a project too), so the monitor could not start.
    Within --workers, nothing let it go: the monitor waited for it forever once every issue was done."""
    proj = project([{"number": 1, "title": "one", "status": "completed"},
                    {"number": 2, "title": "two", "status": "completed"}], pipeline=["implement"], num_workers=1)
    workers = proj.state / "workers"
    workers.mkdir(parents=True, exist_ok=True)
    for worker, issue in ((1, 2), (2, 1)):
        (workers / f"worker-{worker}.json").write_text(json.dumps({"worker_id": worker, "issue_number": issue,
                                                                   "project": None, "try_id": 3}))
    cycles = monitor_until(monkeypatch, lambda: False, cycles=60)
    assert cycles < 60  # it ended by itself: nothing left to run
    for worker in (1, 2):
        record = json.loads((workers / f"worker-{worker}.json").read_text())
        assert record["issue_number"] is None and record["try_id"] >= 3, record
