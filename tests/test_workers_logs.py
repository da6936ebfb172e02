"""Proof workers' logs: one capped log per issue and try (head, cut mark, tail), the worker's log as their index,
and the verbs that show a run: `attach`, `logs [--follow]`, `diff [--stat]`."""
from __future__ import annotations

import os
import re
import shlex
import sys
import tracemalloc
from pathlib import Path

from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from conftest import ROOT
from lib import logcut
from orchestrator.monitor import monitor
from orchestrator.run import open_run

# The wrapper runs as its own process, as in a worker's pane: in this one it would take the test process for the
# try's (it kills whatever is still below it, and becomes a subreaper), and so the other tests' processes too.
WRAPPER = ROOT / "scripts" / "proof-workers" / "orchestrator" / "wrapper.py"


def run_wrapper(spec_path: Path) -> int:
    import subprocess

    return subprocess.run([sys.executable, str(WRAPPER), str(spec_path)], stdout=subprocess.DEVNULL,
                          timeout=300).returncode

MiB = 1024 * 1024
MARK = re.compile(r"^\[\.\.\. (\d+) bytes cut here \(the log's first (\d+) bytes, then its last ones: capped at "
                  r"(\d+) bytes, max_log_bytes\)\]$", re.M)

# An agent that prints FLOOD_MB of numbered lines at full speed, then its last words; then as the script says for
# this issue and try: "fail" (exit 3, nothing committed), "commit" (commit and exit 0), "wait" (commit, then
# print a line every 0.2 s until the file stop-N is there), "quiet" (commit without the flood).
FLOOD_AGENT = r'''
import os, subprocess, sys, time
from pathlib import Path
script, number, stage = sys.argv[1], sys.argv[2], sys.argv[3]
runs = Path(script).parent / "runs"
runs.mkdir(exist_ok=True)
count = runs / f"{number}.count"
attempt = int(count.read_text()) if count.exists() else 0
count.write_text(str(attempt + 1))
plan = Path(script).read_text().split()
behaviour = plan[attempt] if attempt < len(plan) else "commit"
out = sys.stdout.buffer
size = int(float(os.environ.get("FLOOD_MB", "80")) * 1024 * 1024) if behaviour != "quiet" else 0
line = 0
written = 0
while written < size:
    block = b"".join(b"%s try %d flood line %09d %s\n" % (stage.encode(), attempt, line + i, b"x" * 60)
                     for i in range(2000))
    line += 2000
    out.write(block)
    written += len(block)
out.write(b"last words of %s try %d: %s\n" % (stage.encode(), attempt, behaviour.encode()))
out.flush()
if behaviour == "fail":
    print("error: the real cause", flush=True)
    sys.exit(3)
Path(f"work-{number}.txt").open("a").write(f"{stage}\n")
git = ["git", "-c", "user.name=Agent", "-c", "user.email=agent@example.com"]
subprocess.run([*git, "add", "-A"], check=True)
subprocess.run([*git, "commit", "-q", "-m", f"{stage} #{number}"], check=True)
if behaviour == "wait":
    n = 0
    while not (Path(script).parent / f"stop-{number}").exists():
        print(f"still working {n}", flush=True)
        n += 1
        time.sleep(0.2)
    print("stopping now", flush=True)
'''


def flood_project(project, tmp_path: Path, plan: list[str], mb: float = 80, issues=None, **settings):
    agent = tmp_path / "flood_agent.py"
    agent.write_text(FLOOD_AGENT)
    script = tmp_path / "flood-plan.txt"
    script.write_text(" ".join(plan))
    command = (f"FLOOD_MB={mb} exec {shlex.quote(os.path.realpath(sys.executable))} {shlex.quote(str(agent))} "
               f"{shlex.quote(str(script))} {{{{issue.number}}}} {{{{stage}}}}")
    return project(issues or [{"number": 1, "title": "flood"}], agent_command=command, agent="command",
                   **{"pipeline": ["implement", "review"], "stall_timeout": 60, "wall_clock_timeout": 600,
                      "num_workers": 1, **settings})


