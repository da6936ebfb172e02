"""Hostile inputs to the task lifecycle that once lost a task, duplicated one, or touched bytes it does not own."""
from __future__ import annotations

import json
import stat

import pytest

from lib.backlog import CRASH_ENV
from tests.test_backlog import (ACTIVE, BACKLOG, TODAY, finish_with_a_writer, run_inv, snapshot, where_is_each_task,
                                write_tasks)


def test_a_first_task_right_after_a_byte_order_mark_moves_without_the_mark_and_stays_visible(home, inv):
    tasks = write_tasks(home.path, backlog=b"\xef\xbb\xbf### [task-001] First\n- **repo**: r\n\n### [task-002] Next\n")
    result = inv("task.start", "task-001")
    assert result.code == 0, result.err
    assert (tasks / "backlog.md").read_bytes() == b"\xef\xbb\xbf### [task-002] Next\n", "the mark stays where it was"
    assert (tasks / "active.md").read_bytes() == (ACTIVE + b"\n### [task-001] First\n- **repo**: r\n"
                                                  + f"- **started**: {TODAY}\n".encode() + b"\n")
    assert where_is_each_task(tasks) == {"task-001": ["active"], "task-002": ["backlog"]}


def test_recovery_writes_nothing_when_any_file_of_the_move_was_edited_by_hand_after_the_crash(home, inv):
    tasks = write_tasks(home.path)
    assert run_inv(home.path, "task.start", "task-001", env={CRASH_ENV: "journal"}).returncode == -9
    with open(tasks / "backlog.md", "ab") as edit:  # the source: recovery would write the target first
        edit.write(b"\nan edit made after the crash\n")
    edited = snapshot(tasks)
    result = inv("task.list")
    assert result.code == 2 and "backlog.md: changed since an interrupted move of task-001" in result.err
    assert snapshot(tasks) == edited, "the task was not copied into active.md while backlog.md still has it"
    assert where_is_each_task(tasks)["task-001"] == ["backlog"]


def test_closing_hashes_of_a_heading_are_not_part_of_its_text(home, inv):
    backlog = (b"# Backlog #\n\n## High Priority ##\n\n### [task-001] Rotate keys ###\n- **repo**: r\n\n"
               b"## Low Priority ##\n\n### [task-002] Fix C#\n- **repo**: r\n")
    tasks = write_tasks(home.path, backlog=backlog)
    listed = json.loads(inv("task.list", "--json").out)["tasks"]
    assert [t["title"] for t in listed] == ["Rotate keys", "Fix C#"]
    assert inv("task.add", "Urgent", "--repo", "r", "--priority", "high").code == 0
    assert (tasks / "backlog.md").read_bytes() == backlog.replace(
        b"## Low Priority", b"### [task-003] Urgent\n- **repo**: r\n- **priority**: high\n- **assigned**: unassigned\n"
        + f"- **created**: {TODAY}\n".encode() + b"\n## Low Priority"), "filed under `## High Priority ##`"


@pytest.mark.parametrize("title", ["Support C #", "###", "Tag # and ##"])
def test_a_title_ending_in_hashes_survives_the_round_trip(home, inv, title):
    write_tasks(home.path)
    assert inv("task.add", title, "--repo", "r", "--priority", "low").code == 0
    listed = json.loads(inv("task.list", "--json").out)["tasks"]
    assert listed[-1]["id"] == "task-004" and listed[-1]["title"] == title


def test_a_crash_while_replacing_a_symlinked_file_leaves_no_temp_file_beside_its_target(home, tmp_path):
    tasks = write_tasks(home.path)
    real = tmp_path / "dotfiles" / "backlog.md"
    real.parent.mkdir()
    (tasks / "backlog.md").rename(real)
    (tasks / "backlog.md").symlink_to(real)
    assert run_inv(home.path, "task.start", "task-001", env={CRASH_ENV: "source-temp"}).returncode == -9
    assert finish_with_a_writer(home.path).returncode == 2
    assert where_is_each_task(tasks)["task-001"] == ["active"]
    assert sorted(p.name for p in real.parent.iterdir()) == [".lock", "backlog.md"], \
        "no .orchestrator-*.tmp left behind (the lock sits beside the real file)"


