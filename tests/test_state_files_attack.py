"""Hostile state, config and task files: deep nesting, FIFOs, devices, huge files, read-only task dirs.

Whatever sits where the tool reads a file, a command either reads a regular
file of sane size or says in one `error:` line what is wrong (exit 2), and
loses nothing: task files keep their bytes, sync and test outcomes are recorded.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_tool
from tests.test_backlog import ACTIVE, BACKLOG, COMPLETED, snapshot, where_is_each_task, write_tasks

DEEP_JSON = "[" * 100_000 + "]" * 100_000
# Parses (Python's limit is about 1000 levels) but no file this tool writes is nested like it.
NESTED_JSON = json.dumps({"results": [{"repo": "r", "status": "passed",
                                       "detail": json.loads("[" * 900 + "]" * 900)}]})
PASSING = {"Makefile": "test:\n\t@echo all tests passed\n"}


def run_inv(home: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `inv` in a subprocess: a command that hangs on a FIFO fails the test instead of hanging it."""
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args], cwd=home,
                          env={**os.environ, "ORCHESTRATOR_HOME": str(home), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess[str] | object, *fragments: str) -> None:
    err = result.stderr if isinstance(result, subprocess.CompletedProcess) else result.err
    code = result.returncode if isinstance(result, subprocess.CompletedProcess) else result.code
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def state_file(home, name: str, text: str) -> Path:
    path = home.path / "state" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- item 5: deeply nested JSON -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["repo-status.json", "test-results.json"])
@pytest.mark.parametrize("text", [DEEP_JSON, NESTED_JSON], ids=["deep", "nested"])
def test_report_with_a_deeply_nested_state_file_is_one_line_and_writes_no_report(home, inv, name, text):
    state_file(home, name, text)
    result = inv("report", "--date", "2026-11-27")
    one_error_line(result, name, "nested")
    assert not (home.path / "reports" / "weekly-status-2026-11-27.md").exists()


def test_task_commands_with_a_deeply_nested_move_journal_are_one_line_and_touch_nothing(home, inv):
    tasks = write_tasks(home.path)
    (tasks / ".move-journal.json").write_text(DEEP_JSON)
    before = snapshot(tasks)
    for args in (["task.list"], ["task.show", "task-001"], ["task.start", "task-001"], ["report"]):
        one_error_line(inv(*args), ".move-journal.json", "nested")
    assert snapshot(tasks) == before


@pytest.mark.parametrize("text", [DEEP_JSON, NESTED_JSON], ids=["deep", "nested"])
def test_test_all_sets_a_deeply_nested_results_file_aside_and_records_its_outcomes(home, make_repo, inv, text):
    home.add(make_repo("r", PASSING), language="make")
    state = state_file(home, "test-results.json", text)
    result = inv("test-all")
    assert result.code == 0, result.err
    assert result.err.splitlines()[0] == (f"warning: {state}: nested deeper than 64 levels; set aside as "
                                          "test-results.json.corrupt, a fresh one will be written")
    assert [(r["repo"], r["status"]) for r in home.state("test-results.json")["results"]] == [("r", "passed")]
    assert (state.parent / "test-results.json.corrupt").read_text() == text


@pytest.mark.parametrize("text", [DEEP_JSON, NESTED_JSON], ids=["deep", "nested"])
def test_sync_all_records_its_outcomes_whatever_the_old_results_file_held(home, make_repo, inv, tmp_path, text):
    repo = make_repo("r")
    upstream = repo.push_from_elsewhere(tmp_path, {"new.txt": "x\n"})
    home.add(repo)
    state = state_file(home, "sync-results.json", text)
    result = inv("sync-all")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err and "sync-results.json.corrupt" in result.err, result.err
    assert repo.head() == upstream
    assert [(r["repo"], r["status"]) for r in home.state("sync-results.json")["results"]] == [("r", "updated")]
    assert (state.parent / "sync-results.json.corrupt").read_text() == text


@pytest.mark.parametrize("command", [["status"], ["scan"], ["test-all"], ["sync-all"]])
def test_a_deeply_nested_repos_json_is_one_line_for_every_command_that_reads_it(home, inv, command):
    home.write_repos([], raw='{"repositories": ' + DEEP_JSON + "}")
    one_error_line(inv(*command), "repos.json", "nested")


