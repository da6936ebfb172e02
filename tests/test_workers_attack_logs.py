"""A hostile review of the proof workers' capped try logs and the verbs that show them (`logs`, `diff`, `attach`):
an agent that plants, deletes, truncates or replaces its own log or the cut's temp file, FIFOs and files where our
folders and logs go, agent-set git config, closed pipes and odd issue numbers. The question each test asks: can
it lose work (the tail, the EXIT line, the exit code), hang the monitor or the user, run an agent's program, or
lie."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from conftest import ROOT, require_tool
from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401 (fixtures; the package on the path)

WRAPPER = ROOT / "scripts" / "proof-workers" / "orchestrator" / "wrapper.py"
CAP = 64 * 1024
EXIT_LINE = re.compile(r"=== EXIT code (\d+) worker-1 try 1 issue #1 stage implement \(log .*\) at \S+ ===\n\Z")


def run_try(tmp_path: Path, script: str, cap: int = CAP, timeout: float = 120,
            around: tuple[str, ...] = (), **spec_extra: str) -> tuple[int, Path, Path]:
    """The real wrapper, as a process of its own (a hang fails the test, never blocks it), running `script` as
    the agent with $TRY_LOG naming its own log; `around` runs it (`... "$@"`). Returns (the wrapper's exit code,
    the try log, the logs folder)."""
    logs = tmp_path / "state" / "logs"
    try_log = logs / "issue-1" / "worker-1-try-1.log"
    spec = {"worker": 1, "try": 1, "issue": 1, "stage": "implement", "cwd": str(tmp_path), "command": script,
            "log": str(logs / "worker-1.log"), "signal": str(tmp_path / "signal"), "pid_file": str(tmp_path / "pid"),
            "agent": "command", "max_log_bytes": cap, "try_log": str(try_log),
            "env": {"TRY_LOG": str(try_log), "ORCHESTRATOR_TRY": f"{tmp_path}/worker-1/1"}, **spec_extra}
    (tmp_path / "try.json").write_text(json.dumps(spec))
    done = subprocess.run([*around, sys.executable, str(WRAPPER), str(tmp_path / "try.json")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    assert b"Traceback" not in done.stderr, done.stderr.decode()
    return done.returncode, try_log, logs


def lines(count: int, word: str = "out") -> str:
    """A shell loop printing `count` numbered lines of about 100 bytes."""
    return f"i=0; while [ $i -lt {count} ]; do echo \"{word} $i {'x' * 80}\"; i=$((i+1)); done; "


def assert_whole(try_log: Path, code: int, last: str, cap: int = CAP, started: bool = True) -> str:
    """The try's log is a regular file within its cap ending with the agent's last line and the EXIT line."""
    assert try_log.is_file() and not try_log.is_symlink()
    data = try_log.read_bytes()
    assert len(data) <= cap
    text = data.decode("utf-8", "replace")
    if started:
        assert text.startswith("=== START worker-1 try 1 issue #1 stage implement"), text[:200]
    assert text.endswith(f"{last}\n" + text.splitlines()[-1] + "\n"), text[-400:]
    found = EXIT_LINE.search(text)
    assert found and int(found.group(1)) == code, text[-400:]
    return text


# --- the capped log against its own agent -------------------------------------------------------------------------

def test_an_agent_writing_to_its_log_file_directly_or_100_mb_without_a_newline_keeps_the_cap(tmp_path):
    """The agent appends a megabyte to its log file itself (not through its output), then prints a line: the log
    is back within its cap, with the wrapper's last lines. 20 MB printed without one newline: the cap holds, one
    mark, and the bytes kept plus the bytes it says were cut are all that was printed."""
    script = 'head -c 1000000 /dev/zero | tr "\\0" "d" >> "$TRY_LOG"; echo; echo the last words; exit 0'

    code, try_log, _ = run_try(tmp_path, script)

    assert code == 0
    assert_whole(try_log, 0, "the last words")

    from lib import logcut

    path = tmp_path / "no-newline.log"
    with logcut.CappedLog(path, logcut.MIN_LOG_CAP) as log:
        for _ in range(20 * 16):
            log.write(b"z" * 65536)
    data = path.read_bytes()
    assert len(data) <= logcut.MIN_LOG_CAP
    marks = re.findall(rb"\n\[\.\.\. (\d+) bytes cut here \(the log's first \d+ bytes[^\]]*\]\n", data)
    assert len(marks) == 1
    kept = len(data) - len(re.search(rb"\n\[\.\.\. \d+ bytes cut here[^\]]*\]\n", data).group(0))
    assert kept + int(marks[0]) == 20 * 16 * 65536


def test_a_directory_the_agent_puts_where_a_cut_is_written_never_stops_the_log(tmp_path):
    """The cut writes a temp file beside the log and renames it over. An agent that makes a directory (or
    anything) at that name before the first cut must not stop its log: the tail and the EXIT line still land,
    within the cap."""
    script = ('mkdir "$(dirname "$TRY_LOG")/.$(basename "$TRY_LOG").cut"; '
              + lines(3000) + "echo the last words; exit 5")

    code, try_log, _ = run_try(tmp_path, script)

    assert code == 5 and (tmp_path / "signal").read_text() == "5\n"
    text = assert_whole(try_log, 5, "the last words")
    assert "out 2999 " in text


def test_an_agent_that_empties_its_own_log_mid_run_still_leaves_its_tail_and_exit_line(tmp_path):
    """`: > $TRY_LOG` after a cut: the log shrinks under the writer's feet. What the agent prints next is still
    written, the cap still holds, and the log ends with its last words and the EXIT line."""
    script = lines(2000, "before") + ': > "$TRY_LOG"; ' + lines(2000, "after") + "echo the last words; exit 0"

    code, try_log, _ = run_try(tmp_path, script)

    assert code == 0
    text = assert_whole(try_log, 0, "the last words", started=False)  # its head it emptied itself
    assert "after 1999 " in text


def test_an_agent_that_deletes_or_replaces_its_own_log_leaves_no_hole_and_writes_through_nothing(tmp_path):
    """The agent removes its log, or puts a file of its own, a FIFO, or a symlink to a file of the user's in its
    place, then prints more (less than the cap: no cut follows). After the try, the log is a regular file with
    everything the wrapper wrote (before and after), the EXIT line last; the user's file is untouched; nothing
    hangs."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    for name, swap in (("deleted", 'rm -f "$TRY_LOG"'),
                       ("forged", 'rm -f "$TRY_LOG"; echo "=== EXIT code 0 all is well ===" > "$TRY_LOG"'),
                       ("fifo", 'rm -f "$TRY_LOG"; mkfifo "$TRY_LOG"'),
                       ("symlink", f'rm -f "$TRY_LOG"; ln -s {shlex.quote(str(victim))} "$TRY_LOG"')):
        folder = tmp_path / name
        folder.mkdir()
        script = f"echo printed before; {swap}; echo printed after; exit 3"

        code, try_log, _ = run_try(folder, script)

        assert code == 3, name
        text = assert_whole(try_log, 3, "printed after")
        assert "printed before\n" in text and "all is well" not in text, name
        assert victim.read_text() == "keep me\n"


