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


def _held_with_a_follow_up(project, tmp_path) -> tuple[object, object, list[float]]:
    """#1's first try (claude) takes a turn on the prompt carrying the follow-up "mind the changelog", then is
    rate-limited: held, the follow-up given to the held session. (the project, the prompts seen, the clock shift)"""
    command, seen = agent_script(tmp_path, f"echo '{INIT}'; echo '{TURN}'; echo '{LIMITED}'; exit 1", "claude")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=f"{command} {STREAM}", max_retries=0)
    assert cli("send", "1", "mind the changelog").returncode == 0
    shift = [0.0]
    _cycles_until(lambda: any(e["action"] == "hold" for e in proj.events()), shift)
    assert given_in(proj) == ["worker-1-try-1"]
    return proj, seen, shift


def test_a_follow_up_held_in_a_rate_limited_session_reaches_the_try_after_kill_and_retry_once(project, tmp_path):
    """The agent took a turn on the prompt carrying the follow-up, then hit a rate limit: held, the follow-up stays
    given to the held session, which the try after the hold was to continue. The user kills the issue during the
    hold, then retries it: that prepared try never ran, so the held session went on nowhere and the follow-up comes
    back; the retried try gets it once, in a fresh session (the held one has it already). Before: it stayed given
    to the held try and the retried try never got it (lost)."""
    proj, seen, shift = _held_with_a_follow_up(project, tmp_path)
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
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj, seen, files = _prepared_try(project, tmp_path, resume_session=odd)
    (files.root / "followups.json").write_text(json.dumps({"issues": {"1": [
        {"id": "f1", "text": "mind the changelog", "at": 1.0, "given_in": "worker-1-try-1"}]}}))

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.issue(1)["status"] == "completed"
    assert "--resume" not in json.loads((proj.state / "tries" / "worker-1-try-2.json").read_text())["command"]
    assert not [e for e in proj.events() if e["action"] == "error"]
    # It was to go on in the ended try's session, which it cannot: what rode on it comes back to it, once.
    assert seen.read_text().count("mind the changelog") == 1
    assert given_in(proj) == ["worker-1-try-2"]


# One monitor cycle after another, in a process of its own, until it has done Worker.<argv[1]> for try 2 (or
# commands.mark_given of a follow-up to it): then SIGKILL, the way a kill -9 right after that step stops it.
KILLED_AFTER = """
import os, signal, sys, time
sys.path[:0] = [os.getcwd(), os.path.dirname(os.path.dirname(os.getcwd()))]  # the package, and lib/
from orchestrator.monitor import monitor
from orchestrator.run import open_run
from orchestrator.worker import Worker

from orchestrator import commands

step = sys.argv[1]
owner = commands if step == "mark_given" else Worker  # a follow-up's mark: commands.mark_given(..., try_stem)
saved = getattr(owner, step)

def then_die(*args, **kwargs):
    saved(*args, **kwargs)
    if args[-1].endswith("-try-2") if owner is commands else args[0].record.try_id >= 2:
        os.kill(os.getpid(), signal.SIGKILL)

setattr(owner, step, then_die)
deadline = time.monotonic() + 240
while time.monotonic() < deadline:
    monitor(open_run(), cycle=0.2, once=True, no_delay=True, say=lambda _: None)
    time.sleep(0.1)
sys.exit(3)
"""


def killed_after(step: str) -> None:
    """Monitor cycles in a process of its own, SIGKILLed right after Worker.<step> for try 2."""
    import subprocess
    import sys

    from conftest import ROOT
    from workers_fixtures import monitor_env

    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER, step], cwd=ROOT / "scripts" / "proof-workers",
                            env=monitor_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr


