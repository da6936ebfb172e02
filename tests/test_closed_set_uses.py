"""Closed sets used as their types: a run's status in the one-line verdict, a PR stage's kind in the PR loop."""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT
from lib.batch import Outcome
from lib.runstatus import RunStatus
from lib.views import headline

sys.path.insert(0, str(ROOT / "scripts" / "proof-workers"))
from orchestrator.decide import ActionKind  # noqa: E402
from orchestrator.pulls import PR_STAGE_KINDS, stage_task  # noqa: E402
from orchestrator.state import WorkerRecord  # noqa: E402

VERDICTS = {
    RunStatus.PASSED: "BUILD PASSED (1.5s)",
    RunStatus.FAILED: "BUILD FAILED (exit 2, 1.5s)",
    RunStatus.TIMEOUT: "BUILD TIMEOUT (timed out after 9s, 1.5s)",
    RunStatus.SKIPPED: "BUILD SKIPPED (timed out after 9s, 1.5s)",
    RunStatus.ERROR: "BUILD ERROR (timed out after 9s, 1.5s)",
}


@pytest.mark.parametrize("status", list(RunStatus))
def test_each_run_status_has_its_verdict_line(status):
    reason = None if status in (RunStatus.PASSED, RunStatus.FAILED) else "timed out after 9s"
    outcome = Outcome("a", "go", status, 2, 1.5, "make", "/log", reason, "2026-12-06T00:00:00Z")
    assert headline("build", outcome) == VERDICTS[status]


@pytest.mark.parametrize("kind", [k for k in ActionKind if k not in PR_STAGE_KINDS])
def test_a_kind_that_is_no_pr_stage_is_refused_never_told_as_a_review(kind):
    # Anything but fix_ci was told "Review comments: ..." (the kind was a bare string compared with "fix_ci").
    record = WorkerRecord(1, pr={"last": {"comments": ["a comment"]}})
    with pytest.raises(ValueError, match="no pull-request stage"):
        stage_task(ROOT, None, None, record, kind)


def test_an_address_review_stage_is_told_the_comments():
    record = WorkerRecord(1, pr={"last": {"comments": ["rename x"]}})
    assert stage_task(ROOT, None, None, record, ActionKind.ADDRESS_REVIEW) == "Review comments:\n- rename x"
