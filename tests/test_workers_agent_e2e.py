"""Proof workers with the real Claude Code CLI against the stand-in Messages API: events, logs, status, budgets."""
from __future__ import annotations

import json

import fake_anthropic as fa
from agent_fixtures import claude_command, fake_api, require_claude  # noqa: F401
from workers_fixtures import project, tmux_socket  # noqa: F401

from orchestrator.monitor import monitor
from orchestrator.report import status_document
from orchestrator.run import open_run

COMMIT = "echo {n} >> work.txt && git add work.txt && git commit -q -m 'agent: issue {n}'"


def _run(proj):
    lines: list[str] = []
    run = open_run()
    failed = monitor(run, cycle=0.2, no_delay=True, say=lines.append)
    run.reload()
    return failed, run, lines


def test_a_claude_try_keeps_its_events_a_readable_log_and_shows_turns_cost_and_session(project, fake_api, tmp_path):
    require_claude()
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=claude_command(fake_api, tmp_path / "agent-home"))
    fake_api.queue_for("# Issue #1:", fa.bash(COMMIT.format(n=1), say="Committing the work."),
                       fa.text("Done: committed."))

    failed, run, lines = _run(proj)

    assert failed == 0, lines
    assert proj.issue(1)["status"] == "completed"
    assert proj.remote_commits("feature/issue-1") == ["agent: issue 1"]
    events = [json.loads(line) for line in (proj.state / "tries" / "worker-1-try-1.events.jsonl").read_text()
              .splitlines()]
    assert events[0]["type"] == "system" and events[0]["subtype"] == "init"
    assert events[-1]["type"] == "result" and events[-1]["is_error"] is False
    try_log = proj.state / "logs" / "issue-1" / "worker-1-try-1.log"
    text = try_log.read_text()
    assert "assistant: Committing the work." in text
    assert "tool Bash: " + COMMIT.format(n=1) in text
    assert "RESULT success" in text
    worker_log = (proj.state / "logs" / "worker-1.log").read_text()
    assert f"log {try_log}" in worker_log.splitlines()[0] and "=== EXIT code 0" in worker_log
    assert "Committing" not in worker_log  # the agent's output lives in the try's log

    doc = status_document(run)
    agent = doc["workers"][0]["agent"]
    assert agent is None  # the worker is idle again: its agent object went with the try
    project_doc = doc["projects"][0]
    issue = project_doc["issues"][0]
    assert issue["turns"] == 2 and issue["cost_usd"] > 0
    assert project_doc["turns"] == 2 and project_doc["cost_usd"] == issue["cost_usd"]
    usage = json.loads((proj.state / "usage.json").read_text())["tries"]["worker-1-try-1"]
    assert usage["session_id"] == events[0]["session_id"] and usage["turns"] == 2


def test_a_rate_limited_call_shows_while_the_cli_retries_and_clears_after_the_next_good_call(project, fake_api,
                                                                                              tmp_path):
    """Three 429s, then the model answers: status shows RATE LIMITED with the CLI's attempt and maximum until the
    next successful call; the try is not counted as failed and the issue completes."""
    require_claude()
    import threading

    from rich.console import Console

    from orchestrator.dashboard import render
    from workers_fixtures import retry_until

    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   stall_timeout=120, agent_command=claude_command(fake_api, tmp_path / "agent-home", max_retries=10))
    fake_api.queue_for("# Issue #1:", *[fa.status(429, retry_after=1)] * 3, fa.bash(COMMIT.format(n=1)),
                       fa.text("Done."))
    run = open_run()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(monitor(run, cycle=0.2, no_delay=True,
                                                                   say=lambda _: None)))
    thread.start()
    try:
        limited = retry_until(lambda: (status_document(open_run())["workers"][0]["agent"] or {})
                              .get("rate_limited"), seconds=120)
        assert limited["status"] == 429 and limited["max"] == 10 and limited["attempt"] >= 1
        doc = status_document(open_run())
        console = Console(record=True, width=200)
        console.print(render(doc))
        assert f"RATE LIMITED (attempt {doc['workers'][0]['agent']['rate_limited']['attempt']}/10)" in \
            console.export_text()
        cleared = retry_until(lambda: (lambda a: a if a and a["turns"] >= 1 else None)(
            status_document(open_run())["workers"][0]["agent"]), seconds=120)
        assert cleared["rate_limited"] is None
    finally:
        thread.join(timeout=300)
    assert result == [0]
    assert proj.issue(1)["status"] == "completed"
    assert not any(e["action"] in ("restart", "hold") for e in proj.events())  # retried, then a success