def read_without_waiting(read: Callable[[], object], what: str, *fifos: Path) -> object:
    """What `read()` returns; an AssertionError naming `what` when it waits on one of the FIFOs (a writer is
    then opened on each, so that the reading thread and the test process can end)."""
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(read()), daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: that one had no reader
                pass
        reader.join(timeout=30)
        raise AssertionError(f"{what} blocked")
    return got[0]


def small_disk(tmp_path: Path, size: str = "96k") -> tuple[str, ...]:
    """`around` for run_try: the state folder a small tmpfs in a mount namespace of the test's own (copied to
    tmp_path/kept when the wrapper is done: the tmpfs goes with the namespace)."""
    require_tool("unshare")
    state, kept = tmp_path / "state", tmp_path / "kept"
    state.mkdir(exist_ok=True)
    if subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(state)],
                      capture_output=True).returncode:
        import pytest

        pytest.skip("no mount namespace here (unshare -m; mount -t tmpfs)")
    return ("unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(state))} && '
            f'"$@"; code=$?; cp -r {shlex.quote(str(state))}/. {shlex.quote(str(kept))}; exit $code', "-")


def test_a_full_disk_at_a_cut_still_keeps_the_logs_tail_and_exit_line(tmp_path):
    """The state folder on a filesystem with no room for the cut's new file (a 96 KiB tmpfs in a mount namespace
    of the test's own): the cut is made in place, so the log still ends with the agent's last words and the EXIT
    line, within its cap."""
    around = small_disk(tmp_path)
    state, kept = tmp_path / "state", tmp_path / "kept" / "logs"

    code, _, _ = run_try(tmp_path, lines(3000) + "echo the last words; exit 4", around=around)

    assert code == 4 and (tmp_path / "signal").read_text() == "4\n"
    text = assert_whole(kept / "issue-1" / "worker-1-try-1.log", 4, "the last words")
    assert len(re.findall(r"^\[\.\.\. \d+ bytes cut here \(the log's first \d+ bytes", text, re.M)) == 1
    assert "out 2999 " in text and "out 0 " in text
    assert (kept / "worker-1.log").read_text().count("=== EXIT code 4 ") == 1


def test_output_the_log_could_not_take_on_a_full_disk_is_said_and_what_follows_is_written(tmp_path):
    """The agent fills the disk (a 96 KiB tmpfs), prints, then frees it: the lines printed while it was full are
    lost, and the log says how many bytes; the lines after them, the last words and the EXIT line are written."""
    around = small_disk(tmp_path)
    state, kept = tmp_path / "state", tmp_path / "kept" / "logs"
    filler = shlex.quote(str(state / "filler"))
    # No sleeps to wait on the wrapper: "before" is in the log before the disk fills; the lost lines are far more
    # than a pipe holds, so most were read (and failed to be written) before the agent frees the disk.
    script = (f'echo before; until grep -q before "$TRY_LOG"; do sleep 0.05; done; '
              f"head -c 200000 /dev/zero > {filler}; " + lines(4000, "lost")
              + f"rm -f {filler}; " + lines(5, "after") + "echo the last words; exit 0")

    code, _, _ = run_try(tmp_path, script, around=around)

    assert code == 0 and (tmp_path / "signal").read_text() == "0\n"
    text = assert_whole(kept / "issue-1" / "worker-1-try-1.log", 0, "the last words")
    assert "before\n" in text and "after 4 " in text
    said = re.search(r"^wrapper: up to (\d+) bytes of the agent's output could not be written to this log", text,
                     re.M)
    assert said and 0 < int(said.group(1)) <= 4000 * 100, text[-600:]


