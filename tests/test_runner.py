"""The process-group runner: real shells, real grandchildren, real signals."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib.procs import group_members, processes_tagged
from lib.runner import run_in_group
from tests.conftest import ROOT, process_running, wait_gone


def run(command: str, tmp_path: Path, timeout: float | None = 10, grace: float = 0.5, echo=None,
        started_by: str = "Popen"):
    """`started_by` posix_spawn: no directory to change to, so the runner starts it without Popen (and, without
    an echo, copies its output in the waiting thread)."""
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        result = run_in_group(command, tmp_path if started_by == "Popen" else None, log, timeout, grace=grace,
                              echo=echo)
    return result, log_path.read_bytes()


@pytest.fixture(params=["Popen", "posix_spawn"])
def started_by(request) -> str:
    return request.param


def test_exit_code_and_output_go_to_the_log(tmp_path, started_by):
    result, out = run("echo hello; echo oops >&2; exit 3", tmp_path, started_by=started_by)
    assert result.exit_code == 3 and not result.timed_out
    assert out == b"hello\noops\n"


def test_timeout_kills_the_whole_group_even_a_grandchild_that_ignores_sigterm(tmp_path, started_by):
    pidfile = tmp_path / "grandchild.pid"
    command = (f"sh -c 'trap \"\" TERM; echo $$ > {pidfile}; while :; do sleep 0.1; done' & "
               "sleep 60")
    started = time.monotonic()
    result, out = run(command, tmp_path, timeout=1, grace=0.5, started_by=started_by)
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 50, "the run waited for the 60 s sleep"
    assert wait_gone(int(pidfile.read_text())), "a grandchild survived the timeout"


def test_background_leftovers_do_not_outlive_the_command(tmp_path, started_by):
    pidfile = tmp_path / "bg.pid"
    result, _ = run(f"sleep 30 & echo $! > {pidfile}", tmp_path, grace=0.5, started_by=started_by)
    assert result.exit_code == 0
    assert wait_gone(int(pidfile.read_text()), 1.0)


def test_invalid_utf8_output_is_kept_as_bytes(tmp_path):
    result, out = run("printf 'ok \\377\\376 bytes\\n'", tmp_path)
    assert result.exit_code == 0 and out == b"ok \xff\xfe bytes\n"


def test_echo_copies_output_to_the_terminal_stream_and_the_log(tmp_path):
    echo = io.BytesIO()
    result, out = run("printf 'a\\nb\\n'", tmp_path, echo=echo)
    assert result.exit_code == 0 and out == echo.getvalue() == b"a\nb\n"


@pytest.mark.parametrize("echo", [False, True], ids=["to-log", "to-log-and-echo"])
def test_huge_output_streams_without_growing_memory(tmp_path, echo, started_by):
    """200 MB of output: the parent's peak memory stays small (measured in a fresh process, as VmHWM: getrusage's
    ru_maxrss keeps the high-water mark of the process it was forked from, a test worker grown past 100 MB)."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from pathlib import Path\n"
        "from lib.runner import run_in_group\n"
        "log = open(%r, 'wb')\n"
        "sink = open('/dev/null', 'wb') if %r else None\n"
        "r = run_in_group('head -c 200000000 /dev/zero', %s, log, 60, echo=sink)\n"
        "log.close()\n"
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]\n"
        "print(r.exit_code, hwm)\n"
    ) % (str(ROOT), str(tmp_path / "big.log"), echo, f"Path({str(tmp_path)!r})" if started_by == "Popen" else "None")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    exit_code, peak_kb = out.stdout.split()
    assert exit_code == "0", out.stderr
    assert (tmp_path / "big.log").stat().st_size == 200_000_000
    assert int(peak_kb) < 100_000, f"peak RSS {peak_kb} kB"


def test_no_group_members_left_after_a_normal_run(tmp_path, started_by):
    pidfile = tmp_path / "pgid"
    result, _ = run(f"echo $$ > {pidfile}; sleep 0.2", tmp_path, started_by=started_by)
    assert result.exit_code == 0
    assert group_members(int(pidfile.read_text())) == []


