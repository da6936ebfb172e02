"""State files: atomic writes, and concurrent updaters that lose nothing."""
from __future__ import annotations

import json
import subprocess
import sys

from lib.statefile import read_json, write_json
from tests.conftest import ROOT

RECORDER = """
import sys; sys.path.insert(0, %r)
from pathlib import Path
from lib.batch import Outcome
from lib.results import record
state, worker = Path(sys.argv[1]), sys.argv[2]
names = {f"w{w}-r{i}" for w in range(4) for i in range(15)}
for i in range(15):
    record(state, [Outcome(f"w{worker}-r{i}", "make", "passed", 0, 0.0, "make test", "/dev/null", None, "now")], names)
"""


def test_concurrent_recorders_in_separate_processes_lose_no_result(tmp_path):
    state = tmp_path / "state" / "test-results.json"
    procs = [subprocess.Popen([sys.executable, "-c", RECORDER % str(ROOT), str(state), str(w)]) for w in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    doc = json.loads(state.read_text())
    assert len(doc["results"]) == 60 and doc["summary"]["passed"] == 60


def test_write_json_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "s" / "x.json"
    write_json(target, {"a": 1})
    write_json(target, {"b": 2})
    assert read_json(target) == {"b": 2}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    import pytest

    from lib.errors import OrchestratorError

    target = tmp_path / "x.json"
    target.write_text("{half")
    with pytest.raises(OrchestratorError, match="not valid JSON.*delete it and run again"):
        read_json(target)


def test_update_moves_a_corrupt_file_aside_and_starts_afresh(tmp_path):
    from lib.statefile import update_json

    target = tmp_path / "x.json"
    target.write_text("{half")
    assert update_json(target, lambda doc: {**doc, "n": 1}, default={}) == {"n": 1}
    assert (tmp_path / "x.json.corrupt").read_text() == "{half"


def _replacers_without_a_reason() -> list[str]:
    """Functions outside lib/statefile.py that call os.replace or os.rename and whose docstring does not say why not
    statefile (every module of lib/, its packages too, and of scripts/)."""
    import ast
    found = []
    for path in sorted((ROOT / "lib").rglob("*.py")) + sorted((ROOT / "scripts").rglob("*.py")):
        if path.name == "statefile.py" and path.parent.name == "lib":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            calls = [node for node in ast.walk(function) if isinstance(node, ast.Call)
                     and ast.unparse(node.func) in ("os.replace", "os.rename")]
            if calls and "statefile" not in (ast.get_docstring(function) or ""):
                found.append(f"{path.relative_to(ROOT)}:{function.name}")
    return sorted(set(found))


def test_every_atomic_write_goes_through_statefile_or_says_why_not():
    """The workers' wrapper renamed its own unsynced temp files (a crash could lose an exit code it reported)."""
    assert _replacers_without_a_reason() == []


def test_the_guard_sees_lib_packages_and_os_rename():
    """lib/remote/ was skipped (a flat glob), and os.rename was not looked for: both are seen."""
    assert "lib/remote/sync.py" in {p.relative_to(ROOT).as_posix() for p in (ROOT / "lib").rglob("*.py")}
    import ast

    call = ast.parse("os.rename(a, b)").body[0].value
    assert ast.unparse(call.func) in ("os.replace", "os.rename")


def test_a_lock_files_text_reaches_the_error_line_printable_and_short(tmp_path):
    """Whoever can write the state dir writes the holder's text: no escape sequence or megabyte reaches the terminal."""
    import pytest

    from lib.errors import OrchestratorError
    from lib.statefile import one_run_at_a_time

    lock = tmp_path / "sync.lock"
    with one_run_at_a_time(lock, "sync-all"):
        lock.write_bytes(b"pid 1 \x1b[2J\x1b]0;owned\x07 \xff" + b"x" * 5_000_000)
        with pytest.raises(OrchestratorError) as refused:
            with one_run_at_a_time(lock, "sync-all"):
                pass
    message = str(refused.value)
    assert message.startswith("sync-all is already running in this workspace (pid 1 ")
    assert message.isprintable() and len(message) < 500


def test_read_small_answers_none_for_anything_but_a_small_regular_file(tmp_path):
    """One reader for "a small regular file or None": gitrefs and the monitor's alerts ask it, never waiting
    on a FIFO (nobody writes to it here: a wait would hang the test), never reading a device or past the limit."""
    import os

    from lib.statefile import read_small

    small = tmp_path / "small"
    small.write_bytes(b"x" * 10)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(small)
    assert read_small(small, 10) == b"x" * 10
    assert read_small(small, 9) is None  # over the limit: nothing, not a cut copy
    assert read_small(tmp_path / "missing", 10) is None
    assert read_small(fifo, 10) is None
    assert read_small(tmp_path, 10) is None  # a directory
    assert read_small(link, 10) == b"x" * 10
    assert read_small(link, 10, follow_symlinks=False) is None
    if os.path.exists("/dev/zero"):
        assert read_small("/dev/zero", 10) is None


def test_append_whole_refuses_a_descriptor_opened_without_o_append_and_writes_nothing(tmp_path):
    """Without O_APPEND the line would land at the descriptor's offset (here over the file's first bytes), not at
    the end it reports, and a failed write could not be cut back: refused, nothing written."""
    import os

    import pytest

    from lib.statefile import append_whole

    path = tmp_path / "inbox.jsonl"
    path.write_bytes(b'{"id": "first"}\n')
    fd = os.open(path, os.O_WRONLY)
    try:
        with pytest.raises(ValueError, match="O_APPEND"):
            append_whole(fd, b'{"id": "second"}\n')
    finally:
        os.close(fd)
    assert path.read_bytes() == b'{"id": "first"}\n'
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        assert append_whole(fd, b'{"id": "second"}\n') == (16, 33)
    finally:
        os.close(fd)
    assert path.read_bytes() == b'{"id": "first"}\n{"id": "second"}\n'
