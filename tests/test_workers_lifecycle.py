"""One worker's lifecycle is one type's (orchestrator.worker.Worker): every transition checked, whole or not at all,
saved, journalled; no other module assigns a lifecycle field of a worker's record."""
from __future__ import annotations

import ast
import json
import re
import shutil
import socket
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


# RunFiles' writer of a record and its path: only orchestrator.worker (and state.py, which defines them) use them.
RECORD_STORE = frozenset({"save_worker", "worker_file"})
VARS_CHANGES = frozenset({"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__"})
# Modules that never hold a record (decide judges views of them): their own dataclasses may be replace()d.
PURE = frozenset({"decide.py", "queue.py"})
# Where records are changed today: a rule that scanned none of them proved nothing.
CHANGERS = frozenset({"act.py", "monitor.py", "probe.py", "pulls.py", "commands.py", "state.py"})


def _is_call_of(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name


def _set_name(call: ast.Call) -> ast.expr | None:
    """The name argument of setattr(x, NAME, v), object.__setattr__(x, NAME, v) or x.__setattr__(NAME, v)."""
    func = call.func
    if isinstance(func, ast.Name) and func.id == "setattr":
        index = 1
    elif isinstance(func, ast.Attribute) and func.attr == "__setattr__":
        index = 1 if isinstance(func.value, ast.Name) and func.value.id == "object" else 0
    else:
        return None
    args = call.args
    if any(isinstance(a, ast.Starred) for a in args[:index + 1]) or len(args) <= index:
        return ast.Name("*")  # a name we cannot read: counted as any
    return args[index]


def lifecycle_writes(source: str, *, store: bool = False, pure: bool = False) -> list[str]:
    """Each place that changes a lifecycle field of a worker's record: an assignment or deletion (`x.try_id =`,
    `+=`, a tuple, list, starred, `for` or `with ... as` target), setattr / __setattr__ naming one or a name
    computed at run time, `vars(x)[...] =` and vars(x).update, a `__dict__`, `.reset`, `replace(x, try_id=...)`
    (not in a `pure` module), a free record written whole (`Worker(WorkerRecord(...))`), and any use of
    RunFiles' save_worker / worker_file but in the record's `store` (a record is saved by its Worker)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.comprehension)):
            targets = [node.target]
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            targets = [node.optional_vars]
        while targets:
            target = targets.pop()
            if isinstance(target, (ast.Tuple, ast.List)):
                targets.extend(target.elts)
            elif isinstance(target, ast.Starred):
                targets.append(target.value)
            elif isinstance(target, ast.Attribute) and target.attr in LIFECYCLE_FIELDS:
                found.append(f"line {target.lineno}: .{target.attr} =")
            elif isinstance(target, ast.Subscript) and _is_call_of(target.value, "vars"):
                found.append(f"line {target.lineno}: vars(...)[...] =")
        if isinstance(node, ast.Call) and (name := _set_name(node)) is not None:
            if not isinstance(name, ast.Constant):
                found.append(f"line {node.lineno}: setattr with a computed name")
            elif name.value in LIFECYCLE_FIELDS:
                found.append(f"line {node.lineno}: setattr(..., {name.value!r})")
        if isinstance(node, ast.Call) and not pure and (
                _is_call_of(node, "replace") or isinstance(node.func, ast.Attribute) and node.func.attr == "replace"
                and isinstance(node.func.value, ast.Name) and node.func.value.id in ("dataclasses", "copy")) and \
                (changed := sorted({k.arg or "**" for k in node.keywords} & (LIFECYCLE_FIELDS | {"**"}))):
            found.append(f"line {node.lineno}: replace(..., {', '.join(changed)})")
        if isinstance(node, ast.Call) and _is_call_of(node, "Worker") and node.args and \
                _is_call_of(node.args[0], "WorkerRecord"):
            found.append(f"line {node.lineno}: Worker(WorkerRecord(...))")
        if isinstance(node, ast.Attribute) and _is_call_of(node.value, "vars") and node.attr in VARS_CHANGES:
            found.append(f"line {node.lineno}: vars(...).{node.attr}")
        if isinstance(node, ast.Attribute) and node.attr == "__dict__":
            found.append(f"line {node.lineno}: __dict__")
        if isinstance(node, ast.Attribute) and node.attr == "reset":
            found.append(f"line {node.lineno}: .reset")
        if isinstance(node, ast.Attribute) and node.attr in RECORD_STORE and not store:
            found.append(f"line {node.lineno}: .{node.attr} (save through Worker)")
    return found


def test_no_module_but_worker_changes_a_lifecycle_field_of_a_worker_record():
    """act's handlers, the monitor's release and reconcile, the probe and the PR loop each set try_id, stage,
    launched, the counters... themselves: a half-done change could be saved by an error path."""
    sources = {path.name: path.read_text(encoding="utf-8") for path in sorted(PACKAGE.rglob("*.py"))
               if path.name != "worker.py"}
    assert CHANGERS <= set(sources), f"not scanned: {sorted(CHANGERS - set(sources))}"
    for name in PURE:
        assert not {"WorkerRecord", "orchestrator.state", "orchestrator.worker"} & \
            set(re.findall(r"[\w.]+", sources[name])), f"{name} is no longer pure"
    offenders = {name: lifecycle_writes(source, store=name == "state.py", pure=name in PURE)
                 for name, source in sources.items()}
    assert {name: lines for name, lines in offenders.items() if lines} == {}


@pytest.mark.parametrize("source", [
    "record.try_id += 1", "r.stage, r.stage_base = a, b", "setattr(r, 'launched', True)", "r.__dict__.update({})",
    "record.reset()", "object.__setattr__(record, 'try_id', 1)", "record.__setattr__('launched', True)",
    "vars(record)['stage'] = 'review'", "vars(record).update(stage='review')",
    "for record.retry_count in range(3): pass", "[0 for r.try_id in range(3)]",
    "with open(p) as record.stage: pass", "a, *r.stage = x", "del record.launched",
    "name = 'issue_number'\nsetattr(record, name, None)", "setattr(*args)",
    "record = dataclasses.replace(record, try_id=0)", "record = replace(record, **changes)",
    "files.save_worker(WorkerRecord(record.worker_id))  # a reset, written whole",
    "write_json(files.worker_file(1), {**asdict(record), 'launched': False})",
    "polled = pulls.poll(root, cfg_of, records, now, run.files.save_worker, say)",
    "Worker(WorkerRecord(record.worker_id, try_id=record.try_id), files).save()",
])
def test_the_rule_reports_each_way_of_changing_a_lifecycle_field(source):
    assert lifecycle_writes(source) != [], source


@pytest.mark.parametrize("source, pure, store", [
    ("record.pr['merging'] = True\nrecord.agent = {}\nx = record.try_id\nWorker(record, files).save()", False, False),
    ("object.__setattr__(self, 'kind', action_kind(self.kind))", True, False),
    ("views = tuple(replace(i, status='pending') for i in issues)", True, False),
    ("text = line.replace('a', 'b')\nwhen = stamp.replace(tzinfo=timezone.utc)", False, False),
    ("write_json(self.worker_file(record.worker_id), asdict(record))", False, True),
])
def test_the_rule_leaves_observations_reads_and_other_dataclasses_alone(source, pure, store):
    assert lifecycle_writes(source, pure=pure, store=store) == []


def test_every_field_is_classified():
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

    real_cycle, count = getattr(monitor_module.run_cycle, "real", monitor_module.run_cycle), [0]

    def bounded_cycle(run, number, say):
        if over() or count[0] >= cycles:
            raise CyclesOver()
        count[0] += 1
        return real_cycle(run, number, say)

    bounded_cycle.real = real_cycle  # type: ignore[attr-defined]  # a second monitor bounds the real one
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


class Killed(BaseException):
    """kill -9 at the record's save: nothing after it runs."""


@pytest.mark.parametrize("name, transition, journalled", [
    ("restart", lambda w: w.restart(counted=True, nudge=False, reason="exit 1", continuation=False, session=None,
                                    now=2.0), False),
    ("hold", lambda w: w.hold(reason="rate_limit", rate_limited=True, until=None, now=2.0), False),
    ("advance_stage", lambda w: w.advance_stage(pipeline=["implement", "review"], stage_base="def", now=2.0), False),
    ("enter_pr_stage", lambda w: w.enter_pr_stage(kind="fix_ci", stage_base="def", reason="red", now=2.0), False),
    ("push_failed", lambda w: w.push_failed("no route", True), False),
    ("complete", lambda w: w.complete(), True),
    ("fail", lambda w: w.fail("exit 1; retries exhausted"), True),
    ("release", lambda w: w.release("completed"), True),
])
def test_a_kill_at_the_save_never_leaves_a_line_the_record_lacks_nor_loses_a_let_go(tmp_path, monkeypatch, name,
                                                                                    transition, journalled):
    """Taking or moving an issue is told by the record: saved, then journalled (a kill between loses the line,
    never writes one the record lacks). Letting it go follows the config, written first: journalled, then saved
    (a kill between leaves a record holding a finished issue, which the next monitor releases again: one line
    more, never one missing). Before, release was saved first: a kill between lost its line for good."""
    worker, files = assigned(tmp_path)
    on_disk, lines = files.worker_file(1).read_bytes(), len(read_lines(files.events))

    def killed(record):
        raise Killed()

    monkeypatch.setattr(files, "save_worker", killed)
    with pytest.raises(Killed):
        transition(worker)
    assert files.worker_file(1).read_bytes() == on_disk
    assert [e["event"]["action"] for e in read_lines(files.events)[lines:]] == \
        ([{"complete": "mark_complete", "fail": "skip"}.get(name, name)] if journalled else [])


def test_a_restart_is_saved_then_journalled_before_its_worktree_is_restored(project, monkeypatch):
    """The restart line tells the ended try counted and the next one prepared, once the record says so and
    before anything can fail: restoring the worktree (a fetch, a set-up) comes after it, and a set-up failing
    there adds its own skip line."""
    from orchestrator.act import Executor
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj = project([{"number": 1, "title": "one"}], script={1: ["fail", "ok"]}, pipeline=["implement"],
                   num_workers=1)
    files = open_run().files
    seen: list[tuple[str, dict]] = []
    real_restore = Executor._restore_worktree

    def restore(self, action, record):
        if action.kind == "restart":
            seen.append((proj.events()[-1]["action"], asdict(files.load_worker(1))))
        return real_restore(self, action, record)

    monkeypatch.setattr(Executor, "_restore_worktree", restore)
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    [(last, saved)] = seen
    assert last == "restart" and (saved["try_id"], saved["retry_count"], saved["launched"]) == (2, 1, False)


def test_a_pr_watch_the_pipeline_no_longer_allows_changes_neither_the_pr_nor_pull_requests_json(project):
    """The pipeline was cut to one stage while a fix_ci stage of stage 2 ran: going back to watching is
    illegal. Before, the PR loop's part ran first (the record's pr watching again, pull-requests.json written)
    and the error path saved that half: checked first, then changed."""
    from orchestrator import pulls
    from orchestrator.act import Executor
    from orchestrator.decide import Action, ActionKind
    from orchestrator.queue import IssueRef
    from orchestrator.run import open_run

    proj = project([{"number": 1, "title": "one"}], pipeline=["implement", "review"], num_workers=1)
    run = open_run()
    record = WorkerRecord(1)
    Worker(record, run.files).assign(project="demo", issue=1, branch="feature/issue-1",
                                     worktree=str(proj.root / "worktrees" / "issue-1"), push_url=None,
                                     pipeline=["implement", "review"], stage_index=1, stage_base=None, resumed=None,
                                     base=None, now=1.0)
    Worker(record, run.files).enter_pr_stage(kind="fix_ci", stage_base=None, reason="checks failed", now=2.0)
    Worker(record, run.files).started("srv:%1", 3.0)  # the fix ran and was pushed
    record.pr = {"number": 7, "url": "https://forge/pr/7", "watching": False, "in_stage": True, "ci_fixes": 1}
    Worker(record, run.files).save()
    doc = proj.doc()
    doc["pipeline"] = ["implement"]
    proj.config.write_text(json.dumps(doc))
    run.reload()
    before = saved(run.files, 1)

    Executor(run, {1: record}, lambda _: None).execute([Action(ActionKind.WATCH_PR, 1, IssueRef("demo", 1), "fix")])
    error = proj.events()[-1]
    assert error["action"] == "error" and "has no stage 1" in error["error"]
    assert {k: v for k, v in saved(run.files, 1).items() if k != "last_reason"} == \
        {k: v for k, v in before.items() if k != "last_reason"}
    assert not pulls.prs_file(run.state_root, "demo").exists()


def test_the_pr_loops_part_of_a_transition_runs_once_it_is_legal_and_is_undone_when_it_fails(tmp_path):
    worker, files = assigned(tmp_path)
    worker.record.pr = {"number": 7, "watching": True}
    on_disk, record = files.worker_file(1).read_bytes(), asdict(worker.record)
    ran: list[str] = []

    def part() -> None:
        ran.append("pr")
        worker.record.pr.update(watching=False, in_stage=True)
        raise OrchestratorError("pull-requests.json: cannot write")

    with pytest.raises(IllegalTransition):
        worker.enter_pr_stage(kind="deploy", stage_base=None, reason="r", now=1.0, pr_part=part)
    assert ran == []
    with pytest.raises(OrchestratorError, match="cannot write"):
        worker.enter_pr_stage(kind="fix_ci", stage_base=None, reason="r", now=1.0, pr_part=part)
    assert ran == ["pr"] and asdict(worker.record) == record and files.worker_file(1).read_bytes() == on_disk


def test_a_pr_stage_that_cannot_begin_for_the_network_waits_for_it_and_counts_no_attempt(project, fake_forge,
                                                                                          monkeypatch):
    """origin cannot be reached while the watched PR's worktree is brought back (its fetch): an error at every
    due poll, never counted, as a new issue waits for the network; once it is back the fix goes on."""
    from conftest import git
    from orchestrator import worktrees

    proj = project([{"number": 1, "title": "Add feature"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": "auto", "poll_seconds": 0.2})
    fake_forge(proj.remote, [{**CHECKS_FAIL, "pending_polls": 1}, CHECKS_PASS])
    worktree = proj.root / "worktrees" / "issue-1"

    with socket.socket() as closed:  # a port nobody listens on: connection refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]

    def vanish_offline() -> None:
        shutil.rmtree(worktree)
        git(proj.repo, "remote", "set-url", "origin", f"http://127.0.0.1:{port}/app.git")

    open_then(monkeypatch, vanish_offline)

    def errors() -> list[dict]:
        return [e for e in proj.events() if e["action"] == "error" and e.get("during") == "fix_ci"]

    monitor_until(monkeypatch, lambda: len(errors()) >= 4 or proj.issue(1).get("status") == "failed")
    assert proj.issue(1)["status"] == "in_progress" and len(errors()) >= 4, proj.events()[-3:]
    assert worktrees.is_network_error(errors()[-1]["error"])
    git(proj.repo, "remote", "set-url", "origin", str(proj.remote))
    monitor_until(monkeypatch, lambda: proj.issue(1).get("status") in ("completed", "failed"))
    assert proj.issue(1)["status"] == "completed" and worktree.is_dir()