def test_a_deeply_nested_workflows_json_is_one_line(home, make_repo, inv):
    home.add(make_repo("r", PASSING), language="make")
    (home.path / "config" / "workflows.json").write_text('{"workflows": ' + DEEP_JSON + "}")
    one_error_line(inv("test-all"), "workflows.json", "nested")


def test_a_deeply_nested_hosts_toml_is_one_line(home, make_repo, inv):
    home.add(make_repo("r"))
    (home.path / "config" / "hosts.toml").write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    one_error_line(inv("host.list"), "hosts.toml")


# --- item 6: reading needs no lock --------------------------------------------------------------------------

def read_only(path: Path) -> list[str]:
    """A command prefix under which `path` is a read-only bind mount (tests run as root: chmod stops nothing)."""
    require_tool("bwrap")
    prefix = ["bwrap", "--bind", "/", "/", "--ro-bind", str(path), str(path), "--dev", "/dev", "--proc", "/proc"]
    probe = subprocess.run([*prefix, "touch", str(path / ".probe")], capture_output=True, text=True)
    if "Read-only file system" not in probe.stderr:
        pytest.skip(f"bwrap cannot make a read-only bind mount here: {probe.stderr.strip()}")
    return prefix


def run_inv_in(prefix: list[str], home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*prefix, sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args], cwd=home,
                          env={**os.environ, "ORCHESTRATOR_HOME": str(home)}, capture_output=True, timeout=120)


