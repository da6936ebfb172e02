"""lib.spawn: glibc's posix_spawn with Python's global lock released, started exactly as os.posix_spawn starts."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from lib import spawn
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not spawn.available(), reason="lib.spawn needs glibc 2.26 or later")

# A child whose start (before its exec) waits on a FIFO until another thread of the parent opens the FIFO's
# other end: only possible while the spawning thread has released the global lock.
FIFO_CHILD = """
import os, sys, threading, time
sys.path.insert(0, {root!r})
from lib import spawn
fifo = {fifo!r}
marker = fifo + ".started"

def writer():
    if {use_os!r}:  # opened only once the child has started: from then on os.posix_spawn holds the global lock,
        while not os.path.exists(marker):  # so this thread cannot even return from its look (never a race)
            time.sleep(0.01)
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: the child has not opened it yet
            time.sleep(0.01)
            continue
        os.write(fd, b"from the other thread\\n")
        os.close(fd)
        return

threading.Thread(target=writer, daemon=True).start()
read_end, write_end = os.pipe()
if {use_os!r}:
    # The child makes the marker, then waits on the FIFO.
    pid = os.posix_spawn("/bin/cat", ["cat"], {{}},
                         file_actions=[(os.POSIX_SPAWN_OPEN, 3, marker, os.O_WRONLY | os.O_CREAT, 0o600),
                                       (os.POSIX_SPAWN_OPEN, 0, fifo, os.O_RDONLY, 0),
                                       (os.POSIX_SPAWN_DUP2, write_end, 1)])
else:
    pid = spawn.spawn("/bin/cat", ["cat"], {{}}, write_end, write_end, (), stdin=fifo)
os.close(write_end)
print(os.read(read_end, 100).decode(), end="")
os.waitpid(pid, 0)
"""


def fifo_child(tmp_path, use_os: bool, timeout: float) -> subprocess.CompletedProcess[str]:
    fifo = tmp_path / "stdin.fifo"
    os.mkfifo(fifo)
    code = FIFO_CHILD.format(root=str(ROOT), fifo=str(fifo), use_os=use_os)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def test_other_threads_run_while_a_child_starts(tmp_path):
    """The child's stdin is a FIFO nobody writes to yet: it waits in its start, before exec, and so does the
    spawning thread. Only another thread of ours can open the FIFO's other end."""
    result = fifo_child(tmp_path, use_os=False, timeout=120)
    assert result.returncode == 0 and result.stdout == "from the other thread\n", result.stderr


def test_os_posix_spawn_holds_every_other_thread_while_a_child_starts(tmp_path):
    """Why lib.spawn exists: the same child by os.posix_spawn never gets its writer (the test above can fail).
    The writer looks for the FIFO only once the child has started (a marker it makes first): a writer already
    inside its open when the child began would meet it without the lock (a busy machine made that happen)."""
    with pytest.raises(subprocess.TimeoutExpired):
        fifo_child(tmp_path, use_os=True, timeout=5)


def started(tmp_path, program: str, args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        pid = spawn.spawn(program, args, env, stdout.fileno(), stderr.fileno(), (signal.SIGPIPE,))
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.read_text(), err.read_text()


def test_the_child_gets_exactly_its_arguments_env_descriptors_session_and_signals(tmp_path):
    script = ('printf "%s|" "$@"; echo; tr "\\0" "\\n" < /proc/$$/environ; readlink /proc/self/fd/0; '
              'echo "sid $(cut -d" " -f6 /proc/self/stat) pid $$"; grep SigIgn /proc/self/status >&2; exit 7')
    args = ["sh", "-c", script, "zero", "one two", "ünï", "*"]
    env = {"ONLY": "this", "WITH SPACE": "a=b"}
    code, out, err = started(tmp_path, "/bin/sh", args, env)
    lines = out.splitlines()
    assert code == 7
    assert lines[0] == "one two|ünï|*|"
    assert lines[1:4] == ["ONLY=this", "WITH SPACE=a=b", "/dev/null"]
    sid, pid = lines[-1].split()[1], lines[-1].split()[3]
    assert sid == pid, "not in a session of its own"
    ignored = int(err.split()[1], 16)
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # Python ignores it for itself
    assert not ignored & (1 << (signal.SIGPIPE - 1)), "SIGPIPE still ignored in the child"


@pytest.mark.parametrize("case", ["missing", "not executable", "a directory"])
def test_a_program_that_cannot_start_raises_what_os_posix_spawn_raises(tmp_path, case):
    program = tmp_path / "prog"
    if case == "not executable":
        program.write_text("#!/bin/sh\n")
    elif case == "a directory":
        program.mkdir()
    with pytest.raises(OSError) as ours:
        spawn.spawn(str(program), ["prog"], {}, 1, 2, ())
    with pytest.raises(OSError) as theirs:
        os.posix_spawn(str(program), ["prog"], {})
    assert (type(ours.value), ours.value.errno, ours.value.filename) == \
        (type(theirs.value), theirs.value.errno, theirs.value.filename)


@pytest.mark.parametrize("args, env", [(["a\0b"], {}), (["a"], {"K": "v\0w"}), (["a"], {"K\0": "v"}),
                                       (["a"], {"A=B": "v"}), (["a"], {"": "v"})])
def test_what_c_cannot_carry_is_refused_as_os_posix_spawn_refuses_it(args, env):
    with pytest.raises(ValueError):
        spawn.spawn("/bin/true", args, env, 1, 2, ())
    with pytest.raises(ValueError):
        os.posix_spawn("/bin/true", args, env)


def test_the_runner_starts_by_os_posix_spawn_where_lib_spawn_is_not_available(monkeypatch):
    from lib import runner

    monkeypatch.setattr(spawn, "_libc", None)
    called = []
    real = os.posix_spawn
    monkeypatch.setattr(os, "posix_spawn", lambda *a, **k: called.append(a[0]) or real(*a, **k))
    result = runner.capture(["/bin/sh", "-c", "echo $ORCHESTRATOR_STEP; echo oops >&2"], None)
    assert result.returncode == 0 and result.stdout.strip() and result.stderr == b"oops\n"
    assert called == ["/bin/sh"]
