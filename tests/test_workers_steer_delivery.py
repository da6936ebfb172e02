"""A follow-up `send` gives a streaming try is passed to its agent at most once, and the verb never says more than
the wrapper recorded: a note that cannot be written (a full disk) keeps the follow-up from the agent, or is said
as `delivery not recorded`, never re-sent for the next try as well.

The monitor's side is the real `commands._send`; the wrapper's side is the real `wrapper.Feeder` in a process of
its own (never in the test process: the wrapper kills what is below it), feeding a real child process that keeps
every line it reads. A write failure is a directory where the delivered list belongs, or (for the note after the
agent got it) the wrapper's note writer failing as a full disk does.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT
from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from orchestrator import commands
from orchestrator.decide import Command
from orchestrator.run import open_run
from orchestrator.state import WorkerRecord

STREAMING = "claude -p --input-format stream-json --output-format stream-json --verbose"

# The wrapper's forwarding as it runs in a try: Feeder over the stdin of a child that writes each line it reads
# to RECEIVED. FAIL_NOTE names the note whose write fails (ENOSPC), as on a disk that filled at that moment.
DRIVER = r'''
import errno, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/scripts/proof-workers")
from orchestrator import wrapper

inbox, delivered, received, fail = sys.argv[2:6]
if fail:
    real = wrapper._append_note
    def failing(path, data):
        if fail.encode() in data:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)
    wrapper._append_note = failing
agent = subprocess.Popen([sys.executable, "-c",
    "import sys\nwith open(sys.argv[1], 'a') as out:\n    for line in sys.stdin:\n        out.write(line); out.flush()",
    received], stdin=subprocess.PIPE) if not os.environ.get("DEAF_AGENT") else \
    subprocess.Popen(["sleep", "3600"], stdin=subprocess.PIPE)  # an agent that never reads its input
open(received + ".pid", "w").write(str(agent.pid))
feeder = wrapper.Feeder(agent.stdin, {"inbox": inbox, "delivered": delivered})
feeder.start("the prompt")
sys.stdin.read()  # until the test is done
feeder.forward()  # one last pass: what it would still pass on, now that the disk may have room again
feeder.end()
agent.wait()
'''


class Try:
    """One streaming try as the monitor sees it: its spec and record; the wrapper's Feeder in a process."""

    def __init__(self, tmp_path: Path, fail_note: str = "", deaf: bool = False) -> None:
        self.run = open_run()
        files = self.run.files
        self.paths = commands.inbox_paths(files, 1, 1)
        Path(self.paths["inbox"]).parent.mkdir(parents=True, exist_ok=True)
        spec = {"input": {"prompt": str(tmp_path / "prompt.md"), **self.paths}}
        files.try_spec(1, 1).parent.mkdir(parents=True, exist_ok=True)
        files.try_spec(1, 1).write_text(json.dumps(spec))
        self.record = WorkerRecord(1, status="running", project="demo", issue_number=1, stage="implement",
                                   try_id=1, launched=True)
        self.received = tmp_path / "received.jsonl"
        driver = tmp_path / "driver.py"
        driver.write_text(DRIVER)
        self.process = subprocess.Popen([sys.executable, str(driver), str(ROOT), self.paths["inbox"],
                                         self.paths["delivered"], str(self.received), fail_note],
                                        stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "DEAF_AGENT": "1" if deaf else ""})
        pid_file = Path(f"{self.received}.pid")
        self.agent = int(retry_until(lambda: pid_file.exists() and pid_file.read_text(), seconds=60))
        if not deaf:
            retry_until(lambda: "the prompt" in self.texts(), seconds=60)

    def texts(self) -> list[str]:
        if not self.received.exists():
            return []
        return [json.loads(line)["message"]["content"] for line in self.received.read_text().splitlines()]

    def send(self, text: str) -> commands.Outcome:
        command = Command(commands._new_id(), "send", "demo", 1, text)
        return commands._send(self.run, command, self.record, lambda _line: None)

    def end(self) -> str:
        """The agent exits (the try ends); what the wrapper's process said on stderr."""
        _, err = self.process.communicate("", timeout=60)
        assert self.process.returncode == 0, err
        return err


@pytest.fixture
def streaming(project, monkeypatch):  # noqa: F811
    project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, agent="claude",
            agent_command=STREAMING)
    monkeypatch.setattr(commands, "DELIVERY_WAIT", 3.0)  # withdrawn sooner: the outcome is the same, decided
    # under the inbox's lock, however slow the machine


def last_event(run) -> dict:
    return json.loads(run.files.events.read_text().splitlines()[-1])["event"]


def kept(run, number: int = 1) -> list[str]:
    return [e["text"] for e in commands.pending_followups(run.state_root, "demo", number)]