@pytest.mark.parametrize("task_id", ["PROJ-12", "#42", "bug:7", "fix/login", "JIRA 123", "tâche-1"])
def test_ids_the_original_system_accepted_still_work(home, inv, task_id):
    tasks = write_tasks(home.path, backlog=f"# Backlog\n\n### [{task_id}] Imported\n- **repo**: r\n".encode())
    listed = json.loads(inv("task.list", "--json").out)["tasks"]
    assert [t["id"] for t in listed] == [task_id]
    assert inv("task.start", task_id).code == 0
    assert where_is_each_task(tasks) == {task_id: ["active"]}


def test_a_heading_that_is_a_link_is_an_ordinary_heading(home, inv):
    write_tasks(home.path, backlog=b"# Backlog\n\n### [Roadmap](https://example.com/roadmap) items\n\n"
                                   b"### [task-001] A\n- **repo**: r\n")
    result = inv("task.list", "--json")
    assert result.code == 0, result.err
    assert [t["id"] for t in json.loads(result.out)["tasks"]] == ["task-001"]


def test_a_read_only_task_file_is_refused_not_replaced(home, inv):
    tasks = write_tasks(home.path)
    (tasks / "active.md").chmod(0o444)
    before = snapshot(tasks)
    result = inv("task.start", "task-001")
    assert result.code == 2 and "active.md: read-only" in result.err, result.err
    assert snapshot(tasks) == before
    assert stat.S_IMODE((tasks / "active.md").stat().st_mode) == 0o444


def test_a_line_with_a_megabyte_of_blanks_does_not_hang_the_parser(home):
    blanks = " " * 1_000_000  # a regex that backtracks over them took about an hour
    tasks = write_tasks(home.path, backlog=f"# Backlog{blanks}x\n\n### [task-001] A{blanks}B ##\n"
                                           f"- **repo**: r{blanks}x\n".encode())
    listed = run_inv(home.path, "task.list", "--json")  # a 60 s timeout: linear parsing takes well under a second
    assert listed.returncode == 0, listed.stderr
    task = json.loads(listed.stdout)["tasks"][0]
    assert task["title"] == f"A{blanks}B" and task["repo"] == f"r{blanks}x"
    assert where_is_each_task(tasks) == {"task-001": ["backlog"]}


def test_old_mac_line_endings_are_refused_not_read_as_a_file_without_tasks(home, inv):
    # Markdown ends a line at a lone CR too: read as one long line, task-001 was invisible and add made another.
    tasks = write_tasks(home.path, backlog=b"# Backlog\r\r### [task-001] A\r- **repo**: r\r")
    before = snapshot(tasks)
    for args in (["task.list"], ["task.add", "New", "--repo", "r", "--priority", "low"]):
        result = inv(*args)
        assert result.code == 2 and "backlog.md:1: a carriage return that does not end a CRLF" in result.err, \
            result.err
    assert snapshot(tasks) == before


@pytest.mark.parametrize("step", ["journal", "target-temp", "source-temp"])
def test_an_append_made_while_the_move_writes_its_files_is_never_written_over(home, monkeypatch, step):
    # An editor or `echo >>` writing in place while the tool fsyncs its journal and temp files (milliseconds).
    import lib.backlog as backlog

    tasks = write_tasks(home.path)

    def edit_by_hand_at(reached: str) -> None:
        if reached == step:
            with open(tasks / "backlog.md", "ab") as editor:
                editor.write(b"\nnote typed while the tool wrote\n")

    monkeypatch.setattr(backlog, "_crash_point", edit_by_hand_at)
    with pytest.raises(backlog.TaskFileError, match="backlog.md: changed while task-001 was being moved"):
        backlog.TaskStore(tasks).move("start", "task-001")
    assert (tasks / "backlog.md").read_bytes() == BACKLOG + b"\nnote typed while the tool wrote\n"
    assert (tasks / "active.md").read_bytes() == ACTIVE
    assert sorted(p.name for p in tasks.iterdir()) == [".lock", "active.md", "backlog.md", "completed.md"], \
        "no journal (nothing to finish) and no temp file"


