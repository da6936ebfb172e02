"""The task lifecycle: users' hand-edited task files keep every byte; moves survive kills and races."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from lib.backlog import CRASH_ENV, CRASH_STEPS, TaskStore, parse
from tests.conftest import ROOT

# A backlog as a user of the original system writes it: its preamble and
# priority sections, a comment, an odd heading, notes with a fenced snippet whose
# `# comment` is not a heading, a Setext-looking line, a non-UTF-8 byte, CRLF in one task.
BACKLOG = (
    b"# Backlog\n\nPrioritized work items waiting to be started.\n\n## High Priority\n\n"
    b"<!-- Add high priority tasks here -->\n\n"
    b"### [task-001] Fix reward rounding\n- **repo**: staking\n- **type**: bug-fix\n- **priority**: high\n"
    b"- **assigned**: unassigned\n- **description**: Rewards are off by one satoshi\n- **branch**: fix/rounding\n"
    b"\nNotes from the call:\n\n```sh\n# reproduce\ngo test ./rewards -run Rounding\n```\nCaf\xe9 \xff raw byte.\n\n"
    b"## Medium Priority\n\n"
    b"### [task-002] Explorer dark mode\r\n- **repo**: explorer\r\n- **priority**: medium\r\n\r\n"
    b"#### an odd heading a user left here\n  keep me\n\n"
    b"### [task-003] Ledger export\n- **repo**: ledger\n- **priority**: low\n- **assigned**: ana"
)
ACTIVE = b"# Active Tasks\n\nCurrently in-progress work.\n\n<!-- Active tasks appear here -->\n"
COMPLETED = b"# Completed Tasks\n\nAppend-only log of finished work.\n"
TODAY = date.today().isoformat()


def write_tasks(home: Path, backlog: bytes = BACKLOG, active: bytes = ACTIVE, completed: bytes = COMPLETED) -> Path:
    tasks = home / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for name, data in (("backlog.md", backlog), ("active.md", active), ("completed.md", completed)):
        (tasks / name).write_bytes(data)
    return tasks


def snapshot(tasks: Path) -> dict[str, bytes]:
    """Every file's bytes but the lock's (an empty file the tool may create)."""
    return {p.name: p.read_bytes() for p in sorted(tasks.iterdir()) if p.name != ".lock"}


def block(data: bytes, heading: bytes, end_marker: bytes | None) -> bytes:
    start = data.index(heading)
    return data[start:data.index(end_marker, start) if end_marker else len(data)]


def test_start_cuts_exactly_the_block_and_appends_it_with_a_started_stamp(home, inv):
    tasks = write_tasks(home.path)
    result = inv("task.start", "task-001")
    assert result.code == 0, result.err
    assert "task-001 Fix reward rounding: now active" in result.out
    moved = block(BACKLOG, b"### [task-001]", b"## Medium Priority")
    assert (tasks / "backlog.md").read_bytes() == BACKLOG.replace(moved, b"")
    stamped = moved.replace(b"- **branch**: fix/rounding\n", b"- **branch**: fix/rounding\n"
                            + f"- **started**: {TODAY}\n".encode())
    assert (tasks / "active.md").read_bytes() == ACTIVE + b"\n" + stamped
    assert b"```sh\n# reproduce\n" in stamped and b"\xff raw byte" in stamped, "the notes travel with the task"


def test_complete_keeps_every_line_of_the_block_and_stamps_the_date(home, inv):
    tasks = write_tasks(home.path)
    assert inv("task.start", "task-002").code == 0
    assert inv("task.complete", "task-002").code == 0
    done = (tasks / "completed.md").read_bytes()
    assert done == COMPLETED + (b"\n### [task-002] Explorer dark mode\r\n- **repo**: explorer\r\n"
                                b"- **priority**: medium\r\n" + f"- **started**: {TODAY}\r\n".encode()
                                + f"- **completed**: {TODAY}\r\n".encode() + b"\r\n")
    assert b"#### an odd heading a user left here\n  keep me\n" in (tasks / "backlog.md").read_bytes(), \
        "a block ends at the next heading of any level"
    assert (tasks / "active.md").read_bytes() == ACTIVE + b"\n", "only the moved bytes left active.md"


def test_a_last_task_without_a_final_newline_moves_whole(home, inv):
    tasks = write_tasks(home.path)
    assert inv("task.start", "task-003").code == 0
    assert (tasks / "backlog.md").read_bytes() == BACKLOG[:BACKLOG.index(b"### [task-003]")]
    assert (tasks / "active.md").read_bytes().endswith(
        b"\n### [task-003] Ledger export\n- **repo**: ledger\n- **priority**: low\n- **assigned**: ana\n"
        + f"- **started**: {TODAY}\n".encode())


def test_the_original_systems_files_work_unchanged(home, inv):
    original_backlog = (b"# Backlog\n\nPrioritized work items waiting to be started. Move tasks to `active.md` when "
                        b"starting work.\n\n## High Priority\n\n<!-- Add high priority tasks here -->\n\n"
                        b"### [task-007] Add staking report\n- **repo**: staking\n- **type**: feature\n"
                        b"- **priority**: high\n- **assigned**: unassigned\n- **description**: Weekly rewards CSV\n\n"
                        b"## Medium Priority\n\n<!-- Add medium priority tasks here -->\n\n## Low Priority\n\n"
                        b"<!-- Add low priority tasks here -->\n")
    tasks = write_tasks(home.path, backlog=original_backlog)
    listed = json.loads(inv("task.list", "--json").out)["tasks"]
    assert [(t["id"], t["title"], t["repo"], t["type"], t["priority"], t["description"]) for t in listed] == [
        ("task-007", "Add staking report", "staking", "feature", "high", "Weekly rewards CSV")]
    assert inv("task.start", "task-007").code == 0
    assert (tasks / "backlog.md").read_bytes() == original_backlog.replace(
        block(original_backlog, b"### [task-007]", b"## Medium"), b"")


def test_add_takes_the_next_free_id_across_all_files_and_files_it_under_its_priority(home, inv):
    tasks = write_tasks(home.path, completed=COMPLETED + b"\n### [task-041] Old work\n- **completed**: 2026-01-02\n")
    result = inv("task.add", "Rotate keys", "--repo", "staking", "--priority", "High", "--type", "infra",
                 "--description", "yearly rotation")
    assert result.code == 0, result.err
    assert "task-042 Rotate keys: added to" in result.out
    backlog = (tasks / "backlog.md").read_bytes()
    new = (b"### [task-042] Rotate keys\n- **repo**: staking\n- **type**: infra\n- **priority**: High\n"
           b"- **assigned**: unassigned\n- **description**: yearly rotation\n"
           + f"- **created**: {TODAY}\n".encode())
    assert backlog == BACKLOG.replace(b"## Medium Priority", new + b"\n## Medium Priority"), \
        "inserted at the end of the `## High Priority` section, nothing else changed"
    assert inv("task.add", "Later", "--repo", "x", "--priority", "someday").code == 0
    assert (tasks / "backlog.md").read_bytes().endswith(
        b"- **assigned**: ana\n\n### [task-043] Later\n- **repo**: x\n- **priority**: someday\n"
        b"- **assigned**: unassigned\n" + f"- **created**: {TODAY}\n".encode())


def test_list_filters_by_state_and_repo_and_shows_age_from_the_stamps(home, inv):
    started = (date.today() - timedelta(days=4)).isoformat()
    write_tasks(home.path, active=ACTIVE + f"\n### [task-010] Long runner\n- **repo**: staking\n"
                f"- **priority**: high\n- **started**: {started}\n".encode())
    result = inv("task.list")
    assert result.code == 0
    rows = {line.split()[0]: line for line in result.out.splitlines()[2:]}
    assert set(rows) == {"task-001", "task-002", "task-003", "task-010"}
    assert rows["task-010"].split()[-2:] == ["active", "4d"]
    assert rows["task-001"].split()[-1] == "-", "no created stamp: no age"
    active = json.loads(inv("task.list", "--state", "active", "--json").out)["tasks"]
    assert [(t["id"], t["started"], t["age_days"], t["state"]) for t in active] == [("task-010", started, 4, "active")]
    staking = json.loads(inv("task.list", "--repo", "staking", "--json").out)["tasks"]
    assert [t["id"] for t in staking] == ["task-001", "task-010"]
    assert inv("task.list", "--state", "done").code == 2


def test_show_prints_the_block_as_it_stands(home, inv):
    tasks = write_tasks(home.path)
    result = inv("task.show", "task-003")
    assert result.code == 0
    assert result.out == (f"# backlog: {tasks / 'backlog.md'}:34\n### [task-003] Ledger export\n- **repo**: ledger\n"
                          "- **priority**: low\n- **assigned**: ana\n")


@pytest.mark.parametrize("backlog, active, args, message", [
    (BACKLOG, ACTIVE, ["task.start", "task-999"], "task-999: no such task in"),
    (BACKLOG, ACTIVE, ["task.complete", "task-001"], "backlog.md:9: task-001 is backlog, not active"),
    (BACKLOG + b"\n### [task-001] Again\n", ACTIVE, ["task.list"], "backlog.md:38: duplicate task id task-001 (also at line 9)"),
    (BACKLOG, ACTIVE + b"\n### [task-002] Copy\n", ["task.start", "task-001"], "active.md:7: duplicate task id task-002 (also in"),
    (b"# B\n\n### [task-01 title\n", ACTIVE, ["task.list"], "backlog.md:3: malformed task heading '### [task-01 title'"),
    (b"# B\n\n### task-001 title\n", ACTIVE, ["task.add", "x", "--repo", "r", "--priority", "low"],
     "backlog.md:3: malformed task heading '### task-001 title'"),
    (b"# B\n\n#### [task-004] Too deep\n", ACTIVE, ["task.list"], "backlog.md:3: malformed task heading"),
    (b"# B\n\n### [task-001] A\n\n```\n### [task-002] hidden\n", ACTIVE, ["task.list"],
     "backlog.md:5: code fence ``` is never closed"),
    (b"# B\n\n<!-- parked\n### [task-001] A\n", ACTIVE, ["task.list"], "backlog.md:3: HTML comment <!-- is never closed"),
    (BACKLOG, ACTIVE, ["task.add", "two\nlines", "--repo", "r", "--priority", "low"], "--title: must be one line"),
    (BACKLOG, ACTIVE, ["task.add", "No repo given", "--priority", "low"], "--repo: required"),
    (BACKLOG, ACTIVE, ["task.add", " ", "--repo", "r", "--priority", "low"], "--title: required"),
])
def test_bad_input_is_one_line_naming_file_and_line_exit_2_files_untouched(home, inv, backlog, active, args, message):
    tasks = write_tasks(home.path, backlog=backlog, active=active)
    before = snapshot(tasks)
    result = inv(*args)
    assert result.code == 2, result.out + result.err
    assert len(result.err.strip().splitlines()) == 1 and result.err.startswith("error: "), result.err
    assert message in result.err, result.err
    assert snapshot(tasks) == before, "files untouched"


def test_ordinary_headings_fenced_examples_and_commented_out_tasks_are_not_tasks():
    text = ("# Backlog\n### Notes\n```markdown\n### [task-NNN] Short title\n```\n<!-- one-line comment -->\n"
            "<!-- parked:\n### [task-004] Commented out\n-->\n"
            "### [task-005] Real\n~~~\n# shell comment\n~~~\n- **repo**: r\n## Next\n")
    parsed = parse("backlog", Path("backlog.md"), text)
    assert [(t.id, t.fields) for t in parsed.tasks] == [("task-005", {"repo": "r"})]
    assert text[parsed.tasks[0].start:parsed.tasks[0].end].endswith("- **repo**: r\n")


def test_a_home_without_task_files_lists_nothing_and_add_creates_the_backlog(home, inv):
    assert inv("task.list").out.strip() == "no tasks"
    assert inv("task.add", "First", "--repo", "r", "--priority", "high").code == 0
    assert inv("task.start", "task-001").code == 0
    active = (home.path / "tasks" / "active.md").read_text()
    assert active.startswith("# Active Tasks\n") and "### [task-001] First" in active


# --- crashes and races: real processes ---------------------------------------------------------------------

def run_inv(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args], cwd=home,
                          env={**os.environ, "ORCHESTRATOR_HOME": str(home), **(env or {})},
                          capture_output=True, text=True, timeout=60)


def finish_with_a_writer(home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A command that writes (any move or add) finishes an interrupted move before anything else; this one
    then stops at its unknown id, so it changes nothing more."""
    return run_inv(home, "task.start", "no-such-task", env=env)