def kept_and_cut(text: str) -> tuple[int, int]:
    """(bytes of output kept, bytes the mark says were cut) of a log with one mark."""
    marks = MARK.findall(text)
    assert len(marks) == 1, marks
    line = MARK.search(text).group(0) + "\n"
    return len(text.encode()) - len(line.encode()), int(marks[0][0])


# --- the capped log itself -------------------------------------------------------------------------------------

def test_a_capped_log_never_passes_its_cap_while_100_mb_are_written_and_keeps_head_mark_and_tail(tmp_path):
    """100 MiB at full speed into a 50 MiB log: after every write the file is within its cap, memory stays at a
    copy buffer, and the end holds the first lines, one mark saying how much was cut, and the last lines."""
    path = tmp_path / "try.log"
    block = b"".join(b"line %09d %s\n" % (n, b"y" * 50) for n in range(1000))
    total = 0
    tracemalloc.start()
    try:
        with logcut.CappedLog(path, logcut.DEFAULT_LOG_CAP) as log:
            while total < 100 * MiB:
                log.write(block)
                total += len(block)
                assert path.stat().st_size <= logcut.DEFAULT_LOG_CAP
            log.write(b"the last line\n")
            total += len(b"the last line\n")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, peak
    text = path.read_text()
    assert path.stat().st_size <= logcut.DEFAULT_LOG_CAP
    assert text.startswith("line 000000000 ") and text.endswith("y\nthe last line\n")
    kept, cut = kept_and_cut(text)
    assert kept + cut == total  # nothing made up, nothing lost but what the mark counts
    assert not list(tmp_path.glob(".*.cut"))


def test_a_capped_log_reopened_past_its_cut_goes_on_with_the_same_mark(tmp_path):
    """A try resumed with the same files appends to its log: the mark is found again and keeps the count."""
    path = tmp_path / "try.log"
    total = 0
    for _ in range(3):
        with logcut.CappedLog(path, logcut.MIN_LOG_CAP) as log:
            for n in range(3000):
                line = f"entry {n} of a resumed try\n".encode()
                log.write(line)
                total += len(line)
        assert path.stat().st_size <= logcut.MIN_LOG_CAP
    kept, cut = kept_and_cut(path.read_text())
    assert kept + cut == total


def test_a_line_that_looks_like_the_mark_is_not_taken_for_it(tmp_path):
    """An agent printing a mark of its own (in the head) does not fool the count of a later cut."""
    path = tmp_path / "try.log"
    fake = b"[... 5 bytes cut here (the log's first 0 bytes, then its last ones: capped at 1 bytes, max_log_bytes)]\n"
    total = 0
    with logcut.CappedLog(path, logcut.MIN_LOG_CAP) as log:
        for n in range(4000):
            line = fake if n % 100 == 0 else f"entry {n}\n".encode()
            log.write(line)
            total += len(line)
    with logcut.CappedLog(path, logcut.MIN_LOG_CAP) as log:
        log.write(b"more\n" * 5000)
        total += 5 * 5000
    text = path.read_text()
    layout = logcut.read_layout(open(path, "rb"), logcut.MIN_LOG_CAP)
    assert layout is not None
    start, length, cut = layout
    assert len(text.encode()) - length + cut == total


