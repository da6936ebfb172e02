"""Hostile inputs to `inv report` that once ended in a traceback instead of one line and exit 2."""
from __future__ import annotations

import pytest


def test_a_state_file_that_is_a_directory_is_one_line_exit_2(home, inv):
    (home.path / "state" / "repo-status.json").mkdir(parents=True)
    result = inv("report", "--date", "2026-11-27")
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and "repo-status.json: cannot read" in result.err, result.err
    assert not (home.path / "reports" / "weekly-status-2026-11-27.md").exists()


@pytest.mark.parametrize("args", [["--date", "0001-01-01"], ["--date", "0001-01-06"]])
def test_a_date_whose_period_starts_before_year_one_is_one_line_exit_2(home, inv, args):
    result = inv("report", *args)
    assert result.code == 2 and result.err.count("\n") == 1 and "--date" in result.err, result.err


@pytest.mark.parametrize("blocker", ["reports", "reports/weekly-status-2026-11-27.md"])
def test_a_report_that_cannot_be_written_is_one_line_exit_2(home, inv, blocker):
    (home.path / blocker).mkdir(parents=True) if blocker.endswith(".md") else (home.path / blocker).write_text("x")
    result = inv("report", "--date", "2026-11-27")
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and "cannot write the report" in result.err, result.err


def test_a_period_from_year_one_is_fine_when_since_is_given(home, inv):
    result = inv("report", "--date", "0001-01-03", "--since", "0001-01-01")
    assert result.code == 0, result.err
    assert "_No tasks completed from 0001-01-01 to 0001-01-03._" in (
        home.path / "reports" / "weekly-status-0001-01-03.md").read_text()


def test_a_state_file_holding_null_is_not_reported_as_no_scan_yet(home, inv):
    (home.path / "state").mkdir()
    (home.path / "state" / "test-results.json").write_text("null\n")
    result = inv("report")
    assert result.code == 2 and "test-results.json: not the shape this tool writes" in result.err, result.err


def test_a_completed_task_whose_date_cannot_be_read_is_warned_about_not_silently_left_out(home, inv):
    tasks = home.path / "tasks"
    tasks.mkdir()
    (tasks / "completed.md").write_text("# Completed\n\n### [task-001] Shipped\n- **completed**: 2026/11/25\n\n"
                                        "### [task-002] Old, moved by hand\n- **repo**: r\n")
    result = inv("report", "--date", "2026-11-27")
    assert result.code == 0, result.err
    assert result.err == (f"warning: {tasks / 'completed.md'}:3: task-001 has completed '2026/11/25', "
                          "not a YYYY-MM-DD date: left out of the report\n"), "no stamp at all: nothing to say"


def test_notes_given_in_a_non_utf8_locale_are_written_not_a_traceback(home, inv):
    result = inv("report", "--date", "2026-11-27", "--notes", "caf\udce9")  # argv byte 0xE9, as Python decodes it
    assert result.code == 0, result.err
    assert "caf\ufffd" in (home.path / "reports" / "weekly-status-2026-11-27.md").read_text()