def test_a_read_only_tasks_dir_can_be_listed_shown_and_reported_and_only_moves_refuse(home):
    tasks = write_tasks(home.path)
    before = snapshot(tasks)
    sandbox = read_only(tasks)
    listed = run_inv_in(sandbox, home.path, "task.list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [t["id"] for t in json.loads(listed.stdout)["tasks"]] == ["task-001", "task-002", "task-003"]
    shown = run_inv_in(sandbox, home.path, "task.show", "task-003")
    assert shown.returncode == 0 and shown.stdout.endswith(b"- **assigned**: ana\n"), shown.stderr
    reported = run_inv_in(sandbox, home.path, "report", "--date", "2026-11-27")
    assert reported.returncode == 0, reported.stderr
    for args in (["task.start", "task-001"], ["task.add", "x", "--repo", "r", "--priority", "low"]):
        refused = run_inv_in(sandbox, home.path, *args)
        assert refused.returncode == 2 and refused.stderr.count(b"\n") == 1, refused.stderr
        assert b"cannot take the task lock: Read-only file system" in refused.stderr, refused.stderr
    assert snapshot(tasks) == before and not (tasks / ".lock").exists()


def test_a_reader_of_a_read_only_tasks_dir_shows_a_killed_move_where_its_journal_ends(home):
    from lib.backlog import CRASH_ENV

    tasks = write_tasks(home.path)
    killed = run_inv(home.path, "task.start", "task-001", env={CRASH_ENV: "target"})
    assert killed.returncode == -9, killed.stderr
    assert where_is_each_task(tasks)["task-001"] == ["backlog", "active"], "killed between the two renames"
    as_killed = snapshot(tasks)
    sandbox = read_only(tasks)
    listed = run_inv_in(sandbox, home.path, "task.list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {t["id"]: t["state"] for t in json.loads(listed.stdout)["tasks"]} == {
        "task-001": "active", "task-002": "backlog", "task-003": "backlog"}
    shown = run_inv_in(sandbox, home.path, "task.show", "task-001")
    assert shown.returncode == 0 and shown.stdout.startswith(b"# active: "), shown.stderr
    reported = run_inv_in(sandbox, home.path, "report", "--date", "2026-11-27")
    assert reported.returncode == 0, reported.stderr
    assert "| task-001 | Fix reward rounding |" in (home.path / "reports" / "weekly-status-2026-11-27.md").read_text()
    assert snapshot(tasks) == as_killed, "the reader wrote nothing; the journal waits for a writer"
    finished = run_inv(home.path, "task.start", "task-002")
    assert finished.returncode == 0, finished.stderr
    assert where_is_each_task(tasks) == {"task-001": ["active"], "task-002": ["active"], "task-003": ["backlog"]}
    assert not (tasks / ".move-journal.json").exists()


def test_a_reader_that_a_move_overtakes_reads_again_and_sees_each_task_once(home, monkeypatch):
    import lib.backlog as backlog

    tasks = write_tasks(home.path)
    real_read = backlog._read_bytes
    moved = []

    def move_before_active_is_read(path: Path, *limit: int) -> bytes | None:
        if path.name == "active.md" and not moved:  # backlog.md was read with task-001 in it
            moved.append("task-001")  # first: the move reads active.md too
            backlog.TaskStore(tasks).move("start", "task-001")
        return real_read(path, *limit)

    monkeypatch.setattr(backlog, "_read_bytes", move_before_active_is_read)
    listed = backlog.TaskStore(tasks).list()
    assert moved and [(t.id, t.state) for t in listed] == [("task-002", "backlog"), ("task-003", "backlog"),
                                                           ("task-001", "active")]


# --- item 7 and config: only regular files, of a bounded size -----------------------------------------------

def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("make", ["fifo", "dev-zero", "huge"])
def test_a_report_template_that_is_no_regular_file_of_sane_size_is_one_line(home, make):
    template = home.path / "reports" / "templates" / "weekly-status.md"
    if make == "fifo":
        fifo(template)
    else:
        template.parent.mkdir(parents=True)
        if make == "dev-zero":
            template.symlink_to("/dev/zero")
        else:
            with open(template, "wb") as out:
                out.truncate(17 * 1024 * 1024)  # sparse: 17 MiB of nothing
    result = run_inv(home.path, "report", "--date", "2026-11-27")
    why = {"fifo": "it is a named pipe (FIFO), not a regular file", "dev-zero": "it is a device, not a regular file",
           "huge": "larger than 16 MiB"}[make]
    one_error_line(result, "weekly-status.md: cannot read: " + why, "report template")
    assert not (home.path / "reports" / "weekly-status-2026-11-27.md").exists()


@pytest.mark.parametrize("name", ["backlog.md", "completed.md", ".move-journal.json"])
def test_a_fifo_in_place_of_a_task_file_or_the_journal_is_one_line_for_every_task_command(home, name):
    tasks = write_tasks(home.path)
    (tasks / name).unlink(missing_ok=True)
    fifo(tasks / name)
    for args in (["task.list"], ["task.show", "task-002"], ["task.start", "task-002"],
                 ["task.add", "x", "--repo", "r", "--priority", "low"], ["report"]):
        one_error_line(run_inv(home.path, *args), f"{name}: cannot read: it is a named pipe (FIFO)")
    assert (tasks / name).is_fifo()
    for other, data in (("backlog.md", BACKLOG), ("active.md", ACTIVE), ("completed.md", COMPLETED)):
        assert other == name or (tasks / other).read_bytes() == data, other


def test_a_task_file_larger_than_the_limit_is_one_line_and_stays_as_it_is(home):
    tasks = write_tasks(home.path)
    with open(tasks / "completed.md", "ab") as out:
        out.truncate(17 * 1024 * 1024)
    for args in (["task.list"], ["task.start", "task-001"]):
        one_error_line(run_inv(home.path, *args), "completed.md: cannot read: larger than 16 MiB")
    assert (tasks / "backlog.md").read_bytes() == BACKLOG and (tasks / "active.md").read_bytes() == ACTIVE


@pytest.mark.parametrize("name, commands", [
    ("repos.json", [["status"], ["scan"], ["test-all"], ["sync-all"], ["foreach", "true"]]),
    ("workflows.json", [["test-all"], ["build", "r"]]),
    ("hosts.toml", [["host.list"], ["status", "--host", "b1"], ["test-all", "--hosts", "b1"]]),
])
def test_a_fifo_in_place_of_a_config_file_is_one_line_not_a_hang(home, make_repo, name, commands):
    home.add(make_repo("r", PASSING), language="make")
    target = home.path / "config" / name
    target.unlink(missing_ok=True)
    fifo(target)
    for args in commands:
        one_error_line(run_inv(home.path, *args), f"{name}: cannot read: it is a named pipe (FIFO)")


def test_a_fifo_in_place_of_a_state_file_is_set_aside_or_ignored_or_one_line_never_a_hang(home, make_repo, tmp_path):
    repo = make_repo("r", PASSING)
    home.add(repo, language="make")
    for name in ("repo-status.json", "test-results.json", "sync-results.json", "reports-written.json"):
        fifo(home.path / "state" / name)
    assert run_inv(home.path, "status").returncode == 0, "the last scan is only a cache: ignored"
    one_error_line(run_inv(home.path, "report"), "repo-status.json: cannot read: it is a named pipe (FIFO)")
    tested = run_inv(home.path, "test-all")
    assert tested.returncode == 0 and ("test-results.json: cannot read: it is a named pipe (FIFO), not a regular "
                                       "file; set aside") in tested.stderr, tested.stderr
    synced = run_inv(home.path, "sync-all")
    assert synced.returncode == 0 and "sync-results.json.corrupt" in synced.stderr, synced.stderr
    assert [r["repo"] for r in home.state("sync-results.json")["results"]] == ["r"]
    assert [r["repo"] for r in home.state("test-results.json")["results"]] == ["r"]
    assert home.state("repo-status.json")["repos"][0]["name"] == "r", "sync-all's scan replaced the FIFO"
    assert (home.path / "state" / "test-results.json.corrupt").is_fifo()


# --- item 12 (part): ids by normalized form; one lock for one set of files -----------------------------------

NFC_ID, NFD_ID = "t\u00e2che-1", "ta\u0302che-1"


def test_ids_that_differ_only_by_unicode_normalization_are_one_task_and_keep_their_bytes(home, inv):
    tasks = write_tasks(home.path, backlog=f"# B\n\n### [{NFD_ID}] Decomposed\n- **repo**: r\n".encode())
    shown = run_inv(home.path, "task.show", NFC_ID)
    assert shown.returncode == 0 and f"[{NFD_ID}] Decomposed" in shown.stdout, shown.stderr
    assert inv("task.start", NFC_ID).code == 0
    assert f"### [{NFD_ID}] Decomposed".encode() in (tasks / "active.md").read_bytes(), "the file keeps its bytes"
    before = snapshot(tasks)
    with open(tasks / "backlog.md", "ab") as out:
        out.write(f"\n### [{NFC_ID}] Composed\n".encode())
    for args in (["task.list"], ["task.add", "x", "--repo", "r", "--priority", "low"]):
        result = inv(*args)
        assert result.code == 2 and f"active.md:7: duplicate task id {NFD_ID} (also in " in result.err, result.err
    assert snapshot(tasks)["active.md"] == before["active.md"]


HOLD_LOCK = """
import sys; sys.path.insert(0, {root!r})
from pathlib import Path
from lib.backlog import TaskStore
with TaskStore(Path({tasks!r})).locked():
    print("held", flush=True)
    sys.stdin.read()
"""


def test_two_homes_whose_task_files_are_symlinks_to_one_set_take_turns_on_one_lock(home, tmp_path):
    import fcntl

    shared = write_tasks(tmp_path / "shared")
    other = home.path / "tasks"
    other.mkdir()
    for name in ("backlog.md", "active.md", "completed.md"):
        (other / name).symlink_to(shared / name)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(root=str(ROOT), tasks=str(other))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with open(shared / ".lock", "a") as lock:
            with pytest.raises(BlockingIOError):  # the shared files' own home must wait for the other home
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    assert not (other / ".lock").exists(), "the lock sits beside the real files"


# --- found by attacking the above ---------------------------------------------------------------------------

def test_a_task_file_that_is_a_symlink_loop_is_one_line_for_readers_and_writers(home):
    tasks = write_tasks(home.path)
    (tasks / "completed.md").unlink()
    (tasks / "completed.md").symlink_to("completed.md")
    for args in (["task.list"], ["task.start", "task-001"], ["task.add", "x", "--repo", "r", "--priority", "low"]):
        one_error_line(run_inv(home.path, *args), "completed.md: cannot read: Too many levels of symbolic links")
    assert (tasks / "backlog.md").read_bytes() == BACKLOG and (tasks / "active.md").read_bytes() == ACTIVE


def test_a_move_that_would_grow_a_task_file_past_the_limit_writes_nothing(home, inv):
    tasks = write_tasks(home.path, active=ACTIVE + b"x" * (16 * 1024 * 1024 - len(ACTIVE) - 10))
    before = snapshot(tasks)
    result = inv("task.start", "task-001")
    assert result.code == 2 and "active.md: would grow past 16 MiB" in result.err, result.err
    assert snapshot(tasks) == before
    assert inv("task.list").code == 0, "what was written can be read back"


def test_a_results_directory_whose_set_aside_name_is_taken_is_still_set_aside_and_the_run_recorded(home, make_repo,
                                                                                                   inv):
    home.add(make_repo("r", PASSING), language="make")
    state = home.path / "state" / "test-results.json"
    (state / "inside").mkdir(parents=True)
    (state.parent / "test-results.json.corrupt").write_text("an older bad file")
    result = inv("test-all")
    assert result.code == 0, result.err
    assert "test-results.json: cannot read: it is a directory, not a regular file; set aside as " \
           "test-results.json.corrupt-" in result.err, result.err
    assert [r["repo"] for r in home.state("test-results.json")["results"]] == ["r"]
    assert (state.parent / "test-results.json.corrupt").read_text() == "an older bad file"


def test_a_move_cut_short_in_one_home_is_seen_and_finished_from_another_home_sharing_the_files(home, tmp_path):
    from lib.backlog import CRASH_ENV

    owner = tmp_path / "shared"
    shared = write_tasks(owner)
    other = home.path / "tasks"
    other.mkdir()
    for name in ("backlog.md", "active.md", "completed.md"):
        (other / name).symlink_to(shared / name)
    assert run_inv(home.path, "task.start", "task-001", env={CRASH_ENV: "target"}).returncode == -9
    assert (shared / ".move-journal.json").exists() and not (other / ".move-journal.json").exists()
    listed = run_inv(owner, "task.list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {t["id"]: t["state"] for t in json.loads(listed.stdout)["tasks"]}["task-001"] == "active"
    finished = run_inv(owner, "task.start", "task-002")
    assert finished.returncode == 0, finished.stderr
    assert where_is_each_task(shared) == {"task-001": ["active"], "task-002": ["active"], "task-003": ["backlog"]}


@pytest.mark.parametrize("lock", ["tasks/.lock", "state/.test-results.json.lock", "state/.sync-results.json.lock",
                                  "state/sync.lock"])
def test_a_fifo_where_a_lock_file_belongs_is_a_line_not_a_hang(home, make_repo, lock):
    home.add(make_repo("r", PASSING), language="make")
    write_tasks(home.path)
    fifo(home.path / lock)
    if lock.startswith("tasks/"):
        one_error_line(run_inv(home.path, "task.start", "task-001"), "cannot take the task lock: not a regular file")
        assert where_is_each_task(home.path / "tasks") == {t: ["backlog"] for t in ("task-001", "task-002",
                                                                                      "task-003")}
    elif "test-results" in lock:
        tested = run_inv(home.path, "test-all")
        assert tested.returncode == 0 and "warning: results not recorded in" in tested.stderr, tested.stderr
    elif "sync-results" in lock:
        synced = run_inv(home.path, "sync-all")
        assert synced.returncode == 0 and "warning: results not recorded in" in synced.stderr, synced.stderr
    else:
        one_error_line(run_inv(home.path, "sync-all"), "sync.lock: cannot open the sync-all lock: not a regular file")


@pytest.mark.parametrize("name, text, command", [
    ("repos.json", '{"repositories": ' + "1" * 5000 + "}", ["status"]),
    ("workflows.json", '{"workflows": ' + "1" * 5000 + "}", ["test-all"]),
    ("hosts.toml", "x = " + "1" * 5000 + "\n", ["host.list"]),
])
def test_a_config_number_of_thousands_of_digits_is_one_line(home, make_repo, inv, name, text, command):
    home.add(make_repo("r", PASSING), language="make")
    (home.path / "config" / name).write_text(text)
    one_error_line(inv(*command), name, "4300 digits")


def test_a_template_that_repeats_a_placeholder_a_million_times_is_one_line_not_all_the_memory(home):
    template = home.path / "reports" / "templates" / "weekly-status.md"
    template.parent.mkdir(parents=True)
    template.write_text("{{notes}}" * 1_000_000)  # 9 MB of template, a thousand times that of report
    result = run_inv(home.path, "report", "--date", "2026-11-27", "--notes", "n" * 1000)
    one_error_line(result, "weekly-status.md: the report would be larger than 64 M characters ({{notes}}")
    assert not (home.path / "reports" / "weekly-status-2026-11-27.md").exists()


def test_a_template_with_a_million_unknown_placeholders_warns_twenty_times_and_says_how_many_more(home):
    template = home.path / "reports" / "templates" / "weekly-status.md"
    template.parent.mkdir(parents=True)
    template.write_text("{{date}}\n" + "{{owner}}\n" * 1_000_000)
    result = run_inv(home.path, "report", "--date", "2026-11-27")
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 21 and warnings[0].startswith(f"warning: {template}:2: unknown placeholder {{{{owner}}}}")
    assert warnings[19].startswith(f"warning: {template}:21: ")
    assert warnings[20] == f"warning: {template}: ... and 999980 more unknown placeholders left as they are"