def test_a_monitor_killed_between_a_restart_and_the_next_try_continues_the_session_its_follow_up_is_in(
        project, tmp_path):
    """The agent took a turn on the prompt carrying the follow-up in session s-held, then failed: the monitor
    restarts the try to continue that session, and is SIGKILLed once that restart is saved, before the next try
    starts. The next monitor starts that try in session s-held (the follow-up goes on there, counted in it, never
    appended twice). Before: the session was kept only in the killed monitor's memory; the try started afresh and
    the follow-up, given to the ended session, reached it never."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    command, seen = agent_script(tmp_path, f"echo '{INIT}'; echo '{TURN}'; exit 1", "claude")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=f"{command} {STREAM}", max_retries=2)
    assert cli("send", "1", "mind the changelog").returncode == 0
    killed_after("restart")
    restart = next(e for e in proj.events() if e["action"] == "restart")
    assert restart["session"] == "s-held"
    assert not (proj.state / "tries" / "worker-1-try-2.json").exists()  # killed before the try started

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.issue(1)["status"] == "completed"
    assert json.loads((proj.state / "tries" / "worker-1-try-2.json").read_text())["command"].endswith(
        "--resume s-held")
    assert "mind the changelog" not in seen.read_text()  # in the session already: not appended again
    assert given_in(proj) == ["worker-1-try-2"]  # it went on in the session try 2 continued
    assert [e.get("given_back") for e in followup_events(proj)] == [None]


def test_a_follow_up_held_in_a_session_comes_back_when_the_try_after_the_hold_fails_its_set_up(project, tmp_path):
    """Held in a session that can go on, the follow-up stays given there. While a monitor waits out the pause, the
    agent's worktree goes and the config gains a file to copy into a new one that is missing: on `resume` the
    worktree is made again, its set-up fails, and so does the issue, before the try after the hold starts. The
    follow-up comes back (status shows it kept) and the try after `retry` gets it once. Before: it stayed given to
    the held try, lost."""
    import shutil
    import subprocess
    import sys

    from conftest import ROOT
    from workers_fixtures import monitor_env

    proj, seen, shift = _held_with_a_follow_up(project, tmp_path)
    # A real monitor with a long cycle: it reconciles (the worktree is still there), runs a cycle (paused: nothing
    # starts) and waits, until the `resume` below wakes it.
    monitor = subprocess.Popen([sys.executable, "-m", "orchestrator", "monitor", "--cycle", "30", "--no-delay"],
                               cwd=ROOT / "scripts" / "proof-workers", env=monitor_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        beat = proj.state / "monitor.json"
        retry_until(lambda: beat.exists() and json.loads(beat.read_text()).get("last_cycle_at")
                    and json.loads(beat.read_text())["pid"] == monitor.pid, seconds=120)
        shutil.rmtree(tmp_path / "worktrees" / "issue-1")
        proj.config.write_text(json.dumps({**proj.doc(), "worktree_setup": {"copy": ["missing.env"]}}))
        assert cli("resume").returncode == 0
        assert monitor.wait(timeout=120) == 1  # the issue failed: nothing left to run
    finally:
        if monitor.poll() is None:
            monitor.kill()
        monitor.communicate(timeout=60)
    assert proj.issue(1)["status"] == "failed"
    assert "setup failed" in next(e for e in proj.events() if e["action"] == "skip")["reason"]
    assert given_in(proj) == [None]
    assert "1 follow-up kept for its next try" in cli("status").stdout
    proj.config.write_text(json.dumps({k: v for k, v in proj.doc().items() if k != "worktree_setup"}))
    assert cli("retry", "1").returncode == 0
    _cycles_until(lambda: proj.issue(1)["status"] == "completed", shift)
    assert seen.read_text().count("mind the changelog") == 1, seen.read_text()
    assert [e.get("given_back") for e in followup_events(proj)] == [None, "worker-1-try-1"]


def test_a_monitor_killed_right_after_starting_a_try_that_continues_a_session_has_its_follow_up_given_there(
        project, tmp_path):
    """The restarted try continues session s-held, whose follow-up it carries; the monitor is SIGKILLed right after
    recording that try started. The follow-up is counted in that try (given_in names it), as without the kill, so a
    try that continues it and gets nothing done gives it back. Before: it was carried only after the start was
    recorded, so it stayed given to the ended try."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    command, seen = agent_script(tmp_path, f"echo '{INIT}'; echo '{TURN}'; exit 1", "claude")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=f"{command} {STREAM}", max_retries=2)
    assert cli("send", "1", "mind the changelog").returncode == 0
    killed_after("started")
    assert given_in(proj) == ["worker-1-try-2"]

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.issue(1)["status"] == "completed"
    assert json.loads((proj.state / "tries" / "worker-1-try-2.json").read_text())["command"].endswith(
        "--resume s-held")
    assert "mind the changelog" not in seen.read_text()
    assert given_in(proj) == ["worker-1-try-2"]