def test_add_after_an_id_with_thousands_of_digits_is_one_line_not_a_traceback(home, inv):
    tasks = write_tasks(home.path, backlog=b"# B\n\n### [task-" + b"9" * 5000 + b"] Huge\n")
    before = snapshot(tasks)
    result = inv("task.add", "x", "--repo", "r", "--priority", "low")
    assert result.code == 2 and "backlog.md:3: task-99" in result.err and "5000 digits" in result.err, result.err
    assert snapshot(tasks) == before
    assert inv("task.list").code == 0, "listing does not need the number"


def test_listing_or_reporting_in_a_home_without_tasks_creates_nothing_there(home, inv):
    assert not (home.path / "tasks").exists()
    assert inv("task.list").out.strip() == "no tasks"
    assert inv("task.show", "task-001").code == 2
    assert inv("report").code == 0
    assert not (home.path / "tasks").exists(), "a read-only look leaves no tasks/.lock behind"


@pytest.mark.parametrize("raw_id", [b"caf\xe9", b"esc\x1b[2Kid"])
def test_an_id_that_cannot_be_printed_is_a_malformed_heading(home, inv, raw_id):
    # Ids are echoed in tables, messages and the report: a byte that is not UTF-8 crashed the report.
    tasks = write_tasks(home.path, backlog=b"# B\n\n### [" + raw_id + b"] X\n")
    before = snapshot(tasks)
    for args in (["task.list"], ["report"]):
        result = inv(*args)
        assert result.code == 2 and "backlog.md:3: malformed task heading" in result.err, result.err
    assert snapshot(tasks) == before


def test_control_characters_in_a_title_cannot_drive_the_terminal(home, inv):
    # "\x1b[1A\x1b[2K" moves up and erases a line: a shared backlog could hide a row of task.list.
    tasks = write_tasks(home.path, backlog=b"# B\n\n### [task-001] Hide\x1b[1A\x1b[2K\xc2\x9b2K\n- **repo**: r\x07\n")
    listed = inv("task.list")
    assert listed.code == 0 and "\x1b" not in listed.out and "\x9b" not in listed.out and "\x07" not in listed.out
    assert "Hide\ufffd[1A\ufffd[2K\ufffd2K" in listed.out
    assert b"Hide\x1b[1A\x1b[2K\xc2\x9b2K" in (tasks / "backlog.md").read_bytes(), "the file keeps its bytes"


def test_an_append_made_while_recovery_writes_is_never_written_over(home, monkeypatch):
    import lib.backlog as backlog

    tasks = write_tasks(home.path)
    assert run_inv(home.path, "task.start", "task-001", env={CRASH_ENV: "journal"}).returncode == -9

    def edit_by_hand_at(reached: str) -> None:
        if reached == "recover-temp" and b"recovered" not in (tasks / "backlog.md").read_bytes():
            with open(tasks / "backlog.md", "ab") as editor:
                editor.write(b"\nnote typed while the tool recovered\n")

    monkeypatch.setattr(backlog, "_crash_point", edit_by_hand_at)
    with pytest.raises(backlog.TaskFileError, match="backlog.md: changed while an interrupted move of task-001"):
        backlog.TaskStore(tasks).move("start", "task-001")  # a writer: it finishes the move first
    assert (tasks / "backlog.md").read_bytes() == BACKLOG + b"\nnote typed while the tool recovered\n"
    assert (tasks / "active.md").read_bytes() == ACTIVE, "nothing written: task-001 only in backlog.md"
    assert sorted(p.name for p in tasks.iterdir()) == [".lock", ".move-journal.json", "active.md", "backlog.md",
                                                       "completed.md"], "the journal stays for the next command"