def test_the_exit_line_starts_a_line_of_its_own_after_output_that_ends_mid_line(tmp_path):
    """`printf` with no newline last: the EXIT line is still a line of its own (readers look for it there)."""
    code, try_log, _ = run_try(tmp_path, "printf 'no newline at the end'; exit 2")

    assert code == 2
    assert_whole(try_log, 2, "no newline at the end")


def test_an_agent_with_events_on_a_full_disk_still_leaves_its_result_event_and_line(tmp_path):
    """Claude-style events; the disk fills while it prints, then frees: the events and lines printed meanwhile
    are lost (the log says so), the result event the monitor judges the try by still reaches the events file,
    and the log still ends with the RESULT and EXIT lines. (1 MiB: once freed, room for the events still in the
    pipe and the result.)"""
    around = small_disk(tmp_path, "1m")
    filler = tmp_path / "state" / "filler"
    agent = tmp_path / "events_agent.py"
    agent.write_text(
        "import json, os, sys, time\n"
        "def say(n): print(json.dumps({'type': 'assistant', 'message': {'id': f'm{n}', 'content': [\n"
        "    {'type': 'text', 'text': f'step {n} ' + 'z' * 100}]}}), flush=True)\n"
        "say(0)\n"
        "while b'step 0 ' not in open(os.environ['TRY_LOG'], 'rb').read():  # in the log before the disk fills\n"
        "    time.sleep(0.05)\n"
        "try:\n"
        f"    open({str(filler)!r}, 'wb').write(b'0' * 4000000)  # as much as fits\n"
        "except OSError:\n"
        "    pass\n"
        "for n in range(1, 4000): say(n)  # far more than a pipe holds: most are read while the disk is full\n"
        f"os.remove({str(filler)!r})\n"
        "print(json.dumps({'type': 'result', 'subtype': 'success', 'is_error': False, 'num_turns': 3,\n"
        "                  'total_cost_usd': 0.25, 'result': 'done'}), flush=True)\n")
    events = tmp_path / "state" / "tries" / "worker-1-try-1.events.jsonl"

    code, _, _ = run_try(tmp_path, f"{shlex.quote(sys.executable)} {shlex.quote(str(agent))}", around=around,
                         agent="claude", events=str(events))

    assert code == 0
    kept = tmp_path / "kept"
    last = json.loads((kept / "tries" / "worker-1-try-1.events.jsonl").read_text().splitlines()[-1])
    assert last["type"] == "result", last
    text = (kept / "logs" / "issue-1" / "worker-1-try-1.log").read_text()
    assert "step 0 " in text and "could not be written" in text, text[-800:]
    ending = text.splitlines()[-2:]
    assert "RESULT success" in ending[0] and ending[1].startswith("=== EXIT code 0 worker-1 try 1 issue #1"), ending


def test_the_exit_code_lands_whatever_the_agent_put_where_the_wrapper_writes_it_first(tmp_path):
    """The exit code is written to a temp file beside the signal file, then renamed over it. The agent knows the
    temp's name (the wrapper's pid is its shell's $PPID) and puts a folder there, or a symlink to a file of the
    user's: the exit code still lands, and the user's file is untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    for name, plant in (("folder", 'mkdir "$TMP_AT"'), ("symlink", f'ln -s {shlex.quote(str(victim))} "$TMP_AT"')):
        folder = tmp_path / name
        folder.mkdir()
        script = f'TMP_AT={shlex.quote(str(folder))}/.signal.$PPID.tmp; {plant}; echo planted; exit 5'

        code, try_log, _ = run_try(folder, script, timeout=60)

        assert code == 5 and (folder / "signal").read_text() == "5\n", name
        assert victim.read_text() == "keep me\n"
        assert_whole(try_log, 5, "planted")


def test_an_agent_that_deletes_its_logs_folder_still_leaves_its_log(tmp_path):
    """`rm -rf logs/issue-1` while the try runs: the folder is made again and the log put back in it, with
    what was printed before and after and the EXIT line."""
    script = 'echo printed before; rm -rf "$(dirname "$TRY_LOG")"; echo printed after; exit 2'

    code, try_log, _ = run_try(tmp_path, script)

    assert code == 2
    text = assert_whole(try_log, 2, "printed after")
    assert "printed before\n" in text


def test_a_fifo_or_a_file_where_the_wrapper_writes_its_index_or_folder_never_costs_the_exit_code(tmp_path):
    """A FIFO at logs/worker-1.log (opening it to append would wait for a reader forever), a file at
    logs/issue-1 (no folder can be made there), a symlink at logs/issue-1 to a folder of the user's: the agent
    runs, the exit code lands, nothing is written through the symlink."""
    elsewhere = tmp_path / "users-folder"
    elsewhere.mkdir()
    for name, plant in (("fifo-index", lambda logs: os.mkfifo(logs / "worker-1.log")),
                        ("file-folder", lambda logs: (logs / "issue-1").write_text("not a folder\n")),
                        ("symlink-folder", lambda logs: (logs / "issue-1").symlink_to(elsewhere))):
        folder = tmp_path / name
        logs = folder / "state" / "logs"
        logs.mkdir(parents=True)
        plant(logs)

        code, try_log, _ = run_try(folder, "echo the agent ran; exit 6", timeout=60)

        assert code == 6 and (folder / "signal").read_text() == "6\n", name
        assert list(elsewhere.iterdir()) == [], name
        index = logs / "worker-1.log"
        if name != "fifo-index":
            assert index.read_text().count("=== EXIT code 6 ") == 1, name
        else:
            assert_whole(try_log, 6, "the agent ran")


def test_the_monitor_never_waits_on_a_fifo_put_at_a_try_log(tmp_path):
    """The tail of the try's log goes into the retry's prompt: a FIFO there (the wrapper killed outright, so
    nothing put a file back) must give no tail, never block the monitor's cycle."""
    from orchestrator import act

    fifo = tmp_path / "worker-1-try-1.log"
    os.mkfifo(fifo)
    assert read_without_waiting(lambda: act._log_tail(fifo), "reading the tail of a FIFO", fifo) == ""
    # Nor is a symlink an agent put there followed to a file of the user's (its text never reaches a prompt).
    secret, link = tmp_path / "users-notes.txt", tmp_path / "worker-1-try-2.log"
    secret.write_text("the user's secret\n")
    link.symlink_to(secret)
    assert act._log_tail(link) == "" and act._log_tail(secret) == "the user's secret"