# --- what an ended try's agent did: read as the probe reads it ----------------------------------------------------

def _ended_try(project, events: bytes | None = None) -> tuple[object, object]:
    """one_try_given_a_follow_up's try 1 (claude, with events), its agent started (a pid file) and its wrapper ended
    (the exit code written); its events file holds `events` when given."""
    from workers_fixtures import one_try_given_a_follow_up

    from orchestrator import agents

    run, record = one_try_given_a_follow_up(project)
    record.agent = agents.new_state("claude")
    signals = run.files.pid_file(1, 1).parent
    signals.mkdir(parents=True, exist_ok=True)
    run.files.pid_file(1, 1).write_text("999999999\n")
    run.files.signal(1, 1).write_text("1\n")
    if events is not None:
        run.files.agent_events(1, 1).write_bytes(events)
    return run, record


def test_an_ended_tries_events_file_that_is_a_symlink_is_read_by_neither_the_probe_nor_the_follow_up_judgement(
        project, tmp_path):
    """The agent replaced its events file by a link to a file of turns (one of the user's, or its own forgery): the
    probe and end_try read nothing through it, so the follow-up is given back (its agent never showed a turn in its
    own stream). Before: the probe followed the link and counted its turns."""
    from orchestrator import probe
    from orchestrator.act import end_try

    run, record = _ended_try(project)
    forged = tmp_path / "forged.jsonl"
    forged.write_text(TURN + "\n")
    run.files.agent_events(1, 1).symlink_to(forged)

    assert probe.read_events(run.files, record, 0.0) == 0 and not record.agent["turns"]
    assert end_try(run, record) is None
    assert given_in_of(run) == [None]


def test_a_half_written_last_event_is_not_taken_for_a_turn_by_the_follow_up_judgement(project):
    """The ended try's stream ends with a whole event and, after it, a turn whose line has no end (cut by a kill
    mid-write): as the probe, end_try takes only whole lines, so that turn does not count and the follow-up comes
    back. Before: end_try took the cut line for a turn (the probe never would)."""
    from orchestrator import probe
    from orchestrator.act import end_try

    init = json.dumps({"type": "system", "subtype": "init", "session_id": "s-1", "model": "m"})
    run, record = _ended_try(project, (init + "\n" + TURN).encode())

    assert end_try(run, record) is None
    assert given_in_of(run) == [None]
    assert probe.read_events(run.files, record, 0.0) == 1 and not record.agent["turns"]


def test_waiting_for_an_ended_tries_wrapper_scans_the_process_table_once(project, monkeypatch):
    """The try's agent is gone but its wrapper still runs (stuck, its exit code never written): end_try waits for it
    a bounded while, looking for it in every process's environment once, then only at the wrapper itself. Before:
    every process's environment was read ten times a second for 10 s, holding up the monitor's cycle."""
    import os
    import subprocess

    from lib import procs
    from orchestrator import act
    from orchestrator.windows import try_tag
    from orchestrator.wrapper import WRAPPER_VAR

    run, record = _ended_try(project)
    run.files.signal(1, 1).unlink()
    wrapper = subprocess.Popen(["sleep", "600"], env={**os.environ, WRAPPER_VAR: try_tag(run, 1, 1)})
    scans: list[str] = []
    tagged = procs.processes_tagged
    monkeypatch.setattr(procs, "processes_tagged", lambda name, *a, **k: scans.append(name) or tagged(name, *a, **k))
    monkeypatch.setattr(act, "WRAPPER_EXIT_WAIT", 1.0)
    try:
        retry_until(lambda: wrapper.pid in tagged(WRAPPER_VAR, try_tag(run, 1, 1)), seconds=30)
        assert act.end_try(run, record) is None
    finally:
        wrapper.kill()
        wrapper.wait(timeout=60)
    assert scans.count(WRAPPER_VAR) == 1, scans
    assert given_in_of(run) == [None]


def given_in_of(run) -> list[str | None]:
    from orchestrator import commands

    return [e.get("given_in") for e in commands.pending_followups(run.state_root, "demo", 1, given_too=True)]


# --- a continuing try prepared twice; hand-edited state -----------------------------------------------------------

