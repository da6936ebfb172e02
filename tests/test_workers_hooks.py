"""on_event: a command run with one event-log line on stdin, in the background (real tmux, git, processes)."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import process_running, require_tool
from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from lib.errors import ConfigError
from orchestrator import hooks, pauses
from orchestrator.config import load_config
from orchestrator.inputs import active_pauses
from orchestrator.monitor import monitor
from orchestrator.run import open_run


def _log_lines(proj) -> list[bytes]:
    return [line + b"\n" for line in (proj.state / "orchestrator-log.jsonl").read_bytes().splitlines()]


def _delivered(out: Path) -> list[tuple[str, bytes]]:
    return sorted((p.name.split("-")[0], p.read_bytes()) for p in out.glob("*.json"))


def test_completed_and_failed_each_run_the_hook_with_exactly_their_log_line_and_a_failing_hook_is_logged(
        project, tmp_path, monkeypatch):
    out = tmp_path / "hook-out"
    out.mkdir()
    monkeypatch.setenv("HOOK_OUT", str(out))
    proj = project([{"number": 1, "title": "ok"}, {"number": 2, "title": "fails"}], script={2: ["fail"]},
                   pipeline=["implement"], max_retries=0,
                   on_event='cat > "$HOOK_OUT/$ORCHESTRATOR_EVENT-$$.json"; echo notified; exit 3')

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 1

    delivered = _delivered(out)
    assert [kind for kind, _ in delivered] == ["completed", "failed"]
    lines = _log_lines(proj)
    for kind, line in delivered:
        assert line in lines and line.count(b"\n") == 1
        event = json.loads(line)["event"]
        assert (kind, event["action"]) in (("completed", "mark_complete"), ("failed", "skip"))
    failed = [e for e in proj.events() if e["action"] == "hook_failed"]
    assert len(failed) == 2 and all(e["error"].endswith(": exit 3") for e in failed)
    assert "notified" in (proj.state / "logs" / "hooks.log").read_text()


def test_pauses_resumes_and_alerts_whatever_made_them_reach_the_hook(project, tmp_path, monkeypatch):
    """A user pause, its resume and an alert line: one hook each; an event not listed in `events` runs none."""
    out = tmp_path / "hook-out"
    out.mkdir()
    monkeypatch.setenv("HOOK_OUT", str(out))
    proj = project([{"number": 1, "title": "one"}], on_event={
        "run": 'cat > "$HOOK_OUT/$ORCHESTRATOR_EVENT-$$.json"', "events": ["paused", "resumed", "alert"]})
    run = open_run()
    dispatcher = hooks.Dispatcher(run)
    now = time.time()
    dispatcher.cycle()
    pause_file = pauses.pause_file(run.state_root, "demo")

    pauses.add(pause_file, "user", "lunch", now, issue=1)
    run.files.log_event({"action": "alert", "project": "demo", "issue": 1, "kind": "git_config", "detail": "x"})
    run.files.log_event({"action": "mark_complete", "project": "demo", "issue": 1})
    pauses.journal_changes(run.files, active_pauses(run, now))  # as a cycle does, from decide's read
    dispatcher.cycle()
    pauses.clear(pause_file, issue=1)
    pauses.journal_changes(run.files, active_pauses(run, now))
    dispatcher.cycle()
    dispatcher.close()

    delivered = _delivered(out)
    assert [kind for kind, _ in delivered] == ["alert", "paused", "resumed"]
    events = {kind: json.loads(line)["event"] for kind, line in delivered}
    assert events["paused"] == {"action": "paused", "project": "demo", "issue": 1, "reason": "user"}
    assert events["resumed"] == {"action": "resumed", "project": "demo", "issue": 1, "reason": "user"}
    assert all(line in _log_lines(proj) for _, line in delivered)


def test_a_hook_that_hangs_never_holds_the_monitor_which_cycles_on_and_finishes_the_next_issue(
        project, tmp_path, monkeypatch):
    out = tmp_path / "hook-out"
    out.mkdir()
    monkeypatch.setenv("HOOK_OUT", str(out))
    proj = project([{"number": 1, "title": "first"}, {"number": 2, "title": "after", "depends_on": [1], "wave": 2}],
                   pipeline=["implement"], num_workers=1,
                   on_event={"run": 'echo $$ >> "$HOOK_OUT/pids"; exec sleep 3600', "timeout": 600,
                             "events": ["completed"]})
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(monitor(open_run(), cycle=0.2, no_delay=True,
                                                                   say=lambda _: None)))
    thread.start()
    try:
        first = int(retry_until(lambda: (out / "pids").exists() and (out / "pids").read_text().split(),
                                seconds=60)[0])
        # #2 is assigned, run and completed, cycle after cycle, while the hook of #1 hangs.
        retry_until(lambda: proj.issue(2).get("status") == "completed", seconds=60)
        assert process_running(first), "the hook of #1 should still hang"
        assert [e["new_issue"] for e in proj.events() if e["action"] == "reassign"] == [1, 2]
        retry_until(lambda: len((out / "pids").read_text().split()) == 2, seconds=60)  # #2's hook hangs too
    finally:
        for pid in (out / "pids").read_text().split() if (out / "pids").exists() else []:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        thread.join(timeout=120)
    assert not thread.is_alive() and result == [0]
    assert any(e["action"] == "hook_failed" and "SIGKILL" in e["error"] for e in proj.events())


def test_a_hung_hook_is_killed_at_its_timeout_with_what_it_started_and_that_is_logged(project, tmp_path,
                                                                                      monkeypatch):
    require_tool("setsid")
    out = tmp_path / "hook-out"
    out.mkdir()
    monkeypatch.setenv("HOOK_OUT", str(out))
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"],
                   on_event={"run": 'setsid sleep 3600 & echo $! > "$HOOK_OUT/child"; sleep 3600', "timeout": 2})

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    failed = [e for e in proj.events() if e["action"] == "hook_failed"]
    assert len(failed) == 1 and failed[0]["error"].endswith("timed out after 2s") and failed[0]["hook_event"] == \
        "completed"
    child = int((out / "child").read_text())
    retry_until(lambda: not process_running(child), seconds=30)


@pytest.mark.parametrize(("value", "expected"), [
    ("", "on_event: must be a non-empty shell command"),
    ({"run": "notify", "timeout": -1}, "on_event.timeout: must be a number of seconds > 0"),
    ({"run": "notify", "events": ["started"]}, "on_event.events: must list some of completed, failed"),
    ({"run": "notify", "when": "always"}, "on_event.when: unknown key"),
    (["notify"], "on_event: must be a command or an object"),
])
def test_a_bad_on_event_is_a_config_error(tmp_path, value, expected):
    config = tmp_path / "demo-issues.json"
    config.write_text(json.dumps({"repo_path": "/src/app", "branch_prefix": "f/", "on_event": value, "issues": []}))
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert any(expected in line for line in err.value.problems), err.value.problems


def test_a_giant_event_line_is_skipped_and_holds_up_none_after_it(project, tmp_path, monkeypatch):
    out = tmp_path / "hook-out"
    out.mkdir()
    monkeypatch.setenv("HOOK_OUT", str(out))
    proj = project([{"number": 1, "title": "one"}], on_event='cat > "$HOOK_OUT/$ORCHESTRATOR_EVENT-$$.json"')
    run = open_run()
    dispatcher = hooks.Dispatcher(run)
    dispatcher.cycle()

    run.files.log_event({"action": "alert", "project": "demo", "detail": "x" * (hooks.READ_AT_MOST + 10)})
    run.files.log_event({"action": "mark_complete", "project": "demo", "issue": 1})
    for _ in range(3):
        dispatcher.cycle()
    dispatcher.close()

    delivered = _delivered(out)
    assert [kind for kind, _ in delivered] == ["completed"]
    assert delivered[0][1] == _log_lines(proj)[-1]


def test_a_monitor_killed_outright_takes_its_hung_hooks_with_it(project, tmp_path):
    """kill -9 of the monitor: the runner's watchdog kills the hook it left (found by its step tag)."""
    import subprocess
    import sys

    from conftest import ROOT
    from workers_fixtures import monitor_env

    out = tmp_path / "hook-out"
    out.mkdir()
    project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1,
            on_event={"run": 'echo $$ > "$HOOK_OUT/pid"; exec sleep 3600', "timeout": 600})
    monitor_process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "monitor", "--cycle", "0.2", "--no-delay"],
        cwd=ROOT / "scripts" / "proof-workers", env=monitor_env({"HOOK_OUT": str(out)}),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        hook = int(retry_until(lambda: (out / "pid").exists() and (out / "pid").read_text().strip(), seconds=60))
        assert process_running(hook)
    finally:
        monitor_process.kill()
        monitor_process.wait()
    retry_until(lambda: not process_running(hook), seconds=30)


def test_a_restarted_monitor_delivers_what_was_logged_while_none_ran_and_a_first_one_replays_nothing(
        project, tmp_path, monkeypatch):
    out = tmp_path / "hook-out"
    out.mkdir()
    monkeypatch.setenv("HOOK_OUT", str(out))
    project([{"number": 1, "title": "one"}, {"number": 2, "title": "two"}],
            on_event='cat > "$HOOK_OUT/$ORCHESTRATOR_EVENT-$ORCHESTRATOR_PROJECT-$$.json"')
    run = open_run()
    run.files.log_event({"action": "skip", "project": "demo", "issue": 1, "reason": "an earlier run's"})
    first = hooks.Dispatcher(run)
    first.cycle()
    first.close()
    assert _delivered(out) == []

    run.files.log_event({"action": "mark_complete", "project": "demo", "issue": 2})  # no monitor runs
    second = hooks.Dispatcher(open_run())
    second.cycle()
    second.close()

    assert [json.loads(line)["event"]["issue"] for _, line in _delivered(out)] == [2]