def _cycles_until(check, seconds=180.0, clock=None):
    """Monitor cycles (each call reconciles and runs one) until `check()` holds."""
    from workers_fixtures import retry_until

    def step():
        run = open_run()
        if clock is not None:
            run.clock = clock
        monitor(run, cycle=0.2, once=True, no_delay=True, say=lambda _: None)
        return check()

    return retry_until(step, seconds=seconds, interval=0.1)


def _pauses(proj):
    path = proj.state / "paused.json"
    return json.loads(path.read_text())["project"] if path.exists() else []


def test_a_try_that_ends_rate_limited_pauses_the_project_and_is_retried_later_without_using_a_retry(
        project, fake_api, tmp_path):
    require_claude()
    import time

    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   max_retries=0, agent_command=claude_command(fake_api, tmp_path / "agent-home", max_retries=1))
    fake_api.queue_for("# Issue #1:", fa.status(429, retry_after=0), fa.status(429, retry_after=0),
                       fa.bash(COMMIT.format(n=1)), fa.text("Done."))
    shift = [0.0]

    [pause] = _cycles_until(lambda: _pauses(proj), clock=lambda: time.time() + shift[0])

    assert pause["reason"] == "rate_limit" and "429" in pause["detail"]
    from orchestrator.pauses import _parse
    assert _parse(pause["until"]) - _parse(pause["since"]) == 60  # no reset time given: the first backoff
    assert proj.issue(1)["status"] == "in_progress"  # max_retries 0, and still not failed
    hold = next(e for e in proj.events() if e["action"] == "hold")
    assert hold["issue"] == 1 and hold["reason"].startswith("rate_limit")
    shift[0] = 61.0  # the pause lapses: the issue is tried again
    _cycles_until(lambda: proj.issue(1)["status"] == "completed", clock=lambda: time.time() + shift[0])
    assert proj.remote_commits("feature/issue-1") == ["agent: issue 1"]
    assert not any(e["action"] in ("restart", "skip") for e in proj.events())


def test_an_agent_that_is_not_logged_in_pauses_the_project_for_auth_instead_of_failing_each_issue(
        project, fake_api, tmp_path):
    require_claude()
    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "two"}], pipeline=["implement"],
                   num_workers=1, agent="claude", max_retries=0,
                   agent_command=claude_command(fake_api, tmp_path / "agent-home", max_retries=1))
    fake_api.queue(*[fa.status(401)] * 10)

    [pause] = _cycles_until(lambda: _pauses(proj))

    assert pause["reason"] == "auth" and pause["detail"] == "agent not logged in: run claude /login"
    assert pause["until"] is None
    assert [proj.issue(n).get("status", "pending") for n in (1, 2)] == ["in_progress", "pending"]
    from orchestrator.pauses import resume

    run = open_run()
    assert resume(run.state_root, run.configs) == ["resumed demo: auth (agent not logged in: run claude /login)"]
    fake_api.queue_for("# Issue #1:", fa.bash(COMMIT.format(n=1)), fa.text("Done."))
    fake_api.queue_for("# Issue #2:", fa.bash(COMMIT.format(n=2)), fa.text("Done."))
    with fake_api.lock:
        fake_api.answers.clear()
    _cycles_until(lambda: all(proj.issue(n).get("status") == "completed" for n in (1, 2)))