def _result(total: float) -> str:
    return json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 1,
                       "session_id": "s-held", "total_cost_usd": total})


def test_a_continuing_try_prepared_twice_counts_only_what_its_session_added(project, tmp_path):
    """Try 1 works in session s-held (2.5 USD) and fails; the restart continues s-held, and the monitor is SIGKILLed
    right after preparing try 2, before its pane runs it. The next monitor prepares try 2 again: the session's
    earlier cost is still its base, so try 2 counts 0.5 of the 3.0 its result reports. Before: the second
    preparation took the first one's tally for the ended try's, lost the base, and counted all 3.0 again."""
    from test_workers_steer_given import COMMIT

    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    mark = tmp_path / "first-done"
    agent = tmp_path / "bin" / "claude"
    agent.parent.mkdir(exist_ok=True)
    agent.write_text(f"""#!/bin/sh
echo '{INIT}'; echo '{TURN}'
if [ ! -e {mark} ]; then touch {mark}; echo '{_result(2.5)}'; exit 1; fi
echo '{_result(3.0)}'
{COMMIT}
""")
    agent.chmod(0o755)
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=f"{agent} {{{{prompt_file}}}} {STREAM}", max_retries=2)
    killed_after("prepare_try")
    assert not json.loads((proj.state / "workers" / "worker-1.json").read_text())["launched"]

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.issue(1)["status"] == "completed"
    assert json.loads((proj.state / "tries" / "worker-1-try-2.json").read_text())["command"].endswith(
        "--resume s-held")
    usage = json.loads((proj.state / "usage.json").read_text())["tries"]
    assert [usage[f"worker-1-try-{n}"]["cost_usd"] for n in (1, 2)] == [2.5, 0.5]


def _prepared_try(project, tmp_path, first_try: str = "true", **record: object) -> tuple[object, object, object]:
    """A worker record left by a crash: #1's try 2 prepared, not started, its JSON given `record`'s values (a hand
    edit); the agent (claude's event format) copies each prompt to `seen`. (the project, seen, the run files)."""
    from conftest import git

    from lib.paths import Paths
    from orchestrator import pins
    from orchestrator.run import open_run
    from orchestrator.state import RunFiles, WorkerRecord

    command, seen = agent_script(tmp_path, first_try, "claude")
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
    files.worker_file(1).write_text(json.dumps({**doc, **record}))
    return proj, seen, files


@pytest.mark.parametrize("record", [{"agent": [1]}, {"agent": "claude"}, {"agent": 3}, {"started_at": "soon"}],
                         ids=["agent-list", "agent-text", "agent-number", "started-text"])
def test_a_hand_edited_agent_tally_or_mark_of_another_kind_counts_as_none_and_never_ends_the_monitor(
        project, tmp_path, record):
    """A worker record's `agent` (the try's tally) edited by hand to a list, a text, or a time that is no number: it
    counts as none, the monitor goes on and the run completes. Before: an AttributeError or a TypeError in the
    probe ended the monitor, at every start."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj, seen, _ = _prepared_try(project, tmp_path, **record)

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.issue(1)["status"] == "completed"
    assert not [e for e in proj.events() if e["action"] == "error"]


@pytest.mark.parametrize("offset", [-1, "0", None, 1.0], ids=["negative", "text", "null", "float"])
def test_an_ended_tries_turn_is_read_whatever_its_hand_edited_events_offset(project, offset):
    """The ended try's stream holds its turn, its record's `events_offset` was edited by hand (negative, a text):
    the offset counts as none, the stream is read from its start, the turn is seen and the follow-up stays given
    there. Before: a negative offset read nothing, ever (the follow-up was given back and given again); a text one
    ended the monitor with a TypeError."""
    from dataclasses import asdict

    from orchestrator.act import end_try
    from orchestrator.state import WorkerRecord

    init = json.dumps({"type": "system", "subtype": "init", "session_id": "s-1", "model": "m"})
    run, record = _ended_try(project, (init + "\n" + TURN + "\n").encode())
    record = WorkerRecord.from_json(json.loads(json.dumps({**asdict(record), "events_offset": offset})))

    assert end_try(run, record) is not None
    assert given_in_of(run) == ["worker-1-try-1"]


def test_a_hand_edited_try_or_count_of_another_kind_stops_the_monitor_with_one_line_naming_the_file(
        project, tmp_path):
    """A worker record's `try_id` edited by hand to a text: taken for a number it could reuse an old try's files, so
    the record is unreadable: the monitor stops at once with one `error:` line naming the file and the field, exit
    2, and starts nothing. Before: a TypeError's traceback once the try was to start."""
    proj, seen, files = _prepared_try(project, tmp_path, try_id="2")

    ran = cli("monitor", "--once", "--no-delay")

    assert ran.returncode == 2, ran.stderr
    assert ran.stderr.strip().splitlines() == [
        f"error: {files.worker_file(1)}: unreadable worker state (try_id: '2' is no int); fix or remove it"]
    assert not seen.exists() and json.loads(files.worker_file(1).read_text())["try_id"] == "2"