# --- the verbs: logs, diff, attach ----------------------------------------------------------------------------------

def finished_issue(project, tmp_path: Path, log_bytes: int = 0, change_bytes: int = 0):
    """A run whose #1 is done: its branch has a commit (a file whose name and text carry escape sequences, and
    `change_bytes` more of text), the reassign event records its base, its try log holds `log_bytes` of output."""
    from conftest import git

    proj = project([{"number": 1, "title": "done", "status": "completed"}], pipeline=["implement"])
    base = git(proj.repo, "rev-parse", "HEAD")
    git(proj.repo, "checkout", "-q", "-b", "feature/issue-1")
    (proj.repo / "evil\x1b]0;owned\x07.txt").write_text("\x1b[2Jcleared\n")
    (proj.repo / "big.txt").write_text("".join(f"changed line {n}\n" for n in range(change_bytes // 20)))
    git(proj.repo, "add", "-A")
    git(proj.repo, "commit", "-q", "-m", "implement #1 \x1b[31mred")
    git(proj.repo, "checkout", "-q", "main")
    state = proj.state
    state.mkdir(parents=True, exist_ok=True)
    (state / "orchestrator-log.jsonl").write_text(json.dumps({"timestamp": "2026-12-06T10:00:00Z", "event": {
        "action": "reassign", "worker": 1, "new_issue": 1, "project": "demo", "branch": "feature/issue-1",
        "resumed": None, "base": base}}) + "\n")
    log = state / "logs" / "issue-1" / "worker-1-try-1.log"
    log.parent.mkdir(parents=True)
    with open(log, "w") as out:
        out.write("=== START worker-1 try 1 issue #1 stage implement at 2026-12-06T10:00:00Z ===\n")
        for n in range(log_bytes // 100):
            out.write(f"output line {n:09d} {'y' * 78}\n")
    return proj, base


def orchestrator(*args: str, **popen) -> subprocess.Popen:
    from workers_fixtures import monitor_env

    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=ROOT / "scripts" / "proof-workers",
                            env=monitor_env(popen.pop("env", None)), **popen)


def test_logs_and_diff_into_a_pipe_closed_early_end_quietly(project, tmp_path):
    """`logs 1 | head -c 100`, `diff 1 | head -c 100`: the reader goes away after a few bytes of megabytes; the
    verb ends quietly (exit 0, or 141 for SIGPIPE), no traceback, no hang."""
    finished_issue(project, tmp_path, log_bytes=4 * 1024 * 1024, change_bytes=4 * 1024 * 1024)
    from workers_fixtures import monitor_env

    for verb in (["logs", "1"], ["diff", "1"], ["logs", "1", "--follow"], ["inv", "workers.logs", "1"],
                 ["inv", "workers.diff", "1"]):
        if verb[0] == "inv":  # the other front door, as a user runs it
            child = subprocess.Popen([sys.executable, "-m", "invoke", *verb[1:]], cwd=ROOT, env=monitor_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            child = orchestrator(*verb, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout is not None and child.stderr is not None
        assert len(child.stdout.read(100)) == 100
        child.stdout.close()
        err = child.stderr.read()
        assert child.wait(timeout=60) in (0, 141, -13), (verb, err)
        assert b"Traceback" not in err and b"Exception ignored" not in err, (verb, err.decode())


def test_diff_ignores_what_an_agent_set_in_the_repos_git_config(project, tmp_path):
    """An agent without a sandbox can write the repo's .git/config: color always, an external diff program, a
    textconv driver for every file, a pager, no quoting of names. `diff 1` runs none of those programs, and its
    output has no raw escape sequence (from colours, a file name or a file's text)."""
    from conftest import git

    proj, base = finished_issue(project, tmp_path)
    ran = tmp_path / "ran"
    program = tmp_path / "agent-program.sh"
    program.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {shlex.quote(str(ran))}\necho forged\n")
    program.chmod(0o755)
    (tmp_path / "attributes").write_text("* diff=agent\n")
    for key, value in (("color.ui", "always"), ("color.diff", "always"), ("diff.external", str(program)),
                       ("diff.agent.textconv", str(program)), ("diff.agent.command", str(program)),
                       ("core.attributesFile", str(tmp_path / "attributes")), ("core.pager", str(program)),
                       ("pager.diff", str(program)), ("core.quotePath", "false")):
        git(proj.repo, "config", key, value)
    for args in (["diff", "1"], ["diff", "1", "--stat"]):
        child = orchestrator(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert b"\x1b" not in out and b"\x07" not in out and b"forged" not in out, out
        assert b"\\x1b[" not in out.replace(b"\\x1b]0;owned", b"").replace(b"\\x1b[2J", b""), out  # no colours
        assert b"evil" in out
        if "--stat" not in args:
            assert b"+\\x1b[2Jcleared" in out, out
    assert not ran.exists(), ran.read_text()


def test_odd_issue_numbers_are_one_short_error_line_and_exit_2(project, tmp_path, capsys):
    """-1, 0, 1e3, 0x10, a number of 4000 digits, one of 5000: one `error:` line each, short (the value clipped),
    exit 2, for every verb."""
    from orchestrator.cli import main

    finished_issue(project, tmp_path)
    for verb in ("logs", "diff", "attach"):
        for bad in ("-1", "0", "1e3", "0x10", "9" * 4000, "9" * 5000, ""):
            assert main([verb, bad]) == 2, (verb, bad[:20])
            captured = capsys.readouterr()
            assert captured.out == "" and captured.err.startswith("error: "), captured
            assert len(captured.err.strip().splitlines()) == 1 and len(captured.err) < 400, (verb, captured.err[:300])


def test_diff_never_hangs_on_git_writing_much_to_stderr(project, tmp_path):
    """An agent's attributes file of 3000 negative patterns makes git warn 600 KB on stderr before its diff:
    `diff 1` still ends with the diff (git blocked on a full stderr pipe that nobody read, and the verb on git)."""
    from conftest import git

    proj, _ = finished_issue(project, tmp_path)
    (tmp_path / "attributes").write_text("".join(f"!pattern{n} diff\n" for n in range(3000)))
    git(proj.repo, "config", "core.attributesFile", str(tmp_path / "attributes"))
    child = orchestrator("diff", "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err[-2000:]
    assert b"+\\x1b[2Jcleared" in out and len(err) < 4096, err[-2000:]


def test_logs_follow_shows_each_line_once_when_the_agent_deletes_replaces_or_empties_its_log(tmp_path):
    """`logs --follow` reads the try's log while the agent deletes it (the wrapper puts it back), puts a FIFO or a
    forged file at its path (put back too), or empties it: every line the wrapper wrote is shown once, in order,
    and nothing waits on the FIFO; emptied, what follows is still shown, after a line saying so."""
    from lib import logcut
    from orchestrator.show import Follower

    def fifo(path: Path) -> None:
        path.unlink()
        os.mkfifo(path)

    def forged(path: Path) -> None:
        path.unlink()
        path.write_text("line 0\nforged\n")

    for name, attack in (("deleted", Path.unlink), ("fifo", fifo), ("forged", forged)):
        path = tmp_path / f"{name}.log"
        got: list[str] = []
        follower = Follower(path, logcut.MIN_LOG_CAP, got.append)
        log = logcut.CappedLog(path, logcut.MIN_LOG_CAP)
        written = [f"line {n}\n" for n in range(300)]
        for line in written[:100]:
            log.write(line.encode())
        follower.pump()
        attack(path)
        follower.pump()
        for line in written[100:200]:
            log.write(line.encode())
        follower.pump()
        log.close()  # puts the log back at its path
        follower.pump()
        with logcut.CappedLog(path, logcut.MIN_LOG_CAP) as again:  # a later writer appends to what is there
            for line in written[200:]:
                again.write(line.encode())
        follower.pump()
        assert "".join(got) == "".join(written), (name, "".join(got)[-300:])

    path = tmp_path / "emptied.log"
    got = []
    follower = Follower(path, logcut.MIN_LOG_CAP, got.append)
    with logcut.CappedLog(path, logcut.MIN_LOG_CAP) as log:
        log.write(b"".join(b"before %d\n" % n for n in range(100)))
        follower.pump()
        os.truncate(path, 0)
        log.write(b"after 0\nafter 1\n")
        follower.pump()
    text = "".join(got)
    assert text.endswith("before 99\n(the log was emptied or replaced while it was shown: from its start again)\n"
                         "after 0\nafter 1\n")


def test_diff_uses_only_the_last_assignments_base_never_an_older_ones(project, tmp_path):
    """#1 was assigned twice; the second time no merge-base could be recorded. Its diff is against the
    merge-base now (and says so), never the base of the first assignment, which may be another fork entirely:
    main moved on and the branch was made again from it."""
    from conftest import git

    proj, old_base = finished_issue(project, tmp_path)
    (proj.repo / "later.txt").write_text("on main since\n")
    git(proj.repo, "add", "-A")
    git(proj.repo, "commit", "-q", "-m", "main moves on")
    git(proj.repo, "push", "-q", "origin", "main")
    git(proj.repo, "branch", "-D", "-q", "feature/issue-1")
    git(proj.repo, "checkout", "-q", "-b", "feature/issue-1")
    (proj.repo / "second.txt").write_text("the second try's work\n")
    git(proj.repo, "add", "-A")
    git(proj.repo, "commit", "-q", "-m", "second try")
    git(proj.repo, "checkout", "-q", "main")
    with open(proj.state / "orchestrator-log.jsonl", "a") as events:
        events.write(json.dumps({"timestamp": "2026-12-06T11:00:00Z", "event": {
            "action": "reassign", "worker": 2, "new_issue": 1, "project": "demo", "branch": "feature/issue-1",
            "resumed": None, "base": None}}) + "\n")

    child = orchestrator("diff", "1", "--stat", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=60)

    assert child.returncode == 0, err
    assert b"second.txt" in out and b"later.txt" not in out, out
    assert b"no merge-base was recorded" in err, err


def test_a_wrapper_killed_while_it_cuts_leaves_a_whole_log_and_its_half_made_file_is_removed_later(tmp_path):
    """kill -9 of the wrapper while a flooding agent's log is cut again and again at the smallest cap: the log
    is whole (its START line, at most one mark, within the cap). A cut's new file a kill left behind (its writer's
    process is gone) is removed when the issue's next try opens its log; one whose writer lives stays."""
    import signal

    from lib import logcut
    from lib.procs import group_members

    logs = tmp_path / "state" / "logs"
    try_log = logs / "issue-1" / "worker-1-try-1.log"
    spec = {"worker": 1, "try": 1, "issue": 1, "stage": "implement", "cwd": str(tmp_path),
            "command": "yes 'flood of a killed try xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'",
            "log": str(logs / "worker-1.log"), "signal": str(tmp_path / "signal"), "pid_file": str(tmp_path / "pid"),
            "agent": "command", "max_log_bytes": logcut.MIN_LOG_CAP, "try_log": str(try_log),
            "env": {"ORCHESTRATOR_TRY": f"{tmp_path}/worker-1/1"}}
    (tmp_path / "try.json").write_text(json.dumps(spec))
    wrapper = subprocess.Popen([sys.executable, str(WRAPPER), str(tmp_path / "try.json")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        retry_until(lambda: try_log.exists() and b"bytes cut here" in try_log.read_bytes()
                    and (tmp_path / "pid").exists(), seconds=60)
        group = int((tmp_path / "pid").read_text())
        wrapper.send_signal(signal.SIGKILL)
        wrapper.wait(timeout=30)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
        group = int((tmp_path / "pid").read_text()) if (tmp_path / "pid").exists() else 0
        if group:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
            retry_until(lambda: not group_members(group), seconds=30)

    data = try_log.read_bytes()
    assert len(data) <= logcut.MIN_LOG_CAP and data.startswith(b"=== START worker-1 try 1 issue #1")
    assert data.count(b"bytes cut here") <= 1

    folder = try_log.parent
    gone = subprocess.Popen(["true"])
    gone.wait()
    for name in (f".worker-1-try-1.log.{gone.pid}-0a1b2c.cut", ".worker-1-try-1.log.cut",
                 f".worker-1-try-1.log.{os.getpid()}-0a1b2c.cut"):
        (folder / name).write_bytes(b"half of a cut\n")
    with logcut.CappedLog(folder / "worker-1-try-2.log", logcut.MIN_LOG_CAP) as log:
        log.write(b"the next try\n")
    assert sorted(p.name for p in folder.glob(".*.cut")) == [f".worker-1-try-1.log.{os.getpid()}-0a1b2c.cut"]


def test_logs_never_read_through_a_symlink_an_agent_put_among_the_try_logs(project, tmp_path):
    """A symlink named like a try's log (to a file of the user's), or logs/issue-1 itself a symlink to a folder
    of forged logs: `logs 1` shows neither (an agent could make it print any file, or a made-up history)."""
    proj, _ = finished_issue(project, tmp_path, log_bytes=300)
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's secret\n")
    folder = proj.state / "logs" / "issue-1"
    (folder / "worker-9-try-9.log").symlink_to(secret)

    child = orchestrator("logs", "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert b"output line 000000000" in out and b"secret" not in out and b"worker-9-try-9" not in out, out

    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "worker-1-try-1.log").write_text("=== START worker-1 try 1 issue #1 stage implement ===\nforged\n")
    folder.rename(tmp_path / "moved-away")
    folder.symlink_to(forged)
    child = orchestrator("logs", "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=60)
    assert b"forged" not in out, out


def test_attach_with_no_tmux_server_or_a_garbage_tmux_variable_is_one_line_and_exit_1(project, tmp_path, capsys,
                                                                                      monkeypatch):
    """A worker holds #1 but the run's tmux server is gone (or $TMUX names garbage, or nothing): one `error:` line
    naming the socket, exit 1; no traceback, no tmux client started."""
    from orchestrator.cli import main
    from orchestrator.run import open_run
    from orchestrator.state import WorkerRecord

    finished_issue(project, tmp_path)
    run = open_run()
    run.files.save_worker(WorkerRecord(1, status="running", project="demo", issue_number=1, branch="feature/issue-1",
                                       stage="implement", try_id=1, launched=True))
    run.server.kill()
    for tmux in ("", "garbage,,", "/nonexistent/socket,1,0", "\x1b[2J"):
        monkeypatch.setenv("TMUX", tmux)
        assert main(["attach", "1"]) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.splitlines()) == 1, captured
        assert captured.err.startswith("error: issue #1: the run's tmux session proof-test has no window worker-1 "
                                       "(socket "), captured.err


def test_a_fifo_at_a_tries_exit_code_or_pid_file_blocks_neither_the_monitor_nor_logs_follow(tmp_path):
    """The exit code and pid files of a running try are read each cycle by the monitor and by `logs --follow`
    (is the try over?): a FIFO an agent put there reads as "no exit code yet" / "no pid", never a wait for a
    writer that never comes."""
    from orchestrator.probe import read_pid
    from orchestrator.state import RunFiles

    files = RunFiles(tmp_path / "state")
    files.signal(1, 1).parent.mkdir(parents=True)
    os.mkfifo(files.signal(1, 1))
    os.mkfifo(tmp_path / "pid")
    for name, read in (("exit code", lambda: files.read_signal(1, 1)), ("pid", lambda: read_pid(tmp_path / "pid"))):
        assert read_without_waiting(read, f"reading the {name} of a FIFO", files.signal(1, 1), tmp_path / "pid") \
            is None, name


def test_a_fifo_at_a_tries_events_file_blocks_neither_the_wrapper_nor_the_monitor(tmp_path):
    """An agent with events whose events file is a FIFO (put there by an agent): the wrapper replaces it and keeps
    the events (the result among them); the monitor's read of a FIFO there is nothing new, never a wait."""
    from orchestrator.probe import read_events
    from orchestrator.state import RunFiles, WorkerRecord

    files = RunFiles(tmp_path / "state")
    events = files.agent_events(1, 1)
    events.parent.mkdir(parents=True)
    os.mkfifo(events)
    record = WorkerRecord(1, try_id=1, agent={"kind": "claude"})
    assert read_without_waiting(lambda: read_events(files, record, 0.0), "the monitor's read of a FIFO events file",
                                events) == 0

    result = json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "done"})
    code, try_log, _ = run_try(tmp_path, f"echo {shlex.quote(result)}", timeout=60, agent="claude",
                               events=str(events))
    assert code == 0
    assert json.loads(events.read_text().splitlines()[-1])["type"] == "result"
    assert "RESULT success" in try_log.read_text()


def test_diff_of_a_branch_deleted_or_moved_by_force_says_what_is_there(project, tmp_path, capsys):
    """The branch deleted: one line saying so, exit 1. Moved by force to another history: the diff is of the
    branch as it is now against the recorded base (what the branch holds, not what it once did), exit 0."""
    from conftest import git
    from orchestrator.cli import main

    proj, base = finished_issue(project, tmp_path)
    tip = git(proj.repo, "rev-parse", "feature/issue-1")
    git(proj.repo, "branch", "-D", "-q", "feature/issue-1")
    assert main(["diff", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: issue #1: branch feature/issue-1 is not in {proj.repo}\n"

    git(proj.repo, "checkout", "-q", "--orphan", "feature/issue-1")
    git(proj.repo, "rm", "-rq", "--cached", ".")
    (proj.repo / "unrelated.txt").write_text("another history\n")
    git(proj.repo, "add", "unrelated.txt")
    git(proj.repo, "commit", "-q", "-m", "forced")
    git(proj.repo, "checkout", "-q", "-f", "main")
    assert main(["diff", "1", "--stat"]) == 0
    out = capsys.readouterr().out
    assert "unrelated.txt" in out and "evil" not in out and tip not in out
    assert out.strip() == git(proj.repo, "diff", "--stat", base, "feature/issue-1").strip()


def test_logs_start_each_header_on_a_line_of_its_own_and_show_a_cut_off_character(project, tmp_path):
    """A try killed mid-line (its log ends without a newline, inside a UTF-8 character): the next try's `==> PATH
    <==` header still starts a line (it read as part of the agent's output), and the cut-off character shows as
    U+FFFD, never silently dropped."""
    proj, _ = finished_issue(project, tmp_path, log_bytes=0)
    folder = proj.state / "logs" / "issue-1"
    (folder / "worker-1-try-1.log").write_bytes(
        b"=== START worker-1 try 1 issue #1 stage implement at 2026-12-06T10:00:00Z ===\nkilled mid-line \xe2\x82")
    (folder / "worker-1-try-2.log").write_bytes(
        b"=== START worker-1 try 2 issue #1 stage implement at 2026-12-06T10:05:00Z ===\nsecond\n")

    child = orchestrator("logs", "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=60)

    assert child.returncode == 0, err
    assert f"killed mid-line \ufffd\n==> {folder / 'worker-1-try-2.log'} <==\n".encode() in out, out


def test_status_never_waits_on_a_fifo_put_at_a_running_tries_log(project, tmp_path):
    """`status` and the dashboard show each running try's last line from its log: a FIFO there (an agent's) gives
    no line, never a status that waits for a writer forever."""
    from orchestrator import report
    from orchestrator.run import open_run
    from orchestrator.state import WorkerRecord

    finished_issue(project, tmp_path)
    run = open_run()
    record = WorkerRecord(1, status="running", project="demo", issue_number=1, try_id=7, launched=True)
    fifo = run.files.try_log(1, 7, 1)
    os.mkfifo(fifo)
    assert read_without_waiting(lambda: report._last_line(run, record), "the last line of a FIFO try log (status)",
                                fifo) == ""


def test_diff_against_a_base_that_is_gone_is_one_line_and_exit_1(project, tmp_path, capsys):
    """The recorded base no longer exists in the repo (pruned, or a repo made again): one line with git's own
    reason, exit 1, nothing on stdout."""
    from orchestrator.cli import main

    proj, base = finished_issue(project, tmp_path)
    events = proj.state / "orchestrator-log.jsonl"
    events.write_text(events.read_text().replace(base, "0" * 40))

    assert main(["diff", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured
    assert captured.err.startswith(f"error: git diff in {proj.repo}: fatal: bad object 0000"), captured.err


def test_diff_never_runs_a_program_through_a_lazy_fetch_an_agent_set_up(project, tmp_path):
    """An agent makes the repo a partial clone whose promisor remote is reached over ssh with its own
    core.sshCommand (and allows ssh outright), then commits a tree naming a blob that is not there: git diff would
    fetch it, running that command. `diff 1` runs nothing: the missing blob is git's error, exit 1."""
    from conftest import git

    proj, base = finished_issue(project, tmp_path)
    ran = tmp_path / "ran"
    tree = subprocess.run(["git", "mktree", "--missing"], cwd=proj.repo, capture_output=True, text=True, check=True,
                          input=f"100644 blob {'1234567890' * 4}\tmissing.txt\n").stdout.strip()
    tip = git(proj.repo, "commit-tree", tree, "-p", "feature/issue-1", "-m", "names a blob that is not here")
    git(proj.repo, "update-ref", "refs/heads/feature/issue-1", tip)
    for key, value in (("core.repositoryformatversion", "1"), ("extensions.partialClone", "origin"),
                       ("remote.origin.promisor", "true"), ("remote.origin.url", "ssh://agent.invalid/x"),
                       ("core.sshCommand", f"touch {shlex.quote(str(ran))}; false"),
                       ("protocol.ssh.allow", "always"), ("protocol.allow", "always")):
        git(proj.repo, "config", key, value)

    child = orchestrator("diff", "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=60)

    assert not ran.exists(), "the agent's ssh command ran"
    assert child.returncode == 1 and len(err.splitlines()) == 1 and b"error: git diff in" in err, err


def test_logs_follow_still_ends_with_the_real_log_after_a_forged_one_longer_than_it(tmp_path):
    """The agent puts a forged log, longer than the real one, at its path while `--follow` reads it; the
    wrapper puts the real log back when the try ends. The follow's last read is of the real log: it ends with
    the real last lines (after a line saying the log was replaced), not with the forgery."""
    from lib import logcut
    from orchestrator.show import Follower

    path = tmp_path / "try.log"
    got: list[str] = []
    follower = Follower(path, logcut.MIN_LOG_CAP, got.append)
    log = logcut.CappedLog(path, logcut.MIN_LOG_CAP)
    log.write(b"real 0\n")
    follower.pump()
    path.unlink()
    path.write_text("forged line\n" * 100)
    follower.pump()
    log.write(b"real 1\n=== EXIT code 0 ===\n")
    log.close()  # the try ends: the real log is put back
    follower.pump(final=True)
    assert "".join(got).endswith("(the log was emptied or replaced while it was shown: from its start again)\n"
                                 "real 0\nreal 1\n=== EXIT code 0 ===\n"), "".join(got)[-300:]


def test_a_fifo_at_a_workers_state_file_is_an_error_line_never_a_wait(project, tmp_path, capsys):
    """`logs`, `diff` and `attach` look up who holds the issue in workers/worker-N.json (so does the monitor, each
    cycle): a FIFO put there is one error line naming it, exit 2, never a wait for a writer."""
    from orchestrator.cli import main

    proj, _ = finished_issue(project, tmp_path)
    (proj.state / "workers").mkdir(parents=True, exist_ok=True)
    fifo = proj.state / "workers" / "worker-1.json"
    os.mkfifo(fifo)
    code = read_without_waiting(lambda: main(["logs", "1"]), "logs on a FIFO worker state file", fifo)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and str(fifo) in err and "FIFO" in err, err