def test_a_follow_up_reaches_a_streaming_agent_once_and_is_not_kept(streaming, tmp_path):
    try_ = Try(tmp_path)
    outcome = try_.send("FOLLOW-UP one")
    try_.end()  # the agent has read all its input
    assert outcome.ok and "delivered to demo#1's running agent (worker 1, try 1)" in outcome.lines[0], outcome
    assert try_.texts() == ["the prompt", "FOLLOW-UP one"]
    assert kept(try_.run) == []


def test_a_delivery_note_that_cannot_be_written_keeps_the_follow_up_from_the_agent_for_the_next_try(
        streaming, tmp_path):
    """The delivered list cannot be written (a directory there): the wrapper passes nothing it cannot note, so
    the monitor withdraws it and keeps it for the next try; the agent never gets it (before: both)."""
    Path(commands.inbox_paths(open_run().files, 1, 1)["delivered"]).mkdir(parents=True)
    try_ = Try(tmp_path)
    outcome = try_.send("FOLLOW-UP kept")
    try_.end()
    assert try_.texts() == ["the prompt"]
    assert outcome.ok and outcome.lines[0].startswith("stored for demo#1: given at the start of its next try"), \
        outcome
    assert kept(try_.run) == ["FOLLOW-UP kept"]
    event = last_event(try_.run)
    assert (event["action"], event["delivered"]) == ("followup", False)


def test_a_follow_up_passed_on_whose_note_then_fails_is_said_not_recorded_and_never_kept_to_give_again(
        streaming, tmp_path):
    """The agent got it, then the note saying so could not be written: the verb says the delivery is not
    recorded (it may have reached the agent), and nothing gives it a second time."""
    try_ = Try(tmp_path, fail_note='"passed"')
    outcome = try_.send("FOLLOW-UP once")
    try_.end()
    assert try_.texts() == ["the prompt", "FOLLOW-UP once"]
    assert outcome.ok and outcome.lines[0].startswith(
        "delivery to demo#1's running agent (worker 1, try 1) not recorded"), outcome
    assert kept(try_.run) == []
    event = last_event(try_.run)
    assert (event["action"], event["delivered"], event["recorded"]) == ("followup", None, False)


def test_a_follow_up_taken_again_after_a_crash_is_withdrawn_whole_and_never_passed_on_later(streaming, tmp_path):
    """The holder appended the follow-up, then died; the next holder applies the command again. The wrapper could
    not note it (a full disk), so it is withdrawn and kept: the line the dead holder left is withdrawn too, and
    once the disk has room the wrapper passes neither on."""
    delivered = Path(commands.inbox_paths(open_run().files, 1, 1)["delivered"])
    delivered.mkdir(parents=True)
    try_ = Try(tmp_path)
    command = Command(commands._new_id(), "send", "demo", 1, "FOLLOW-UP again")
    with open(try_.paths["inbox"], "a") as inbox:  # what the killed holder had appended
        inbox.write(json.dumps({"id": command.id, "text": command.text}) + "\n")
    outcome = commands._send(try_.run, command, try_.record, lambda _line: None)
    delivered.rmdir()  # room again: the wrapper's last pass could note and pass on anything not withdrawn
    try_.end()
    assert outcome.lines[0].startswith("stored for demo#1"), outcome
    assert try_.texts() == ["the prompt"]
    assert kept(try_.run) == ["FOLLOW-UP again"]


def test_a_follow_up_whose_first_note_fails_is_passed_on_once_the_disk_has_room_again(streaming, tmp_path):
    """The note before passing fails only once (a full disk that frees up within the wait): the wrapper tries
    again on its next pass and the agent gets the follow-up once."""
    try_ = Try(tmp_path)
    delivered = Path(try_.paths["delivered"])
    delivered.unlink(missing_ok=True)
    delivered.mkdir()  # fails now
    def free_up() -> None:
        time.sleep(0.5)
        delivered.rmdir()

    threading.Thread(target=free_up).start()
    outcome = try_.send("FOLLOW-UP later")
    try_.end()
    # Either way once: passed on when the note could be written within the wait, else kept for the next try.
    assert try_.texts().count("FOLLOW-UP later") == (1 if outcome.lines[0].startswith("delivered") else 0), outcome
    assert kept(try_.run) == ([] if outcome.lines[0].startswith("delivered") else ["FOLLOW-UP later"])


def test_the_monitor_waits_for_the_wrappers_lock_on_the_inbox_and_never_hangs_on_it(tmp_path):
    """The monitor's bounded wait takes the very lock the wrapper holds (lib.statefile.locked on the inbox): while
    the wrapper holds it (blocked writing to an agent that does not read) the monitor gives up, never hangs."""
    from lib.statefile import locked

    inbox = tmp_path / "worker-1-try-1.inbox.jsonl"
    inbox.touch()
    with locked(inbox):
        with commands._inbox_lock(inbox, 0.3) as held:
            assert held is False
    with commands._inbox_lock(inbox, 0.3) as held:
        assert held is True