def test_a_follower_reads_a_capped_log_across_its_cuts_without_losing_or_repeating_a_byte(tmp_path):
    """Read as it is written (a read between writes), a log cut many times reads as exactly what was written;
    read rarely, what was cut before it could be read shows as the log's mark, and the end is never lost."""
    from orchestrator.show import Follower

    for every in (1, 5000):
        path = tmp_path / f"every-{every}.log"
        got: list[str] = []
        follower = Follower(path, logcut.MIN_LOG_CAP, got.append)
        written = []
        with logcut.CappedLog(path, logcut.MIN_LOG_CAP) as log:
            for n in range(20000):
                line = f"line {n}\n"
                log.write(line.encode())
                written.append(line)
                if n % every == 0:
                    follower.pump()
        follower.pump()
        text = "".join(got)
        if every == 1:
            assert text == "".join(written)
        else:
            assert text.endswith("line 19998\nline 19999\n") and text.startswith("line 0\nline 1\n")
            marks = re.findall(r"^\[\.\.\. (\d+) bytes cut here \(cut from the log before it could be shown\)\]$",
                               text, re.M)
            assert marks and "line 19000\n" in text
            shown_and_cut = len(text.encode()) - sum(len(m) + 66 for m in marks) + sum(map(int, marks))
            # all that was written (and a newline before each mark that cut into a line)
            assert 0 <= shown_and_cut - len("".join(written).encode()) <= len(marks)
            whole = re.sub(r"[^\n]*\n\[\.\.\. .*\n", "", text)  # the line a mark cut into is not whole
            numbers = [int(x) for x in re.findall(r"^line (\d+)$", whole, re.M)]
            assert numbers == sorted(set(numbers))  # in order, never twice


# --- the wrapper's logs in a run ---------------------------------------------------------------------------------

def test_an_agent_printing_80_mb_per_stage_leaves_capped_logs_per_issue_and_try_and_loses_nothing_else(
        project, tmp_path):
    """#1's first try floods 80 MiB and fails, its retry floods and commits, its review floods and commits: each
    try has its own log under logs/issue-1/, within the cap, with its head, one mark and its tail (the EXIT line
    with the exit code); the worker's log only indexes them; the retry's prompt has the failed try's last words."""
    import threading

    proj = flood_project(project, tmp_path, ["fail", "commit", "commit"])
    lines: list[str] = []
    largest, done = [0], threading.Event()

    def sample() -> None:  # the cap holds while the agent writes, not only once it is done
        while not done.is_set():
            for path in (proj.state / "logs").glob("**/*"):
                try:
                    largest[0] = max(largest[0], path.stat().st_size)
                except OSError:
                    pass
            done.wait(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lines.append)
    finally:
        done.set()
        sampler.join()
    assert 0 < largest[0] <= logcut.DEFAULT_LOG_CAP

    assert failed == 0, lines
    assert proj.issue(1)["status"] == "completed"
    logs = proj.state / "logs"
    tries = sorted((logs / "issue-1").glob("*.log"))
    assert [p.name for p in tries] == ["worker-1-try-1.log", "worker-1-try-2.log", "worker-1-try-3.log"]
    for path, stage, attempt, code in zip(tries, ("implement", "implement", "review"), (0, 1, 2), (3, 0, 0)):
        assert path.stat().st_size <= logcut.DEFAULT_LOG_CAP
        text = path.read_text()
        first, second = text.splitlines()[:2]
        assert first.startswith(f"=== START worker-1 try {path.stem[-1]} issue #1 stage {stage}")
        assert second.startswith(f"{stage} try {attempt} flood line 000000000 ")
        kept, cut = kept_and_cut(text)
        assert cut > 30 * MiB
        ending = text.splitlines()[-3:]
        behaviour = "fail" if code else "commit"
        assert ending[0] == f"last words of {stage} try {attempt}: {behaviour}" or \
            ending[1] == f"last words of {stage} try {attempt}: {behaviour}"
        assert ending[-1].startswith(f"=== EXIT code {code} worker-1 try {path.stem[-1]} issue #1")
    index = (logs / "worker-1.log").read_text().splitlines()
    assert len(index) == 6 and all(line.startswith(("=== START", "=== EXIT")) for line in index)
    assert all(f"log {tries[n // 2]}" in line for n, line in enumerate(index))
    assert [line.split()[3] for line in index if "EXIT" in line] == ["3", "0", "0"]
    retry_prompt = (proj.state / "prompts" / "worker-1-try-2.md").read_text()
    assert "error: the real cause" in retry_prompt and "exit code 3" in retry_prompt