@pytest.mark.parametrize("echo", [None, io.BytesIO()], ids=["to-log", "to-log-and-echo"])
def test_a_process_that_left_the_group_is_killed_with_the_step_and_named(tmp_path, echo, started_by):
    """`setsid sleep 1000 &` must neither outlive the step nor hold the run hostage."""
    pidfile = tmp_path / "daemon.pid"
    # The command waits for the daemon to have left the group, so the group kill cannot race it.
    result, out = run(f"setsid sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; "
                      f"while :; do echo still here; sleep 0.1; done' & "
                      f"while [ ! -s {pidfile} ]; do sleep 0.05; done; echo started", tmp_path,
                      timeout=20, echo=echo, started_by=started_by)
    daemon = int(pidfile.read_text())
    try:
        assert result.exit_code == 0 and not result.timed_out  # held hostage, it would have timed out
        assert b"started" in out
        assert wait_gone(daemon, 2), "the process that left the group outlived the step"
        assert str(daemon) in [name.split()[0] for name in result.escaped]
        size = (tmp_path / "run.log").stat().st_size
        time.sleep(0.3)
        assert (tmp_path / "run.log").stat().st_size == size, "something still writes to the log"
    finally:
        if process_running(daemon):
            os.kill(daemon, 9)


def test_leftovers_of_other_concurrent_steps_are_not_touched(tmp_path):
    """Each step kills only its own escaped processes, not those of a step still running."""
    import threading

    pidfile, release = tmp_path / "other.pid", tmp_path / "release"
    other_log = open(tmp_path / "other.log", "wb")
    other = threading.Thread(target=run_in_group, args=(
        f"setsid sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; sleep 300' & "
        f"while [ ! -e {release} ]; do sleep 0.05; done", tmp_path, other_log, 600), kwargs={"grace": 0.5})
    other.start()
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists():
            assert time.monotonic() < deadline, "the other step never started"
            time.sleep(0.05)
        result, _ = run("setsid sleep 0.1 & sleep 0.3", tmp_path, grace=0.5)
        assert result.exit_code == 0
        assert process_running(int(pidfile.read_text())), "a step killed another step's process"
    finally:
        release.touch()
        other.join()
        other_log.close()
    assert wait_gone(int(pidfile.read_text()), 2), "the other step's escaped process outlived it"


def test_killed_by_a_signal_is_128_plus_the_signal(tmp_path, started_by):
    result, _ = run("kill -9 $$", tmp_path, started_by=started_by)
    assert result.exit_code == 137 and result.signum == signal.SIGKILL and result.killed_by == "SIGKILL"
    assert not result.timed_out


@pytest.mark.parametrize("echo", [None, io.BytesIO()], ids=["to-log", "to-log-and-echo"])
def test_a_log_that_cannot_be_written_stops_the_command_with_the_reason(tmp_path, echo, started_by):
    started = time.monotonic()
    with open("/dev/full", "wb", buffering=0) as log:
        result = run_in_group("echo first; sleep 30", tmp_path if started_by == "Popen" else None, log, 60, grace=0.5,
                              echo=echo)
    assert time.monotonic() - started < 25, "the command ran on (its 30 s sleep) although nothing could be logged"
    assert result.log_error == "No space left on device"


class ClosedPipe(io.RawIOBase):
    def write(self, data):
        raise BrokenPipeError(32, "Broken pipe")


def test_closed_echo_stream_stops_the_echo_not_the_command_or_its_log(tmp_path):
    result, out = run("seq 1 200000", tmp_path, timeout=20, echo=ClosedPipe())
    assert result.exit_code == 0 and not result.timed_out
    assert out.endswith(b"199999\n200000\n")


class SlowEcho(io.RawIOBase):
    """A terminal that stops reading for a while (a pager, Ctrl-S)."""

    def __init__(self):
        self.stalled = False

    def write(self, data):
        if not self.stalled:
            self.stalled = True
            time.sleep(2)
        return len(data)


def test_a_stalled_echo_reader_costs_nothing_in_the_log(tmp_path):
    result, out = run("seq 1 30000; echo last line", tmp_path, timeout=30, echo=SlowEcho())
    assert result.exit_code == 0
    assert out.endswith(b"30000\nlast line\n")


