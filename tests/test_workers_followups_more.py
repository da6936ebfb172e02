"""Follow-ups never lost and never given twice across the user's kill and retry, a monitor killed mid-restart, and a
worker record edited by hand.

Real tmux on a private socket, real git with a bare remote, a real monitor (in this process, or in a subprocess
where it is killed with SIGKILL); the agents are small shell scripts that speak Claude's event format
(test_workers_steer_given's).
"""
from __future__ import annotations

import json

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