def test_max_log_bytes_is_validated_and_used_by_every_try(project, tmp_path, capsys):
    """A bad max_log_bytes is a config error (one line, exit 2); a good one caps each try's log."""
    import json

    from orchestrator.cli import main

    proj = flood_project(project, tmp_path, ["commit", "commit"], mb=1, max_log_bytes=64 * 1024)
    good = proj.config.read_text()
    for bad in (1000, -5, "big", 1.5e6, True, None):
        proj.config.write_text(json.dumps({**json.loads(good), "max_log_bytes": bad}))
        assert main(["status"]) == 2
        err = capsys.readouterr().err
        assert "max_log_bytes: must be" in err and len(err.splitlines()) == 1, err
    proj.config.write_text(good)

    failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None)

    assert failed == 0
    tries = sorted((proj.state / "logs" / "issue-1").glob("*.log"))
    assert len(tries) == 2
    for path in tries:
        assert path.stat().st_size <= 64 * 1024
        kept, cut = kept_and_cut(path.read_text())
        assert kept + cut > 1024 * 1024


# --- the verbs: logs, diff, attach -------------------------------------------------------------------------------

def _orchestrator(*args: str, **popen):
    """`python3 -m orchestrator ARGS` as a user runs it (a process of its own)."""
    import subprocess

    from conftest import ROOT
    from workers_fixtures import monitor_env

    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=ROOT / "scripts" / "proof-workers",
                            env=monitor_env(popen.pop("env", None)), **popen)


def _monitor():
    import subprocess

    return _orchestrator("monitor", "--cycle", "0.2", "--no-delay", stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)


def _waiting(proj, number: int, worker: int | None = None) -> bool:
    logs = list((proj.state / "logs" / f"issue-{number}").glob("*.log"))
    return any("still working 2" in p.read_text(errors="replace") for p in logs)


def test_logs_and_diff_of_an_issue_with_a_running_monitor_then_without_one(project, tmp_path, inv):
    """While the monitor runs: `logs 1` prints the running try's log under its name, `logs 1 --follow` keeps
    printing and ends by itself when the try ends, `diff 1 [--stat]` shows the branch's commit. After the run,
    with no monitor (and no tmux): the same, from the files and git alone."""
    import subprocess

    from conftest import git

    proj = flood_project(project, tmp_path, ["wait"], mb=0.5, pipeline=["implement"],
                         issues=[{"number": 1, "title": "waits"},
                                 {"number": 2, "title": "done before", "status": "completed"}])
    monitor = _monitor()
    try:
        retry_until(lambda: _waiting(proj, 1), seconds=60)
        shown = inv("workers.logs", "1")
        assert shown.code == 0, shown.err
        path = proj.state / "logs" / "issue-1" / "worker-1-try-1.log"
        assert shown.out.startswith(f"==> {path} <==\n=== START worker-1 try 1 issue #1 stage implement")
        assert "implement try 0 flood line 000000000" in shown.out and "still working 2" in shown.out
        stat = inv("workers.diff", "1", "--stat")
        assert stat.code == 0, stat.err
        assert "work-1.txt | 1 +" in stat.out and "1 file changed" in stat.out
        follow_out = tmp_path / "follow.out"
        with open(follow_out, "wb") as sink:
            follower = _orchestrator("logs", "1", "--follow", stdout=sink, stderr=subprocess.PIPE)
        try:
            retry_until(lambda: "still working" in follow_out.read_text(errors="replace").split("following")[-1],
                        seconds=30)
            (tmp_path / "stop-1").touch()
            _, err = follower.communicate(timeout=60)  # ends by itself: the try ended
        finally:
            if follower.poll() is None:
                follower.kill()
        assert follower.returncode == 0, err
        followed = follow_out.read_text()
        assert followed.startswith(f"==> {path} <== (following until the try ends; Ctrl-C stops)\n")
        assert "stopping now\n" in followed and "=== EXIT code 0 worker-1 try 1 issue #1" in followed
        assert monitor.wait(timeout=60) == 0
    finally:
        if monitor.poll() is None:
            monitor.kill()
    assert proj.issue(1)["status"] == "completed"

    # No monitor now; its tmux server is gone too.
    from orchestrator.run import open_run

    open_run().server.kill()
    shown = inv("workers.logs", "1")
    assert shown.code == 0 and shown.out == f"==> {path} <==\n" + path.read_text()
    gone = inv("workers.attach", "1")
    assert gone.code == 1 and gone.err == "error: issue #1 has no worker now (not running): `logs 1` shows its tries\n"
    after = inv("workers.logs", "1", "--follow")
    assert after.code == 0 and after.out.endswith("(#1 has no running try: nothing to follow)\n")
    base = next(e["base"] for e in proj.events() if e["action"] == "reassign")
    # #1 is merged into main: the merge-base now is its own tip, yet its diff is still what it did since assigned.
    git(proj.repo, "merge", "-q", "--ff-only", "feature/issue-1")
    git(proj.repo, "push", "-q", "origin", "main")
    assert git(proj.repo, "merge-base", "origin/main", "feature/issue-1") != base
    full = inv("workers.diff", "1")
    assert full.code == 0, full.err
    assert full.out.strip() == git(proj.repo, "diff", base, "feature/issue-1")
    assert "+implement" in full.out and full.err == ""


