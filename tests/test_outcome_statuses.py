"""A repo's outcome has one of a closed set of statuses (a typo is an error, not a new status), and the state
files and JSON say exactly the words they said before."""
from __future__ import annotations

import json

import pytest

from lib.batch import Outcome
from lib.results import summarize
from lib.sync import SyncOutcome

RUN_STATUSES = ["passed", "failed", "timeout", "skipped", "error"]
SYNC_STATUSES = ["updated", "up to date", "cloned", "skipped", "failed", "would update", "would clone"]


def run_outcome(status: str) -> Outcome:
    return Outcome("api", "python", status, None, 1.5, "make test", None, None, "2026-12-06T00:00:00+00:00")


def sync_outcome(status: str) -> SyncOutcome:
    return SyncOutcome("api", status, None, "main", "a", "b", "/logs/api.log")


@pytest.mark.parametrize("status", RUN_STATUSES)
def test_a_run_outcome_writes_its_status_as_the_same_word(status):
    outcome = run_outcome(status)
    document = json.loads(json.dumps(outcome.to_json()))
    assert document["status"] == status and type(document["status"]) is str
    assert outcome.line().startswith(f"api: {status} in ")
    assert outcome.failing == (status in ("failed", "timeout", "error"))


@pytest.mark.parametrize("status", ["pased", "PASSED", "", "passed "])
def test_a_run_outcome_with_a_status_outside_the_set_is_refused(status):
    with pytest.raises(ValueError):
        run_outcome(status)


def test_a_results_summary_counts_every_status_in_the_same_order():
    results = [run_outcome(s).to_json() for s in ["error", "passed", "passed"]]
    summary = summarize(json.loads(json.dumps(results)))
    assert json.dumps(summary) == json.dumps(summarize([{"status": s} for s in ["error", "passed", "passed"]])) \
        == '{"total": 3, "passed": 2, "failed": 0, "timeout": 0, "skipped": 0, "error": 1}'


@pytest.mark.parametrize("status", SYNC_STATUSES)
def test_a_sync_outcome_writes_its_status_as_the_same_word(status):
    outcome = sync_outcome(status)
    document = json.loads(json.dumps(outcome.to_json()))
    assert document["status"] == status and type(document["status"]) is str
    assert outcome.line() == f"api: {status}"
    assert outcome.failing == (status == "failed")


@pytest.mark.parametrize("status", ["uptodate", "Updated", "pwned"])
def test_a_sync_outcome_with_a_status_outside_the_set_is_refused(status):
    with pytest.raises(ValueError):
        sync_outcome(status)