def test_a_hand_edited_tally_member_of_another_kind_counts_as_none_when_the_probe_reads_the_try(project):
    """The try's tally edited by hand (`turns` a text, `rate_limited` a text, `tokens_in` a list): each such member
    counts as none, and the probe folds the try's events into the tally as ever. Before: a TypeError in the probe
    ended the monitor."""
    from dataclasses import asdict

    from orchestrator import probe
    from orchestrator.state import WorkerRecord

    init = json.dumps({"type": "system", "subtype": "init", "session_id": "s-1", "model": "m"})
    run, record = _ended_try(project, (init + "\n" + TURN + "\n").encode())
    odd = {**record.agent, "turns": "many", "tokens_in": [1], "rate_limited": "yes", "result": 5, "cost_base": "x"}
    record = WorkerRecord.from_json(json.loads(json.dumps({**asdict(record), "agent": odd})))

    assert probe.read_events(run.files, record, 0.0) == 2
    assert record.agent["turns"] == 1 and record.agent["session_id"] == "s-1" and record.agent["rate_limited"] is None
    assert "cost_base" not in record.agent


@pytest.mark.parametrize("odd", [{"text": "no id"}, {"id": 7, "text": "a number"}, {"id": "", "text": "empty"},
                                 {"id": "f0"}, "just text", None],
                         ids=["no-id", "number-id", "empty-id", "no-text", "text", "null"])
def test_a_hand_edited_follow_up_without_an_id_or_text_is_skipped_with_a_warning_and_the_others_are_given(
        project, tmp_path, odd):
    """followups.json edited by hand: next to a good follow-up sits an entry with no id (or no text, or none at
    all). The entry is skipped with a warning event naming it (it stays in the file as it is); the good follow-up
    is given once and the run completes. Before: a KeyError after the pane had started ended the monitor, and again
    at every later start."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj, seen, files = _prepared_try(project, tmp_path)
    (files.root / "followups.json").write_text(json.dumps({"issues": {"1": [
        odd, {"id": "f1", "text": "mind the changelog", "at": 1.0, "given_in": None}]}}))

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.issue(1)["status"] == "completed"
    assert seen.read_text().count("mind the changelog") == 1
    assert "no id" not in seen.read_text() and "a number" not in seen.read_text()
    kept = json.loads((files.root / "followups.json").read_text())["issues"]["1"]
    assert kept[0] == odd and kept[1]["given_in"] == "worker-1-try-2"
    warnings = [e for e in proj.events() if e["action"] == "followup_skipped"]
    assert warnings and all(e["issue"] == 1 and "followups.json" in e["warning"] for e in warnings), warnings
    assert not [e for e in proj.events() if e["action"] == "error"]


# --- resume_session once the continuing try runs; in-doubt follow-ups of the ended try ----------------------------

def test_a_continuing_try_once_started_no_longer_gives_back_what_the_ended_try_kept(project, tmp_path):
    """Try 2 continues session s-held and has started (the monitor SIGKILLed right after recording that): its record
    no longer names a session to continue. It then ends having done nothing: only what rode on it (the follow-up
    carried to it) comes back; what stays given to try 1 (here one hand-edited in) stays there. Before:
    `resume_session` stayed set, and every end of try 2 gave back try 1's follow-ups too."""
    from orchestrator.act import end_try
    from orchestrator.run import open_run

    command, _ = agent_script(tmp_path, f"echo '{INIT}'; echo '{TURN}'; exit 1", "claude")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=f"{command} {STREAM}", max_retries=2)
    assert cli("send", "1", "mind the changelog").returncode == 0
    killed_after("started")
    run = open_run()
    record = run.files.load_worker(1)
    assert record.try_id == 2 and record.launched and record.resume_session is None
    doc = json.loads((proj.state / "followups.json").read_text())
    doc["issues"]["1"].insert(0, {"id": "f0", "text": "keep it short", "at": 0.5, "given_in": "worker-1-try-1"})
    (proj.state / "followups.json").write_text(json.dumps(doc))

    assert end_try(run, record) is None  # its agent prints no event: no turn

    assert given_in(proj) == ["worker-1-try-1", None]


