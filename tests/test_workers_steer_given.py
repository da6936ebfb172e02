"""When a follow-up folded into a try's prompt counts as given: only once the try's agent took the prompt and worked
on it (it had a turn). A try whose agent starts but gets nothing done (not logged in, rate limited, dead at once)
gives its follow-ups back to the issue's next try.

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


def agent_script(tmp_path: Path, first_try: str) -> tuple[str, Path]:
    """An agent command whose first try runs `first_try`; every later try copies its prompt to `seen` (appended,
    one copy per try) and commits."""
    mark, seen, agent = tmp_path / "first-done", tmp_path / "prompts-after-the-first", tmp_path / "agent.sh"
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