# A step that, on its first SIGTERM, notes whether every other step still lives, and ends once both have
# looked. (Alive: in /proc and not a zombie; a killed step can linger as one, and `kill -0` would count it.)
TOGETHER_STEP = """trap 'trap "" TERM
for f in "$2"/pid*; do
  case "$(sed "s/.*) //" "/proc/$(cat "$f")/stat" 2>/dev/null)" in ""|Z*) echo "after $f";; esac
done > "$2/verdict$1.tmp"
echo seen >> "$2/verdict$1.tmp"; mv "$2/verdict$1.tmp" "$2/verdict$1"
while [ ! -e "$2/verdict0" ] || [ ! -e "$2/verdict1" ]; do sleep 0.05; done; exit 0' TERM
echo $$ > "$2/pid$1.tmp"; mv "$2/pid$1.tmp" "$2/pid$1"
while :; do sleep 0.1; done
"""

INTERRUPTED_RUN = """
import sys, time; sys.path.insert(0, %r)
from pathlib import Path
from lib.runner import run_each, run_in_group
tmp = Path(%r)
def work(i):
    with open(tmp / f"log{i}", "wb") as log:
        return run_in_group(f"sh {tmp}/step.sh {i} {tmp}", tmp, log, 600)
run_each(list(range(3)), work, jobs=2, grace=60.0)
"""


def test_ctrl_c_kills_every_running_group_at_once_and_starts_no_more(tmp_path):
    """Both steps get SIGTERM before either is gone (one at a time would cost a grace each), and none starts after."""
    (tmp_path / "step.sh").write_text(TOGETHER_STEP)
    child = subprocess.Popen([sys.executable, "-c", INTERRUPTED_RUN % (str(ROOT), str(tmp_path))],
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("pid?"))) < 2:
            assert time.monotonic() < deadline, "the steps never started"
            time.sleep(0.05)
        pids = [int(p.read_text()) for p in tmp_path.glob("pid?")]
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert b"RunInterrupted: interrupted: stopped 2 running commands (SIGINT)" in err
    assert [(tmp_path / f"verdict{i}").read_text() for i in (0, 1)] == ["seen\n"] * 2, \
        "a step was gone before the other got its SIGTERM"
    assert all(wait_gone(pid, 10) for pid in pids)
    assert not (tmp_path / "pid2").exists(), "a queued command started after Ctrl-C"


def test_orphans_of_a_step_are_reparented_to_the_tool_not_to_init(tmp_path):
    """The tool is a child subreaper: a process whose parent exits stays ours to find and kill."""
    result, out = run("(sleep 5 & echo $! > orphan.pid); sleep 0.3; "
                      "awk '{print $4}' /proc/$(cat orphan.pid)/stat", tmp_path, grace=0.5)
    assert result.exit_code == 0
    assert out.decode().strip() == str(os.getpid())
    assert wait_gone(int((tmp_path / "orphan.pid").read_text()), 2)


def test_a_timeout_gives_the_group_and_what_left_it_one_grace_together(tmp_path):
    """Both ignore SIGTERM: the daemon must get its SIGTERM while the group still lives, not a grace later.

    Killing the group first and the daemon after cost the grace twice (timeout + 10 s, not + 5 s). Each
    side ends once the daemon has looked, so the long grace costs nothing when the signals come together.
    """
    group_pid, verdict, daemon_pid = tmp_path / "group.pid", tmp_path / "verdict", tmp_path / "daemon.pid"
    daemon = tmp_path / "daemon.sh"
    daemon.write_text(f"trap 'trap \"\" TERM; if kill -0 $(cat {group_pid}) 2>/dev/null; then echo together; "
                      f"else echo after; fi > {verdict}.tmp; mv {verdict}.tmp {verdict}; exit 0' TERM\n"
                      f"echo $$ > {daemon_pid}\nwhile :; do sleep 0.1; done\n")
    command = (f"setsid sh {daemon} & while [ ! -s {daemon_pid} ]; do sleep 0.05; done; "
               f"trap '' TERM; echo $$ > {group_pid}; while [ ! -e {verdict} ]; do sleep 0.1; done")
    result, _ = run(command, tmp_path, timeout=1, grace=60)
    assert result.timed_out and len(result.escaped) >= 1
    assert verdict.read_text() == "together\n"
    assert wait_gone(int(daemon_pid.read_text()), 10)


