"""When a follow-up folded into a try's prompt counts as given: only once the try's agent took the prompt and worked
on it (it had a turn). A try whose agent starts but gets nothing done (not logged in, rate limited, dead at once)
gives its follow-ups back to the issue's next try. A held try (rate limited, not logged in) that worked keeps them
given only when its session goes on in the try after the hold; else that try starts afresh and gets them again.

Real tmux on a private socket, real git with a bare remote, a real monitor in this process (the wrapper and the
agent run in the pane, as subprocesses); the agents are small shell scripts that speak Claude's event format.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401
from workers_fixtures import orchestrator_cli as cli

from orchestrator.monitor import monitor
from orchestrator.run import open_run

COMMIT = "echo x >> work.txt; git add -A; git -c user.name=a -c user.email=a@b.c commit -qm work; exit 0"
# One assistant event: the model answered the prompt (a turn).
TURN = json.dumps({"type": "assistant", "message": {"id": "m1", "role": "assistant",
                                                     "content": [{"type": "text", "text": "on it"}]}})


def agent_script(tmp_path: Path, first_try: str, name: str = "agent.sh") -> tuple[str, Path]:
    """An agent command whose first try runs `first_try`; every later try copies its prompt to `seen` (appended,
    one copy per try) and commits. Named `claude`, it is taken for the CLI (a session of it can be resumed: the
    flags appended are ignored)."""
    mark, seen = tmp_path / "first-done", tmp_path / "prompts-after-the-first"
    agent = tmp_path / "bin" / name
    agent.parent.mkdir(exist_ok=True)
    agent.write_text(f"""#!/bin/sh