def test_bad_input_is_one_line_and_exit_2(project, tmp_path, inv, capsys):
    """An unknown issue, an issue never assigned, a number that is none: one `error:` line, exit 2, all verbs."""
    from orchestrator.cli import main

    flood_project(project, tmp_path, ["quiet"], mb=0, issues=[{"number": 1, "title": "never started"}])
    for verb in ("logs", "diff", "attach"):
        for number, words in (("99", "issue #99 is not in"), ("1", "was never assigned")):
            result = inv(f"workers.{verb}", number)
            assert result.code == 2 and result.out == "", result
            assert len(result.err.strip().splitlines()) == 1 and words in result.err, result.err
        for bad in ("0", "x1", "-3"):
            assert main([verb, bad]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert main([verb, "1", "--project", "nope"]) == 2
        assert "no project 'nope' in this run" in capsys.readouterr().err


def test_logs_follow_stops_on_ctrl_c_with_exit_130_and_no_traceback(project, tmp_path):
    import signal
    import subprocess

    proj = flood_project(project, tmp_path, ["wait"], mb=0, pipeline=["implement"])
    monitor = _monitor()
    try:
        retry_until(lambda: _waiting(proj, 1), seconds=60)
        from conftest import stop_when

        sink = tmp_path / "follow.out"
        with open(sink, "wb") as out:
            follower = _orchestrator("logs", "1", "--follow", stdout=out, stderr=subprocess.PIPE)
        _, err = stop_when(follower, lambda: "still working" in sink.read_text().split("following until")[-1],
                           signum=signal.SIGINT)
        assert follower.returncode == 130 and b"Traceback" not in err, err
        assert proj.issue(1)["status"] == "in_progress"  # the try goes on: only the viewer stopped
    finally:
        (tmp_path / "stop-1").touch()
        try:
            monitor.wait(timeout=60)
        finally:
            if monitor.poll() is None:
                monitor.kill()


class Terminal:
    """A pseudo-terminal running a command (a tmux client needs one); its output is read and dropped."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        import fcntl
        import pty
        import struct
        import subprocess
        import termios
        import threading

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
                                        start_new_session=True)
        os.close(slave)
        self.master = master
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        try:
            while os.read(self.master, 65536):
                pass
        except OSError:
            pass

    def close(self) -> int | None:
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _clients(server) -> list[str]:
    return sorted(server.cmd("list-clients", "-F", "#{session_name} #{window_name}").stdout)


def _holder(proj, number: int) -> int:
    import json

    for path in (proj.state / "workers").glob("worker-*.json"):
        doc = json.loads(path.read_text())
        if doc.get("issue_number") == number:
            return doc["worker_id"]
    raise AssertionError(f"no worker holds #{number}")


def test_attach_selects_the_issues_worker_window_from_a_terminal_and_from_inside_tmux_with_and_without_a_monitor(
        project, tmp_path, tmux_socket):
    """Two issues run on two workers. `attach 2` from a terminal attaches a tmux client on the run's socket with
    #2's worker window selected; from inside a pane of that tmux server, it switches that client there (no nested
    tmux). After the monitor is killed, the agents still run in their windows and attach still finds them."""
    import signal

    from conftest import ROOT
    from workers_fixtures import monitor_env

    proj = flood_project(project, tmp_path, ["wait"], mb=0, pipeline=["implement"], num_workers=2,
                         issues=[{"number": 1, "title": "a"}, {"number": 2, "title": "b"}])
    env = {k: v for k, v in monitor_env({"TERM": "xterm"}).items() if k not in ("TMUX", "TMUX_PANE")}
    package = ROOT / "scripts" / "proof-workers"
    attach = [sys.executable, "-m", "orchestrator", "attach"]
    monitor = _monitor()
    try:
        retry_until(lambda: _waiting(proj, 1) and _waiting(proj, 2), seconds=60)
        first, second = _holder(proj, 1), _holder(proj, 2)
        assert first != second
        for number, worker in ((2, second), (1, first)):
            terminal = Terminal([*attach, str(number)], env, package)
            retry_until(lambda: _clients(tmux_socket) == [f"proof-test worker-{worker}"], seconds=30)
            tmux_socket.cmd("detach-client", "-s", "=proof-test")
            assert terminal.close() == 0

        # Inside tmux: a client sits on another session; `attach 2` run in its pane moves that client.
        tmux_socket.cmd("new-session", "-d", "-s", "elsewhere", "-x", "80", "-y", "24")
        client = Terminal(["tmux", "-L", tmux_socket.socket_name, "attach-session", "-t", "=elsewhere"], env)
        retry_until(lambda: [c.split()[0] for c in _clients(tmux_socket)] == ["elsewhere"], seconds=30)
        line = f"cd {shlex.quote(str(package))} && exec {shlex.join([*attach, '2'])} > {tmp_path / 'inside.out'} 2>&1"
        tmux_socket.cmd("new-window", "-t", "=elsewhere:", "-e", f"ORCHESTRATOR_HOME={env['ORCHESTRATOR_HOME']}",
                        "-e", f"ORCHESTRATOR_TMUX_SOCKET={tmux_socket.socket_name}", line)
        retry_until(lambda: _clients(tmux_socket) == [f"proof-test worker-{second}"], seconds=30)
        assert (tmp_path / "inside.out").read_text() == ""
        tmux_socket.cmd("detach-client", "-a")
        tmux_socket.cmd("detach-client", "-s", "=proof-test")
        client.close()

        monitor.send_signal(signal.SIGKILL)
        monitor.wait(timeout=30)
        terminal = Terminal([*attach, "1"], env, package)
        retry_until(lambda: _clients(tmux_socket) == [f"proof-test worker-{first}"], seconds=30)
        tmux_socket.cmd("detach-client", "-s", "=proof-test")
        assert terminal.close() == 0
    finally:
        for number in (1, 2):
            (tmp_path / f"stop-{number}").touch()
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait()


def test_a_hostile_try_log_path_is_never_written_through_and_the_exit_code_always_lands(tmp_path):
    """A symlink planted at the try's log (to a file of the user's) is replaced, not written through; a log that
    cannot be made at all (a directory there) still lets the agent run and its exit code reach the signal file."""
    import json

    victim = tmp_path / "bashrc"
    victim.write_text("keep me\n")
    logs = tmp_path / "state" / "logs"
    (logs / "issue-1").mkdir(parents=True)
    (logs / "issue-1" / "worker-1-try-1.log").symlink_to(victim)
    (logs / "issue-1" / ".worker-1-try-1.log.cut").symlink_to(victim)  # where a cut writes first
    (logs / "issue-1" / "worker-1-try-2.log").mkdir()

    def spec(try_id: int) -> dict:
        return {"worker": 1, "try": try_id, "issue": 1, "stage": "implement", "cwd": str(tmp_path),
                "command": "head -c 200000 /dev/zero | tr '\\0' 'z'; echo; echo done; exit 4",
                "log": str(logs / "worker-1.log"), "signal": str(tmp_path / f"signal-{try_id}"),
                "pid_file": str(tmp_path / f"pid-{try_id}"), "agent": "command", "max_log_bytes": 65536,
                "try_log": str(logs / "issue-1" / f"worker-1-try-{try_id}.log")}

    for try_id in (1, 2):
        path = tmp_path / f"try-{try_id}.json"
        path.write_text(json.dumps(spec(try_id)))
        assert run_wrapper(path) == 4
        assert (tmp_path / f"signal-{try_id}").read_text() == "4\n"
    assert victim.read_text() == "keep me\n"
    kept = logs / "issue-1" / "worker-1-try-1.log"
    assert not kept.is_symlink() and kept.stat().st_size <= 65536 and kept.read_text().endswith(
        "done\n" + kept.read_text().splitlines()[-1] + "\n")
    index = (logs / "worker-1.log").read_text()
    assert "wrapper: cannot write the try's log" in index and index.count("=== EXIT code 4") == 2


def test_logs_skip_a_fifo_put_at_a_try_log_and_escape_what_drives_the_terminal(project, tmp_path):
    """A FIFO where a try's log should be is skipped (reading it would wait forever for a writer); an agent's
    escape sequences are shown escaped, never sent to the terminal raw."""
    import subprocess

    proj = flood_project(project, tmp_path, ["quiet"], mb=0)
    folder = proj.state / "logs" / "issue-1"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "worker-1-try-1.log")
    (folder / "worker-1-try-2.log").write_bytes(
        b"=== START worker-1 try 2 issue #1 stage implement at 2026-12-06T10:00:00Z ===\n\x1b]0;owned\x07\x1b[2Jok\n")
    shown = _orchestrator("logs", "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = shown.communicate(timeout=60)
    assert shown.returncode == 0, err
    assert out.decode() == (f"==> {folder / 'worker-1-try-2.log'} <==\n=== START worker-1 try 2 issue #1 stage "
                            "implement at 2026-12-06T10:00:00Z ===\n\\x1b]0;owned\\x07\\x1b[2Jok\n")


def test_two_projects_with_the_same_issue_number_need_project_and_show_only_their_own_tries(
        make_repo, home, tmp_path, capsys):
    """Both projects of a run number from 1 and their tries' logs share logs/issue-1/ (the lead's state dir): the
    number alone is refused (which one?), and --project shows that project's tries only (their spec says whose)."""
    import json

    from orchestrator.cli import main

    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("alpha", "beta"):
        repo = make_repo(name)
        (configs / f"{name}-issues.json").write_text(json.dumps({
            "project": name, "repo_path": str(repo.path), "worktree_base": str(tmp_path / f"wt-{name}"),
            "branch_prefix": f"{name}/issue-", "default_branch": "main", "pipeline": ["implement"],
            "agent": "command", "agent_command": "true", "issues": [{"number": 1, "title": f"{name} one"}]}))
    state = home.path / "state" / "alpha"  # the lead's
    for try_id, name in ((1, "alpha"), (2, "beta")):
        (state / "tries").mkdir(parents=True, exist_ok=True)
        (state / "tries" / f"worker-1-try-{try_id}.json").write_text(json.dumps({"project": name}))
        log = state / "logs" / "issue-1" / f"worker-1-try-{try_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"=== START worker-1 try {try_id} issue #1 stage implement at 2026-12-06T10:0{try_id}:00Z ===\n"
                       f"{name}'s work\n")

    assert main(["logs", "1", "--config-dir", str(configs)]) == 2
    assert "issue #1 is in several projects (alpha, beta): give --project" in capsys.readouterr().err
    for name in ("alpha", "beta"):
        assert main(["logs", "1", "--config-dir", str(configs), "--project", name]) == 0
        out = capsys.readouterr().out
        assert f"{name}'s work" in out and out.count("==> ") == 1