def test_a_prepared_try_that_never_starts_gives_back_the_ended_tries_follow_ups_but_not_those_in_doubt(
        project, tmp_path):
    """Try 2 was to continue try 1's session (prepared, not started) when the issue is killed: the follow-up that
    rode on that session comes back; one marked in doubt (try 1's wrapper could not be stopped: it may still give
    it to its agent) stays given to try 1, in doubt, never given twice. Before: it came back too."""
    from orchestrator.act import end_try
    from orchestrator.run import open_run

    proj, _, files = _prepared_try(project, tmp_path, resume_session="s-held")
    (files.root / "followups.json").write_text(json.dumps({"issues": {"1": [
        {"id": "f0", "text": "keep it short", "at": 0.5, "given_in": "worker-1-try-1", "in_doubt": True},
        {"id": "f1", "text": "mind the changelog", "at": 1.0, "given_in": "worker-1-try-1"}]}}))
    run = open_run()

    assert end_try(run, files.load_worker(1)) is None

    kept = json.loads((files.root / "followups.json").read_text())["issues"]["1"]
    assert [(e["given_in"], e.get("in_doubt")) for e in kept] == [("worker-1-try-1", True), (None, None)]


# --- a new follow-up in a continuing try's prompt, the monitor killed around its start ----------------------------

def _sent_while_try_1_ran(project, tmp_path) -> tuple[object, object]:
    """Try 1 works in session s-held and fails; while it ran, follow-up f2 was stored for the next try (as `send`
    stores it). The restarted try 2 continues s-held with f2 in its prompt. (the project, seen)"""
    followups = tmp_path / "home" / "state" / "demo" / "followups.json"
    store = ("import json, sys; p = sys.argv[1]; d = json.load(open(p)) if __import__('os').path.exists(p) else "
             "{'issues': {}}; d['issues'].setdefault('1', []).append({'id': 'f2', 'text': 'mind the changelog', "
             "'at': 2.0, 'given_in': None}); json.dump(d, open(p, 'w'))")
    command, seen = agent_script(tmp_path, f"echo '{INIT}'; echo '{TURN}'; python3 -c \"{store}\" {followups}; "
                                           "exit 1", "claude")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=f"{command} {STREAM}", max_retries=2)
    assert proj.state == followups.parent
    return proj, seen


def test_a_new_follow_up_in_a_started_tries_prompt_is_given_there_when_the_monitor_is_killed_right_after_the_start(
        project, tmp_path):
    """The monitor is SIGKILLed right after recording that try 2 (whose prompt carries the new follow-up) started:
    the follow-up is given to try 2 all the same, never kept for another try (which would append it to the same
    session again). Before: it was marked given only after the start was recorded, so it stayed kept."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj, seen = _sent_while_try_1_ran(project, tmp_path)
    killed_after("started")
    assert given_in(proj) == ["worker-1-try-2"]

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.issue(1)["status"] == "completed"
    assert seen.read_text().count("mind the changelog") == 1
    assert given_in(proj) == ["worker-1-try-2"]
    assert "kept for its next try" not in cli("status").stdout


def test_a_new_follow_up_marked_for_a_try_that_never_started_goes_into_that_tries_prompt_when_it_is_started_again(
        project, tmp_path):
    """The monitor is SIGKILLed right after marking the new follow-up given to try 2, before try 2's pane ran: the
    next monitor prepares try 2 again and its prompt carries the follow-up (it is given there, once). Marked before
    the pane runs, it is never lost."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj, seen = _sent_while_try_1_ran(project, tmp_path)
    killed_after("mark_given")
    assert given_in(proj) == ["worker-1-try-2"]
    assert not json.loads((proj.state / "workers" / "worker-1.json").read_text())["launched"]

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.issue(1)["status"] == "completed"
    assert json.loads((proj.state / "tries" / "worker-1-try-2.json").read_text())["command"].endswith(
        "--resume s-held")
    assert seen.read_text().count("mind the changelog") == 1
    assert given_in(proj) == ["worker-1-try-2"]


