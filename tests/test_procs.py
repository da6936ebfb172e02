"""lib.procs: the one reader of /proc/PID (a command's leftovers, a git in a repo, a try's agent, a busy worktree)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from lib import procs
from tests.conftest import ROOT, wait_gone

# Python that opens /proc/<pid>/... or lists /proc (shell text run on build hosts is not ours to share).
PROC_READ = re.compile(r"""f["']/proc/\{|scandir\(["']/proc["']\)""")


def test_no_module_but_lib_procs_reads_proc_of_a_process():
    """The runner, gitstatus, the workers' probe, cleanup and heartbeat each had their own /proc scan."""
    sources = sorted((ROOT / "lib").glob("*.py")) + sorted((ROOT / "scripts").rglob("*.py"))
    readers = sorted(str(path.relative_to(ROOT)) for path in sources
                     if path.name != "procs.py" and PROC_READ.search(path.read_text(encoding="utf-8")))
    assert readers == []


def test_processes_in_finds_a_process_by_its_directory_and_name_and_not_a_sibling_directory(tmp_path):
    inside, sibling = tmp_path / "wt", tmp_path / "wt-2"
    (inside / "sub").mkdir(parents=True)
    sibling.mkdir()
    here = subprocess.Popen(["sleep", "600"], cwd=inside / "sub")
    next_door = subprocess.Popen(["sleep", "600"], cwd=sibling)
    try:
        found = procs.processes_in([inside])
        assert here.pid in found and next_door.pid not in found
        assert here.pid in procs.processes_in([inside], name_prefix="sleep")
        assert here.pid not in procs.processes_in([inside], name_prefix="git")
    finally:
        for child in (here, next_door):
            child.kill()
            child.wait()
    assert here.pid not in procs.processes_in([inside])


def test_ancestors_of_a_child_include_this_process():
    child = subprocess.Popen([sys.executable, "-c", "import os, sys; from lib import procs; "
                              "print(os.getppid() in procs.ancestors(os.getpid()))"],
                             cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, _ = child.communicate(timeout=60)
    assert out == b"True\n"
    assert os.getpid() in procs.ancestors(os.getpid()) and 1 not in procs.ancestors(os.getpid())


def test_start_tick_of_a_process_that_ended_is_none():
    child = subprocess.Popen(["sleep", "600"])
    assert procs.start_tick(child.pid)
    child.kill()
    child.wait()
    assert wait_gone(child.pid) and procs.start_tick(child.pid) is None


def test_processes_tagged_reads_each_processes_stat_once(monkeypatch):
    """Born since a tick and not a zombie: both come from one read of /proc/PID/stat."""
    tag = f"{os.getpid()}-once"
    tick = procs.start_tick(os.getpid())
    child = subprocess.Popen(["sleep", "600"], env={**os.environ, "ORCH_TEST_TAG": tag})
    reads: dict[str, int] = {}
    real = procs.stat_fields

    def counted(pid):
        reads[str(pid)] = reads.get(str(pid), 0) + 1
        return real(pid)

    monkeypatch.setattr(procs, "stat_fields", counted)
    try:
        assert procs.processes_tagged("ORCH_TEST_TAG", tag, born_since=tick) == [child.pid]
        assert reads[str(child.pid)] == 1 and max(reads.values()) == 1, {p: n for p, n in reads.items() if n > 1}
        reads.clear()
        assert procs.processes_tagged("ORCH_TEST_TAG", tag) == [child.pid]
        assert reads == {str(child.pid): 1}  # without born_since, only a tagged process's stat is read
    finally:
        child.kill()
        child.wait()


def test_the_start_tick_of_a_child_not_reaped_yet_is_read_only_when_asked_for():
    """The runner reads its step's start right after starting it, even if it has already ended (a zombie)."""
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 60
        while (procs.stat_fields(child.pid) or [b"?"])[0] != b"Z":
            assert time.monotonic() < deadline, "the child never ended"
            time.sleep(0.05)
        assert procs.start_tick(child.pid) is None
        tick = procs.start_tick(child.pid, even_a_zombie=True)
        assert tick and tick == int(procs.stat_fields(child.pid)[19])
    finally:
        child.wait()
    assert procs.start_tick(child.pid, even_a_zombie=True) is None
