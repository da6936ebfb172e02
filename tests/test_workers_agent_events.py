"""Agent event streams: Claude's, codex's and gemini's events fold into one tally; the probe reads only new ones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import workers_fixtures  # noqa: F401  (puts the orchestrator package on the path)

from orchestrator import agents, probe
from orchestrator.state import RunFiles, WorkerRecord

CLAUDE = [
    {"type": "system", "subtype": "init", "session_id": "s-1", "model": "claude-x", "tools": ["Bash"]},
    {"type": "system", "subtype": "api_retry", "attempt": 4, "max_retries": 10, "retry_delay_ms": 4800,
     "error_status": 429, "error": "rate_limit", "session_id": "s-1"},
    {"type": "assistant", "session_id": "s-1", "message": {
        "id": "m1", "usage": {"input_tokens": 100, "output_tokens": 1},
        "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "git commit -m x"}}]}},
    {"type": "user", "session_id": "s-1", "message": {"content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "ok", "is_error": False}]}},
    {"type": "result", "subtype": "success", "is_error": False, "num_turns": 2, "total_cost_usd": 0.25,
     "usage": {"input_tokens": 300, "output_tokens": 40}, "session_id": "s-1", "terminal_reason": "completed",
     "result": "done"},
]
# codex exec --json (the exec JSONL events: thread.started, turn.*, item.*, error)
CODEX = [
    {"type": "thread.started", "thread_id": "th-9"},
    {"type": "turn.started"},
    {"type": "item.started", "item": {"id": "i0", "type": "command_execution", "command": "bash -lc 'git commit'",
                                      "status": "in_progress"}},
    {"type": "item.completed", "item": {"id": "i0", "type": "command_execution", "command": "bash -lc 'git commit'",
                                        "aggregated_output": "ok", "exit_code": 0, "status": "completed"}},
    {"type": "item.completed", "item": {"id": "i1", "type": "agent_message", "text": "Committed."}},
    {"type": "turn.completed", "usage": {"input_tokens": 1200, "cached_input_tokens": 0, "output_tokens": 80}},
]
# gemini --output-format stream-json (init, message, tool_use, tool_result, error, result)
GEMINI = [
    {"type": "init", "timestamp": "2026-01-01T00:00:00Z", "session_id": "g-3", "model": "gemini-2.5-pro"},
    {"type": "message", "role": "user", "content": "do it"},
    {"type": "message", "role": "assistant", "content": "Running", "delta": True},
    {"type": "tool_use", "tool_name": "run_shell_command", "tool_id": "c1", "parameters": {"command": "git commit"}},
    {"type": "tool_result", "tool_id": "c1", "status": "success", "output": "ok"},
    {"type": "message", "role": "assistant", "content": "Done.", "delta": True},
    {"type": "result", "status": "success", "stats": {"total_tokens": 900, "input_tokens": 800,
                                                      "output_tokens": 100, "duration_ms": 10, "tool_calls": 1}},
]


def _fold(kind, events):
    state = agents.new_state(kind)
    seen = []
    for event in events:
        agents.fold(state, event, "2026-01-01T00:00:00Z")
        seen.append(dict(state))
    return state, seen


def test_claude_events_tally_turns_cost_tokens_tool_and_the_rate_limit_until_the_next_good_call():
    state, seen = _fold("claude", CLAUDE)
    assert seen[1]["rate_limited"] == {"attempt": 4, "max": 10, "status": 429, "retry_in_s": 4.8}
    assert seen[2]["rate_limited"] is None and seen[2]["last_tool"] == "Bash: git commit -m x"
    assert agents.public(state) == {
        "kind": "claude", "session_id": "s-1", "turns": 2, "cost_usd": 0.25, "tokens_in": 300, "tokens_out": 40,
        "last_event_at": "2026-01-01T00:00:00Z", "last_tool": "Bash: git commit -m x", "rate_limited": None,
        "result": {"subtype": "success", "is_error": False, "terminal_reason": "completed"}}
    lines = [line for event in CLAUDE for line in agents.describe("claude", event)]
    assert "tool Bash: git commit -m x" in lines and "result: ok" in lines
    assert any(line.startswith("API retry 4/10: 429 rate_limit") for line in lines)


def test_codex_events_from_its_documented_exec_json_stream():
    state, _ = _fold("codex", CODEX)
    assert (state["session_id"], state["turns"], state["tokens_in"], state["tokens_out"]) == ("th-9", 1, 1200, 80)
    assert state["last_tool"] == "shell: bash -lc 'git commit'"
    assert state["result"] == {"subtype": "success", "is_error": False, "terminal_reason": "completed"}
    failed, _ = _fold("codex", CODEX[:2] + [{"type": "error", "message": "exceeded retry limit, last status: 429 "
                                                                          "Too Many Requests"},
                                            {"type": "turn.failed", "error": {"message": "429 Too Many Requests"}}])
    assert failed["rate_limited"]["status"] == 429 and failed["error_status"] == 429
    assert failed["result"]["is_error"] is True
    # Worked on its input: a completed turn or a reply; a turn that only started (and failed) did nothing with it.
    assert agents.worked(state) and not agents.worked(failed) and failed["turns"] == 1
    replied, _ = _fold("codex", CODEX[:2] + [CODEX[4], {"type": "turn.failed", "error": {"message": "x"}}])
    assert agents.worked(replied)
    lines = [line for event in CODEX for line in agents.describe("codex", event)]
    assert "tool shell: bash -lc 'git commit'" in lines and "assistant: Committed." in lines


def test_gemini_events_from_its_documented_stream_json():
    state, _ = _fold("gemini", GEMINI)
    assert (state["session_id"], state["turns"], state["tokens_in"], state["tokens_out"]) == ("g-3", 2, 800, 100)
    assert state["last_tool"] == "run_shell_command: git commit"
    assert state["result"]["is_error"] is False
    lines = [line for event in GEMINI for line in agents.describe("gemini", event)]
    assert "tool run_shell_command: git commit" in lines and lines[-1].startswith("RESULT success")


@pytest.mark.parametrize("line", [b"Not logged in \xc2\xb7 Please run /login\n", b"{not json\n", b"[1, 2]\n",
                                  b"\xff\xfe garbage\n"])
def test_a_line_that_is_no_json_object_is_kept_as_text(line):
    event, was_json = agents.parse_line(line)
    assert not was_json and event["type"] == "stdout"
    state = agents.new_state("claude")
    agents.fold(state, event, "t")  # never raises, whatever the agent printed


def test_the_probe_reads_only_new_events_and_their_growth_is_activity(tmp_path: Path):
    files = RunFiles(tmp_path)
    record = WorkerRecord(1, project="p", issue_number=7, try_id=3, agent=agents.new_state("claude"))
    stream = files.agent_events(1, 3)
    stream.parent.mkdir(parents=True)
    stream.write_bytes(b"".join(json.dumps(e).encode() + b"\n" for e in CLAUDE[:2]))
    before = probe.fingerprint(files, record, "abc", "")

    assert probe.read_events(files, record, 0.0) == 2
    assert record.agent["rate_limited"]["attempt"] == 4
    with open(stream, "ab") as out:  # one more api_retry, and half of the next line
        out.write(json.dumps({**CLAUDE[1], "attempt": 5}).encode() + b"\n" + json.dumps(CLAUDE[2]).encode()[:20])
    assert probe.fingerprint(files, record, "abc", "") != before
    assert probe.read_events(files, record, 0.0) == 1  # the half line waits for its end
    assert record.agent["rate_limited"]["attempt"] == 5
    offset = record.events_offset
    with open(stream, "ab") as out:
        out.write(json.dumps(CLAUDE[2]).encode()[20:] + b"\n")
    assert probe.read_events(files, record, 0.0) == 1 and record.events_offset > offset
    assert record.agent["rate_limited"] is None and record.agent["turns"] == 1


def test_the_agent_kind_follows_the_config_and_the_original_config_runs_claude_with_events(tmp_path: Path):
    from lib.errors import ConfigError
    from orchestrator.config import parse_config

    base = {"project": "p", "repo_path": str(tmp_path), "branch_prefix": "f-", "issues": []}
    plain = parse_config(tmp_path / "c.json", base)
    assert plain.agent == "claude" and "--output-format stream-json --verbose" in plain.agent_command
    own = parse_config(tmp_path / "c.json", {**base, "agent_command": "my-agent < {{prompt_file}}"})
    assert own.agent == "command" and own.agent_command == "my-agent < {{prompt_file}}"
    codex = parse_config(tmp_path / "c.json", {**base, "agent": "codex"})
    assert codex.agent_command.startswith("codex exec --json")
    for doc, problem in (({"agent": "aider"}, "agent: unknown agent 'aider' (known: claude, codex, gemini, command)"),
                         ({"agent": "command"}, 'agent: "command" needs an agent_command')):
        with pytest.raises(ConfigError) as err:
            parse_config(tmp_path / "c.json", {**base, **doc})
        assert any(p.endswith(problem) for p in err.value.problems), err.value.problems


def test_budgets_read_as_project_defaults_with_each_issues_own_and_bad_values_are_config_errors(tmp_path: Path):
    from lib.errors import ConfigError
    from orchestrator.config import parse_config

    base = {"project": "p", "repo_path": str(tmp_path), "branch_prefix": "f-", "max_cost_usd": 2, "max_turns": 30,
            "max_total_cost_usd": 9.5, "issues": [{"number": 1}, {"number": 2, "max_cost_usd": 0.25,
                                                                   "max_tokens": 1000}]}
    cfg = parse_config(tmp_path / "c.json", base)
    assert dict(cfg.issue(1).budget) == {"max_cost_usd": 2, "max_turns": 30}
    assert dict(cfg.issue(2).budget) == {"max_cost_usd": 0.25, "max_turns": 30, "max_tokens": 1000}
    assert cfg.max_total_cost_usd == 9.5
    with pytest.raises(ConfigError) as err:
        parse_config(tmp_path / "c.json", {**base, "max_turns": 0, "max_total_cost_usd": "lots",
                                           "issues": [{"number": 1, "max_cost_usd": -1}]})
    assert sorted(p.split(": ", 1)[1] for p in err.value.problems) == [
        "issues[0] (#1).max_cost_usd: must be > 0, got -1", "max_total_cost_usd: must be a finite number, got \"lots\"",
        "max_turns: must be > 0, got 0"]


def test_a_burst_of_events_is_taken_over_several_cycles_and_a_finished_try_is_read_to_its_end(tmp_path: Path):
    files = RunFiles(tmp_path)
    record = WorkerRecord(1, project="p", issue_number=7, try_id=1, agent=agents.new_state("claude"))
    stream = files.agent_events(1, 1)
    stream.parent.mkdir(parents=True)
    turns = [{**CLAUDE[2], "message": {**CLAUDE[2]["message"], "id": f"m{i}"}} for i in range(1000)]
    stream.write_bytes(b"".join(json.dumps(e).encode() + b"\n" for e in [*turns, CLAUDE[3]] * 1))
    assert probe.read_events(files, record, 0.0) == probe.MAX_EVENTS_PER_CYCLE
    assert record.agent["turns"] == probe.MAX_EVENTS_PER_CYCLE
    while probe.read_events(files, record, 0.0):
        pass
    assert record.agent["turns"] == 1000 and record.events_offset == stream.stat().st_size


def test_how_a_try_stopped_is_told_from_its_last_errors_and_a_success_is_a_success():
    def stop(events, kind="claude"):
        return agents.stop_of(_fold(kind, events)[0])[0]

    retried = {"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 2, "retry_delay_ms": 500,
               "error_status": 429, "error": "rate_limit"}
    failed = {"type": "result", "subtype": "success", "is_error": True, "num_turns": 1, "total_cost_usd": 0,
              "terminal_reason": "api_error", "api_error_status": 429,
              "result": "API Error: Request rejected (429) · rate limited"}
    assert stop([retried, *CLAUDE[2:]]) == ""  # retried, then went through: a success
    assert stop([retried, failed]) == "rate_limit"
    assert stop([{**retried, "error_status": 401, "error": "authentication_failed"},
                 {**failed, "api_error_status": 401, "result": "Failed to authenticate. API Error: 401"}]) == "auth"
    assert stop([{"type": "stdout", "text": "Not logged in · Please run /login"}]) == "auth"
    assert stop([{**failed, "api_error_status": 500, "result": "API Error: 500 boom"}]) == "error"
    assert stop([retried, CLAUDE[2]]) == ""  # killed after a good call: no limit holds it
    assert stop([retried]) == "rate_limit"  # killed while still retrying a 429


def test_a_lying_or_broken_stream_never_makes_a_cost_negative_or_nan():
    state, _ = _fold("claude", [{"type": "result", "subtype": "success", "is_error": False, "num_turns": -5,
                                 "total_cost_usd": float("nan"),
                                 "usage": {"input_tokens": "many", "output_tokens": -1}},
                                {"type": "assistant", "message": {"id": 3, "content": "not a list", "usage": []}}])
    assert (state["cost_usd"], state["tokens_in"], state["tokens_out"]) == (0.0, 0, 0) and state["turns"] >= 0
    state, _ = _fold("claude", [{"type": "result", "is_error": False, "total_cost_usd": -3.0}])
    assert state["cost_usd"] == 0.0


def test_the_wrapper_keeps_raw_events_and_readable_lines_and_never_blocks_the_agent_when_it_cannot_write(
        tmp_path: Path):
    import io

    from orchestrator import wrapper

    out = b"".join(json.dumps(e).encode() + b"\n" for e in CLAUDE) + b"Not logged in\n" + b"x" * 100
    wrapper._events(io.BufferedReader(io.BytesIO(out)), "claude", tmp_path / "t" / "e.jsonl", tmp_path / "l" / "t.log")
    kept = [json.loads(line) for line in (tmp_path / "t" / "e.jsonl").read_text().splitlines()]
    assert kept[:5] == CLAUDE and kept[5:] == [{"type": "stdout", "text": "Not logged in"},
                                               {"type": "stdout", "text": "x" * 100}]
    log = (tmp_path / "l" / "t.log").read_text()
    assert "tool Bash: git commit -m x" in log and "API retry 4/10" in log and log.count("\n") == 7
    blocked = tmp_path / "nowhere"
    blocked.write_text("a file where the directory should be")
    source = io.BufferedReader(io.BytesIO(out * 1000))
    wrapper._events(source, "claude", blocked / "e.jsonl", blocked / "t.log")
    assert source.read() == b""  # drained to its end


@pytest.mark.parametrize("session,expected", [("8520f49f-112a-464b-9ad1-f40f6cf8fb14", True), ("--dangerous", False),
                                              ("../../x", False), ("a b", False), ("", False), ("x" * 200, False)])
def test_only_a_plain_session_id_from_the_agents_output_becomes_a_resume_flag(session, expected):
    assert agents.resume_flags("claude", session) == (["--resume", session] if expected else [])
    assert agents.resume_flags("codex", session) == []