def test_logs_follow_without_a_monitor_ends_when_the_try_is_killed_outright(project, tmp_path, tmux_socket):
    """The monitor is gone (kill -9), then the try's wrapper and agent are killed outright: no exit code will ever
    be written, yet `logs --follow` ends once none of the try's processes is left, with what the log had."""
    import signal
    import subprocess

    from lib import procs

    proj = flood_project(project, tmp_path, ["wait"], mb=0, pipeline=["implement"])
    monitor = _monitor()
    try:
        retry_until(lambda: _waiting(proj, 1), seconds=60)
        monitor.send_signal(signal.SIGKILL)
        monitor.wait(timeout=30)
        sink = tmp_path / "follow.out"
        with open(sink, "wb") as out:
            follower = _orchestrator("logs", "1", "--follow", stdout=out, stderr=subprocess.PIPE)
        try:
            retry_until(lambda: "still working" in sink.read_text().split("following until")[-1], seconds=30)
            pane_pid = int(tmux_socket.cmd("list-panes", "-t", "=proof-test:=worker-1", "-F",
                                           "#{pane_pid}").stdout[0])
            group = int((proj.state / "signals" / "worker-1-try-1.pid").read_text())
            os.kill(pane_pid, signal.SIGKILL)  # the wrapper: it never writes the exit code now
            os.killpg(group, signal.SIGKILL)
            retry_until(lambda: not procs.group_members(group), seconds=30)
            _, err = follower.communicate(timeout=60)
        finally:
            if follower.poll() is None:
                follower.kill()
        assert follower.returncode == 0, err
        assert not (proj.state / "signals" / "worker-1-try-1.exit").exists()
        assert "still working" in sink.read_text() and "=== EXIT" not in sink.read_text()
    finally:
        if monitor.poll() is None:
            monitor.kill()


