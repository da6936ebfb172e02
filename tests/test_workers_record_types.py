"""The config's issue status and a worker record's status are closed sets (config.IssueStatus, state.RecordStatus):
what is read is a member, what is written says the same words it always said, a word outside the set is refused."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import ROOT
from workers_fixtures import project, tmux_socket  # noqa: F401

sys.path.insert(0, str(ROOT / "scripts" / "proof-workers"))


def test_an_issue_status_read_from_the_config_is_an_issue_status_and_written_back_as_its_word(project):  # noqa: F811
    from orchestrator.config import IssueStatus, load_config, set_issue

    assert [s.value for s in IssueStatus] == ["pending", "in_progress", "completed", "failed"]
    p = project([{"number": 1, "title": "one", "status": "failed"}, {"number": 2, "title": "two"}])
    cfg = load_config(p.config)
    assert [type(i.status) for i in cfg.issues] == [IssueStatus, IssueStatus]
    assert [i.status for i in cfg.issues] == [IssueStatus.FAILED, IssueStatus.PENDING]
    set_issue(p.config, 1, status=IssueStatus.IN_PROGRESS, assigned_worker=2)
    raw = p.config.read_text()
    assert '"status": "in_progress"' in raw and "IssueStatus" not in raw
    assert load_config(p.config).issue(1).status is IssueStatus.IN_PROGRESS


def test_an_unknown_issue_status_is_still_the_one_config_error(project):  # noqa: F811
    from lib.errors import ConfigError
    from orchestrator.config import load_config

    p = project([{"number": 1, "title": "one", "status": "done"}])
    with pytest.raises(ConfigError, match=r"unknown status 'done' \(known: pending, in_progress, completed, failed\)"):
        load_config(p.config)


def test_a_worker_records_status_is_a_record_status_and_its_json_the_same_words(tmp_path):
    from lib.errors import OrchestratorError
    from orchestrator.state import RecordStatus, RunFiles
    from orchestrator.worker import Worker

    assert [s.value for s in RecordStatus] == ["idle", "running"]
    files = RunFiles(tmp_path / "state")
    record = files.load_worker(1)
    assert record.status is RecordStatus.IDLE
    Worker(record, files).assign(project="demo", issue=7, branch="feature/issue-7", worktree=str(tmp_path / "wt"),
                                 push_url=None, pipeline=["implement"], stage_index=0, stage_base=None, resumed=None,
                                 base=None, now=1.0)
    doc = json.loads(files.worker_file(1).read_text())
    assert doc["status"] == "running"
    assert files.load_worker(1).status is RecordStatus.RUNNING
    doc["status"] = "sleeping"
    files.worker_file(1).write_text(json.dumps(doc))
    with pytest.raises(OrchestratorError, match="unreadable worker state .*'sleeping' is not a valid RecordStatus"):
        files.load_worker(1)