def test_processes_tagged_finds_a_process_by_its_environment_exactly_or_by_prefix(tmp_path):
    """The /proc lookup the runner's watchdog (and the proof workers) rely on; a zombie is not a process."""
    tag = f"T{os.getpid()}x"
    exact = subprocess.Popen(["sleep", "60"], env={**os.environ, "H3_TAG": tag})
    longer = subprocess.Popen(["sleep", "60"], env={**os.environ, "H3_TAG": tag + "-more"})
    try:
        assert processes_tagged("H3_TAG", tag) == [exact.pid]
        assert sorted(processes_tagged("H3_TAG", tag, prefix=True)) == sorted([exact.pid, longer.pid])
        assert processes_tagged("H3_TA", tag) == [] and processes_tagged("H3_TAG", tag[:-1]) == []
        exact.kill()
        deadline = time.monotonic() + 30
        while process_running(exact.pid):  # a zombie until we reap it below
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert processes_tagged("H3_TAG", tag, prefix=True) == [longer.pid]
    finally:
        for child in (exact, longer):
            child.kill()
            child.wait()


def test_a_forked_child_does_not_hold_the_watchdogs_pipe_open(tmp_path):
    """The watchdog acts on end of file: a fork (a scan's helper) keeping a copy would make it wait for that child."""
    import lib.runner

    run("true", tmp_path)  # this process's watchdog is running now
    pipe = os.readlink(f"/proc/self/fd/{lib.runner._watchdog_fd}")
    answer_read, answer_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        held = b"0"
        for fd in os.listdir("/proc/self/fd"):
            try:
                held = b"1" if os.readlink(f"/proc/self/fd/{fd}") == pipe else held
            except OSError:
                pass
        os.write(answer_write, held)
        os._exit(0)
    os.close(answer_write)
    try:
        assert os.read(answer_read, 1) == b"0", "a forked child kept the watchdog's pipe open"
    finally:
        os.close(answer_read)
        os.waitpid(pid, 0)


def test_a_killed_watchdog_is_replaced_by_the_next_step(tmp_path):
    """Killed by someone (a `kill`, the OOM killer): the next command starts another, which finds every step by tag."""
    import lib.runner

    run("true", tmp_path)
    first = lib.runner._watchdog_process
    first.kill()
    first.wait()
    run("true", tmp_path)
    second = lib.runner._watchdog_process
    assert second is not first and second.poll() is None


WATCHED_RUN = """
import sys; sys.path.insert(0, %r)
from pathlib import Path
import lib.runner
with open(%r, "wb") as log:
    lib.runner.run_in_group("true", Path(%r), log, 10)
print(lib.runner._watchdog_process.pid, flush=True)
sys.stdin.read()  # until the test lets us end
"""


def test_the_watchdog_of_a_nested_run_is_not_the_outer_steps_and_ends_with_its_run(tmp_path):
    """inv run inside another run's step: the outer run must neither name the watchdog a leftover nor kill it early."""
    outer = {**os.environ, "ORCHESTRATOR_STEP": f"outer-{os.getpid()}"}
    script = WATCHED_RUN % (str(ROOT), str(tmp_path / "log"), str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=outer, text=True)
    try:
        watchdog = int(child.stdout.readline())
        assert process_running(watchdog)
        assert watchdog not in processes_tagged("ORCHESTRATOR_STEP", outer["ORCHESTRATOR_STEP"])
        assert child.pid in processes_tagged("ORCHESTRATOR_STEP", outer["ORCHESTRATOR_STEP"])
    finally:
        child.communicate("", timeout=60)
    assert wait_gone(watchdog, 30), "the watchdog outlived the run it watched"


TWO_SIGNALS_RUN = """
import os, signal, sys, time; sys.path.insert(0, %r)
from pathlib import Path
from lib.runner import RunInterrupted, run_each, run_in_group
tmp = Path(%r)
def work(i):
    if i == 0:
        with open(tmp / "log0", "wb") as log:
            return run_in_group(f"echo $$ > {tmp}/pid0.tmp; mv {tmp}/pid0.tmp {tmp}/pid0; exec sleep 600", tmp, log, 600)
    while not (tmp / "pid0").exists():
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)  # a `kill` and a closed terminal at once: both pending together
    os.kill(os.getpid(), signal.SIGHUP)
try:
    run_each([0, 1], work, jobs=2, grace=5)
except RunInterrupted as stop:
    print("interrupted", stop.signum, stop.stopped)
"""