def where_is_each_task(tasks: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for state in ("backlog", "active", "completed"):
        text = (tasks / f"{state}.md").read_bytes().decode("utf-8", "surrogateescape")
        for task in parse(state, tasks / f"{state}.md", text).tasks:
            found.setdefault(task.id, []).append(state)
    return found


def preambles(tasks: Path) -> dict[str, bytes]:
    """Each file's bytes before its first task (a blank line separating an appended task aside)."""
    found = {}
    for path in tasks.glob("*.md"):
        data = path.read_bytes()
        found[path.name] = (data[:data.index(b"### [")] if b"### [" in data else data).rstrip(b"\n")
    return found


@pytest.mark.parametrize("verb, task_id, source, target", [("start", "task-002", "backlog", "active"),
                                                            ("complete", "task-009", "active", "completed")])
@pytest.mark.parametrize("step", CRASH_STEPS)
def test_a_move_killed_at_any_step_is_finished_or_undone_by_the_next_command(home, step, verb, task_id, source,
                                                                             target):
    tasks = write_tasks(home.path, active=ACTIVE + b"\n### [task-009] Half done\n- **repo**: r\n")
    before = preambles(tasks)
    killed = run_inv(home.path, f"task.{verb}", task_id, env={CRASH_ENV: step})
    assert killed.returncode == -9, killed.stderr
    moved_already = CRASH_STEPS.index(step) >= CRASH_STEPS.index("journal")
    as_killed = snapshot(tasks)
    listed = run_inv(home.path, "task.list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {t["id"]: t["state"] for t in json.loads(listed.stdout)["tasks"]}[task_id] == \
        (target if moved_already else source), "a reader shows the task where the move puts it"
    assert snapshot(tasks) == as_killed, "a reader writes nothing"
    after = finish_with_a_writer(home.path)
    assert after.returncode == 2 and "no-such-task: no such task" in after.stderr, after.stderr
    places = where_is_each_task(tasks)
    assert places == {**{t: ["backlog"] for t in ("task-001", "task-003")},
                      "task-002": places["task-002"], "task-009": places["task-009"]}
    assert places[task_id] == [target if moved_already else source]
    assert sorted(p.name for p in tasks.iterdir()) == [".lock", "active.md", "backlog.md", "completed.md"], \
        "no journal and no temp file left"
    assert preambles(tasks) == before


def test_a_crash_during_recovery_is_recovered_by_the_command_after(home):
    tasks = write_tasks(home.path)
    assert run_inv(home.path, "task.start", "task-001", env={CRASH_ENV: "target"}).returncode == -9
    assert finish_with_a_writer(home.path, env={CRASH_ENV: "recover-temp"}).returncode == -9
    assert finish_with_a_writer(home.path).returncode == 2
    assert where_is_each_task(tasks)["task-001"] == ["active"]
    assert not list(tasks.glob(".orchestrator-*")) and not (tasks / ".move-journal.json").exists()


def test_recovery_never_overwrites_a_file_edited_by_hand_after_the_crash(home, inv):
    tasks = write_tasks(home.path)
    assert run_inv(home.path, "task.start", "task-001", env={CRASH_ENV: "target"}).returncode == -9
    with open(tasks / "backlog.md", "ab") as edit:
        edit.write(b"\nan edit made after the crash\n")
    edited = {name: data for name, data in snapshot(tasks).items() if not name.startswith(".orchestrator-")}
    for command in ("task.list", "task.add"):
        result = inv(command, *(("x", "--repo", "r", "--priority", "low") if command == "task.add" else ()))
        assert result.code == 2 and "changed since an interrupted move of task-001" in result.err, result.err
    assert snapshot(tasks) == edited, "every file as it was; only the crash's temp file is gone"


CONCURRENT_WORKER = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from lib.backlog import TaskFileError, TaskStore
store = TaskStore(Path({tasks!r}))
worker = int(sys.argv[1])
mine = [f"task-{{n:03d}}" for n in range(1 + worker * 6, 7 + worker * 6)]
for n, task_id in enumerate(mine):
    store.move("start", task_id)
    if n % 2 == 0:
        store.move("complete", task_id)
    if n % 3 == 0:
        store.add(f"added by {{worker}}", "r", "low")
    for attempt in range(50):  # a reader overtaken twice by moves asks to be run again
        try:
            store.list()
            break
        except TaskFileError as err:
            assert "changed while they were read" in str(err), err
    else:
        raise AssertionError("task files never held still long enough to be read")
"""


def test_eight_processes_starting_completing_and_adding_at_once_lose_and_duplicate_nothing(home):
    backlog = b"# Backlog\n\nMany tasks.\n\n## Low Priority\n\n" + b"".join(
        f"### [task-{n:03d}] Task {n}\n- **repo**: r\n- **priority**: low\n\n".encode() for n in range(1, 49))
    tasks = write_tasks(home.path, backlog=backlog)
    before = preambles(tasks)
    script = CONCURRENT_WORKER.format(root=str(ROOT), tasks=str(tasks))
    workers = [subprocess.Popen([sys.executable, "-c", script, str(w)], stderr=subprocess.PIPE, text=True)
               for w in range(8)]
    errors = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0] * 8, errors
    places = where_is_each_task(tasks)
    assert all(len(states) == 1 for states in places.values()), places
    original = {f"task-{n:03d}" for n in range(1, 49)}
    assert {t for t in original if places[t] == ["completed"]} == {f"task-{1 + w * 6 + n:03d}" for w in range(8)
                                                                 for n in (0, 2, 4)}
    assert {t for t in original if places[t] == ["active"]} == {f"task-{1 + w * 6 + n:03d}" for w in range(8)
                                                              for n in (1, 3, 5)}
    assert set(places) - original == {f"task-{n:03d}" for n in range(49, 65)}, "16 adds, 16 distinct new ids"
    assert all(places[f"task-{n:03d}"] == ["backlog"] for n in range(49, 65))
    assert preambles(tasks) == before
    assert sorted(p.name for p in tasks.iterdir()) == [".lock", "active.md", "backlog.md", "completed.md"]


def test_store_stamps_with_the_injected_day(tmp_path):
    write_tasks(tmp_path)
    store = TaskStore(tmp_path / "tasks", today=lambda: date(2026, 1, 5))
    moved = store.move("start", "task-003")
    assert moved.get("started") == "2026-01-05" and moved.age_days(date(2026, 1, 7)) == 2


def test_a_symlinked_task_file_stays_a_symlink_to_the_users_file(home, inv, tmp_path):
    tasks = write_tasks(home.path)
    real = tmp_path / "dotfiles" / "backlog.md"
    real.parent.mkdir()
    (tasks / "backlog.md").rename(real)
    (tasks / "backlog.md").symlink_to(real)
    assert inv("task.start", "task-001").code == 0
    assert (tasks / "backlog.md").is_symlink()
    assert b"task-001" not in real.read_bytes() and b"### [task-002]" in real.read_bytes()


def test_a_tasks_path_that_is_not_a_directory_is_one_line_exit_2(home, inv):
    (home.path / "tasks").write_text("not a directory")
    result = inv("task.list")
    assert result.code == 2 and result.err.count("\n") == 1 and "tasks: not a directory" in result.err, result.err
    result = inv("task.add", "x", "--repo", "r", "--priority", "low")
    assert result.code == 2 and result.err.count("\n") == 1 and "cannot take the task lock" in result.err, result.err


def test_a_file_saved_by_an_editor_during_a_move_is_never_written_over(home, monkeypatch):
    tasks = write_tasks(home.path)
    store = TaskStore(tasks)
    import lib.backlog as backlog

    real_parse = backlog.read_all

    def read_then_editor_saves(directory):
        files = real_parse(directory)
        with open(tasks / "active.md", "ab") as editor:
            editor.write(b"\nnotes typed while the tool ran\n")
        return files

    monkeypatch.setattr(backlog, "read_all", read_then_editor_saves)
    with pytest.raises(backlog.TaskFileError, match="active.md: changed while task-001 was being moved"):
        store.move("start", "task-001")
    assert (tasks / "backlog.md").read_bytes() == BACKLOG
    assert (tasks / "active.md").read_bytes() == ACTIVE + b"\nnotes typed while the tool ran\n"


def test_a_byte_order_mark_does_not_hide_the_first_task():
    parsed = parse("backlog", Path("backlog.md"), "\ufeff### [task-001] First\n- **repo**: r\n")
    assert [t.id for t in parsed.tasks] == ["task-001"]


@pytest.mark.parametrize("step, added", [("target-temp", False), ("target", True)])
def test_an_add_killed_mid_write_leaves_the_backlog_old_or_new_and_no_temp_file(home, step, added):
    tasks = write_tasks(home.path)
    assert run_inv(home.path, "task.add", "Killed", "--repo", "r", "--priority", "low",
                   env={CRASH_ENV: step}).returncode == -9
    assert finish_with_a_writer(home.path).returncode == 2
    backlog = (tasks / "backlog.md").read_bytes()
    assert backlog.startswith(BACKLOG) and ((b"### [task-004] Killed" in backlog) == added)
    assert not list(tasks.glob(".orchestrator-*"))


def test_bytes_that_are_not_utf8_show_as_replacement_characters_and_stay_in_the_file(home, inv):
    tasks = write_tasks(home.path, backlog=b"# B\n\n### [task-001] Caf\xe9 \xff\n- **repo**: r\xff\n")
    listed = inv("task.list")
    assert listed.code == 0 and "Caf\ufffd \ufffd" in listed.out
    assert json.loads(inv("task.list", "--json").out)["tasks"][0]["repo"] == "r\ufffd"
    shown = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "task.show", "task-001"],
                           env={**os.environ, "ORCHESTRATOR_HOME": str(home.path)}, capture_output=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.endswith(b"Caf\xe9 \xff\n- **repo**: r\xff\n"), shown.stderr
    assert inv("report").code == 0
    assert inv("task.start", "task-001").code == 0
    assert (tasks / "active.md").read_bytes().endswith(
        b"### [task-001] Caf\xe9 \xff\n- **repo**: r\xff\n" + f"- **started**: {TODAY}\n".encode())


def test_show_prints_the_blocks_bytes_exactly(home):
    write_tasks(home.path)
    shown = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "task.show", "task-001"],
                           env={**os.environ, "ORCHESTRATOR_HOME": str(home.path)}, capture_output=True, timeout=60)
    assert shown.returncode == 0
    assert shown.stdout.split(b"\n", 1)[1] == block(BACKLOG, b"### [task-001]", b"## Medium").rstrip(b"\n") + b"\n"


def test_a_task_file_a_move_creates_gets_a_plain_files_mode_not_the_temp_files_0600(home, inv):
    """completed.md made by the first task.complete was readable by its owner only (mkstemp's mode)."""
    tasks = write_tasks(home.path)
    (tasks / "completed.md").unlink()
    assert inv("task.start", "task-001").code == 0
    old_mask = os.umask(0o022)
    os.umask(old_mask)
    assert inv("task.complete", "task-001").code == 0
    assert (tasks / "completed.md").stat().st_mode & 0o777 == 0o666 & ~old_mask
    os.chmod(tasks / "active.md", 0o640)  # a mode the user chose stays
    assert inv("task.start", "task-002").code == 0
    assert (tasks / "active.md").stat().st_mode & 0o777 == 0o640