def test_an_agent_with_events_gets_the_same_capped_try_log_with_its_result_and_exit_at_the_end(tmp_path):
    """Claude-style events, 20 MB of them: the readable try log is the same capped log (head, mark, tail), its
    tail has the RESULT line and the EXIT line; the raw stream keeps the result event."""
    import json

    agent = tmp_path / "events_agent.py"
    agent.write_text(
        "import json, sys\n"
        "out = sys.stdout\n"
        "for n in range(60000):\n"
        "    out.write(json.dumps({'type': 'assistant', 'message': {'id': f'm{n}', 'content': [\n"
        "        {'type': 'text', 'text': f'thinking step {n} ' + 'z' * 300}]}}) + '\\n')\n"
        "out.write(json.dumps({'type': 'result', 'subtype': 'success', 'is_error': False, 'num_turns': 3,\n"
        "                      'total_cost_usd': 0.25, 'result': 'done'}) + '\\n')\n")
    logs = tmp_path / "state" / "logs"
    spec = {"worker": 1, "try": 1, "issue": 7, "stage": "implement", "cwd": str(tmp_path),
            "command": f"{shlex.quote(sys.executable)} {shlex.quote(str(agent))}", "agent": "claude",
            "log": str(logs / "worker-1.log"), "signal": str(tmp_path / "signal"), "pid_file": str(tmp_path / "pid"),
            "events": str(tmp_path / "state" / "tries" / "worker-1-try-1.events.jsonl"),
            "try_log": str(logs / "issue-7" / "worker-1-try-1.log"), "max_log_bytes": 1024 * 1024}
    (tmp_path / "try.json").write_text(json.dumps(spec))

    assert run_wrapper(tmp_path / "try.json") == 0

    log = logs / "issue-7" / "worker-1-try-1.log"
    text = log.read_text()
    assert log.stat().st_size <= 1024 * 1024
    assert "assistant: thinking step 0 " in text.splitlines()[1]
    kept, cut = kept_and_cut(text)
    assert cut > 10 * MiB
    ending = text.splitlines()[-3:]
    assert "thinking step 59999" in ending[0] and "RESULT success" in ending[1] and ending[2].startswith(
        "=== EXIT code 0 worker-1 try 1 issue #7 stage implement (agent claude; log ")
    raw = (tmp_path / "state" / "tries" / "worker-1-try-1.events.jsonl").read_text().splitlines()
    assert json.loads(raw[-1])["type"] == "result"
