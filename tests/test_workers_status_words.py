"""The status document's issue states and worker statuses are closed sets (report.IssueState, report.WorkerStatus):
`status --json` says the same words it always said, and text status, the dashboard and the counts know each one."""
from __future__ import annotations

import json
import sys

from conftest import ROOT
from workers_fixtures import monitor_env, project, tmux_socket  # noqa: F401

sys.path.insert(0, str(ROOT / "scripts" / "proof-workers"))

ISSUE_STATES = ["pending", "waiting", "blocked", "in_progress", "completed", "failed", "pr_open", "ci_failed",
                "changes_requested", "merged"]
WORKER_STATUSES = ["idle", "waiting", "starting", "setting_up", "running", "exited", "watching_pr", "gone"]


def test_issue_states_and_worker_statuses_are_closed_sets_of_the_words_status_always_said():
    from orchestrator import pulls
    from orchestrator.config import IssueStatus
    from orchestrator.report import STATE_ORDER, IssueState, WorkerStatus

    assert sorted(IssueState) == sorted(ISSUE_STATES) and sorted(WorkerStatus) == sorted(WORKER_STATUSES)
    assert sorted(STATE_ORDER) == sorted(IssueState), "text status counts every state in its order"
    assert set(IssueStatus) | set(pulls.PHASES) <= set(IssueState), "a config status or a PR phase is a state"


def test_the_dashboard_styles_every_issue_state():
    from orchestrator.dashboard import STATE_STYLE
    from orchestrator.report import IssueState

    assert set(STATE_STYLE) == set(IssueState)


def test_status_json_says_the_states_as_plain_words(project):  # noqa: F811
    from orchestrator.report import IssueState, WorkerStatus, status_document
    from orchestrator.run import open_run

    project([{"number": 1, "title": "dep", "status": "failed"},
             {"number": 2, "title": "behind it", "depends_on": [1]},
             {"number": 3, "title": "done", "status": "completed"},
             {"number": 4, "title": "waits", "depends_on": [5]},
             {"number": 5, "title": "next"}])
    doc = status_document(open_run())
    issues = doc["projects"][0]["issues"]
    assert [(i["number"], i["state"]) for i in issues] == [(1, "failed"), (2, "blocked"), (3, "completed"),
                                                           (4, "waiting"), (5, "pending")]
    assert all(type(i["state"]) is IssueState for i in issues)
    assert all(type(w["status"]) is WorkerStatus for w in doc["workers"]) and doc["workers"]
    assert all(type(f["state"]) is IssueState for f in doc["failures"]) and len(doc["failures"]) == 2
    text = json.dumps(doc)
    assert "IssueState" not in text and "WorkerStatus" not in text
    again = json.loads(text)
    assert again["projects"][0]["counts"] == {"failed": 1, "blocked": 1, "completed": 1, "waiting": 1, "pending": 1}
    assert [w["status"] for w in again["workers"]] == ["idle"] * len(doc["workers"])
