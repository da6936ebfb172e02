"""A remote that never answers (a hung ssh, a credential helper waiting forever) never stalls the monitor's cycle
past its budget, leaves no process behind, and is never taken as an answer: the check says it could not check
and is made again. Also the default branch's checks on the paths the PR loop rarely takes (the remote down when
our merge is seen; a git without `merge-tree --write-tree`).

Real git, a real fake ssh (GIT_SSH_COMMAND in this test's environment only) that sleeps forever and forks
children that keep its pipes open, one of them in a session of its own.
"""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from conftest import git, process_running
from workers_fixtures import retry_until

from lib.statefile import write_json
from orchestrator import alerts, pins, pulls, worktrees
from orchestrator.config import parse_config
from orchestrator.decide import Snapshot
from orchestrator.forge import ForgeError, Observation
from orchestrator.state import WorkerRecord

HANG_URL = "ssh://git@hang.invalid/app.git"
GENEROUS_S = 100.0  # far past any budget here (3 s); only a hang (the old behaviour) reaches it


@pytest.fixture
def hanging_ssh(tmp_path, monkeypatch):
    """GIT_SSH_COMMAND for this test: an ssh that never answers, with a child in its group and one that left it
    (setsid), both holding its stdout. Returns the file where each run writes the pids it started."""
    pids = tmp_path / "ssh-pids"
    script = tmp_path / "hanging-ssh"
    script.write_text("#!/bin/sh\n"
                      f"sleep 3600 & echo $! >> '{pids}'\n"
                      f"setsid sleep 3600 & echo $! >> '{pids}'\n"
                      f"echo $$ >> '{pids}'\n"
                      "exec sleep 3600\n")
    script.chmod(0o755)
    monkeypatch.setenv("GIT_SSH_COMMAND", str(script))
    return pids


def _all_gone(pids: Path) -> bool:
    started = [int(p) for p in pids.read_text().split()] if pids.exists() else []
    return bool(started) and not any(process_running(p) for p in started)


