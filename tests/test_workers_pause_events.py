"""The event log says when a pause reason starts and stops holding (`paused` / `resumed` lines), with or without
an on_event hook: written from the pauses a cycle read for decide (one read), once per change, across monitors.

Real tmux on a private socket, real git, the fake agent of workers_fixtures; the verbs run as a user runs them.
"""
from __future__ import annotations

import json
import time

from workers_fixtures import orchestrator_cli as cli, project, tmux_socket  # noqa: F401

from orchestrator import pauses
from orchestrator.monitor import monitor
from orchestrator.run import open_run


def pause_lines(proj) -> list[tuple[str, int | None, str]]:
    return [(e["action"], e.get("issue"), e.get("reason")) for e in proj.events()
            if e["action"] in ("paused", "resumed")]


def one_cycle() -> None:
    monitor(open_run(), cycle=0.2, once=True, no_delay=True, say=lambda _: None)


def test_pause_and_resume_are_in_the_event_log_with_no_hook_configured_each_once(project):
    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "two"}], pipeline=["implement"],
                   num_workers=1)
    assert "on_event" not in proj.doc()
    paused = cli("pause", "2", "--detail", "lunch")  # no monitor runs: the verb applies it itself
    assert paused.returncode == 0, paused.stderr
    assert pause_lines(proj) == [("paused", 2, "user")]
    one_cycle()
    one_cycle()  # another monitor: the change is not said again
    assert pause_lines(proj) == [("paused", 2, "user")]
    assert cli("resume", "2").returncode == 0
    assert pause_lines(proj) == [("paused", 2, "user"), ("resumed", 2, "user")]
    one_cycle()
    assert pause_lines(proj) == [("paused", 2, "user"), ("resumed", 2, "user")]


def test_a_pause_that_lapses_by_itself_is_said_resumed_by_the_cycle_that_reads_it_lapsed(project):
    """A rate limit's `until` passes with no writer at all: the cycle whose read no longer holds it says so."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    run = open_run()
    now = time.time()
    pauses.add(pauses.pause_file(run.state_root, "demo"), "rate_limit", "429", now, until=now + 3600)
    one_cycle()
    assert pause_lines(proj) == [("paused", None, "rate_limit")]
    doc = json.loads((proj.state / "paused.json").read_text())
    doc["project"][0]["until"] = pauses.stamp(now - 1)  # as if the hour had passed
    (proj.state / "paused.json").write_text(json.dumps(doc))
    one_cycle()
    assert pause_lines(proj) == [("paused", None, "rate_limit"), ("resumed", None, "rate_limit")]


def test_a_directory_or_garbage_where_the_journalled_pauses_are_kept_is_set_aside_and_the_change_still_said(project):
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    (proj.state / "pauses-journalled.json").mkdir(parents=True)
    (proj.state / "pauses-journalled.json" / "x").write_text("planted")
    assert cli("pause").returncode == 0
    one_cycle()
    assert pause_lines(proj) == [("paused", None, "user")]
    assert (proj.state / "pauses-journalled.json.corrupt" / "x").read_text() == "planted"
    (proj.state / "pauses-journalled.json").write_text("{not json")
    one_cycle()
    assert pause_lines(proj) == [("paused", None, "user")] * 2  # said again, once: never lost
    one_cycle()
    assert pause_lines(proj) == [("paused", None, "user")] * 2
