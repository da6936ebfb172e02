"""Proof workers end to end: real tmux on a private socket, real git with a bare remote, a fake agent."""
from __future__ import annotations

import json

from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from orchestrator.decide import cycle_from_json, decide
from orchestrator.monitor import monitor
from orchestrator.run import open_run
from orchestrator.state import read_lines

TRICKY = "Fix \"quoted\" 'title'; rm -rf / $(touch pwned) `id`\nsecond line — ünïcødé ✓"


def test_two_waves_through_a_three_stage_pipeline_with_a_crash_and_a_hang(project):
    """#2 crashes once and is restarted with continuation context; #3 hangs until it is skipped at
    max_retries and its dependent #5 stays blocked; everything else completes, one commit per stage."""
    proj = project(
        [{"number": 1, "title": "first", "wave": 1, "priority": 1},
         {"number": 2, "title": "crashes once", "wave": 1, "priority": 2},
         {"number": 3, "title": "hangs", "wave": 1, "priority": 3},
         {"number": 4, "title": TRICKY, "wave": 2, "depends_on": [1], "description": "tricky; $(id)"},
         {"number": 5, "title": "after the hang", "wave": 2, "depends_on": [3]}],
        script={2: ["crash"], 3: ["hang", "hang", "hang"]}, num_workers=3)
    lines: list[str] = []
    run = open_run()

    failed = monitor(run, cycle=0.2, no_delay=True, say=lines.append)

    assert failed == 1
    statuses = {i["number"]: i.get("status", "pending") for i in proj.doc()["issues"]}
    assert statuses == {1: "completed", 2: "completed", 3: "failed", 4: "completed", 5: "pending"}
    assert proj.doc()["custom_key"] == {"kept": True}
    for number in (1, 2, 4):
        assert proj.remote_commits(f"feature/issue-{number}") == [
            f"review #{number}", f"write_tests #{number}", f"implement #{number}"]
    assert proj.issue(4)["title"] == TRICKY
    assert TRICKY in proj.prompts(4)[0]
    assert not (proj.root / "agent" / "pwned").exists()
    crash_retry = proj.prompts(2)[1]
    assert "Continue from an earlier try" in crash_retry and "exit code 137" in crash_retry
    events = proj.events()
    kinds = {e["action"] for e in events}
    assert {"reassign", "push", "advance_stage", "mark_complete", "restart", "skip", "shutdown"} <= kinds
    skip = next(e for e in events if e["action"] == "skip")
    assert skip["issue"] == 3 and "stalled" in skip["reason"] and "retries exhausted" in skip["reason"]
    assert sum(1 for e in events if e["action"] == "restart" and e["issue"] == 3) == 2
    assert not any(e.get("new_issue") == 5 for e in events)

    journal = read_lines(proj.state / "journal.jsonl")
    assert journal
    for entry in journal:
        snapshots, state, settings, actions = cycle_from_json(entry)
        assert decide(snapshots, state, settings) == actions