def test_a_new_follow_up_marked_for_a_try_killed_before_it_started_comes_back_for_the_try_after_retry(
        project, tmp_path):
    """Marked given to try 2, which never started (the monitor SIGKILLed before its pane ran it), and then the user
    kills the issue: the follow-up comes back (kept for its next try), and the try after `retry` gets it once."""
    proj, seen = _sent_while_try_1_ran(project, tmp_path)
    killed_after("mark_given")
    killed = cli("kill", "1")
    assert killed.returncode == 0, killed.stderr
    assert given_in(proj) == [None]
    assert "1 follow-up kept for its next try" in cli("status").stdout
    assert cli("retry", "1").returncode == 0
    _cycles_until(lambda: proj.issue(1)["status"] == "completed", [0.0])
    assert seen.read_text().count("mind the changelog") == 1


def test_a_follow_up_carried_to_a_try_prepared_again_without_its_session_reaches_that_try(project, tmp_path):
    """The follow-up rode on session s-held and was carried to try 2, prepared to continue it; the monitor is
    SIGKILLed before try 2's pane ran. The config is then edited to resume no session: try 2 starts afresh, and its
    prompt carries the follow-up (the fresh session never had it). Before: it stayed given to try 2, out of its
    prompt: lost."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    command, seen = agent_script(tmp_path, f"echo '{INIT}'; echo '{TURN}'; exit 1", "claude")
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
                   agent_command=f"{command} {STREAM}", max_retries=2)
    assert cli("send", "1", "mind the changelog").returncode == 0
    killed_after("mark_given")
    assert given_in(proj) == ["worker-1-try-2"]  # carried to it
    proj.config.write_text(json.dumps({**proj.doc(), "resume_sessions": False}))

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.issue(1)["status"] == "completed"
    assert "--resume" not in json.loads((proj.state / "tries" / "worker-1-try-2.json").read_text())["command"]
    assert seen.read_text().count("mind the changelog") == 1
    assert given_in(proj) == ["worker-1-try-2"]


@pytest.mark.parametrize("odd", [5, ["worker-1-try-1"], True], ids=["number", "list", "bool"])
def test_a_hand_edited_given_in_that_names_no_try_counts_as_not_given(project, tmp_path, odd):
    """A follow-up's `given_in` edited by hand to something that names no try (a number, a list): it counts as not
    given, so the next try gets it, once. Before: it counted as given to a try none is, never given, kept by none."""
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    proj, seen, files = _prepared_try(project, tmp_path)
    (files.root / "followups.json").write_text(json.dumps({"issues": {"1": [
        {"id": "f1", "text": "mind the changelog", "at": 1.0, "given_in": odd}]}}))

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.issue(1)["status"] == "completed"
    assert seen.read_text().count("mind the changelog") == 1
    assert given_in(proj) == ["worker-1-try-2"]


def test_an_ended_tries_turn_is_read_whatever_members_its_hand_edited_tally_lacks(project):
    """The record's tally was cut down by hand to its kind and session: the members it lacks count from nothing,
    the ended try's turn is read, and the follow-up stays given there. Before: the first event's fold raised
    KeyError ('turns') and ended the monitor."""
    from dataclasses import asdict

    from orchestrator.act import end_try
    from orchestrator.state import WorkerRecord

    init = json.dumps({"type": "system", "subtype": "init", "session_id": "s-1", "model": "m"})
    run, record = _ended_try(project, (init + "\n" + TURN + "\n").encode())
    cut = {"kind": record.agent["kind"], "session_id": "s-1"}
    record = WorkerRecord.from_json(json.loads(json.dumps({**asdict(record), "agent": cut, "events_offset": 0})))

    assert end_try(run, record) is not None
    assert given_in_of(run) == ["worker-1-try-1"]
