"""`inv report`: the weekly status report filled from state/ and the task files."""
from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from tests.conftest import ROOT


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def section(report: str, title: str) -> str:
    return report.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0].strip()


def test_a_fresh_home_gets_a_report_that_says_what_is_missing(home, inv):
    result = inv("report", "--date", "2026-11-27")
    assert result.code == 0, result.err
    out = home.path / "reports" / "weekly-status-2026-11-27.md"
    assert result.out.strip() == str(out) and result.err == ""
    report = out.read_text()
    assert "**Date:** 2026-11-27" in report
    assert section(report, "Repository Status") == "_No scan yet: run `inv scan`._"
    assert section(report, "Test Results") == "_No test run yet: run `inv test-all`._"
    assert section(report, "Active Tasks") == "_No active tasks._"
    assert section(report, "Completed Tasks (This Period)") == "_No tasks completed from 2026-11-21 to 2026-11-27._"
    assert section(report, "Notes") == "_No notes._"
    assert "{{" not in report


def test_report_tabulates_a_real_scan_a_real_test_run_and_the_tasks_of_the_period(home, inv, make_repo):
    builds = make_repo("builds", {"Makefile": "test:\n\techo all good\n"})
    home.add(builds, language="make")
    assert inv("scan").code == 0
    assert inv("test-all").code == 0
    day = date(2026, 11, 27)
    write(home.path / "tasks" / "active.md", "# Active\n\n### [task-004] Pipe | in title\n- **repo**: builds\n"
          "- **priority**: high\n- **assigned**: ana\n- **started**: 2026-11-20\n")
    write(home.path / "tasks" / "completed.md", "# Completed\n\n"
          "### [task-001] Done this week\n- **repo**: builds\n- **type**: feature\n- **completed**: 2026-11-23\n\n"
          "### [task-002] Done long ago\n- **repo**: builds\n- **completed**: 2026-10-01\n\n"
          "### [task-003] Done after the report date\n- **completed**: 2026-11-28\n")
    result = inv("report", "--date", day.isoformat(), "--notes", "Release on Friday.")
    assert result.code == 0, result.err
    report = Path(result.out.strip()).read_text()
    repos = section(report, "Repository Status").splitlines()
    assert repos[0].startswith("Scanned 20")
    assert repos[2].split("|")[1:5] == [" Repo   ", " Branch   ", " Status   ", " Ahead/Behind   "]
    assert repos[4].split("|")[1:5] == [" builds ", " main     ", " clean    ", " +0/-0          "]
    tests = section(report, "Test Results").splitlines()
    assert tests[0].startswith("1 repo: 1 passed")
    assert tests[4].split("|")[1:3] == [" builds ", " passed   "]
    active = section(report, "Active Tasks").splitlines()
    assert active[2].replace(r"\|", "PIPE").split("|")[1:8] == [
        " task-004 ", " Pipe PIPE in title ", " builds ", " high       ", " ana        ", " 2026-11-20 ", " 7d    "], \
        "a `|` in a title is escaped, so the row keeps its columns"
    completed = section(report, "Completed Tasks (This Period)")
    assert completed.startswith("1 completed from 2026-11-21 to 2026-11-27.")
    assert "task-001" in completed and "task-002" not in completed and "task-003" not in completed
    assert section(report, "Notes") == "Release on Friday."
    wider = inv("report", "--date", day.isoformat(), "--since", "2026-09-30")
    assert "2 completed from 2026-09-30 to 2026-11-27." in Path(wider.out.strip()).read_text()


def test_an_unknown_placeholder_in_a_users_template_is_kept_and_warned_about(home, inv):
    template = write(home.path / "reports" / "templates" / "weekly-status.md",
                     "# Team report {{date}}\n\nOwner: {{owner}}\n\n{{ active_tasks }}\n")
    result = inv("report", "--date", "2026-11-27")
    assert result.code == 0
    assert (home.path / "reports" / "weekly-status-2026-11-27.md").read_text() == \
        "# Team report 2026-11-27\n\nOwner: {{owner}}\n\n_No active tasks._\n"
    assert result.err.startswith(f"warning: {template}:3: unknown placeholder {{{{owner}}}} left as is")


def test_bad_dates_and_a_corrupt_state_file_are_one_line_errors(home, inv):
    for args, message in ((["--date", "27/11/2026"], "--date '27/11/2026': expected a date like"),
                          (["--date", "2026-11-27", "--since", "2026-12-01"], "--since 2026-12-01 is after")):
        result = inv("report", *args)
        assert result.code == 2 and result.err.count("\n") == 1 and message in result.err, result.err
    write(home.path / "state" / "repo-status.json", "{not json")
    result = inv("report")
    assert result.code == 2 and "repo-status.json: not valid JSON" in result.err and result.err.count("\n") == 1
    assert not list((home.path / "reports").glob("weekly-status-*.md")), "no half report is written"


def test_the_shipped_template_has_exactly_the_documented_placeholders():
    text = (ROOT / "reports" / "templates" / "weekly-status.md").read_text()
    import re

    assert sorted(set(re.findall(r"\{\{(\w+)\}\}", text))) == sorted(
        ["date", "repo_statuses", "active_tasks", "completed_tasks", "test_results", "proof_workers", "notes"])


def test_default_period_is_the_seven_days_up_to_the_report_date(home, inv):
    today = date.today()
    write(home.path / "tasks" / "completed.md", "# Completed\n\n"
          f"### [task-001] Six days ago\n- **completed**: {(today - timedelta(days=6)).isoformat()}\n\n"
          f"### [task-002] Seven days ago\n- **completed**: {(today - timedelta(days=7)).isoformat()}\n")
    report = Path(inv("report").out.strip()).read_text()
    assert report.count("task-001") == 1 and "task-002" not in report


def test_the_original_systems_state_files_are_one_line_errors_not_tracebacks(home, inv):
    write(home.path / "state" / "repo-status.json", '[{"name": "staking", "branch": "main", "clean": true}]')
    result = inv("report")
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "repo-status.json: not the shape this tool writes" in result.err
    (home.path / "state" / "repo-status.json").unlink()
    write(home.path / "state" / "test-results.json", '{"results": "staking: PASS"}')
    result = inv("report")
    assert result.code == 2 and "test-results.json: not the shape this tool writes" in result.err


def test_a_report_edited_by_hand_is_never_replaced_without_force(home, inv):
    first = inv("report", "--date", "2026-11-27", "--notes", "first")
    assert first.code == 0, first.err
    out = home.path / "reports" / "weekly-status-2026-11-27.md"
    again = inv("report", "--date", "2026-11-27", "--notes", "second")
    assert again.code == 0, "a report the tool wrote itself is simply regenerated"
    assert "second" in out.read_text()
    out.write_text(out.read_text() + "\nMy own analysis, typed by hand.\n")
    edited = out.read_bytes()
    refused = inv("report", "--date", "2026-11-27", "--notes", "third")
    assert refused.code == 2 and "Traceback" not in refused.err
    assert refused.err.startswith(f"error: {out}: exists and was changed since") and "--force" in refused.err
    assert out.read_bytes() == edited, "the user's edit is kept byte for byte"
    forced = inv("report", "--date", "2026-11-27", "--notes", "third", "--force")
    assert forced.code == 0 and "third" in out.read_text() and "My own analysis" not in out.read_text()


def test_a_report_file_the_tool_did_not_write_is_not_replaced(home, inv):
    out = write(home.path / "reports" / "weekly-status-2026-11-27.md", "a report written some other way\n")
    result = inv("report", "--date", "2026-11-27")
    assert result.code == 2 and out.read_text() == "a report written some other way\n"