if [ ! -e {mark} ]; then touch {mark}; {first_try}; fi
cat "$1" >> {seen}; echo '=== end of prompt ===' >> {seen}
{COMMIT}
""")
    agent.chmod(0o755)
    return f"{agent} {{{{prompt_file}}}}", seen


def followup_events(proj: Any) -> list[dict[str, Any]]:
    return [e for e in proj.events() if e["action"] == "followup"]


def given_in(proj: Any) -> list[str | None]:
    return [e.get("given_in") for e in json.loads((proj.state / "followups.json").read_text())["issues"]["1"]]


def test_a_follow_up_in_the_prompt_of_a_try_whose_agent_is_not_logged_in_goes_to_the_try_after_resume(
        project, tmp_path):
    """The agent starts but is not logged in: the project is held (auth) and the agent never read its prompt. The
    follow-up goes back to the issue's next try (after `resume`), once. Before, the pid file alone made it given:
    the try after resume lacked it, lost."""
    command, seen = agent_script(tmp_path, "echo 'Not logged in · Please run /login'; exit 1")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=command, max_retries=1)
    assert cli("send", "1", "mind the changelog").returncode == 0

    def held() -> bool:
        monitor(open_run(), cycle=0.2, once=True, no_delay=True, say=lambda _: None)
        paused = proj.state / "paused.json"
        return paused.exists() and json.loads(paused.read_text())["project"] != []

    retry_until(held, seconds=120)
    assert "mind the changelog" in (proj.state / "prompts" / "worker-1-try-1.md").read_text()
    assert given_in(proj) == [None]
    assert [e.get("given_back") for e in followup_events(proj)] == [None, "worker-1-try-1"]
    assert "follow-up kept for its next try" in cli("status").stdout
    assert "resumed" in cli("resume").stdout
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert proj.issue(1)["status"] == "completed"
    assert seen.read_text().count("mind the changelog") == 1, seen.read_text()
    assert given_in(proj) == ["worker-1-try-2"]


def test_a_follow_up_in_the_prompt_of_a_try_whose_agent_died_before_its_first_turn_goes_to_the_restarted_try(
        project, tmp_path):
    """The agent starts and dies at once (no event, exit 1): a retry restarts it. The restarted try's prompt
    carries the follow-up, once."""
    command, seen = agent_script(tmp_path, "echo 'Error: something broke at start-up'; exit 1")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=command, max_retries=2)
    assert cli("send", "1", "mind the changelog").returncode == 0
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert proj.issue(1)["status"] == "completed"
    assert seen.read_text().count("mind the changelog") == 1, seen.read_text()
    assert given_in(proj) == ["worker-1-try-2"]
    assert [e.get("given_back") for e in followup_events(proj)] == [None, "worker-1-try-1"]


def test_a_follow_up_the_agent_took_a_turn_on_stays_given_when_its_try_then_fails(project, tmp_path):
    """The agent answered the prompt (a turn), then failed: the follow-up was worked on in that try. It counts as
    given there and is never given again."""
    command, seen = agent_script(tmp_path, f"echo '{TURN}'; exit 1")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=command, max_retries=2)
    assert cli("send", "1", "mind the changelog").returncode == 0
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert proj.issue(1)["status"] == "completed"
    assert "mind the changelog" in (proj.state / "prompts" / "worker-1-try-1.md").read_text()
    assert "mind the changelog" not in seen.read_text()
    assert given_in(proj) == ["worker-1-try-1"]
    assert [e.get("given_back") for e in followup_events(proj)] == [None]


def _cycles_until(check: Any, shift: list[float], seconds: float = 180.0) -> Any:
    """Monitor cycles, each on a clock `shift[0]` seconds ahead (a pause lapses without waiting), until `check()`."""
    import time

    def step() -> Any:
        run = open_run()
        run.clock = lambda: time.time() + shift[0]
        monitor(run, cycle=0.2, once=True, no_delay=True, say=lambda _: None)
        return check()

    return retry_until(step, seconds=seconds, interval=0.1)


def test_a_follow_up_worked_on_before_a_rate_limit_goes_on_in_the_resumed_session_and_is_never_given_twice(
        project, tmp_path):
    """The real CLI takes a turn on the prompt that carries the follow-up, then the API rate-limits it: the project
    is held. The try after the hold resumes that session (--resume): the follow-up stays given there and is not
    appended to the continuation. Before: the hold gave it back, and the try after it resumed the session with the
    follow-up appended again: the model read it twice."""
    import fake_anthropic as fa
    from agent_fixtures import claude_command, require_claude

    require_claude()
    with fa.FakeAnthropic() as api:
        proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                       max_retries=0, agent_command=claude_command(api, tmp_path / "agent-home", max_retries=1))
        assert cli("send", "1", "FOLLOW-UP: mind the changelog").returncode == 0
        api.queue_for("# Issue #1:", fa.bash("echo looking around"), fa.status(429, retry_after=0),
                      fa.status(429, retry_after=0), fa.bash(COMMIT.replace("; exit 0", "")), fa.text("Done."))
        shift = [0.0]
        _cycles_until(lambda: (proj.state / "paused.json").exists() and
                      json.loads((proj.state / "paused.json").read_text())["project"], shift)
        session = json.loads((proj.state / "usage.json").read_text())["tries"]["worker-1-try-1"]["session_id"]
        hold = next(e for e in proj.events() if e["action"] == "hold")
        assert hold["session"] == session
        assert given_in(proj) == ["worker-1-try-1"]
        shift[0] = 61.0  # the pause (60 s: no reset time given) lapses
        _cycles_until(lambda: proj.issue(1)["status"] == "completed", shift)
        calls = api.model_calls()
    spec = json.loads((proj.state / "tries" / "worker-1-try-2.json").read_text())
    assert spec["command"].endswith(f"--resume {session}")
    prompt = (proj.state / "prompts" / "worker-1-try-2.md").read_text()
    assert prompt.startswith("Continue the task of this session") and "FOLLOW-UP" not in prompt
    assert json.dumps(calls[-1]["body"]["messages"]).count("FOLLOW-UP: mind the changelog") == 1
    assert given_in(proj) == ["worker-1-try-2"]  # it went on in the session try 2 continued
    assert [e.get("given_back") for e in followup_events(proj)] == [None]


def test_a_follow_up_worked_on_before_a_rate_limit_in_a_session_that_cannot_go_on_is_given_again_once(
        project, tmp_path):
    """The agent took a turn on the prompt, then hit a rate limit, but its events named no session: the try after
    the hold cannot resume it and starts afresh. The follow-up is given back at the hold and its prompt carries it,
    once (kept as given in the held try, it would have been lost)."""
    limited = json.dumps({"type": "result", "subtype": "success", "is_error": True, "num_turns": 1,
                          "api_error_status": 429, "result": "API Error: 429 rate_limit_error"})
    command, seen = agent_script(tmp_path, f"echo '{TURN}'; echo '{limited}'; exit 1")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=command, max_retries=0)
    assert cli("send", "1", "mind the changelog").returncode == 0
    shift = [0.0]
    _cycles_until(lambda: any(e["action"] == "hold" for e in proj.events()), shift)
    assert next(e for e in proj.events() if e["action"] == "hold")["session"] is None
    assert given_in(proj) == [None]
    shift[0] = 61.0
    _cycles_until(lambda: proj.issue(1)["status"] == "completed", shift)
    prompt = (proj.state / "prompts" / "worker-1-try-2.md").read_text()
    assert not prompt.startswith("Continue") and prompt.count("mind the changelog") == 1
    assert seen.read_text().count("mind the changelog") == 1
    assert given_in(proj) == ["worker-1-try-2"]
    assert [e.get("given_back") for e in followup_events(proj)] == [None, "worker-1-try-1"]


def test_a_held_sessions_follow_up_is_given_again_when_the_config_no_longer_resumes_it_by_the_next_try(
        project, tmp_path):
    """Held in a session that can go on, so the follow-up stayed given there; then resume_sessions is turned off
    before the pause lapses: the try after the hold starts afresh, and gets the follow-up back, once."""
    init = json.dumps({"type": "system", "subtype": "init", "session_id": "s-held", "model": "m"})
    limited = json.dumps({"type": "result", "subtype": "success", "is_error": True, "num_turns": 1,
                          "session_id": "s-held", "api_error_status": 429, "result": "API Error: 429"})
    command, seen = agent_script(tmp_path, f"echo '{init}'; echo '{TURN}'; echo '{limited}'; exit 1", "claude")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=f"{command} --output-format stream-json --verbose", max_retries=0)
    assert cli("send", "1", "mind the changelog").returncode == 0
    shift = [0.0]
    _cycles_until(lambda: any(e["action"] == "hold" for e in proj.events()), shift)
    assert next(e for e in proj.events() if e["action"] == "hold")["session"] == "s-held"
    assert given_in(proj) == ["worker-1-try-1"]
    proj.config.write_text(json.dumps({**proj.doc(), "resume_sessions": False}))
    shift[0] = 61.0
    _cycles_until(lambda: proj.issue(1)["status"] == "completed", shift)
    spec = json.loads((proj.state / "tries" / "worker-1-try-2.json").read_text())
    assert "--resume" not in spec["command"]
    assert seen.read_text().count("mind the changelog") == 1
    assert given_in(proj) == ["worker-1-try-2"]
    assert [e.get("given_back") for e in followup_events(proj)] == [None, "worker-1-try-1"]


def test_a_follow_up_in_the_prompt_of_a_codex_turn_that_failed_before_any_reply_goes_to_the_restarted_try(
        project, tmp_path):
    """codex exec --json: the turn started, then failed before the agent replied or the turn completed (the stream
    dropped). Its follow-up was not worked on: the restarted try's prompt carries it, once. Before, the started turn
    counted as a turn: the follow-up stayed given to the failed try, and codex sessions are not resumed: lost."""
    events = [{"type": "thread.started", "thread_id": "th-1"}, {"type": "turn.started"},
              {"type": "error", "message": "stream disconnected before completion"},
              {"type": "turn.failed", "error": {"message": "stream disconnected before completion"}}]
    failing = "; ".join(f"echo '{json.dumps(e)}'" for e in events)
    command, seen = agent_script(tmp_path, f"{failing}; exit 1", "codex")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="codex",
                   agent_command=f"{command} exec --json", max_retries=2)
    assert cli("send", "1", "mind the changelog").returncode == 0
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert proj.issue(1)["status"] == "completed"
    assert "mind the changelog" in (proj.state / "prompts" / "worker-1-try-1.md").read_text()
    assert seen.read_text().count("mind the changelog") == 1, seen.read_text()
    assert given_in(proj) == ["worker-1-try-2"]
    assert [e.get("given_back") for e in followup_events(proj)] == [None, "worker-1-try-1"]


def test_a_held_sessions_follow_up_comes_back_when_resuming_that_session_fails_at_once(project, tmp_path):
    """Held in a session that goes on, so the follow-up stayed given there; the try after the hold resumes it, but
    the resume fails at once (no turn: the session is gone). The follow-up rode on that try: it comes back, and the
    fresh try after it gets it, once (before: it stayed given to the held try's session, which nothing continued),
    in a new session: the stage's last one already has it (resumed with it appended, it would read it twice)."""
    init = json.dumps({"type": "system", "subtype": "init", "session_id": "s-held", "model": "m"})
    limited = json.dumps({"type": "result", "subtype": "success", "is_error": True, "num_turns": 1,
                          "session_id": "s-held", "api_error_status": 429, "result": "API Error: 429"})
    gone = json.dumps({"type": "result", "subtype": "error_during_execution", "is_error": True, "num_turns": 0,
                       "result": "No conversation found with session ID: s-held"})
    count, seen, agent = tmp_path / "count", tmp_path / "seen", tmp_path / "bin" / "claude"
    agent.parent.mkdir()
    agent.write_text(f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}
case $n in
  0) echo '{init}'; echo '{TURN}'; echo '{limited}'; exit 1;;
  1) echo '{gone}'; exit 1;;
