"""`inv report`'s proof-workers section: cost, turns and issues completed/failed per project, read from the
files the monitor keeps under state/<project>/ (usage.json, orchestrator-log.jsonl), never from tmux."""
from __future__ import annotations

from pathlib import Path

import workers_fixtures  # noqa: F401  (puts scripts/proof-workers on sys.path)
from tests.test_report import section

from orchestrator.probe import record_usage
from orchestrator.state import RunFiles, WorkerRecord


def tally(files: RunFiles, worker: int, try_id: int, project: str, issue: int, cost: float, turns: int) -> None:
    record = WorkerRecord(worker, project=project, issue_number=issue, try_id=try_id, stage="implement")
    record.agent = {"cost_usd": cost, "turns": turns, "tokens_in": 10, "tokens_out": 5}
    record_usage(files, record)


def report_of(home, inv) -> str:
    result = inv("report", "--date", "2026-11-27")
    assert result.code == 0, result.err
    return (home.path / "reports" / "weekly-status-2026-11-27.md").read_text()


def test_a_home_without_proof_worker_runs_says_so(home, inv):
    assert section(report_of(home, inv), "Proof Workers") == "_No proof-worker runs yet._"


def test_cost_turns_and_issues_completed_or_failed_per_project_over_every_run_dir(home, inv):
    lead = RunFiles(home.path / "state" / "alpha")  # a two-project run led by alpha, and beta's own run
    tally(lead, 1, 1, "alpha", 1, 0.25, 3)
    tally(lead, 1, 2, "alpha", 1, 0.5, 4)  # a retry adds up
    tally(lead, 2, 1, "beta", 7, 1.0, 10)
    lead.log_event({"action": "reassign", "worker": 1, "new_issue": 1, "project": "alpha"})
    lead.log_event({"action": "mark_complete", "worker": 1, "issue": 1, "project": "alpha"})
    lead.log_event({"action": "reassign", "worker": 2, "new_issue": 7, "project": "beta"})
    lead.log_event({"action": "skip", "worker": 2, "issue": 7, "project": "beta", "reason": "budget: $1 of $0.5"})
    lead.log_event({"action": "mark_complete", "worker": 1, "issue": 2})  # an older line naming no project
    own = RunFiles(home.path / "state" / "beta")
    tally(own, 1, 1, "beta", 8, 0.125, 2)
    own.log_event({"action": "mark_complete", "worker": 1, "issue": 8, "project": "beta"})
    own.log_event({"action": "skip", "worker": 1, "issue": 9, "project": "beta", "reason": "stalled"})
    own.log_event({"action": "reassign", "worker": 1, "new_issue": 9, "project": "beta"})  # failed, now retried
    with open(own.events, "ab") as log:
        log.write(b'{"timestamp": "2026-11-27T00:00:00Z", "event": {"action": "mark_com\xff')  # cut by a crash
    text = section(report_of(home, inv), "Proof Workers")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    assert rows[0] == ["Project", "Completed", "Failed", "Turns", "Cost"]
    assert rows[2:] == [["alpha", "2", "0", "7", "$0.7500"],
                        ["beta", "1", "1", "12", "$1.1250"]]
    assert "Total: 19 turns, $1.8750" in text


def test_a_forged_or_broken_tally_adds_nothing(home, inv):
    files = RunFiles(home.path / "state" / "alpha")
    tally(files, 1, 1, "alpha", 1, 0.5, 2)
    for n, (cost, turns) in enumerate([(float("nan"), -3), (-5.0, True), ("9", 2.5), (float("inf"), None)], 2):
        tally(files, 1, n, "alpha", 1, cost, turns)
    text = section(report_of(home, inv), "Proof Workers")
    assert "| alpha" in text and "$0.5000 |" in text and "Total: 2 turns, $0.5000" in text


def test_a_usage_file_of_another_shape_is_one_line_exit_2_and_no_report(home, inv):
    path = home.path / "state" / "alpha" / "usage.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"tries": [1, 2]}')
    result = inv("report", "--date", "2026-11-27")
    assert result.code == 2 and result.err.count("\n") == 1 and str(path) in result.err
    assert not (home.path / "reports" / "weekly-status-2026-11-27.md").exists()


def test_the_report_reads_files_and_never_imports_tmux_or_the_workers_package():
    import lib.report

    source = Path(lib.report.__file__).read_text()
    assert "libtmux" not in source and "from orchestrator" not in source and "import orchestrator" not in source


def test_an_event_log_that_is_a_fifo_is_one_line_exit_2_not_a_hang(home, inv):
    import os

    log = home.path / "state" / "alpha" / "orchestrator-log.jsonl"
    log.parent.mkdir(parents=True)
    os.mkfifo(log)
    result = inv("report", "--date", "2026-11-27")
    assert result.code == 2 and result.err.count("\n") == 1 and "FIFO" in result.err and str(log) in result.err


def test_an_event_line_nested_too_deep_is_skipped_like_a_cut_one(home, inv):
    files = RunFiles(home.path / "state" / "alpha")
    files.log_event({"action": "mark_complete", "worker": 1, "issue": 1, "project": "alpha"})
    with open(files.events, "a") as log:
        log.write('{"event": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert "| alpha" in section(report_of(home, inv), "Proof Workers")
