"""on_event hooks run through lib.runner: their output in logs/hooks.log capped at max_log_bytes (its head, a cut
mark, its tail, as a try's log), and nothing a hook started outlives it, whether it ends, times out or the monitor
stops it. Real processes, the Dispatcher as the monitor drives it."""
from __future__ import annotations

import time

from conftest import process_running, require_tool
from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from lib import logcut
from orchestrator import hooks
from orchestrator.run import open_run

CAP = 64 * 1024


def one_event_through_a_monitors_hooks() -> None:
    """What a monitor's hook dispatcher does with one event, from its start to its close."""
    run = open_run()
    dispatcher = hooks.Dispatcher(run)
    dispatcher.cycle()
    run.files.log_event({"action": "mark_complete", "project": "demo", "issue": 1})
    dispatcher.cycle()
    dispatcher.close()


def test_a_hook_printing_megabytes_leaves_a_log_within_max_log_bytes_with_its_head_and_tail(project):
    proj = project([{"number": 1, "title": "one"}], max_log_bytes=CAP,
                   on_event={"run": "echo FIRST-LINE; head -c 5000000 /dev/zero | tr '\\0' x; echo; echo LAST-LINE",
                             "timeout": 120})
    one_event_through_a_monitors_hooks()
    log = proj.state / "logs" / "hooks.log"
    data = log.read_bytes()
    assert len(data) <= CAP
    assert data.startswith(b"=== on_event completed (demo): echo FIRST-LINE") and b"\nFIRST-LINE\n" in data
    assert data.rstrip().endswith(b"LAST-LINE")
    assert logcut.CAPPED_MARK.search(data)
    assert not [e for e in proj.events() if e["action"] == "hook_failed"]


def test_a_second_monitor_keeps_the_same_log_within_the_cap(project):
    """The cap holds across monitors: the log a first one left is appended to, and cut, by the next."""
    proj = project([{"number": 1, "title": "one"}], max_log_bytes=CAP,
                   on_event={"run": "head -c 50000 /dev/zero | tr '\\0' y; echo", "timeout": 120})
    for _ in range(3):
        one_event_through_a_monitors_hooks()
    assert len((proj.state / "logs" / "hooks.log").read_bytes()) <= CAP


def test_a_stopped_monitor_kills_its_running_hook_and_what_the_hook_started_outside_its_group(project, tmp_path,
                                                                                             monkeypatch):
    require_tool("setsid")
    out = tmp_path / "hook-out"
    out.mkdir()
    monkeypatch.setenv("HOOK_OUT", str(out))
    proj = project([{"number": 1, "title": "one"}], on_event={
        "run": 'setsid sleep 3600 & echo $! > "$HOOK_OUT/child"; echo $$ > "$HOOK_OUT/pid"; read line; '
               'echo "got: $line"; exec sleep 3600', "timeout": 600})
    run = open_run()
    dispatcher = hooks.Dispatcher(run)
    dispatcher.cycle()
    run.files.log_event({"action": "mark_complete", "project": "demo", "issue": 1})
    dispatcher.cycle()
    pid = int(retry_until(lambda: (out / "pid").exists() and (out / "pid").read_text().strip(), seconds=60))
    child = int(retry_until(lambda: (out / "child").exists() and (out / "child").read_text().strip(), seconds=60))
    retry_until(lambda: b"got: {" in (proj.state / "logs" / "hooks.log").read_bytes(), seconds=60)
    started = time.monotonic()
    dispatcher.close(kill=True)
    assert time.monotonic() - started < 300  # returned at all: the hook's 600 s timeout was not waited for
    retry_until(lambda: not process_running(pid) and not process_running(child), seconds=60)


def test_a_stop_with_hooks_running_and_waiting_kills_those_running_and_starts_none_of_the_others(
        project, tmp_path, monkeypatch):
    out = tmp_path / "hook-out"
    out.mkdir()
    monkeypatch.setenv("HOOK_OUT", str(out))
    project([{"number": n, "title": f"#{n}"} for n in range(1, 7)],
            on_event={"run": 'echo $$ >> "$HOOK_OUT/pids"; exec sleep 3600', "timeout": 600})
    run = open_run()
    dispatcher = hooks.Dispatcher(run)
    dispatcher.cycle()
    for number in range(1, 7):
        run.files.log_event({"action": "mark_complete", "project": "demo", "issue": number})
    dispatcher.cycle()
    pids = out / "pids"
    retry_until(lambda: pids.exists() and len(pids.read_text().split()) == hooks.MAX_RUNNING, seconds=60)
    dispatcher.close(kill=True)
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == hooks.MAX_RUNNING
    retry_until(lambda: not any(process_running(p) for p in started), seconds=60)
    assert list((run.files.root / "hooks").glob("*.line")) == []


def test_the_event_lines_a_killed_monitor_left_for_its_hooks_are_removed_by_the_next_one(project):
    proj = project([{"number": 1, "title": "one"}], on_event="true")
    feeds = proj.state / "hooks"
    feeds.mkdir(parents=True)
    (feeds / "0123.line").write_bytes(b'{"event": {}}\n')
    (feeds / "planted.line").mkdir()  # not ours to remove, and no reason to stop a monitor
    hooks.Dispatcher(open_run()).close()
    assert sorted(p.name for p in feeds.iterdir()) == ["planted.line"]