def test_a_costly_try_past_its_issues_budget_fails_the_issue_and_the_project_budget_pauses_the_project(
        project, fake_api, tmp_path):
    """#1 costs more than its own max_cost_usd: it fails. #2 has no budget of its own, but with it the project
    passes max_total_cost_usd: the project pauses (#2's verdict waits, #3 does not start) until the limit is
    raised."""
    require_claude()
    proj = project([{"number": 1, "title": "costly", "max_cost_usd": 0.1},
                    {"number": 2, "title": "pricey"}, {"number": 3, "title": "after the budget"}],
                   pipeline=["implement"], num_workers=1, agent="claude", max_turns=40, max_total_cost_usd=1.0,
                   agent_command=claude_command(fake_api, tmp_path / "agent-home"))
    fake_api.queue_for("# Issue #1:", fa.bash(COMMIT.format(n=1), output_tokens=20_000), fa.text("Done."))
    fake_api.queue_for("# Issue #2:", fa.bash(COMMIT.format(n=2), output_tokens=60_000), fa.text("Done."))
    fake_api.queue_for("# Issue #3:", fa.bash(COMMIT.format(n=3)), fa.text("Done."))

    [pause] = _cycles_until(lambda: _pauses(proj))

    spec = json.loads((proj.state / "tries" / "worker-1-try-1.json").read_text())
    assert "--max-budget-usd 0.1000 --max-turns 40" in spec["command"]
    skip = next(e for e in proj.events() if e["action"] == "skip")
    assert skip["issue"] == 1 and skip["reason"].startswith("budget: $") and skip["reason"].endswith(" of $0.1000")
    assert proj.issue(1)["status"] == "failed"
    assert pause["reason"] == "budget" and pause["detail"].endswith(" of $1.0000")
    assert proj.issue(2)["status"] == "in_progress" and proj.issue(3).get("status", "pending") == "pending"
    doc = status_document(open_run())
    assert doc["projects"][0]["cost_usd"] >= 1.0 and doc["done"] is False
    assert doc["projects"][0]["cost_usd"] == round(sum(i["cost_usd"] for i in doc["projects"][0]["issues"]), 6)

    config = proj.doc()
    config["max_total_cost_usd"] = 100.0
    proj.config.write_text(json.dumps(config))
    _cycles_until(lambda: proj.issue(3).get("status") == "completed")
    assert proj.issue(2)["status"] == "completed" and _pauses(proj) == []


KILL_CLAUDE = """import os, signal
pid = os.getppid()  # up from the Bash tool's shell to the CLI itself (its binary is claude.exe)
while pid > 1 and not os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("claude"):
    pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
if pid > 1:
    os.kill(pid, signal.SIGKILL)
"""


def test_a_killed_try_resumes_its_session_with_a_short_prompt_and_a_new_stage_starts_a_fresh_one(
        project, fake_api, tmp_path):
    """Try 1 is killed mid-session (its Bash call kills the CLI): try 2 runs `--resume <its session>` with only a
    continuation prompt, and the model sees the conversation so far; the next stage starts a new session."""
    require_claude()
    killer = tmp_path / "kill_claude.py"
    killer.write_text(KILL_CLAUDE)
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement", "review"], num_workers=1,
                   agent="claude", agent_command=claude_command(fake_api, tmp_path / "agent-home"))
    fake_api.queue_for("# Issue #1:", fa.bash(f"python3 {killer}"), fa.bash(COMMIT.format(n=1)), fa.text("Done."),
                       fa.bash(COMMIT.format(n=1)), fa.text("Reviewed."))

    failed, run, lines = _run(proj)

    assert failed == 0, lines
    assert proj.issue(1)["status"] == "completed"
    restart = next(e for e in proj.events() if e["action"] == "restart")
    assert "exit code 137" in restart["reason"] and restart["session"]
    spec = json.loads((proj.state / "tries" / "worker-1-try-2.json").read_text())
    assert spec["command"].endswith(f" --resume {restart['session']}")
    prompt = (proj.state / "prompts" / "worker-1-try-2.md").read_text()
    assert prompt.startswith("Continue the task of this session") and "# Issue #1:" not in prompt
    assert "exit code 137" in prompt
    calls = fake_api.model_calls()
    resumed = calls[1]["body"]["messages"]
    assert len(resumed) > 1 and "Continue the task of this session" in json.dumps(resumed)
    review = json.loads((proj.state / "tries" / "worker-1-try-3.json").read_text())
    assert "--resume" not in review["command"]
    assert not (proj.state / "prompts" / "worker-1-try-3.md").read_text().startswith("Continue")
    sessions = {json.loads(l).get("session_id") for n in (1, 3)
                for l in (proj.state / "tries" / f"worker-1-try-{n}.events.jsonl").read_text().splitlines()[:1]}
    assert len(sessions) == 2
    issue = status_document(run)["projects"][0]["issues"][0]
    assert issue["turns"] >= 4  # summed over the killed try, the resumed one and the review


def test_the_claude_demo_runs_four_issues_through_three_stages_with_the_real_cli(tmp_path, tmux_socket):
    require_claude()
    import subprocess
    import sys

    from conftest import ROOT
    from workers_fixtures import monitor_env

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_workers_demo.py"), "--claude", "--wait", "240",
                           str(tmp_path / "demo")], capture_output=True, text=True, timeout=300, env=monitor_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "staking-demo: 4 completed of 4" in done.stdout and "24 turns" in done.stdout
    assert "run finished: 24 model calls answered" in done.stdout