esac
cat "$1" >> {seen}
{COMMIT}
""")
    agent.chmod(0o755)
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=f"{agent} {{{{prompt_file}}}} --output-format stream-json --verbose", max_retries=1)
    assert cli("send", "1", "mind the changelog").returncode == 0
    shift = [0.0]
    _cycles_until(lambda: any(e["action"] == "hold" for e in proj.events()), shift)
    shift[0] = 61.0
    _cycles_until(lambda: proj.issue(1)["status"] == "completed", shift)
    assert json.loads((proj.state / "tries" / "worker-1-try-2.json").read_text())["command"].endswith(
        "--resume s-held")
    assert "mind the changelog" not in (proj.state / "prompts" / "worker-1-try-2.md").read_text()
    assert "--resume" not in json.loads((proj.state / "tries" / "worker-1-try-3.json").read_text())["command"]
    assert seen.read_text().count("mind the changelog") == 1
    assert given_in(proj) == ["worker-1-try-3"]
    assert [e.get("given_back") for e in followup_events(proj)] == [None, "worker-1-try-2"]


def test_a_cycle_during_a_hold_lists_tmux_once(project, tmp_path, monkeypatch):
    """The try after a hold is prepared, not launched: it has not ended, so a cycle does not list tmux a second time
    to confirm it was lost to tmux (one listing per cycle, as before)."""
    import time

    import orchestrator.tmux as tmux
    from orchestrator.monitor import run_cycle

    init = json.dumps({"type": "system", "subtype": "init", "session_id": "s-held", "model": "m"})
    limited = json.dumps({"type": "result", "subtype": "success", "is_error": True, "num_turns": 1,
                          "session_id": "s-held", "api_error_status": 429, "result": "API Error: 429"})
    command, _ = agent_script(tmp_path, f"echo '{init}'; echo '{TURN}'; echo '{limited}'; exit 1", name="claude")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=f"{command} --output-format stream-json --verbose", max_retries=1)
    shift = [0.0]
    _cycles_until(lambda: any(e["action"] == "hold" for e in proj.events()), shift)
    listings: list[int] = []
    listed = tmux.panes
    monkeypatch.setattr(tmux, "panes", lambda *a, **k: listings.append(1) or listed(*a, **k))
    run = open_run()
    run.clock = time.time
    run_cycle(run, 1, lambda _: None)
    assert len(listings) == 1
    assert not [e for e in proj.events() if e["action"] == "probe_failed"]


def test_a_follow_ups_sessions_that_are_not_a_list_of_names_are_none(tmp_path):
    """followups.json edited by hand (or damaged): `sessions` 5, a string, a list with a number: noting a session
    neither crashes nor takes a substring for a session, and the entry counts as in that session afterwards."""
    from orchestrator import commands

    for odd in (5, True, "xx-S-yy", ["S-other", 7]):
        path = commands.followups_file(tmp_path, "p")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"issues": {"1": [{"id": "f1", "text": "mind it", "given_in": "worker-1-try-1",
                                                      "sessions": odd}]}}))
        entries = commands.pending_followups(tmp_path, "p", 1, given_too=True)
        assert not commands.in_session(entries, "S")
        assert commands.note_session(tmp_path, "p", 1, "worker-1-try-1", "S") == ["f1"]
        assert commands.in_session(commands.pending_followups(tmp_path, "p", 1, given_too=True), "S")