def test_a_second_stop_signal_right_behind_the_first_is_ignored_and_the_run_stops_cleanly(tmp_path):
    """A SIGHUP pending with the SIGTERM broke the pool's wait (release unlocked lock): a traceback, no RunInterrupted."""
    child = subprocess.Popen([sys.executable, "-c", TWO_SIGNALS_RUN % (str(ROOT), str(tmp_path))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    # Python runs pending handlers in signal order: SIGHUP's goes first.
    assert out.decode() in ("interrupted 1 1\n", "interrupted 15 1\n") and not err, err.decode()[-2000:]
    assert wait_gone(int((tmp_path / "pid0").read_text()), 10), "the running step survived the stop"


def test_a_descriptor_made_inheritable_is_not_inherited_by_what_the_runner_spawns(tmp_path):
    """posix_spawn closes nothing (Popen's close_fds does): every descriptor above 2 is made close-on-exec before
    each spawn, also one made inheritable after the first (a make jobserver's pipe, an os.dup2)."""
    code = (
        "import os, sys; sys.path.insert(0, %r)\n"
        "from lib import runner\n"
        "runner.capture(['/bin/true'], None)\n"
        "read_end, write_end = os.pipe()\n"
        "os.set_inheritable(write_end, True)\n"
        "listed = runner.capture(['/bin/sh', '-c', 'ls /proc/$$/fd'], None).stdout.decode().split()\n"
        "with open(%r, 'wb') as log:\n"
        "    runner.run_in_group(['/bin/sh', '-c', 'ls /proc/$$/fd'], None, log, 30)\n"
        "print(write_end, *listed)\n"
    ) % (str(ROOT), str(tmp_path / "step.log"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    write_end, *seen_by_read = out.stdout.split()
    seen_by_step = (tmp_path / "step.log").read_text().split()
    assert write_end not in seen_by_read and write_end not in seen_by_step, (write_end, seen_by_read, seen_by_step)
    assert {"0", "1", "2"} <= set(seen_by_read), seen_by_read  # the listing itself worked


def test_a_step_spawned_without_popen_streams_huge_output_without_a_thread_and_keeps_it_all(tmp_path):
    """Without an echo the waiting thread copies the pipe: a step printing far more than a pipe holds must not
    block, and everything reaches the log in order."""
    import threading

    before = threading.active_count()
    result, out = run("seq 1 300000", tmp_path, timeout=60, started_by="posix_spawn")
    assert result.exit_code == 0 and not result.timed_out
    assert out == b"".join(b"%d\n" % n for n in range(1, 300001))
    assert threading.active_count() == before


class SlowLog(io.RawIOBase):
    """A log on slow storage (a network disk): each write takes 10 ms."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        time.sleep(0.01)
        return len(data)


def test_a_step_flooding_a_slow_log_still_times_out(tmp_path):
    """The waiting thread copies the output: output faster than the log takes it must not keep it from the
    timeout (it pumped as long as the pipe had data, and never looked at the clock)."""
    started = time.monotonic()
    result = run_in_group(["/bin/sh", "-c", "yes & yes & exec yes"], None, SlowLog(), 1.0, grace=0.5)
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 30, "the timeout was held off by the output"


def test_a_program_on_path_that_cannot_run_is_passed_over_as_popen_does(tmp_path):
    """Popen tries every PATH entry past one that fails to exec (not a program, another architecture):
    posix_spawn of the first one found must not fail where Popen ran the next."""
    from lib import runner

    bad = tmp_path / "bin"
    bad.mkdir()
    (bad / "git").write_text("not a program\n")
    (bad / "git").chmod(0o755)
    env = {**os.environ, "PATH": f"{bad}{os.pathsep}{os.environ['PATH']}"}
    for _ in range(2):  # the second time through the cache of programs found
        result = runner.capture(["git", "--version"], None, env)
        assert result.returncode == 0 and result.stdout.startswith(b"git version"), result


def test_run_each_gives_results_in_item_order_and_on_done_in_the_calling_thread():
    import threading

    from lib.runner import run_each

    caller = threading.current_thread()
    started, done = [], []
    release = threading.Event()

    def work(item: int) -> int:
        if item == 0:
            release.wait(30)  # item 0 ends last: results still come back in item order
        return item * 10

    def on_done(result: int) -> None:
        assert threading.current_thread() is caller
        done.append(result)
        if len(done) == 4:
            release.set()

    assert run_each(list(range(5)), work, 3, on_start=started.append, on_done=on_done) == [0, 10, 20, 30, 40]
    assert sorted(started) == list(range(5)) and done[-1] == 0 and sorted(done) == [0, 10, 20, 30, 40]


def test_run_each_goes_on_with_the_threads_it_could_start_and_raises_when_none_starts(monkeypatch):
    import threading

    from lib.runner import run_each

    real_start = threading.Thread.start
    started = []

    def start_once(thread: threading.Thread) -> None:
        if started:
            raise RuntimeError("can't start new thread")
        started.append(thread)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_once)
    assert run_each(list(range(6)), lambda item: item + 1, 4) == [1, 2, 3, 4, 5, 6]  # all on the one thread
    started.append(None)  # now none starts
    with pytest.raises(RuntimeError, match="can't start new thread"):
        run_each([1, 2], lambda item: item, 2)


def test_run_each_raises_a_works_error_in_the_caller_and_starts_no_more_items():
    from lib.runner import run_each

    ran = []

    def work(item: int) -> int:
        ran.append(item)
        if item == 1:
            raise ValueError("bad item")
        return item

    with pytest.raises(ValueError, match="bad item"):
        run_each(list(range(50)), work, 1)
    assert ran == [0, 1]  # one thread: the items after the failing one never started


SIG_IGN_SCRIPT = r"""
import os, sys; sys.path.insert(0, %r)
from lib import runner, signals
env = dict(os.environ)
if sys.argv[1] == "popen":  # a relative PATH entry: the runner starts it with Popen, not posix_spawn
    env["PATH"] = "node_modules/.bin" + os.pathsep + env["PATH"]
previous = signals.ignore()  # as during a stop: a read-back started now must still be killable by SIGTERM
try:
    result = runner.capture(["sh", "-c", "grep '^SigIgn' /proc/self/status"], None, env)
finally:
    signals.restore(previous)
print(result.stdout.decode().split()[1])
"""


@pytest.mark.parametrize("started_by, ignored_by_parent", [("spawn", False), ("spawn", True), ("popen", False)])
def test_a_read_started_during_a_stop_gets_the_stop_signals_at_their_defaults(tmp_path, started_by,
                                                                             ignored_by_parent):
    """The stop ignores SIGINT, SIGTERM and SIGHUP for itself; a git it starts meanwhile (reading back what a
    killed step did) must not inherit that, or the kill's SIGTERM is ignored and it lives out the grace. What
    posix_spawn starts gets them at their defaults even when our own parent ignored one (nohup's SIGHUP): it
    runs in a session of its own, which only our stops and timeouts signal."""
    import signal

    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")

    def parent_ignores() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    out = subprocess.run([sys.executable, "-c", SIG_IGN_SCRIPT % str(ROOT), started_by], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, preexec_fn=parent_ignores if ignored_by_parent else None)
    assert out.returncode == 0, out.stderr
    mask = int(out.stdout.strip(), 16)
    assert [signum for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if mask >> (signum - 1) & 1] == []


FINISHED_BEFORE_THE_STOP = r"""
import os, signal, sys, threading, time; sys.path.insert(0, %r)
from pathlib import Path
from lib.runner import RunInterrupted, run_each, run_in_group
tmp = Path(%r)
second_done = threading.Event()
def work(i):
    if i == 1:
        second_done.set()
    if i == 2:
        with open(tmp / "log", "wb") as log:
            run_in_group(["sleep", "60"], None, log, 600)
    return i * 10
def on_done(result):
    if result == 0:  # the calling thread is busy here while item 1 finishes; the stop comes before it is taken
        second_done.wait(30)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
try:
    run_each([0, 1, 2], work, 3, on_done=on_done, grace=5)
except RunInterrupted as stop:
    print(stop.results)
"""


def test_a_stop_keeps_the_results_that_finished_before_it_even_those_not_taken_yet(tmp_path):
    out = subprocess.run([sys.executable, "-c", FINISHED_BEFORE_THE_STOP % (str(ROOT), str(tmp_path))],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[0, 10]", (out.stdout, out.stderr)