def test_a_wrapper_blocked_writing_to_an_agent_that_does_not_read_never_holds_up_the_monitor(streaming, tmp_path,
                                                                                             monkeypatch):
    """The agent reads nothing and the follow-up is larger than a pipe holds: the wrapper blocks in its write,
    holding the inbox's lock. The monitor waits a bounded time and says the delivery is not recorded (never kept:
    the wrapper may yet pass it on); the agent's end frees the wrapper, which notes it was not passed on."""
    monkeypatch.setattr(commands, "DELIVERY_WAIT", 15.0)  # ample for the wrapper's next pass to take it up
    try_ = Try(tmp_path, deaf=True)
    text = "\U0001F600" * commands.MAX_TEXT  # 80 KB of UTF-8: more than a 64 KiB pipe holds
    outcome = try_.send(text)
    os.kill(try_.agent, signal.SIGKILL)
    try_.end()
    assert outcome.lines[0].startswith("delivery to demo#1's running agent (worker 1, try 1) not recorded: its "
                                       "wrapper is still writing to the agent's input"), outcome
    assert kept(try_.run) == []
    notes = [json.loads(line) for line in Path(try_.paths["delivered"]).read_text().splitlines()]
    assert [n.get("state") or "closed" for n in notes] == ["passing", "not_passed", "closed"]


@pytest.mark.parametrize("status", ["completed", "pending"])
@pytest.mark.parametrize(("state", "said"), [("passed", "delivered to demo#1's running agent (worker 1, try 1)"),
                                             ("passing", "delivery to demo#1's running agent (worker 1, try 1) "
                                                         "not recorded")])
def test_a_follow_up_given_before_its_holder_was_killed_is_said_as_given_whatever_the_issue_did_since(
        project, state, said, status):  # noqa: F811
    """The holder passed it to the running agent and died before it wrote the outcome; that try ended since (#1
    completed, or waits for its next try). The next holder takes the command again: it says what the wrapper
    noted, never a refusal of a follow-up the agent had (`#1 is completed`), and never keeps it to give again."""
    from dataclasses import asdict

    from lib.statefile import write_json
    from workers_fixtures import orchestrator_cli as cli

    proj = project([{"number": 1, "title": "one", "status": status}, {"number": 2, "title": "two"}],
                   pipeline=["implement"], num_workers=1)
    run = open_run()
    command = Command(commands._new_id(), "send", "demo", 1, "FOLLOW-UP")
    write_json(commands.queue_dir(run.state_root, "demo") / "taken" / f"{command.id}.json",
               {**asdict(command), "taken_at": time.time(), "by_pid": 1})
    delivered = Path(commands.inbox_paths(run.files, 1, 1)["delivered"])
    delivered.parent.mkdir(parents=True, exist_ok=True)
    delivered.write_text(json.dumps({"id": command.id, "state": state}) + "\n")
    assert cli("pause", "2").returncode == 0  # the next holder of the lock applies it first
    done = json.loads((commands.queue_dir(run.state_root, "demo") / "done" / f"{command.id}.json").read_text())
    assert done["ok"] is True and done["lines"][0].startswith(said), done
    assert kept(run) == []
    assert not (proj.state / "followups.json").exists()


# Both writers of the inbox and delivered list (the monitor's _append_line, the wrapper's _append_note) append
# through statefile.append_whole; a file size limit makes a write stop midway, as a full disk does.
FULL_DISK = r'''
import json, resource, signal, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/scripts/proof-workers")
from pathlib import Path
from orchestrator import commands, wrapper

inbox, delivered = Path(sys.argv[2]), Path(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
said = {}
for name, write in (("inbox", lambda doc: commands._append_line(inbox, doc)),
                    ("delivered", lambda doc: wrapper._append_note(delivered, (json.dumps(doc) + "\n").encode()))):
    try:
        write({"id": "long", "text": "x" * 150})
        said[name + " long"] = "written"
    except OSError as err:
        said[name + " long"] = err.errno
    said[name + " short"] = write({"id": "short"}) or "written"
print(json.dumps(said))
'''


def test_a_line_that_fits_only_in_part_is_cut_back_off_by_both_writers_and_the_next_line_starts_clean(tmp_path):
    import errno

    inbox, delivered = tmp_path / "t.inbox.jsonl", tmp_path / "t.delivered.jsonl"
    before = json.dumps({"id": "first", "text": "y" * 60}) + "\n"
    for path in (inbox, delivered):
        path.write_text(before)
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    result = subprocess.run([sys.executable, str(script), str(ROOT), str(inbox), str(delivered)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    start = len(before.encode())
    assert json.loads(result.stdout) == {"inbox long": errno.EFBIG, "inbox short": [start, start + 16],
                                         "delivered long": errno.EFBIG, "delivered short": "written"}
    for path in (inbox, delivered):
        assert path.read_text() == before + '{"id": "short"}\n'