def _within(limit: float, work):
    """Run `work` in a thread; its result, or a failure when it is still running after `limit` (a hang)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), "the check hung on a remote that never answers"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def _commit(work: Path, name: str) -> str:
    (work / name).write_text(f"{name}\n")
    git(work, "add", name)
    git(work, "commit", "-q", "-m", name)
    return git(work, "rev-parse", "HEAD")


def _setup(make_repo, tmp_path):
    handle = make_repo("app")
    cfg = parse_config(tmp_path / "p-issues.json", {
        "project": "p", "repo_path": str(handle.path), "branch_prefix": "f-", "default_branch": "main",
        "issues": [{"number": 1, "title": "a"}, {"number": 2, "title": "b"}]})
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(handle.remote), str(work))
    return handle, cfg, work


STAGE_ENDED = [Snapshot(2, 1, True, False, 0, 1, False, 0, 5)]


def _stage_ender() -> WorkerRecord:
    return WorkerRecord(2, status="running", project="p", issue_number=2, branch="f-2", try_id=1, stage="implement")


def test_a_default_branch_check_on_a_remote_that_never_answers_ends_in_its_budget_kills_all_and_checks_again(
        make_repo, tmp_path, monkeypatch, hanging_ssh):
    """A stage ends; its repository's watched remote hangs (ssh never answers, its children hold the pipes). The
    check ends once its budget is spent, every process the ssh started is gone, and nothing is judged: no alert,
    the snapshot keeps its head, a line says it could not check. The next cycle checks again (no stage end is
    needed; not every cycle, RECHECK_S later) and, the remote answering, a direct push made meanwhile is alerted: never a false "fine"."""
    monkeypatch.setattr(alerts, "REMOTE_BUDGET_S", 3.0)
    handle, cfg, work = _setup(make_repo, tmp_path)
    root = tmp_path / "state"
    doc = alerts.current(root, [cfg], 1000.0)
    snap = doc["repos"][str(handle.path)]
    old, real_url = snap["default_head"], snap["url"]
    snap["url"] = HANG_URL
    errors: list[str] = []
    _, found, _ = _within(GENEROUS_S, lambda: alerts.check(doc, [cfg], [_stage_ender()], STAGE_ENDED, 1010.0,
                                                           lambda r: 1005.0, errors.append))
    assert found == [] and snap["default_head"] == old
    assert len(errors) == 1 and "could not check, checked again in 60s" in errors[0], errors
    assert "timed out" in errors[0]
    assert snap["default_recheck"]
    retry_until(lambda: _all_gone(hanging_ssh), GENEROUS_S)

    _commit(work, "rogue.txt")
    git(work, "push", "-q", "origin", "main")
    snap["url"] = real_url
    errors.clear()
    _, found, _ = alerts.check(doc, [cfg], [_stage_ender()], STAGE_ENDED, 1020.0, lambda r: 1005.0, errors.append)
    assert (found, errors) == ([], []) and snap["default_recheck"]  # not every cycle: RECHECK_S later
    _, found, _ = alerts.check(doc, [cfg], [_stage_ender()], STAGE_ENDED, 1071.0, lambda r: 1005.0, errors.append)
    assert errors == []
    assert [a["kind"] for a in found] == ["default_branch_moved"]
    assert "default_recheck" not in snap


def test_the_default_branch_checks_of_many_repositories_share_one_budget_per_cycle(make_repo, tmp_path, monkeypatch,
                                                                                    hanging_ssh):
    """Stages end in two repositories whose remotes both hang: the cycle spends one budget in all, not one per
    repository. The first check is given up when it is spent; the second is not even started (no second line,
    no alert) and waits for the next cycle, which checks it first thing."""
    monkeypatch.setattr(alerts, "REMOTE_BUDGET_S", 3.0)
    configs, records = [], []
    for worker, name in ((2, "app"), (3, "lib")):
        handle = make_repo(name)
        configs.append(parse_config(tmp_path / f"{name}-issues.json", {
            "project": name, "repo_path": str(handle.path), "branch_prefix": "f-", "default_branch": "main",
            "issues": [{"number": 2, "title": "b"}]}))
        records.append(WorkerRecord(worker, status="running", project=name, issue_number=2, branch="f-2", try_id=1,
                                    stage="implement"))
    doc = alerts.current(tmp_path / "state", configs, 1000.0)
    for snap in doc["repos"].values():
        snap["url"] = HANG_URL
    errors: list[str] = []
    ended = [Snapshot(w, 1, True, False, 0, 1, False, 0, 5) for w in (2, 3)]
    _, found, _ = _within(GENEROUS_S, lambda: alerts.check(doc, configs, records, ended, 1010.0, lambda r: 1005.0,
                                                           errors.append))
    assert found == [] and len(errors) == 1 and "timed out" in errors[0], errors
    first, second = doc["repos"].values()
    assert first["default_recheck"] and first["recheck_at"] == 1070.0
    assert second["default_recheck"] and "recheck_at" not in second  # due at the very next cycle
    retry_until(lambda: _all_gone(hanging_ssh), GENEROUS_S)


def test_the_fetch_of_our_merges_on_a_remote_that_never_answers_is_could_not_check(make_repo, tmp_path, monkeypatch,
                                                                                   hanging_ssh):
    """Our merge is under way and main moved: the commits are fetched to tell whether all it gained is our merge.
    The fetch hangs: it is killed at the budget with what it started, and it is "could not check", neither an
    alert nor taken as ours."""
    monkeypatch.setattr(alerts, "REMOTE_BUDGET_S", 3.0)
    handle, cfg, work = _setup(make_repo, tmp_path)
    old = git(handle.remote, "rev-parse", "main")
    new = _commit(work, "moved.txt")
    git(work, "push", "-q", "origin", "main")
    with pytest.raises(worktrees.GitFailed, match="timed out"):
        _within(GENEROUS_S, lambda: alerts.merges_of_ours(handle.path, HANG_URL, "main", old, new,
                                                          frozenset({"1" * 40})))
    retry_until(lambda: _all_gone(hanging_ssh), GENEROUS_S)


def _pin(root: Path, cfg, url: str) -> None:
    write_json(pins.pins_file(root, cfg.project), {"repos": {name: {
        "url": url, "source": "origin", "pinned_at": "2031-01-01T00:00:00Z", "settings": {}}
        for name in cfg.repos}})


@pytest.mark.parametrize("state", ["merged", "open"])
def test_the_force_push_checks_fetch_on_a_remote_that_never_answers_ends_in_the_polls_budget_as_could_not_check(
        make_repo, tmp_path, hanging_ssh, state):
    """Someone else's head of our PR, a commit we do not have, is fetched from the pinned url to see whether it
    holds our last push. The url hangs: the fetch ends within what is left of the poll's budget, what it started
    is gone, and the poll fails to be tried again (merged: never taken as merged on the strength of a fetch that
    did not happen; open: never taken as the PR's head)."""
    handle, cfg, work = _setup(make_repo, tmp_path)
    root = tmp_path / "state"
    _pin(root, cfg, HANG_URL)
    ours = git(handle.path, "rev-parse", "HEAD")
    seen = Observation(7, "https://forge/pull/7", state, head="f" * 40)
    with pytest.raises(ForgeError, match="cannot tell whether PR #7's head .* timed out after 3s"):
        _within(GENEROUS_S, lambda: pulls._foreign_head_holds_ours(root, cfg, cfg.issues[0], seen, ours,
                                                                   3.0))
    retry_until(lambda: _all_gone(hanging_ssh), GENEROUS_S)


def test_a_merged_head_the_pinned_url_does_not_have_is_still_taken_as_before(make_repo, tmp_path):
    """The lasting case stays as it was: the url answers that it has no such commit (the branch of a squashed PR
    deleted): the merge is taken, not retried forever."""
    handle, cfg, _ = _setup(make_repo, tmp_path)
    root = tmp_path / "state"
    _pin(root, cfg, str(handle.remote))
    ours = git(handle.path, "rev-parse", "HEAD")
    seen = Observation(7, "https://forge/pull/7", "merged", head="f" * 40)
    assert pulls._foreign_head_holds_ours(root, cfg, cfg.issues[0], seen, ours, 20.0) is None


@pytest.mark.parametrize("then", ["our merge alone", "a direct push after our merge"])
def test_our_merge_seen_while_the_remote_cannot_be_read_is_remembered_and_judged_at_the_next_cycle(
        make_repo, tmp_path, then):
    """Our PR is seen merged while the watched remote cannot be read: no verdict then (no alert, the snapshot keeps
    its head), the merge is remembered under "landed" and a line says so. The next cycle checks again, with no
    stage end and no merging record left: our merge alone raises nothing and the snapshot is whole again; a
    direct push on top of it is alerted."""
    handle, cfg, work = _setup(make_repo, tmp_path)
    root = tmp_path / "state"
    doc = alerts.current(root, [cfg], 1000.0)
    key = str(handle.path)
    old, real_url = doc["repos"][key]["default_head"], doc["repos"][key]["url"]
    git(work, "switch", "-q", "-c", "f-1")
    head = _commit(work, "one.txt")
    git(work, "push", "-q", "origin", "f-1")
    handle.git("fetch", "-q", "origin", "f-1")
    git(work, "switch", "-q", "main")
    git(work, "merge", "-q", "--no-ff", "f-1", "-m", "Merge")
    if then != "our merge alone":
        _commit(work, "rogue.txt")
    git(work, "push", "-q", "origin", "main")
    doc["repos"][key]["url"] = str(tmp_path / "unreachable.git")
    write_json(alerts.run_file(root), doc)

    said: list[str] = []
    assert alerts.accept_default_head(root, cfg, cfg.issues[0], head, [], said.append) is None
    doc = alerts.load(root)
    snap = doc["repos"][key]
    assert doc["alerts"] == [] and snap["default_head"] == old and snap["landed"] == [head]
    assert len(said) == 1 and "could not check, checked again at the next cycle" in said[0], said

    snap["url"] = real_url
    errors: list[str] = []
    _, found, _ = alerts.check(doc, [cfg], [], [], 1010.0, lambda r: None, errors.append)
    assert errors == []
    assert [a["kind"] for a in found] == ([] if then == "our merge alone" else ["default_branch_moved"])
    assert "default_recheck" not in snap


def test_a_monitor_killed_outright_during_a_hung_remote_check_leaves_no_ssh_behind(tmp_path, hanging_ssh):
    """The monitor is SIGKILLed while its ls-remote waits on an ssh that never answers: the runner's watchdog kills
    the git, the ssh and the ssh's children (the one that left its group too); nothing is left holding on."""
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from orchestrator import worktrees\n"
            f"worktrees.remote_head({HANG_URL!r}, 'main', None, 3600.0)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root), str(root / "scripts" / "proof-workers")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        retry_until(lambda: hanging_ssh.exists() and len(hanging_ssh.read_text().split()) == 3, GENEROUS_S)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    retry_until(lambda: _all_gone(hanging_ssh), GENEROUS_S)
