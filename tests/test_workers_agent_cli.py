"""The real Claude Code CLI against the stand-in Messages API: what the proof workers' agent tests stand on."""
from __future__ import annotations

import json
import os
import subprocess

import fake_anthropic as fa
from agent_fixtures import claude_env, fake_api, require_claude  # noqa: F401
from conftest import git


def _claude(api, cwd, home, prompt="commit a file"):
    env = {**os.environ, **claude_env(api, home)}
    done = subprocess.run([str(require_claude()), "-p", "--output-format", "stream-json", "--verbose",
                           "--dangerously-skip-permissions"], input=prompt, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_the_cli_runs_a_scripted_bash_tool_call_that_commits(make_repo, fake_api, tmp_path):
    require_claude()
    repo = make_repo("app")
    fake_api.queue(fa.bash("echo hi > f.txt && git add f.txt && git commit -q -m 'agent commit'", say="committing"),
                   fa.text("All done."))

    code, events = _claude(fake_api, repo.path, tmp_path / "agent-home")

    assert code == 0
    assert git(repo.path, "log", "-1", "--format=%s") == "agent commit"
    assert events[0]["type"] == "system" and events[0]["subtype"] == "init" and events[0]["session_id"]
    tools = [b["name"] for e in events if e["type"] == "assistant" for b in e["message"]["content"]
             if b["type"] == "tool_use"]
    assert tools == ["Bash"]
    result = events[-1]
    assert result["type"] == "result" and result["is_error"] is False and result["num_turns"] == 2
    assert result["total_cost_usd"] > 0 and result["session_id"] == events[0]["session_id"]
    assert len(fake_api.model_calls()) == 2


def test_a_rate_limited_cli_reports_each_retry_and_ends_with_an_api_error(make_repo, fake_api, tmp_path):
    require_claude()
    repo = make_repo("app")
    fake_api.queue(*[fa.status(429, retry_after=0)] * 5)

    code, events = _claude(fake_api, repo.path, tmp_path / "agent-home")

    assert code == 1
    retries = [e for e in events if e.get("subtype") == "api_retry"]
    assert [(e["attempt"], e["max_retries"], e["error_status"]) for e in retries] == [(1, 2, 429), (2, 2, 429)]
    assert events[-1]["is_error"] is True and events[-1]["terminal_reason"] == "api_error"
    assert "429" in events[-1]["result"]
