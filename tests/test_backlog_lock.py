"""The task lock is lib.statefile's: two `inv task.add` at once take turns and both tasks are kept."""
from __future__ import annotations

import ast
import fcntl
import os
import subprocess
import sys
import time

from tests.conftest import ROOT
from tests.test_backlog import write_tasks

INV = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]


def waiting_on(path) -> int:
    """How many flock requests wait for the lock on `path` (/proc/locks: a waiter's line starts `N: ->`)."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as locks:
        return sum(1 for line in locks if "->" in line.split()[1] and line.split()[-3].endswith(f":{inode}"))


def test_two_task_adds_at_once_take_turns_on_the_lock_and_lose_no_entry(home):
    tasks = write_tasks(home.path)
    lock_path = tasks / ".lock"
    lock_path.touch()
    before = (tasks / "backlog.md").read_bytes()
    with open(lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # both adds reach the lock before either may write
        adds = [subprocess.Popen([*INV, "task.add", f"added by {who}", "--repo", "r", "--priority", "low"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
        try:
            deadline = time.monotonic() + 60  # generous: two interpreters importing invoke on a busy machine
            while waiting_on(lock_path) < 2:
                assert all(add.poll() is None for add in adds), "an add finished while the lock was held"
                assert time.monotonic() < deadline, "the adds never waited for the task lock"
                time.sleep(0.05)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
        outputs = [add.communicate(timeout=120) for add in adds]
    assert [add.returncode for add in adds] == [0, 0], outputs
    after = (tasks / "backlog.md").read_bytes()
    lines = after.splitlines()
    assert all(line in lines for line in before.splitlines()), "a line of the backlog was lost"
    added = dict(out.split(": added to")[0].split(" ", 1) for out, _ in outputs)  # "task-004 added by a: ..."
    assert sorted(added.values()) == ["added by a", "added by b"], added
    for task_id, title in added.items():
        assert lines.count(f"### [{task_id}] {title}".encode()) == 1, after


def test_the_backlog_takes_its_lock_through_statefile_never_flock_itself():
    tree = ast.parse((ROOT / "lib" / "backlog.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "fcntl" not in imported
