"""Follow-ups never lost and never given twice across the user's kill and retry, a monitor killed mid-restart, and a
worker record edited by hand.

Real tmux on a private socket, real git with a bare remote, a real monitor (in this process, or in a subprocess
where it is killed with SIGKILL); the agents are small shell scripts that speak Claude's event format
(test_workers_steer_given's).
"""
from __future__ import annotations

import json

import pytest

from test_workers_steer_given import TURN, _cycles_until, agent_script, followup_events, given_in
from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401
from workers_fixtures import orchestrator_cli as cli

INIT = json.dumps({"type": "system", "subtype": "init", "session_id": "s-held", "model": "m"})
LIMITED = json.dumps({"type": "result", "subtype": "success", "is_error": True, "num_turns": 1,
                      "session_id": "s-held", "api_error_status": 429, "result": "API Error: 429"})
STREAM = "--output-format stream-json --verbose"


def test_a_follow_up_held_in_a_rate_limited_session_reaches_the_try_after_kill_and_retry_once(project, tmp_path):
    """The agent took a turn on the prompt carrying the follow-up, then hit a rate limit: held, the follow-up stays
    given to the held session, which the try after the hold was to continue. The user kills the issue during the
    hold, then retries it: that prepared try never ran, so the held session went on nowhere and the follow-up comes
    back; the retried try gets it once, in a fresh session (the held one has it already). Before: it stayed given
    to the held try and the retried try never got it (lost)."""
    command, seen = agent_script(tmp_path, f"echo '{INIT}'; echo '{TURN}'; echo '{LIMITED}'; exit 1", "claude")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=f"{command} {STREAM}", max_retries=0)
    assert cli("send", "1", "mind the changelog").returncode == 0
    shift = [0.0]
    _cycles_until(lambda: any(e["action"] == "hold" for e in proj.events()), shift)
    assert given_in(proj) == ["worker-1-try-1"]
    killed = cli("kill", "1")
    assert killed.returncode == 0, killed.stderr
    assert proj.issue(1)["status"] == "failed"
    assert given_in(proj) == [None]  # kept again for the issue's next try: status shows it
    assert "1 follow-up kept for its next try" in cli("status").stdout
    retried = cli("retry", "1")
    assert retried.returncode == 0, retried.stderr
    shift[0] = 61.0  # the pause (60 s) lapses
    _cycles_until(lambda: proj.issue(1)["status"] == "completed", shift)
    spec = json.loads((proj.state / "tries" / "worker-1-try-3.json").read_text())
    assert "--resume" not in spec["command"]
    assert seen.read_text().count("mind the changelog") == 1, seen.read_text()
    assert given_in(proj) == ["worker-1-try-3"]
    assert [e.get("given_back") for e in followup_events(proj)] == [None, "worker-1-try-1"]


@pytest.mark.parametrize("odd", [5, 1.5, True, ["s-held"], {"id": "s-held"}, ""],
                         ids=["number", "float", "bool", "list", "object", "empty"])
def test_a_hand_edited_resume_session_that_is_no_session_name_counts_as_none_and_never_ends_the_monitor(
        project, tmp_path, odd):
    """A worker record left by a crash (a try prepared, not started), its `resume_session` edited by hand to a
    number, a list, an object: it names no session, so the monitor starts the try afresh (no --resume), gives it
    back the follow-up that rode on the session it was to continue, and the run completes. Before: a TypeError ended
    the monitor at every start."""
    from conftest import git

    from lib.paths import Paths
    from orchestrator import pins
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run
    from orchestrator.state import RunFiles, WorkerRecord

    command, seen = agent_script(tmp_path, "true", "claude")
    proj = project([{"number": 1, "title": "one", "status": "in_progress", "assigned_worker": 1}],
                   pipeline=["implement"], num_workers=1, agent="claude", agent_command=f"{command} {STREAM}",
                   max_retries=0)
    files = RunFiles(proj.home / "state" / "demo")
    run = open_run()
    pins.ensure(run.configs, run.state_root, Paths.from_env().home)  # as the crashed monitor's assignment did
    base = git(proj.repo, "rev-parse", "origin/main")
    git(proj.repo, "branch", "feature/issue-1", "main")
    files.save_worker(WorkerRecord(1, "running", "demo", 1, "feature/issue-1", str(proj.root / "worktrees" / "issue-1"),
                                   0, "implement", try_id=2, launched=False, stage_base=base, started_at=0))
    doc = json.loads(files.worker_file(1).read_text())
    files.worker_file(1).write_text(json.dumps({**doc, "resume_session": odd}))
    (files.root / "followups.json").write_text(json.dumps({"issues": {"1": [
        {"id": "f1", "text": "mind the changelog", "at": 1.0, "given_in": "worker-1-try-1"}]}}))

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.issue(1)["status"] == "completed"
    assert "--resume" not in json.loads((proj.state / "tries" / "worker-1-try-2.json").read_text())["command"]
    assert not [e for e in proj.events() if e["action"] == "error"]
    # It was to go on in the ended try's session, which it cannot: what rode on it comes back to it, once.
    assert seen.read_text().count("mind the changelog") == 1
    assert given_in(proj) == ["worker-1-try-2"]
